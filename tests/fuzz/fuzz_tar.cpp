// Fuzz target: the tar reader and the reader of compressed files
// (filters/lua/mime_tar.h, mime_compressed.h), the file names of a tar
// archive, plain or compressed with gzip, bzip2, xz or zstd, and of a file
// compressed whole, that ctx.body:attachments() lists. The input is such a
// file (or anything), read both ways; the properties are fuzz_name_reader.h's,
// and the decompression budget is never overspent.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "filters/lua/mime.h"
#include "filters/lua/mime_compressed.h"
#include "filters/lua/mime_tar.h"
#include "fuzz_name_reader.h"

namespace {

constexpr std::size_t kBudget = 4 * 1024 * 1024;

// A CompressedReader with its own budget, as the name reader checks want.
struct Budget {
  std::size_t left = kBudget;
};
struct Compressed : Budget, postern::mime::CompressedReader {
  Compressed() : postern::mime::CompressedReader("fuzz.tar.gz", &left) {}
  void finish() {
    CompressedReader::finish();
    FUZZ_CHECK(left <= kBudget, "budget overspent");
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  postern::fuzz::check_name_reader<postern::mime::TarReader>(in);
  postern::fuzz::check_name_reader<Compressed>(in, postern::mime::kMaxArchiveFiles);
  return 0;
}
