"""Upstream connection reuse (issue 23): a connection to the MTA whose last
transaction ended cleanly serves the next client session (RSET, XCLIENT and
EHLO again), and nothing of one client reaches another.

The MTA is the recording sink with XCLIENT on (it answers XCLIENT with 220
and wants EHLO again, as Postfix does, and stamps each message with what the
last XCLIENT said), or Postfix's smtp-sink. postern runs one I/O thread, so
every session sees the same pool; clients come from distinct loopback
addresses (127.0.0.x) with distinct EHLO names.
"""

import re
import socket
import time

import pytest

from harness import SCALE, SmtpClient, data_payload, free_port, make_message, wait_until
from prometheus import scrape

ONE_THREAD = {"server.threads": 1}


def start(postern, sink, **sets):
    metrics_port = free_port()
    all_sets = dict(ONE_THREAD)
    all_sets["metrics.address"] = f'"127.0.0.1:{metrics_port}"'
    all_sets.update(sets)
    p = postern.start(upstream=sink.address, sets=all_sets)
    p.metrics_port = metrics_port
    return p


def counters(p):
    m = scrape(p.metrics_port)
    return (m.value("postern_upstream_connections_total"),
            m.value("postern_upstream_connections_reused_total"))


def discards(p, reason):
    return scrape(p.metrics_port).value("postern_upstream_pool_discards_total", reason=reason)


def client_ip(n):
    return f"127.0.0.{n}"


def send_one(p, n, subject=None, expect=250, rcpt="bob@example.com"):
    """One session from 127.0.0.n (EHLO client-n.example): one message, QUIT."""
    subject = subject or f"from client {n}"
    with SmtpClient(p.port, source=client_ip(n)) as c:
        c.ehlo(f"client-{n}.example")
        c.expect("MAIL FROM:<alice@example.org>", 250)
        c.expect(f"RCPT TO:<{rcpt}>", 250)
        c.expect("DATA", 354)
        c.send(data_payload(make_message(subject)))
        r = c.read_reply()
        assert r.code == expect, r
        c.expect("QUIT", 221)
    return r


def wait_pooled(p, sink, conn_id, sessions=1):
    """The session's end reached the pool: nothing more goes to conn_id
    (no QUIT), and postern logged the session's end."""
    p.wait_for_log("session-end", count=sessions)
    time.sleep(0.1 * SCALE)
    assert ("QUIT",) not in sink.connection_events(conn_id)


def received_client(msg):
    """The address in postern's own Received header."""
    m = re.search(rb"Received: from \S+ \(\S* ?\[([^\]]+)\]", msg.content)
    assert m, msg.content[:300]
    return m.group(1).decode()


# -- transparency ------------------------------------------------------------

def test_each_client_reaches_the_mta_over_one_reused_connection(postern, make_sink):
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    new0, reused0 = counters(p)
    for n in (11, 12, 13):
        send_one(p, n)
    msgs = sink.wait_messages(3)
    # one connection carried all three (the probe's is not among them)
    assert len({m.conn_id for m in msgs}) == 1, [m.conn_id for m in msgs]
    for n, m in zip((11, 12, 13), msgs):
        assert m.xclient["ADDR"] == client_ip(n), m.xclient
        # XCLIENT may come before the client's greeting (prepared at postern's
        # 220), without HELO; the EHLO after it speaks for the client either way
        assert m.xclient.get("HELO", f"client-{n}.example") == f"client-{n}.example", m.xclient
        assert m.helo == f"client-{n}.example"
        assert received_client(m) == client_ip(n)
    new, reused = counters(p)
    assert (new - new0, reused - reused0) == (1, 2)
    # the dialogue of the reused connection: RSET and XCLIENT before each later client
    verbs = [e[0] for e in sink.connection_events(msgs[0].conn_id)]
    seq = " ".join(v for v in verbs if v in ("EHLO", "XCLIENT", "RSET", "MAIL", "DATA", "QUIT"))
    assert seq == ("EHLO XCLIENT EHLO MAIL DATA RSET XCLIENT EHLO MAIL DATA RSET XCLIENT EHLO MAIL DATA"), seq


def test_reused_connection_follows_a_changed_ehlo_offer(postern, make_sink):
    """The EHLO after XCLIENT on a reused connection is kept without being
    parsed again only while the MTA's reply is the same word for word; a
    changed offer is read, found different, and the connection left for a
    new one (send_xclient). CHUNKING offered from the second client on: that
    client's message goes over a new connection with BDAT, the third's over
    the same one again, and withdrawn, the fourth's over another with DATA."""
    sink = make_sink(xclient=True, chunking=False)
    p = start(postern, sink)

    def one(n, sessions):
        send_one(p, n)
        msg = sink.wait_messages(sessions)[-1]
        wait_pooled(p, sink, msg.conn_id, sessions=sessions)
        return msg

    a = one(21, 1)
    sink.chunking = True
    b = one(22, 2)
    b_again = one(23, 3)
    sink.chunking = False
    c = one(24, 4)
    assert a.conn_id != b.conn_id and b_again.conn_id == b.conn_id, (a.conn_id, b.conn_id, b_again.conn_id)
    assert c.conn_id not in (a.conn_id, b.conn_id), c.conn_id

    def content_verbs(conn_id):
        return " ".join(e[0] for e in sink.connection_events(conn_id) if e[0] in ("DATA", "BDAT"))

    assert content_verbs(a.conn_id) == "DATA"
    assert content_verbs(b.conn_id).split() == ["BDAT", "BDAT"]
    assert content_verbs(c.conn_id) == "DATA"
    for n, m in zip((21, 22, 23, 24), (a, b, b_again, c)):
        assert m.xclient["ADDR"] == client_ip(n), m.xclient
    assert discards(p, "reidentify") == 2


def test_session_with_several_messages_then_reuse(postern, make_sink):
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    with SmtpClient(p.port, source=client_ip(21)) as c:
        c.ehlo("client-21.example")
        for i in range(3):
            assert c.send_message("a@example.org", ["b@example.com"], make_message(f"m{i}")).code == 250
        c.expect("QUIT", 221)
    send_one(p, 22)
    msgs = sink.wait_messages(4)
    assert len({m.conn_id for m in msgs}) == 1
    assert [m.xclient["ADDR"] for m in msgs] == [client_ip(21)] * 3 + [client_ip(22)]


def test_reuse_off_opens_one_connection_per_session(postern, make_sink):
    sink = make_sink(xclient=True)
    p = start(postern, sink, **{"upstream.reuse": "false"})
    for n in (31, 32):
        send_one(p, n)
    msgs = sink.wait_messages(2)
    assert msgs[0].conn_id != msgs[1].conn_id
    wait_until(lambda: ("QUIT",) in sink.connection_events(msgs[1].conn_id), 5 * SCALE, message="QUIT")
    assert counters(p)[1] == 0


def test_without_xclient_reuse_rsets_and_the_received_header_names_each_client(postern, sink):
    p = start(postern, sink)
    for n in (41, 42):
        send_one(p, n)
    msgs = sink.wait_messages(2)
    assert msgs[0].conn_id == msgs[1].conn_id
    assert [received_client(m) for m in msgs] == [client_ip(41), client_ip(42)]
    verbs = [e[0] for e in sink.connection_events(msgs[0].conn_id)]
    assert "RSET" in verbs[verbs.index("DATA"):], verbs


# -- a failed transaction never poisons the next -----------------------------

def second_is_clean(p, sink, first_conn, n=52, new_connection=True):
    before = len(sink.messages)
    send_one(p, n, subject="the next one")
    msg = sink.wait_messages(before + 1)[-1]
    assert msg.xclient is None or msg.xclient["ADDR"] == client_ip(n)
    assert b"Subject: the next one" in msg.content
    if new_connection:
        assert msg.conn_id != first_conn, "a connection with a failure was reused"
    return msg


@pytest.mark.parametrize("stage,reply", [("RCPT", "550 5.1.1 no such user"),
                                         ("RCPT", "450 4.2.0 try later"),
                                         ("MAIL", "451 4.3.0 busy"),
                                         ("DATA", "554 5.7.1 no data"),
                                         ("DATA_END", "451 4.3.0 queue trouble"),
                                         ("DATA_END", "550 5.7.1 content refused")])
def test_refusal_makes_the_connection_unfit_for_another_client(postern, make_sink, stage, reply):
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    sink.on(stage, reply, times=1)
    with SmtpClient(p.port, source=client_ip(51)) as c:
        c.ehlo("client-51.example")
        r = c.cmd("MAIL FROM:<alice@example.org>")
        if r.code == 250:
            r = c.cmd("RCPT TO:<bob@example.com>")
        if r.code == 250:
            r = c.cmd("DATA")
        if r.code == 354:
            c.send(data_payload(make_message("refused")))
            r = c.read_reply()
        assert r.code == int(reply[:3]), r
        c.expect("QUIT", 221)
    first = [e for e in sink.events if e[1] == "MAIL"][0][0]
    wait_until(lambda: ("QUIT",) in sink.connection_events(first), 5 * SCALE, message="QUIT on the refused connection")
    msg = second_is_clean(p, sink, first)
    assert msg.xclient["ADDR"] == client_ip(52)


@pytest.mark.parametrize("early_data", [False, True], ids=["data-after-content", "early-data"])
def test_client_abort_mid_data_leaves_a_clean_connection(postern, make_sink, early_data):
    sink = make_sink(xclient=True)
    p = start(postern, sink, **{"upstream.early_data": "true" if early_data else "false"})
    c = SmtpClient(p.port, source=client_ip(53))
    c.ehlo("client-53.example")
    c.expect("MAIL FROM:<alice@example.org>", 250)
    c.expect("RCPT TO:<bob@example.com>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: half\r\n\r\nonly half of a message, then the client goes\r\n")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()
    p.wait_for_log("session-end")
    first = [e for e in sink.events if e[1] == "MAIL"][0][0]
    if early_data:
        # DATA went ahead: the one way to abandon it is closing that connection
        assert sink.took_no_content()
        assert sink.connection_events(first)[-2:] == [("DATA",), ("LOST",)]
    else:
        # the MTA heard RSET for the abandoned transaction, and nothing of it was delivered
        wait_until(lambda: ("RSET",) in sink.connection_events(first), 5 * SCALE, message="RSET")
    msg = second_is_clean(p, sink, first, new_connection=early_data)
    assert len(sink.messages) == 1
    assert msg.mail_from == "alice@example.org" and msg.xclient["ADDR"] == client_ip(52)


@pytest.mark.parametrize("how", ["mid-chunk", "between-chunks", "rset-after-a-chunk"])
@pytest.mark.parametrize("mta_chunking", [True, False], ids=["mta-bdat", "mta-data"])
def test_client_abort_mid_bdat_leaves_a_clean_connection(postern, make_sink, how, mta_chunking):
    """The BDAT members of the class above: a client that leaves inside a
    chunk or between chunks, or RSETs after one, leaves nothing of its
    message on the MTA's connection; the next client's message goes over
    the same connection (its transaction was reset), alone."""
    sink = make_sink(xclient=True, chunking=mta_chunking)
    p = start(postern, sink)
    c = SmtpClient(p.port, source=client_ip(61))
    c.ehlo("client-61.example")
    c.expect("MAIL FROM:<alice@example.org>", 250)
    c.expect("RCPT TO:<bob@example.com>", 250)
    part = b"Subject: abandoned\r\n\r\nABANDONED-PART\r\n"
    if how == "mid-chunk":
        c.send(b"BDAT 1000\r\n" + part)  # 1000 announced, fewer sent
    else:
        c.send(b"BDAT %d\r\n" % len(part) + part)
        assert c.read_reply().code == 250
    if how == "rset-after-a-chunk":
        c.expect("RSET", 250)
        c.expect("QUIT", 221)
        c.close()
    else:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
    p.wait_for_log("session-end")
    first = [e for e in sink.events if e[1] == "MAIL"][0][0]
    wait_until(lambda: ("RSET",) in sink.connection_events(first), 5 * SCALE, message="RSET")
    msg = second_is_clean(p, sink, first, new_connection=False)
    assert msg.conn_id == first, "a cleanly reset connection was not reused"
    assert len(sink.messages) == 1 and b"ABANDONED-PART" not in msg.content
    assert not sink.refused_messages


def test_unexpected_reply_is_never_reused(postern, make_sink):
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    sink.on("DATA", "250 2.0.0 not a 354", times=1)
    with SmtpClient(p.port, source=client_ip(54)) as c:
        c.ehlo("client-54.example")
        c.expect("MAIL FROM:<alice@example.org>", 250)
        c.expect("RCPT TO:<bob@example.com>", 250)
        c.expect("DATA", 354)
        c.send(data_payload(make_message("unexpected")))
        assert c.read_reply().code == 451
    p.wait_for_log("upstream-protocol-error")
    first = [e for e in sink.events if e[1] == "MAIL"][0][0]
    second_is_clean(p, sink, first)


@pytest.mark.parametrize("how", ["hangup", "421", "garbage", "half-reply"])
def test_pooled_connection_closed_or_spoken_on_is_discarded(postern, make_sink, how):
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    send_one(p, 55)
    first = sink.wait_messages(1)[0].conn_id
    wait_pooled(p, sink, first)
    if how == "hangup":
        sink.hangup(first)
    elif how == "421":
        sink.inject(first, b"421 4.4.2 sink.test Error: timeout exceeded\r\n")
        sink.hangup(first)
    elif how == "garbage":
        sink.inject(first, b"250 2.0.0 Ok: queued as STALE\r\n")
    else:
        sink.inject(first, b"25")
    time.sleep(0.2 * SCALE)
    with SmtpClient(p.port, source=client_ip(56)) as c:
        c.ehlo("client-56.example")
        r = c.send_message("carol@example.org", ["dave@example.com"], make_message("after the pool"))
        assert r.code == 250, r
        assert str(r) == "250 2.0.0 Ok: queued as ABC123"   # the MTA's own reply, not a stale one
        c.expect("QUIT", 221)
    msgs = sink.wait_messages(2)
    assert msgs[1].conn_id != first
    assert msgs[1].xclient["ADDR"] == client_ip(56)
    reason = "unexplained" if how in ("garbage", "half-reply") else "closed"
    assert discards(p, reason) == 1
    if reason == "unexplained":
        # the log is read in the background: the counter can be seen first
        p.wait_for_log("upstream-pool-discard", reason="unexplained")


@pytest.mark.parametrize("stage,reply", [
    ("XCLIENT", "550 5.7.0 Error: insufficient authorization"),
    ("XCLIENT", "421 4.3.2 Service shutting down"),
    ("RSET", "250 2.0.0 Ok\r\n250 2.0.0 Ok"),          # a reply too many
    ("RSET", "500 5.5.1 what"),
    ("EHLO", "421 4.3.2 going away"),                   # the EHLO after XCLIENT
    # a reply too many to XCLIENT, which the sink did not even apply: read as
    # the EHLO's, it offers nothing the MTA offered before
    ("XCLIENT", "220 sink.test ESMTP\r\n250 2.0.0 Ok"),
])
def test_failed_handover_opens_a_new_connection(postern, make_sink, stage, reply):
    """RSET, XCLIENT or the EHLO after it failing on a pooled connection:
    that connection is closed and the client gets a new one, unaware."""
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    send_one(p, 57)
    first = sink.wait_messages(1)[0].conn_id
    wait_pooled(p, sink, first)
    sink.on(stage, reply, times=1)
    send_one(p, 58)
    msgs = sink.wait_messages(2)
    assert msgs[1].conn_id != first
    assert msgs[1].xclient["ADDR"] == client_ip(58)
    assert discards(p, "reidentify") == 1


def test_auth_relayed_connection_is_never_pooled(postern, make_sink, tmp_path):
    """The MTA's session that took AUTH is authenticated: never another client's."""
    import base64
    from harness import listener_ports, make_cert, write_config
    sink = make_sink(xclient=True, auth=("user", "secret"))
    cert = make_cert(tmp_path)
    metrics_port = free_port()
    cfg = write_config(tmp_path / "postern.toml", [{"tls": "starttls", "auth": "passthrough"}],
                       upstream=sink.address, tls={"cert_file": cert[0], "key_file": cert[1]},
                       sections={"server": {"threads": 1}, "metrics": {"address": f"127.0.0.1:{metrics_port}"}})
    p = postern.start(config=cfg, listen=())
    p.metrics_port = metrics_port
    (p.port,) = listener_ports(p)
    with SmtpClient(p.port, source=client_ip(59)) as c:
        c.ehlo("client-59.example")
        c.starttls()
        c.ehlo("client-59.example")
        token = base64.b64encode(b"\0user\0secret").decode()
        c.expect(f"AUTH PLAIN {token}", 235)
        assert c.send_message("user@example.org", ["bob@example.com"], make_message("authed")).code == 250
        c.expect("QUIT", 221)
    first = sink.wait_messages(1)[0].conn_id
    wait_until(lambda: ("QUIT",) in sink.connection_events(first), 5 * SCALE, message="QUIT after AUTH")
    with SmtpClient(p.port, source=client_ip(60)) as c:
        c.ehlo("client-60.example")
        c.starttls()
        c.ehlo("client-60.example")
        assert c.send_message("x@example.org", ["bob@example.com"], make_message("not authed")).code == 250
        c.expect("QUIT", 221)
    msg = sink.wait_messages(2)[1]
    assert msg.conn_id != first and msg.xclient["ADDR"] == client_ip(60)
    assert "LOGIN" not in msg.xclient
    assert counters(p)[1] == 0


# -- limits ------------------------------------------------------------------

def test_max_messages_per_connection(postern, make_sink):
    sink = make_sink(xclient=True)
    p = start(postern, sink, **{"upstream.reuse_max_messages": 2})
    for n in (61, 62, 63, 64, 65):
        send_one(p, n)
    msgs = sink.wait_messages(5)
    ids = [m.conn_id for m in msgs]
    assert ids[0] == ids[1] and ids[2] == ids[3] and len({ids[0], ids[2], ids[4]}) == 3, ids
    assert ("QUIT",) in sink.connection_events(ids[0])


def test_idle_timeout(postern, make_sink):
    sink = make_sink(xclient=True)
    p = start(postern, sink, **{"upstream.reuse_idle_timeout": 0.5})
    send_one(p, 66)
    first = sink.wait_messages(1)[0].conn_id
    # the pool closes it itself, politely, once its idle time-out passed
    wait_until(lambda: ("QUIT",) in sink.connection_events(first), 5 * SCALE, message="QUIT at the idle time-out")
    events = sink.connection_events(first)
    assert ("LOST",) in events or wait_until(lambda: ("LOST",) in sink.connection_events(first), 5 * SCALE)
    send_one(p, 67)
    assert sink.wait_messages(2)[1].conn_id != first
    assert discards(p, "expired") == 1


def test_pool_size(postern, make_sink):
    sink = make_sink(xclient=True)
    p = start(postern, sink, **{"upstream.reuse_pool_size": 1})
    # three sessions at once need three connections; one of them stays pooled
    clients = []
    for n in (71, 72, 73):
        c = SmtpClient(p.port, source=client_ip(n))
        c.ehlo(f"client-{n}.example")
        assert c.send_message("a@example.org", ["b@example.com"], make_message(f"c{n}")).code == 250
        clients.append(c)
    for c in clients:
        c.expect("QUIT", 221)
        c.close()
    msgs = sink.wait_messages(3)
    assert len({m.conn_id for m in msgs}) == 3
    wait_until(lambda: sum(("QUIT",) in sink.connection_events(m.conn_id) for m in msgs) == 2, 5 * SCALE,
               message="two of three connections closed with QUIT")
    kept = [m.conn_id for m in msgs if ("QUIT",) not in sink.connection_events(m.conn_id)]
    send_one(p, 74)
    assert sink.wait_messages(4)[3].conn_id == kept[0]
    assert discards(p, "full") == 2


def test_reload_drops_pooled_connections_of_the_old_configuration(postern, make_sink, tmp_path):
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    send_one(p, 75)
    first = sink.wait_messages(1)[0].conn_id
    wait_pooled(p, sink, first)
    import signal
    p.send_signal(signal.SIGHUP)
    p.wait_for_log("reloaded")
    send_one(p, 76)
    assert sink.wait_messages(2)[1].conn_id != first
    wait_until(lambda: ("QUIT",) in sink.connection_events(first), 5 * SCALE, message="QUIT of the old one")


def test_reload_that_shortens_the_idle_timeout_holds_for_connections_parked_after_it(postern, make_sink, tmp_path):
    """A connection of the old configuration parked after the reload (its
    session began before) waits with the old time-out; one of the new
    configuration parked after it still leaves at its own, shorter one."""
    import signal
    sink = make_sink(xclient=True)
    config = tmp_path / "postern.toml"

    def write(timeout):
        config.write_text(f'[server]\nhostname = "mx.postern.test"\nthreads = 1\n'
                          f'[upstream]\ntarget = "{sink.address}"\nreuse_idle_timeout = {timeout}\n')

    write(60)
    p = postern.start(config=str(config))
    old = SmtpClient(p.port, source=client_ip(81))
    old.ehlo("client-81.example")
    assert old.send_message("a@example.org", ["b@example.com"], make_message("old")).code == 250
    write(0.5)
    p.send_signal(signal.SIGHUP)
    p.wait_for_log("reloaded")
    new = SmtpClient(p.port, source=client_ip(82))
    new.ehlo("client-82.example")
    assert new.send_message("a@example.org", ["b@example.com"], make_message("new")).code == 250
    msgs = sink.wait_messages(2)
    old_conn, new_conn = msgs[0].conn_id, msgs[1].conn_id
    assert old_conn != new_conn
    for c in (old, new):  # the old configuration's connection is parked first
        c.expect("QUIT", 221)
        c.close()
    wait_until(lambda: ("QUIT",) in sink.connection_events(new_conn), 5 * SCALE,
               message="the new configuration's connection closed at its 0.5 s idle time-out")
    assert ("QUIT",) not in sink.connection_events(old_conn)


# -- Postfix's smtp-sink -----------------------------------------------------

def test_smtp_sink_counts_one_connection_for_many_sessions(postern, postfix_sink):
    mta = postfix_sink()
    p = start(postern, mta)
    new0, reused0 = counters(p)
    for n in range(81, 91):
        send_one(p, n)
    new, reused = counters(p)
    assert (new - new0, reused - reused0) == (1, 9)
    # and without reuse, ten connections
    p2 = start(postern, mta, **{"upstream.reuse": "false"})
    new0, reused0 = counters(p2)
    for n in range(91, 96):
        send_one(p2, n)
    new, reused = counters(p2)
    assert (new - new0, reused - reused0) == (5, 0)
