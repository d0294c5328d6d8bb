"""pytest fixtures for postern's end-to-end tests (see harness.py).

Run one file:  POSTERN_BIN=build/postern /usr/bin/python3 -m pytest -q tests/e2e/test_relay.py
"""

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (HOSTNAME, POSTERN_BIN, PostfixSink, PosternProcess,  # noqa: E402
                     RecordingSink, close_all_clients, postern_run_args)


def pytest_sessionstart(session):
    if not (os.path.isfile(POSTERN_BIN) and os.access(POSTERN_BIN, os.X_OK)):
        raise pytest.UsageError(f"postern binary not found or not executable: {POSTERN_BIN} "
                                f"(set POSTERN_BIN)")


class PosternFactory:
    """Starts postern processes for one test and always cleans them up."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.procs = []

    def start(self, upstream=None, sets=None, config=None, listen=("127.0.0.1:0",),
              extra=(), hostname=HOSTNAME, wait=True, env=None):
        all_sets = {}
        if config is None:
            # bounded teardown: a session stuck on a peer must not hold SIGTERM for 30 s
            all_sets["server.shutdown_timeout"] = 3
            if hostname is not None:
                all_sets["server.hostname"] = hostname
        all_sets.update(sets or {})
        args = postern_run_args(upstream=upstream, sets=all_sets, config=config,
                                listen=listen, extra=extra)
        workdir = self.tmp_path / f"postern{len(self.procs)}"
        workdir.mkdir(exist_ok=True)
        proc_env = dict(os.environ)
        proc_env["TMPDIR"] = str(workdir)
        proc_env.update(env or {})
        p = PosternProcess(args, cwd=str(workdir), env=proc_env)
        self.procs.append(p)
        p.start(wait=wait)
        return p

    def cleanup(self):
        close_all_clients()
        errors = []
        for p in self.procs:
            if p.proc is None or p.stopped:
                continue
            try:
                p.stop()
            except AssertionError as e:
                errors.append(str(e))
            finally:
                p.kill()
        if errors:
            pytest.fail("postern shutdown failed:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def postern(tmp_path):
    factory = PosternFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def sink():
    s = RecordingSink().start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def make_sink():
    sinks = []

    def make(**kw):
        s = RecordingSink(**kw).start()
        sinks.append(s)
        return s

    try:
        yield make
    finally:
        for s in sinks:
            s.stop()


@pytest.fixture
def postfix_sink():
    sinks = []

    def make(options=()):
        s = PostfixSink(options).start()
        sinks.append(s)
        return s

    try:
        yield make
    finally:
        for s in sinks:
            s.stop()


@pytest.fixture
def proxy(postern, sink):
    """postern in front of the recording sink with the default settings."""
    return postern.start(upstream=sink.address)


@pytest.fixture
def redis(tmp_path):
    """A real redis-server on a free loopback port (redis_server.py)."""
    from redis_server import RedisServer
    r = RedisServer(tmp_path).start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def dkim_key():
    """example.com's DKIM key, selector s1 (dns_server.DkimKey): one per test file."""
    from dns_server import DkimKey
    return DkimKey("example.com", "s1")


@pytest.fixture
def sockdir():
    """A short directory for unix sockets (sun_path holds 108 octets; pytest's
    tmp_path is longer)."""
    d = tempfile.mkdtemp(prefix="ps", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
