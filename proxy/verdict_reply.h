// Turns a filter's verdict into the SMTP reply the client hears: the action's
// default code and enhanced status code (RFC 3463 X.7.1 "delivery not
// authorized"), or the rule's own, checked against the action's class and
// reduced to safe text.
#pragma once

#include "filters/verdict.h"
#include "proxy/smtp_reply.h"

namespace postern {

Reply verdict_reply(const Verdict& verdict, Stage stage);

}  // namespace postern
