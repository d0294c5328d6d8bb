// Fuzz target: the TNEF reader (filters/lua/mime_tnef.h), the file names
// of a winmail.dat part that ctx.body:attachments() lists. The input is a
// TNEF stream; the properties are fuzz_name_reader.h's.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "filters/lua/mime_tnef.h"
#include "fuzz_name_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  postern::fuzz::check_name_reader<postern::mime::TnefReader>(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
