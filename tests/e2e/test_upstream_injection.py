"""Every byte from the MTA is explained (DESIGN; issue 18). Each upstream
reply answers one command postern wrote; octets that answer nothing -- a
second reply to MAIL or RCPT, a 250 merged behind the 354 to DATA, a reply
behind the final one, bytes sent while the connection idles between
transactions, plaintext after the 220 to STARTTLS -- are a protocol error:
the transaction gets 451 4.4.0, the upstream connection is closed and never
used again, `upstream-protocol-error` names the reason and
postern_upstream_protocol_errors_total counts it. No path turns the MTA's
refusal into a 250.

An MTA's 421, at any stage, ends the client's session with 421 (the MTA's
text when it carries a 4.x.x code, postern's otherwise); a 421 the MTA sends
on its own between transactions (its idle time-out) only costs a reconnect.

The upstream is a scripted server, for DATA and CHUNKING upstreams, and each
case is played with the MTA's octets merged in one write and split across
writes (cut inside lines, never at a reply boundary, so that what postern
reads is the same whatever the timing). No real MTA misbehaves on purpose."""
import ssl
import threading
import time

import pytest

from harness import (ScriptedServer, SmtpClient, check_reply, data_payload, free_port, listener_ports, make_cert,
                     make_message, write_config)
from prometheus import scrape

EXTRA = b"250 2.0.0 injected\r\n"
CLOSE = None  # in a script: the MTA closes the connection here
MSG = make_message("injection", b"body\r\n")


class Mta(ScriptedServer):
    """A small ESMTP server (PIPELINING, 8BITMIME; CHUNKING and XCLIENT when
    asked) whose replies at a stage can be replaced once by raw pieces.

    arm(script, after): script maps a stage (GREETING, EHLO, XCLIENT, MAIL,
    RCPT, DATA, DATA_END, BDAT, RSET, QUIT) to the pieces written instead of
    its normal reply, a short pause between pieces; `after` maps a stage to
    (delay, pieces) written that long after the stage's reply, unasked.
    Connections are counted, and commands recorded, from arm() on (postern's
    start-up probe comes before)."""

    def __init__(self, chunking=False, xclient=False, xforward=False, tls=None, auth=False):
        """tls: (certificate, key) files: STARTTLS offered and done."""
        self.auth = auth
        self.chunking = chunking
        self.xclient = xclient
        self.xforward = xforward
        self.tls = None
        if tls:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*tls)
        self.lock = threading.Lock()
        self.script = {}
        self.seen_stages = {}
        self.after = {}
        self.armed = False
        self.connections = 0
        self.commands = []   # (connection number, verb)
        self.xclient_lines = []
        self.tls_connections = []
        self.accepted = []   # (connection number, content) the MTA answered 250 to
        super().__init__()

    def arm(self, script=None, after=None):
        with self.lock:
            self.script = dict(script or {})
            self.seen_stages = {}
            self.after = dict(after or {})
            self.armed = True

    def _write(self, conn, pieces):
        for i, piece in enumerate(pieces):
            if piece is CLOSE:
                raise ConnectionAbortedError("scripted close")
            if i:
                time.sleep(0.03)
            conn.sendall(piece)

    def _reply(self, conn, stage, normal, on_positive=None):
        with self.lock:
            # "MAIL#2": the second MAIL of a connection (counted from arm())
            self.seen_stages[stage] = self.seen_stages.get(stage, 0) + 1
            pieces = self.script.pop(f"{stage}#{self.seen_stages[stage]}", None)
            if pieces is None:
                pieces = self.script.pop(stage, None)
            after = self.after.pop(stage, None)
        first = (pieces or [normal])[0] if pieces != [] else b""
        if on_positive and first and first.startswith(b"2"):
            on_positive()  # recorded before the client can hear of it
        self._write(conn, pieces if pieces is not None else [normal])
        if after:
            time.sleep(after[0])
            self._write(conn, after[1])
        return pieces

    def _final(self, conn, stage, cid, content):
        self._reply(conn, stage, b"250 2.0.0 Ok: queued as Q%d\r\n" % len(self.accepted),
                    on_positive=lambda: self.accepted.append((cid, content)))

    def other(self, conn, verb):
        conn.sendall(b"250 2.0.0 Ok\r\n")

    def ehlo_reply(self):
        caps = [b"mta.test", b"PIPELINING", b"8BITMIME"]
        if self.chunking:
            caps.append(b"CHUNKING")
        if self.xclient:
            caps.append(b"XCLIENT ADDR NAME PORT PROTO HELO")
        if self.xforward:
            caps.append(b"XFORWARD NAME ADDR PORT PROTO HELO")
        if self.tls:
            caps.append(b"STARTTLS")
        if self.auth:
            caps.append(b"AUTH PLAIN LOGIN")
        return b"".join(b"250-" + c + b"\r\n" for c in caps[:-1]) + b"250 " + caps[-1] + b"\r\n"

    def session(self, conn):
        conn.settimeout(20)
        f = conn.makefile("rb")
        with self.lock:
            if self.armed:
                self.connections += 1
            cid = self.connections if self.armed else 0
        try:
            self._reply(conn, "GREETING", b"220 mta.test ESMTP\r\n")
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line.split(b" ", 1)[0].strip().upper()
                if cid:
                    self.commands.append((cid, verb.decode("latin-1")))
                if verb in (b"EHLO", b"HELO"):
                    self._reply(conn, "EHLO", self.ehlo_reply())
                elif verb == b"STARTTLS" and self.tls:
                    conn.sendall(b"220 2.0.0 Ready to start TLS\r\n")
                    conn = self.tls.wrap_socket(conn, server_side=True)
                    f = conn.makefile("rb")
                    self.tls_connections.append(cid)
                elif verb == b"AUTH" and self.auth:
                    self._reply(conn, "AUTH", b"235 2.7.0 Authentication successful\r\n")
                elif verb == b"XFORWARD":
                    self._reply(conn, "XFORWARD", b"250 2.0.0 Ok\r\n")
                elif verb == b"XCLIENT":
                    self.xclient_lines.append(line)
                    self._reply(conn, "XCLIENT", b"220 mta.test ESMTP\r\n")
                elif verb == b"MAIL":
                    self._reply(conn, "MAIL", b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    self._reply(conn, "RCPT", b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA":
                    self._reply(conn, "DATA", b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    content = b""
                    while True:
                        data_line = f.readline()
                        if not data_line:
                            return
                        if data_line == b".\r\n":
                            break
                        content += data_line
                    self._final(conn, "DATA_END", cid, content)
                elif verb == b"BDAT":
                    content = f.read(int(line.split()[1]))
                    self._final(conn, "BDAT", cid, content)
                elif verb == b"RSET":
                    self._reply(conn, "RSET", b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT":
                    self._reply(conn, "QUIT", b"221 2.0.0 Bye\r\n")
                    return
                else:
                    self.other(conn, verb)
        except OSError:
            pass
        finally:
            conn.close()


@pytest.fixture
def mta_factory():
    made = []

    def make(**kw):
        m = Mta(**kw)
        made.append(m)
        return m
    yield make
    for m in made:
        m.close()


def split(data):
    """`data` cut into 5-octet pieces, never right after a CRLF: no piece
    boundary falls on a reply boundary."""
    cuts = [p for p in range(5, len(data), 5) if data[p - 2:p] != b"\r\n"]
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def pieces(data, how):
    return [data] if how == "merged" else split(data)


def start(postern, mta, **sets):
    metrics_port = free_port()
    all_sets = {"metrics.address": f'"127.0.0.1:{metrics_port}"'}
    all_sets.update(sets)
    p = postern.start(upstream=mta.address, sets=all_sets)
    p.metrics_port = metrics_port
    return p


def transaction(c, content=MSG):
    """MAIL, RCPT, DATA and the content, one command at a time; stops at the
    first refusal. Returns {step: reply} for MAIL, RCPT, DATA, END."""
    got = {}
    got["MAIL"] = r = c.cmd("MAIL FROM:<a@example.org>")
    if r.code != 250:
        return got
    got["RCPT"] = r = c.cmd("RCPT TO:<b@example.com>")
    if r.code != 250:
        return got
    got["DATA"] = r = c.cmd("DATA")
    if r.code != 354:
        return got
    c.send(data_payload(content))
    got["END"] = c.read_reply()
    return got


def assert_protocol_error(p, op):
    line = p.wait_for_log("upstream-protocol-error", reason="unexplained_bytes")
    assert line.get("op") == op, line.raw
    m = scrape(p.metrics_port)
    assert m.value("postern_upstream_protocol_errors_total", reason="unexplained_bytes") == 1
    assert m.value("postern_upstream_errors_total", kind="protocol") == 1


def assert_not_reused(mta, c):
    """The connection that misbehaved takes no further command: the next
    transaction goes through on a new one."""
    used = len(mta.commands)
    accepted = len(mta.accepted)
    assert mta.connections == 1, mta.commands
    got = transaction(c, make_message("after", b"after\r\n"))
    check_reply(got["END"], 250, what="the next message, over a new upstream connection")
    assert mta.connections == 2
    assert all(cid == 2 for cid, _ in mta.commands[used:]), mta.commands
    assert [cid for cid, _ in mta.accepted[accepted:]] == [2], mta.accepted


EHLO = Mta().ehlo_reply()
EHLO_CHUNKING = Mta(chunking=True).ehlo_reply()

# (name, upstream, stage scripted, the MTA's octets, the client step that gets 451 4.4.0, op logged)
CASES = [
    ("greeting", {}, "GREETING", b"220 mta.test ESMTP\r\n" + EXTRA, "MAIL", "greeting"),
    ("ehlo", {}, "EHLO", EHLO + EXTRA, "MAIL", "ehlo"),
    ("ehlo-chunking", {"chunking": True}, "EHLO", EHLO_CHUNKING + EXTRA, "MAIL", "ehlo"),
    ("xclient", {"xclient": True}, "XCLIENT", b"220 mta.test ESMTP\r\n" + EXTRA, "MAIL", "xclient"),
    ("xforward", {"xforward": True}, "XFORWARD", b"250 2.0.0 Ok\r\n" + EXTRA, "MAIL", "xforward"),
    ("mail-two-replies", {}, "MAIL", b"250 2.1.0 Ok\r\n" + EXTRA, "MAIL", "mail"),
    ("mail-refusal-then-250", {"chunking": True}, "MAIL", b"553 5.7.1 no\r\n250 2.1.0 Ok\r\n", "MAIL", "mail"),
    ("rcpt-two-replies", {}, "RCPT", b"250 2.1.5 Ok\r\n" + EXTRA, "RCPT", "rcpt"),
    ("rcpt-two-replies-chunking", {"chunking": True}, "RCPT", b"250 2.1.5 Ok\r\n" + EXTRA, "RCPT", "rcpt"),
    ("rcpt-refusal-then-250", {}, "RCPT", b"550 5.1.1 unknown\r\n250 2.1.5 Ok\r\n", "RCPT", "rcpt"),
    ("354-and-250", {}, "DATA", b"354 go ahead\r\n250 2.0.0 Ok: queued\r\n", "END", "data"),
    ("354-and-554", {}, "DATA", b"354 go ahead\r\n554 5.7.1 refused\r\n", "END", "data"),
    ("end-of-data-554-then-250", {}, "DATA_END", b"554 5.7.1 refused\r\n" + EXTRA, "END", "eom"),
    ("end-of-data-250-then-250", {}, "DATA_END", b"250 2.0.0 Ok: queued\r\n" + EXTRA, "END", "eom"),
    ("bdat-554-then-250", {"chunking": True}, "BDAT", b"554 5.7.1 refused\r\n" + EXTRA, "END", "eom"),
    ("bdat-two-250", {"chunking": True}, "BDAT", b"250 2.0.0 Ok\r\n" + EXTRA, "END", "eom"),
    ("multi-line-then-garbage", {}, "RCPT", b"250-2.1.5 first\r\n250 2.1.5 Ok\r\nX", "RCPT", "rcpt"),
]


@pytest.mark.parametrize("how", ["merged", "split"])
@pytest.mark.parametrize("name,upstream,stage,octets,step,op", CASES, ids=[c[0] for c in CASES])
def test_octets_no_command_explains_fail_the_transaction(postern, mta_factory, name, upstream, stage, octets,
                                                         step, op, how):
    mta = mta_factory(**upstream)
    p = start(postern, mta)
    mta.arm({stage: pieces(octets, how)})
    with SmtpClient(p.port) as c:
        c.ehlo()
        got = transaction(c)
        assert list(got)[-1] == step, got
        check_reply(got[step], 451, "4.4.0", f"{name}: the step whose reply came with octets no command explains")
        # The MTA's 250 with a reply behind it is not trusted either: the
        # client retries, and a duplicate is the price (nothing is lost).
        took = stage in ("DATA_END", "BDAT") and octets.startswith(b"250")
        assert len(mta.accepted) == (1 if took else 0), mta.accepted
        assert_protocol_error(p, op)
        if step == "RCPT":
            c.expect("RSET", 250)
        assert_not_reused(mta, c)


@pytest.mark.parametrize("how", ["merged", "split"])
@pytest.mark.parametrize("chunking", [False, True], ids=["data", "chunking"])
def test_pipelined_group_with_one_reply_too_many(postern, mta_factory, chunking, how):
    """MAIL and RCPT pipelined (RFC 2920) in one write to the MTA: MAIL's
    reply, an extra 250, then RCPT's refusal all in one write. The 250 must
    not become RCPT's reply."""
    mta = mta_factory(chunking=chunking)
    p = start(postern, mta)
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(transaction(c)["END"], 250, what="first message: opens the kept connection")
        mta.arm({"MAIL": [], "RCPT": pieces(b"250 2.1.0 Ok\r\n" + EXTRA + b"550 5.1.1 unknown\r\n", how)})
        c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
        check_reply(c.read_reply(), 250, "2.1.0", "MAIL's own reply")
        check_reply(c.read_reply(), 451, "4.4.0", "RCPT, whose reply came behind an extra one")
        assert_protocol_error(p, "rcpt")


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "chunking"])
@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA_END"])
def test_octets_sent_while_idle_fail_the_next_command(postern, mta_factory, chunking, stage):
    """The MTA answers, then sends a reply of its own while postern waits on
    the client: the next command finds it and does not take it as its reply
    (an extra 250 behind the final one would otherwise answer the next
    message, whose refusal would be hidden)."""
    if stage == "DATA_END" and chunking:
        stage = "BDAT"
    mta = mta_factory(chunking=chunking)
    p = start(postern, mta)
    mta.arm(after={stage: (0.2, [EXTRA])})
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        if stage == "MAIL":
            time.sleep(0.6)
            check_reply(c.cmd("RCPT TO:<b@example.com>"), 451, "4.4.0", "RCPT after an unasked reply")
            assert_protocol_error(p, "rcpt")
            c.expect("RSET", 250)
            assert_not_reused(mta, c)
            return
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
        if stage == "RCPT":
            time.sleep(0.6)
            c.expect("DATA", 354)
            c.send(data_payload(MSG))
            check_reply(c.read_reply(), 451, "4.4.0", "end of data after an unasked reply")
            assert_protocol_error(p, "bdat" if chunking else "data")
            assert mta.accepted == []
            assert_not_reused(mta, c)
            return
        c.expect("DATA", 354)
        c.send(data_payload(MSG))
        check_reply(c.read_reply(), 250, what="the first message, answered before the extra reply")
        time.sleep(0.6)
        # the next message: its MAIL finds the extra 250 and fails
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 451, "4.4.0", "MAIL after an unasked 250")
        assert_protocol_error(p, "mail")
        # and the one after goes through over a new connection
        check_reply(transaction(c)["END"], 250)
        assert mta.connections == 2
        assert [cid for cid, _ in mta.accepted] == [1, 2]


def test_reply_behind_rset_and_quit_closes_the_connection(postern, mta_factory):
    """RSET and QUIT are postern's own: a reply too many behind theirs
    fails only the upstream connection, logged and counted. (Without
    connection reuse, so that the session's end is a QUIT to the MTA.)"""
    mta = mta_factory()
    p = start(postern, mta, **{"upstream.reuse": "false"})
    mta.arm({"RSET": [b"250 2.0.0 Ok\r\n" + EXTRA]})
    with SmtpClient(p.port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@example.org>", 250)
        c.expect("RCPT TO:<b@example.com>", 250)
        c.expect("RSET", 250)
        assert_protocol_error(p, "rset")
        assert_not_reused(mta, c)
        mta.arm({"QUIT": [b"221 2.0.0 Bye\r\n" + EXTRA]})
        c.expect("QUIT", 221)
    lines = p.wait_for_log("upstream-protocol-error", count=2)
    assert lines[1].get("op") == "quit", lines[1].raw


class StarttlsInjectingMta(Mta):
    """Offers STARTTLS and answers it with its 220 plus a forged 250."""

    def __init__(self, how):
        self.how = how
        super().__init__()

    def ehlo_reply(self):
        return b"250-mta.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"

    def other(self, conn, verb):
        if verb != b"STARTTLS":
            return super().other(conn, verb)
        self._write(conn, pieces(b"220 2.0.0 go ahead\r\n" + EXTRA, self.how))


@pytest.mark.parametrize("how", ["merged", "split"])
def test_plaintext_after_upstream_220_to_starttls_fails_the_connection(postern, how):
    """The mirror of CVE-2011-0411: plaintext behind the MTA's 220 to
    STARTTLS would be read as if it came under TLS."""
    mta = StarttlsInjectingMta(how)
    try:
        p = start(postern, mta, **{"upstream.tls": "opportunistic"})
        mta.arm()
        with SmtpClient(p.port) as c:
            c.ehlo()
            check_reply(c.cmd("MAIL FROM:<a@example.org>"), 451, "4.4.0", "MAIL over an injected connection")
        # the start-up probe's connection, then the session's
        lines = p.wait_for_log("upstream-protocol-error", reason="unexplained_bytes", op="starttls", count=2)
        assert lines[1].get("session") != "probe", lines[1].raw
        assert "MAIL" not in [verb for _, verb in mta.commands]
    finally:
        mta.close()


# --------------------------------------------------------------------------
# 421: the MTA is closing (RFC 5321 §3.8). One policy at every stage: the
# client hears 421 and its session ends (docs/operations.md).

STAGES_421 = [
    ("greeting", {}, "GREETING", "MAIL"),
    ("ehlo", {}, "EHLO", "MAIL"),
    ("xclient", {"xclient": True}, "XCLIENT", "MAIL"),
    ("xforward", {"xforward": True}, "XFORWARD", "MAIL"),
    ("mail", {}, "MAIL", "MAIL"),
    ("rcpt", {}, "RCPT", "RCPT"),
    ("data", {}, "DATA", "END"),
    ("end-of-data", {}, "DATA_END", "END"),
    ("mail-chunking", {"chunking": True}, "MAIL", "MAIL"),
    ("rcpt-chunking", {"chunking": True}, "RCPT", "RCPT"),
    ("bdat", {"chunking": True}, "BDAT", "END"),
]

# (name, what the MTA says, the code and text the client must hear)
TEXTS_421 = [
    ("mta-text", b"421 4.3.2 mta.test shutting down\r\n", "4.3.2 mta.test shutting down"),
    ("multi-line", b"421-4.3.2 mta.test\r\n421 4.3.2 shutting down\r\n", "4.3.2 mta.test"),
    ("no-enhanced-code", b"421 mta.test closing\r\n", "4.4.2 Error: upstream closed the connection, try again later"),
    ("wrong-class-code", b"421 5.0.0 mta.test closing\r\n",
     "4.4.2 Error: upstream closed the connection, try again later"),
]


@pytest.mark.parametrize("text", TEXTS_421, ids=[t[0] for t in TEXTS_421])
@pytest.mark.parametrize("name,upstream,stage,step", STAGES_421, ids=[s[0] for s in STAGES_421])
def test_mta_421_ends_the_client_session(postern, mta_factory, name, upstream, stage, step, text):
    _, said, heard = text
    mta = mta_factory(**upstream)
    p = start(postern, mta)
    mta.arm({stage: split(said) + [CLOSE]})
    with SmtpClient(p.port) as c:
        c.ehlo()
        got = transaction(c)
        assert list(got)[-1] == step, got
        r = check_reply(got[step], 421, heard[:5], f"{name}: the MTA's 421")
        assert r.raw_lines[0] == "421 " + heard or r.raw_lines[0] == "421-" + heard, r
        assert c.wait_closed(), "the client's session goes on after the MTA's 421"
    assert mta.accepted == []
    p.wait_for_log("upstream-421", op={"GREETING": "greeting", "EHLO": "ehlo", "XCLIENT": "xclient",
                                       "XFORWARD": "xforward",
                                       "MAIL": "mail", "RCPT": "rcpt", "DATA": "data", "DATA_END": "eom",
                                       "BDAT": "eom"}[stage])
    p.wait_for_log("upstream-closing", action="421 and close")


@pytest.mark.parametrize("how", ["merged", "split"])
@pytest.mark.parametrize("chunking", [False, True], ids=["data", "chunking"])
def test_final_reply_then_421_relays_both_and_closes(postern, mta_factory, chunking, how):
    """The MTA takes the message and says 421 behind its 250: the 250 stands
    (the MTA has the message), then the client hears 421 and the session ends."""
    mta = mta_factory(chunking=chunking)
    p = start(postern, mta)
    mta.arm({"BDAT" if chunking else "DATA_END":
             pieces(b"250 2.0.0 Ok: queued as X1\r\n421 4.3.2 shutting down\r\n", how) + [CLOSE]})
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(transaction(c)["END"], 250, "2.0.0", "the MTA's own 250")
        check_reply(c.read_reply(), 421, "4.4.2", "the 421 that follows it")
        assert c.wait_closed()
    assert len(mta.accepted) == 1


@pytest.mark.parametrize("early", [False, True], ids=["data-after-content", "early-data"])
def test_421_behind_354_voids_it(postern, mta_factory, early):
    """The MTA takes its 354 back with a 421 behind it: never any content
    over that connection. DATA sent with the content: that is the MTA's
    answer to DATA, relayed (421, the session ends). DATA sent ahead
    ([upstream] early_data): the MTA left before the content was even
    there, and the message goes once over a new connection."""
    mta = mta_factory()
    p = start(postern, mta, **{"upstream.early_data": "true" if early else "false"})
    mta.arm({"DATA": [b"354 go ahead\r\n421 4.3.2 shutting down\r\n", CLOSE]})
    with SmtpClient(p.port) as c:
        c.ehlo()
        if not early:
            check_reply(transaction(c)["END"], 421, "4.3.2", "content after a 354 the MTA took back")
            assert c.wait_closed()
            assert mta.accepted == []
            return
        check_reply(transaction(c)["END"], 250, what="once more over a new connection")
    assert [cid for cid, _ in mta.accepted] == [2]
    p.wait_for_log("upstream-data-retry")


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "chunking"])
def test_421_while_idle_between_messages_only_reconnects(postern, mta_factory, chunking):
    """The MTA's idle time-out (RFC 5321 §4.5.3.2): a 421 and a close while
    postern keeps the connection between messages is no one's refusal; the
    next message goes through over a new connection."""
    mta = mta_factory(chunking=chunking)
    p = start(postern, mta)
    mta.arm(after={"BDAT" if chunking else "DATA_END": (0.1, [b"421 4.4.2 mta.test idle timeout\r\n", CLOSE])})
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(transaction(c)["END"], 250)
        time.sleep(0.5)
        check_reply(transaction(c, make_message("second", b"second\r\n"))["END"], 250, what="second message")
        c.expect("NOOP", 250)
    assert [cid for cid, _ in mta.accepted] == [1, 2]
    m = scrape(p.metrics_port)
    assert m.total("postern_upstream_protocol_errors_total") == 0


# --------------------------------------------------------------------------
# the same over TLS (upstream.tls): what the MTA sends meanwhile is read
# through the TLS engine, session tickets and all


@pytest.fixture(scope="module")
def mta_cert(tmp_path_factory):
    cert, key, _ = make_cert(tmp_path_factory.mktemp("mta-cert"), cn="mta.test")
    return cert, key


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "chunking"])
def test_over_tls_extra_reply_and_idle_bytes_are_caught(postern, mta_factory, mta_cert, chunking):
    mta = mta_factory(chunking=chunking, tls=mta_cert)
    p = start(postern, mta, **{"upstream.tls": "opportunistic"})
    final = "BDAT" if chunking else "DATA_END"
    mta.arm()
    with SmtpClient(p.port) as c:
        c.ehlo()
        # two clean messages over one TLS connection: nothing to find
        for i in range(2):
            check_reply(transaction(c, make_message(f"tls {i}", b"tls\r\n"))["END"], 250)
        # a reply merged behind RCPT's
        mta.arm({"RCPT": pieces(b"250 2.1.5 Ok\r\n" + EXTRA, "split")})
        got = transaction(c)
        check_reply(got["RCPT"], 451, "4.4.0", "RCPT over TLS with a reply too many")
        assert_protocol_error(p, "rcpt")
        c.expect("RSET", 250)
        # a reply sent while the connection idles after the final one
        mta.arm(after={final: (0.2, [EXTRA])})
        check_reply(transaction(c, make_message("tls idle", b"x\r\n"))["END"], 250)
        time.sleep(0.6)
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 451, "4.4.0", "MAIL after an unasked reply over TLS")
        p.wait_for_log("upstream-protocol-error", count=2)
        check_reply(transaction(c)["END"], 250)
    assert mta.connections == 3
    assert [cid for cid in mta.tls_connections if cid] == [1, 2, 3]  # 0: the start-up probe


def test_over_tls_421_ends_the_session(postern, mta_factory, mta_cert):
    mta = mta_factory(tls=mta_cert)
    p = start(postern, mta, **{"upstream.tls": "opportunistic"})
    mta.arm({"RCPT": [b"421 4.3.2 shutting down\r\n", CLOSE]})
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(transaction(c)["RCPT"], 421, "4.3.2")
        assert c.wait_closed()


# --------------------------------------------------------------------------
# the envelope sent again after a rule changed it (RSET, MAIL, RCPT...)

ADD_RCPT_RULE = 'postern.rule{ name = "BCC", stage = "eom", fn = function(ctx) ctx:add_rcpt("c@example.com") end }\n'


@pytest.mark.parametrize("case", ["mail-250-then-421", "mail-421-on-the-new-connection-too", "rcpt-421",
                                  "rcpt-two-replies"])
def test_envelope_sent_again_never_turns_a_refusal_into_250(postern, mta_factory, tmp_path, case):
    """A rule adds a recipient: RSET, MAIL and both RCPTs go to the MTA
    again over the kept connection, where a 421 to MAIL may be its idle
    time-out: MAIL is tried once more over a new connection."""
    rules = tmp_path / "bcc.lua"
    rules.write_text(ADD_RCPT_RULE)
    mta = mta_factory()
    # The kept connection is what this is about: without early DATA the
    # envelope goes again over it (with early DATA a new one takes it,
    # test_early_data.py).
    p = start(postern, mta, **{"lua.scripts": f'["{rules}"]', "upstream.early_data": "false"})
    bye = [b"250 2.1.0 Ok\r\n421 4.3.2 bye\r\n", CLOSE]
    script = {
        "mail-250-then-421": {"MAIL#2": bye},
        "mail-421-on-the-new-connection-too": {"MAIL#2": bye, "MAIL#3": [b"421 4.3.2 bye\r\n", CLOSE]},
        "rcpt-421": {"RCPT#3": [b"421 4.3.2 bye\r\n", CLOSE]},
        "rcpt-two-replies": {"RCPT#3": [b"250 2.1.5 Ok\r\n" + EXTRA]},
    }[case]
    mta.arm(script)
    with SmtpClient(p.port) as c:
        c.ehlo()
        r = transaction(c)["END"]
        if case == "mail-250-then-421":
            check_reply(r, 250, what="MAIL again over a new connection")
            assert [cid for cid, _ in mta.accepted] == [2]
            return
        if case == "rcpt-two-replies":
            check_reply(r, 451, "4.3.0")
            assert_protocol_error(p, "rcpt")
        else:
            check_reply(r, 421)
            assert c.wait_closed()
    assert mta.accepted == []


# --------------------------------------------------------------------------
# AUTH relayed to the MTA (listener auth = "passthrough")

@pytest.mark.parametrize("case", ["421", "two-replies"])
def test_auth_reply_421_or_one_too_many(postern, mta_factory, mta_cert, tmp_path, case):
    mta = mta_factory(auth=True)
    cfg = write_config(tmp_path / "auth.toml", [{"tls": "starttls", "auth": "passthrough"}], upstream=mta.address,
                       tls={"cert_file": mta_cert[0], "key_file": mta_cert[1]})
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    p.wait_for_log("upstream-capabilities")  # the start-up probe, before the count starts
    mta.arm({"AUTH": {"421": [b"421 4.3.2 bye\r\n", CLOSE],
                      "two-replies": [b"235 2.7.0 ok\r\n" + EXTRA]}[case]})
    with SmtpClient(port) as c:
        c.ehlo()
        c.starttls()
        c.ehlo()
        r = c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
        if case == "421":
            check_reply(r, 421, "4.3.2", "AUTH answered 421 by the MTA")
            assert c.wait_closed()
        else:
            check_reply(r, 451, "4.4.0", "AUTH answered twice by the MTA")
            p.wait_for_log("upstream-protocol-error", reason="unexplained_bytes", op="auth")
            check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250, what="MAIL over a new connection")
            assert mta.connections == 2
