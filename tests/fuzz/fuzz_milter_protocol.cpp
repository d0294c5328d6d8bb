// Fuzz target: the milter codec (filters/milter/milter_protocol.h). The input
// is what a milter sends postern: a stream of reply packets.
//
// Asserts:
//  - feeding the stream whole or one byte at a time gives the same packets,
//    up to the first kInvalid;
//  - no packet is longer than kMaxPacket, and the reader never holds more
//    than one packet's worth beyond what it returned;
//  - decode_reply never reads past a packet; a valid SMFIR_REPLYCODE has a
//    4xx/5xx code and text without CR or NUL; a valid header reply has a
//    non-empty name without NUL;
//  - a packet re-encoded with encode() reads back to the same packet;
//  - the same packets read as the MTA's commands (the milter server's side,
//    decode_command): a valid connect has a known family, a valid MAIL/RCPT
//    a non-empty path, a valid header a non-empty name, macros come in pairs;
//    the reply encoders frame what they are given whole;
//  - SMFIR_ADDRCPT_PAR / SMFIR_CHGFROM arguments that parse_filter_esmtp_params
//    accepts hold only esmtp-param octets within the bounds and read back the same.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "filters/esmtp_param.h"
#include "filters/milter/milter_protocol.h"
#include "fuzz_util.h"

namespace m = postern::milter;

namespace {

std::vector<m::Packet> read_all(std::string_view input, bool bytewise, bool& invalid) {
  m::PacketReader r;
  std::vector<m::Packet> out;
  invalid = false;
  auto drain = [&] {
    m::Packet p;
    for (;;) {
      auto s = r.next(p);
      if (s == m::PacketReader::Status::kPacket) {
        out.push_back(p);
        continue;
      }
      if (s == m::PacketReader::Status::kInvalid) invalid = true;
      return;
    }
  };
  if (bytewise) {
    for (std::size_t i = 0; i < input.size() && !invalid; ++i) {
      r.feed(input.substr(i, 1));
      drain();
    }
  } else {
    r.feed(input);
    drain();
  }
  FUZZ_CHECK(invalid || r.buffered() < 4 + m::kMaxPacket, std::to_string(r.buffered()));
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  bool invalid_whole = false, invalid_bytes = false;
  auto whole = read_all(input, false, invalid_whole);
  auto bytes = read_all(input, true, invalid_bytes);
  FUZZ_CHECK(whole.size() == bytes.size() && invalid_whole == invalid_bytes,
             std::to_string(whole.size()) + " vs " + std::to_string(bytes.size()));
  for (std::size_t i = 0; i < whole.size(); ++i) {
    const m::Packet& p = whole[i];
    FUZZ_CHECK(p.command == bytes[i].command && p.data == bytes[i].data, postern::fuzz::escape(p.data));
    FUZZ_CHECK(p.data.size() < m::kMaxPacket, std::to_string(p.data.size()));
    m::PacketReader again;
    again.feed(m::encode(p.command, p.data));
    m::Packet q;
    FUZZ_CHECK(again.next(q) == m::PacketReader::Status::kPacket && q.command == p.command && q.data == p.data,
               postern::fuzz::escape(p.data));
    m::Reply r = m::decode_reply(p);
    if (!r.valid) continue;
    if (r.command == m::reply::kReplyCode) {
      FUZZ_CHECK(r.code >= 400 && r.code <= 599, std::to_string(r.code));
      FUZZ_CHECK(r.text.find('\r') == std::string::npos && r.text.find('\0') == std::string::npos,
                 postern::fuzz::escape(r.text));
    }
    if (r.command == m::reply::kAddHeader || r.command == m::reply::kInsHeader ||
        r.command == m::reply::kChgHeader) {
      FUZZ_CHECK(!r.name.empty() && r.name.find('\0') == std::string::npos, postern::fuzz::escape(r.name));
    }
    if (r.command == m::reply::kAddRcptPar || r.command == m::reply::kChgFrom) {
      // A milter's ESMTP arguments as accepted go on a command line: only
      // esmtp-param octets, within the bounds, and they read back the same.
      postern::EsmtpParamsParse parsed = postern::parse_filter_esmtp_params(r.args);
      if (parsed.error.empty()) {
        FUZZ_CHECK(parsed.params.size() <= postern::kMaxFilterEsmtpParams, postern::fuzz::escape(r.args));
        const std::string text = postern::esmtp_params_text(parsed.params);
        for (unsigned char ch : text) FUZZ_CHECK(ch == ' ' || (ch > 32 && ch < 127), postern::fuzz::escape(text));
        for (const postern::EsmtpParam& q : parsed.params) {
          FUZZ_CHECK(q.value.find('=') == std::string::npos && q.value.size() <= postern::kMaxFilterEsmtpValue,
                     postern::fuzz::escape(q.value));
        }
        FUZZ_CHECK(postern::esmtp_params_text(postern::parse_filter_esmtp_params(text).params) == text,
                   postern::fuzz::escape(text));
      } else {
        FUZZ_CHECK(parsed.params.empty(), postern::fuzz::escape(r.args));
      }
    }
    (void)m::decode_optneg(p);
  }
  for (const m::Packet& p : whole) {
    m::Command c = m::decode_command(p);
    if (c.valid && c.command == m::cmd::kConnect) {
      FUZZ_CHECK(c.family == '4' || c.family == '6' || c.family == 'L' || c.family == 'U', std::string(1, c.family));
    }
    if (c.valid && (c.command == m::cmd::kMail || c.command == m::cmd::kRcpt)) {
      FUZZ_CHECK(!c.args.empty() && !c.args[0].empty(), postern::fuzz::escape(p.data));
    }
    if (c.valid && c.command == m::cmd::kHeader) FUZZ_CHECK(!c.name.empty(), postern::fuzz::escape(p.data));
    if (c.valid && c.command == m::cmd::kHeader) {
      std::string framed = m::encode_header_reply(m::reply::kInsHeader, 0, c.name, c.value);
      m::PacketReader back;
      back.feed(framed);
      m::Packet q;
      FUZZ_CHECK(back.next(q) == m::PacketReader::Status::kPacket, postern::fuzz::escape(framed));
      m::Reply r = m::decode_reply(q);
      FUZZ_CHECK(r.valid && r.name == c.name && r.value == c.value, postern::fuzz::escape(framed));
    }
  }
  return 0;
}
