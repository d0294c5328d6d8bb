// Archives inside archives (filters/lua/mime_archive.h): a file named as an
// archive inside a ZIP (stored or deflated, with or without a data
// descriptor, behind a stub), a tar archive or a file compressed whole is
// read and its files listed after it, to kMaxArchiveDepth; one postern does
// not open is listed as unopened; data that does not match the ZIP's
// central directory, nesting too deep, or a bomb inside is a problem.
// Archives are built here field by field, compressed with zlib.
#include <zlib.h>

#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "filters/lua/mime.h"
#include "filters/lua/mime_archive.h"
#include "filters/lua/mime_compressed.h"
#include "archive_util.h"

using namespace postern::mime;

namespace {

std::string le(std::uint64_t v, int octets) {
  std::string out;
  for (int i = 0; i < octets; ++i) out += static_cast<char>(i < 8 ? (v >> (8 * i)) & 0xFF : 0);
  return out;
}

std::string raw_deflate(const std::string& data) { return postern::test::deflated(data, -MAX_WBITS); }
using postern::test::gzip;

struct ZipFile {
  ZipFile(std::string n, std::string d, int m = 8, bool desc = false, bool enc = false, std::string local = "")
      : name(std::move(n)), data(std::move(d)), method(m), descriptor(desc), encrypted(enc), local_name(std::move(local)) {}
  std::string name;
  std::string data;
  int method;                 // 0 stored, 8 deflated, or any other (its data stored as is)
  bool descriptor;            // sizes in a data descriptor after the data (flag bit 3)
  bool encrypted;             // flag bit 0 (the data is left as is)
  std::string local_name;     // the local header's name when it differs
  std::uint32_t crc_xor = 0;  // flips bits of the central directory's CRC-32
  bool unlisted = false;      // a local header the central directory leaves out
  bool central_size_zero = false;  // the central directory says it is empty
  bool zip64_offset = false;  // the central directory's offset in a Zip64 field, as `offset64`
  std::uint64_t offset64 = 0;
};

// A ZIP archive of `files`, behind `stub`.
std::string zip(const std::vector<ZipFile>& files, const std::string& stub = "") {
  std::string out = stub, directory;
  for (const ZipFile& f : files) {
    const auto crc = static_cast<std::uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(f.data.data()),
                                                      static_cast<uInt>(f.data.size())));
    const std::string body = f.method == 8 ? raw_deflate(f.data) : f.data;
    const std::uint64_t flags = (f.descriptor ? 8 : 0) | (f.encrypted ? 1 : 0);
    const std::string& local_name = f.local_name.empty() ? f.name : f.local_name;
    const std::uint64_t offset = out.size() - stub.size();
    out += "PK\x03\x04" + le(20, 2) + le(flags, 2) + le(static_cast<std::uint64_t>(f.method), 2) + le(0, 4);
    out += f.descriptor ? le(0, 12) : le(crc, 4) + le(body.size(), 4) + le(f.data.size(), 4);
    out += le(local_name.size(), 2) + le(0, 2) + local_name + body;
    if (f.descriptor) out += "PK\x07\x08" + le(crc, 4) + le(body.size(), 4) + le(f.data.size(), 4);
    if (f.unlisted) continue;
    const std::string extra = f.zip64_offset ? le(1, 2) + le(8, 2) + le(f.offset64, 8) : "";
    directory += "PK\x01\x02" + le(20, 2) + le(20, 2) + le(flags, 2) + le(static_cast<std::uint64_t>(f.method), 2) +
                 le(0, 4) + le(crc ^ f.crc_xor, 4) + le(body.size(), 4) + le(f.central_size_zero ? 0 : f.data.size(), 4) +
                 le(f.name.size(), 2) + le(extra.size(), 2) + le(0, 2) + le(0, 2) + le(0, 2) + le(0, 4) +
                 le(f.zip64_offset ? 0xFFFFFFFF : offset, 4) + f.name + extra;
  }
  const std::uint64_t at = out.size() - stub.size();
  std::uint64_t listed = 0;
  for (const ZipFile& f : files) listed += f.unlisted ? 0 : 1;
  out += directory;
  out += "PK\x05\x06" + le(0, 4) + le(listed, 2) + le(listed, 2) + le(directory.size(), 4) + le(at, 4) + le(0, 2);
  return out;
}

// A tar archive of `files` (name, data), ustar headers; a name after "->"
// makes a hard link to that name.
std::string tar(const std::vector<std::pair<std::string, std::string>>& files) {
  std::string out;
  for (const auto& [name, data] : files) {
    std::string b(512, '\0');
    const bool link = data.starts_with("->");
    b.replace(0, name.size(), name);
    char number[13];
    std::snprintf(number, sizeof number, "%011llo", static_cast<unsigned long long>(link ? 0 : data.size()));
    b.replace(124, 11, number);
    b[156] = link ? '1' : '0';
    if (link) b.replace(157, data.size() - 2, data.substr(2));
    b.replace(257, 8, std::string("ustar\0" "00", 8));
    postern::test::set_tar_checksum(b);
    if (link) out += b;
    else out += b + data + std::string((512 - data.size() % 512) % 512, '\0');
  }
  return out + std::string(1024, '\0');
}

struct Read {
  std::vector<ArchiveFile> files;
  std::string problem;
  bool over_budget = false;
  std::size_t budget_left = 0;
};

// `data` read as an archive named `name`, fed in pieces of `piece` octets (0: whole).
Read read(const std::string& data, const std::string& name = "a.zip", std::size_t piece = 0,
          std::size_t budget = 64 << 20) {
  std::size_t files_left = kMaxArchiveFiles;
  ArchiveReader r(name, &budget, &files_left);
  if (piece == 0) {
    r.feed(data);
  } else {
    for (std::size_t i = 0; i < data.size(); i += piece) r.feed(std::string_view(data).substr(i, piece));
  }
  r.finish();
  return Read{r.files(), r.problem(), r.over_budget(), budget};
}

// "name@archive" for each file, with "!" when unopened.
std::vector<std::string> listed(const Read& r) {
  std::vector<std::string> out;
  for (const ArchiveFile& f : r.files) out.push_back(f.name + "@" + f.archive + (f.unopened ? "!" : ""));
  return out;
}

using V = std::vector<std::string>;

const std::string kExe = "MZ" + std::string(3000, 'x');

}  // namespace

TEST_CASE("nested: a ZIP inside a ZIP, stored, deflated, with a data descriptor, in any pieces", "[mime][nested]") {
  const std::string inner = zip({{"readme.txt", "hello"}, {"setup.exe", kExe}});
  for (int method : {0, 8}) {
    for (bool descriptor : {false, true}) {
      const std::string outer = zip({{"notes.txt", "some text " + std::string(5000, 'n')},
                                     {"docs/Invoice.ZIP", inner, method, descriptor},
                                     {"after.txt", "x"}});
      for (std::size_t piece : {0, 1, 7, 4096}) {
        INFO("method " << method << " descriptor " << descriptor << " piece " << piece);
        const Read r = read(outer, "a.zip", piece);
        CHECK(r.problem.empty());
        CHECK(listed(r) == V{"notes.txt@", "docs/Invoice.ZIP@", "after.txt@", "readme.txt@docs/Invoice.ZIP",
                             "setup.exe@docs/Invoice.ZIP"});
      }
    }
  }
}

TEST_CASE("nested: a stored file with a data descriptor whose data holds a false one", "[mime][nested]") {
  // "PK\7\8" inside the data with a size that does not match is data.
  const std::string inner = zip({{"setup.exe", kExe}}, "PK\x07\x08" + le(0, 4) + le(3, 4) + le(3, 4));
  const Read r = read(zip({{"x.zip", inner, 0, true}}), "a.zip", 5);
  CHECK(r.problem.empty());
  CHECK(listed(r) == V{"x.zip@", "setup.exe@x.zip"});
}

TEST_CASE("nested: archives inside archives to four deep, not five", "[mime][nested]") {
  std::string archive = zip({{"setup.exe", kExe}});
  for (int depth = 2; depth <= 5; ++depth) {
    archive = zip({{"level" + std::to_string(depth) + ".zip", archive, depth % 2 == 0 ? 8 : 0}});
    const Read r = read(archive);
    INFO("depth " << depth);
    if (depth <= kMaxArchiveDepth) {
      CHECK(r.problem.empty());
      REQUIRE(!r.files.empty());
      CHECK(r.files.back().name == "setup.exe");
      CHECK(r.files.back().archive == "level2.zip");
      CHECK(r.files.size() == static_cast<std::size_t>(depth));
    } else {
      CHECK(r.problem == "archives nested more than 4 deep");
      CHECK(r.files.empty());
    }
  }
}

TEST_CASE("nested: an archive postern does not open is listed as unopened", "[mime][nested]") {
  const std::string inner = zip({{"setup.exe", kExe}});
  // Encrypted, compressed with bzip2 (12), LZMA (14), Deflate64 (9).
  for (const ZipFile& f : {ZipFile{"x.zip", inner, 0, false, true}, ZipFile{"x.zip", inner, 12},
                           ZipFile{"x.zip", inner, 14}, ZipFile{"x.zip", inner, 9}}) {
    INFO("method " << f.method << " encrypted " << f.encrypted);
    const Read r = read(zip({{"a.txt", "a"}, f}));
    CHECK(r.problem.empty());
    CHECK(listed(r) == V{"a.txt@", "x.zip@!"});
  }
  // A tar link named as one: bsdtar and 7-Zip extract another entry's data under its name.
  CHECK(listed(read(tar({{"data.bin", inner}, {"invoice.zip", "->data.bin"}}), "a.tar")) ==
        V{"setup.exe@", "data.bin@", "invoice.zip@!"});
  // Not named as an archive: a file like any other, whatever it holds.
  CHECK(listed(read(zip({{"report.docx", inner}}))) == V{"report.docx@"});
  // Empty: hides nothing.
  CHECK(listed(read(zip({{"empty.zip", ""}}))) == V{"empty.zip@"});
}

TEST_CASE("nested: ZIP data that does not match the central directory is a problem", "[mime][nested]") {
  const std::string inner = zip({{"setup.exe", kExe}});
  ZipFile f{"x.zip", inner};
  f.crc_xor = 1;
  CHECK(read(zip({f})).problem == "a ZIP archive whose file data does not match its central directory");
  // Deflated data cut short inside its stream.
  std::string outer = zip({{"x.zip", inner}});
  const std::size_t data = 30 + 5;
  const std::string body = raw_deflate(inner);
  outer.replace(data + body.size() / 2, 4, "\xFF\xFF\xFF\xFF");
  CHECK(!read(outer).problem.empty());
}

TEST_CASE("nested: a ZIP behind a self-extractor's stub", "[mime][nested]") {
  const std::string inner = zip({{"setup.exe", kExe}});
  const Read r = read(zip({{"a.txt", "a"}, {"x.zip", inner}}, std::string(70000, '\x90')), "sfx.zip", 1000);
  CHECK(r.problem.empty());
  CHECK(listed(r) == V{"a.txt@", "x.zip@", "setup.exe@x.zip"});
}

TEST_CASE("nested: in a tar archive, a compressed tar archive, a file compressed whole", "[mime][nested]") {
  const std::string inner = zip({{"setup.exe", kExe}});
  const std::string archive = tar({{"readme.txt", "hi"}, {"dir/inner.zip", inner}, {"z.txt", "z"}});
  // The ZIP reader finds the inner archive's end records in the tar
  // archive's last octets, and lists its file too, as 7-Zip's would.
  for (std::size_t piece : {0, 3, 512}) {
    CHECK(listed(read(archive, "a.tar", piece)) ==
          V{"setup.exe@", "readme.txt@", "dir/inner.zip@", "z.txt@", "setup.exe@dir/inner.zip"});
    CHECK(listed(read(gzip(archive), "a.tgz", piece)) ==
          V{"readme.txt@", "dir/inner.zip@", "z.txt@", "setup.exe@dir/inner.zip"});
  }
  // By its own name without the suffix, by the name in its gzip header, and small (under 512 octets).
  CHECK(listed(read(gzip(inner), "inner.zip.gz")) == V{"inner.zip@", "setup.exe@inner.zip"});
  CHECK(listed(read(gzip(inner, "inner.zip"), "attachment.gz")) == V{"inner.zip@", "attachment@", "setup.exe@inner.zip"});
  const std::string small = zip({{"a.js", "x"}}, "");
  REQUIRE(small.size() < 512);
  CHECK(listed(read(gzip(small), "s.zip.gz")) == V{"s.zip@", "a.js@s.zip"});
  // A ZIP in a tar in a ZIP.
  CHECK(listed(read(zip({{"t.tar", archive}}))) == V{"t.tar@", "setup.exe@t.tar", "readme.txt@t.tar", "dir/inner.zip@t.tar",
                                                     "z.txt@t.tar", "setup.exe@dir/inner.zip"});
}

TEST_CASE("nested: an archive inside that inflates past the budget is a problem", "[mime][nested]") {
  // 2 MiB of zeros before the inner archive (a stub) deflate to a few KiB.
  const std::string inner = zip({{"setup.exe", kExe}}, std::string(2 << 20, '\0'));
  const std::string outer = zip({{"x.zip", inner}});
  REQUIRE(outer.size() < 64 * 1024);
  const Read r = read(outer, "a.zip", 0, 1 << 20);
  CHECK(r.over_budget);
  CHECK(r.problem == decompression_budget_problem());
  CHECK(r.budget_left == 0);
  const Read fits = read(outer, "a.zip", 0, 4 << 20);
  CHECK(!fits.over_budget);
  CHECK(listed(fits) == V{"x.zip@", "setup.exe@x.zip"});
  CHECK(fits.budget_left == (4u << 20) - inner.size());
  // Stored, nothing is decompressed.
  CHECK(read(zip({{"x.zip", inner, 0}}), "a.zip", 0, 1 << 20).budget_left == 1u << 20);
}

TEST_CASE("nested: the structure lists the files of an archive inside an attached one", "[mime][nested]") {
  const std::string archive = zip({{"y.zip", zip({{"b.txt", "b"}, {"c.zip", "not an archive"}})},
                                   {"z.zip", zip({{"d.txt", "d"}}), 12}});
  std::string encoded;
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (std::size_t i = 0; i < archive.size(); i += 3) {
    std::uint32_t v = static_cast<std::uint32_t>(static_cast<unsigned char>(archive[i])) << 16;
    if (i + 1 < archive.size()) v |= static_cast<std::uint32_t>(static_cast<unsigned char>(archive[i + 1])) << 8;
    if (i + 2 < archive.size()) v |= static_cast<unsigned char>(archive[i + 2]);
    encoded += k[v >> 18 & 63];
    encoded += k[v >> 12 & 63];
    encoded += i + 1 < archive.size() ? k[v >> 6 & 63] : '=';
    encoded += i + 2 < archive.size() ? k[v & 63] : '=';
    if (encoded.size() % 78 == 76) encoded += "\r\n";
  }
  const Structure s = read_structure(
      "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/zip; name=\"a.zip\"\r\n"
      "Content-Transfer-Encoding: base64\r\n\r\n" +
      encoded + "\r\n--b--\r\n");
  CHECK(s.problem.empty());
  std::vector<std::string> names;
  for (const Part& p : s.parts) names.push_back(p.filename + "@" + p.archive + (p.unopened ? "!" : ""));
  // c.zip is opened and holds no archive (no reader lists anything in it).
  CHECK(names == V{"a.zip@", "y.zip@a.zip", "z.zip@a.zip!", "b.txt@y.zip", "c.zip@y.zip"});
}

TEST_CASE("nested: local headers and a central directory that disagree are a problem", "[mime][nested]") {
  const std::string kDisagree = "a ZIP archive whose local headers and central directory disagree";
  const std::string inner = zip({{"setup.exe", kExe}});
  // The directory names a.txt where the local header, which 7-Zip shows, names x.zip.
  CHECK(read(zip({ZipFile{"a.txt", inner, 8, false, false, "x.zip"}})).problem == kDisagree);
  CHECK(read(zip({ZipFile{"x.zip", inner, 8, false, false, "x.txt"}})).problem == kDisagree);
  // A local header the directory leaves out, archive or not, at the top level too.
  for (const std::string& name : {std::string("x.zip"), std::string("setup.exe")}) {
    ZipFile hidden{name, name == "x.zip" ? inner : kExe};
    hidden.unlisted = true;
    CHECK(read(zip({{"a.txt", "a"}, hidden, {"b.txt", "b"}})).problem == kDisagree);
    CHECK(read(zip({hidden, {"b.txt", "b"}}), "a.zip", 3).problem == kDisagree);
  }
  // The directory says an archive is empty that is not.
  ZipFile empty{"x.zip", inner};
  empty.central_size_zero = true;
  CHECK(read(zip({empty})).problem == "a ZIP archive whose file data does not match its central directory");
  // An offset past any stream in a Zip64 field, behind a stub: no arithmetic overflow, a problem.
  ZipFile far{"x.zip", inner};
  far.zip64_offset = true;
  far.offset64 = 0x7FFFFFFFFFFFFFF0;
  CHECK(read(zip({far}, std::string(4096, 'S'))).problem == kDisagree);
  // The honest archive they were made from is read.
  CHECK(listed(read(zip({{"a.txt", "a"}, {"x.zip", inner}}))) == V{"a.txt@", "x.zip@", "setup.exe@x.zip"});
}

TEST_CASE("nested: a name cut at a NUL, as listed and extracted", "[mime][nested]") {
  const std::string inner = zip({{"setup.exe", kExe}});
  const Read r = read(zip({{std::string("inner.zip\0.txt", 14), inner}}));
  REQUIRE(r.files.size() == 2);
  CHECK(r.files[1].name == "setup.exe");
  CHECK(r.files[1].archive.starts_with("inner.zip"));
}

TEST_CASE("nested: a large archive compressed whole is read to its end", "[mime][nested]") {
  // Random octets do not compress: the inner archive's end records come
  // long after the first piece decompressed.
  std::string noise;
  std::uint32_t x = 12345;
  for (int i = 0; i < 40000; ++i) noise += static_cast<char>((x = x * 1103515245 + 12345) >> 24);
  const std::string inner = zip({{"photo.jpg", noise, 0}, {"setup.exe", kExe}});
  for (std::size_t piece : {0, 100, 4096}) {
    CHECK(listed(read(gzip(inner), "invoice.zip.gz", piece)) ==
          V{"invoice.zip@", "photo.jpg@invoice.zip", "setup.exe@invoice.zip"});
  }
}

TEST_CASE("nested: the budget spent by two readers is a problem however the input is split", "[mime][nested]") {
  // A gzip stream, then the local header of an archive inflating to 2 MiB
  // with no end records: the gzip reader and the ZIP walk share 1 MiB.
  std::string walked = zip({{"b.zip", std::string(2 << 20, '\0')}});
  walked.resize(walked.find("PK\x01\x02"));
  const std::string data = gzip(std::string(100000, 'a')) + walked;
  for (std::size_t piece : {0, 1, 512, 4096}) {
    INFO("piece " << piece);
    const Read r = read(data, "a.gz", piece, 1 << 20);
    CHECK(r.problem == decompression_budget_problem());
  }
}

TEST_CASE("nested: a local header arriving an octet at a time", "[mime][nested]") {
  const std::string inner = zip({{"setup.exe", kExe}});
  const std::string name = std::string(60000, 'd') + "/x.zip";
  const Read r = read(zip({{name, inner}}), "a.zip", 1);
  CHECK(r.problem.empty());
  CHECK(listed(r) == V{name + "@", "setup.exe@" + name});
}

TEST_CASE("nested: a ZIP at the end of a tar archive past 2 MiB is checked too", "[mime][nested]") {
  const std::string inner = zip({{"setup.exe", kExe}});
  const std::string first = zip({{"a.txt", "a"}});
  const Read r = read(tar({{"first.zip", first}, {"big.bin", std::string(3 << 20, 'b')}, {"last.zip", inner}}), "a.tar");
  CHECK(r.problem.empty());
  CHECK(listed(r) == V{"setup.exe@", "first.zip@", "big.bin@", "last.zip@", "a.txt@first.zip", "setup.exe@last.zip"});
}

TEST_CASE("nested: a local header left out among more than the walk keeps", "[mime][nested]") {
  std::vector<ZipFile> files;
  ZipFile hidden{"setup.exe", kExe, 0};
  hidden.unlisted = true;
  files.push_back(hidden);
  for (int i = 0; i < static_cast<int>(kMaxArchiveFiles); ++i) files.push_back({"f" + std::to_string(i), "x", 0});
  CHECK(read(zip(files)).problem == "a ZIP archive whose local headers and central directory disagree");
  files.erase(files.begin());
  const Read r = read(zip(files));
  CHECK(r.problem.empty());
  CHECK(r.files.size() == kMaxArchiveFiles);
}

TEST_CASE("nested: a reader without an opener reads no archive inside", "[mime][nested]") {
  const std::string inner = zip({{"setup.exe", kExe}});
  std::size_t budget = 64 << 20;
  CompressedReader whole("inner.zip.gz", &budget);
  whole.feed(gzip(inner + std::string(5000, 'p')));
  whole.finish();
  CHECK(whole.problem().empty());
  CHECK(whole.names() == V{"inner.zip"});
  CHECK(whole.inners().empty());
}
