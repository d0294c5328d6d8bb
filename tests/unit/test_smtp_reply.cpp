// Upstream reply parser (RFC 5321 §4.2, multi-line), its limits
// (proxy/limits.h) and the reply wire form: exact outcomes and consumed counts,
// whatever the split of the input.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "proxy/limits.h"
#include "proxy/replies.h"
#include "proxy/smtp_reply.h"
#include "test_util.h"

using postern::Reply;
using postern::ReplyParser;
using postern::test::escape;
namespace limits = postern::limits;

namespace {

using Outcome = ReplyParser::Outcome;

const char* outcome_name(Outcome o) {
  switch (o) {
    case Outcome::kComplete: return "complete";
    case Outcome::kIncomplete: return "incomplete";
    case Outcome::kInvalid: return "invalid";
    case Outcome::kTooLong: return "too-long";
  }
  return "?";
}

struct Fed {
  std::string outcome;
  std::size_t consumed = 0;  // bytes of the whole stream used
  Reply reply;               // when complete
};

// Feeds `chunks` as a session does: bytes the parser did not consume stay
// buffered and are fed again with the next chunk. Stops at the first outcome
// other than kIncomplete.
Fed feed_chunks(const std::vector<std::string>& chunks) {
  ReplyParser parser;
  std::string buffer;
  Fed fed;
  for (const std::string& chunk : chunks) {
    buffer += chunk;
    ReplyParser::Result r = parser.feed(buffer);
    REQUIRE(r.consumed <= buffer.size());
    fed.consumed += r.consumed;
    buffer.erase(0, r.consumed);
    fed.outcome = outcome_name(r.outcome);
    if (r.outcome != Outcome::kIncomplete) {
      if (r.outcome == Outcome::kComplete) fed.reply = parser.take();
      return fed;
    }
  }
  return fed;
}

Fed feed_whole(const std::string& input) { return feed_chunks({input}); }

Fed feed_bytes(const std::string& input) {
  std::vector<std::string> chunks;
  for (char c : input) chunks.emplace_back(1, c);
  return feed_chunks(chunks);
}

std::string repeat(const std::string& s, std::size_t n) {
  std::string out;
  for (std::size_t i = 0; i < n; ++i) out += s;
  return out;
}

}  // namespace

TEST_CASE("ReplyParser: outcomes, replies and consumed bytes", "[smtp_reply]") {
  struct Case {
    std::string input;
    Outcome outcome;
    std::size_t consumed;
    int code = 0;
    std::string text = "";
  };
  const std::vector<Case> cases{
      {"250 Ok\r\n", Outcome::kComplete, 8, 250, "Ok"},
      {"220 mx.example ESMTP ready\r\n", Outcome::kComplete, 28, 220, "mx.example ESMTP ready"},
      {"250 2.1.0 Ok\r\n", Outcome::kComplete, 14, 250, "2.1.0 Ok"},
      {"250\r\n", Outcome::kComplete, 5, 250, ""},  // no text
      {"250 \r\n", Outcome::kComplete, 6, 250, ""},
      {"250  two spaces\r\n", Outcome::kComplete, 17, 250, " two spaces"},
      {"354 go\n", Outcome::kComplete, 7, 354, "go"},  // LF-only line end
      {"550 5.1.1 a\r\n221 bye\r\n", Outcome::kComplete, 13, 550, "5.1.1 a"},  // next reply stays
      {"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n", Outcome::kComplete, 47, 250,
       "mx.example\nPIPELINING\nSIZE 1000"},
      {"250-a\n250-b\r\n250 c\n", Outcome::kComplete, 19, 250, "a\nb\nc"},
      {"250-a\r\n250\r\n", Outcome::kComplete, 12, 250, "a\n"},
      {"250-\r\n250 b\r\n", Outcome::kComplete, 13, 250, "\nb"},
      {"421-4.3.2 going\r\n421-down\r\n421 now\r\n", Outcome::kComplete, 36, 421,
       "4.3.2 going\ndown\nnow"},
      {"599 x\r\n", Outcome::kComplete, 7, 599, "x"},
      {"200 x\r\n", Outcome::kComplete, 7, 200, "x"},
      // Incomplete: whole lines of a pending reply are consumed, a partial line is not.
      {"", Outcome::kIncomplete, 0},
      {"250 Ok", Outcome::kIncomplete, 0},
      {"250 Ok\r", Outcome::kIncomplete, 0},
      {"250-a\r\n", Outcome::kIncomplete, 7},
      {"250-a\r\n250 b", Outcome::kIncomplete, 7},
      {"250-a\r\n250-b\r\n25", Outcome::kIncomplete, 14},
      // Code mismatch between lines.
      {"250-a\r\n251 b\r\n", Outcome::kInvalid, 14},
      {"250-a\r\n550 b\r\n", Outcome::kInvalid, 14},
      {"250-a\r\n250-b\r\n220 c\r\n", Outcome::kInvalid, 21},
      // Garbage.
      {"\r\n", Outcome::kInvalid, 2},
      {"\n", Outcome::kInvalid, 1},
      {"25\r\n", Outcome::kInvalid, 4},
      {"25 x\r\n", Outcome::kInvalid, 6},
      {"2500 x\r\n", Outcome::kInvalid, 8},
      {"250x\r\n", Outcome::kInvalid, 6},
      {"250\tx\r\n", Outcome::kInvalid, 7},
      {" 250 x\r\n", Outcome::kInvalid, 8},
      {"abc def\r\n", Outcome::kInvalid, 9},
      {"HTTP/1.1 400 Bad Request\r\n", Outcome::kInvalid, 26},
      {"150 x\r\n", Outcome::kInvalid, 7},
      {"099 x\r\n", Outcome::kInvalid, 7},
      {"600 x\r\n", Outcome::kInvalid, 7},
      {"2a0 x\r\n", Outcome::kInvalid, 7},
      {"250 a\rb\r\n", Outcome::kInvalid, 9},
      {"250 a\r\r\n", Outcome::kInvalid, 8},
      {std::string("250 a\0b\r\n", 9), Outcome::kInvalid, 9},
      {std::string("250\0\r\n", 6), Outcome::kInvalid, 6},
      {"250-a\r\n\r\n", Outcome::kInvalid, 9},
      {"250-a\r\n250x\r\n", Outcome::kInvalid, 13},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION("input: " << escape(c.input)) {
      for (int mode = 0; mode < 2; ++mode) {
        INFO((mode == 0 ? "fed whole" : "fed byte by byte"));
        Fed f = mode == 0 ? feed_whole(c.input) : feed_bytes(c.input);
        if (c.input.empty() && mode == 1) continue;  // nothing to feed
        CHECK(f.outcome == outcome_name(c.outcome));
        CHECK(f.consumed == c.consumed);
        if (c.outcome == Outcome::kComplete) {
          CHECK(f.reply.code == c.code);
          CHECK(f.reply.text == c.text);
        }
      }
    }
  }
}

TEST_CASE("ReplyParser: every split position gives the same reply", "[smtp_reply]") {
  const std::vector<std::string> inputs{
      "250-mx.example says hi\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250 8BITMIME\r\n220 next\r\n",
      "250-a\n250-\r\n250\n354 x\r\n",
      "451 4.4.2 Error: later\r\n",
  };
  for (const std::string& input : inputs) {
    DYNAMIC_SECTION("input: " << escape(input)) {
      Fed whole = feed_whole(input);
      REQUIRE(whole.outcome == "complete");
      for (std::size_t split = 0; split <= input.size(); ++split) {
        INFO("split at " << split);
        Fed f = feed_chunks({input.substr(0, split), input.substr(split)});
        CHECK(f.outcome == "complete");
        CHECK(f.consumed == whole.consumed);
        CHECK(f.reply.code == whole.reply.code);
        CHECK(f.reply.text == whole.reply.text);
      }
      Fed bytes = feed_bytes(input);
      CHECK(bytes.outcome == "complete");
      CHECK(bytes.consumed == whole.consumed);
      CHECK(bytes.reply.code == whole.reply.code);
      CHECK(bytes.reply.text == whole.reply.text);
    }
  }
}

TEST_CASE("ReplyParser: line and line-count limits give kTooLong", "[smtp_reply]") {
  const std::size_t max_line = limits::kUpstreamReplyLine;   // counts the CR, not the LF
  const std::size_t max_lines = limits::kUpstreamReplyLines;
  REQUIRE(max_line == 4096);
  REQUIRE(max_lines == 100);

  SECTION("a line exactly at the limit is complete") {
    std::string text(max_line - 4 - 1, 'x');  // "250 " + text + "\r" = limit
    std::string input = "250 " + text + "\r\n";
    Fed f = feed_whole(input);
    CHECK(f.outcome == "complete");
    CHECK(f.consumed == input.size());
    CHECK(f.reply.text == text);
    CHECK(feed_bytes(input).outcome == "complete");
    std::string lf_only = "250 " + std::string(max_line - 4, 'x') + "\n";
    CHECK(feed_whole(lf_only).outcome == "complete");
  }
  SECTION("one octet over is too long, with or without its line end yet") {
    std::string input = "250 " + std::string(max_line - 4, 'x') + "\r\n";
    CHECK(feed_whole(input).outcome == "too-long");
    CHECK(feed_whole(input).consumed == 0);
    CHECK(feed_bytes(input).outcome == "too-long");
    std::string lf_only = "250 " + std::string(max_line - 3, 'x') + "\n";
    CHECK(feed_whole(lf_only).outcome == "too-long");
    // Without a line end: the limit is known once limit + 1 octets are buffered.
    std::string partial(max_line, 'x');
    CHECK(feed_whole(partial).outcome == "incomplete");
    CHECK(feed_whole(partial + "x").outcome == "too-long");
    CHECK(feed_chunks({partial, "x"}).outcome == "too-long");
  }
  SECTION("an over-long continuation line") {
    std::string input = "250-a\r\n250 " + std::string(max_line, 'x') + "\r\n";
    Fed f = feed_whole(input);
    CHECK(f.outcome == "too-long");
    CHECK(f.consumed == 7);
  }
  SECTION("exactly the maximum number of lines is complete") {
    std::string input = repeat("250-x\r\n", max_lines - 1) + "250 end\r\n";
    Fed f = feed_whole(input);
    CHECK(f.outcome == "complete");
    CHECK(f.consumed == input.size());
    CHECK(f.reply.text == repeat("x\n", max_lines - 1) + "end");
  }
  SECTION("one line more is too long") {
    std::string input = repeat("250-x\r\n", max_lines) + "250 end\r\n";
    Fed f = feed_whole(input);
    CHECK(f.outcome == "too-long");
    CHECK(f.consumed == input.size());
    CHECK(feed_bytes(input).outcome == "too-long");
  }
  SECTION("an endless continuation stops at the limit") {
    std::string input = repeat("250-x\r\n", 10 * max_lines);
    Fed f = feed_whole(input);
    CHECK(f.outcome == "too-long");
    CHECK(f.consumed == 7 * (max_lines + 1));
  }
}

TEST_CASE("ReplyParser: take() and reset() start a new reply", "[smtp_reply]") {
  ReplyParser parser;
  std::string in = "250-a\r\n250 b\r\n354 go\r\n";
  ReplyParser::Result r = parser.feed(in);
  REQUIRE(r.outcome == Outcome::kComplete);
  REQUIRE(r.consumed == 14);
  Reply first = parser.take();
  CHECK(first.code == 250);
  CHECK(first.text == "a\nb");

  r = parser.feed(std::string_view(in).substr(14));
  REQUIRE(r.outcome == Outcome::kComplete);
  Reply second = parser.take();
  CHECK(second.code == 354);
  CHECK(second.text == "go");

  // A pending multi-line reply is dropped by reset().
  r = parser.feed("250-half\r\n");
  CHECK(r.outcome == Outcome::kIncomplete);
  parser.reset();
  r = parser.feed("221 bye\r\n");
  REQUIRE(r.outcome == Outcome::kComplete);
  Reply third = parser.take();
  CHECK(third.code == 221);
  CHECK(third.text == "bye");
}

TEST_CASE("append_reply: wire form", "[smtp_reply]") {
  struct Case {
    int code;
    std::string text;
    std::string wire;
  };
  const std::vector<Case> cases{
      {250, "Ok", "250 Ok\r\n"},
      {250, "", "250\r\n"},
      {220, "mx.example ESMTP", "220 mx.example ESMTP\r\n"},
      {250, "a\nb\nc", "250-a\r\n250-b\r\n250 c\r\n"},
      {250, "a\n", "250-a\r\n250\r\n"},
      {250, "\n", "250-\r\n250\r\n"},
      {250, "a\n\nb", "250-a\r\n250-\r\n250 b\r\n"},
      {554, " lead", "554  lead\r\n"},
      {421, "4.7.0 Error: too many errors", "421 4.7.0 Error: too many errors\r\n"},
  };
  for (const Case& c : cases) {
    INFO("text: " << escape(c.text));
    std::string out = "prefix";
    postern::append_reply(out, c.code, c.text);
    CHECK(out == "prefix" + c.wire);
    std::string via_reply;
    postern::append_reply(via_reply, Reply{c.code, c.text});
    CHECK(via_reply == c.wire);
  }
}

TEST_CASE("append_reply then ReplyParser round-trips multi-line replies", "[smtp_reply]") {
  const std::vector<Reply> replies{
      {250, "mx.example\nPIPELINING\nSIZE 52428800\nENHANCEDSTATUSCODES\n8BITMIME\nSMTPUTF8"},
      {250, "2.1.0 Ok"},
      {250, ""},
      {250, "a\n"},
      {250, "\n\n"},
      {550, "5.7.1 first\n5.7.1 second\n5.7.1 third"},
      {354, "End data with <CR><LF>.<CR><LF>"},
      {421, " leading space\n  and more "},
      {250, repeat("x\n", limits::kUpstreamReplyLines - 1) + "last"},
      {250, std::string(limits::kUpstreamReplyLine - 5, 'y')},
  };
  for (const Reply& original : replies) {
    INFO("text: " << escape(original.text.substr(0, 80)));
    std::string wire;
    postern::append_reply(wire, original);
    wire += "221 trailing\r\n";  // a following reply is not consumed
    Fed f = feed_whole(wire);
    REQUIRE(f.outcome == "complete");
    CHECK(f.consumed == wire.size() - 14);
    CHECK(f.reply.code == original.code);
    CHECK(f.reply.text == original.text);
    std::string again;
    postern::append_reply(again, f.reply);
    CHECK(again + "221 trailing\r\n" == wire);
  }
}

TEST_CASE("Reply: class, first line and enhanced status code", "[smtp_reply]") {
  CHECK(Reply{250, "x"}.klass() == 2);
  CHECK(Reply{250, "x"}.positive());
  CHECK(Reply{354, "x"}.klass() == 3);
  CHECK_FALSE(Reply{354, "x"}.positive());
  CHECK_FALSE(Reply{451, "x"}.positive());
  CHECK(Reply{550, "x"}.klass() == 5);
  CHECK(Reply{250, "first\nsecond"}.first_line() == "first");
  CHECK(Reply{250, ""}.first_line().empty());
  CHECK(Reply{250, "\nsecond"}.first_line().empty());

  const std::vector<std::pair<std::string, std::string>> cases{
      {"2.1.5 Ok", "2.1.5"},
      {"2.1.5", "2.1.5"},
      {"5.7.1 rejected\n5.7.1 really", "5.7.1"},
      {"4.100.999 x", "4.100.999"},
      {"Ok", ""},
      {"", ""},
      {" 2.1.5 Ok", ""},
      {"2.1.5x Ok", ""},
      {"2.1.5. Ok", ""},
      {"2.1 Ok", ""},
      {"2..5 Ok", ""},
      {"2.1. Ok", ""},
      {"3.1.1 x", ""},
      {"1.1.1 x", ""},
      {"2.1000.1 x", ""},
      {"2.1.1000 x", ""},
      {"Ok\n2.1.5 second line", ""},
  };
  for (const auto& [text, code] : cases) {
    INFO("text: " << escape(text));
    CHECK(Reply{250, text}.enhanced_code() == code);
  }
}

TEST_CASE("Reply: enhanced status code class is one digit", "[smtp_reply][regression]") {
  // RFC 3463 §2: class = "2" / "4" / "5", a single digit.
  CHECK(Reply{250, "22.1.5 Ok"}.enhanced_code() == "");
  CHECK(Reply{550, "555.1.1 x"}.enhanced_code() == "");
}

TEST_CASE("replies: every Def is a valid one-line reply", "[smtp_reply]") {
  namespace r = postern::replies;
  const std::vector<const r::Def*> defs{
      &r::kOk, &r::kSenderOk, &r::kRecipientOk, &r::kStartData, &r::kBye, &r::kHelp, &r::kVrfy,
      &r::kUnknownCommand, &r::kLineTooLong, &r::kBareLfInCommand, &r::kNulInCommand,
      &r::kNotImplemented, &r::kHeloSyntax, &r::kMailSyntax, &r::kRcptSyntax, &r::kBadSenderAddress,
      &r::kBadRecipientAddress, &r::kAddressTooLong, &r::kNonAsciiAddress, &r::kNoArguments,
      &r::kArgsSyntax, &r::kUnknownParameter, &r::kBadParameter, &r::kNeedHelo, &r::kNestedMail,
      &r::kNeedMail, &r::kNeedRcpt, &r::kNoValidRecipients, &r::kTooManyRecipients,
      &r::kTooManyMessages, &r::kTooManyErrors, &r::kSizeExceeded, &r::kBareLineEnding,
      &r::kNulInContent, &r::kTextLineTooLong, &r::kSpoolFailed, &r::kTimeout, &r::kShuttingDown,
      &r::kUpstreamUnavailable, &r::kUpstreamLost, &r::kUpstreamProtocol, &r::kTransactionFailed,
  };
  for (const r::Def* d : defs) {
    INFO(d->code << " " << d->text);
    std::string wire;
    postern::append_reply(wire, d->code, d->text);
    Fed f = feed_whole(wire);
    REQUIRE(f.outcome == "complete");
    CHECK(f.reply.code == d->code);
    CHECK(f.reply.text == d->text);
    // RFC 2034 §4: the enhanced code's class matches the reply's first digit
    // (354 has none: RFC 2034 gives intermediate replies no enhanced code).
    if (d->code != 354) {
      std::string_view enhanced = f.reply.enhanced_code();
      REQUIRE_FALSE(enhanced.empty());
      CHECK(enhanced[0] == static_cast<char>('0' + d->code / 100));
    }
  }
}

TEST_CASE("with_enhanced_codes: every line of a relayed 2xx/4xx/5xx reply carries one", "[smtp_reply]") {
  struct Case {
    int code;
    std::string text;
    std::string want;  // "" = unchanged (nullopt)
  };
  const std::vector<Case> cases = {
      {250, "2.0.0 Ok: queued as 1", ""},
      {550, "5.1.1 no such user", ""},
      {250, "queued", "2.0.0 queued"},
      {550, "no such user", "5.0.0 no such user"},
      {451, "try later", "4.0.0 try later"},
      {554, "", "5.0.0"},
      {354, "go ahead", ""},                                   // 3xx: no enhanced code (RFC 2034)
      {550, "5.7.1 first\nsecond", "5.7.1 first\n5.7.1 second"},  // the first line's code
      {550, "first\n5.7.1 second", "5.0.0 first\n5.7.1 second"},
      {550, "a\nb\nc", "5.0.0 a\n5.0.0 b\n5.0.0 c"},
      {550, "2.0.0 wrong class\nmore", "5.0.0 2.0.0 wrong class\n5.0.0 more"},  // never a 2.x.x on a 5xx
      {451, "5.7.1 wrong class", "4.0.0 5.7.1 wrong class"},
      {250, "2.1.0 ok\n5.0.0 wrong", "2.1.0 ok\n2.1.0 5.0.0 wrong"},
      {554, "5.7.1 first\n4.0.0 second", "5.7.1 first\n5.7.1 4.0.0 second"},
      {550, "5.1 short", "5.0.0 5.1 short"},                   // not an enhanced code
      {421, "4.3.2 closing", ""},
  };
  for (const Case& c : cases) {
    INFO(c.code << " " << escape(c.text));
    std::optional<Reply> out = postern::with_enhanced_codes(Reply{c.code, c.text});
    if (c.want.empty()) {
      CHECK_FALSE(out.has_value());
    } else {
      REQUIRE(out.has_value());
      CHECK(out->code == c.code);
      CHECK(out->text == c.want);
    }
  }
}
