// tar archives and files compressed whole (filters/lua/mime_tar.h,
// mime_compressed.h): the names libarchive and 7-Zip list, from each kind of
// header, through each compression, fed in any pieces; where a name could
// hide, a problem; bombs stop at the budget. Archives are built here field
// by field and compressed with the formats' own libraries.
#include <bzlib.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "filters/lua/mime.h"
#include "filters/lua/mime_compressed.h"
#include "filters/lua/mime_tar.h"
#include "filters/text/ascii.h"
#include "filters/text/base64.h"
#include "archive_util.h"

using namespace postern::mime;

namespace {

using V = std::vector<std::string>;

using postern::test::set_tar_checksum;

// A 512-octet header with its checksum; `prefix` in the ustar prefix field.
std::string header(const std::string& name, std::uint64_t size, char type = '0', const std::string& prefix = "",
                   bool gnu = false) {
  std::string b(512, '\0');
  b.replace(0, std::min<std::size_t>(name.size(), 100), name.substr(0, 100));
  std::snprintf(b.data() + 100, 8, "%07o", 0644);
  char number[13];
  std::snprintf(number, sizeof number, "%011llo", static_cast<unsigned long long>(size));
  b.replace(124, 11, number);
  b[156] = type;
  if (gnu) b.replace(257, 8, std::string("ustar  \0", 8));
  else b.replace(257, 8, std::string("ustar\0" "00", 8));
  b.replace(345, prefix.size(), prefix);
  set_tar_checksum(b);
  return b;
}

std::string padded(const std::string& data) { return data + std::string((512 - data.size() % 512) % 512, '\0'); }

std::string entry(const std::string& name, const std::string& data, char type = '0', const std::string& prefix = "") {
  return header(name, data.size(), type, prefix) + padded(data);
}

std::string pax(const std::string& key, const std::string& value) {
  std::string record = " " + key + "=" + value + "\n";
  std::size_t n = record.size() + 1;
  while (std::to_string(n).size() + record.size() != n) ++n;
  return std::to_string(n) + record;
}

std::string end_of_archive() { return std::string(1024, '\0'); }

// One of each kind of header libarchive reads a name from.
std::string every_kind() {
  return entry("docs/", "", '5') + entry("readme.txt", "hello\n") +
         entry("invoice.pdf.exe", "MZ..", '0', "a/very/long/directory") +   // ustar prefix
         header("././@LongLink", 120, 'L', "", true) + padded(std::string(110, 'x') + ".scr") +
         header("short", 4, '0', "", true) + padded("data") +                 // named by the long name
         entry("PaxHeaders/x", pax("mtime", "1") + pax("path", "r\xC3\xA9sum\xC3\xA9.js"), 'x') +
         entry("ignored-by-pax", "data") +                                    // named by the pax path
         header("link", 0, '2') +
         entry("vendor", "x", 'Q') +                                          // an unknown type: a file
         end_of_archive();
}

const V kEveryKind{"docs/", "readme.txt", "a/very/long/directory/invoice.pdf.exe", std::string(110, 'x') + ".scr",
                   "r\xC3\xA9sum\xC3\xA9.js", "link", "vendor"};

template <typename Reader>
void feed(Reader& r, const std::string& data, std::size_t piece) {
  if (piece == 0) piece = data.size() + 1;
  for (std::size_t i = 0; i < data.size(); i += piece) r.feed(std::string_view(data).substr(i, piece));
  r.finish();
}

V tar_names(const std::string& data, std::string* problem = nullptr, std::size_t piece = 0) {
  TarReader r;
  feed(r, data, piece);
  if (problem) *problem = r.problem();
  return r.names();
}

using postern::test::gzip;

std::string bzip2(const std::string& data) {
  std::string out(data.size() + data.size() / 100 + 600, '\0');
  auto size = static_cast<unsigned>(out.size());
  REQUIRE(BZ2_bzBuffToBuffCompress(out.data(), &size, const_cast<char*>(data.data()), static_cast<unsigned>(data.size()),
                                   9, 0, 0) == BZ_OK);
  out.resize(size);
  return out;
}

std::string xz(const std::string& data) {
  std::string out(lzma_stream_buffer_bound(data.size()), '\0');
  std::size_t size = 0;
  REQUIRE(lzma_easy_buffer_encode(6, LZMA_CHECK_CRC64, nullptr, reinterpret_cast<const std::uint8_t*>(data.data()),
                                  data.size(), reinterpret_cast<std::uint8_t*>(out.data()), &size, out.size()) == LZMA_OK);
  out.resize(size);
  return out;
}

std::string zstd(const std::string& data) {
  std::string out(ZSTD_compressBound(data.size()), '\0');
  const std::size_t size = ZSTD_compress(out.data(), out.size(), data.data(), data.size(), 3);
  REQUIRE_FALSE(ZSTD_isError(size));
  out.resize(size);
  return out;
}

struct Read {
  V names;
  std::string problem;
  std::string encoding;
};

Read compressed(const std::string& data, const std::string& name = "a.tar.gz", std::size_t piece = 0,
                std::size_t budget = kMinDecompressed) {
  CompressedReader r(name, &budget);
  feed(r, data, piece);
  return {r.names(), r.problem(), r.encoding()};
}

}  // namespace

TEST_CASE("tar: every kind of header's name, fed whole or in pieces", "[mime][tar]") {
  const std::string archive = every_kind();
  for (std::size_t piece : {std::size_t{1}, std::size_t{100}, std::size_t{512}, std::size_t{0}}) {
    std::string problem = "x";
    INFO("piece " << piece);
    CHECK(tar_names(archive, &problem, piece) == kEveryKind);
    CHECK(problem.empty());
  }
  // Nothing after the end block counts, as for libarchive; a name that is
  // not UTF-8 is read as Latin-1.
  CHECK(tar_names(entry("a.txt", "1") + end_of_archive() + entry("b.exe", "2")) == V{"a.txt"});
  CHECK(tar_names(entry("caf\xE9.exe", "1")) == V{"caf\xC3\xA9.exe"});
  // A base-256 size (GNU, for files of 8 GiB and more) skips that much data.
  std::string big = header("big.bin", 0);
  big[124] = '\x80';
  big.replace(125, 11, std::string(10, '\0') + '\x01');  // 1 octet of data
  set_tar_checksum(big);
  CHECK(tar_names(big + padded("x") + entry("after.exe", "")) == V{"big.bin", "after.exe"});
  // A pax "size" sizes the data (libarchive), over the header's size field;
  // Solaris' 'X' is a pax header too; a size field may start with a tab.
  CHECK(tar_names(entry("PaxHeaders/x", pax("size", "1024"), 'x') + header("data.bin", 0) + std::string(1024, 'd') +
                  entry("after.exe", "")) == V{"data.bin", "after.exe"});
  CHECK(tar_names(entry("PaxHeaders/x", pax("path", "setup.exe"), 'X') + entry("a.txt", "")) == V{"setup.exe"});
  std::string tab = header("tab.bin", 0);
  tab.replace(124, 11, "\t0000001000");
  set_tar_checksum(tab);
  CHECK(tar_names(tab + std::string(512, 'd') + entry("after.exe", "")) == V{"tab.bin", "after.exe"});
}

TEST_CASE("tar: what is no archive, and what could hide a name", "[mime][tar]") {
  std::string problem = "x";
  CHECK(tar_names(std::string(2000, 'x'), &problem).empty());
  CHECK(problem.empty());  // no header at the start: no reader opens it
  CHECK(tar_names(end_of_archive(), &problem).empty());
  CHECK(problem.empty());
  std::string bad = entry("b.exe", "");
  bad[0] = 'c';  // its checksum no longer matches
  CHECK(tar_names(entry("a.txt", "1") + bad, &problem) == V{"a.txt"});
  CHECK(problem == "a tar header that does not parse");
  tar_names(header("x", std::uint64_t{1} << 40, 'x') + std::string(512, 'p'), &problem);
  CHECK(problem == "a tar pax header larger than 1 MiB");
  tar_names(entry("PaxHeaders/x", "99 path=setup.exe\n", 'x') + entry("a", ""), &problem);
  CHECK(problem == "a tar pax header that does not parse");
  // A name longer than PATH_MAX, by a pax path or a GNU long name: not kept.
  const std::string long_name = std::string(kMaxArchiveName, 'n') + ".exe";
  tar_names(entry("PaxHeaders/x", pax("path", long_name), 'x') + entry("a", ""), &problem);
  CHECK(problem == "a tar file name longer than 4096 octets");
  tar_names(header("././@LongLink", long_name.size() + 1, 'L', "", true) + padded(long_name + '\0') + entry("a", ""),
            &problem);
  CHECK(problem == "a tar file name longer than 4096 octets");
  CHECK(tar_names(entry("PaxHeaders/x", pax("path", long_name.substr(4)), 'x') + entry("a", "")).size() == 1);
  // Where readers differ on where the next header is: a link, directory or
  // device with data, a sparse file; rather than guess, a problem.
  tar_names(header("link", 1024, '2') + padded(header("setup.exe", 0)) + end_of_archive(), &problem);
  CHECK(problem == "a tar 2 entry with data");
  tar_names(header("hard", 512, '1') + padded(header("setup.exe", 0)), &problem);
  CHECK(problem == "a tar 1 entry with data");
  tar_names(header("sparse", 512, 'S', "", true) + padded("x"), &problem);
  CHECK(problem == "a tar archive with a sparse file");
  tar_names(entry("PaxHeaders/x", pax("GNU.sparse.name", "setup.exe") + pax("path", "a.txt"), 'x') + entry("a", ""), &problem);
  CHECK(problem == "a tar archive with a sparse file");
  std::string many;
  for (std::size_t i = 0; i <= kMaxArchiveFiles; ++i) many += header("f" + std::to_string(i), 0);
  CHECK(tar_names(many, &problem).size() == kMaxArchiveFiles);
  CHECK(problem == "a tar archive of more than 10000 files");
}

TEST_CASE("compressed: a tar archive through gzip, bzip2, xz and zstd", "[mime][tar]") {
  const std::string archive = every_kind();
  struct Case {
    std::string data;
    const char* name;
  };
  // Two gzip members make one file, as gzip -d reads them.
  const std::string half = archive.substr(0, 2048);
  for (const Case& c : {Case{gzip(archive), "a.tgz"}, Case{gzip(half) + gzip(archive.substr(2048)), "a.tar.gz"},
                        Case{bzip2(archive), "a.tar.bz2"}, Case{xz(archive), "a.txz"}, Case{zstd(archive), "a.tar.zst"}}) {
    for (std::size_t piece : {std::size_t{1}, std::size_t{333}, std::size_t{0}}) {
      INFO(c.name << ", piece " << piece);
      const Read r = compressed(c.data, c.name, piece);
      CHECK(r.names == kEveryKind);
      CHECK(r.problem.empty());
      CHECK(r.encoding == "x-tar");
    }
  }
}

TEST_CASE("compressed: one file, by the name in its gzip header and its own name", "[mime][tar]") {
  const std::string pdf = "%PDF-1.7\n" + std::string(3000, 'p');
  Read r = compressed(gzip(pdf, "invoice.exe"), "invoice.pdf.gz");
  CHECK(r.names == V{"invoice.exe", "invoice.pdf"});
  CHECK(r.encoding == "x-gzip");
  CHECK(compressed(gzip(pdf), "setup.exe.gz").names == V{"setup.exe"});
  CHECK(compressed(bzip2(pdf), "setup.EXE.bz2").names == V{"setup.EXE"});
  CHECK(compressed(xz(pdf), "setup.exe.xz").names == V{"setup.exe"});
  CHECK(compressed(zstd(pdf), "setup.exe.zst. ").names == V{"setup.exe"});
  CHECK(compressed(gzip(pdf, "caf\xE9.scr"), "x.gz").names == V{"caf\xC3\xA9.scr", "x"});  // RFC 1952: Latin-1
  // Only its start is decompressed: 100 MiB of it costs nothing past 512 octets.
  const std::string huge = gzip(pdf + std::string(100 << 20, '\0'));
  std::size_t budget = kMinDecompressed;
  CompressedReader reader("big.bin.gz", &budget);
  reader.feed(huge);
  reader.finish();
  CHECK(reader.names() == V{"big.bin"});
  CHECK(budget > kMinDecompressed - 2 * 64 * 1024);
  // What is not compressed with one of the four: no names, no problem; but
  // a format 7-Zip opens and postern does not decompress is a problem.
  r = compressed("plain text, named as if compressed", "notes.tar.gz");
  CHECK(r.names.empty());
  CHECK(r.problem.empty());
  CHECK(compressed("\x1F\x9D\x90 compress'd data", "a.taz").problem == "a compress (.Z) file, which postern does not decompress");
  CHECK(compressed("LZIP\x01 ...........", "a.tar.lz").problem == "a lzip file, which postern does not decompress");
  // A stored name too long to read whole.
  CHECK(compressed(gzip(pdf, (std::string(5000, 'a') + ".exe").c_str()), "x.gz").problem ==
        "a gzip file whose stored name is longer than 4096 octets");
}

TEST_CASE("compressed: a bomb stops at the budget, a stream that breaks is a problem", "[mime][tar]") {
  // 20 MiB of zeros in a tar entry before the executable: past a 16 MiB
  // budget, which the whole message shares.
  const std::string bomb = gzip(entry("zeros.bin", std::string(20 << 20, '\0')) + entry("setup.exe", "MZ") + end_of_archive());
  CHECK(bomb.size() < 100 * 1024);
  Read r = compressed(bomb, "a.tgz", 0, std::size_t{16} << 20);
  CHECK(r.problem == "compressed files that expand past what the message may (32 times its size, at least 64 MiB, "
                     "at most 256 MiB)");
  r = compressed(bomb, "a.tgz", 0, std::size_t{64} << 20);  // a larger message's budget reads it whole
  CHECK(r.names == V{"zeros.bin", "setup.exe"});
  CHECK(r.problem.empty());
  CHECK(decompression_budget(1000) == kMinDecompressed);
  CHECK(decompression_budget(std::size_t{4} << 20) == std::size_t{128} << 20);
  CHECK(decompression_budget(std::size_t{50} << 20) == kMaxDecompressed);

  std::string broken = gzip(every_kind());
  broken[broken.size() / 2] ^= 0x55;
  broken[broken.size() / 2 + 1] ^= 0x55;
  r = compressed(broken, "a.tgz");
  CHECK_FALSE(r.problem.empty());
  r = compressed(bzip2(every_kind()).substr(0, 40) + std::string(200, 'z'), "a.tbz2");
  CHECK(r.problem == "a bzip2 file that does not decompress");
  // A tar archive cut short: what follows the cut no reader shows either.
  const std::string whole = xz(entry("a.txt", std::string(5000, 'a')) + entry("b.exe", "MZ") + end_of_archive());
  r = compressed(whole.substr(0, whole.size() - 60), "a.txz");
  CHECK(r.problem.empty());
}

TEST_CASE("tar and compressed files in a part named or typed as one", "[mime][tar]") {
  const std::string tgz = gzip(entry("a.txt", "1") + entry("viewer.js", "2") + end_of_archive());
  const std::string tar = entry("a.txt", "1") + entry("viewer.js", "2") + end_of_archive();
  struct Case {
    std::string head;
    std::string body;
    const char* encoding;
  };
  for (const Case& c : {Case{"Content-Type: application/gzip; name=\"scan.tgz\"", tgz, "x-tar"},
                        Case{"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=SCAN.TAR.GZ",
                             tgz, "x-tar"},
                        Case{"Content-Type: application/x-tar; name=scan.tar", tar, "x-tar"},
                        Case{"Content-Type: application/zip; name=scan.zip", tgz, "x-tar"},  // archivers go by content
                        Case{"Content-Type: application/x-gzip; name=scan.js.gz", gzip("alert(1)"), "x-gzip"}}) {
    const std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + c.head +
                          "\r\nContent-Transfer-Encoding: base64\r\n\r\n" + postern::base64_encode(c.body, 76) + "\r\n--b--\r\n";
    Structure s = read_structure(m);
    INFO(c.head);
    REQUIRE(s.problem.empty());
    REQUIRE(s.parts.size() >= 2);
    CHECK(s.parts.back().filename.ends_with(".js"));
    CHECK(s.parts.back().transfer_encoding == c.encoding);
    CHECK(postern::ascii::to_lower(s.parts.back().archive).starts_with("scan."));
  }
}
