// The one place the C headers of libspf2, libopendkim and libopendmarc are
// included: none of them has extern "C", and dkim.h uses C99's _Bool.
// Include this, never <spf2/spf.h>, <opendkim/dkim.h> or <opendmarc/dmarc.h>.
#pragma once

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>

extern "C" {
#include <spf2/spf.h>
#define _Bool bool
#include <opendkim/dkim.h>
#undef _Bool
#include <opendmarc/dmarc.h>
}
