// postern's changes to a message as milter modifications (SMFIR_*), for the
// milter server: the same Changes a proxied session applies when it relays
// (filters/message.h render_header_block, Session::redo_envelope), said to
// the MTA instead. I/O-free.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "filters/filter.h"
#include "filters/message.h"

namespace postern {

// The modifications for `t.changes` on `message`, framed, in the order the
// MTA must apply them: header changes and deletions (the last occurrence
// first, so that indexes stay valid), added fields, fields inserted at the
// top (Authentication-Results, Received-SPF...), the envelope (CHGFROM,
// DELRCPT, ADDRCPT), then a new body. `actions`: the SMFIF_* the MTA allows;
// a change it does not allow sets `error` (the caller tempfails: a change
// that cannot be made is not dropped silently). `leading_space`: SMFIP_HDR_LEADSPC
// was agreed. `no_recipients_left`: every recipient was removed.
std::string milter_modifications(const Message& message, const TransactionFacts& t, std::uint32_t actions,
                                 bool leading_space, std::string& error, bool& no_recipients_left);

// A field postern composed ("Name: value\r\n\tmore\r\n", fold_header_field)
// as the value of SMFIR_{ADD,INS,CHG}HEADER: folds as LF + WSP (the MTA
// writes its own line ends), with the leading space only when
// SMFIP_HDR_LEADSPC was agreed.
std::string milter_header_value(std::string_view field, std::size_t name_size, bool leading_space);

}  // namespace postern
