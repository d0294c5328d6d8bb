"""Early DATA (issue 23, [upstream] early_data): to an MTA without CHUNKING
postern sends DATA before the client's content is in -- in the write of the
RCPT the client pipelined "DATA" behind (MAIL, RCPT and DATA in one write when
MAIL was held), else when it answers the client's DATA with 354 -- and reads
the MTA's 354 once the content is in and the filters have spoken. A message
that is then not relayed (a filter's verdict, postern's own refusal of the
content, a client that leaves) ends that MTA connection: nothing else ends
DATA without delivering. A DATA the MTA refused (no recipient left) is read
and the transaction goes on. The pool never gets a connection in DATA.

The MTAs are real servers on loopback: RawMta below (a scripted SMTP server
that records every segment it reads with its time, so the tests see what
postern wrote together and when), the aiosmtpd recording sink (lenient about
the end of data, as the smuggled-into MTAs of 2023 were), and Postfix's
smtp-sink. postern instances of one configuration are shared by the file's
tests; each test uses its own sender addresses and counts metric deltas.
"""

import pathlib
import shutil
import socket
import tempfile
import threading
import time

import pytest

from conftest import PosternFactory
from harness import (SCALE, PostfixSink, RecordingSink, ScriptedServer, SmtpClient, check_reply, data_payload,
                     free_port, make_message, normalize_line_endings, strip_received, wait_until)
from prometheus import scrape
from test_smuggling import NUL_VARIANTS, VARIANTS, assert_nothing_smuggled, attack_content

POLICY = pathlib.Path(__file__).parent / "rules" / "policy.lua"
# Verdicts policy.lua has not: at RCPT (a message the MTA never gets DATA for)
# and a disconnect at the end of data.
EXTRA_RULES = """
postern.rule{ name = "HOLD_AT_RCPT", stage = "rcpt", fn = function(ctx)
  local lp = ctx.envelope.rcpt.local_part
  if lp == "held" then return postern.quarantine("held at rcpt") end
  if lp == "dropped" then return postern.discard("dropped at rcpt") end
end }
postern.rule{ name = "EOM_DISCONNECT", stage = "eom", fn = function(ctx)
  if (ctx.headers:first("X-Test-Case") or "") == "disconnect" then return postern.disconnect("go away") end
end }
"""
QUICK = 3 * SCALE          # a wait for something postern does at once
MTA_PATIENCE = 0.5 * SCALE  # a scripted MTA's time-out in DATA (data_timeout)


# --------------------------------------------------------------------------
# a scripted MTA that records the wire


class RawMessage:
    def __init__(self, conn, mail_from, rcpts, content, verb):
        self.conn = conn
        self.mail_from = mail_from
        self.rcpts = list(rcpts)
        self.content = content
        self.verb = verb              # "DATA" or "BDAT"

    def __repr__(self):
        return f"RawMessage(conn={self.conn} from={self.mail_from} to={self.rcpts} via={self.verb})"


def _unstuff(raw):
    return (b"\r\n" + raw).replace(b"\r\n.", b"\r\n")[2:]


class RawMta(ScriptedServer):
    """An SMTP server written for these tests: PIPELINING, no CHUNKING unless
    asked, no XCLIENT. Each recv() is recorded as (connection, time, bytes),
    each command line with its time. What it answers is scripted per sender
    (script(sender, ...)): a reply to a recipient, to DATA, to the end of
    data, bytes sent right behind the 354 and then a close, or no answer to
    DATA at all."""

    def __init__(self, chunking=False, pipelining=True):
        self.chunking = chunking
        self.pipelining = pipelining
        self.lock = threading.Lock()
        self.segments = []      # (conn, monotonic time, bytes)
        self.commands = []      # (conn, monotonic time, line)
        self.messages = []      # RawMessage: content taken with a 2xx
        self.ended = {}         # conn -> "quit", "eof", "eof in data", "closed after 354", "timeout in data"
        self.scripts = {}
        self.count = 0
        super().__init__()

    def script(self, sender, **what):
        """rcpt={address: reply}, mail=reply, data=reply (instead of 354),
        data_anyway=True (354 to DATA without a recipient, or a transaction),
        after_354=bytes (sent behind the 354, then the connection closes),
        stall_data=True (DATA never answered), data_timeout=seconds (no content
        within them after the 354: 421 and close, as an MTA's time-out), end=reply,
        then={...} (the script of this sender's next transaction)."""
        self.scripts[sender] = what

    # -- what was seen -----------------------------------------------------

    def conn_of(self, sender):
        with self.lock:
            for conn, _, line in self.commands:
                if line.upper().startswith(f"MAIL FROM:<{sender.upper()}>"):
                    return conn
        raise AssertionError(f"no MAIL FROM:<{sender}> reached the MTA")

    def lines(self, conn):
        with self.lock:
            return [line for c, _, line in self.commands if c == conn]

    def verbs(self, conn):
        return [line.split(" ", 1)[0].split(":", 1)[0].upper() for line in self.lines(conn)]

    def segs(self, conn):
        with self.lock:
            return [s for c, _, s in self.segments if c == conn]

    def when(self, conn, prefix, nth=0):
        """Time the nth command line starting with prefix arrived on conn."""
        with self.lock:
            times = [t for c, t, line in self.commands if c == conn and line.upper().startswith(prefix.upper())]
        return times[nth] if len(times) > nth else None

    def delivered(self, sender):
        with self.lock:
            return [m for m in self.messages if m.mail_from == sender]

    def wait_ended(self, conn, timeout=QUICK):
        return wait_until(lambda: self.ended.get(conn), timeout, message=f"the end of MTA connection {conn}")

    # -- the server --------------------------------------------------------

    def session(self, conn):
        with self.lock:
            self.count += 1
            cid = self.count
        conn.settimeout(60)
        st = {"mail": None, "rcpts": [], "script": {}}
        buf = b""
        mode = "cmd"
        data = bytearray()
        bdat_left, bdat_last, chunks = 0, False, []
        how = "eof"
        try:
            conn.sendall(b"220 raw.test ESMTP\r\n")
            while how == "eof":
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    # an MTA's time-out in DATA (Postfix smtpd_timeout): 421 and close
                    conn.sendall(b"421 4.4.2 raw.test Error: timeout exceeded\r\n")
                    how = "timeout in data"
                    break
                conn.settimeout(60)
                if not chunk:
                    if mode != "cmd":
                        how = "eof in data"
                    break
                now = time.monotonic()
                with self.lock:
                    self.segments.append((cid, now, chunk))
                buf += chunk
                out = b""
                while buf and how == "eof":
                    if mode == "stalled":
                        buf = b""
                        break
                    if mode == "data":
                        data += buf
                        buf = b""
                        end = data.find(b"\r\n.\r\n")
                        if end < 0:
                            break
                        raw, buf = bytes(data[2:end + 2]), bytes(data[end + 5:])
                        mode = "cmd"
                        out += self._deliver(cid, st, _unstuff(raw), "DATA")
                        continue
                    if mode == "bdat":
                        take, buf = buf[:bdat_left], buf[bdat_left:]
                        chunks.append(take)
                        bdat_left -= len(take)
                        if bdat_left:
                            break
                        mode = "cmd"
                        if bdat_last:
                            out += self._deliver(cid, st, b"".join(chunks), "BDAT")
                            chunks = []
                        else:
                            out += b"250 2.0.0 Ok: chunk\r\n"
                        continue
                    eol = buf.find(b"\r\n")
                    if eol < 0:
                        break
                    line, buf = buf[:eol].decode("latin-1"), buf[eol + 2:]
                    with self.lock:
                        self.commands.append((cid, now, line))
                    verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
                    sc = st["script"]
                    if verb in ("EHLO", "HELO"):
                        out += (b"250-raw.test\r\n" + (b"250-PIPELINING\r\n" if self.pipelining else b"")
                                + (b"250-CHUNKING\r\n" if self.chunking else b"") + b"250-8BITMIME\r\n"
                                + b"250 ENHANCEDSTATUSCODES\r\n")
                    elif verb == "MAIL":
                        sender = line[line.find("<") + 1:line.find(">")]
                        sc = self.scripts.get(sender, {})
                        if st["mail"] is not None:
                            out += b"503 5.5.1 Error: nested MAIL command\r\n"
                        elif sc.get("mail"):
                            st["script"] = dict(sc, sender=sender)    # refused: no transaction
                            out += sc["mail"].encode() + b"\r\n"
                        else:
                            st.update(mail=sender, rcpts=[], script=sc)
                            if "then" in sc:        # the next transaction of this sender
                                self.scripts[sender] = sc["then"]
                            out += b"250 2.1.0 Ok\r\n"
                    elif verb == "RCPT":
                        rcpt = line[line.find("<") + 1:line.find(">")]
                        reply = sc.get("rcpt", {}).get(rcpt, "250 2.1.5 Ok")
                        if st["mail"] is None:
                            reply = "503 5.5.1 Error: need MAIL command"
                        elif reply.startswith("2"):
                            st["rcpts"].append(rcpt)
                        out += reply.encode() + b"\r\n"
                    elif verb == "DATA":
                        if not st["rcpts"] and not self.scripts.get(st["mail"] or sc.get("sender"), {}).get(
                                "data_anyway"):
                            out += (b"554 5.5.1 Error: no valid recipients\r\n" if st["mail"]
                                    else b"503 5.5.1 Error: need RCPT command\r\n")
                        elif sc.get("stall_data"):
                            mode = "stalled"
                        elif sc.get("data"):
                            out += sc["data"].encode() + b"\r\n"
                        else:
                            out += b"354 End data with <CR><LF>.<CR><LF>\r\n"
                            mode, data = "data", bytearray(b"\r\n")
                            if sc.get("data_timeout") and not buf:
                                conn.settimeout(sc["data_timeout"])
                            if "after_354" in sc:
                                out += sc["after_354"]
                                how = "closed after 354"
                    elif verb == "BDAT" and self.chunking:
                        words = line.split()
                        bdat_left, bdat_last = int(words[1]), len(words) > 2
                        mode = "bdat"
                    elif verb == "RSET":
                        st.update(mail=None, rcpts=[], script={})
                        out += b"250 2.0.0 Ok\r\n"
                    elif verb == "NOOP":
                        out += b"250 2.0.0 Ok\r\n"
                    elif verb == "QUIT":
                        out += b"221 2.0.0 Bye\r\n"
                        how = "quit"
                    else:
                        out += b"502 5.5.2 Error: command not recognized\r\n"
                if out:
                    conn.sendall(out)
        except OSError:
            pass
        finally:
            with self.lock:
                self.ended[cid] = how
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _deliver(self, cid, st, content, verb):
        sc = st["script"]
        reply = sc.get("end", "250 2.0.0 Ok: queued as RAW")
        if reply.startswith("2"):
            with self.lock:
                self.messages.append(RawMessage(cid, st["mail"], st["rcpts"], content, verb))
        st.update(mail=None, rcpts=[], script={})
        return reply.encode() + b"\r\n"


# --------------------------------------------------------------------------
# postern instances, one per configuration, shared by the file


def start_postern(factory, upstream, lua=False, **sets):
    metrics_port = free_port()
    all_sets = {"server.threads": 1, "metrics.address": f'"127.0.0.1:{metrics_port}"',
                "timeouts.upstream_data_init": 2}
    if lua:
        extra = factory.tmp_path / "extra.lua"
        extra.write_text(EXTRA_RULES)
        qdir = factory.tmp_path / "quarantine"
        all_sets.update({"lua.scripts": f'["{POLICY}", "{extra}"]', "quarantine.dir": f'"{qdir}"',
                         "limits.message_size": 20000, "limits.header_fields": 1000})
    all_sets.update(sets)
    p = factory.start(upstream=upstream, sets=all_sets)
    p.metrics_port = metrics_port
    p.qdir = factory.tmp_path / "quarantine"
    return p


def serving(thing, stop):
    """A module fixture's body: `thing` for the module, then `stop`."""
    try:
        yield thing
    finally:
        stop()


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    f = PosternFactory(tmp_path_factory.mktemp("early-data"))
    yield from serving(f, f.cleanup)


@pytest.fixture(scope="module")
def mta():
    m = RawMta()
    yield from serving(m, m.close)


@pytest.fixture(scope="module")
def px(factory, mta):
    """postern (early_data by default, Lua rules, small limits) -> RawMta."""
    return start_postern(factory, mta.address, lua=True)


@pytest.fixture(scope="module")
def asink():
    s = RecordingSink(lenient=True).start()
    yield from serving(s, s.stop)


@pytest.fixture(scope="module")
def ps(factory, asink):
    """postern (early_data by default, Lua rules, small limits) -> aiosmtpd."""
    return start_postern(factory, asink.address, lua=True)


def metric(p, name):
    return scrape(p.metrics_port).value(name)


class Counts:
    """Metric deltas over a block."""

    NAMES = {"aborts": "postern_upstream_data_aborts_total",
             "new": "postern_upstream_connections_total",
             "reused": "postern_upstream_connections_reused_total"}

    def __init__(self, p):
        self.p = p
        self.before = {k: metric(p, v) for k, v in self.NAMES.items()}

    def delta(self, key):
        return metric(self.p, self.NAMES[key]) - self.before[key]


def replies(c, n):
    return [c.read_reply() for _ in range(n)]


def group(sender, rcpts):
    return (f"MAIL FROM:<{sender}>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts) + "DATA\r\n").encode()


def body_of(content):
    """The content as the client sent it, below postern's Received field."""
    received, rest = strip_received(content)
    assert received.startswith(b"Received: from client.example (") and \
        b"by mx.postern.test (postern) with ESMTP id " in received, received
    return rest


def sink_conn(sink, sender):
    """The aiosmtpd sink's connection that took MAIL FROM:<sender>."""
    for e in sink.commands("MAIL"):
        if e[2] == sender:
            return e[0]
    raise AssertionError(f"no MAIL FROM:<{sender}> at the sink")


def sink_delivered(sink, sender):
    with sink._lock:
        return [m for m in sink.messages + sink.refused_messages if m.mail_from == sender]


def assert_sink_aborted(sink, conn):
    """That sink connection got DATA and then lost the connection inside it."""
    wait_until(lambda: ("LOST",) in sink.connection_events(conn), QUICK, message="the MTA connection closed")
    verbs = [e[0] for e in sink.connection_events(conn)]
    # DATA was the last command; only the end of the connection followed
    # (aiosmtpd records EOF_IN_DATA when its read saw the end, else just LOST)
    assert "DATA" in verbs, verbs
    tail = verbs[len(verbs) - verbs[::-1].index("DATA"):]
    assert tail in (["LOST"], ["EOF_IN_DATA", "LOST"]), verbs


def one_good_message(p, sink, sender):
    """A new session whose message reaches the aiosmtpd sink; returns it."""
    msg = make_message(f"good after {sender}")
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(c.send_message(sender, ["ok@example.com"], msg), 250)
        c.expect("QUIT", 221)
    wait_until(lambda: sink_delivered(sink, sender), QUICK, message="the next message at the MTA")
    [got] = sink_delivered(sink, sender)
    assert got.body == msg
    return got


# --------------------------------------------------------------------------
# 1, 2: DATA reaches the MTA before the content


def test_pipelined_data_rides_with_mail_and_rcpt_and_precedes_the_content(px, mta):
    counts = Counts(px)
    first = make_message("early one", b"first body\r\n.leading dot\r\n")
    second = make_message("early two", b"second body\r\n")
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(group("p1@example.org", ["r1@example.com"]))
        assert [r.code for r in replies(c, 3)] == [250, 250, 354]
        conn = mta.conn_of("p1@example.org")
        # MAIL was held for the RCPT behind it, and DATA went with both:
        # already at the MTA before the client sent one octet of content.
        assert b"MAIL FROM:<p1@example.org>\r\nRCPT TO:<r1@example.com>\r\nDATA\r\n" in mta.segs(conn), mta.segs(conn)
        sent = time.monotonic()
        c.send(data_payload(first))
        assert str(c.read_reply()) == "250 2.0.0 Ok: queued as RAW"
        assert mta.when(conn, "DATA") < sent
        # the second message of the session, two recipients: DATA rides with the last RCPT
        c.send(group("p2@example.org", ["r2@example.com", "r3@example.com"]))
        assert [r.code for r in replies(c, 4)] == [250, 250, 250, 354]
        assert mta.verbs(conn)[-1] == "DATA"
        assert any(s.endswith(b"RCPT TO:<r3@example.com>\r\nDATA\r\n") for s in mta.segs(conn)), mta.segs(conn)
        sent = time.monotonic()
        c.send(data_payload(second))
        check_reply(c.read_reply(), 250)
        assert mta.when(conn, "DATA", 1) < sent
        c.expect("QUIT", 221)
    [m1], [m2] = mta.delivered("p1@example.org"), mta.delivered("p2@example.org")
    assert (m1.conn, m2.conn) == (conn, conn)
    assert body_of(m1.content) == first and body_of(m2.content) == second
    assert m2.rcpts == ["r2@example.com", "r3@example.com"] and m1.verb == "DATA"
    assert counts.delta("aborts") == 0


def test_unpipelined_client_data_reaches_the_mta_before_its_content(px, mta):
    msg = make_message("stepwise", b"line one\r\nline two\r\n")
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<s1@example.org>", 250)
        c.expect("RCPT TO:<r1@example.com>", 250)
        conn = mta.conn_of("s1@example.org")
        assert mta.verbs(conn)[-2:] == ["MAIL", "RCPT"], mta.verbs(conn)
        c.expect("DATA", 354)
        # postern's 354 sent DATA on its way: the MTA has it while the client has sent nothing
        wait_until(lambda: mta.when(conn, "DATA") is not None, QUICK, message="DATA at the MTA before the content")
        payload = data_payload(msg)
        c.send(payload[:20])
        time.sleep(0.05)
        c.send(payload[20:])
        assert str(c.read_reply()) == "250 2.0.0 Ok: queued as RAW"
        c.expect("QUIT", 221)
    [m] = mta.delivered("s1@example.org")
    assert body_of(m.content) == msg and m.rcpts == ["r1@example.com"]


def test_without_upstream_pipelining_data_goes_with_the_354_not_with_rcpt(factory):
    mta = RawMta(pipelining=False)
    try:
        p = start_postern(factory, mta.address)
        msg = make_message("no pipelining upstream")
        with SmtpClient(p.port) as c:
            c.ehlo()
            c.send(group("np@example.org", ["r@example.com"]))
            assert [r.code for r in replies(c, 3)] == [250, 250, 354]
            conn = mta.conn_of("np@example.org")
            wait_until(lambda: mta.when(conn, "DATA") is not None, QUICK, message="DATA before the content")
            # one command per write: never DATA behind RCPT
            assert not [s for s in mta.segs(conn) if b"RCPT" in s and b"DATA" in s]
            c.send(data_payload(msg))
            check_reply(c.read_reply(), 250)
        [m] = mta.delivered("np@example.org")
        assert body_of(m.content) == msg
    finally:
        mta.close()


# --------------------------------------------------------------------------
# 3: a filter's verdict after DATA went ahead: the MTA connection ends


EOM_CASES = {
    # case: the reply the client hears (code, enhanced status)
    "reject": (554, "5.7.1"),
    "tempfail": (451, "4.7.1"),
    "discard": (250, None),
    "quarantine": (250, None),
}


def send_case(p, sender, case, rcpts=("b@example.com",), pipelined=False):
    msg = make_message(f"case {case} {sender}", extra_headers=f"X-Test-Case: {case}\r\n".encode())
    c = SmtpClient(p.port)
    c.ehlo()
    if pipelined:
        c.send(group(sender, rcpts))
        assert [r.code for r in replies(c, len(rcpts) + 2)] == [250] * (len(rcpts) + 1) + [354]
        c.send(data_payload(msg))
        return c, c.read_reply(), msg
    return c, c.send_message(sender, list(rcpts), msg), msg


@pytest.mark.parametrize("pipelined", [False, True], ids=["stepwise", "pipelined"])
@pytest.mark.parametrize("case", list(EOM_CASES))
def test_verdict_after_early_data_closes_the_mta_connection(ps, asink, case, pipelined):
    sender = f"{case}-{int(pipelined)}@example.org"
    counts = Counts(ps)
    qfiles = set((ps.qdir / "new").iterdir()) if (ps.qdir / "new").exists() else set()
    c, r, msg = send_case(ps, sender, case, pipelined=pipelined)
    code, enhanced = EOM_CASES[case]
    check_reply(r, code, enhanced, case)
    if case == "quarantine":
        assert "quarantined" in str(r)
    conn = sink_conn(asink, sender)
    assert_sink_aborted(asink, conn)
    # the session goes on over a new connection
    check_reply(c.send_message(sender + ".next", ["ok@example.com"], make_message("same session")), 250)
    c.close()
    assert sink_delivered(asink, sender) == []
    [nxt] = sink_delivered(asink, sender + ".next")
    assert nxt.conn_id != conn
    assert counts.delta("aborts") == 1
    if case == "quarantine":
        new = set((ps.qdir / "new").iterdir()) - qfiles
        assert len(new) == 1 and f"case quarantine {sender}".encode() in next(iter(new)).read_bytes()
    one_good_message(ps, asink, sender + ".after")


def test_disconnect_verdict_closes_both_sides(ps, asink):
    counts = Counts(ps)
    c, r, _ = send_case(ps, "bye@example.org", "disconnect", pipelined=True)
    check_reply(r, 421)
    assert c.wait_closed(QUICK)
    assert_sink_aborted(asink, sink_conn(asink, "bye@example.org"))
    assert sink_delivered(asink, "bye@example.org") == []
    assert counts.delta("aborts") == 1
    one_good_message(ps, asink, "bye.after@example.org")


@pytest.mark.parametrize("case,expect_rcpts,expect_from", [
    ("redirect", ["archive@example.net"], None),
    ("envelope", ["b@example.com", "copy@example.net"], "bounces@example.org"),
])
def test_changed_envelope_goes_on_a_new_transaction_never_to_the_old_one(ps, asink, case, expect_rcpts,
                                                                         expect_from):
    sender = f"{case}@example.org"
    counts = Counts(ps)
    c, r, msg = send_case(ps, sender, case, rcpts=("b@example.com", "c@example.com"), pipelined=True)
    check_reply(r, 250)
    c.close()
    old = sink_conn(asink, sender)
    assert_sink_aborted(asink, old)
    subject = f"case {case} {sender}".encode()
    got = [m for m in asink.messages + asink.refused_messages if subject in m.content]
    assert len(got) == 1, got
    assert sorted(got[0].rcpt_tos) == sorted(expect_rcpts)
    assert got[0].mail_from == (expect_from or sender)
    assert got[0].conn_id != old, "relayed into the transaction of the old envelope"
    # the old envelope's recipients heard of it only on the aborted connection
    for e in asink.commands("RCPT"):
        if e[2] in ("c@example.com",) or (case == "redirect" and e[2] == "b@example.com"):
            assert e[0] != got[0].conn_id, e
    assert counts.delta("aborts") == 1


def test_changed_headers_only_relay_over_the_early_data(ps, asink):
    counts = Counts(ps)
    c, r, _ = send_case(ps, "tag@example.org", "tag", pipelined=True)
    check_reply(r, 250)
    c.expect("QUIT", 221)
    c.close()
    [m] = sink_delivered(asink, "tag@example.org")
    assert b"Subject: [SPAM] case tag" in m.content
    verbs = [e[0] for e in asink.connection_events(m.conn_id)]
    assert "EOF_IN_DATA" not in verbs
    assert counts.delta("aborts") == 0


@pytest.mark.parametrize("rcpt", ["held", "dropped"])
def test_message_kept_from_the_mta_at_rcpt_never_gets_data(ps, asink, rcpt):
    """A RCPT-stage quarantine or discard: postern knows before DATA that
    nothing goes to the MTA, so no DATA is sent and nothing is aborted."""
    sender = f"{rcpt}@example.org"
    counts = Counts(ps)
    with SmtpClient(ps.port) as c:
        c.ehlo()
        c.send(group(sender, [f"{rcpt}@example.com"]))
        assert [r.code for r in replies(c, 3)] == [250, 250, 354]
        c.send(data_payload(make_message("kept")))
        check_reply(c.read_reply(), 250)
        c.expect("QUIT", 221)
    ps.wait_for_log("session-end", count=1)
    conn = sink_conn(asink, sender)
    verbs = [e[0] for e in asink.connection_events(conn)]
    mail_at = max(i for i, e in enumerate(asink.connection_events(conn)) if e[0] == "MAIL" and e[1] == sender)
    assert "DATA" not in verbs[mail_at:], verbs
    assert sink_delivered(asink, sender) == []
    assert counts.delta("aborts") == 0


def test_data_behind_a_filter_refused_rcpt_goes_with_the_354(ps, asink):
    """The RCPT the DATA was pipelined behind is refused by a rule (never sent
    to the MTA): DATA goes when postern answers the client's DATA."""
    with SmtpClient(ps.port) as c:
        c.ehlo()
        c.send(group("mixed@example.org", ["ok@example.com", "blocked@example.com"]))
        assert [r.code for r in replies(c, 4)] == [250, 250, 550, 354]
        msg = make_message("mixed")
        c.send(data_payload(msg))
        check_reply(c.read_reply(), 250)
    [m] = sink_delivered(asink, "mixed@example.org")
    assert m.rcpt_tos == ["ok@example.com"] and m.body == msg
    assert "blocked@example.com" not in [e[2] for e in asink.commands("RCPT")]


# --------------------------------------------------------------------------
# 4: postern refuses the content itself


BIG = 30000     # over the instances' limits.message_size = 20000
REFUSALS = {
    "over message_size": (make_message("big", (b"z" * 998 + b"\r\n") * (BIG // 1000)), 552, "5.3.4"),
    "bare LF": (make_message("bare lf", b"one\ntwo\r\n"), 554, "5.5.2"),
    "bare CR": (make_message("bare cr", b"one\rtwo\r\n"), 554, "5.5.2"),
    "NUL": (make_message("nul", b"one \x00 two\r\n"), 554, "5.6.0"),
    "line too long": (make_message("long", b"q" * 1200 + b"\r\n"), 554, "5.6.0"),
    "too many header fields": (make_message("fields", extra_headers=b"X-F: 1\r\n" * 1100), 552, "5.3.4"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_content_postern_refuses_is_never_delivered_and_the_session_goes_on(px, mta, case):
    content, code, enhanced = REFUSALS[case]
    sender = "refused-" + case.replace(" ", "-") + "@example.org"
    counts = Counts(px)
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(group(sender, ["r@example.com"]))
        assert [r.code for r in replies(c, 3)] == [250, 250, 354]
        c.send(data_payload(content))
        check_reply(c.read_reply(), code, enhanced, case)
        conn = mta.conn_of(sender)
        assert mta.wait_ended(conn) == "eof in data"
        assert counts.delta("aborts") == 1
        # the same client session: the next transaction over a new connection
        good = make_message("after " + case)
        check_reply(c.send_message(sender + ".next", ["r@example.com"], good), 250)
        c.expect("QUIT", 221)
    assert mta.delivered(sender) == []
    [m] = mta.delivered(sender + ".next")
    assert m.conn != conn and body_of(m.content) == good
    # the aborted connection carried no command after DATA: it was closed, not RSET
    lines = mta.lines(conn)
    assert lines[lines.index(f"MAIL FROM:<{sender}>"):] == [f"MAIL FROM:<{sender}>", "RCPT TO:<r@example.com>",
                                                            "DATA"], lines


def test_smtputf8_message_with_an_invalid_utf8_header(factory):
    """SMTPUTF8: MAIL goes alone, DATA rides with the pipelined RCPT; a header
    section that is not UTF-8 (RFC 6532) is refused after DATA went ahead:
    that connection closes inside DATA, the next message of the session is
    relayed, UTF-8 intact."""
    sink = RecordingSink(smtputf8=True).start()
    try:
        p = start_postern(factory, sink.address)
        counts = Counts(p)
        bad = make_message("bad utf8", extra_headers=b"X-Name: J\xc3\r\n")
        good = make_message("good utf8", extra_headers="X-Name: Jörg\r\n".encode())
        with SmtpClient(p.port) as c:
            c.ehlo()
            for sender, msg, code in (("u1@example.org", bad, 554), ("u2@example.org", good, 250)):
                c.send(f"MAIL FROM:<{sender}> SMTPUTF8\r\nRCPT TO:<r@example.com>\r\nDATA\r\n".encode())
                assert [x.code for x in replies(c, 3)] == [250, 250, 354]
                c.send(data_payload(msg))
                check_reply(c.read_reply(), code, "5.6.7" if code == 554 else None, sender)
        first = sink_conn(sink, "u1@example.org")
        assert_sink_aborted(sink, first)
        assert sink_delivered(sink, "u1@example.org") == []
        [m] = sink_delivered(sink, "u2@example.org")
        assert m.body == good and m.conn_id != first and "SMTPUTF8" in m.mail_options
        assert counts.delta("aborts") == 1
    finally:
        sink.stop()


# --------------------------------------------------------------------------
# 5: the client leaves


def test_client_leaving_mid_content_ends_the_mta_transaction(ps, asink):
    counts = Counts(ps)
    c = SmtpClient(ps.port)
    c.ehlo()
    c.send(group("leaver@example.org", ["r@example.com"]))
    assert [r.code for r in replies(c, 3)] == [250, 250, 354]
    c.send(make_message("half", b"the first half\r\n"))
    time.sleep(0.1)
    c.close()
    assert_sink_aborted(asink, sink_conn(asink, "leaver@example.org"))
    assert sink_delivered(asink, "leaver@example.org") == []
    wait_until(lambda: counts.delta("aborts") == 1, QUICK, message="the abort counted")
    one_good_message(ps, asink, "leaver.after@example.org")


def test_client_leaving_right_after_the_354(px, mta):
    counts = Counts(px)
    c = SmtpClient(px.port)
    c.ehlo()
    c.expect("MAIL FROM:<gone@example.org>", 250)
    c.expect("RCPT TO:<r@example.com>", 250)
    c.expect("DATA", 354)
    conn = mta.conn_of("gone@example.org")
    wait_until(lambda: mta.when(conn, "DATA") is not None, QUICK, message="DATA at the MTA")
    c.close()
    assert mta.wait_ended(conn) == "eof in data"
    wait_until(lambda: counts.delta("aborts") == 1, QUICK, message="the abort counted")
    assert mta.delivered("gone@example.org") == []


def test_client_timing_out_mid_content_ends_the_mta_transaction(factory, mta):
    """[timeouts] data runs out while DATA is open at the MTA: the client
    gets 421, the MTA connection is closed inside DATA, nothing delivered."""
    p = start_postern(factory, mta.address, **{"timeouts.data": 0.5})
    counts = Counts(p)
    with SmtpClient(p.port) as c:
        c.ehlo()
        c.send(group("idle@example.org", ["r@example.com"]))
        assert [x.code for x in replies(c, 3)] == [250, 250, 354]
        c.send(make_message("idle", b"and then nothing\r\n"))
        check_reply(c.read_reply(timeout=5 * SCALE), 421)
        assert c.wait_closed(QUICK)
    conn = mta.conn_of("idle@example.org")
    assert mta.wait_ended(conn) == "eof in data"
    assert mta.lines(conn)[-1] == "DATA"
    assert mta.delivered("idle@example.org") == []
    wait_until(lambda: counts.delta("aborts") == 1, QUICK, message="the abort counted")


def test_shutdown_with_a_client_mid_content(factory, mta):
    """SIGTERM while DATA is open at the MTA and the client has not finished:
    after shutdown_timeout the session is cut; the MTA gets nothing more
    inside its DATA (no QUIT read as content) and delivers nothing."""
    p = start_postern(factory, mta.address, **{"server.shutdown_timeout": 0.5})
    c = SmtpClient(p.port)
    c.ehlo()
    c.send(group("shut@example.org", ["r@example.com"]))
    assert [x.code for x in replies(c, 3)] == [250, 250, 354]
    c.send(make_message("cut short", b"half\r\n"))
    conn = mta.conn_of("shut@example.org")
    p.stop(timeout=5 * SCALE)
    assert mta.wait_ended(conn) == "eof in data"
    assert mta.lines(conn)[-1] == "DATA"
    assert mta.delivered("shut@example.org") == []
    c.close()


# --------------------------------------------------------------------------
# 6, 7: the MTA refuses recipients of a transaction DATA was pipelined in


@pytest.mark.parametrize("held", [True, False], ids=["mail-held", "mail-alone"])
@pytest.mark.parametrize("then", ["RSET", "RCPT", "QUIT"])
def test_mta_refusing_the_only_rcpt_refuses_the_pipelined_data_and_the_session_goes_on(px, mta, held, then):
    sender = f"only-{then.lower()}-{int(held)}@example.org"
    mta.script(sender, rcpt={"nobody@example.com": "550 5.1.1 <nobody@example.com>: Recipient address rejected"})
    counts = Counts(px)
    msg = make_message("after refusal " + sender)
    with SmtpClient(px.port) as c:
        c.ehlo()
        if held:
            c.send(group(sender, ["nobody@example.com"]))
            r = replies(c, 3)
        else:
            c.expect(f"MAIL FROM:<{sender}>", 250)
            c.send(b"RCPT TO:<nobody@example.com>\r\nDATA\r\n")
            r = [None] + replies(c, 2)
        assert str(r[1]) == "550 5.1.1 <nobody@example.com>: Recipient address rejected"
        check_reply(r[2], 554, "5.5.1")
        conn = mta.conn_of(sender)
        assert any(s.endswith(b"RCPT TO:<nobody@example.com>\r\nDATA\r\n") for s in mta.segs(conn)), mta.segs(conn)
        if then == "RSET":
            check_reply(c.cmd("RSET"), 250, "2.0.0")
            c.send(group(sender, ["ok@example.com"]))
            assert [x.code for x in replies(c, 3)] == [250, 250, 354]
        elif then == "RCPT":    # the same transaction, a recipient the MTA takes
            c.send(b"RCPT TO:<ok@example.com>\r\nDATA\r\n")
            assert [x.code for x in replies(c, 2)] == [250, 354]
        if then != "QUIT":
            c.send(data_payload(msg))
            assert str(c.read_reply()) == "250 2.0.0 Ok: queued as RAW"
            # nothing stale behind: the next reply is NOOP's
            assert str(c.cmd("NOOP")).startswith("250 2.0.0")
            assert not c.buf
        c.expect("QUIT", 221)
    px.wait_for_log("session-end", count=1)
    time.sleep(0.1 * SCALE)
    lines = mta.lines(conn)
    first = max(i for i, line in enumerate(lines) if line == f"MAIL FROM:<{sender}>" and
                lines[i + 1:i + 2] == ["RCPT TO:<nobody@example.com>"])
    after = [line.split(":")[0].split(" ")[0] for line in lines[first:]]
    # the MTA's reply to the first DATA was read before anything else went:
    # no content, no command taken as content
    assert after[:4] == ["MAIL", "RCPT", "DATA", "RCPT" if then == "RCPT" else "RSET"], after
    if then == "QUIT":      # RSET, then QUIT (a connection with a refusal is not pooled)
        assert after == ["MAIL", "RCPT", "DATA", "RSET", "QUIT"], after
        assert mta.wait_ended(conn) == "quit"
        assert mta.delivered(sender) == []
    else:
        [m] = mta.delivered(sender)
        assert m.rcpts == ["ok@example.com"] and body_of(m.content) == msg
        assert m.conn == conn, "the refused DATA cost the connection"
    assert counts.delta("aborts") == 0


def test_mta_refusing_the_mail_that_carried_rcpt_and_data(px, mta):
    mta.script("badfrom@example.org", mail="550 5.7.1 <badfrom@example.org>: Sender address rejected")
    counts = Counts(px)
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(group("badfrom@example.org", ["r@example.com"]))
        r = replies(c, 3)
        assert str(r[0]) == "550 5.7.1 <badfrom@example.org>: Sender address rejected"
        assert str(r[1]) == "503 5.5.1 Error: need MAIL command"     # the MTA's, verbatim
        assert r[2].code == 503                                      # postern's: no MAIL
        conn = mta.conn_of("badfrom@example.org")
        good = make_message("after a refused MAIL")
        c.send(group("goodfrom@example.org", ["r@example.com"]))
        assert [x.code for x in replies(c, 3)] == [250, 250, 354]
        c.send(data_payload(good))
        check_reply(c.read_reply(), 250)
        c.expect("QUIT", 221)
    [m] = mta.delivered("goodfrom@example.org")
    assert m.conn == conn and body_of(m.content) == good
    assert counts.delta("aborts") == 0


@pytest.mark.parametrize("refused", ["RCPT", "MAIL"])
def test_mta_saying_354_to_a_data_it_should_refuse_gets_no_content(px, mta, refused):
    """A lax MTA answers 354 to the pipelined DATA though it refused the only
    RCPT (or the MAIL): postern refused the client's DATA, so that open DATA
    can only be closed; the session goes on over a new connection."""
    sender = f"lax-{refused.lower()}@example.org"
    if refused == "RCPT":
        mta.script(sender, rcpt={"nobody@example.com": "550 5.1.1 no such user"}, data_anyway=True)
    else:
        mta.script(sender, mail="550 5.7.1 sender refused", data_anyway=True)
    counts = Counts(px)
    good = make_message("after the lax MTA")
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(group(sender, ["nobody@example.com"]))
        r = replies(c, 3)
        if refused == "RCPT":
            assert [str(r[1]), r[2].code] == ["550 5.1.1 no such user", 554], r
        else:
            assert [str(r[0]), r[1].code, r[2].code] == ["550 5.7.1 sender refused", 503, 503], r
        conn = mta.conn_of(sender)
        if refused == "RCPT":
            check_reply(c.cmd("RSET"), 250, "2.0.0")
        c.send(group(sender + ".next", ["ok@example.com"]))
        assert [x.code for x in replies(c, 3)] == [250, 250, 354]
        c.send(data_payload(good))
        check_reply(c.read_reply(), 250)
        assert str(c.cmd("NOOP")).startswith("250 2.0.0") and not c.buf
        c.expect("QUIT", 221)
    ended = mta.wait_ended(conn)
    lines = mta.lines(conn)
    assert ended == "eof in data", (ended, lines)
    assert lines[-1] == "DATA", lines          # nothing written into the open DATA
    assert mta.delivered(sender) == []
    [m] = mta.delivered(sender + ".next")
    assert m.conn != conn and body_of(m.content) == good
    # a DATA accepted after a refused RCPT is ended like any aborted one; after
    # a refused MAIL it is the MTA's protocol error
    assert counts.delta("aborts") == (1 if refused == "RCPT" else 0)


def test_lax_354_then_another_rcpt_in_the_same_transaction(px, mta):
    """After a lax 354 to the pipelined DATA the client tries another RCPT:
    the open DATA is read before the RCPT could be written into it, and
    closed; the client hears 4xx for that transaction, and RSET and a new
    one go over a new connection."""
    mta.script("lax-again@example.org", rcpt={"nobody@example.com": "550 5.1.1 no"}, data_anyway=True)
    counts = Counts(px)
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(group("lax-again@example.org", ["nobody@example.com"]))
        assert [x.code for x in replies(c, 3)] == [250, 550, 554]
        c.send(b"RCPT TO:<ok@example.com>\r\nDATA\r\n")
        assert [x.code // 100 for x in replies(c, 2)] == [4, 4]
        check_reply(c.cmd("RSET"), 250)
        check_reply(c.send_message("lax-again.next@example.org", ["ok@example.com"], make_message("again")), 250)
    conn = mta.conn_of("lax-again@example.org")
    assert mta.wait_ended(conn) == "eof in data"
    assert mta.lines(conn)[-1] == "DATA", mta.lines(conn)     # the RCPT never went into it
    assert mta.delivered("lax-again@example.org") == []
    assert mta.delivered("lax-again.next@example.org")[0].conn != conn
    assert counts.delta("aborts") == 1


@pytest.mark.parametrize("order", ["refused-last", "refused-first"])
def test_one_of_two_rcpts_refused_by_the_mta(px, mta, order):
    sender = f"two-{order}@example.org"
    mta.script(sender, rcpt={"nobody@example.com": "550 5.1.1 no such user"})
    rcpts = ["ok@example.com", "nobody@example.com"]
    if order == "refused-first":
        rcpts.reverse()
    msg = make_message("two rcpts " + order)
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(group(sender, rcpts))
        r = replies(c, 4)
        assert [x.code for x in r] == ([250, 250, 550, 354] if order == "refused-last" else [250, 550, 250, 354]), r
        c.send(data_payload(msg))
        check_reply(c.read_reply(), 250)
    [m] = mta.delivered(sender)
    assert m.rcpts == ["ok@example.com"] and body_of(m.content) == msg
    assert any(s.endswith(f"RCPT TO:<{rcpts[1]}>\r\nDATA\r\n".encode()) for s in mta.segs(m.conn))


# --------------------------------------------------------------------------
# 8, 9: the MTA refuses DATA, or goes away after its 354


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "stepwise"])
@pytest.mark.parametrize("reply", ["451 4.3.0 Error: queue file write error", "554 5.7.1 Error: no DATA today"])
def test_mta_refusing_data_is_heard_after_the_content(px, mta, reply, pipelined):
    sender = f"nodata-{reply[:3]}-{int(pipelined)}@example.org"
    mta.script(sender, data=reply)
    counts = Counts(px)
    with SmtpClient(px.port) as c:
        c.ehlo()
        if pipelined:
            c.send(group(sender, ["r@example.com"]))
            assert [x.code for x in replies(c, 3)] == [250, 250, 354]     # postern's 354
        else:
            c.expect(f"MAIL FROM:<{sender}>", 250)
            c.expect("RCPT TO:<r@example.com>", 250)
            c.expect("DATA", 354)
        conn = mta.conn_of(sender)
        wait_until(lambda: mta.when(conn, "DATA") is not None, QUICK, message="DATA before the content")
        if pipelined:
            assert any(s.endswith(b"RCPT TO:<r@example.com>\r\nDATA\r\n") for s in mta.segs(conn))
        c.send(data_payload(make_message("refused by the MTA")))
        assert str(c.read_reply()) == reply
        good = make_message("after the MTA refused DATA")
        check_reply(c.send_message(sender + ".next", ["r@example.com"], good), 250)
        c.expect("QUIT", 221)
    assert mta.delivered(sender) == []
    [m] = mta.delivered(sender + ".next")
    assert m.conn == conn and body_of(m.content) == good
    lines = mta.lines(conn)
    i = lines.index(f"MAIL FROM:<{sender}>")
    assert [line.split(":")[0].split(" ")[0] for line in lines[i:i + 5]] == ["MAIL", "RCPT", "DATA", "RSET", "MAIL"]
    assert counts.delta("aborts") == 0


@pytest.mark.parametrize("after", [b"421 4.3.2 Service shutting down\r\n", b""], ids=["421", "close"])
@pytest.mark.parametrize("fresh", ["fresh-ok", "fresh-421"])
def test_mta_leaving_after_its_354_while_the_client_sends(px, mta, after, fresh):
    """The MTA says 421 behind its 354, or just closes, while the client is
    still sending: none of the content went, so postern sends the message
    once more over a new connection; delivered once (250), or, when that
    connection is refused too, the client hears 4xx and nothing is delivered.
    Never a 250 for a message the MTA did not take."""
    sender = f"leaves-{len(after)}-{fresh}@example.org"
    again = {} if fresh == "fresh-ok" else {"mail": "421 4.3.2 Still shutting down"}
    mta.script(sender, after_354=after, then=again)
    msg = make_message("too late", b"body\r\n" * 50)
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(group(sender, ["r@example.com"]))
        assert [x.code for x in replies(c, 3)] == [250, 250, 354]
        conn = mta.conn_of(sender)
        mta.wait_ended(conn)
        payload = data_payload(msg)
        c.send(payload[:100])
        time.sleep(0.1)
        c.send(payload[100:])
        r = c.read_reply()
        if fresh == "fresh-ok":
            assert str(r) == "250 2.0.0 Ok: queued as RAW"
        else:
            assert r.code // 100 == 4, r
    got = mta.delivered(sender)
    if fresh == "fresh-ok":
        assert len(got) == 1 and got[0].conn != conn and body_of(got[0].content) == msg
        assert px.events("upstream-data-retry")
    else:
        assert got == []
    # postern still serves
    with SmtpClient(px.port) as c:
        c.ehlo()
        check_reply(c.send_message(sender + ".next", ["r@example.com"], make_message("next")), 250)
    assert len(mta.delivered(sender + ".next")) == 1


@pytest.mark.parametrize("early", [True, False], ids=["early-data", "early-data-off"])
def test_client_slower_than_the_mtas_data_timeout(factory, mta, early):
    """The MTA times out in DATA (421, close: Postfix's smtpd_timeout, 10 s
    under stress) while a slow client is still sending. Without early DATA
    the MTA never waits on the client and the message is relayed. With it the
    content is all spooled when postern finds the connection gone, and
    nothing reached the MTA: as for a kept connection the MTA closed
    meanwhile (send_mail()), one fresh connection must be tried before the
    client hears 4xx; a message postern could relay must not be tempfailed
    because DATA went ahead."""
    p = start_postern(factory, mta.address, **{"upstream.early_data": str(early).lower()})
    sender = f"slow-{int(early)}@example.org"
    mta.script(sender, data_timeout=MTA_PATIENCE)
    msg = make_message("slow client", b"body\r\n" * 20)
    with SmtpClient(p.port) as c:
        c.ehlo()
        c.send(group(sender, ["r@example.com"]))
        assert [x.code for x in replies(c, 3)] == [250, 250, 354]
        payload = data_payload(msg)
        c.send(payload[:50])
        time.sleep(MTA_PATIENCE + 0.5)
        c.send(payload[50:])
        r = c.read_reply()
        assert r.code == 250, f"early_data={early}: a slow client's message was refused: {r}"
    got = mta.delivered(sender)
    assert len(got) == 1 and body_of(got[0].content) == msg
    if early:   # over a new connection: the first one timed out inside DATA
        first = mta.conn_of(sender)
        assert mta.ended[first] == "timeout in data" and got[0].conn != first


def test_large_message_spooled_to_a_file_with_early_data(factory, mta):
    """2 MB over a 64 KiB spool_memory: the content goes from the spool file
    in blocks behind the early DATA, byte-exact; and once more from the
    start of the file when the MTA timed out in DATA on a slow client."""
    p = start_postern(factory, mta.address, **{"data.spool_memory": 65536})
    line = b"0123456789abcdefghijklmnopqrstuvwxyz.ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789\r\n"
    body = b"".join(b"." + line if i % 7 == 0 else line for i in range(2 * 1024 * 1024 // len(line)))
    msg = make_message("large", body)
    mta.script("large-slow@example.org", data_timeout=MTA_PATIENCE, then={})
    with SmtpClient(p.port) as c:
        c.ehlo()
        for sender, pause in (("large@example.org", 0), ("large-slow@example.org", MTA_PATIENCE + 0.5)):
            c.send(group(sender, ["r@example.com"]))
            assert [x.code for x in replies(c, 3)] == [250, 250, 354]
            payload = data_payload(msg)
            c.send(payload[:len(payload) // 2])
            time.sleep(pause)
            c.send(payload[len(payload) // 2:])
            check_reply(c.read_reply(timeout=20 * SCALE), 250, None, sender)
    for sender in ("large@example.org", "large-slow@example.org"):
        [m] = mta.delivered(sender)
        assert body_of(m.content) == msg, sender
    assert mta.ended[mta.conn_of("large-slow@example.org")] == "timeout in data"


def test_mta_never_answering_the_early_data(px, mta):
    """upstream_data_init (2 s here) bounds the wait for the 354 read after the content."""
    mta.script("stall@example.org", stall_data=True)
    retries = len(px.events("upstream-data-retry"))
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(group("stall@example.org", ["r@example.com"]))
        assert [x.code for x in replies(c, 3)] == [250, 250, 354]
        c.send(data_payload(make_message("stalled")))
        r = c.read_reply(timeout=5 * SCALE)
        assert r.code // 100 == 4, r
    assert mta.delivered("stall@example.org") == []
    assert mta.wait_ended(mta.conn_of("stall@example.org"), 5 * SCALE) == "eof in data"
    # its own time-out is not the MTA giving up on a slow client: not sent again
    assert len(px.events("upstream-data-retry")) == retries


# --------------------------------------------------------------------------
# 10: early_data = false


def test_early_data_off_sends_data_only_after_the_content(factory, mta):
    p = start_postern(factory, mta.address, **{"upstream.early_data": "false"})
    counts = Counts(p)
    msg = make_message("late data", b"one\r\ntwo\r\n")
    with SmtpClient(p.port) as c:
        c.ehlo()
        c.send(group("late@example.org", ["r@example.com"]))
        assert [x.code for x in replies(c, 3)] == [250, 250, 354]
        conn = mta.conn_of("late@example.org")
        assert not [s for s in mta.segs(conn) if b"DATA" in s]
        payload = data_payload(msg)
        c.send(payload[:30])
        time.sleep(0.3)
        assert mta.when(conn, "DATA") is None, "DATA before the content was in"
        last = time.monotonic()
        c.send(payload[30:])
        check_reply(c.read_reply(), 250)
        assert mta.when(conn, "DATA") > last
        # a refused message costs nothing at the MTA then: no DATA, RSET, same connection
        c.send(group("late-refused@example.org", ["r@example.com"]))
        assert [x.code for x in replies(c, 3)] == [250, 250, 354]
        c.send(make_message("bare", b"a\nb\r\n") + b".\r\n")
        check_reply(c.read_reply(), 554, "5.5.2")
        check_reply(c.send_message("late2@example.org", ["r@example.com"], msg), 250)
        c.expect("QUIT", 221)
    [m] = mta.delivered("late@example.org")
    assert body_of(m.content) == msg
    lines = mta.lines(conn)
    i = lines.index("MAIL FROM:<late-refused@example.org>")
    assert [line.split(":")[0].split(" ")[0] for line in lines[i:i + 3]] == ["MAIL", "RCPT", "RSET"]
    assert mta.delivered("late2@example.org")[0].conn == conn
    assert counts.delta("aborts") == 0


# --------------------------------------------------------------------------
# 11: an MTA offering CHUNKING gets BDAT, never DATA


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "chunking-off"])
def test_mta_offering_chunking(factory, chunking):
    mta = RawMta(chunking=True)
    try:
        p = start_postern(factory, mta.address, **{"upstream.chunking": str(chunking).lower()})
        msg = make_message("to a chunking MTA", b"body\r\n.dot\r\n")
        with SmtpClient(p.port) as c:
            c.ehlo()
            c.send(group("ch1@example.org", ["r@example.com"]))
            assert [x.code for x in replies(c, 3)] == [250, 250, 354]
            c.send(data_payload(msg))
            check_reply(c.read_reply(), 250)
            check_reply(c.send_message("ch2@example.org", ["r@example.com"], msg), 250)
        for sender in ("ch1@example.org", "ch2@example.org"):
            [m] = mta.delivered(sender)
            assert body_of(m.content) == msg
            verbs = mta.verbs(m.conn)
            if chunking:
                assert m.verb == "BDAT" and "DATA" not in verbs, verbs
                assert [line for line in mta.lines(m.conn) if line.startswith("BDAT")][-1].endswith(" LAST")
            else:
                assert m.verb == "DATA" and "BDAT" not in verbs, verbs
        if not chunking:    # DATA went ahead, with the pipelined RCPT
            conn = mta.conn_of("ch1@example.org")
            assert any(s.endswith(b"RCPT TO:<r@example.com>\r\nDATA\r\n") for s in mta.segs(conn))
    finally:
        mta.close()


def test_client_bdat_to_an_mta_without_chunking(px, mta):
    """A client's BDAT transaction: no DATA ahead (the content comes with the
    command); the MTA gets DATA and the content, unstuffed octets stuffed."""
    msg = make_message("bdat in", b".dot first\r\nbody\r\n")
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<bdat@example.org>\r\nRCPT TO:<r@example.com>\r\n")
        assert [x.code for x in replies(c, 2)] == [250, 250]
        c.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
        check_reply(c.read_reply(), 250)
        conn = mta.conn_of("bdat@example.org")
        c.expect("QUIT", 221)
    [m] = mta.delivered("bdat@example.org")
    assert m.verb == "DATA" and body_of(m.content) == msg
    assert not any(s.endswith(b"RCPT TO:<r@example.com>\r\nDATA\r\n") for s in mta.segs(conn))


def test_reused_connection_prepared_with_xclient_carries_early_data(factory):
    """The aiosmtpd sink with XCLIENT: the second client's session takes the
    pooled connection (RSET, XCLIENT, EHLO prepared ahead) and its DATA goes
    ahead on it as on a new one; each message names its client."""
    sink = RecordingSink(xclient=True).start()
    try:
        p = start_postern(factory, sink.address)
        counts = Counts(p)
        for n in (1, 2):
            with SmtpClient(p.port, source=f"127.0.0.{20 + n}") as c:
                c.ehlo(f"client-{n}.example")
                c.send(group(f"x{n}@example.org", ["r@example.com"]))
                assert [x.code for x in replies(c, 3)] == [250, 250, 354]
                c.send(data_payload(make_message(f"xclient {n}")))
                check_reply(c.read_reply(), 250)
                c.expect("QUIT", 221)
            p.wait_for_log("session-end", count=n)
        m1, m2 = sink.wait_messages(2)
        assert m1.conn_id == m2.conn_id and counts.delta("reused") == 1
        assert [m1.xclient["ADDR"], m2.xclient["ADDR"]] == ["127.0.0.21", "127.0.0.22"]
        verbs = [e[0] for e in sink.connection_events(m1.conn_id)]
        seq = " ".join(v for v in verbs if v in ("XCLIENT", "RSET", "MAIL", "RCPT", "DATA"))
        assert seq == "XCLIENT MAIL RCPT DATA RSET XCLIENT MAIL RCPT DATA", seq
        assert counts.delta("aborts") == 0
    finally:
        sink.stop()


# --------------------------------------------------------------------------
# 12: the pool takes a connection after a relayed message, never after an aborted one


def test_pool_reuses_after_relayed_never_after_aborted(factory):
    mta = RawMta()
    try:
        p = start_postern(factory, mta.address, lua=True)
        sessions = [0]

        def session(sender, content, expect):
            with SmtpClient(p.port) as c:
                c.ehlo()
                c.send(group(sender, ["r@example.com"]))
                assert [x.code for x in replies(c, 3)] == [250, 250, 354]
                c.send(data_payload(content))
                check_reply(c.read_reply(), expect)
                c.expect("QUIT", 221)
            sessions[0] += 1
            p.wait_for_log("session-end", count=sessions[0])
            return mta.conn_of(sender)

        counts = Counts(p)
        a = session("pool-a@example.org", make_message("a"), 250)
        b = session("pool-b@example.org", make_message("b"), 250)
        assert a == b and counts.delta("reused") == 1 and counts.delta("new") == 1
        # aborted by a verdict: that connection is closed, the next session opens one
        c_ = session("pool-c@example.org", make_message("c", extra_headers=b"X-Test-Case: reject\r\n"), 554)
        assert c_ == a and mta.wait_ended(a) == "eof in data"
        d = session("pool-d@example.org", make_message("d"), 250)
        assert d != a and counts.delta("new") == 2 and counts.delta("reused") == 2
        # aborted by postern's own refusal, then again a new one
        e = session("pool-e@example.org", make_message("e", b"bare\nlf\r\n"), 554)
        assert e == d and mta.wait_ended(d) == "eof in data"
        f = session("pool-f@example.org", make_message("f"), 250)
        assert f not in (a, d) and counts.delta("new") == 3
        assert counts.delta("aborts") == 2
        assert [len(mta.delivered(f"pool-{x}@example.org")) for x in "abcdef"] == [1, 1, 0, 1, 0, 1]
    finally:
        mta.close()


# --------------------------------------------------------------------------
# 13: smuggling-shaped content: one message, boundaries unchanged


def send_variant(c, sender, variant):
    """MAIL, RCPT and DATA pipelined (DATA rides with RCPT), then the
    smuggling-shaped content and its end; the final reply."""
    c.send(group(sender, ["rcpt@example.com"]))
    assert [x.code for x in replies(c, 3)] == [250, 250, 354]
    c.send(attack_content(variant) + b".\r\n")
    return c.read_reply()


def test_smuggling_shapes_with_early_data_reject_mode(ps, asink):
    counts = Counts(ps)
    with SmtpClient(ps.port) as c:
        c.ehlo()
        for i, variant in enumerate(VARIANTS):
            sender = f"smuggle{i}@example.org"
            r = send_variant(c, sender, variant)
            check_reply(r, 554, "5.6.0" if variant in NUL_VARIANTS else "5.5.2", variant)
            check_reply(c.cmd("NOOP"), 250, "2.0.0", variant)
            assert_sink_aborted(asink, sink_conn(asink, sender))
        good = make_message("after the attacks", b"fine\r\n")
        check_reply(c.send_message("smuggle-good@example.org", ["rcpt@example.com"], good), 250)
    assert_nothing_smuggled(asink)
    assert [m.body for m in sink_delivered(asink, "smuggle-good@example.org")] == [good]
    assert not [m for m in asink.messages + asink.refused_messages if m.mail_from.startswith("smuggle") and
                m.mail_from != "smuggle-good@example.org"]
    assert counts.delta("aborts") == len(VARIANTS)


def test_smuggling_shapes_with_early_data_normalize_mode(factory, asink):
    p = start_postern(factory, asink.address, **{"data.bare_line_ending": '"normalize"'})
    with SmtpClient(p.port) as c:
        c.ehlo()
        for i, variant in enumerate(VARIANTS):
            sender = f"smugglen{i}@example.org"
            r = send_variant(c, sender, variant)
            if variant in NUL_VARIANTS:
                check_reply(r, 554, "5.6.0", variant)
                assert sink_delivered(asink, sender) == []
            else:
                check_reply(r, 250, None, variant)
                [got] = sink_delivered(asink, sender)
                assert got.rcpt_tos == ["rcpt@example.com"] and not got.raw_has_bare_line_ending
                content = attack_content(variant)
                assert got.body in (normalize_line_endings(content),
                                    normalize_line_endings(content.replace(b"\r\n.", b"\r\n"))), variant
            check_reply(c.cmd("NOOP"), 250, "2.0.0", variant)
    assert_nothing_smuggled(asink)


# --------------------------------------------------------------------------
# Postfix's smtp-sink: a session of relayed and refused messages


def test_smtp_sink_session_of_relayed_and_refused_messages(factory):
    # smtp-sink runs as nobody when started by root: a directory it can reach
    dump = pathlib.Path(tempfile.mkdtemp(prefix="postern-early-data-"))
    dump.chmod(0o777)
    sink = PostfixSink(["-d", f"{dump}/%M."]).start()
    try:
        p = start_postern(factory, sink.address, lua=True)
        counts = Counts(p)
        with SmtpClient(p.port) as c:
            c.ehlo()
            c.send(group("pf1@example.org", ["r@example.com"]))
            assert [x.code for x in replies(c, 3)] == [250, 250, 354]
            c.send(data_payload(make_message("pf one")))
            check_reply(c.read_reply(), 250)
            check_reply(c.send_message("pf2@example.org", ["r@example.com"],
                                       make_message("pf two", extra_headers=b"X-Test-Case: reject\r\n")), 554)
            check_reply(c.send_message("pf3@example.org", ["r@example.com"], make_message("pf three")), 250)
            check_reply(c.send_message("pf4@example.org", ["r@example.com"],
                                       make_message("pf four", b"a\nb\r\n")), 554, "5.5.2")
            c.send(group("pf5@example.org", ["r@example.com"]))
            assert [x.code for x in replies(c, 3)] == [250, 250, 354]
            c.send(data_payload(make_message("pf five")))
            check_reply(c.read_reply(), 250)
            c.expect("QUIT", 221)
        wait_until(lambda: len(list(dump.iterdir())) >= 3, QUICK, message="three dumped messages")
        time.sleep(0.2)
        texts = [f.read_bytes() for f in dump.iterdir()]
        senders = sorted(t.split(b"X-Mail-Args: <", 1)[1].split(b">", 1)[0].decode() for t in texts)
        assert senders == ["pf1@example.org", "pf3@example.org", "pf5@example.org"], senders
        assert counts.delta("aborts") == 2
    finally:
        sink.stop()
        shutil.rmtree(dump, ignore_errors=True)
