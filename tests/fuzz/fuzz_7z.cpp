// Fuzz target: the 7z reader (filters/lua/mime_7z.h), the file names of a
// 7z archive that ctx.body:attachments() lists, and the cabinet reader
// (mime_cab.h) on the same input. The input is a 7z archive
// (or anything); the properties are fuzz_name_reader.h's, with names
// bounded by kMaxArchiveFiles (an LZMA-packed header holds thousands of
// names in a few octets).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "filters/lua/mime.h"
#include "filters/lua/mime_7z.h"
#include "filters/lua/mime_cab.h"
#include "fuzz_name_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  postern::fuzz::check_name_reader<postern::mime::SevenZipReader>(
      std::string_view(reinterpret_cast<const char*>(data), size), postern::mime::kMaxArchiveFiles);
  postern::fuzz::check_name_reader<postern::mime::CabReader>(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
