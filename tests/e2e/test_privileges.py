"""Privilege drop: started as root with [server] user = "nobody", postern binds
a port below 1024, then runs with nobody's user and group IDs (real,
effective, saved, filesystem; no capabilities), still relays mail, and the
files it creates (spool, quarantine, control socket) are 0600. Not run
as root, the test checks what can be checked without root: server.user
naming another account is refused with a clear error, naming one's own
account is accepted."""
import grp
import os
import pwd
import shutil
import socket
import stat
import tempfile

import pytest

from harness import (SCALE, PosternProcess, SmtpClient, check_reply, make_message, postern_run_args,
                     run_cli, wait_until, write_config)

RULE = """postern.rule{ name = "QUARANTINE_ME", stage = "eom", fn = function(ctx)
  if (ctx.headers:first("Subject") or ""):find("quarantine-me", 1, true) then
    return postern.quarantine("test")
  end
end }
"""


def free_low_port():
    """A port below 1024 on 127.0.0.1 that nothing listens on (root only)."""
    for port in range(700, 1024):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.fail("no free port below 1024")


def proc_ids(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split()[1:]
    raise KeyError(key)


@pytest.fixture
def base():
    """A directory tree nobody can use (pytest's tmp_path is root's 0700)."""
    d = tempfile.mkdtemp(prefix="priv", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def owned_dir(base, name, uid, gid):
    path = os.path.join(base, name)
    os.mkdir(path, 0o700)
    os.chown(path, uid, gid)
    return path


def fd_targets(pid):
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[f"/proc/{pid}/fd/{fd}"] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


def test_drop_to_nobody(postern, sink, base, tmp_path):
    if os.geteuid() != 0:
        # Not root (CI and this project's machines are): what can be checked
        # without root is that the switch is refused, loudly.
        refused_without_root(sink, tmp_path)
        return
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrgid(nobody.pw_gid).gr_name
    uid, gid = nobody.pw_uid, nobody.pw_gid
    work = owned_dir(base, "work", uid, gid)
    spool = owned_dir(base, "spool", uid, gid)
    quarantine = os.path.join(owned_dir(base, "q", uid, gid), "maildir")
    rules = os.path.join(base, "rules.lua")
    with open(rules, "w") as f:
        f.write(RULE)
    os.chmod(rules, 0o644)
    port = free_low_port()
    config = write_config(os.path.join(base, "postern.toml"), [{"address": f"127.0.0.1:{port}"}],
                          upstream=sink.address, sections={
                              "server": {"user": "nobody", "group": nogroup},
                              "data": {"spool_dir": spool, "spool_memory": 0},
                              "quarantine": {"dir": quarantine},
                              "log": {"output": "stderr"},
                              "lua": {"scripts": [rules]},
                              "control": {"socket": os.path.join(base, "control.sock")},
                          })
    os.chmod(config, 0o644)
    p = PosternProcess(postern_run_args(config=config, listen=()), cwd=work)
    p.start()
    try:
        assert p.port == port
        p.wait_for_log("privileges-dropped", user="nobody")
        p.wait_for_log("started")
        assert not p.events("running-as-root")
        # every user and group ID is nobody's; no capability is left
        assert proc_ids(p.pid, "Uid") == [str(uid)] * 4
        assert proc_ids(p.pid, "Gid") == [str(gid)] * 4
        assert "0" not in proc_ids(p.pid, "Groups")
        assert proc_ids(p.pid, "CapEff") == ["0000000000000000"]
        assert proc_ids(p.pid, "CapPrm") == ["0000000000000000"]

        # a message relays, through a spool file (spool_memory = 0)
        c = SmtpClient(port)
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("relayed")), 250)
        assert sink.wait_messages(1)

        # the spool file of a message on its way: 0600, nobody's
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(b"Subject: slow\r\n\r\n" + (b"x" * 76 + b"\r\n") * 1000)
        spooled = wait_until(lambda: [fd for fd, target in fd_targets(p.pid).items() if target.startswith(spool)],
                             10 * SCALE, message="a spool file under data.spool_dir")
        st = os.stat(spooled[0])
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == uid, (oct(st.st_mode), st.st_uid)
        c.send(b".\r\n")
        check_reply(c.read_reply(), 250)

        # quarantine: the Maildir file is 0600, nobody's
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("quarantine-me")), 250)
        c.close()
        new = os.path.join(quarantine, "new")
        files = wait_until(lambda: os.path.isdir(new) and os.listdir(new), 10 * SCALE,
                           message="a quarantined message")
        st = os.stat(os.path.join(new, files[0]))
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == uid

        # the control socket is nobody's, and a reload (re-reading the rules as nobody) works
        st = os.stat(os.path.join(base, "control.sock"))
        assert st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o600
        r = run_cli(["reload", "-c", config])
        assert r.returncode == 0, r.stderr
    finally:
        p.stop()


def test_root_without_user_warns(postern, sink):
    """Like Postfix, postern runs as root when told nothing, and says so."""
    p = postern.start(upstream=sink.address)
    p.wait_for_log("started")
    if os.geteuid() == 0:
        w = p.wait_for_log("running-as-root")
        assert "server" in w.get("hint") and "user" in w.get("hint")
    else:
        assert not p.events("running-as-root")
        assert not p.events("privileges-dropped")


def test_without_root_server_user_is_checked(postern, sink, tmp_path):
    """Runs as root too: another user than the current one needs root to
    switch to; the current user's own name is accepted (systemd User=)."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    p = postern.start(upstream=sink.address, sets={"server.user": me})
    p.wait_for_log("started")
    assert proc_ids(p.pid, "Uid")[0] == str(os.geteuid())
    # a user that does not exist: refused at configuration time with file:line
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nuser = "no-such-user-postern"\n')
    r = run_cli(["config", "check", str(bad)])
    assert r.returncode == 1 and f"{bad}:2:" in r.stderr and "no such user" in r.stderr


def refused_without_root(sink, tmp_path):
    """Not root: switching to another account is refused with a clear error."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    other = "nobody" if me != "nobody" else "root"
    q = PosternProcess(postern_run_args(upstream=sink.address, sets={"server.user": other}), cwd=str(tmp_path))
    q.start(wait=False)
    try:
        assert q.wait_exit(10 * SCALE) == 1
    finally:
        q.kill()
    assert [l for l in q.lines if "privileges" in l and "needs postern to start as root" in l], q.lines


def test_log_file_after_the_drop(sink, base, tmp_path):
    """The log file opened as root is handed to nobody: after logrotate
    renamed it, the reload re-creates it as nobody, 0600."""
    if os.geteuid() != 0:
        refused_without_root(sink, tmp_path)
        return
    nobody = pwd.getpwnam("nobody")
    logs = owned_dir(base, "log", nobody.pw_uid, nobody.pw_gid)
    path = os.path.join(logs, "postern.log")
    control = os.path.join(base, "control.sock")
    p = PosternProcess(postern_run_args(upstream=sink.address, sets={
        "server.user": "nobody", "log.output": f"file:{path}", "control.socket": control,
        "server.shutdown_timeout": 3}), cwd=owned_dir(base, "work", nobody.pw_uid, nobody.pw_gid))
    p.start(wait=False)
    try:
        wait_until(lambda: os.path.exists(path) and "privileges-dropped" in open(path).read(), 10 * SCALE,
                   message="privileges-dropped in the log file")
        st = os.stat(path)
        assert st.st_uid == nobody.pw_uid and stat.S_IMODE(st.st_mode) == 0o600
        os.rename(path, path + ".1")
        wait_until(lambda: os.path.exists(control), 10 * SCALE, message="the control socket")
        r = run_cli(["reload", "--socket", control])
        assert r.returncode == 0, r.stderr
        wait_until(lambda: os.path.exists(path) and "reloaded" in open(path).read(), 10 * SCALE,
                   message="reloaded in the new log file")
        st = os.stat(path)
        assert st.st_uid == nobody.pw_uid and stat.S_IMODE(st.st_mode) == 0o600
    finally:
        p.stop()
