"""The control socket: `postern status` and `postern reload` against a running
postern; reload reports a refused configuration with its file:line and exits
1 while the old configuration keeps serving; the socket's mode, its removal
at exit, a stale socket replaced, a live one refused."""
import json
import os
import signal
import socket
import stat
import subprocess

from harness import (POSTERN_BIN, SCALE, PosternProcess, SmtpClient, check_reply,
                     make_message, postern_run_args, run_cli, wait_until, write_config)


def start_with_socket(postern, tmp_path, sink, sockdir, extra=None, name="postern.toml"):
    sock = os.path.join(sockdir, "control.sock")
    sections = {"control": {"socket": sock}}
    sections.update(extra or {})
    config = write_config(tmp_path / name, [{}], upstream=sink.address, sections=sections)
    p = postern.start(config=config)
    p.wait_for_log("started")  # the control socket is made after the listeners
    return p, sock, config


def test_status_reports_the_running_process(postern, sink, tmp_path, sockdir):
    p, sock, config = start_with_socket(postern, tmp_path, sink, sockdir)
    assert p.wait_for_log("control").get("socket") == sock
    c = SmtpClient(p.port)
    c.ehlo()
    check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("s1")), 250)
    r = run_cli(["status", "--socket", sock])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("postern "), out
    assert f"pid: {p.pid}\n" in out
    assert f"config: {config}\n" in out
    assert "sessions open: 1\n" in out  # c is still connected
    assert "messages since start: 1 (relayed 1," in out
    assert f"upstream: {sink.address} reachable" in out
    assert "last reload: none" in out
    # the same over -c CONFIG, as JSON
    r = run_cli(["status", "--json", "-c", config])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["pid"] == p.pid
    assert doc["sessions_open"] == 1
    assert doc["messages"]["relayed"] == 1
    assert doc["upstream"] == {"target": sink.address, "state": "reachable",
                               "probed_seconds_ago": doc["upstream"]["probed_seconds_ago"]}
    assert doc["workers"] >= 1 and doc["uptime_seconds"] >= 0
    c.close()


def test_reload_reports_success_and_refusal(postern, sink, tmp_path, sockdir):
    p, sock, config = start_with_socket(postern, tmp_path, sink, sockdir)
    r = run_cli(["reload", "-c", config])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("reloaded"), r.stdout
    p.wait_for_log("reloaded")
    # a refused configuration: the error names file:line, the exit status is 1
    with open(config, "a") as f:
        f.write("\n[limits]\nrecipients = \"many\"\n")
    bad_line = sum(1 for _ in open(config))
    r = run_cli(["reload", "--socket", sock])
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{config}:{bad_line}:" in r.stderr, r.stderr
    assert "limits.recipients" in r.stderr
    p.wait_for_log("reload-failed")
    status = run_cli(["status", "--socket", sock]).stdout
    assert "last reload: error reload refused" in status, status
    # the old configuration keeps serving
    c = SmtpClient(p.port)
    c.ehlo()
    check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("after")), 250)
    c.close()
    # a reload over SIGHUP lands in the same place
    with open(config) as f:
        text = f.read().replace('recipients = "many"', "recipients = 5")
    with open(config, "w") as f:
        f.write(text)
    p.send_signal(signal.SIGHUP)
    wait_until(lambda: "last reload: ok" in run_cli(["status", "--socket", sock]).stdout, 10 * SCALE,
               message="status shows the SIGHUP reload")


def test_socket_mode_and_removal_at_exit(postern, sink, tmp_path, sockdir):
    p, sock, _ = start_with_socket(postern, tmp_path, sink, sockdir)
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    p.stop()
    assert not os.path.exists(sock), "control socket left behind after exit"

    sock2 = os.path.join(sockdir, "group.sock")
    config = write_config(tmp_path / "g.toml", [{}], upstream=sink.address,
                          sections={"control": {"socket": sock2, "mode": "0660"}})
    p2 = postern.start(config=config)
    p2.wait_for_log("started")
    assert stat.S_IMODE(os.stat(sock2).st_mode) == 0o660
    p2.stop()


def test_stale_socket_is_replaced(postern, sink, tmp_path, sockdir):
    sock = os.path.join(sockdir, "control.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock)
    dead.close()  # the file stays, nobody listens: a crashed postern's leftover
    assert os.path.exists(sock)
    p, sock, _ = start_with_socket(postern, tmp_path, sink, sockdir)
    assert p.events("control-stale-socket", path=sock)
    r = run_cli(["status", "--socket", sock])
    assert r.returncode == 0 and f"pid: {p.pid}" in r.stdout


def test_live_socket_is_an_error(postern, sink, tmp_path, sockdir):
    sock = os.path.join(sockdir, "control.sock")
    first = postern.start(config=write_config(tmp_path / "a.toml", [{}], upstream=sink.address,
                                              sections={"control": {"socket": sock}}))
    first.wait_for_log("started")
    config = write_config(tmp_path / "b.toml", [{}], upstream=sink.address,
                          sections={"control": {"socket": sock}})
    second = PosternProcess(postern_run_args(config=config), cwd=str(tmp_path))
    second.start(wait=False)
    try:
        assert second.wait_exit(10 * SCALE) == 1
    finally:
        second.kill()
    failed = [l for l in second.lines if "control-failed" in l]
    assert failed and "already running" in failed[0], second.log_tail()
    # the first one still owns it
    r = run_cli(["status", "--socket", sock])
    assert f"pid: {first.pid}" in r.stdout


def test_client_errors_are_clear(tmp_path, sockdir):
    missing = os.path.join(sockdir, "nothing.sock")
    r = run_cli(["status", "--socket", missing])
    assert r.returncode == 1
    assert "cannot connect" in r.stderr and "is postern running" in r.stderr
    r = run_cli(["reload", "--bogus"])
    assert r.returncode == 2
    for cmd in ("reload", "status"):
        r = run_cli([cmd, "--help"])
        assert r.returncode == 0 and "--socket PATH" in r.stdout and "-c CONFIG" in r.stdout
    off = tmp_path / "off.toml"
    off.write_text('[control]\nsocket = ""\n')
    r = run_cli(["status", "-c", str(off)])
    assert r.returncode == 1 and "control socket is off" in r.stderr


def test_unknown_command_on_the_socket(postern, sink, tmp_path, sockdir):
    _, sock, _ = start_with_socket(postern, tmp_path, sink, sockdir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10 * SCALE)
        s.connect(sock)
        s.sendall(b"shutdown\n")
        answer = s.recv(4096)
    assert answer.startswith(b"error unknown command"), answer


def _plain_env():
    env = dict(os.environ)
    env.pop("RUNTIME_DIRECTORY", None)
    return env


def test_default_socket_in_the_working_directory(postern, sink):
    """Without [control] socket and outside systemd, the socket is
    ./postern-control-PORT.sock (the first listener's bound port), and
    `postern status` run there finds it."""
    p = postern.start(upstream=sink.address, env=_plain_env())
    assert p.wait_for_log("control").get("socket") == f"postern-control-{p.port}.sock"
    p.wait_for_log("started")
    r = run_cli(["status"], cwd=p.cwd)
    assert r.returncode == 0, r.stderr
    assert f"pid: {p.pid}" in r.stdout


def test_two_instances_from_one_directory_both_start(sink, tmp_path):
    """Issue 18: `postern run --listen ... --upstream ...` twice from one
    directory: both start, each with its own socket, each answering; with
    both running, `postern status` there asks for --socket (it cannot tell
    which one is meant) and names both."""
    procs = []
    try:
        for _ in range(2):
            p = PosternProcess(postern_run_args(upstream=sink.address, sets={"server.shutdown_timeout": 3}),
                               cwd=str(tmp_path), env=_plain_env())
            procs.append(p)
            p.start()
            p.wait_for_log("started")
        names = [p.wait_for_log("control").get("socket") for p in procs]
        assert names == [f"postern-control-{p.port}.sock" for p in procs], names
        assert names[0] != names[1]
        for p, name in zip(procs, names):
            r = run_cli(["status", "--socket", name], cwd=str(tmp_path))
            assert r.returncode == 0 and f"pid: {p.pid}" in r.stdout, r.stderr
        r = run_cli(["status"], cwd=str(tmp_path))
        assert r.returncode == 1 and "several postern instances" in r.stderr, r.stderr
        assert names[0] in r.stderr and names[1] in r.stderr
        procs[1].stop()
        assert not os.path.exists(tmp_path / names[1]), "the socket outlived its process"
        r = run_cli(["status"], cwd=str(tmp_path))  # one left: found without --socket
        assert r.returncode == 0 and f"pid: {procs[0].pid}" in r.stdout, r.stderr
    finally:
        for p in procs:
            if not p.stopped:
                p.stop()


def test_runtime_directory_default_and_a_real_clash(sink, tmp_path, sockdir):
    """Under systemd ($RUNTIME_DIRECTORY) the default is DIR/control.sock,
    which `postern reload` run by the unit (same environment) finds; a second
    instance given the same runtime directory is a real clash: it exits 1
    with the clear control-failed error, and the first keeps its socket."""
    env = dict(os.environ, RUNTIME_DIRECTORY=sockdir)
    first = PosternProcess(postern_run_args(upstream=sink.address, sets={"server.shutdown_timeout": 3}),
                           cwd=str(tmp_path), env=env)
    first.start()
    try:
        sock = os.path.join(sockdir, "control.sock")
        assert first.wait_for_log("control").get("socket") == sock
        r = subprocess.run([POSTERN_BIN, "status"], capture_output=True, text=True, env=env,
                           timeout=20 * SCALE, cwd=str(tmp_path))
        assert r.returncode == 0 and f"pid: {first.pid}" in r.stdout, r.stderr
        second = PosternProcess(postern_run_args(upstream=sink.address), cwd=str(tmp_path), env=env)
        second.start(wait=False)
        try:
            assert second.wait_exit(10 * SCALE) == 1
        finally:
            second.kill()
        failed = [l for l in second.lines if "control-failed" in l]
        assert failed and "already running" in failed[0], second.log_tail()
        r = run_cli(["status", "--socket", sock])
        assert f"pid: {first.pid}" in r.stdout
    finally:
        first.stop()


def test_reload_names_keys_that_need_a_restart(postern, sink, tmp_path, sockdir):
    p, sock, config = start_with_socket(postern, tmp_path, sink, sockdir)
    write_config(config, [{}], upstream=sink.address, sections={"control": {"socket": sock, "mode": "0660"}})
    r = run_cli(["reload", "--socket", sock])
    assert r.returncode == 0, r.stderr
    assert p.wait_for_log("restart-needed").get("key") == "control"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600  # unchanged until the restart
