// An archive attached to a message, read by every archive reader (archivers
// open each format by its content, whatever the name), and the archives
// inside it named as archives read the same way, kMaxArchiveDepth deep. The
// data of a file inside a ZIP (stored or deflated), a tar archive or a file
// compressed whole is read; a file named as an archive inside a RAR, 7z or
// cabinet archive, whose data postern does not decompress, or an encrypted
// one, is listed as not opened (ArchiveFile::unopened). I/O-free, bounded,
// and bad input never throws.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/lua/mime_nested.h"

namespace postern::mime {

// Archives read one inside another: the attached archive is the first.
inline constexpr int kMaxArchiveDepth = 4;

struct ArchiveFile {
  std::string name;
  const char* encoding = "";  // the format that lists it: "x-zip", "x-rar", "x-tar", "x-gzip", ...
  std::string archive;        // the archive inside the read one that holds it; empty: the read one
  bool unopened = false;      // an archive postern did not open: its files are not listed
};

class ArchiveReader final : public NestedArchive {
 public:
  // `name`: the archive's file name. `decompressed_left`: the octets the
  // message's files may still decompress to (mime_compressed.h), and
  // `files_left`: the files archives inside archives may still list, both
  // shared by the whole message and spent here. `depth`: 1 for an attached
  // archive.
  ArchiveReader(std::string name, std::size_t* decompressed_left, std::size_t* files_left, int depth = 1);
  ~ArchiveReader() override;
  ArchiveReader(const ArchiveReader&) = delete;
  ArchiveReader& operator=(const ArchiveReader&) = delete;

  void feed(std::string_view data) override;
  void finish() override;

  // After finish(): the files each format lists, in that format's order
  // (ZIP, RAR, 7z, cabinet, tar, compressed), each followed by the files of
  // the archives in it that were read.
  const std::vector<ArchiveFile>& files() const { return files_; }
  // Why a file may have gone unlisted (a reader's problem, an archive inside
  // nested too deep, the budgets spent); empty when listed whole.
  const std::string& problem() const { return problem_; }
  // Whether the decompression budget ran out here or in an archive inside.
  bool over_budget() const { return over_budget_; }

 private:
  struct Readers;
  void fail(std::string why);
  void list(const std::vector<std::string>& names, const char* encoding, const std::vector<InnerArchive>* inners);

  int depth_;
  std::size_t* decompressed_left_;
  std::size_t* files_left_;
  std::unique_ptr<Readers> readers_;  // dropped once finished: what they keep is large
  std::vector<ArchiveFile> files_;
  std::string problem_;
  bool over_budget_ = false;
};

}  // namespace postern::mime
