"""A real redis-server on a free loopback port for the store's e2e tests
(test_store_redis.py, test_scale_out.py): no persistence, started and
stopped (or killed, to test an outage) by the test itself."""

import signal
import subprocess

from harness import SCALE, free_port, stop_process, wait_port

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


class RedisServer:
    def __init__(self, tmp_path, port=None):
        self.port = port or free_port()
        self.tmp_path = tmp_path
        self.proc = None
        self.log_path = tmp_path / f"redis-{self.port}.log"

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp_path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_port(self.port, 10 * SCALE)
        except OSError:
            self.stop()
            raise AssertionError("redis-server did not start:\n" + self.log_path.read_text())
        return self

    def kill(self):
        """SIGKILL: an outage as sudden as a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        stop_process(self.proc, 10)

    def cli(self, *args):
        out = subprocess.run([REDIS_CLI, "-p", str(self.port), "--raw", *args], capture_output=True,
                             text=True, timeout=10 * SCALE, stdin=subprocess.DEVNULL)
        return out.stdout.strip()

    def keys(self, pattern="*"):
        text = self.cli("KEYS", pattern)
        return sorted(k for k in text.splitlines() if k)
