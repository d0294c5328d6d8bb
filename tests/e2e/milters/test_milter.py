"""A real milter on libmilter (python3-milter) for the milter client tests:
its behaviour at end of message is chosen by the message's X-Test-Case field,
at MAIL and RCPT by the address. Everything it sees goes, one JSON object a
line, to the file named by $MILTER_LOG.

Run: /usr/bin/python3 test_milter.py PORT|/unix/socket/path
"""
import json
import os
import sys
import threading
import time

import Milter

LOG = os.environ.get("MILTER_LOG", "/dev/null")
_lock = threading.Lock()


def log(**event):
    with _lock, open(LOG, "a") as f:
        f.write(json.dumps(event) + "\n")


# ESMTP arguments no MTA may see (SMFIR_ADDRCPT_PAR), one added recipient each.
HOSTILE_ARGS = [
    "NOTIFY=NEVER\r\nRCPT TO:<evil@example.com>",   # CR LF and a second command
    "NOTIFY=NEVER\nDATA",                           # bare LF
    "NOTIFY=NE\rVER",                               # bare CR
    "NOTIFY= NEVER",                                # empty value, then a bare word
    "NOT_IFY=NEVER",                                # keyword with an illegal character
    "-NOTIFY=NEVER",                                # keyword starting with "-"
    "NOTIFY=NEVER\tORCPT=rfc822;x@example.com",     # a control character inside
    " ".join(f"P{i}=v" for i in range(100)),        # 100 parameters
    "ORCPT=rfc822;" + "x" * 800,                    # a value past ORCPT's 500 characters
    "ENVID=" + "x" * 5000,                          # a very long value
    "NOTIFY=NEVER NOTIFY=SUCCESS",                  # one keyword twice
    "ENVID=caf\u00e9",                              # 8-bit octets
]


class TestMilter(Milter.Base):
    def __init__(self):
        self.case = ""
        self.body_bytes = 0

    def connect(self, hostname, family, hostaddr):
        log(step="connect", hostname=hostname, addr=hostaddr[0] if hostaddr else None,
            j=self.getsymval("j"), client_addr=self.getsymval("{client_addr}"))
        return Milter.CONTINUE

    def hello(self, helo):
        log(step="helo", helo=helo, tls_version=self.getsymval("{tls_version}"))
        if helo == "reject.example":
            self.setreply("550", "5.7.0", "go away")
            return Milter.REJECT
        if helo == "accept.example":
            return Milter.ACCEPT
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *args):
        log(step="mail", mailfrom=mailfrom, args=list(args), i=self.getsymval("i"),
            mail_addr=self.getsymval("{mail_addr}"))
        if mailfrom.startswith("<reject@"):
            self.setreply("550", "5.7.1", "sender refused", "by the test milter")
            return Milter.REJECT
        if mailfrom.startswith("<accept@"):
            return Milter.ACCEPT
        self.case = ""
        self.body_bytes = 0
        return Milter.CONTINUE

    def envrcpt(self, to, *args):
        log(step="rcpt", rcpt=to, args=list(args), rcpt_addr=self.getsymval("{rcpt_addr}"))
        if to.startswith("<temp@"):
            return Milter.TEMPFAIL
        if to.startswith("<reply@"):
            self.setreply("450", "4.2.1", "mailbox busy")
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):
        log(step="header", name=name, value=value)
        if name.lower() == "x-test-case":
            self.case = value.strip()
        return Milter.CONTINUE

    def eoh(self):
        log(step="eoh")
        if self.case == "eoh-reject":
            return Milter.REJECT
        return Milter.CONTINUE

    def body(self, chunk):
        self.body_bytes += len(chunk)
        log(step="body", size=len(chunk))
        if self.case == "skip":
            return Milter.SKIP
        if self.case == "kill":
            os._exit(3)  # killed mid-message
        return Milter.CONTINUE

    def eom(self):
        case = self.case
        log(step="eom", case=case, body_bytes=self.body_bytes)
        if case == "headers":
            self.addheader("X-Milter-Added", "yes")
            self.addheader("X-Milter-Top", "first", 0)
            self.chgheader("Subject", 1, "changed by milter")
            self.chgheader("X-Remove-Me", 1, "")
        elif case == "insert-at":  # SMFIR_INSHEADER at positions 0, 2 and past the end
            self.addheader("X-At-Two", "b", 2)
            self.addheader("X-At-Two-Later", "a", 2)
            self.addheader("X-At-Zero", "z", 0)
            self.addheader("X-At-End", "e", 99)
        elif case == "rcpts":
            self.addrcpt("<added@example.com>")
            self.addrcpt("<withargs@example.com>", "NOTIFY=NEVER")
            self.delrcpt("<b@example.com>")
        elif case == "from":
            self.chgfrom("<bounces@example.org>")
        elif case == "from-args":  # SMFIR_CHGFROM with DSN parameters
            self.chgfrom("<bounces@example.org>", "RET=HDRS ENVID=x")
        elif case == "wrong-args":  # parameters that are valid text but not for this MTA
            self.chgfrom("<bounces@example.org>", "NOTIFY=NEVER RET=SOMETIMES X-VENDOR=1 BODY=8BITMIME")
            self.addrcpt("<vendor@example.com>", "X-VENDOR=1 NOTIFY=DELAY RET=FULL ORCPT=nosemicolon")
        elif case == "hostile-args":  # each address gets in, none of its parameters
            for i, args in enumerate(HOSTILE_ARGS):
                self.addrcpt(f"<hostile{i}@example.com>", args)
            self.chgfrom("<bounces@example.org>", "RET=HDRS\r\nRCPT TO:<evil@example.com>")
        elif case == "body":
            # bare LF, bare CR, and a CRLF split over two SMFIR_REPLBODY packets
            self.replacebody(b"replaced body\r")
            self.replacebody(b"\nsecond line\n.dot line\rlast\r\n")
        elif case == "reject":
            self.setreply("554", "5.7.1", "virus found", "second line")
            return Milter.REJECT
        elif case == "tempfail":
            return Milter.TEMPFAIL
        elif case == "discard":
            return Milter.DISCARD
        elif case == "quarantine":
            self.quarantine("held by test")
        elif case == "body-quarantine":  # the held copy is what would have been relayed
            self.replacebody(b"cleaned body\r\n")
            self.addheader("X-Milter-Cleaned", "yes")
            self.quarantine("held after cleaning")
        elif case == "progress":
            for _ in range(6):  # 1.8 s, longer than the 1 s eom_timeout
                time.sleep(0.3)
                self.progress()
            self.addheader("X-Milter-Progress", "done")
        elif case == "slow":
            time.sleep(5)
        elif case == "many":  # past postern's bound of 256 modifications
            for i in range(300):
                self.addheader(f"X-Many-{i}", "v")
        elif case == "from-and-quarantine-flood":
            for i in range(300):
                self.chgfrom(f"<s{i}@example.org>")
        elif case == "accept":
            self.addheader("X-Milter-Accept", "yes")
            return Milter.ACCEPT
        return Milter.CONTINUE

    def abort(self):
        log(step="abort")
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE


class MinimalMilter(Milter.Base):
    """Only end of message: libmilter declines every other step (SMFIP_NO*)."""

    def eom(self):
        log(step="eom", case="minimal")
        self.addheader("X-Minimal", "yes")
        return Milter.CONTINUE


def main():
    where = sys.argv[1]  # a port on 127.0.0.1, or a unix socket path
    Milter.factory = MinimalMilter if os.environ.get("MILTER_MINIMAL") else TestMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.ADDRCPT | Milter.ADDRCPT_PAR |
                     Milter.DELRCPT | Milter.CHGFROM | Milter.CHGBODY | Milter.QUARANTINE)
    spec = f"unix:{where}" if where.startswith("/") else f"inet:{where}@127.0.0.1"
    Milter.runmilter("postern-test", spec, timeout=30)


if __name__ == "__main__":
    main()
