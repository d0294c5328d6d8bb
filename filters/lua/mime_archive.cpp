// Archives and the archives inside them; see mime_archive.h.
#include "filters/lua/mime_archive.h"

#include "filters/lua/mime.h"
#include "filters/lua/mime_7z.h"
#include "filters/lua/mime_cab.h"
#include "filters/lua/mime_compressed.h"
#include "filters/lua/mime_rar.h"
#include "filters/lua/mime_tar.h"
#include "filters/lua/mime_zip.h"

namespace postern::mime {

struct ArchiveReader::Readers {
  Readers(const std::string& name, std::size_t* decompressed_left, const OpenNested& open)
      : zip(decompressed_left, open),
        seven(decompressed_left),
        tar(open),
        compressed(name, decompressed_left, open) {}
  ZipReader zip;
  RarReader rar;
  SevenZipReader seven;
  CabReader cab;
  TarReader tar;
  CompressedReader compressed;
};

ArchiveReader::ArchiveReader(std::string name, std::size_t* decompressed_left, std::size_t* files_left, int depth)
    : depth_(depth), decompressed_left_(decompressed_left), files_left_(files_left) {
  // The readers of this archive open the archives in it one level deeper
  // (past kMaxArchiveDepth, none: list() says so if one is listed); each
  // opened counts as a file, so that data full of local headers named
  // "*.zip" cannot open readers without end.
  OpenNested open = [this](const std::string& inner) -> std::unique_ptr<NestedArchive> {
    if (depth_ >= kMaxArchiveDepth) return nullptr;
    if (*files_left_ == 0) {
      fail("archives of more than " + std::to_string(kMaxArchiveFiles) + " files in all");
      return nullptr;
    }
    --*files_left_;
    return std::make_unique<ArchiveReader>(inner, decompressed_left_, files_left_, depth_ + 1);
  };
  readers_ = std::make_unique<Readers>(name, decompressed_left, open);
}

ArchiveReader::~ArchiveReader() = default;

void ArchiveReader::fail(std::string why) {
  if (problem_.empty()) problem_ = std::move(why);
}

void ArchiveReader::feed(std::string_view data) {
  if (!readers_) return;
  Readers& r = *readers_;
  r.zip.feed(data);
  r.rar.feed(data);
  r.seven.feed(data);
  r.cab.feed(data);
  r.tar.feed(data);
  r.compressed.feed(data);
}

void ArchiveReader::finish() {
  if (!readers_) return;
  Readers& r = *readers_;
  r.zip.finish();
  r.rar.finish();
  r.seven.finish();
  r.cab.finish();
  r.tar.finish();
  r.compressed.finish();
  if (r.zip.over_budget() || r.compressed.over_budget() || r.seven.over_budget()) over_budget_ = true;
  for (const std::string* problem :
       {&r.zip.problem(), &r.rar.problem(), &r.seven.problem(), &r.cab.problem(), &r.tar.problem(), &r.compressed.problem()}) {
    if (!problem->empty()) fail(*problem);
  }
  if (problem_.empty()) {
    list(r.zip.names(), "x-zip", &r.zip.inners());
    list(r.rar.names(), "x-rar", nullptr);
    list(r.seven.names(), "x-7z", nullptr);
    list(r.cab.names(), "x-cab", nullptr);
    list(r.tar.names(), "x-tar", &r.tar.inners());
    list(r.compressed.names(), r.compressed.encoding(), &r.compressed.inners());
  }
  readers_.reset();
  if (!problem_.empty()) files_.clear();
}

// One format's files, then the files of the archives in it. `inners`: the
// archives in it that its reader opened or would have; null for a format
// whose files' data postern does not read (every archive in it is unopened).
void ArchiveReader::list(const std::vector<std::string>& names, const char* encoding,
                         const std::vector<InnerArchive>* inners) {
  if (!problem_.empty()) return;
  if (names.size() > *files_left_) {
    return fail("archives of more than " + std::to_string(kMaxArchiveFiles) + " files in all");
  }
  *files_left_ -= names.size();
  const std::size_t first = files_.size();
  for (const std::string& name : names) {
    files_.push_back(ArchiveFile{name, encoding, {}, inners == nullptr && archive_name(name)});
  }
  if (inners == nullptr) return;
  for (const InnerArchive& inner : *inners) {
    if (inner.index >= names.size()) continue;
    const auto* nested = dynamic_cast<const ArchiveReader*>(inner.reader.get());
    if (nested == nullptr) {
      if (depth_ >= kMaxArchiveDepth) return fail("archives nested more than " + std::to_string(kMaxArchiveDepth) + " deep");
      files_[first + inner.index].unopened = true;
      continue;
    }
    if (nested->over_budget_) over_budget_ = true;
    if (!nested->problem_.empty()) return fail(nested->problem_);
    for (const ArchiveFile& file : nested->files_) {
      files_.push_back(file);
      if (files_.back().archive.empty()) files_.back().archive = names[inner.index];
    }
  }
}

}  // namespace postern::mime
