// Message: a header section longer than Message::kMaxHeaderBlock is parsed up
// to a field boundary, and rendering it keeps the message octet for octet
// (regression: a cut inside a folded field used to insert an empty line).
#include <catch2/catch.hpp>

#include <string>

#include "filters/filter.h"
#include "filters/message.h"
#include "filters/spool.h"

using postern::Changes;
using postern::Message;
using postern::Spool;

namespace {

// What the MTA gets when no filter changed anything: the rendered header
// block, then the spool from body_offset() on.
std::string relayed(const std::string& content, std::size_t spool_memory = 1 << 16) {
  Spool spool(spool_memory, "");
  REQUIRE(spool.append(content));
  REQUIRE(spool.finish());
  Message message(spool);
  std::string out = render_header_block(message, Changes{}, "");
  std::string rest(spool.size() - message.body_offset(), '\0');
  if (!rest.empty()) REQUIRE(spool.read(message.body_offset(), rest.data(), rest.size()) > 0);
  return out + rest;
}

}  // namespace

TEST_CASE("Message: a folded field cut at the header block limit is relayed unchanged", "[message]") {
  std::string fold = "X-Folded: start";
  for (int i = 0; fold.size() < Message::kMaxHeaderBlock + 100000; ++i) fold += "\r\n\tpart" + std::to_string(i);
  for (std::size_t pad = 0; pad < 8; ++pad) {
    std::string content = "From: <a@example.org>\r\n" + std::string(pad, 'x') + (pad ? ": y\r\n" : "") + fold +
                          "\r\nSubject: after\r\n\r\nbody\r\n";
    CHECK(relayed(content) == content);
    CHECK(relayed(content, 1 << 24) == content);  // the spool in memory: parsed in place
  }
}

TEST_CASE("Message: the cut field is not among the parsed headers", "[message]") {
  std::string content = "From: <a@example.org>\r\nX-Big: v";
  while (content.size() < Message::kMaxHeaderBlock + 10) content += "\r\n continued";
  content += "\r\n\r\nbody\r\n";
  Spool spool(1 << 16, "");
  REQUIRE(spool.append(content));
  REQUIRE(spool.finish());
  Message message(spool);
  CHECK(message.headers_truncated());
  REQUIRE(message.headers().size() == 1);
  CHECK(message.headers()[0].name == "From");
  CHECK(message.body_offset() == std::string("From: <a@example.org>\r\n").size());
  CHECK(relayed(content) == content);
}

TEST_CASE("Message: field values are unfolded and trimmed", "[message]") {
  const std::string content =
      "Subject:  one\r\n two\r\n\tthree \r\nX-Cr: a\rb\r\nX-Empty:\r\n   \r\nDKIM-Signature: v=1; b=abc\r\n  def;\r\n\r\nbody\r\n";
  Spool spool(1 << 16, "");
  REQUIRE(spool.append(content));
  REQUIRE(spool.finish());
  Message message(spool);
  CHECK(message.first("subject") == "one two\tthree");
  CHECK(message.first("X-Cr") == "a\rb");  // a lone CR is not a fold
  CHECK(message.first("X-Empty") == "");
  CHECK(message.first("DKIM-Signature") == "v=1; b=abc  def;");
  CHECK_FALSE(message.first("Missing"));
}
