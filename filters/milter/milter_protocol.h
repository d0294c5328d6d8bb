// The milter protocol, version 6 (Sendmail's libmilter, as Postfix speaks
// it): I/O-free framing, the MTA's commands (SMFIC_*) and the milter's
// replies (SMFIR_*). A packet is a 4-octet big-endian length, then a command
// octet and its data; the length counts the command octet. Nothing here
// touches a socket: the client (milter_client.h) feeds bytes in and writes
// the encoded packets out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace postern::milter {

constexpr std::uint32_t kVersion = 6;
// A reply longer than this is garbage, never buffered (libmilter's own
// MILTER_MAX_DATA_SIZE is 64 KiB; a replaced body comes in several packets).
constexpr std::size_t kMaxPacket = 1024 * 1024;
// SMFIC_BODY chunks are at most this long (MILTER_CHUNK_SIZE).
constexpr std::size_t kBodyChunk = 65535;

// Commands the MTA sends (SMFIC_*).
namespace cmd {
constexpr char kAbort = 'A', kBody = 'B', kConnect = 'C', kMacro = 'D', kBodyEob = 'E', kHelo = 'H',
               kQuitNc = 'K', kHeader = 'L', kMail = 'M', kEoh = 'N', kOptneg = 'O', kQuit = 'Q',
               kRcpt = 'R', kData = 'T', kUnknown = 'U';
}  // namespace cmd

// Replies the milter sends (SMFIR_*).
namespace reply {
constexpr char kAddRcpt = '+', kDelRcpt = '-', kAddRcptPar = '2', kShutdown = '4', kAccept = 'a',
               kReplBody = 'b', kContinue = 'c', kDiscard = 'd', kChgFrom = 'e', kConnFail = 'f',
               kAddHeader = 'h', kInsHeader = 'i', kSetSymList = 'l', kChgHeader = 'm', kProgress = 'p',
               kQuarantine = 'q', kReject = 'r', kSkip = 's', kTempfail = 't', kReplyCode = 'y',
               kOptneg = 'O';
}  // namespace reply

// SMFIF_*: actions the milter may take (negotiated).
namespace action {
constexpr std::uint32_t kAddHdrs = 0x01, kChgBody = 0x02, kAddRcpt = 0x04, kDelRcpt = 0x08, kChgHdrs = 0x10,
                        kQuarantine = 0x20, kChgFrom = 0x40, kAddRcptPar = 0x80, kSetSymList = 0x100;
constexpr std::uint32_t kAll = 0x1ff;
}  // namespace action

// SMFIP_*: protocol steps the milter does not want (kNo*) or does not
// answer (kNr*).
namespace step {
constexpr std::uint32_t kNoConnect = 0x1, kNoHelo = 0x2, kNoMail = 0x4, kNoRcpt = 0x8, kNoBody = 0x10,
                        kNoHdrs = 0x20, kNoEoh = 0x40, kNrHdr = 0x80, kNoUnknown = 0x100, kNoData = 0x200,
                        kSkip = 0x400, kRcptRej = 0x800, kNrConn = 0x1000, kNrHelo = 0x2000,
                        kNrMail = 0x4000, kNrRcpt = 0x8000, kNrData = 0x10000, kNrUnkn = 0x20000,
                        kNrEoh = 0x40000, kNrBody = 0x80000, kHdrLeadSpc = 0x100000;
// What postern offers: every "no" and "no reply" step and SKIP; not
// RCPT_REJ (rejected recipients are not sent) nor HDR_LEADSPC.
constexpr std::uint32_t kOffered = kNoConnect | kNoHelo | kNoMail | kNoRcpt | kNoBody | kNoHdrs | kNoEoh |
                                   kNrHdr | kNoUnknown | kNoData | kSkip | kNrConn | kNrHelo | kNrMail |
                                   kNrRcpt | kNrData | kNrUnkn | kNrEoh | kNrBody;
}  // namespace step

// Macro stages of SMFIC_MACRO (SMFIM_*), as the command each precedes.
enum class MacroStage : char {
  kConnect = cmd::kConnect, kHelo = cmd::kHelo, kMail = cmd::kMail, kRcpt = cmd::kRcpt,
  kData = cmd::kData, kEoh = cmd::kEoh, kEom = cmd::kBodyEob,
};

struct Packet {
  char command = 0;
  std::string data;
};

// Splits packets off a byte stream.
class PacketReader {
 public:
  enum class Status { kPacket, kIncomplete, kInvalid };
  // Appends what was read. Then call next() until it says kIncomplete.
  void feed(std::string_view bytes) { buffer_.append(bytes); }
  // kInvalid: a zero or over-long length; the stream cannot be resynchronized.
  Status next(Packet& out);
  std::size_t buffered() const { return buffer_.size() - pos_; }

 private:
  std::string buffer_;
  std::size_t pos_ = 0;
};

// Encoders of the MTA's commands (the client side, milter_filter.cpp): each
// returns a whole framed packet.
std::string encode(char command, std::string_view data);
std::string encode_optneg(std::uint32_t version, std::uint32_t actions, std::uint32_t steps);
// family: '4', '6', 'L' (unix socket) or 'U' (unknown: no port nor address).
std::string encode_connect(std::string_view hostname, char family, std::uint16_t port, std::string_view address);
std::string encode_helo(std::string_view helo);
// MAIL / RCPT: the path in angle brackets, then each ESMTP argument.
std::string encode_envelope(char command, std::string_view path, const std::vector<std::string>& args);
std::string encode_header(std::string_view name, std::string_view value);
std::string encode_macros(MacroStage stage, const std::vector<std::pair<std::string, std::string>>& macros);

// The milter's answer to SMFIC_OPTNEG.
struct Negotiated {
  std::uint32_t version = 0;
  std::uint32_t actions = 0;
  std::uint32_t steps = 0;
};
std::optional<Negotiated> decode_optneg(const Packet& p);

// One reply of the milter, decoded; `valid` false for a malformed one.
struct Reply {
  char command = 0;
  bool valid = false;
  // SMFIR_REPLYCODE: the code, the enhanced status code of the first line
  // and the text (lines joined by "\n", each without code and enhanced code).
  int code = 0;
  std::string enhanced;
  std::string text;
  // SMFIR_{ADD,INS,CHG}HEADER: the occurrence/position index, name, value.
  std::uint32_t index = 0;
  std::string name;
  std::string value;
  // SMFIR_{ADD,DEL}RCPT(_PAR), SMFIR_CHGFROM: the address (angle brackets
  // removed) and any ESMTP arguments; SMFIR_QUARANTINE: the reason in value.
  std::string address;
  std::string args;
  // SMFIR_REPLBODY: a piece of the new body.
  std::string body;
};
Reply decode_reply(const Packet& p);
// True for the replies that end a command: accept, continue, discard,
// reject, tempfail, replycode, skip (body), shutdown, conn_fail.
bool is_final(char command);

// The server side (proxy/milter_server.cpp): one of the MTA's commands,
// decoded; `valid` false for a malformed one.
struct Command {
  char command = 0;
  bool valid = false;
  Negotiated optneg;  // SMFIC_OPTNEG: the MTA's version, actions and steps
  // SMFIC_CONNECT: host name, family ('4', '6', 'L', 'U'), port, address.
  std::string hostname;
  char family = 'U';
  std::uint16_t port = 0;
  std::string address;
  std::string helo;  // SMFIC_HELO
  // SMFIC_MAIL / SMFIC_RCPT: the path as sent ("<a@b>") then ESMTP arguments.
  std::vector<std::string> args;
  std::string name, value;  // SMFIC_HEADER
  char macro_stage = 0;     // SMFIC_MACRO: the command the macros go with
  std::vector<std::pair<std::string, std::string>> macros;
  std::string body;  // SMFIC_BODY, SMFIC_BODYEOB (a last chunk, usually empty), SMFIC_UNKNOWN
};
Command decode_command(const Packet& p);

// Encoders of the milter's replies (the server side).
// SMFIR_REPLYCODE: `text` lines ("\n"-separated, each with its enhanced
// code), each prefixed with the code ("550-" ... "550 ").
std::string encode_replycode(int code, std::string_view text);
// SMFIR_ADDHEADER (index unused), SMFIR_INSHEADER, SMFIR_CHGHEADER.
std::string encode_header_reply(char command, std::uint32_t index, std::string_view name, std::string_view value);
// SMFIR_ADDRCPT, SMFIR_DELRCPT, SMFIR_CHGFROM, SMFIR_ADDRCPT_PAR: the address
// in angle brackets, then the ESMTP arguments when any (not for ADD/DELRCPT).
std::string encode_address_reply(char command, std::string_view address, std::string_view args = {});
std::string encode_quarantine(std::string_view reason);

}  // namespace postern::milter
