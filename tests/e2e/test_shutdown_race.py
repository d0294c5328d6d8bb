"""SIGTERM and SIGHUP reload while connections keep arriving (issue 18, point 2).

The race: a listener's accept loop hands a fresh socket to another I/O thread
and ends at SIGTERM; a session that had not started yet on its thread read
the listener through a reference into the ended loop's frame (heap
use-after-free, ASan, about 1 run in 8). Each round here starts postern with
four I/O threads, keeps several clients connecting as fast as they can
(connect, greeting, QUIT, and some mid-dialogue drops), reloads it with
SIGHUP a few times under that load, then sends SIGTERM while the
connections still pour in. postern must exit 0 every time, and, when the
binary is an ASan+UBSan build (build-asan), with no sanitizer report
(PosternProcess.stop() checks stderr). Run it against the ASan binary:

  POSTERN_BIN=build-asan/postern /usr/bin/python3 -m pytest -q test_shutdown_race.py
"""
import signal
import socket
import threading
import time

from harness import SCALE

ROUNDS = 25


class Hammer:
    """Threads that connect to `port` without pause until stop()."""

    def __init__(self, port, threads=6):
        self.port = port
        self.stop_event = threading.Event()
        self.connections = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, n):
        i = 0
        while not self.stop_event.is_set():
            i += 1
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            except OSError:
                time.sleep(0.005)  # refused once the listener closed: keep trying until stop()
                continue
            try:
                s.settimeout(2)
                if (i + n) % 3 == 0:
                    s.close()  # gone before the session even starts
                    continue
                s.recv(512)
                s.sendall(b"EHLO race.example\r\n" if i % 2 else b"QUIT\r\n")
                s.recv(512)
            except OSError:
                pass
            finally:
                s.close()
                with self.lock:
                    self.connections += 1

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=10 * SCALE)


def test_sigterm_and_reload_under_connection_load(postern, sink):
    for round_ in range(ROUNDS):
        p = postern.start(upstream=sink.address,
                          sets={"server.threads": 4, "limits.sessions_per_ip": 0,
                                "server.shutdown_timeout": 2})
        hammer = Hammer(p.port).start()
        try:
            for _ in range(3):
                time.sleep(0.1)
                p.send_signal(signal.SIGHUP)
            p.wait_for_log("reloaded", count=3, timeout=10 * SCALE)
            time.sleep(0.1)
            assert hammer.connections > 0, "no connection was made before SIGTERM"
            # stop() sends SIGTERM while the hammer still runs, asserts exit 0
            # and no sanitizer line in stderr
            p.stop(timeout=15 * SCALE)
        finally:
            hammer.stop()
        assert p.events("shutdown"), f"round {round_}: no shutdown line\n" + p.log_tail()
