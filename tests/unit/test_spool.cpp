// Spool: content in memory up to a threshold, then in an unlinked temp file;
// read() returns the same bytes at any offset.
#include <catch2/catch.hpp>

#include <dirent.h>

#include <string>
#include <vector>

#include "filters/spool.h"
#include "test_util.h"

using postern::Spool;
using postern::test::TempDir;

namespace {

// Deterministic content that differs at every offset of a block.
std::string pattern(std::size_t n, unsigned seed = 7) {
  std::string s(n, '\0');
  std::uint32_t x = seed;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

std::string read_at(const Spool& spool, std::size_t offset, std::size_t len) {
  std::string out(len, '\0');
  long n = spool.read(offset, out.data(), len);
  REQUIRE(n >= 0);
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::string read_all(const Spool& spool, std::size_t chunk) {
  std::string all;
  for (;;) {
    std::string part = read_at(spool, all.size(), chunk);
    if (part.empty()) return all;
    all += part;
  }
}

std::size_t entries(const std::string& dir) {
  std::size_t n = 0;
  DIR* d = ::opendir(dir.c_str());
  REQUIRE(d != nullptr);
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") ++n;
  }
  ::closedir(d);
  return n;
}

std::size_t open_fds() {
  std::size_t n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return 0;
  while (::readdir(d)) ++n;
  ::closedir(d);
  return n;
}

}  // namespace

TEST_CASE("Spool: small content stays in memory", "[spool]") {
  TempDir dir;
  Spool spool(64, dir.path());
  CHECK(spool.in_memory());
  CHECK(spool.size() == 0);
  CHECK(read_at(spool, 0, 10).empty());

  REQUIRE(spool.append("hello "));
  REQUIRE(spool.append(""));
  REQUIRE(spool.append("world\r\n"));
  REQUIRE(spool.finish());
  CHECK(spool.in_memory());
  CHECK(spool.size() == 13);
  CHECK(spool.memory() == "hello world\r\n");
  CHECK(read_at(spool, 0, 100) == "hello world\r\n");
  CHECK(read_at(spool, 6, 5) == "world");
  CHECK(read_at(spool, 12, 5) == "\n");
  CHECK(read_at(spool, 13, 5).empty());
  CHECK(read_at(spool, 1000, 5).empty());
  CHECK(entries(dir.path()) == 0);
}

TEST_CASE("Spool: the memory limit is inclusive", "[spool]") {
  TempDir dir;
  const std::string exact = pattern(100);
  SECTION("exactly at the limit") {
    Spool spool(100, dir.path());
    REQUIRE(spool.append(exact.substr(0, 60)));
    REQUIRE(spool.append(exact.substr(60)));
    CHECK(spool.in_memory());
    CHECK(spool.memory() == exact);
  }
  SECTION("one octet over spills") {
    Spool spool(100, dir.path());
    REQUIRE(spool.append(exact));
    CHECK(spool.in_memory());
    REQUIRE(spool.append("x"));
    CHECK_FALSE(spool.in_memory());
    REQUIRE(spool.finish());
    CHECK(spool.size() == 101);
    CHECK(read_all(spool, 7) == exact + "x");
  }
  SECTION("a memory limit of 0 spills at the first octet") {
    Spool spool(0, dir.path());
    REQUIRE(spool.append(""));
    CHECK(spool.in_memory());
    REQUIRE(spool.append("a"));
    CHECK_FALSE(spool.in_memory());
    REQUIRE(spool.finish());
    CHECK(read_all(spool, 1) == "a");
  }
}

TEST_CASE("Spool: large content spills to an unlinked file, read back at any offset", "[spool]") {
  TempDir dir;
  const std::size_t total = 1300 * 1000 + 17;  // several 256 KiB write blocks and a tail
  const std::string content = pattern(total);
  Spool spool(4096, dir.path());
  // Appends of uneven sizes, some larger than a write block.
  const std::vector<std::size_t> sizes{1, 4095, 1, 7919, 300000, 13, 65536, 262144, 262145, 999};
  std::size_t pos = 0, k = 0;
  while (pos < total) {
    std::size_t n = std::min(sizes[k++ % sizes.size()], total - pos);
    REQUIRE(spool.append(std::string_view(content).substr(pos, n)));
    pos += n;
  }
  CHECK_FALSE(spool.in_memory());
  CHECK(spool.size() == total);
  REQUIRE(spool.finish());
  CHECK(entries(dir.path()) == 0);  // the spill file has no name

  const std::vector<std::size_t> offsets{0, 1, 4095, 4096, 4097, 262143, 262144, 262145,
                                         524288, 999999, total - 1000, total - 1};
  for (std::size_t off : offsets) {
    for (std::size_t len : {std::size_t(1), std::size_t(100), std::size_t(70000)}) {
      INFO("offset " << off << " len " << len);
      std::string got = read_at(spool, off, len);
      CHECK(got.size() == std::min(len, total - off));
      CHECK(got == content.substr(off, len));
    }
  }
  CHECK(read_at(spool, total, 10).empty());
  CHECK(read_at(spool, total + 12345, 10).empty());
  CHECK(read_all(spool, 65536) == content);
}

TEST_CASE("Spool: finish() makes later appends readable too", "[spool]") {
  TempDir dir;
  Spool spool(10, dir.path());
  REQUIRE(spool.append("0123456789abc"));
  REQUIRE(spool.finish());
  CHECK(read_all(spool, 4) == "0123456789abc");
  REQUIRE(spool.append("def"));
  REQUIRE(spool.finish());
  CHECK(read_all(spool, 4) == "0123456789abcdef");
  CHECK(spool.size() == 16);
}

TEST_CASE("Spool: clear() resets for the next message", "[spool]") {
  TempDir dir;
  const std::size_t fds = open_fds();
  Spool spool(16, dir.path());
  REQUIRE(spool.append(pattern(1000)));
  REQUIRE_FALSE(spool.in_memory());
  REQUIRE(spool.finish());
  spool.clear();
  CHECK(spool.in_memory());
  CHECK(spool.size() == 0);
  CHECK(spool.memory().empty());
  CHECK(read_at(spool, 0, 10).empty());
  if (fds > 0) CHECK(open_fds() == fds);  // the spill file is closed

  REQUIRE(spool.append("next message"));
  CHECK(spool.in_memory());
  CHECK(spool.memory() == "next message");
  // And a second spill works after clear().
  const std::string big = pattern(5000, 99);
  REQUIRE(spool.append(big));
  CHECK_FALSE(spool.in_memory());
  REQUIRE(spool.finish());
  CHECK(read_all(spool, 333) == "next message" + big);
  spool.clear();
  CHECK(spool.size() == 0);
  CHECK(spool.in_memory());
}

TEST_CASE("Spool: the destructor closes the spill file", "[spool]") {
  TempDir dir;
  const std::size_t fds = open_fds();
  {
    Spool spool(1, dir.path());
    REQUIRE(spool.append("more than one"));
    REQUIRE_FALSE(spool.in_memory());
    if (fds > 0) CHECK(open_fds() == fds + 1);
  }
  if (fds > 0) CHECK(open_fds() == fds);
}

TEST_CASE("Spool: an unusable spool directory fails the append that spills", "[spool]") {
  Spool spool(8, "/nonexistent/postern-unit-test-dir");
  CHECK(spool.append("12345678"));  // still in memory
  CHECK(spool.in_memory());
  CHECK_FALSE(spool.append("9"));
  CHECK(spool.in_memory());
}

TEST_CASE("Spool: an empty directory means $TMPDIR", "[spool]") {
  TempDir dir;
  const char* old = std::getenv("TMPDIR");
  std::string saved = old ? old : "";
  ::setenv("TMPDIR", dir.path().c_str(), 1);
  {
    Spool spool(1, "");
    REQUIRE(spool.append("spill me"));
    CHECK_FALSE(spool.in_memory());
    REQUIRE(spool.finish());
    CHECK(read_all(spool, 3) == "spill me");
    CHECK(entries(dir.path()) == 0);
  }
  ::setenv("TMPDIR", "/nonexistent/postern-unit-test-dir", 1);
  {
    Spool spool(1, "");
    CHECK_FALSE(spool.append("spill me"));  // proves $TMPDIR is the one used
  }
  if (old) ::setenv("TMPDIR", saved.c_str(), 1);
  else ::unsetenv("TMPDIR");
}

TEST_CASE("Spool: the process-wide high-water mark sends the next spool to disk", "[spool]") {
  TempDir dir;
  const std::size_t before = Spool::memory_in_use();
  Spool::set_memory_high_water(before + 1000);
  {
    Spool a(10000, dir.path());
    REQUIRE(a.append(std::string(800, 'a')));
    CHECK(a.in_memory());
    CHECK(Spool::memory_in_use() == before + 800);

    // b is far below its own limit, but together they would pass 1000
    Spool b(10000, dir.path());
    REQUIRE(b.append(std::string(300, 'b')));
    CHECK_FALSE(b.in_memory());
    CHECK(Spool::memory_in_use() == before + 800);
    REQUIRE(b.finish());
    CHECK(read_at(b, 0, 1000) == std::string(300, 'b'));

    a.clear();
    CHECK(Spool::memory_in_use() == before);
    Spool c(10000, dir.path());
    REQUIRE(c.append(std::string(300, 'c')));
    CHECK(c.in_memory());
  }
  CHECK(Spool::memory_in_use() == before);  // every spool gave its share back
  Spool::set_memory_high_water(0);
  Spool d(10000, dir.path());
  REQUIRE(d.append(std::string(5000, 'd')));
  CHECK(d.in_memory());  // 0 = no bound
}

TEST_CASE("Spool: memory is counted as allocated and given back at clear", "[spool]") {
  TempDir dir;
  const std::size_t before = Spool::memory_in_use();
  Spool::set_memory_high_water(before + 3500);
  {
    Spool a(100000, dir.path());
    REQUIRE(a.append(std::string(1000, 'a')));
    CHECK(Spool::memory_in_use() == before + 1000);
    REQUIRE(a.append(std::string(100, 'a')));  // doubles: 2000 allocated, 2000 counted
    CHECK(a.in_memory());
    CHECK(Spool::memory_in_use() == before + 2000);
    REQUIRE(a.append(std::string(1500, 'a')));  // doubling to 4000 would pass 3500: exactly 2600
    CHECK(a.in_memory());
    CHECK(Spool::memory_in_use() == before + 2600);
    REQUIRE(a.append(std::string(2000, 'a')));  // no room at all: to the file, memory back
    CHECK_FALSE(a.in_memory());
    CHECK(Spool::memory_in_use() == before);  // and no write buffer: the total has no room for one
    REQUIRE(a.append(std::string(10, 'b')));
    REQUIRE(a.finish());
    CHECK(read_at(a, 0, 10000) == std::string(4600, 'a') + std::string(10, 'b'));
    a.clear();
    CHECK(Spool::memory_in_use() == before);
    REQUIRE(a.append(std::string(3000, 'c')));  // a new message: in memory again
    CHECK(a.in_memory());
    a.clear();  // an idle session's spool holds nothing
    CHECK(Spool::memory_in_use() == before);
  }
  Spool::set_memory_high_water(0);
}

TEST_CASE("Spool: a spilled spool buffers its writes when the total has room", "[spool]") {
  TempDir dir;
  const std::size_t before = Spool::memory_in_use();
  Spool::set_memory_high_water(0);
  Spool a(100, dir.path());
  REQUIRE(a.append(std::string(200, 'x')));
  CHECK_FALSE(a.in_memory());
  CHECK(Spool::memory_in_use() == before + 256 * 1024);  // the write buffer, counted
  for (int i = 0; i < 100; ++i) REQUIRE(a.append(std::string(7000, static_cast<char>('a' + i % 26))));
  CHECK(Spool::memory_in_use() == before + 256 * 1024);  // never grown past its block
  REQUIRE(a.finish());
  std::string expect(200, 'x');
  for (int i = 0; i < 100; ++i) expect += std::string(7000, static_cast<char>('a' + i % 26));
  CHECK(read_at(a, 0, expect.size() + 10) == expect);
  a.clear();
  CHECK(Spool::memory_in_use() == before);
}
