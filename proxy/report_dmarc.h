// `postern report dmarc`: RFC 7489 aggregate reports from the audit log,
// written as RFC-named .xml.gz files and, with --send, mailed through the
// upstream to each reported domain's rua= addresses (§7.1 external
// destinations verified, !size limits kept).
#pragma once

#include <string>
#include <vector>

namespace postern {

// The command line after "report dmarc"; the exit status.
int cmd_report_dmarc(const std::vector<std::string>& args);

}  // namespace postern
