// Fuzz target: an attached archive and the archives inside it
// (filters/lua/mime_archive.h): every format's reader on the input, and a
// file named as an archive inside a ZIP (its local headers walked, its data
// inflated and checked against the central directory), a tar archive or a
// file compressed whole, read in turn. The input is such an archive (or
// anything); the properties are fuzz_name_reader.h's over the files listed
// (with the archive each is in, and whether it was opened), with names
// bounded by kMaxArchiveFiles, and the decompression budget is never
// overspent.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "filters/lua/mime.h"
#include "filters/lua/mime_archive.h"
#include "fuzz_name_reader.h"

namespace {

constexpr std::size_t kBudget = 4 * 1024 * 1024;

class Archive {
 public:
  void feed(std::string_view data) { reader_.feed(data); }
  void finish() {
    reader_.finish();
    FUZZ_CHECK(budget_ <= kBudget, "budget overspent");
    for (const postern::mime::ArchiveFile& f : reader_.files()) {
      names_.push_back(f.name + "\n in " + f.archive + (f.unopened ? " (unopened)" : ""));
    }
  }
  const std::vector<std::string>& names() const { return names_; }
  const std::string& problem() const { return reader_.problem(); }

 private:
  std::size_t budget_ = kBudget;
  std::size_t files_left_ = postern::mime::kMaxArchiveFiles;
  postern::mime::ArchiveReader reader_{"fuzz.zip", &budget_, &files_left_};
  std::vector<std::string> names_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  postern::fuzz::check_name_reader<Archive>(std::string_view(reinterpret_cast<const char*>(data), size),
                                            postern::mime::kMaxArchiveFiles);
  return 0;
}
