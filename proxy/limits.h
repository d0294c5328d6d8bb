// Hard limits on everything postern reads from the network that the
// configuration does not set (STYLE habit 1). Configurable limits live in
// Config::Limits; these bound the rest.
#pragma once

#include <cstddef>

namespace postern::limits {

// Upstream replies: RFC 5321 §4.5.3.1.5 allows 512 octets a line; MTAs send more.
inline constexpr std::size_t kUpstreamReplyLine = 4096;
inline constexpr std::size_t kUpstreamReplyLines = 100;
// 334 challenges in one AUTH exchange: LOGIN asks twice (user, password),
// PLAIN at most once; an MTA asking more never lets the client go.
inline constexpr std::size_t kSaslChallenges = 2;
// Bytes read from a socket in one go.
inline constexpr std::size_t kReadChunk = 64 * 1024;
// A TLS read between messages (commands are short; content reads kTlsRecord).
inline constexpr std::size_t kCommandReadChunk = 4096;
// A TLS read of content: one SSL_read returns at most one record's plaintext,
// 2^14 octets (RFC 8446 §5.1, RFC 5246 §6.2.1); a larger buffer is only
// zero-filled (std::string::resize) and never written.
inline constexpr std::size_t kTlsRecord = 16 * 1024;
// Capacity a buffer may keep between messages; beyond it, it is given back
// (issue 18: 300 idle sessions after a 900 kB message each held 550 MB).
inline constexpr std::size_t kIdleBuffer = 4096;
// Content bytes sent to the upstream per write when relaying from a spill file.
inline constexpr std::size_t kRelayChunk = 256 * 1024;
// HELO/EHLO argument kept for logs and the Received header.
inline constexpr std::size_t kHeloName = 255;
// Hostile text in a log line is cut here (STYLE habit 8).
inline constexpr std::size_t kLogText = 256;
// RFC 5321 §4.5.3.1.4: a command line is at least 512 octets; below this a
// configured limit is refused.
inline constexpr std::size_t kMinCommandLine = 512;

}  // namespace postern::limits
