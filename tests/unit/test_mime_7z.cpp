// The 7z reader (filters/lua/mime_7z.h), and the cabinet reader
// (mime_cab.h) beside it: the names a 7z archive holds, from a
// header stored plain or packed with LZMA or LZMA2 as 7-Zip writes it, fed
// in any pieces; and each way a header could hide a name, which is a problem.
// Archives are built here field by field (7zFormat.txt), packed with liblzma.
#include <lzma.h>
#include <zlib.h>

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "filters/lua/mime.h"
#include "filters/lua/mime_7z.h"
#include "filters/lua/mime_cab.h"
#include "filters/lua/mime_compressed.h"
#include "filters/text/ascii.h"
#include "filters/text/base64.h"

using namespace postern::mime;

namespace {

std::string le(std::uint64_t v, int octets) {
  std::string out;
  for (int i = 0; i < octets; ++i) out += static_cast<char>(v >> (8 * i) & 0xFF);
  return out;
}

// 7z's UINT64: the first octet's leading ones count the octets after it.
std::string num(std::uint64_t v) {
  for (int extra = 0; extra < 8; ++extra) {
    if (v < (std::uint64_t{1} << (7 * (extra + 1)))) {
      const auto high = static_cast<unsigned>(v >> (8 * extra));
      const unsigned mask = 0xFF00u >> extra & 0xFF;
      return std::string(1, static_cast<char>(mask | high)) + le(v, extra);
    }
  }
  return "\xFF" + le(v, 8);
}

std::string utf16_names(const std::vector<std::u16string>& names) {
  std::string out;
  for (const std::u16string& n : names) {
    for (char16_t u : n) out += le(u, 2);
    out += le(0, 2);
  }
  return out;
}

// A Header: main streams info for one stored folder of `data` holding two
// streams, then the files' names (and an attribute property before them).
std::string plain_header(const std::vector<std::u16string>& names, std::size_t data) {
  std::string h = "\x01";  // kHeader
  h += "\x04";             // kMainStreamsInfo
  h += "\x06" + num(0) + num(1) + "\x09" + num(data) + std::string(1, '\0');  // PackInfo
  h += "\x07\x0B" + num(1) + std::string(1, '\0');                            // UnpackInfo: one folder
  h += num(1) + std::string("\x01\x00", 2);                                   // one coder: copy
  h += "\x0C" + num(data) + std::string(1, '\0');                             // its unpack size; kEnd
  h += "\x08\x0D" + num(2) + "\x09" + num(data / 2);                          // SubStreamsInfo: 2 streams
  h += "\x0A\x01" + le(0x1234, 4) + le(0x5678, 4) + std::string(1, '\0');     // their CRCs; kEnd
  h += std::string(1, '\0');                                                  // end of streams info
  h += "\x05" + num(names.size());                                            // FilesInfo
  const std::string attributes = "\x01" + std::string(1, '\0') + std::string(4 * names.size(), '\x20');
  h += "\x15" + num(attributes.size()) + attributes;                          // kWinAttributes
  const std::string name_property = std::string(1, '\0') + utf16_names(names);
  h += "\x11" + num(name_property.size()) + name_property;
  h += std::string(1, '\0') + std::string(1, '\0');  // end of FilesInfo, of Header
  return h;
}

std::string lzma_pack(const std::string& plain, bool lzma2, std::string& properties) {
  lzma_options_lzma options;
  lzma_lzma_preset(&options, 6);
  lzma_filter filters[2] = {{lzma2 ? LZMA_FILTER_LZMA2 : LZMA_FILTER_LZMA1, &options}, {LZMA_VLI_UNKNOWN, nullptr}};
  std::uint32_t size = 0;
  lzma_properties_size(&size, &filters[0]);
  properties.resize(size);
  lzma_properties_encode(&filters[0], reinterpret_cast<std::uint8_t*>(properties.data()));
  lzma_stream s = LZMA_STREAM_INIT;
  REQUIRE(lzma_raw_encoder(&s, filters) == LZMA_OK);
  std::string out(plain.size() + 1024, '\0');
  s.next_in = reinterpret_cast<const std::uint8_t*>(plain.data());
  s.avail_in = plain.size();
  s.next_out = reinterpret_cast<std::uint8_t*>(out.data());
  s.avail_out = out.size();
  REQUIRE(lzma_code(&s, LZMA_FINISH) == LZMA_STREAM_END);
  out.resize(out.size() - s.avail_out);
  lzma_end(&s);
  return out;
}

// An EncodedHeader for a header packed at `pack_pos` with one coder.
std::string encoded_header(std::uint64_t pack_pos, std::size_t packed, const std::string& coder_id,
                           const std::string& properties, std::size_t unpacked) {
  std::string h = "\x17";
  h += "\x06" + num(pack_pos) + num(1) + "\x09" + num(packed) + std::string(1, '\0');
  h += "\x07\x0B" + num(1) + std::string(1, '\0') + num(1);
  h += std::string(1, static_cast<char>(coder_id.size() | (properties.empty() ? 0 : 0x20))) + coder_id;
  if (!properties.empty()) h += num(properties.size()) + properties;
  h += "\x0C" + num(unpacked) + std::string(1, '\0');
  return h + std::string(1, '\0');
}

// Signature, version 0.4, the start header after its CRC (the header's own
// CRC is not checked by readers of names), then the rest.
std::string start_header(std::uint64_t offset, std::uint64_t size) {
  const std::string fields = le(offset, 8) + le(size, 8) + le(0, 4);
  return std::string("7z\xBC\xAF\x27\x1C\x00\x04", 8) +
         le(crc32(0, reinterpret_cast<const Bytef*>(fields.data()), static_cast<uInt>(fields.size())), 4) + fields;
}

std::string archive(const std::string& body, const std::string& header, const std::string& before = "") {
  return before + start_header(body.size(), header.size()) + body + header;
}

// An archive of two files' data whose header is packed (LZMA, or LZMA2) after it, as 7-Zip writes one.
std::string packed_archive(const std::vector<std::u16string>& names, bool lzma2 = false, const std::string& before = "") {
  const std::string data(64, 'D');
  const std::string plain = plain_header(names, data.size());
  std::string properties;
  const std::string packed = lzma_pack(plain, lzma2, properties);
  return archive(data + packed,
                 encoded_header(data.size(), packed.size(), lzma2 ? "\x21" : "\x03\x01\x01", properties, plain.size()),
                 before);
}

std::vector<std::string> names_of(const std::string& a, std::string* problem = nullptr, std::size_t piece = 0) {
  SevenZipReader r;
  if (piece == 0) piece = a.size() + 1;
  for (std::size_t i = 0; i < a.size(); i += piece) r.feed(std::string_view(a).substr(i, piece));
  r.finish();
  if (problem) *problem = r.problem();
  return r.names();
}

using V = std::vector<std::string>;

}  // namespace

TEST_CASE("7z: the names in a header stored plain or packed, fed whole or in pieces", "[mime][7z]") {
  const std::vector<std::u16string> names{u"docs", u"docs/r\u00E9sum\u00E9.pdf", u"docs/\u00FCber.exe"};
  const V expected{"docs", "docs/r\xC3\xA9sum\xC3\xA9.pdf", "docs/\xC3\xBC" "ber.exe"};
  const std::string data(64, 'D');
  const std::string plain = archive(data, plain_header(names, data.size()));
  const std::string lzma = packed_archive(names);
  const std::string lzma2 = packed_archive(names, true);
  const std::string stub = packed_archive(names, false, std::string(100000, 'M') + "7z");  // behind a stub
  for (std::size_t piece : {std::size_t{1}, std::size_t{5}, std::size_t{31}, std::size_t{4096}, std::size_t{0}}) {
    for (const std::string* a : {&plain, &lzma, &lzma2, &stub}) {
      std::string problem = "x";
      INFO("piece " << piece << ", archive " << a->size() << " octets");
      CHECK(names_of(*a, &problem, piece) == expected);
      CHECK(problem.empty());
    }
  }
}

TEST_CASE("7z: what is no archive, and each header that could hide a name", "[mime][7z]") {
  std::string problem = "x";
  const std::vector<std::u16string> one{u"setup.exe"};
  CHECK(names_of("7z is how this text starts", &problem).empty());
  CHECK(problem.empty());
  CHECK(names_of(std::string(kMaxSevenZipPrefix + 10, 'x') + packed_archive(one), &problem).empty());
  CHECK(problem.empty());  // past the prefix readers search: no archive
  CHECK(names_of(archive("", ""), &problem).empty());
  CHECK(problem.empty());  // an empty archive: no header

  const std::string whole = packed_archive(one);
  names_of(whole.substr(0, whole.size() - 3), &problem);
  CHECK(problem == "a 7z archive cut short");
  CHECK(names_of(whole.substr(0, 20), &problem).empty());
  CHECK(problem.empty());  // no start header: nothing opens it
  // A signature whose start header's CRC does not match is none; the search goes on past it.
  std::string fake = start_header(0, 10);
  fake[9] ^= 1;
  CHECK(names_of(fake + "junk", &problem).empty());
  CHECK(problem.empty());
  for (std::size_t piece : {std::size_t{1}, std::size_t{7}, std::size_t{0}}) {
    CHECK(names_of(std::string(fake) + "7z\xBC\xAF" + packed_archive(one, false, fake.substr(0, 20)), &problem, piece) ==
          V{"setup.exe"});
    CHECK(problem.empty());
  }

  // File names encrypted (7-Zip's -mhe=on): the header packed through AES.
  const std::string aes = encoded_header(0, 16, std::string("\x06\xF1\x07\x01", 4), std::string(10, 'k'), 100);
  names_of(archive(std::string(16, 'E'), aes), &problem);
  CHECK(problem == "a 7z archive whose file names are encrypted");
  // A method not read here (PPMd), and a packed stream that does not unpack.
  names_of(archive(std::string(16, 'P'), encoded_header(0, 16, "\x03\x04\x01", "\x06\x00\x00\x10\x00", 100)), &problem);
  CHECK(problem == "a 7z header packed with a method postern does not read");
  std::string properties;
  const std::string packed = lzma_pack(std::string(1000, 'h'), false, properties);
  names_of(archive(packed.substr(0, packed.size() / 2), encoded_header(0, packed.size() / 2, "\x03\x01\x01", properties, 1000)),
           &problem);
  CHECK(problem == "a 7z header that does not unpack");
  // Sizes over the bounds: the header stored, and unpacked.
  names_of(start_header(0, kMaxSevenZipHeader + 1) + std::string(kMaxSevenZipHeader + 1, '\0'), &problem);
  CHECK(problem == "a 7z archive whose header is larger than 1 MiB");
  names_of(archive(packed, encoded_header(0, packed.size(), "\x03\x01\x01", properties, kMaxSevenZipNames + 1)), &problem);
  CHECK(problem == "a 7z archive whose header unpacks to more than 8 MiB");
  // A packed header whose packed stream lies before what is kept of the end.
  const std::string far = encoded_header(0, packed.size(), "\x03\x01\x01", properties, 1000);
  names_of(archive(packed + std::string(3 * kMaxSevenZipHeader, 'F'), far), &problem);
  CHECK(problem == "a 7z archive whose header is not at its end");
  // Names stored in another stream (External), and a header that does not parse.
  names_of(archive("", std::string("\x01\x05\x01\x11\x02\x01\x00\x00\x00", 9)), &problem);
  CHECK(problem == "a 7z archive whose file names are stored elsewhere");
  names_of(archive("", std::string("\x01\x05\x01\x11\x05\x00" "a\x00" "b\x00", 10) + std::string(2, '\0')), &problem);
  CHECK(problem == "a 7z header that does not parse");  // a name without its NUL
  names_of(archive("", "\x42"), &problem);
  CHECK(problem == "a 7z header that does not parse");
  // A count larger than the header could hold is refused before any loop runs.
  names_of(archive("", "\x01\x04\x07\x0B" + num(std::uint64_t{1} << 60)), &problem);
  CHECK(problem == "a 7z header that does not parse");
  // A blank start header (an archive whose writing stopped), which 7-Zip
  // reads by searching the end for the header.
  names_of(std::string("7z\xBC\xAF\x27\x1C\x00\x04", 8) + std::string(24, '\0') + plain_header(one, 0), &problem);
  CHECK(problem == "a 7z archive whose start header is blank");
  // Octets after the header's end, and a packed header that unpacks to another packed one.
  names_of(archive("", plain_header(one, 0) + "x"), &problem);
  CHECK(problem == "a 7z header that does not parse");
  const std::string inner = encoded_header(0, 1, std::string(1, '\0'), "", 1);
  names_of(archive(inner, encoded_header(0, inner.size(), std::string(1, '\0'), "", inner.size())), &problem);
  CHECK(problem == "a 7z header packed twice");
  // An unpacked header spends the message's decompression budget.
  {
    std::size_t budget = 10;
    SevenZipReader r(&budget);
    const std::string a = packed_archive({u"a.txt", u"b.txt"});
    r.feed(a);
    r.finish();
    CHECK(r.problem() == postern::mime::decompression_budget_problem());
    CHECK(r.over_budget());
    budget = 1 << 20;
    SevenZipReader enough(&budget);
    enough.feed(a);
    enough.finish();
    CHECK(enough.names() == V{"a.txt", "b.txt"});
    CHECK(budget < (1 << 20));
  }
  // More names than kMaxArchiveFiles.
  names_of(archive(std::string(64, 'D'), plain_header(std::vector<std::u16string>(kMaxArchiveFiles + 1, u"f"), 64)),
           &problem);
  CHECK(problem == "a 7z archive of more than 10000 files");
}

TEST_CASE("7z: listed from a part named or typed as an archive, with the archive's name", "[mime][7z]") {
  const std::string a = packed_archive({u"a.txt", u"viewer.exe"}, true);
  for (std::string head : {"Content-Type: application/x-7z-compressed; name=\"scan.7z\"",
                           "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"SCAN.7Z \"",
                           "Content-Type: application/zip; name=\"scan.zip\""}) {  // archivers go by content
    const std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + head +
                          "\r\nContent-Transfer-Encoding: base64\r\n\r\n" + postern::base64_encode(a, 76) + "\r\n--b--\r\n";
    Structure s = read_structure(m);
    INFO(head);
    REQUIRE(s.problem.empty());
    REQUIRE(s.parts.size() == 1 + 2);
    CHECK(s.parts[1].filename == "a.txt");
    CHECK(s.parts.back().filename == "viewer.exe");
    CHECK(s.parts.back().transfer_encoding == "x-7z");
    CHECK(postern::ascii::to_lower(s.parts.back().archive).starts_with("scan."));
  }
  // A part neither named nor typed as an archive is not opened (a reader opens it by its type).
  const std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/pdf; name=a.pdf"
                        "\r\nContent-Transfer-Encoding: base64\r\n\r\n" + postern::base64_encode(a, 76) + "\r\n--b--\r\n";
  CHECK(read_structure(m).parts.size() == 1);
}

namespace {

// A cabinet (MS-CAB) of stored files, each (name, attributes); its file
// entries right after the one folder entry.
std::string cabinet(const std::vector<std::pair<std::string, unsigned>>& files) {
  std::string entries;
  for (const auto& [name, attributes] : files) entries += le(4, 4) + le(0, 4) + le(0, 2) + le(0, 2) + le(0, 2) + le(attributes, 2) + name + '\0';
  const std::size_t coff_files = 36 + 8;
  const std::size_t data_at = coff_files + entries.size();
  const std::string data = le(0, 4) + le(4 * files.size(), 2) + le(4 * files.size(), 2) + std::string(4 * files.size(), 'd');
  return "MSCF" + le(0, 4) + le(data_at + data.size(), 4) + le(0, 4) + le(coff_files, 4) + le(0, 4) + "\x03\x01" + le(1, 2) +
         le(files.size(), 2) + le(0, 2) + le(0, 2) + le(0, 2) + le(data_at, 4) + le(1, 2) + le(0, 2) + entries + data;
}

V cab_names(const std::string& c, std::string* problem = nullptr, std::size_t piece = 0) {
  CabReader r;
  if (piece == 0) piece = c.size() + 1;
  for (std::size_t i = 0; i < c.size(); i += piece) r.feed(std::string_view(c).substr(i, piece));
  r.finish();
  if (problem) *problem = r.problem();
  return r.names();
}

}  // namespace

TEST_CASE("cab: the names in a cabinet's file entries", "[mime][7z]") {
  const std::string c = cabinet({{"readme.txt", 0x20}, {"\x81" "ber.exe", 0x20}, {"r\xC3\xA9sum\xC3\xA9.js", 0xA0}});
  for (std::size_t piece : {std::size_t{1}, std::size_t{7}, std::size_t{0}}) {
    std::string problem = "x";
    CHECK(cab_names(c, &problem, piece) == V{"readme.txt", "\xC3\xBC" "ber.exe", "r\xC3\xA9sum\xC3\xA9.js"});  // CP437, UTF-8
    CHECK(problem.empty());
  }
  std::string problem = "x";
  CHECK(cab_names("MSCF is how these notes start, and they are long enough.", &problem).empty());
  CHECK(problem.empty());  // no format version 1: no cabinet
  CHECK(cab_names("no cabinet at all, setup.exe", &problem).empty());
  CHECK(problem.empty());
  cab_names(c.substr(0, 60), &problem);
  CHECK(problem == "a cabinet cut short");
  // Entries past the first 1 MiB (a header pointing far into the file).
  std::string far = c;
  far.replace(16, 4, le(2 * kMaxCabHeader, 4));
  cab_names(far + std::string(3 * kMaxCabHeader, 'x'), &problem);
  CHECK(problem == "a cabinet whose file entries lie past its first 1 MiB");
  std::string many = c;
  many.replace(28, 2, le(kMaxArchiveFiles + 1, 2));
  cab_names(many, &problem);
  CHECK(problem == "a cabinet of more than 10000 files");
  // In a part named *.cab, listed after it.
  const std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/octet-stream; "
                        "name=\"Update.CAB\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + postern::base64_encode(c, 76) +
                        "\r\n--b--\r\n";
  Structure s = read_structure(m);
  REQUIRE(s.problem.empty());
  REQUIRE(s.parts.size() == 4);
  CHECK(s.parts[2].filename == "\xC3\xBC" "ber.exe");
  CHECK(s.parts[2].transfer_encoding == "x-cab");
}
