"""sd_notify: postern tells the service manager READY=1 once its listeners are
bound and the MTA was probed, RELOADING=1 then READY=1 around every reload
(SIGHUP and `postern reload`, refused ones included), STOPPING=1 when it
drains. The test plays systemd: it owns the $NOTIFY_SOCKET datagram socket."""
import os
import shutil
import signal
import socket
import tempfile
import threading
import time

import pytest

from harness import SCALE, SmtpClient, check_reply, free_port, make_message, run_cli, write_config


class NotifySocket:
    """A unix datagram socket that records every sd_notify message."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sd", dir="/tmp")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []
        self.cond = threading.Condition()
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while self.running:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.cond:
                self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line))
                self.cond.notify_all()

    def wait(self, key, count=1, timeout=None):
        """Wait until `count` messages carry `key`; returns the messages so far."""
        deadline = time.monotonic() + (timeout or 10 * SCALE)
        with self.cond:
            while sum(1 for m in self.messages if key in m) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"no {count} sd_notify message(s) with {key}; got {self.messages}"
                self.cond.wait(left)
            return list(self.messages)

    def sequence(self):
        """The state keys in order (READY, RELOADING, STOPPING)."""
        with self.cond:
            return [k for m in self.messages for k in ("READY", "RELOADING", "STOPPING") if k in m]

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify():
    n = NotifySocket()
    try:
        yield n
    finally:
        n.close()


def test_ready_reload_stopping(postern, sink, tmp_path, notify):
    sockdir = tempfile.mkdtemp(prefix="sc", dir="/tmp")
    try:
        control = os.path.join(sockdir, "control.sock")
        config = write_config(tmp_path / "postern.toml", [{}], upstream=sink.address,
                              sections={"control": {"socket": control}})
        p = postern.start(config=config, env={"NOTIFY_SOCKET": notify.path})
        msgs = notify.wait("READY")
        ready = next(m for m in msgs if "READY" in m)
        assert ready["READY"] == "1"
        # READY comes after the upstream probe: its STATUS carries the result
        assert f"upstream {sink.address} reachable" in ready["STATUS"], ready
        # and after the listeners are bound: a client is served
        c = SmtpClient(p.port)
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("ready")), 250)
        c.close()
        assert notify.sequence() == ["READY"]

        # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1
        p.send_signal(signal.SIGHUP)
        msgs = notify.wait("READY", count=2)
        reloading = next(m for m in msgs if "RELOADING" in m)
        assert reloading["RELOADING"] == "1"
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert notify.sequence() == ["READY", "RELOADING", "READY"]
        assert "reloaded at" in msgs[-1]["STATUS"]

        # `postern reload`: the same pair
        r = run_cli(["reload", "--socket", control])
        assert r.returncode == 0, r.stderr
        notify.wait("READY", count=3)
        assert notify.sequence() == ["READY", "RELOADING", "READY", "RELOADING", "READY"]

        # a refused reload still ends in READY=1: the old configuration serves
        with open(config, "a") as f:
            f.write("\n[limits]\nerrors = 0\n")
        r = run_cli(["reload", "--socket", control])
        assert r.returncode == 1
        msgs = notify.wait("READY", count=4)
        assert "reload refused" in msgs[-1]["STATUS"], msgs[-1]
        assert notify.sequence()[-2:] == ["RELOADING", "READY"]

        # SIGTERM: STOPPING=1
        p.stop()
        msgs = notify.wait("STOPPING")
        assert notify.sequence()[-1] == "STOPPING"
        assert "Draining" in msgs[-1]["STATUS"]
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_ready_when_the_upstream_is_down(postern, tmp_path, notify):
    """The MTA is down at start-up: postern still becomes READY (clients get
    4xx until it is back), and says so in STATUS."""
    down = f"127.0.0.1:{free_port()}"
    postern.start(upstream=down, env={"NOTIFY_SOCKET": notify.path},
                  sets={"timeouts.upstream_connect": 2})
    msgs = notify.wait("READY")
    ready = next(m for m in msgs if "READY" in m)
    assert f"upstream {down} NOT reachable" in ready["STATUS"], ready



def test_ready_while_the_first_probe_hangs(tmp_path, notify):
    """An MTA that accepts the connection and never greets holds the first
    probe for timeouts.upstream_greeting; READY=1 must not wait that long
    (systemd's start time-out would kill postern), it comes after 10 s."""
    from harness import PosternProcess, postern_run_args
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    upstream = f"127.0.0.1:{silent.getsockname()[1]}"
    env = dict(os.environ, NOTIFY_SOCKET=notify.path)
    p = PosternProcess(postern_run_args(upstream=upstream, sets={
        "timeouts.upstream_greeting": 600, "server.shutdown_timeout": 3}), cwd=str(tmp_path), env=env)
    p.start(wait=False)
    try:
        msgs = notify.wait("READY", timeout=30 * SCALE)
        ready = next(m for m in msgs if "READY" in m)
        assert "probe still running" in ready["STATUS"], ready
        assert not p.events("upstream-capabilities") and not p.events("upstream-probe-failed")
    finally:
        p.stop()
        silent.close()
