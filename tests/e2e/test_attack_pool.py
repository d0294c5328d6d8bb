"""Attacks on upstream connection reuse (issue 23): what one client or a
misbehaving MTA leaves on a pooled MTA connection must never reach the next
client session, and postern and the MTA must never disagree on which reply
answers which command.

Three classes, each played at several points:
- late or extra octets from the MTA: a reply that comes after postern gave up
  waiting (its command time-out), octets behind a final reply, a reply split
  with a pause, a 421 or a hang-up while the connection waits for a client;
- state carried across clients: ESMTP parameters, the envelope of a
  transaction the client abandoned at any point, odd commands in between,
  the identity (XCLIENT) under many concurrent sessions;
- pool limits: messages per connection, pool size, no pool at all.

The MTA is either test_upstream_injection's scripted one (exact octets and
timing) or the harness's recording sink (a real SMTP state machine that
stamps each message with what XCLIENT said). postern runs one I/O thread so
every session sees the same pool; clients come from distinct loopback
addresses.
"""
import socket
import threading
import time

import pytest

from harness import SCALE, SmtpClient, data_payload, make_message, wait_until
from test_upstream_injection import CLOSE, Mta, start as mta_start
from test_upstream_reuse import client_ip, start as sink_start

LATE = b"LATE"  # every reply sent after postern gave up waiting carries it


class LateMta(Mta):
    """The scripted MTA, where a stage's reply can be held back and written
    later (a time-out's worth late), or be followed by octets unasked, at
    the stage's next occurrence from now on."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.held = {}   # "STAGE#n" -> (delay, pieces written instead of the reply, that late)
        self.lines = []  # (connection, command line) as received, from arm() on

    def session(self, conn):
        super().session(_LineRecorder(conn, self))

    def next_key(self, stage):
        with self.lock:
            return f"{stage}#{self.seen_stages.get(stage, 0) + 1}"

    def late_at(self, stage, delay, reply):
        """The next `stage` is answered `delay` seconds late with `reply`."""
        key = self.next_key(stage)
        with self.lock:
            self.held[key] = (delay, [reply])

    def after_next(self, stage, delay, pieces):
        """`delay` seconds after the next `stage`'s reply, `pieces` unasked."""
        key = self.next_key(stage)
        with self.lock:
            self.after[key] = (delay, pieces)

    def _reply(self, conn, stage, normal, on_positive=None):
        with self.lock:
            n = self.seen_stages.get(stage, 0) + 1
            held = self.held.pop(f"{stage}#{n}", None)
            if held is None:
                after = self.after.pop(f"{stage}#{n}", None)
        if held is None:
            if after is not None:
                with self.lock:
                    self.after[stage] = after  # Mta._reply takes it under the stage's name
            return super()._reply(conn, stage, normal, on_positive)
        with self.lock:
            self.seen_stages[stage] = n
        time.sleep(held[0])
        self._write(conn, held[1])
        return held[1]

    def cid_commands(self, cid):
        return [verb for c, verb in self.commands if c == cid]


class _LineRecorder:
    """A connection whose command lines the MTA reads are recorded whole."""

    def __init__(self, conn, mta):
        self._conn = conn
        self._mta = mta

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def makefile(self, *args, **kw):
        f = self._conn.makefile(*args, **kw)
        mta = self._mta
        cid = mta.connections + 1 if mta.armed else 0  # Mta.session counts it right after this

        class Reader:
            def readline(self):
                line = f.readline()
                if cid and line:
                    mta.lines.append((cid, line))
                return line

            def read(self, n):
                return f.read(n)
        return Reader()


@pytest.fixture
def late_mta():
    made = []

    def make(**kw):
        m = LateMta(**kw)
        made.append(m)
        return m
    yield make
    for m in made:
        m.close()


ONE_THREAD = {"server.threads": 1}
QUICK = 0.6  # every upstream time-out, seconds


def quick_start(postern, mta, **sets):
    timeouts = {f"timeouts.{t}": QUICK * SCALE for t in ("upstream_greeting", "upstream_mail", "upstream_rcpt",
                                                          "upstream_data_init", "upstream_data_term")}
    return mta_start(postern, mta, **{**ONE_THREAD, **timeouts, **sets})


def message(n, tag=""):
    return make_message(f"client {n}{tag}", f"body of client {n}{tag}\r\n".encode())


def deliver(p, n, expect=250):
    """One session from 127.0.0.n: EHLO, one message (one command at a time),
    QUIT. Returns every reply the client heard."""
    heard = []
    with SmtpClient(p.port, source=client_ip(n)) as c:
        heard.append(c.ehlo(f"client-{n}.example"))
        for line, code in ((b"MAIL FROM:<a%d@example.org>" % n, 250), (b"RCPT TO:<b%d@example.com>" % n, 250),
                           (b"DATA", 354)):
            r = c.cmd(line)
            heard.append(r)
            if r.code != code:
                break
        else:
            c.send(data_payload(message(n)))
            heard.append(c.read_reply())
        assert heard[-1].code == expect, heard
        try:
            c.cmd("QUIT")
        except Exception:
            pass  # a 421 may have ended the session already
    return heard


def accepted_from(mta, n):
    return [cid for cid, content in mta.accepted if b"body of client %d\r\n" % n in content]


def wait_session_ends(p, count):
    p.wait_for_log("session-end", count=count)
    time.sleep(0.1 * SCALE)


# -- late replies: a command that timed out never leaves its reply for another ---

LATE_REPLIES = {
    "RSET": b"250 2.0.0 LATE Ok\r\n",
    "XCLIENT": b"220 LATE mta.test ESMTP\r\n",
    "EHLO": b"250-LATE mta.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 XCLIENT ADDR NAME PORT PROTO HELO\r\n",
    "MAIL": b"250 2.1.0 LATE Ok\r\n",
    "RCPT": b"250 2.1.5 LATE Ok\r\n",
    "DATA": b"354 LATE go ahead\r\n",
    "DATA_END": b"250 2.0.0 LATE queued\r\n",
    "BDAT": b"250 2.0.0 LATE queued\r\n",
}
# What the client that met the stall hears at the end: the hand-over and MAIL
# fail over to a fresh connection unseen (250); later stages tempfail.
STALL_OUTCOME = {"RSET": 250, "XCLIENT": 250, "EHLO": 250, "MAIL": 250, "RCPT": 451, "DATA": 451,
                 "DATA_END": 451, "BDAT": 451}


@pytest.mark.parametrize("stage", list(LATE_REPLIES))
def test_reply_after_the_time_out_never_answers_the_next_client(postern, late_mta, stage):
    """A pooled connection's MTA stalls at `stage` past postern's time-out
    and then answers. postern gave up and closed that connection: the late
    reply is read by nobody, no later command goes over that connection, and
    the next clients hear only replies to their own commands."""
    mta = late_mta(xclient=True, chunking=stage == "BDAT")
    p = quick_start(postern, mta, **({"upstream.early_data": "false"} if stage == "DATA" else {}))
    mta.arm()  # connections counted from here: the probe's is not
    deliver(p, 11)
    assert accepted_from(mta, 11) == [1]
    wait_session_ends(p, 1)
    # the next occurrence of `stage` is on connection 1, for client 12
    mta.late_at(stage, 2 * QUICK * SCALE, LATE_REPLIES[stage])
    heard = deliver(p, 12, expect=STALL_OUTCOME[stage])
    time.sleep(2.5 * QUICK * SCALE)  # the late reply went out (or met a closed socket)
    before = len(mta.cid_commands(1))  # what was pipelined behind the stalled command included
    heard += deliver(p, 13)
    heard += deliver(p, 14)
    assert all(LATE not in str(r).encode() for r in heard), heard
    assert mta.cid_commands(1)[before:] == [], mta.commands  # nothing more on the stalled connection
    assert 1 not in accepted_from(mta, 13) + accepted_from(mta, 14), mta.accepted
    assert len(accepted_from(mta, 13)) == len(accepted_from(mta, 14)) == 1, mta.accepted
    if STALL_OUTCOME[stage] == 250:
        assert len(accepted_from(mta, 12)) == 1 and 1 not in accepted_from(mta, 12), mta.accepted
    else:
        assert accepted_from(mta, 12) == [], mta.accepted
    # 13 and 14 share one connection again: the pool works on after the stall
    assert accepted_from(mta, 13) == accepted_from(mta, 14), mta.accepted


# -- the MTA speaks or leaves around the hand-over -----------------------------

def pipelined_message(c, n):
    """MAIL, RCPT and DATA in one write (RFC 2920), then the content."""
    c.send(b"MAIL FROM:<a%d@example.org>\r\nRCPT TO:<b%d@example.com>\r\nDATA\r\n" % (n, n))
    heard = [c.read_reply(), c.read_reply(), c.read_reply()]
    if heard[-1].code == 354:
        c.send(data_payload(message(n)))
        heard.append(c.read_reply())
    return heard


@pytest.mark.parametrize("pipelined", [False, True], ids=["one-by-one", "pipelined"])
@pytest.mark.parametrize("how", ["close", "421"])
def test_mta_leaving_at_the_first_mail_of_a_pooled_connection_costs_one_reconnect(postern, late_mta, how,
                                                                                     pipelined):
    """The MTA closes the pooled connection (its idle time-out) just as
    postern sends the next client's MAIL over it (with RCPT and DATA behind
    it when the client pipelined them): the MAIL goes once more over a fresh
    connection, the client hears 250s only, and the message is delivered
    exactly once."""
    mta = late_mta(xclient=True)
    p = quick_start(postern, mta)
    mta.arm()
    deliver(p, 11)
    wait_session_ends(p, 1)
    key = mta.next_key("MAIL")
    with mta.lock:
        mta.script[key] = [CLOSE] if how == "close" else [b"421 4.4.2 mta.test Error: timeout exceeded\r\n", CLOSE]
    with SmtpClient(p.port, source=client_ip(12)) as c:
        c.ehlo("client-12.example")
        if pipelined:
            heard = pipelined_message(c, 12)
        else:
            heard = [c.cmd("MAIL FROM:<a12@example.org>"), c.cmd("RCPT TO:<b12@example.com>"), c.cmd("DATA")]
            c.send(data_payload(message(12)))
            heard.append(c.read_reply())
        assert [r.code for r in heard] == [250, 250, 354, 250], heard
        c.expect("QUIT", 221)
    assert len(accepted_from(mta, 12)) == 1 and accepted_from(mta, 12) != [1], mta.accepted
    assert mta.cid_commands(1)[-1] == "MAIL", mta.commands  # the MAIL that met the close, nothing after
    deliver(p, 13)
    assert accepted_from(mta, 13) == accepted_from(mta, 12), mta.accepted  # the fresh one was pooled


@pytest.mark.parametrize("what", ["421", "hangup", "garbage", "half-line"])
def test_mta_speaking_while_a_client_holds_its_prepared_connection(postern, late_mta, what):
    """A pooled connection was identified for a client (RSET, XCLIENT, EHLO)
    and waits for its MAIL; meanwhile the MTA says 421 and leaves, hangs up,
    or sends octets no command asked for. A 421 or a hang-up costs one
    reconnect at MAIL (the client hears 250); octets that explain nothing
    fail that MAIL with 451 4.4.0 and drop the connection, and the client's
    next MAIL goes over a fresh one. Nothing the MTA sent unasked reaches
    the client."""
    mta = late_mta(xclient=True)
    p = quick_start(postern, mta)
    mta.arm()
    deliver(p, 11)
    wait_session_ends(p, 1)
    unasked = {"421": [b"421 4.4.2 LATE timeout exceeded\r\n", CLOSE], "hangup": [CLOSE],
               "garbage": [b"250 2.0.0 LATE queued as STALE\r\n"], "half-line": [b"250-LATE"]}[what]
    with SmtpClient(p.port, source=client_ip(12)) as c:
        # the EHLO after XCLIENT on connection 1 names the client; the MTA speaks after it
        mta.after_next("EHLO", 0.1 * SCALE, unasked)
        c.ehlo("client-12.example")
        wait_until(lambda: mta.cid_commands(1).count("EHLO") == 3, 5 * SCALE, message="the hand-over's EHLO")
        time.sleep(0.4 * SCALE)
        heard = [c.cmd("MAIL FROM:<a12@example.org>")]
        if what in ("garbage", "half-line"):
            assert heard[0].code == 451 and "4.4.0" in str(heard[0]), heard
            heard.append(c.cmd("MAIL FROM:<a12@example.org>"))
        assert heard[-1].code == 250, heard
        heard += [c.cmd("RCPT TO:<b12@example.com>"), c.cmd("DATA")]
        c.send(data_payload(message(12)))
        heard.append(c.read_reply())
        assert [r.code for r in heard[-3:]] == [250, 354, 250], heard
        c.expect("QUIT", 221)
    assert all(LATE not in str(r).encode() for r in heard), heard
    assert len(accepted_from(mta, 12)) == 1 and accepted_from(mta, 12) != [1], mta.accepted
    assert mta.cid_commands(1).count("MAIL") == 1, mta.commands  # client 11's MAIL only


@pytest.mark.parametrize("stage", ["RSET", "XCLIENT", "EHLO"])
def test_hand_over_replies_split_with_pauses_are_read_whole(postern, late_mta, stage):
    """The MTA's replies during the hand-over (RSET, XCLIENT, the EHLO after
    it) arrive cut inside their lines and between the lines of a multi-line
    reply, with pauses: each is read whole, as one reply, and the pooled
    connection serves the next client."""
    mta = late_mta(xclient=True)
    p = quick_start(postern, mta)
    mta.arm()
    deliver(p, 11)
    wait_session_ends(p, 1)
    whole = {"RSET": b"250 2.0.0 Ok\r\n", "XCLIENT": b"220 mta.test ESMTP\r\n", "EHLO": mta.ehlo_reply()}[stage]
    # each line cut in two: the pieces come 30 ms apart, well inside the time-out
    cuts = []
    for line in whole.splitlines(keepends=True):
        cuts += [line[:len(line) // 2], line[len(line) // 2:]]
    key = mta.next_key(stage)
    with mta.lock:
        mta.script[key] = cuts
    heard = deliver(p, 12)
    assert accepted_from(mta, 12) == [1], mta.accepted
    assert str(heard[-1]).startswith("250 2.0.0 Ok: queued as Q1"), heard


# -- state carried across clients --------------------------------------------

def sink_deliver(p, n, ehlo=None, mail_params="", rcpt_params=""):
    """test_upstream_reuse's one message, with this test's envelope:
    <a{n}@example.org> to <b{n}@example.com>, ESMTP parameters as given."""
    with SmtpClient(p.port, source=client_ip(n)) as c:
        c.ehlo(ehlo or f"client-{n}.example")
        c.expect(f"MAIL FROM:<a{n}@example.org>{mail_params}", 250)
        c.expect(f"RCPT TO:<b{n}@example.com>{rcpt_params}", 250)
        c.expect("DATA", 354)
        c.send(data_payload(message(n)))
        r = c.read_reply()
        assert r.code == 250, r
        c.expect("QUIT", 221)


def only_message_of(sink, n):
    """Client n's one message at the sink, checked to carry nothing but
    client n's envelope, identity and content."""
    mine = [m for m in sink.messages if b"body of client %d\r\n" % n in m.content]
    assert len(mine) == 1, sink.messages
    m = mine[0]
    assert m.mail_from == f"a{n}@example.org" and m.rcpt_tos == [f"b{n}@example.com"], (m.mail_from, m.rcpt_tos)
    assert m.xclient["ADDR"] == client_ip(n) and m.helo == f"client-{n}.example", (m.xclient, m.helo)
    body = m.content.split(b"\r\n\r\n", 1)[1]
    assert body == b"body of client %d\r\n" % n, m.content
    return m


def test_esmtp_parameters_of_one_client_never_reach_the_next(postern, make_sink):
    """Client 21's MAIL carries SMTPUTF8, BODY, SIZE, RET and ENVID and its
    RCPT NOTIFY and ORCPT; client 22, over the same pooled connection, sends
    none: its MAIL and RCPT reach the MTA bare."""
    sink = make_sink(xclient=True, dsn=True, smtputf8=True)
    p = sink_start(postern, sink)
    sink_deliver(p, 21, mail_params=" SMTPUTF8 BODY=8BITMIME SIZE=400 RET=HDRS ENVID=env21",
                 rcpt_params=" NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b21@example.com")
    a = only_message_of(sink, 21)
    wait_session_ends(p, 1)
    sink_deliver(p, 22)
    b = only_message_of(sink, 22)
    assert a.conn_id == b.conn_id
    mails, rcpts = sink.lines("MAIL"), sink.lines("RCPT")
    assert "ENVID=env21" in mails[-2] and "SMTPUTF8" in mails[-2] and "NOTIFY=" in rcpts[-2], (mails, rcpts)
    assert mails[-1] == "MAIL FROM:<a22@example.org>", mails
    assert rcpts[-1] == "RCPT TO:<b22@example.com>", rcpts
    assert b.mail_options == [], b.mail_options


MAIL_A = b"MAIL FROM:<a31@example.org>\r\n"
RCPT_A = b"RCPT TO:<b31@example.com>\r\n"
CONTENT_A = data_payload(message(31))
# How client 31 leaves: (what it sends after EHLO, step by step -- a step is
# written whole, then its replies are read when `n` > 0 -- and whether the
# MTA may hear the whole message: only once the client sent its final dot).
LEAVING = {
    "after-mail": [(MAIL_A, 1)],
    "after-pipelined-mail-rcpt": [(MAIL_A + RCPT_A, 0)],
    "after-rcpt": [(MAIL_A, 1), (RCPT_A, 1)],
    "after-354": [(MAIL_A, 1), (RCPT_A, 1), (b"DATA\r\n", 1)],
    "pipelined-data-then-gone": [(MAIL_A + RCPT_A + b"DATA\r\n", 0)],
    "mid-content": [(MAIL_A, 1), (RCPT_A, 1), (b"DATA\r\n", 1), (CONTENT_A[:40], 0)],
    "mid-content-at-a-dot": [(MAIL_A, 1), (RCPT_A, 1), (b"DATA\r\n", 1), (CONTENT_A[:-3] + b".", 0)],
    "after-the-dot": [(MAIL_A, 1), (RCPT_A, 1), (b"DATA\r\n", 1), (CONTENT_A, 0)],
    "after-a-bdat-chunk": [(MAIL_A, 1), (RCPT_A, 1), (b"BDAT 10\r\n" + CONTENT_A[:10], 1)],
    "mid-bdat": [(MAIL_A, 1), (RCPT_A, 1), (b"BDAT 200\r\n" + CONTENT_A[:50], 0)],
    "after-rset": [(MAIL_A, 1), (RCPT_A, 1), (b"RSET\r\n", 1)],
    "odd-commands": [(MAIL_A, 1), (b"NOOP\r\n", 1), (RCPT_A, 1), (b"VRFY b31\r\n", 1), (b"HELP\r\n", 1),
                     (b"RSET\r\n", 1), (b"MAIL FROM:<x31@example.org>\r\n", 1), (b"RCPT TO:<y31@example.com>\r\n", 1),
                     (b"NOOP\r\n", 1), (b"EXPN list\r\n", 1)],
}
# Where postern sent DATA to the MTA ahead of the content (upstream.early_data,
# an MTA without CHUNKING): only closing that connection ends the transaction.
DATA_AHEAD = {"after-354", "pipelined-data-then-gone", "mid-content", "mid-content-at-a-dot"}


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "chunking"])
@pytest.mark.parametrize("point", list(LEAVING))
def test_client_leaving_at_any_point_leaves_nothing_for_the_next(postern, make_sink, point, chunking):
    """Client 31 takes the pooled connection and leaves without QUIT at
    `point`. Client 32, next on the pool, gets a clean transaction: the MTA
    delivers client 32's message with client 32's envelope, identity and
    content only, and nothing of client 31's (but the message whose final dot
    it sent, exactly once). The connection is reused unless postern had to
    close it to end a DATA it sent ahead."""
    sink = make_sink(xclient=True, chunking=chunking)
    p = sink_start(postern, sink)
    sink_deliver(p, 30)
    warm = only_message_of(sink, 30).conn_id
    wait_session_ends(p, 1)
    c = SmtpClient(p.port, source=client_ip(31))
    c.ehlo("client-31.example")
    for octets, replies in LEAVING[point]:
        c.send(octets)
        for _ in range(replies):
            c.read_reply()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()  # a reset: gone, whatever postern still writes
    wait_session_ends(p, 2)
    sink_deliver(p, 32)
    b = only_message_of(sink, 32)
    a = [m for m in sink.messages + sink.refused_messages if b"client 31" in m.content or "a31@example.org" == m.mail_from]
    if point == "after-the-dot":
        assert len(a) == 1 and a[0].rcpt_tos == ["b31@example.com"], a
    else:
        assert a == [], a
    assert not any(m.mail_from == "x31@example.org" for m in sink.messages), sink.messages
    if point not in DATA_AHEAD or chunking:
        assert b.conn_id == warm, (b.conn_id, warm, sink.connection_events(warm))
    else:
        assert b.conn_id != warm and ("LOST",) in sink.connection_events(warm)


# -- many clients at once ----------------------------------------------------

def test_concurrent_sessions_each_reach_the_mta_as_themselves(postern, make_sink):
    """24 clients at once, three rounds, a pool of 4: every message reaches
    the MTA under its own client's address and HELO name with its own
    envelope, whichever pooled connection carried it, and the pool keeps at
    most 4 connections idle between rounds."""
    sink = make_sink(xclient=True)
    p = sink_start(postern, sink, **{"upstream.reuse_pool_size": 4})
    errors = []

    def client(n, round_):
        try:
            with SmtpClient(p.port, source=client_ip(n)) as c:
                c.ehlo(f"c{n}-r{round_}.example")
                for k in range(1 + n % 2):
                    c.expect(f"MAIL FROM:<s{n}-{round_}@example.org>", 250)
                    c.expect(f"RCPT TO:<r{n}@example.com>", 250)
                    c.expect("DATA", 354)
                    c.send(data_payload(make_message(f"n{n} r{round_} k{k}", b"from %d\r\n" % n)))
                    r = c.read_reply()
                    assert r.code == 250, r
                c.expect("QUIT", 221)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append((n, round_, repr(e)))

    total = 0
    for round_ in range(3):
        threads = [threading.Thread(target=client, args=(n, round_)) for n in range(40, 64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total += sum(1 + n % 2 for n in range(40, 64))
        assert not errors, errors
        sink.wait_messages(total)
        wait_session_ends(p, 24 * (round_ + 1))
        time.sleep(0.3 * SCALE)
        open_idle = [cid for cid in {m.conn_id for m in sink.messages}
                     if ("LOST",) not in sink.connection_events(cid)]
        assert len(open_idle) <= 4, open_idle
    for m in sink.messages:
        subject = m.content.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        n, round_ = int(subject.split()[0][1:]), int(subject.split()[1][1:])
        assert m.xclient["ADDR"] == client_ip(n), (subject, m.xclient)
        assert m.helo == f"c{n}-r{round_}.example", (subject, m.helo)
        assert m.mail_from == f"s{n}-{round_}@example.org" and m.rcpt_tos == [f"r{n}@example.com"], subject
        assert m.content.endswith(b"from %d\r\n" % n), subject
    assert len(sink.messages) == total
    # the later rounds were carried in part by pooled connections
    assert len({m.conn_id for m in sink.messages}) < 3 * 24


# -- limits ------------------------------------------------------------------

def test_a_connection_at_its_message_limit_carries_its_session_then_quits(postern, make_sink):
    """reuse_max_messages = 2: a session's three messages all go over its
    one connection (never cut short), which then gets QUIT instead of the
    pool; the next connection is pooled after one message and retired after
    its second."""
    sink = make_sink(xclient=True)
    p = sink_start(postern, sink, **{"upstream.reuse_max_messages": 2})
    with SmtpClient(p.port, source=client_ip(51)) as c:
        c.ehlo("client-51.example")
        for k in range(3):
            r = c.send_message("a51@example.org", ["b51@example.com"], make_message(f"51-{k}"))
            assert r.code == 250, r
        c.expect("QUIT", 221)
    first = {m.conn_id for m in sink.wait_messages(3)}
    assert len(first) == 1, first
    (first,) = first
    wait_until(lambda: ("QUIT",) in sink.connection_events(first), 5 * SCALE, message="QUIT after 3 of 2")
    sink_deliver(p, 52)
    second = only_message_of(sink, 52).conn_id
    assert second != first
    wait_session_ends(p, 2)
    assert ("QUIT",) not in sink.connection_events(second)
    sink_deliver(p, 53)
    assert only_message_of(sink, 53).conn_id == second
    wait_until(lambda: ("QUIT",) in sink.connection_events(second), 5 * SCALE, message="QUIT at 2 of 2")
    sink_deliver(p, 54)
    assert only_message_of(sink, 54).conn_id not in (first, second)


@pytest.mark.parametrize("setting", [{"upstream.reuse_max_messages": 1}, {"upstream.reuse_pool_size": 0}],
                         ids=["max-messages-1", "pool-size-0"])
def test_limits_that_leave_nothing_to_reuse(postern, make_sink, setting):
    """With one message per connection, or a pool of none, each session gets
    a connection of its own, which is closed with QUIT after it: none is
    ever handed to another client."""
    sink = make_sink(xclient=True)
    p = sink_start(postern, sink, **setting)
    for n in (55, 56, 57):
        sink_deliver(p, n)
        wait_session_ends(p, n - 54)
    conns = [only_message_of(sink, n).conn_id for n in (55, 56, 57)]
    assert len(set(conns)) == 3, conns
    for cid in conns:
        wait_until(lambda: ("QUIT",) in sink.connection_events(cid), 5 * SCALE, message=f"QUIT on {cid}")
        assert [e[0] for e in sink.connection_events(cid)].count("XCLIENT") == 1, sink.connection_events(cid)


# -- XFORWARD ------------------------------------------------------------------

def test_xforward_over_a_pooled_connection_names_each_client_in_each_transaction(postern, late_mta):
    """Towards an MTA with XFORWARD and no XCLIENT, a pooled connection is
    handed over with RSET alone, and each MAIL follows an XFORWARD with the
    client of that transaction: its address, port and HELO name (the name
    it gave last, after a second EHLO within one session too)."""
    mta = late_mta(xforward=True)
    p = quick_start(postern, mta)
    mta.arm()
    deliver(p, 71)
    wait_session_ends(p, 1)
    deliver(p, 72)
    wait_session_ends(p, 2)
    with SmtpClient(p.port, source=client_ip(73)) as c:
        c.ehlo("client-73.example")
        assert c.send_message("a73@example.org", ["b73@example.com"], message(73)).code == 250
        c.ehlo("second-73.example")
        assert c.send_message("a73@example.org", ["b73@example.com"], message(73, " again")).code == 250
        c.expect("QUIT", 221)
    assert {cid for cid, _ in mta.accepted} == {1}, mta.accepted
    lines = [line.decode().strip() for cid, line in mta.lines if cid == 1]
    verbs = [line.split(" ")[0] for line in lines if line.split(" ")[0] in ("XFORWARD", "MAIL", "RSET")]
    # each MAIL right behind its XFORWARD; RSET hands the connection over to 72 and 73
    assert verbs == ["XFORWARD", "MAIL", "RSET", "XFORWARD", "MAIL", "RSET", "XFORWARD", "MAIL", "XFORWARD",
                     "MAIL"], verbs
    xforwards = [line for line in lines if line.startswith("XFORWARD")]
    expected = [(71, "client-71.example"), (72, "client-72.example"), (73, "client-73.example"),
                (73, "second-73.example")]
    for line, (n, helo) in zip(xforwards, expected):
        attrs = dict(item.split("=", 1) for item in line.split()[1:])
        assert attrs["ADDR"] == client_ip(n) and attrs["HELO"] == helo, line
    ports = [dict(item.split("=", 1) for item in line.split()[1:])["PORT"] for line in xforwards]
    assert len(set(ports[:3])) == 3 and ports[2] == ports[3], ports


def test_well_behaved_and_vanishing_clients_at_once_never_mix(postern, make_sink):
    """Rounds of 20 concurrent clients over a pool of 3: some deliver (one
    refused recipient among theirs now and then, which keeps their
    connection from the pool), others vanish at one of the points above.
    Every message the MTA accepts is a well-behaved client's own: its
    address and HELO name, its envelope (the refused recipient excluded),
    its content; nothing of a vanished client is ever delivered."""
    import random
    rng = random.Random(23)
    sink = make_sink(xclient=True)
    sink.on("RCPT", "550 5.1.1 no such user", match=lambda a: a.startswith("nobody"))
    p = sink_start(postern, sink, **{"upstream.reuse_pool_size": 3})
    errors = []
    vanish_points = [k for k in LEAVING if k != "after-the-dot"]

    def good(n, round_, refuse):
        try:
            with SmtpClient(p.port, source=client_ip(n)) as c:
                c.ehlo(f"g{n}-r{round_}.example")
                c.expect(f"MAIL FROM:<s{n}-{round_}@example.org>", 250)
                c.expect(f"RCPT TO:<r{n}@example.com>", 250)
                if refuse:
                    c.expect(f"RCPT TO:<nobody{n}@example.com>", 550)
                c.expect("DATA", 354)
                c.send(data_payload(make_message(f"g{n} r{round_}", b"from %d\r\n" % n)))
                r = c.read_reply()
                assert r.code == 250, r
                c.expect("QUIT", 221)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append((n, round_, repr(e)))

    def vanishing(n, point):
        try:
            c = SmtpClient(p.port, source=client_ip(n))
            c.ehlo(f"v{n}.example")
            for octets, replies in LEAVING[point]:
                c.send(octets.replace(b"31", b"%d" % n))
                for _ in range(replies):
                    c.read_reply()
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append((n, point, repr(e)))

    expected = 0
    sessions = 0
    for round_ in range(3):
        threads = []
        for n in range(100, 120):
            if rng.random() < 0.4:
                threads.append(threading.Thread(target=vanishing, args=(n, rng.choice(vanish_points))))
            else:
                threads.append(threading.Thread(target=good, args=(n, round_, rng.random() < 0.2)))
                expected += 1
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sessions += len(threads)
        assert not errors, errors
        wait_session_ends(p, sessions)
    sink.wait_messages(expected)
    time.sleep(0.3 * SCALE)
    assert len(sink.messages) == expected, len(sink.messages)
    for m in sink.messages:
        subject = m.content.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        assert subject.startswith("g"), subject
        n, round_ = int(subject.split()[0][1:]), int(subject.split()[1][1:])
        assert m.xclient["ADDR"] == client_ip(n) and m.helo == f"g{n}-r{round_}.example", (subject, m.xclient, m.helo)
        assert m.mail_from == f"s{n}-{round_}@example.org" and m.rcpt_tos == [f"r{n}@example.com"], (subject, m)
        assert m.content.endswith(b"from %d\r\n" % n), subject


# -- behind a load balancer ------------------------------------------------------

def test_clients_behind_the_proxy_protocol_are_each_announced_on_a_pooled_connection(postern, make_sink, tmp_path):
    """Every client arrives from the load balancer's one address; the PROXY
    header names the real one. A pooled connection is announced anew for
    each, the same address from another port and an IPv6 client included:
    the MTA books each message under its own client's address and port."""
    from harness import free_port, write_config
    sink = make_sink(xclient=True)
    cfg = write_config(tmp_path / "pp.toml", [{"proxy_protocol": True}], upstream=sink.address,
                       sections={"server": {"threads": 1}, "metrics": {"address": f"127.0.0.1:{free_port()}"}})
    p = postern.start(config=cfg, listen=())
    clients = [("TCP4", "192.0.2.50", 40050), ("TCP4", "192.0.2.50", 40051), ("TCP6", "2001:db8::7", 40052),
               ("TCP4", "192.0.2.50", 40050)]
    for k, (family, addr, port) in enumerate(clients):
        dest = "127.0.0.1" if family == "TCP4" else "::1"
        with SmtpClient(p.port, greeting=False) as c:
            c.send(f"PROXY {family} {addr} {dest} {port} 25\r\n".encode())
            assert c.read_reply().code == 220
            c.ehlo(f"lb-client-{k}.example")
            assert c.send_message(f"a{k}@example.org", [f"b{k}@example.com"], make_message(f"lb {k}")).code == 250
            c.expect("QUIT", 221)
        wait_session_ends(p, k + 1)
    msgs = sink.wait_messages(len(clients))
    assert len({m.conn_id for m in msgs}) == 1, [m.conn_id for m in msgs]
    for k, (m, (family, addr, port)) in enumerate(zip(msgs, clients)):
        want = addr if family == "TCP4" else "IPV6:" + addr
        assert (m.xclient["ADDR"], m.xclient["PORT"]) == (want, str(port)), m.xclient
        assert m.mail_from == f"a{k}@example.org" and m.helo == f"lb-client-{k}.example", (m.mail_from, m.helo)
