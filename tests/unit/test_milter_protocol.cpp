// The milter protocol codec (filters/milter/milter_protocol.h): framing with
// its length bound, option negotiation, and every reply, well-formed or not;
// the [[milter]] configuration; multi-line verdict replies.
#include <algorithm>
#include <initializer_list>

#include <catch2/catch.hpp>

#include "config_test_util.h"
#include "filters/milter/milter_protocol.h"
#include "proxy/config.h"
#include "proxy/verdict_reply.h"

using namespace postern;
namespace m = postern::milter;

namespace {
std::string be32(std::uint32_t v) {
  return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                     static_cast<char>(v)};
}
m::Reply reply(char c, std::string data) { return m::decode_reply(m::Packet{c, std::move(data)}); }
}  // namespace

TEST_CASE("milter packets are framed and split at every byte boundary", "[milter]") {
  std::string stream = m::encode('c', "") + m::encode('h', std::string("X-A\0v\0", 6)) + m::encode('a', "");
  for (std::size_t split = 0; split <= stream.size(); ++split) {
    m::PacketReader r;
    std::vector<m::Packet> got;
    m::Packet p;
    r.feed(std::string_view(stream).substr(0, split));
    while (r.next(p) == m::PacketReader::Status::kPacket) got.push_back(p);
    r.feed(std::string_view(stream).substr(split));
    while (r.next(p) == m::PacketReader::Status::kPacket) got.push_back(p);
    REQUIRE(got.size() == 3);
    CHECK(got[0].command == 'c');
    CHECK(got[1].data == std::string("X-A\0v\0", 6));
    CHECK(got[2].command == 'a');
    CHECK(r.buffered() == 0);
  }
}

TEST_CASE("milter packet lengths of zero or past the bound are invalid", "[milter]") {
  for (std::uint32_t len : {0u, static_cast<std::uint32_t>(m::kMaxPacket + 1), 0xffffffffu}) {
    m::PacketReader r;
    m::Packet p;
    r.feed(be32(len) + "c");
    CHECK(r.next(p) == m::PacketReader::Status::kInvalid);
  }
  m::PacketReader r;
  m::Packet p;
  r.feed(be32(static_cast<std::uint32_t>(m::kMaxPacket)));  // at the bound: waits for the data
  CHECK(r.next(p) == m::PacketReader::Status::kIncomplete);
}

TEST_CASE("milter commands are encoded as libmilter reads them", "[milter]") {
  CHECK(m::encode_optneg(6, m::action::kAll, m::step::kOffered) ==
        be32(13) + "O" + be32(6) + be32(0x1ff) + be32(m::step::kOffered));
  CHECK(m::encode_connect("mx.example", '4', 25, "192.0.2.1") ==
        be32(1 + 11 + 1 + 2 + 10) + "C" + std::string("mx.example\0" "4\0\x19" "192.0.2.1\0", 24));
  CHECK(m::encode_connect("h", 'U', 0, "") == be32(4) + "C" + std::string("h\0U", 3));
  CHECK(m::encode_envelope('M', "a@b.example", {"SIZE=10"}) ==
        be32(1 + 14 + 8) + "M" + std::string("<a@b.example>\0SIZE=10\0", 22));
  CHECK(m::encode_header("Subject", "hi") == be32(12) + "L" + std::string("Subject\0hi\0", 11));
  CHECK(m::encode_macros(m::MacroStage::kConnect, {{"j", "mx"}}) == be32(7) + "D" + std::string("Cj\0mx\0", 6));
  CHECK(m::encode(m::cmd::kBodyEob, "") == be32(1) + "E");
  // A NUL inside a string cannot end it early for the milter.
  CHECK(m::encode_helo(std::string("a\0b", 3)) == be32(3) + "H" + std::string("a\0", 2));
}

TEST_CASE("milter option negotiation reply", "[milter]") {
  auto n = m::decode_optneg(m::Packet{'O', be32(6) + be32(0x11) + be32(0x80)});
  REQUIRE(n);
  CHECK(n->version == 6);
  CHECK(n->actions == 0x11);
  CHECK(n->steps == 0x80);
  CHECK(m::decode_optneg(m::Packet{'O', be32(6) + be32(1) + be32(0) + "extra"}));  // macro lists appended
  CHECK_FALSE(m::decode_optneg(m::Packet{'O', be32(6) + be32(1)}));
  CHECK_FALSE(m::decode_optneg(m::Packet{'c', be32(6) + be32(1) + be32(0)}));
}

TEST_CASE("milter replies decode, malformed ones are invalid", "[milter]") {
  for (char c : {'a', 'c', 'd', 'r', 't', 's', 'p', '4', 'f'}) {
    CHECK(reply(c, "").valid);
    CHECK_FALSE(reply(c, "x").valid);
  }
  auto h = reply('h', std::string("X-Spam\0yes\0", 11));
  CHECK((h.valid && h.name == "X-Spam" && h.value == "yes"));
  CHECK_FALSE(reply('h', std::string("X-Spam\0yes", 10)).valid);  // no final NUL
  CHECK_FALSE(reply('h', std::string("\0yes\0", 5)).valid);        // no name
  CHECK_FALSE(reply('h', std::string("a\0b\0c\0", 6)).valid);      // a third string
  auto i = reply('i', be32(2) + std::string("X-I\0v\0", 6));
  CHECK((i.valid && i.index == 2 && i.name == "X-I"));
  auto ch = reply('m', be32(1) + std::string("Subject\0\0", 9));
  CHECK((ch.valid && ch.index == 1 && ch.value.empty()));
  CHECK_FALSE(reply('m', std::string("\0\0", 2)).valid);
  auto add = reply('2', std::string("<x@y.example>\0NOTIFY=NEVER\0", 27));
  CHECK((add.valid && add.address == "x@y.example" && add.args == "NOTIFY=NEVER"));
  CHECK(reply('+', std::string("x@y.example\0", 12)).address == "x@y.example");
  CHECK_FALSE(reply('-', "").valid);
  auto from = reply('e', std::string("<s@y.example>\0", 14));
  CHECK((from.valid && from.address == "s@y.example" && from.args.empty()));
  CHECK(reply('b', "new body\r\n").body == "new body\r\n");
  CHECK(reply('q', std::string("held\0", 5)).value == "held");
  CHECK_FALSE(reply('Z', "").valid);
  CHECK(m::is_final('c'));
  CHECK_FALSE(m::is_final('h'));
  CHECK_FALSE(m::is_final('p'));
}

TEST_CASE("milter SMFIR_REPLYCODE, single and multi-line", "[milter]") {
  auto r = reply('y', std::string("550 5.7.1 No thanks\0", 20));
  CHECK((r.valid && r.code == 550 && r.enhanced == "5.7.1" && r.text == "No thanks"));
  auto ml = reply('y', std::string("451-4.7.0 first\r\n451-4.7.0 second\r\n451 4.7.0 third\0", 51));
  CHECK((ml.valid && ml.code == 451 && ml.enhanced == "4.7.0" && ml.text == "first\nsecond\nthird"));
  auto bare = reply('y', std::string("554 go away\0", 12));
  CHECK((bare.valid && bare.enhanced.empty() && bare.text == "go away"));
  for (const char* bad : {"250 2.0.0 ok", "55 x", "abc x", "", "354 go", "600 x", "199 x"}) {
    CHECK_FALSE(reply('y', std::string(bad) + std::string(1, '\0')).valid);
  }
}

TEST_CASE("milter SMFIR_REPLYCODE: the first line's code decides, sloppy lines are dropped", "[milter]") {
  struct Case {
    const char* data;
    int code;
    const char* text;
  };
  for (const Case& c : std::initializer_list<Case>{
           {"550-5.7.1 a\r\n451 4.7.1 b", 550, "a"},           // another code: dropped
           {"550-5.7.1 a", 550, "a"},                             // no last line
           {"550 5.7.1 a\r\n550 5.7.1 b", 550, "a"},            // after the last line: dropped
           {"550 5.7.1 a\r\n250 2.0.0 ok", 550, "a"},           // a second reply: dropped
           {"550 5.7.1 a\r\n", 550, "a"},                       // a trailing line end
           {"550x5.7.1 a", 550, "x5.7.1 a"},                      // no separator
           {"550 5.7.1 a\0\r\n250 ok", 550, "a"},              // a NUL ends the text
           {"451-first\x0f\n451-4.7.0 sec\rond\r\n451 4.4.7.0 x", 451, "first\x0f\nsec ond\nx"},
       }) {
    auto r = reply('y', std::string(c.data) + std::string(1, '\0'));
    CHECK(r.valid);
    CHECK(r.code == c.code);
    CHECK(r.text == c.text);
  }
}

TEST_CASE("milter config: sockets, time-outs, on_error, macros", "[milter][config]") {
  auto c = test::load_config_text(R"([[milter]]
name = "clam"
socket = "inet:127.0.0.1:7357"
connect_timeout = 2
command_timeout = 3.5
eom_timeout = 60
on_error = "accept"
macros = ["j", "{client_addr}"]
[[milter]]
name = "dkim"
socket = "unix:/run/opendkim.sock"
[[milter]]
name = "v6"
socket = "inet:[::1]:8891"
)");
  REQUIRE(c->milters.size() == 3);
  CHECK(c->milters[0].host == "127.0.0.1");
  CHECK(c->milters[0].port == 7357);
  CHECK(c->milters[0].command_timeout.count() == 3500);
  CHECK(c->milters[0].on_error == MilterOptions::OnError::kAccept);
  CHECK(c->milters[0].macros == std::vector<std::string>{"j", "{client_addr}"});
  CHECK(c->milters[1].unix_socket);
  CHECK(c->milters[1].path == "/run/opendkim.sock");
  CHECK(c->milters[1].on_error == MilterOptions::OnError::kTempfail);
  CHECK(c->milters[1].macros == milter_known_macros());
  CHECK(c->milters[2].host == "::1");

  auto err = [](const std::string& body) { return test::config_error_of_text("[[milter]]\n" + body); };
  CHECK(err("socket = \"inet:127.0.0.1:1\"\n").find("milter.name") != std::string::npos);
  CHECK(err("name = \"a\"\n").find("milter.socket") != std::string::npos);
  CHECK(err("name = \"a\"\nsocket = \"inet:mx.example:25\"\n").find("IP address") != std::string::npos);
  CHECK(err("name = \"a\"\nsocket = \"inet:127.0.0.1:0\"\n").find("PORT") != std::string::npos);
  CHECK(err("name = \"a\"\nsocket = \"inet:127.0.0.1:99999\"\n").find("PORT") != std::string::npos);
  CHECK(err("name = \"a\"\nsocket = \"inet:127.0.0.1\"\n").find("inet:HOST:PORT") != std::string::npos);
  CHECK(err("name = \"a\"\nsocket = \"unix:relative\"\n").find("absolute") != std::string::npos);
  CHECK(err("name = \"a\"\nsocket = \"tcp:1.2.3.4:5\"\n").find("inet:HOST:PORT") != std::string::npos);
  CHECK(err("name = \"a\"\nsocket = \"inet:[::1]:9\"\non_error = \"drop\"\n").find("on_error") != std::string::npos);
  CHECK(err("name = \"a\"\nsocket = \"inet:[::1]:9\"\nmacros = [\"{nope}\"]\n").find("unknown macro") !=
        std::string::npos);
  CHECK(err("name = \"a\"\nsocket = \"inet:[::1]:9\"\ncommand_timeout = 0\n").find("command_timeout") !=
        std::string::npos);
  CHECK(err("name = \"a\"\nsocket = \"inet:[::1]:9\"\nsokcet = 1\n").find("did you mean") != std::string::npos);
  CHECK(test::config_error_of_text("[milter]\nname = \"a\"\n").find("[[milter]]") != std::string::npos);
  CHECK(test::config_error_of_text("[[milter]]\nname = \"a\"\nsocket = \"inet:[::1]:9\"\n"
                                   "[[milter]]\nname = \"a\"\nsocket = \"inet:[::1]:9\"\n")
            .find("duplicate") != std::string::npos);
}

TEST_CASE("a multi-line verdict text becomes a multi-line reply, each line cleaned", "[milter][verdict]") {
  Verdict v{Verdict::Action::kReject, 554, "5.7.1", "virus found\nsecond\x01line", "milter", ""};
  Reply r = verdict_reply(v, Stage::kEom);
  CHECK(r.code == 554);
  CHECK(r.text == "5.7.1 virus found\n5.7.1 second line");
  std::string many;
  for (int i = 0; i < 30; ++i) many += "l\n";
  const std::string text = verdict_reply(Verdict{Verdict::Action::kTempfail, 451, "", many, "", ""}, Stage::kEom).text;
  CHECK(std::count(text.begin(), text.end(), '\n') == 9);  // at most 10 lines
}

// The server side (proxy/milter_server): the MTA's commands decoded, and the
// replies postern sends read back by the client half's own decoder.
TEST_CASE("milter server: the MTA's commands decode, malformed ones are invalid", "[milter][milter_server]") {
  auto cmd = [](char c, std::string data) { return m::decode_command(m::Packet{c, std::move(data)}); };
  m::Command o = cmd('O', be32(6) + be32(0x1ff) + be32(0x1fffff));
  CHECK((o.valid && o.optneg.version == 6 && o.optneg.actions == 0x1ff && o.optneg.steps == 0x1fffff));
  CHECK_FALSE(cmd('O', be32(6)).valid);
  m::Command c = cmd('C', std::string("mail.example\0" "4\x04\x01" "192.0.2.1\0", 26));
  CHECK((c.valid && c.hostname == "mail.example" && c.family == '4' && c.port == 1025 && c.address == "192.0.2.1"));
  CHECK(cmd('C', std::string("[192.0.2.1]\0U", 13)).valid);              // unknown family: no port nor address
  CHECK_FALSE(cmd('C', std::string("host\0", 5)).valid);                 // no family
  CHECK_FALSE(cmd('C', std::string("host\0X\0\0a\0", 10)).valid);        // unknown family
  CHECK_FALSE(cmd('C', std::string("host\0" "4\0\x19" "192.0.2.1", 15)).valid);  // address not terminated
  m::Command mail = cmd('M', std::string("<a@example.org>\0SIZE=10\0BODY=8BITMIME\0", 38));
  CHECK((mail.valid && mail.args == std::vector<std::string>{"<a@example.org>", "SIZE=10", "BODY=8BITMIME"}));
  CHECK_FALSE(cmd('M', std::string("\0", 1)).valid);
  CHECK_FALSE(cmd('R', "<b@example.org>").valid);  // no NUL
  m::Command h = cmd('L', std::string("Subject\0 hello\0", 15));
  CHECK((h.valid && h.name == "Subject" && h.value == " hello"));
  CHECK_FALSE(cmd('L', std::string("\0v\0", 3)).valid);
  CHECK_FALSE(cmd('L', std::string("a\0b\0c\0", 6)).valid);
  m::Command d = cmd('D', std::string("Mi\0Q1\0{auth_authen}\0bob\0", 24));
  CHECK((d.valid && d.macro_stage == 'M' && d.macros.size() == 2 && d.macros[1].second == "bob"));
  CHECK_FALSE(cmd('D', std::string("Mi\0", 3)).valid);  // a name without its value
  CHECK(cmd('D', "C").valid);                            // no macros at all
  CHECK(cmd('B', "body\r\n").body == "body\r\n");
  for (char k : {'A', 'N', 'Q', 'K', 'T'}) CHECK(cmd(k, "").valid);
  CHECK_FALSE(cmd('Z', "").valid);
  CHECK_FALSE(cmd('y', "550 no").valid);  // a reply is not a command
}

TEST_CASE("milter server: replies read back with the client's decoder", "[milter][milter_server]") {
  auto back = [](const std::string& framed) {
    m::PacketReader r;
    r.feed(framed);
    m::Packet p;
    REQUIRE(r.next(p) == m::PacketReader::Status::kPacket);
    return m::decode_reply(p);
  };
  m::Reply one = back(m::encode_replycode(554, "5.7.1 Refused by policy"));
  CHECK((one.valid && one.code == 554 && one.enhanced == "5.7.1" && one.text == "Refused by policy"));
  m::Reply multi = back(m::encode_replycode(451, "4.7.1 first\n4.7.1 second"));
  CHECK((multi.valid && multi.code == 451 && multi.text == "first\nsecond"));
  m::Reply ins = back(m::encode_header_reply(m::reply::kInsHeader, 0, "Authentication-Results", " mx; spf=pass"));
  CHECK((ins.valid && ins.command == 'i' && ins.index == 0 && ins.value == " mx; spf=pass"));
  m::Reply chg = back(m::encode_header_reply(m::reply::kChgHeader, 2, "X-Mailer", ""));
  CHECK((chg.valid && chg.index == 2 && chg.value.empty()));
  m::Reply add = back(m::encode_header_reply(m::reply::kAddHeader, 7, "X-A", "v"));
  CHECK((add.valid && add.name == "X-A" && add.value == "v"));
  m::Reply rcpt = back(m::encode_address_reply(m::reply::kAddRcpt, "b@example.org"));
  CHECK((rcpt.valid && rcpt.address == "b@example.org"));
  m::Reply from = back(m::encode_address_reply(m::reply::kChgFrom, "", "SIZE=1"));
  CHECK((from.valid && from.address.empty() && from.args == "SIZE=1"));
  m::Reply q = back(m::encode_quarantine("held"));
  CHECK((q.valid && q.value == "held"));
}

TEST_CASE("milter_server config: listen addresses, time-out, socket mode, policy", "[milter_server][config]") {
  auto c = test::load_config_text(R"([milter_server]
listen = ["inet:127.0.0.1:8893", "unix:/run/postern/milter.sock", "inet:[::1]:8894"]
timeout = 120
socket_mode = "0666"
connections = 50
policy = "submission"
)");
  const auto& ms = c->milter_server;
  REQUIRE(ms.listen.size() == 3);
  CHECK((ms.listen[0].host == "127.0.0.1" && ms.listen[0].port == 8893 && !ms.listen[0].unix_socket));
  CHECK((ms.listen[1].unix_socket && ms.listen[1].path == "/run/postern/milter.sock"));
  CHECK(ms.listen[2].host == "::1");
  CHECK(ms.timeout.count() == 120);
  CHECK(ms.socket_mode == 0666);
  CHECK(ms.connections == 50);
  CHECK(ms.policy == Config::Listener::Policy::kSubmission);
  CHECK(test::load_config_text("[milter_server]\nlisten = \"inet:127.0.0.1:1\"\n")->milter_server.listen.size() == 1);
  CHECK(test::load_config_text("")->milter_server.listen.empty());  // off by default

  auto err = [](const std::string& body) { return test::config_error_of_text("[milter_server]\n" + body); };
  CHECK(err("listen = \"tcp:1.2.3.4:5\"\n").find("milter_server.listen") != std::string::npos);
  CHECK(err("listen = [\"unix:relative\"]\n").find("absolute") != std::string::npos);
  CHECK(err("listen = 5\n").find("milter_server.listen") != std::string::npos);
  CHECK(err("listen = [5]\n").find("expected a string") != std::string::npos);
  CHECK(err("timeout = 0\n").find("milter_server.timeout") != std::string::npos);
  CHECK(err("socket_mode = \"0777\"\n").find("socket_mode") != std::string::npos);
  CHECK(err("policy = \"none\"\n").find("milter_server.policy") != std::string::npos);
  CHECK(err("lisen = []\n").find("did you mean 'listen'") != std::string::npos);
}
