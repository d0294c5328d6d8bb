"""README's quick start, as written, in the checkout (.ci/test runs this after
the Release pass, which already built build/, so command 1 only confirms it):

- command 1 (`.ci/deps --build && cmake ... && build/postern run`) starts postern
  on the embedded default, and the README's swaks command and `ls
  postern-mail/new/` show the message delivered;
- `.ci/deps --build` asks apt-get for the build and runtime packages only, none
  of the tests' (a stub apt-get records what it is asked for);
- a build directory configured with the defaults has the postern target and
  neither the tests nor the bench client.
"""

import os
import re
import signal
import socket
import subprocess
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
QUICK_START = ('.ci/deps --build && cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && '
               'cmake --build build -j"$(nproc)" && build/postern run')
TRY = ["swaks --to a@b --server 127.0.0.1:2525", "ls postern-mail/new/"]
TEST_ONLY = {"postfix", "redis-server", "redis-tools", "clang", "catch2", "python3-pytest", "python3-aiosmtpd",
             "unbound", "haproxy", "python3-dkim", "python3-dnslib", "lintian", "debhelper"}


def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_readme_prints_these_commands():
    text = readme()
    assert QUICK_START in text
    for c in TRY:
        assert c in text


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason=".ci/deps --build may need sudo")
def test_quick_start_as_written():
    assert not port_open(2525), "something already listens on 127.0.0.1:2525"
    maildir = os.path.join(ROOT, "postern-mail", "new")
    before = set(os.listdir(maildir)) if os.path.isdir(maildir) else set()
    proc = subprocess.Popen(["bash", "-c", QUICK_START], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                            text=True)
    try:
        deadline = time.monotonic() + 900        # a build from scratch included
        while not port_open(2525):
            assert proc.poll() is None, f"quick start ended with {proc.returncode}:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "postern did not start listening on 127.0.0.1:2525"
            time.sleep(0.2)
        r = subprocess.run(["bash", "-c", TRY[0]], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert re.search(r"^<-  250 2\.0\.0 Ok: queued", r.stdout, re.M), r.stdout
        r = subprocess.run(["bash", "-c", TRY[1]], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        new = set(r.stdout.split()) - before
        assert len(new) == 1, f"ls postern-mail/new/ shows no new message: {r.stdout}"
        with open(os.path.join(maildir, new.pop()), "rb") as f:
            message = f.read()
        assert b"To: a@b" in message and b"(postern)" in message, message[:500]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_deps_build_installs_no_test_dependency(tmp_path):
    """.ci/deps --build with every package missing: what it asks apt-get for."""
    stub = tmp_path / "bin"
    stub.mkdir()
    record = tmp_path / "apt-args"
    (stub / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")
    (stub / "debconf-set-selections").write_text("#!/bin/sh\ncat >/dev/null\n")
    (stub / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    (stub / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    for f in stub.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{stub}:{os.environ['PATH']}")

    def asked(*args):
        record.write_text("")
        r = subprocess.run([os.path.join(ROOT, ".ci", "deps"), *args], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        install = [l for l in record.read_text().splitlines() if l.split()[0:1] == ["install"] or " install " in l]
        assert install, record.read_text()
        return set(install[-1].split()) - {"install", "-y", "-qq", "--no-install-recommends"}

    build = asked("--build")
    assert {"cmake", "libssl-dev", "liblua5.4-dev", "libspf2-dev", "libsystemd-dev"} <= build, build
    assert not build & TEST_ONLY, f".ci/deps --build installs test dependencies: {build & TEST_ONLY}"
    everything = asked()
    assert build < everything and TEST_ONLY <= everything, everything - build
    # bench/run's peers only with --bench: no test uses them, CI does not install them.
    bench = asked("--bench")
    peers = {"rspamd", "proxsmtp"}
    assert everything < bench and peers <= bench, bench - everything
    assert not peers & everything, f".ci/deps (CI) installs bench peers: {peers & everything}"


def test_default_build_is_the_daemon_only(tmp_path):
    build = tmp_path / "build"
    r = subprocess.run(["cmake", "-S", ROOT, "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    targets = subprocess.run(["cmake", "--build", str(build), "--target", "help"], capture_output=True,
                             text=True, timeout=60).stdout
    assert re.search(r"^\.\.\. postern$", targets, re.M), targets
    for target in ("postern_unit_tests", "postern-bench-load"):
        assert target not in targets, f"the default build has {target}"
    assert not (build / "CTestTestfile.cmake").exists() or "add_test" not in (build / "CTestTestfile.cmake").read_text()


def readme_sh_lines(after_heading):
    """The command lines of the ```sh blocks in README's section `after_heading`."""
    text = readme()
    section = text.split(f"## {after_heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S):
        lines += [l for l in block.split("\n") if l.strip() and not l.startswith("#")]
    return lines


@pytest.mark.skipif(os.geteuid() != 0, reason="binds port 25")
def test_in_front_of_a_real_mta_commands():
    """README's `build/postern run --listen 0.0.0.0:25 --upstream 127.0.0.1:10025`
    starts and listens there; `build/postern --help` prints the usage; the
    `config check` line is run on the installed file by test_deb.py."""
    run_line, help_line, check_line = readme_sh_lines("In front of a real MTA")
    assert run_line == "build/postern run --listen 0.0.0.0:25 --upstream 127.0.0.1:10025"
    assert check_line == "build/postern config check /etc/postern/postern.toml"
    r = subprocess.run(["bash", "-c", help_line], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("postern - "), r.stdout + r.stderr
    if port_open(25):
        pytest.skip("port 25 is taken on this machine")
    proc = subprocess.Popen(["bash", "-c", "exec " + run_line], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not port_open(25):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no listener on port 25"
            time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", 25), timeout=10) as s:
            assert s.recv(512).startswith(b"220 "), "no greeting on port 25"
    finally:
        proc.terminate()
        proc.wait(30)
