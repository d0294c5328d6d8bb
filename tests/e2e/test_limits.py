"""Concurrent-session limits: past [limits] sessions_per_ip a client address
gets 421 4.7.0 and is closed, with a session-limit log line, while the
admitted sessions and other clients keep working; the same per network and
in all (421 4.3.2). At start-up the open-file limit is checked against
[limits] sessions: raised to the hard limit, or a clear error."""
import os
import subprocess

from harness import (POSTERN_BIN, SCALE, PosternProcess, SmtpClient, check_reply, make_message,
                     postern_run_args)


def test_flood_past_the_per_ip_limit(postern, sink):
    p = postern.start(upstream=sink.address, sets={"limits.sessions_per_ip": 3, "limits.sessions_exempt": "[]"})
    admitted = [SmtpClient(p.port) for _ in range(3)]
    for c in admitted:
        check_reply(c.greeting, 220)
    # the flood: every further connection from 127.0.0.1 is refused
    for _ in range(12):
        c = SmtpClient(p.port)
        check_reply(c.greeting, 421, "4.7.0")
        assert "too many connections from your address" in c.greeting.text
        assert c.wait_closed(), "refused session left open"
        c.close()
    refused = p.wait_for_log("session-limit", count=12)
    assert all(l.get("limit") == "limits.sessions_per_ip" and l.get("client") == "127.0.0.1" for l in refused)
    assert all(l.get("session") for l in refused)
    # the admitted sessions keep working
    for i, c in enumerate(admitted):
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message(f"kept{i}")), 250)
    # another client address is not affected
    other = SmtpClient(p.port, source="127.0.0.2")
    check_reply(other.greeting, 220)
    other.ehlo()
    check_reply(other.send_message("a@example.org", ["b@example.com"], make_message("other")), 250)
    other.close()
    # a place freed is a place taken again
    admitted[0].cmd("QUIT")
    admitted[0].close()
    p.wait_for_log("session-end", count=12 + 2)  # 12 refused, the QUIT one, the other
    again = SmtpClient(p.port)
    check_reply(again.greeting, 220)
    again.close()
    for c in admitted[1:]:
        c.close()


def test_loopback_is_exempt_by_default(postern, sink):
    """limits.sessions_exempt defaults to loopback (like Postfix's
    smtpd_client_event_limit_exceptions = $mynetworks): a local relay or a
    health check is never refused per address; a listed network likewise."""
    p = postern.start(upstream=sink.address, sets={"limits.sessions_per_ip": 2})
    clients = [SmtpClient(p.port) for _ in range(5)]
    assert all(c.greeting.code == 220 for c in clients)
    for c in clients:
        c.close()
    q = postern.start(upstream=sink.address, sets={"limits.sessions_per_ip": 2,
                                                   "limits.sessions_exempt": '["127.0.0.2/32"]'})
    exempt = [SmtpClient(q.port, source="127.0.0.2") for _ in range(4)]
    assert all(c.greeting.code == 220 for c in exempt)
    counted = [SmtpClient(q.port, source="127.0.0.1") for _ in range(3)]
    assert [c.greeting.code for c in counted] == [220, 220, 421]
    for c in exempt + counted:
        c.close()


def test_per_network_limit(postern, sink):
    p = postern.start(upstream=sink.address,
                      sets={"limits.sessions_per_network": 2, "limits.sessions_per_ip": 0,
                            "limits.sessions_exempt": "[]"})
    a = SmtpClient(p.port, source="127.0.0.1")
    b = SmtpClient(p.port, source="127.0.0.2")
    check_reply(a.greeting, 220)
    check_reply(b.greeting, 220)
    c = SmtpClient(p.port, source="127.0.0.3")  # same /24
    check_reply(c.greeting, 421, "4.7.0")
    assert "your network" in c.greeting.text
    line = p.wait_for_log("session-limit")
    assert line.get("limit") == "limits.sessions_per_network"
    for x in (a, b, c):
        x.close()


def test_network_prefix_is_configurable(postern, sink):
    p = postern.start(upstream=sink.address,
                      sets={"limits.sessions_per_network": 1, "limits.network_prefix_v4": 32,
                            "limits.sessions_exempt": "[]"})
    a = SmtpClient(p.port, source="127.0.0.1")
    b = SmtpClient(p.port, source="127.0.0.2")  # another /32
    check_reply(a.greeting, 220)
    check_reply(b.greeting, 220)
    a.close()
    b.close()


def test_global_limit(postern, sink):
    p = postern.start(upstream=sink.address, sets={"limits.sessions": 2})
    a = SmtpClient(p.port, source="127.0.0.1")
    b = SmtpClient(p.port, source="127.0.0.2")
    c = SmtpClient(p.port, source="127.0.0.3")
    check_reply(a.greeting, 220)
    check_reply(b.greeting, 220)
    check_reply(c.greeting, 421, "4.3.2")
    assert p.wait_for_log("session-limit").get("limit") == "limits.sessions"
    for x in (a, b, c):
        x.close()


def test_open_file_limit_raised_to_the_hard_limit(postern, sink, tmp_path):
    """Started with a soft limit of 256: limits.sessions = 1000 needs ~3000
    descriptors, so postern raises the soft limit to the hard one."""
    args = ["--nofile=256:8192", POSTERN_BIN] + postern_run_args(
        upstream=sink.address, sets={"limits.sessions": 1000, "server.shutdown_timeout": 3})
    p = PosternProcess(args, cwd=str(tmp_path), binary="/usr/bin/prlimit")
    p.start()
    try:
        raised = p.wait_for_log("open-files-raised")
        assert raised.get("from") == "256" and raised.get("to") == "8192"
        with open(f"/proc/{p.pid}/limits") as f:
            row = next(l for l in f if l.startswith("Max open files"))
        assert row.split()[3:5] == ["8192", "8192"], row
        c = SmtpClient(p.port)
        check_reply(c.greeting, 220)
        c.close()
    finally:
        p.stop()


def test_soft_limit_raised_without_a_session_limit(postern, sink, tmp_path):
    """limits.sessions = 0 (the default): any number of descriptors may be
    needed, so the soft limit goes up to the hard one."""
    args = ["--nofile=300:4000", POSTERN_BIN] + postern_run_args(
        upstream=sink.address, sets={"server.shutdown_timeout": 3})
    p = PosternProcess(args, cwd=str(tmp_path), binary="/usr/bin/prlimit")
    p.start()
    try:
        raised = p.wait_for_log("open-files-raised")
        assert raised.get("from") == "300" and raised.get("to") == "4000"
    finally:
        p.stop()


def test_open_file_limit_too_low_is_a_clear_error(tmp_path):
    r = subprocess.run(["/usr/bin/prlimit", "--nofile=256:1024", POSTERN_BIN, "run", "--listen", "127.0.0.1:0",
                        "--set", "limits.sessions=1000"],
                       capture_output=True, text=True, timeout=30 * SCALE, cwd=str(tmp_path))
    assert r.returncode == 1, r.stderr
    assert "limits.sessions = 1000 needs about" in r.stderr
    assert "lower limits.sessions" in r.stderr and "LimitNOFILE=" in r.stderr and "ulimit -n" in r.stderr


def test_limit_keys_are_checked(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[limits]\nsessions_per_ip = -1\nnetwork_prefix_v4 = 33\nsessions_exempt = ["10.0.0.0/33"]\n')
    r = subprocess.run([POSTERN_BIN, "config", "check", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{bad}:2:" in r.stderr and "limits.sessions_per_ip" in r.stderr
    assert f"{bad}:3:" in r.stderr and "limits.network_prefix_v4" in r.stderr
    assert f"{bad}:4:" in r.stderr and "limits.sessions_exempt" in r.stderr
