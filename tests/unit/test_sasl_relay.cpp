// The SASL relay (proxy/sasl_relay.h) against an in-process upstream: what is
// relayed, what is refused before it reaches the MTA, and who authenticated.
#include <catch2/catch.hpp>

#include "fake_upstream.h"
#include "proxy/sasl_relay.h"
#include "test_util.h"

using namespace postern;
using postern::test::FakeUpstream;
using postern::test::run;
using O = SaslRelay::Outcome;

namespace {

UpstreamReply said(int code, std::string text) { return UpstreamReply{Reply{code, std::move(text)}}; }

// base64 of "\0alice\0secret" and of "alice", "secret".
constexpr std::string_view kPlain = "AGFsaWNlAHNlY3JldA==";
constexpr std::string_view kAlice = "YWxpY2U=";
constexpr std::string_view kSecret = "c2VjcmV0";

}  // namespace

TEST_CASE("sasl: responses are base64 or '*', nothing else reaches the MTA", "[sasl]") {
  for (std::string_view ok : {"*", "=", "", "AGFsaWNlAHNlY3JldA==", "YWxpY2U=", "abc+/9=="}) {
    INFO(test::escape(ok));
    CHECK(is_sasl_response(ok));
  }
  // RFC 4648 §4 strictly: whole quanta, "=" only as the last quantum's padding.
  for (std::string_view bad : std::initializer_list<std::string_view>{
           "**", "a b", "abc\r", "abc\rRSET", std::string_view("ab\0c", 4), "a\tb", "-_", "é", "abc", "abcde",
           "=abc", "ab=c", "a===", "====", "==", "YQ==YQ==", "YQ=", "abc=="}) {
    INFO(test::escape(bad));
    CHECK_FALSE(is_sasl_response(bad));
  }
}

TEST_CASE("sasl: the user a response names", "[sasl]") {
  CHECK(sasl_user("PLAIN", kPlain) == "alice");
  CHECK(sasl_user("PLAIN", "YWRtaW4AYWxpY2UAc2VjcmV0") == "alice");  // authzid "admin", authcid "alice"
  CHECK(sasl_user("PLAIN", "YWxpY2U=") == "");                       // no NUL: no authcid
  CHECK(sasl_user("LOGIN", kAlice) == "alice");
  CHECK(sasl_user("LOGIN", "!!!!") == "");
}

TEST_CASE("sasl: PLAIN with an initial response, accepted", "[sasl]") {
  FakeUpstream up;
  up.auth_replies = {said(235, "2.7.0 Authentication successful")};
  SaslRelay sasl;
  SaslRelay::Step s = run(sasl.start("plain " + std::string(kPlain), up));
  CHECK(s.outcome == O::kAuthenticated);
  CHECK(s.user == "alice");
  CHECK(s.reply.reply.code == 235);
  CHECK_FALSE(sasl.active());
  CHECK(sasl.mechanism() == "PLAIN");
  REQUIRE(up.auth_lines.size() == 1);
  // The mechanism as registered, in upper case: not every MTA compares it case-insensitively.
  CHECK(up.auth_lines[0] == "first AUTH PLAIN " + std::string(kPlain) + " [PLAIN]");
}

TEST_CASE("sasl: LOGIN with the user as initial response names that user, never the password", "[sasl]") {
  FakeUpstream up;
  up.auth_replies = {said(334, "UGFzc3dvcmQ6"), said(235, "2.7.0 Ok")};
  SaslRelay sasl;
  CHECK(run(sasl.start("LOGIN " + std::string(kAlice), up)).outcome == O::kContinue);
  SaslRelay::Step s = run(sasl.respond(kSecret, up));
  CHECK(s.outcome == O::kAuthenticated);
  CHECK(s.user == "alice");
}

TEST_CASE("sasl: LOGIN over two challenges, refused by the MTA", "[sasl]") {
  FakeUpstream up;
  up.auth_replies = {said(334, "VXNlcm5hbWU6"), said(334, "UGFzc3dvcmQ6"), said(535, "5.7.8 Error: authentication failed")};
  SaslRelay sasl;
  SaslRelay::Step s = run(sasl.start("LOGIN", up));
  CHECK(s.outcome == O::kContinue);
  CHECK(sasl.active());
  s = run(sasl.respond(kAlice, up));
  CHECK(s.outcome == O::kContinue);
  s = run(sasl.respond(kSecret, up));
  CHECK(s.outcome == O::kRefused);
  CHECK(s.reply.reply.code == 535);
  CHECK(s.user.empty());
  CHECK_FALSE(sasl.active());
  CHECK(up.auth_lines == std::vector<std::string>{"first AUTH LOGIN [LOGIN]", std::string(kAlice) + " [LOGIN]",
                                                  std::string(kSecret) + " [LOGIN]"});
}

TEST_CASE("sasl: LOGIN accepted names the user of its first response", "[sasl]") {
  FakeUpstream up;
  up.auth_replies = {said(334, "VXNlcm5hbWU6"), said(334, "UGFzc3dvcmQ6"), said(235, "2.7.0 Ok")};
  SaslRelay sasl;
  run(sasl.start("LOGIN", up));
  run(sasl.respond(kAlice, up));
  SaslRelay::Step s = run(sasl.respond(kSecret, up));
  CHECK(s.outcome == O::kAuthenticated);
  CHECK(s.user == "alice");
}

TEST_CASE("sasl: unknown mechanisms are not relayed", "[sasl]") {
  for (std::string_view args : {"CRAM-MD5", "XOAUTH2 dG9rZW4=", "GSSAPI", "PLAINX", "LOG IN"}) {
    FakeUpstream up;
    SaslRelay sasl;
    CHECK(run(sasl.start(args, up)).outcome == O::kUnknownMechanism);
    CHECK(up.auth_lines.empty());
    CHECK_FALSE(sasl.active());
  }
}

TEST_CASE("sasl: a response that is not base64 is refused and the MTA's exchange cancelled", "[sasl]") {
  SECTION("an initial response: nothing was open, nothing relayed") {
    FakeUpstream up;
    SaslRelay sasl;
    CHECK(run(sasl.start("PLAIN abc\rRSET", up)).outcome == O::kBadResponse);
    CHECK(up.auth_lines.empty());
    CHECK(sasl.mechanism() == "PLAIN");
  }
  SECTION("mid-exchange: '*' cancels the MTA's side, its answer dropped") {
    FakeUpstream up;
    up.auth_replies = {said(334, ""), said(501, "5.7.0 cancelled")};
    SaslRelay sasl;
    run(sasl.start("PLAIN", up));
    REQUIRE(sasl.active());
    SaslRelay::Step s = run(sasl.respond("QUIT now", up));
    CHECK(s.outcome == O::kBadResponse);
    CHECK_FALSE(sasl.active());
    CHECK(up.auth_lines == std::vector<std::string>{"first AUTH PLAIN [PLAIN]", "* [PLAIN]"});
  }
  SECTION("a line with a bare LF in it") {
    FakeUpstream up;
    up.auth_replies = {said(334, ""), said(501, "5.7.0 cancelled")};
    SaslRelay sasl;
    run(sasl.start("LOGIN", up));
    CHECK(run(sasl.refuse(up)).outcome == O::kBadResponse);
    CHECK(up.auth_lines.back() == "* [LOGIN]");
  }
}

TEST_CASE("sasl: the client's '*' and an MTA that is gone", "[sasl]") {
  SECTION("cancelled by the client: relayed, the MTA's 501 ends it") {
    FakeUpstream up;
    up.auth_replies = {said(334, ""), said(501, "5.7.0 Authentication cancelled")};
    SaslRelay sasl;
    run(sasl.start("PLAIN", up));
    SaslRelay::Step s = run(sasl.respond("*", up));
    CHECK(s.outcome == O::kRefused);
    CHECK(up.auth_lines.back() == "* [PLAIN]");
  }
  SECTION("a 334 from a lost connection does not keep the exchange open") {
    FakeUpstream up;
    up.auth_replies = {UpstreamReply{Reply{334, ""}, true, true}};
    SaslRelay sasl;
    SaslRelay::Step s = run(sasl.start("LOGIN", up));
    CHECK(s.outcome == O::kUnavailable);
    CHECK_FALSE(sasl.active());
  }
  SECTION("a 454 says nothing of the credentials") {
    FakeUpstream up;  // no replies scripted: 454
    SaslRelay sasl;
    CHECK(run(sasl.start("PLAIN " + std::string(kPlain), up)).outcome == O::kUnavailable);
  }
}
