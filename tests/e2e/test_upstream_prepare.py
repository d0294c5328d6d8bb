"""A pooled upstream connection identified ahead of MAIL (issue 23): once a
client is greeted, an idle connection from the pool gets RSET and XCLIENT
(address, port, name) for it in the background, and once its HELO/EHLO is
answered the EHLO that names it, while the client sends its next command;
its MAIL then goes out at once. (A connection taken only at the client's
EHLO gets RSET, XCLIENT with HELO and PROTO, and EHLO then.)

What must hold: the MTA sees each client's own address, HELO name and
protocol whatever the client does between EHLO and MAIL (a second EHLO,
RSET and HELO, STARTTLS, QUIT, a lost connection); a connection is never
opened for a client that did not send MAIL; the pool stays sane.

The MTA is the recording sink with XCLIENT (220 and EHLO again, as Postfix
does), one I/O thread so every session sees the same pool, clients from
distinct loopback addresses.
"""

import base64
import signal
import socket
import time

import pytest

from harness import (SCALE, SmtpClient, free_port, listener_ports, make_cert, make_message,
                     wait_until, write_config)
from test_upstream_reuse import client_ip as ip, counters, discards, start as reuse_start

def start(postern, sink, **sets):
    """test_upstream_reuse's postern (one thread, metrics), logging at debug."""
    return reuse_start(postern, sink, **{"log.level": '"debug"', **sets})


def start_starttls(postern, sink, tmp_path, auth=False):
    cert = make_cert(tmp_path)
    metrics_port = free_port()
    listener = {"tls": "starttls"}
    if auth:
        listener["auth"] = "passthrough"
    cfg = write_config(tmp_path / "postern.toml", [listener], upstream=sink.address,
                       tls={"cert_file": cert[0], "key_file": cert[1]},
                       sections={"server": {"threads": 1}, "log": {"level": "debug"},
                                 "metrics": {"address": f"127.0.0.1:{metrics_port}"}})
    p = postern.start(config=cfg, listen=())
    p.metrics_port = metrics_port
    (p.port,) = listener_ports(p)
    return p


def send_one(p, n, helo=None):
    helo = helo or f"client-{n}.example"
    with SmtpClient(p.port, source=ip(n)) as c:
        c.ehlo(helo)
        r = c.send_message("alice@example.org", ["bob@example.com"], make_message(f"from client {n}"))
        assert r.code == 250, r
        c.expect("QUIT", 221)


def pool_one(p, sink, n=10):
    """One session's message; its connection is back in the pool (idle, no
    QUIT) once the session ended. Returns the connection's id at the sink."""
    ended = len(p.events("session-end"))
    send_one(p, n)
    conn = sink.wait_messages(1)[-1].conn_id
    p.wait_for_log("session-end", count=ended + 1)
    time.sleep(0.05 * SCALE)
    assert ("QUIT",) not in sink.connection_events(conn)
    return conn


def xclients(sink, conn):
    return [e[1] for e in sink.connection_events(conn) if e[0] == "XCLIENT"]


def wait_identified(sink, conn, n, helo=None, count=1):
    """The sink heard XCLIENT for client n on `conn` and the EHLO with the
    client's name after it: the preparation ran while the client had sent
    nothing after EHLO. XCLIENT may have gone at postern's greeting, before
    the client named itself: then without HELO (its EHLO says it)."""
    helo = helo or f"client-{n}.example"

    def done():
        events = sink.connection_events(conn)
        hits = [i for i, e in enumerate(events) if e[0] == "XCLIENT" and e[1].get("ADDR") == ip(n)
                and e[1].get("HELO", helo) == helo]
        return len(hits) >= count and ("EHLO", helo) in events[hits[-1]:]

    wait_until(done, 5 * SCALE, message=f"XCLIENT and EHLO for client {n} ({helo})")


def verbs_after(sink, conn, start):
    keep = ("EHLO", "HELO", "XCLIENT", "RSET", "MAIL", "DATA", "QUIT")
    return " ".join(e[0] for e in sink.connection_events(conn)[start:] if e[0] in keep)


def finish(c, subject="prepared"):
    r = c.send_message("alice@example.org", ["bob@example.com"], make_message(subject))
    assert r.code == 250, r
    c.expect("QUIT", 221)


def check_message(msg, n, helo, proto="ESMTP"):
    assert msg.xclient["ADDR"] == ip(n), msg.xclient
    # Without HELO and PROTO when XCLIENT went at postern's greeting; what
    # it says must be the client's
    assert msg.xclient.get("HELO", helo) == helo, msg.xclient
    assert msg.xclient.get("PROTO", proto) == proto, msg.xclient
    assert msg.helo == helo   # the EHLO after XCLIENT speaks for the client


# -- the connection is ready before MAIL -------------------------------------

def test_consecutive_clients_are_identified_before_their_mail(postern, make_sink):
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    conn = pool_one(p, sink, 10)
    new0, reused0 = counters(p)
    for i, n in enumerate((11, 12, 13, 14)):
        mark = len(sink.connection_events(conn))
        ended = len(p.events("session-end"))
        with SmtpClient(p.port, source=ip(n)) as c:
            c.ehlo(f"client-{n}.example")
            wait_identified(sink, conn, n)          # before the client said MAIL
            assert "MAIL" not in verbs_after(sink, conn, mark)
            finish(c, f"m{n}")
        msg = sink.wait_messages(2 + i)[-1]
        assert msg.conn_id == conn
        check_message(msg, n, f"client-{n}.example")
        # one identification per client, none again at MAIL
        assert verbs_after(sink, conn, mark) == "RSET XCLIENT EHLO MAIL DATA"
        p.wait_for_log("session-end", count=ended + 1)
    assert counters(p) == (new0, reused0 + 4)
    assert len(p.events("upstream-prepared")) == 4
    assert {e.level for e in p.events("upstream-prepared")} == {"debug"}


def test_without_xclient_the_preparation_is_rset(postern, make_sink):
    sink = make_sink()
    p = start(postern, sink)
    conn = pool_one(p, sink, 15)
    mark = len(sink.connection_events(conn))
    with SmtpClient(p.port, source=ip(16)) as c:
        c.ehlo("client-16.example")
        wait_until(lambda: "RSET" in verbs_after(sink, conn, mark), 5 * SCALE, message="RSET before MAIL")
        finish(c)
    msg = sink.wait_messages(2)[-1]
    assert msg.conn_id == conn and msg.xclient is None
    assert b"[127.0.0.16]" in msg.content.split(b"\r\n\r\n")[0]   # postern's Received names the client
    assert verbs_after(sink, conn, mark) == "RSET MAIL DATA"


# -- XCLIENT at the greeting, EHLO at the client's ---------------------------

def test_xclient_goes_at_the_greeting_and_ehlo_with_the_clients(postern, make_sink):
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    conn = pool_one(p, sink, 10)
    mark = len(sink.connection_events(conn))
    with SmtpClient(p.port, source=ip(23)) as c:           # reads the 220, says nothing yet
        wait_until(lambda: any(x.get("ADDR") == ip(23) for x in xclients(sink, conn)), 5 * SCALE,
                   message="XCLIENT before the client's EHLO")
        x = xclients(sink, conn)[-1]
        assert "HELO" not in x and "PROTO" not in x, x    # not known yet: the EHLO after it says them
        assert verbs_after(sink, conn, mark) == "RSET XCLIENT"
        c.ehlo("client-23.example")
        wait_identified(sink, conn, 23)                     # EHLO client-23.example, before MAIL
        assert verbs_after(sink, conn, mark) == "RSET XCLIENT EHLO"
        finish(c)
    msg = sink.wait_messages(2)[-1]
    assert msg.conn_id == conn
    check_message(msg, 23, "client-23.example")
    assert verbs_after(sink, conn, mark) == "RSET XCLIENT EHLO MAIL DATA"
    assert discards(p, "reidentify") == 0


@pytest.mark.parametrize("how", ["quit", "close", "reset"])
def test_client_that_leaves_before_ehlo_leaves_the_pool_sane(postern, make_sink, how):
    """XCLIENT went for a client that never greeted: the connection goes back
    to the pool as it is and serves the next client (RSET, XCLIENT, EHLO)."""
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    conn = pool_one(p, sink, 10)
    ended = len(p.events("session-end"))
    c = SmtpClient(p.port, source=ip(24))
    wait_until(lambda: any(x.get("ADDR") == ip(24) for x in xclients(sink, conn)), 5 * SCALE,
               message="XCLIENT at the greeting")
    if how == "quit":
        c.expect("QUIT", 221)
    elif how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()
    p.wait_for_log("session-end", count=ended + 1)
    p.wait_for_log("upstream-prepared-unused")
    mark = len(sink.connection_events(conn))
    send_one(p, 25)
    msg = sink.wait_messages(2)[-1]
    assert msg.conn_id == conn and sink.connections == 1
    check_message(msg, 25, "client-25.example")
    assert verbs_after(sink, conn, mark) == "RSET XCLIENT EHLO MAIL DATA"
    assert ("client-24.example",) not in [e[1:] for e in sink.connection_events(conn) if e[0] == "EHLO"]


@pytest.mark.parametrize("greeting", ["HELO", "ehlo"])
def test_first_greeting_helo_or_lower_case_names_the_prepared_connection(postern, make_sink, greeting):
    """XCLIENT went at the greeting without HELO and PROTO; a client that
    greets with HELO (or in lower case) is named by the EHLO that follows,
    on the same connection, with nothing sent twice."""
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    conn = pool_one(p, sink, 10)
    mark = len(sink.connection_events(conn))
    with SmtpClient(p.port, source=ip(28)) as c:
        c.expect(f"{greeting} client-28.example", 250)
        wait_identified(sink, conn, 28)
        finish(c)
    msg = sink.wait_messages(2)[-1]
    assert msg.conn_id == conn
    check_message(msg, 28, "client-28.example", "SMTP" if greeting == "HELO" else "ESMTP")
    assert verbs_after(sink, conn, mark) == "RSET XCLIENT EHLO MAIL DATA"


def test_ehlo_while_the_greeting_xclient_is_on_its_way(postern, make_sink):
    """The client's EHLO comes before the MTA answered XCLIENT: the EHLO with
    its name follows XCLIENT's reply, once, and MAIL waits for it."""
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    conn = pool_one(p, sink, 10)
    sink.on("XCLIENT", delay=0.4 * SCALE, times=1)
    mark = len(sink.connection_events(conn))
    with SmtpClient(p.port, source=ip(26)) as c:
        c.ehlo("client-26.example")
        finish(c)
    msg = sink.wait_messages(2)[-1]
    assert msg.conn_id == conn
    check_message(msg, 26, "client-26.example")
    assert verbs_after(sink, conn, mark) == "RSET XCLIENT EHLO MAIL DATA"


def test_mta_gone_between_the_greeting_xclient_and_the_ehlo(postern, make_sink):
    """The MTA closes the prepared connection after XCLIENT (its time-out):
    the EHLO finds out, and MAIL opens a new connection; the client hears
    nothing of it."""
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    conn = pool_one(p, sink, 10)
    with SmtpClient(p.port, source=ip(27)) as c:
        wait_until(lambda: any(x.get("ADDR") == ip(27) for x in xclients(sink, conn)), 5 * SCALE,
                   message="XCLIENT at the greeting")
        sink.hangup(conn)
        wait_until(lambda: ("LOST",) in sink.connection_events(conn), 5 * SCALE, message="closed")
        c.ehlo("client-27.example")
        finish(c)
    msg = sink.wait_messages(2)[-1]
    assert msg.conn_id != conn
    check_message(msg, 27, "client-27.example")
    assert p.alive()


# -- the client changes who it says it is -------------------------------------

@pytest.mark.parametrize("second", ["EHLO client-17b.example", "HELO client-17b.example",
                                    "RSET|HELO client-17b.example", "EHLO client-17.example"])
@pytest.mark.parametrize("prepared", ["done", "running"])
def test_a_second_greeting_is_what_the_mta_hears(postern, make_sink, second, prepared):
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    conn = pool_one(p, sink, 10)
    if prepared == "running":
        # the first identification is still on its way when the client greets again
        sink.on("XCLIENT", delay=0.4 * SCALE, times=1)
    mark = len(sink.connection_events(conn))
    with SmtpClient(p.port, source=ip(17)) as c:
        c.ehlo("client-17.example")
        if prepared == "done":
            wait_identified(sink, conn, 17)
        for line in second.split("|"):
            c.expect(line, 250)
        finish(c)
    helo = second.split("|")[-1].split()[1]
    proto = "SMTP" if "HELO" in second else "ESMTP"
    msg = sink.wait_messages(2)[-1]
    check_message(msg, 17, helo, proto)
    assert msg.conn_id == conn                  # still the pooled connection, identified anew where needed
    xs = xclients(sink, conn)[-2:] if helo != "client-17.example" else xclients(sink, conn)[-1:]
    assert xs[-1].get("HELO", helo) == helo and xs[-1].get("PROTO", proto) == proto
    seq = verbs_after(sink, conn, mark)
    if helo == "client-17.example":
        assert seq == "RSET XCLIENT EHLO MAIL DATA", seq   # same name: nothing said twice
    else:
        assert seq.endswith("RSET XCLIENT EHLO MAIL DATA") and seq.count("XCLIENT") == 2, seq
    assert discards(p, "reidentify") == 0


# -- the client leaves, or starts TLS, before MAIL ----------------------------

@pytest.mark.parametrize("how", ["quit", "quit-mid-preparation", "reset", "reset-mid-preparation",
                                 "close-mid-preparation"])
def test_client_that_leaves_after_ehlo_leaves_the_pool_sane(postern, make_sink, how):
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    conn = pool_one(p, sink, 10)
    mid = how.endswith("mid-preparation")
    if mid:
        sink.on("XCLIENT", delay=0.5 * SCALE, times=1)
    ended = len(p.events("session-end"))
    c = SmtpClient(p.port, source=ip(18))
    c.ehlo("client-18.example")
    if mid:
        wait_until(lambda: any(x.get("ADDR") == ip(18) for x in xclients(sink, conn)), 5 * SCALE,
                   message="XCLIENT under way")
    else:
        wait_identified(sink, conn, 18)
    if how.startswith("quit"):
        c.expect("QUIT", 221)
        c.close()
    elif how.startswith("reset"):
        # an abrupt end: RST, not FIN
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
    else:
        c.close()
    p.wait_for_log("session-end", count=ended + 1)
    assert p.alive()
    # the preparation ends on its own and parks the connection, untouched
    p.wait_for_log("upstream-prepared-unused", session=p.events("session-end", client=ip(18))[0].get("session"))
    wait_identified(sink, conn, 18)
    time.sleep(0.1 * SCALE)
    assert ("QUIT",) not in sink.connection_events(conn)
    assert ("LOST",) not in sink.connection_events(conn)
    mark = len(sink.connection_events(conn))
    send_one(p, 19)
    msg = sink.wait_messages(2)[-1]
    assert msg.conn_id == conn
    check_message(msg, 19, "client-19.example")
    assert verbs_after(sink, conn, mark) == "RSET XCLIENT EHLO MAIL DATA"
    assert sink.connections == 1
    assert discards(p, "reidentify") == 0


def test_starttls_after_ehlo(postern, make_sink, tmp_path):
    sink = make_sink(xclient=True)
    p = start_starttls(postern, sink, tmp_path)
    conn = pool_one(p, sink, 10)
    opened = sink.connections         # with a config file the start-up probe counts too
    mark = len(sink.connection_events(conn))
    with SmtpClient(p.port, source=ip(20)) as c:
        c.ehlo("client-20.example")
        wait_identified(sink, conn, 20)
        c.starttls()
        c.ehlo("client-20-tls.example")
        wait_identified(sink, conn, 20, helo="client-20-tls.example")
        finish(c)
    msg = sink.wait_messages(2)[-1]
    assert msg.conn_id == conn
    check_message(msg, 20, "client-20-tls.example")
    assert verbs_after(sink, conn, mark) == "RSET XCLIENT EHLO RSET XCLIENT EHLO MAIL DATA"
    assert sink.connections == opened


def test_auth_over_a_prepared_connection_keeps_it_from_the_pool(postern, make_sink, tmp_path):
    sink = make_sink(xclient=True, auth=("user", "secret"))
    p = start_starttls(postern, sink, tmp_path, auth=True)
    conn = pool_one(p, sink, 10)
    with SmtpClient(p.port, source=ip(21)) as c:
        c.ehlo("client-21.example")
        c.starttls()
        c.ehlo("client-21.example")
        wait_identified(sink, conn, 21, count=2)
        token = base64.b64encode(b"\0user\0secret").decode()
        c.expect(f"AUTH PLAIN {token}", 235)
        finish(c, "authenticated")
    msg = sink.wait_messages(2)[-1]
    assert msg.conn_id == conn and "LOGIN" not in msg.xclient   # the MTA learnt the login from AUTH
    check_message(msg, 21, "client-21.example")
    # the authenticated MTA session never serves anyone else
    wait_until(lambda: ("QUIT",) in sink.connection_events(conn), 5 * SCALE, message="QUIT after AUTH")
    send_one(p, 22)
    msg = sink.wait_messages(3)[-1]
    assert msg.conn_id != conn and "LOGIN" not in msg.xclient
    check_message(msg, 22, "client-22.example")


# -- never a fresh connection ahead of MAIL -----------------------------------

def test_no_upstream_connection_for_clients_that_only_greet(postern, make_sink):
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    for n in (30, 31, 32):
        c = SmtpClient(p.port, source=ip(n))
        c.ehlo(f"client-{n}.example")
        if n == 31:
            c.expect("HELO again.example", 250)
        if n == 32:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        else:
            c.expect("QUIT", 221)
        c.close()
    p.wait_for_log("session-end", count=3)
    time.sleep(0.2 * SCALE)
    assert sink.connections == 0, sink.events
    assert counters(p)[0] == 1          # the start-up probe's only


def test_only_an_idle_connection_is_prepared(postern, make_sink):
    """Two clients greet while one connection waits in the pool: the first
    gets it, the second nothing until its MAIL opens one."""
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    conn = pool_one(p, sink, 10)
    a = SmtpClient(p.port, source=ip(33))
    a.ehlo("client-33.example")
    wait_identified(sink, conn, 33)
    b = SmtpClient(p.port, source=ip(34))
    b.ehlo("client-34.example")
    time.sleep(0.2 * SCALE)
    assert sink.connections == 1
    finish(b, "b")
    finish(a, "a")
    a.close()
    b.close()
    msgs = sink.wait_messages(3)
    by_addr = {m.xclient["ADDR"]: m for m in msgs[1:]}
    assert by_addr[ip(33)].conn_id == conn
    assert by_addr[ip(34)].conn_id != conn
    check_message(by_addr[ip(34)], 34, "client-34.example")
    assert sink.connections == 2


# -- the prepared connection fails ---------------------------------------------

@pytest.mark.parametrize("when", ["during", "after"])
def test_failed_preparation_falls_back_silently(postern, make_sink, when):
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    conn = pool_one(p, sink, 10)
    if when == "during":
        sink.on("XCLIENT", "421 4.3.2 Service shutting down", times=1)
    with SmtpClient(p.port, source=ip(40)) as c:
        c.ehlo("client-40.example")
        if when == "during":
            wait_until(lambda: ("LOST",) in sink.connection_events(conn), 5 * SCALE, message="closed")
        else:
            wait_identified(sink, conn, 40)
            sink.hangup(conn)       # the MTA's idle time-out, after the preparation
            wait_until(lambda: ("LOST",) in sink.connection_events(conn), 5 * SCALE, message="closed")
        finish(c, "after the failure")
    msg = sink.wait_messages(2)[-1]
    assert msg.conn_id != conn
    check_message(msg, 40, "client-40.example")
    assert discards(p, "reidentify") == (1 if when == "during" else 0)


def test_shutdown_while_a_preparation_runs(postern, make_sink):
    sink = make_sink(xclient=True)
    p = start(postern, sink)
    conn = pool_one(p, sink, 10)
    sink.on("XCLIENT", delay=1.0 * SCALE, times=1)
    c = SmtpClient(p.port, source=ip(41))
    c.ehlo("client-41.example")
    wait_until(lambda: any(x.get("ADDR") == ip(41) for x in xclients(sink, conn)), 5 * SCALE,
               message="XCLIENT under way")
    p.send_signal(signal.SIGTERM)
    r = c.read_reply()
    assert r.code == 421, r
    assert p.wait_exit(10 * SCALE) == 0
    p.stopped = True
    p.check_sanitizers()


# -- Postfix's smtp-sink ----------------------------------------------------------

def test_smtp_sink_one_connection_for_many_prepared_sessions(postern, postfix_sink):
    mta = postfix_sink()
    p = start(postern, mta)
    new0, reused0 = counters(p)
    for n in range(50, 58):
        send_one(p, n)
    new, reused = counters(p)
    assert (new - new0, reused - reused0) == (1, 7)
    assert len(p.events("upstream-prepared")) >= 5   # a session may greet before the last one parked


# -- a real Postfix ------------------------------------------------------------------

@pytest.fixture
def postfix(make_sink):
    """A private Postfix that takes XCLIENT from loopback, relaying to a sink."""
    import shutil
    import tempfile
    from postfix_instance import PostfixInstance
    relay = make_sink()
    workdir = tempfile.mkdtemp(prefix="postern-prepare-pf-", dir="/tmp")
    pf = PostfixInstance(workdir, relay=relay.address,
                         main={"smtpd_authorized_xclient_hosts": "127.0.0.0/8"}).start()
    pf.relay_sink = relay
    try:
        yield pf
    finally:
        pf.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def postfix_received(msg):
    """Postfix's own Received field: the first one (postern's comes after it)."""
    import re
    m = re.search(rb"^Received: from (\S+) \((\S+) \[([^\]]+)\]\)\r\n\s+by \S+ \(Postfix\) with (\w+)",
                  msg.content, re.M)
    assert m, msg.content[:400]
    return m.group(1).decode(), m.group(3).decode(), m.group(4).decode()


def test_postfix_sees_each_client_over_one_prepared_connection(postern, postfix):
    metrics_port = free_port()
    p = postern.start(upstream=postfix.address, sets={"server.threads": 1, "log.level": '"debug"',
                                                       "metrics.address": f'"127.0.0.1:{metrics_port}"'})
    p.metrics_port = metrics_port
    new0, reused0 = counters(p)
    sessions = 0

    def session(n, greetings):
        nonlocal sessions
        with SmtpClient(p.port, source=ip(n)) as c:
            for g in greetings:
                c.expect(g, 250)
            finish(c, f"client {n}")
        sessions += 1
        p.wait_for_log("session-end", count=sessions)

    session(60, ["EHLO client-60.example"])
    session(61, ["EHLO client-61.example"])
    session(62, ["EHLO client-62.example", "EHLO client-62b.example"])   # a second name
    with SmtpClient(p.port, source=ip(63)) as c:                         # greets and goes
        c.ehlo("client-63.example")
        c.expect("QUIT", 221)
    sessions += 1
    p.wait_for_log("session-end", count=sessions)
    gone = p.events("session-end", client=ip(63))[0].get("session")
    p.wait_for_log("upstream-prepared-unused", session=gone)   # back in the pool for the next one
    session(64, ["EHLO client-64.example", "RSET", "HELO client-64b.example"])
    session(65, ["EHLO client-65.example"])
    msgs = postfix.relay_sink.wait_messages(5, timeout=30 * SCALE)
    # (Postfix's "with" follows the EHLO postern sends after XCLIENT, whatever
    # XCLIENT's PROTO said: ESMTP for the HELO client too, as without reuse.)
    got = sorted(postfix_received(m)[:2] for m in msgs)
    assert got == [("client-60.example", "127.0.0.60"), ("client-61.example", "127.0.0.61"),
                   ("client-62b.example", "127.0.0.62"), ("client-64b.example", "127.0.0.64"),
                   ("client-65.example", "127.0.0.65")], got
    new, reused = counters(p)
    assert (new - new0, reused - reused0) == (1, 4), p.log_tail(120)
    assert len(p.events("upstream-prepared")) >= 2   # 61 and 65; 62 and 64 race their second greeting
    assert "improper command pipelining" not in postfix.log()
