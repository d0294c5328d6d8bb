// The shared helpers that replaced private copies (issue 22): ASCII case and
// white space (filters/text/ascii.h), markup escapes (filters/text/markup.h), IPv4-mapped normalisation
// (filters/net/ip_address.h), write_all (filters/io/write_all.h).
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <clocale>
#include <string>

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>

#include "filters/dns/reverse_name.h"
#include "filters/io/write_all.h"
#include "filters/net/ip_address.h"
#include "filters/text/ascii.h"
#include "filters/text/markup.h"

using namespace postern;

TEST_CASE("ascii folds A-Z and a-z only, whatever the octet", "[ascii]") {
  CHECK(ascii::to_lower("MAIL FROM:<A@Example.COM>") == "mail from:<a@example.com>");
  CHECK(ascii::to_upper("ehlo x.example") == "EHLO X.EXAMPLE");
  // Every octet outside A-Z / a-z stays as it is: digits, punctuation, the
  // bytes next to the letters ('@' 0x40, '[' 0x5B, '`' 0x60, '{' 0x7B),
  // control characters, NUL and every octet >= 0x80 (UTF-8, Latin-1).
  for (int c = 0; c < 256; ++c) {
    const char ch = static_cast<char>(c);
    const bool upper = c >= 'A' && c <= 'Z', lower = c >= 'a' && c <= 'z';
    INFO("octet " << c);
    CHECK(ascii::to_lower(ch) == (upper ? static_cast<char>(c + 32) : ch));
    CHECK(ascii::to_upper(ch) == (lower ? static_cast<char>(c - 32) : ch));
    CHECK(ascii::is_upper(ch) == upper);
  }
  CHECK(ascii::to_lower(std::string("\xC3\x89T\xC3\xA9", 5)) == std::string("\xC3\x89t\xC3\xA9", 5));
  CHECK(ascii::to_lower(std::string("A\0B", 3)) == std::string("a\0b", 3));
}

TEST_CASE("ascii folding does not follow the C locale", "[ascii]") {
  // Under a Latin-1 locale std::tolower folds 0xC9 to 0xE9; ascii:: does not.
  const char* old = std::setlocale(LC_CTYPE, nullptr);
  std::string saved = old ? old : "C";
  if (std::setlocale(LC_CTYPE, "en_US.ISO-8859-1") || std::setlocale(LC_CTYPE, "C.UTF-8")) {
    CHECK(ascii::to_lower('\xC9') == '\xC9');
    CHECK_FALSE(ascii::iequals("\xC9", "\xE9"));
  }
  std::setlocale(LC_CTYPE, saved.c_str());
}

TEST_CASE("ascii::iequals and istarts_with", "[ascii]") {
  CHECK(ascii::iequals("STARTTLS", "starttls"));
  CHECK(ascii::iequals("", ""));
  CHECK_FALSE(ascii::iequals("DATA", "DAT"));
  CHECK_FALSE(ascii::iequals("DATA", "DATA "));
  CHECK_FALSE(ascii::iequals("@", "`"));  // 0x40 and 0x60 differ by 32 but are not letters
  CHECK_FALSE(ascii::iequals("[", "{"));
  CHECK(ascii::istarts_with("Content-Type: text/plain", "content-type:"));
  CHECK_FALSE(ascii::istarts_with("Content", "content-type"));
  static_assert(ascii::iequals("Received", "RECEIVED"));
}

TEST_CASE("ascii::trim and domain_key", "[ascii]") {
  CHECK(ascii::trim(" \t\r\n v=DKIM1 \r\n") == "v=DKIM1");
  CHECK(ascii::trim(" \t ").empty());
  CHECK(ascii::trim("a b") == "a b");
  CHECK(ascii::trim("\va\f") == "\va\f");  // only SP, HT, CR, LF
  CHECK(ascii::domain_key("Mail.Example.COM.") == "mail.example.com");
  CHECK(ascii::domain_key("example.com") == "example.com");
  CHECK(ascii::domain_key(".") == "");
  CHECK(ascii::domain_key("a..") == "a.");  // only the root's one dot
}

TEST_CASE("markup escapes the five markup characters and refuses controls", "[markup]") {
  auto html = [](std::string_view s) {
    std::string out;
    for (char c : s) {
      if (!markup::append_escaped(out, c, markup::Dialect::kHtml)) out += "[ctl]";
    }
    return out;
  };
  auto xml = [](std::string_view s) {
    std::string out;
    for (char c : s) {
      if (!markup::append_escaped(out, c, markup::Dialect::kXml)) out += "[ctl]";
    }
    return out;
  };
  CHECK(html("<a href=\"x\">Tom & Jerry's</a>") == "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;");
  CHECK(xml("<a href=\"x\">Tom & Jerry's</a>") == "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&apos;s&lt;/a&gt;");
  // Every control character (TAB, LF and CR too) and DEL are the caller's to
  // replace or drop; every other ASCII character but the five stays.
  for (int c = 0; c < 0x80; ++c) {
    const char ch = static_cast<char>(c);
    std::string out;
    const bool kept = markup::append_escaped(out, ch, markup::Dialect::kXml);
    INFO("octet " << c);
    CHECK(kept == (c >= 0x20 && c != 0x7f));
    if (!kept) CHECK(out.empty());
    if (kept && std::string_view("&<>\"'").find(ch) == std::string_view::npos) CHECK(out == std::string(1, ch));
  }
}

TEST_CASE("IPv4-mapped addresses normalise to IPv4, others stay", "[ip]") {
  CHECK(canonical_ip("::ffff:192.0.2.1") == "192.0.2.1");
  CHECK(canonical_ip("::FFFF:192.0.2.1") == "192.0.2.1");
  CHECK(canonical_ip("::ffff:c000:201") == "192.0.2.1");  // the same, in hex
  CHECK(canonical_ip("0:0:0:0:0:ffff:192.0.2.1") == "192.0.2.1");
  CHECK(canonical_ip("192.0.2.1") == "192.0.2.1");
  CHECK(canonical_ip("2001:DB8:0:0::1") == "2001:db8::1");
  CHECK(canonical_ip("::192.0.2.1") == "::192.0.2.1");  // IPv4-compatible is not mapped
  CHECK(canonical_ip("64:ff9b::192.0.2.1") == "64:ff9b::c000:201");  // NAT64 is not mapped
  for (const char* bad : {"", "example.com", "192.0.2", "192.0.2.256", "fe80::1%eth0", "fe80::1%1", "::ffff:1.2.3",
                          " 192.0.2.1", "192.0.2.1 ", "[::1]"}) {
    INFO(bad);
    CHECK(canonical_ip(bad).empty());
  }
  auto a = unmap_v4(asio::ip::make_address("::ffff:10.1.2.3"));
  CHECK(a.is_v4());
  CHECK(a.to_string() == "10.1.2.3");
  CHECK(unmap_v4(asio::ip::make_address("2001:db8::5")).to_string() == "2001:db8::5");
}

TEST_CASE("address_text writes what to_string writes, for every kind of octet", "[ip]") {
  // Each octet value once in each position, and the edges of the digit counts.
  for (unsigned v = 0; v < 256; ++v) {
    const asio::ip::address_v4::bytes_type b{static_cast<unsigned char>(v), static_cast<unsigned char>(255 - v),
                                              static_cast<unsigned char>((v * 7) % 256), static_cast<unsigned char>(v)};
    const asio::ip::address a(asio::ip::address_v4{b});
    CHECK(address_text(a) == a.to_string());
  }
  for (const char* text : {"0.0.0.0", "255.255.255.255", "9.99.100.10", "127.0.0.1", "203.0.113.25", "::1", "::",
                           "2001:db8::5", "::ffff:10.1.2.3", "fe80::1"}) {
    const asio::ip::address a = asio::ip::make_address(text);
    CHECK(address_text(a) == a.to_string());
  }
}

TEST_CASE("reverse_name looks an IPv4-mapped address up as IPv4, either spelling", "[ip]") {
  CHECK(reverse_name("::ffff:192.0.2.1") == "1.2.0.192.in-addr.arpa");
  CHECK(reverse_name("::ffff:c000:201") == "1.2.0.192.in-addr.arpa");
  CHECK(reverse_name("192.0.2.1") == "1.2.0.192.in-addr.arpa");
  CHECK(reverse_name("2001:db8::1").size() == 63 + std::string_view(".ip6.arpa").size());  // 32 nibbles
  CHECK(reverse_name("not an address").empty());
}

TEST_CASE("write_all writes every octet and reports a failed write", "[io]") {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  std::string data(100000, 'x');  // larger than a pipe's buffer: several writes
  data[0] = 'a', data.back() = 'z';
  std::string got;
  // The reader drains while the writer writes.
  pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    close(fds[0]);
    _exit(write_all(fds[1], data) ? 0 : 1);
  }
  close(fds[1]);
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) got.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(child, &status, 0);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(got == data);

  CHECK(write_all(fds[1], ""));  // nothing to write: no write(2) at all
  errno = 0;
  CHECK_FALSE(write_all(-1, "x"));
  CHECK(errno == EBADF);
}

// proxy/server.cpp sets TCP_NODELAY on each listening socket and spends no
// setsockopt per accepted one when the first accepted socket shows it: what
// Linux does. (A kernel that did not would cost one setsockopt a session, not
// Nagle's delays: the check falls back.)
TEST_CASE("an accepted socket has TCP_NODELAY when its listening socket has it", "[net]") {
  for (bool on : {true, false}) {
    asio::io_context io;
    asio::ip::tcp::acceptor acceptor(io);
    acceptor.open(asio::ip::tcp::v4());
    acceptor.set_option(asio::ip::tcp::no_delay(on));
    acceptor.bind({asio::ip::make_address("127.0.0.1"), 0});
    acceptor.listen();
    asio::ip::tcp::socket client(io);
    client.connect(acceptor.local_endpoint());
    asio::ip::tcp::endpoint peer;
    asio::ip::tcp::socket accepted = acceptor.accept(peer);
    asio::ip::tcp::no_delay option;
    accepted.get_option(option);
    CHECK(option.value() == on);
    CHECK(peer == client.local_endpoint());  // the peer accept() reports, as getpeername would
  }
}
