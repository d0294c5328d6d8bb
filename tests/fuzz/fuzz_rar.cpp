// Fuzz target: the RAR reader (filters/lua/mime_rar.h), the file names of
// a RAR archive that ctx.body:attachments() lists. The input is a RAR
// archive (or anything); the properties are fuzz_name_reader.h's.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "filters/lua/mime_rar.h"
#include "fuzz_name_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  postern::fuzz::check_name_reader<postern::mime::RarReader>(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
