"""Logs: [log] format = "json" gives one JSON object per line carrying the
session id on every line of a session; hostile text stays inside its field;
SASL responses are never logged; [log] output = "file:PATH" is reopened on
SIGHUP and on `postern reload` after logrotate renamed the file."""
import base64
import json
import os
import signal
import socket
import re
import stat
import time

import pytest

from harness import (SCALE, PosternProcess, SmtpClient, check_reply, make_message, postern_run_args,
                     run_cli, wait_until)


def start_raw(tmp_path, sets, upstream):
    """postern whose log is not the harness's text on stderr: no waiting on it."""
    all_sets = {"server.hostname": "mx.postern.test", "server.shutdown_timeout": 3}
    all_sets.update(sets)
    p = PosternProcess(postern_run_args(upstream=upstream, sets=all_sets), cwd=str(tmp_path))
    return p.start(wait=False)


def json_lines(lines):
    out = []
    for raw in lines:
        if raw.strip():
            out.append(json.loads(raw))  # every line is one JSON object
    return out


def read_file_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def wait_json_event(get_lines, event, timeout=None, count=1):
    found = []

    def check():
        nonlocal found
        found = [l for l in json_lines(get_lines()) if l.get("event") == event]
        return len(found) >= count

    wait_until(check, timeout or 10 * SCALE, message=f"{count} JSON log line(s) with event {event}")
    return found


def port_of(listening):
    return int(listening["address"].rsplit(":", 1)[1])


def test_json_lines_parse_and_carry_the_session_id(sink, tmp_path):
    p = start_raw(tmp_path, {"log.format": "json"}, sink.address)
    try:
        listening = wait_json_event(lambda: p.lines, "listening")[0]
        assert listening["level"] == "info" and listening["ts"].endswith("Z")
        c = SmtpClient(port_of(listening))
        c.ehlo()
        c.send(b"X\x01\"}{\\ \xff\r\n")   # hostile bytes in a field
        check_reply(c.read_reply(), 500, "5.5.2")
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("json")), 250)
        c.close()
        end = wait_json_event(lambda: p.lines, "session-end")[0]
        sid = end["session"]
        lines = json_lines(p.lines)
        session_lines = [l for l in lines if l.get("session") == sid]
        events = [l["event"] for l in session_lines]
        for e in ("session-start", "unknown-command", "message", "session-end"):
            assert e in events, events
        unknown = next(l for l in session_lines if l["event"] == "unknown-command")
        assert unknown["line"] == 'X?"}{\\ ?', unknown  # sanitized, then JSON-escaped
        message = next(l for l in session_lines if l["event"] == "message")
        assert message["result"] == "relayed"
        assert isinstance(message["size"], int)  # numbers stay numbers
        # every line about a client connection names its session
        for l in lines:
            if "client" in l and l["event"] not in ("listening", "started"):
                assert "session" in l, l
    finally:
        p.stop()


def test_sasl_responses_are_not_logged(sink, tmp_path, postern):
    """A SASL response that reaches the command parser (the MTA ended the
    exchange early, or AUTH is not offered) is not written to the log."""
    p = postern.start(upstream=sink.address)
    secret = base64.b64encode(b"\0alice\0correct horse battery staple").decode()
    c = SmtpClient(p.port)
    c.ehlo()
    check_reply(c.cmd(f"AUTH PLAIN {secret}"), 502, "5.5.1")
    check_reply(c.cmd(secret), 500, "5.5.2")
    check_reply(c.cmd(base64.b64encode(b"hunter2").decode()), 500, "5.5.2")
    c.close()
    p.wait_for_log("session-end")
    text = "\n".join(p.lines)
    assert secret not in text
    assert base64.b64encode(b"hunter2").decode() not in text
    assert "correct horse" not in text
    assert p.events("unknown-command", line="(base64, not logged)")


def test_log_file_reopened_after_rename(sink, tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    path = str(logdir / "postern.log")
    control = os.path.join(str(tmp_path), "c.sock")
    if len(control) >= 100:
        import tempfile
        control = os.path.join(tempfile.mkdtemp(prefix="lg", dir="/tmp"), "c.sock")
    p = start_raw(tmp_path, {"log.output": f"file:{path}", "log.format": "json", "control.socket": control},
                  sink.address)
    try:
        listening = wait_json_event(lambda: read_file_lines(path), "listening")[0]
        wait_json_event(lambda: read_file_lines(path), "started")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert not [l for l in p.lines if '"event"' in l], "log lines went to stderr, not the file"
        port = port_of(listening)

        # logrotate: rename, then SIGHUP
        os.rename(path, path + ".1")
        p.send_signal(signal.SIGHUP)
        wait_json_event(lambda: read_file_lines(path), "reloaded")
        c = SmtpClient(port)
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("after-hup")), 250)
        c.close()
        msg = wait_json_event(lambda: read_file_lines(path), "message")[0]
        assert msg["result"] == "relayed"
        old = json_lines(read_file_lines(path + ".1"))
        assert [l for l in old if l["event"] == "listening"]
        assert not [l for l in old if l["event"] == "message"], "a line went to the renamed file"

        # logrotate with `postern reload` in postrotate
        os.rename(path, path + ".2")
        r = run_cli(["reload", "--socket", control])
        assert r.returncode == 0, r.stderr
        wait_json_event(lambda: read_file_lines(path), "reloaded")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        p.stop()


def test_level_hides_lower_levels(postern, sink):
    p = postern.start(upstream=sink.address, sets={"log.level": "warning"}, wait=False)
    # no "listening" line at level warning: find the port from status instead
    wait_until(lambda: any(n.startswith("postern-control-") for n in os.listdir(p.cwd)), 10 * SCALE,
               message="the control socket")
    status = run_cli(["status"], cwd=p.cwd)
    assert status.returncode == 0, status.stderr
    if os.geteuid() == 0:
        p.wait_for_log("running-as-root")  # a warning still shows
    p.send_signal(signal.SIGHUP)
    wait_until(lambda: "last reload: ok" in run_cli(["status"], cwd=p.cwd).stdout, 10 * SCALE,
               message="the reload")
    assert not [l for l in p.lines if " info " in l], p.lines  # not "listening", not "reloaded"


def test_bad_log_output_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[log]\noutput = "syslog"\nformat = "xml"\n')
    r = run_cli(["config", "check", str(bad)])
    assert r.returncode == 1
    assert f"{bad}:2:" in r.stderr and "log.output" in r.stderr
    assert f"{bad}:3:" in r.stderr and "log.format" in r.stderr


JOURNAL_SOCKET = "/run/systemd/journal/socket"


def parse_journal_datagram(data):
    """systemd's native journal protocol: KEY=value lines, or KEY\\n<le64 size>value\\n."""
    fields, pos = {}, 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        line = data[pos:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            pos = nl + 1
        else:
            key = line
            size = int.from_bytes(data[nl + 1:nl + 9], "little")
            value = data[nl + 9:nl + 9 + size]
            pos = nl + 9 + size + 1
        fields[key.decode()] = value.decode("utf-8", "replace")
    return fields


def test_journald_output_sends_one_field_per_key(sink, tmp_path):
    """[log] output = "journald": each line is one sd_journal_send with
    MESSAGE, PRIORITY and POSTERN_<KEY> fields. Where no journald runs (CI
    containers), the test plays journald on its socket; where one runs, it
    reads the entries back with journalctl."""
    import socket as socketlib
    import subprocess
    if os.path.exists(JOURNAL_SOCKET):
        probe = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
        try:
            probe.connect(JOURNAL_SOCKET)
        except ConnectionRefusedError:
            os.unlink(JOURNAL_SOCKET)  # left by an aborted run of this test: nobody reads it
        finally:
            probe.close()
    own = not os.path.exists(JOURNAL_SOCKET)
    made_dirs = []
    journal = None
    if own:
        for d in ("/run/systemd", "/run/systemd/journal"):
            if not os.path.isdir(d):
                os.mkdir(d, 0o755)
                made_dirs.append(d)
        journal = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
        journal.bind(JOURNAL_SOCKET)
        journal.settimeout(0.2)
    p = None
    try:
        p = start_raw(tmp_path, {"log.output": "journald"}, sink.address)
        entries = []

        def collect():
            if own:
                try:
                    while True:
                        entries.append(parse_journal_datagram(journal.recv(1 << 16)))
                except socketlib.timeout:
                    pass
            else:
                out = subprocess.run(["journalctl", "-o", "json", "--no-pager", f"_PID={p.pid}"],
                                     capture_output=True, text=True, timeout=30).stdout
                entries[:] = [json.loads(l) for l in out.splitlines() if l.strip()]
            return [e for e in entries if e.get("POSTERN_EVENT") == "session-end"]

        def listening():
            collect()
            return [e for e in entries if e.get("POSTERN_EVENT") == "listening"]

        port = port_of({"address": wait_until(listening, 10 * SCALE, message="journal: listening")[0]
                        ["POSTERN_ADDRESS"]})
        c = SmtpClient(port)
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("journal")), 250)
        c.close()
        end = wait_until(collect, 10 * SCALE, message="journal: session-end")[0]
        sid = end["POSTERN_SESSION"]
        message = next(e for e in entries if e.get("POSTERN_EVENT") == "message")
        assert message["POSTERN_SESSION"] == sid
        assert message["POSTERN_RESULT"] == "relayed"
        assert message["PRIORITY"] == "6" and message["SYSLOG_IDENTIFIER"] == "postern"
        assert message["MESSAGE"].startswith("message session=" + sid)
        assert not [l for l in p.lines if "session-start" in l], "journald lines also went to stderr"
    finally:
        if p is not None:
            p.stop()
        if journal is not None:
            journal.close()
            os.unlink(JOURNAL_SOCKET)
            for d in reversed(made_dirs):
                os.rmdir(d)


@pytest.mark.parametrize("listen,host", [("127.0.0.1:0", "127.0.0.1"), ("0.0.0.0:0", "127.0.0.1"),
                                         ("0.0.0.0:0", "127.0.0.3"), ("[::1]:0", "::1"), ("[::]:0", "::1"),
                                         ("[::]:0", "127.0.0.1")])
def test_session_start_names_both_ends_of_the_connection(sink, postern, listen, host):
    """session-start's client is the peer accept() reported, its listener the
    connection's local end: the listener's address when it is bound to one,
    the address the client reached when it is bound to a wildcard (issue 23
    takes both without a getpeername/getsockname per session). A dual-stack
    listener reached over IPv4 names its end as the socket does
    (::ffff:127.0.0.1), the client unmapped."""
    if ":" in host and not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        p = postern.start(upstream=sink.address, listen=(listen,))
    except AssertionError:
        if listen.startswith("["):
            pytest.skip("IPv6 loopback unavailable")
        raise
    c = SmtpClient(p.port, host=host)
    client_ip, client_port = c.sock.getsockname()[:2]
    local_ip, local_port = c.sock.getpeername()[:2]
    c.cmd("QUIT")
    c.close()
    start = p.wait_for_log("session-start")
    if listen.startswith("[::]") and ":" not in host:
        local_ip = "::ffff:" + local_ip
    assert start.get("client") == f"{client_ip}:{client_port}", start.raw
    assert start.get("listener") == f"{local_ip}:{local_port}", start.raw


def test_session_ids_are_the_start_time_then_a_counter_in_hex(sink, postern):
    """A session id is 14 upper-case hex digits: postern's start time (8),
    then a per-process counter (6), so consecutive sessions differ in the last
    digits only and sort in accept order."""
    started = int(time.time())
    p = postern.start(upstream=sink.address)
    for _ in range(3):
        c = SmtpClient(p.port)
        c.cmd("QUIT")
        c.close()
    ids = [l.get("session") for l in p.wait_for_log("session-end", count=3)]
    starts = sorted(l.get("session") for l in p.events("session-start"))
    assert sorted(ids) == starts, (ids, starts)
    for sid in ids:
        assert re.fullmatch(r"[0-9A-F]{14}", sid), sid
        assert sid[:8] == ids[0][:8]
        assert abs(int(sid[:8], 16) - started) <= 60, sid
    counters = sorted(int(sid[8:], 16) for sid in ids)
    assert counters == list(range(counters[0], counters[0] + 3)), ids
