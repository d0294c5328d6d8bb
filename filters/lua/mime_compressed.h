// A file compressed whole with gzip, bzip2, xz or zstd: "report.pdf.gz",
// and a compressed tar archive ("*.tar.gz", "*.tgz", "*.tar.bz2", "*.tar.xz",
// "*.tar.zst", ...), as 7-Zip and Windows 11's File Explorer open one. A tar
// archive inside is listed by its files (TarReader); anything else is the
// one file, named by the gzip header's file name when it has one and by the
// compressed file's own name without its suffix. Decompressed only as far as
// needed (a tar archive to its end, anything else to its first 512 octets),
// within a budget the whole message shares. I/O-free, bounded, and bad input
// never throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/lua/mime_tar.h"

namespace postern::mime {

// Decompressed octets the files of one message may come to: kDecompressedFactor
// times the message's size, at least kMinDecompressed, at most kMaxDecompressed.
// (Log and text archives expand 10 to 30 times; a bomb, a thousand.)
inline constexpr std::size_t kDecompressedFactor = 32;
inline constexpr std::size_t kMinDecompressed = 64 * 1024 * 1024;
inline constexpr std::size_t kMaxDecompressed = 256 * 1024 * 1024;
std::size_t decompression_budget(std::size_t message_size);
// The problem when compressed files ran past it.
std::string decompression_budget_problem();

class CompressedReader {
 public:
  // `name`: the compressed file's name; `budget`: the octets decompression
  // may still produce for the message, spent here. `open`: opens a reader
  // for an archive inside (a tar archive's file, or the one file when named
  // as an archive: "invoice.zip.gz"), which is then decompressed whole.
  CompressedReader(std::string name, std::size_t* budget, OpenNested open = {});
  ~CompressedReader();
  CompressedReader(const CompressedReader&) = delete;
  CompressedReader& operator=(const CompressedReader&) = delete;

  void feed(std::string_view data);
  void finish();

  // What it holds: a tar archive's files, or the one file's names.
  const std::vector<std::string>& names() const { return names_; }
  // Why a name may have gone unread (the budget spent, a stream that does
  // not decompress before its tar archive ended, the tar archive's own
  // problem); empty when read whole, and for data that is not compressed
  // with one of the four (no magic number at its start: nothing opens it).
  const std::string& problem() const { return problem_; }
  // Whether the budget ran out here.
  bool over_budget() const { return over_budget_; }
  // "x-gzip", "x-bzip2", "x-xz" or "x-zstd" once known; with a tar archive
  // inside, "x-tar".
  const char* encoding() const;
  // The archives inside that were opened (or failed to be): a tar
  // archive's, or the one file.
  const std::vector<InnerArchive>& inners() const { return tar_.is_tar() ? tar_.inners() : inners_; }

 public:
  class Decoder;  // one format's (mime_compressed.cpp)

 private:
  void start(std::string_view magic);
  void decode(std::string_view block);
  bool decompressed(std::string_view out);  // false: no more is needed
  bool decide();                            // the one file is an archive: opens it
  void fail(std::string why);

  std::string name_;
  std::size_t* budget_;
  std::string magic_;   // the first octets, until the format is known
  std::string pending_;  // input not yet given to the decoder (less than a block)
  bool known_ = false;  // the magic was read (a format, or none)
  bool done_ = false;   // nothing more to read
  bool over_budget_ = false;
  std::unique_ptr<Decoder> decoder_;
  std::uint64_t out_ = 0;  // octets decompressed
  OpenNested open_;        // before tar_, which is given it
  TarReader tar_;
  std::vector<std::string> names_;
  std::string problem_;
  std::string head_;      // the first octets decompressed, until decide()
  bool decided_ = false;  // whether the one file is read as an archive is known
  std::string nested_name_;
  std::unique_ptr<NestedArchive> nested_;  // reads the one file
  std::vector<InnerArchive> inners_;
};

}  // namespace postern::mime
