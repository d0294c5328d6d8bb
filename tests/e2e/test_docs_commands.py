"""Every command README.md and docs/*.md print for a user to copy is run by a
test as written, or named below with the reason it cannot be.

- The inventory: each command of a command block (doc_commands.py says which
  blocks those are) is either in RUN_BY, with the test that runs it, or in
  EXEMPT, with why no test can; a new command in the docs fails this file
  until it is one or the other, and so does an entry no doc prints any more
  or a test that does not exist.
- docs/scale-out.md's "Check it" commands, run here against the guide's own
  configuration (a real HAProxy, two postern instances, a real Redis with the
  guide's password): `haproxy -c -f` on the guide's haproxy.cfg, its swaks
  through HAProxy (greylisted, as its comment says), and its redis-cli scan
  listing the rate-limit counter and the greylisting triplet. Addresses only
  are moved to loopback, as for every swaks command (test_docs_examples.py).
- docs/authentication.md's spf_suite.py commands.
"""

import os
import re
import shlex
import subprocess

import pytest

import doc_commands
from harness import SCALE, free_port, wait_port, wait_until
from redis_server import REDIS_SERVER

ROOT = doc_commands.ROOT

E2E = "tests/e2e"
PKG = "tests/package"
DOCS_EXAMPLES = f"{E2E}/test_docs_examples.py"
DEB = f"{PKG}/test_deb.py"
QUICK = f"{PKG}/test_quickstart.py"
PKG_DOCS = f"{PKG}/test_docs_commands.py"
HERE = f"{E2E}/test_docs_commands.py"

# command as printed (without a trailing "# comment") -> the test that runs it.
# Tests of tests/package run as root in CI (.ci/test), on the installed package.
RUN_BY = {
    # README.md
    '.ci/deps --build && cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j"$(nproc)" '
    '&& build/postern run': f"{QUICK}::test_quick_start_as_written",
    "ls postern-mail/new/": f"{QUICK}::test_quick_start_as_written",
    ".ci/deps --deb && dpkg-buildpackage -b -us -uc": f"{PKG}/conftest.py::deb",
    "apt-get install ../postern_*_amd64.deb": f"{DEB}::test_install_verify_purge",
    "build/postern run --listen 0.0.0.0:25 --upstream 127.0.0.1:10025":
        f"{QUICK}::test_in_front_of_a_real_mta_commands",
    "build/postern --help": f"{QUICK}::test_in_front_of_a_real_mta_commands",
    "build/postern config check /etc/postern/postern.toml": f"{PKG_DOCS}::test_docs_commands_on_the_installed_package",
    # configuration.md, audit-only.md, deploy-postfix.md, first-rule.md
    "postern config check /etc/postern/postern.toml": f"{PKG_DOCS}::test_docs_commands_on_the_installed_package",
    "postern run --config /etc/postern/postern.toml": f"{PKG_DOCS}::test_docs_commands_on_the_installed_package",
    # audit-only.md, authentication.md: on the audit log the installed postern wrote
    "postern report /var/log/postern/audit.jsonl": f"{PKG_DOCS}::test_docs_commands_on_the_installed_package",
    "postern report /var/log/postern/audit.jsonl --html /tmp/postern-report.html":
        f"{PKG_DOCS}::test_docs_commands_on_the_installed_package",
    "jq -c 'select(.score >= 15) | {from: .mail_from, to: .rcpt_to, score, symbols: [.symbols[].name]}' "
    "/var/log/postern/audit.jsonl": f"{PKG_DOCS}::test_docs_commands_on_the_installed_package",
    "postern report /var/log/postern/audit.jsonl --html report.html":
        f"{PKG_DOCS}::test_docs_commands_on_the_installed_package",
    "/usr/bin/python3 tests/e2e/spf_suite.py --postern build/postern": f"{HERE}::test_spf_suite_commands",
    "/usr/bin/python3 tests/e2e/spf_suite.py --postern build/postern --suite rfc4408 -v mx-limit spfonly":
        f"{HERE}::test_spf_suite_commands",
    # first-rule.md
    "postern test /etc/postern/tests/verify_account.toml": f"{PKG_DOCS}::test_docs_commands_on_the_installed_package",
    "kill -HUP $(pidof postern)": f"{PKG_DOCS}::test_docs_commands_on_the_installed_package",
    "postern reload": f"{PKG_DOCS}::test_docs_commands_on_the_installed_package",
    # operations.md
    "postern reload -c /etc/postern/postern.toml": f"{DEB}::test_install_verify_purge",
    "postern status -c /etc/postern/postern.toml": f"{DEB}::test_install_verify_purge",
    "postern status --json --socket /run/postern/control.sock": f"{DEB}::test_install_verify_purge",
    "postern reload --socket /run/postern/control.sock": f"{PKG_DOCS}::test_docs_commands_on_the_installed_package",
    "cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr -DPOSTERN_BUILD_MAN=ON":
        f"{PKG_DOCS}::test_install_without_the_package",
    'cmake --build build -j"$(nproc)" && cmake --install build': f"{PKG_DOCS}::test_install_without_the_package",
    "systemd-sysusers postern.conf": f"{PKG_DOCS}::test_install_without_the_package",
    "xargs rm -f < build/install_manifest.txt": f"{PKG_DOCS}::test_install_without_the_package",
    # scale-out.md
    "haproxy -c -f /etc/haproxy/haproxy.cfg": f"{HERE}::test_scale_out_check_commands",
    "redis-cli -h 10.0.0.5 -a change-me --scan --pattern 'postern:*'": f"{HERE}::test_scale_out_check_commands",
}
# Every swaks command of every file, its --server moved to a postern on loopback.
RUN_BY_PROGRAM = {"swaks": f"{DOCS_EXAMPLES}::test_docs_swaks_command_runs_as_written"}

# Commands that need systemd as PID 1 (a booted host): the tests named run them
# as written there, and on a CI container without it check what can be
# checked without a running systemd (systemd-analyze verify, systemctl enable
# offline, the daemon started as the unit starts it).
SYSTEMD = {
    "systemctl status postern": f"{PKG_DOCS}::test_docs_commands_on_the_installed_package",
    "systemctl reload postern": f"{PKG_DOCS}::test_docs_commands_on_the_installed_package",
    "systemctl daemon-reload": f"{PKG_DOCS}::test_install_without_the_package",
    "systemctl enable --now postern": f"{PKG_DOCS}::test_install_without_the_package",
    "systemctl disable --now postern": f"{PKG_DOCS}::test_install_without_the_package",
}

# Commands no test runs, and why.
EXEMPT = {
    # README.md: it is the test run itself; .ci/run is exactly this line (checked below)
    ".ci/deps && .ci/test": "the whole test run: CI runs exactly this (.ci/run)",
    # authentication.md: a ctest of this very suite (e2e_test_spf_suite)
    "ctest --test-dir build -R e2e_test_spf_suite": "runs tests/e2e/test_spf_suite.py, a test of this suite",
    # authentication.md: the same command, options and output shape are run by
    # test_dmarc_report.py::test_reports_from_real_traffic_are_valid_named_and_sent_to_verified_rua
    # (private config, DNS, upstream); as written it mails real rua= owners from a host's audit log
    "postern report dmarc --config /etc/postern/postern.toml --from 2026-12-05 --to 2026-12-06 --send":
        "mails the real rua= addresses of the domains in the host's audit log of that day",
}
# Whole languages no test can run here.
EXEMPT_LANGS = {
    # deploy-exchange.md: Exchange Management Shell cmdlets, on the Exchange server
    "powershell": "Exchange cmdlets: Exchange runs on Windows Server, not on the Debian CI",
}


def classify(c):
    if c.lang in EXEMPT_LANGS:
        return "exempt", EXEMPT_LANGS[c.lang]
    found = [(kind, table[c.command]) for kind, table in (("run", RUN_BY), ("systemd", SYSTEMD), ("exempt", EXEMPT))
             if c.command in table]
    program = c.command.split()[0]
    if program in RUN_BY_PROGRAM:
        found.append(("run", RUN_BY_PROGRAM[program]))
    assert len(found) <= 1, f"{c.name}: {c.command!r} is listed twice: {found}"
    return found[0] if found else (None, None)


COMMANDS = doc_commands.all_commands()


def test_the_docs_have_commands():
    assert len(COMMANDS) >= 40, [c.name for c in COMMANDS]
    assert {c.path for c in COMMANDS} >= {"README.md", "docs/operations.md", "docs/first-rule.md",
                                          "docs/scale-out.md", "docs/authentication.md"}


def test_every_command_is_run_or_exempt():
    unlisted = [f"{c.name}: {c.command}" for c in COMMANDS if classify(c)[0] is None]
    assert not unlisted, ("commands of the docs no test runs and no exemption names (add a test and list it in "
                          "RUN_BY, or say in EXEMPT why it cannot run):\n" + "\n".join(unlisted))


def test_no_entry_is_stale():
    printed = {c.command for c in COMMANDS}
    stale = [k for table in (RUN_BY, SYSTEMD, EXEMPT) for k in table if k not in printed]
    assert not stale, f"listed, but no doc prints them any more: {stale}"


def test_the_tests_named_exist():
    named = set(RUN_BY.values()) | set(SYSTEMD.values()) | set(RUN_BY_PROGRAM.values())
    missing = []
    for ref in sorted(named):
        path, func = ref.split("::")
        try:
            with open(os.path.join(ROOT, path)) as f:
                text = f.read()
        except FileNotFoundError:
            missing.append(ref)
            continue
        if not re.search(rf"^def {re.escape(func)}\(", text, re.M):
            missing.append(ref)
    assert not missing, missing


def test_exempt_ci_line_is_what_ci_runs():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert ".ci/deps && .ci/test" in f.read()


def test_inventory_catches_an_unlisted_command(tmp_path, monkeypatch):
    """The check above can fail: a command added to a guide is reported."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("```sh\npostern config check /etc/postern/postern.toml\n```\n")
    (tmp_path / "docs" / "new.md").write_text("Run:\n\n```sh\n# a comment\npostern frobnicate \\\n  --now\n"
                                              "postern reload    # or: postern explode\n```\n\n"
                                              "```\n$ postern status\npostern 0.1.0\n```\n")
    monkeypatch.setattr(doc_commands, "ROOT", str(tmp_path))
    found = doc_commands.all_commands()
    assert [(c.name, c.command) for c in found] == [
        ("README.md:2", "postern config check /etc/postern/postern.toml"),
        ("docs/new.md:5", "postern frobnicate --now"),
        ("docs/new.md:7", "postern reload"),
        ("docs/new.md:7", "postern explode"),
        ("docs/new.md:11", "postern status")], [(c.name, c.command) for c in found]
    assert found[-1].output == ["postern 0.1.0"]
    assert [c.command for c in found if classify(c)[0] is None] == ["postern frobnicate --now", "postern explode",
                                                                    "postern status"]


# ---------------------------------------------------------------- docs/scale-out.md, "4. Check it"

SCALE_OUT = "docs/scale-out.md"
HAPROXY = "/usr/sbin/haproxy"


def scale_out_config(tmp_path, sink, redis_port, name):
    """The guide's postern.toml for one instance, its addresses on loopback."""
    from test_docs_examples import materialize, replace_once
    text = doc_commands.block(SCALE_OUT, "# /etc/postern/postern.toml (the parts that matter here)")
    smtp, metrics = free_port(), free_port()
    for old, new in (('"10.0.0.11:2525"', f'"127.0.0.1:{smtp}"'), ('["10.0.0.2/32"]', '["127.0.0.1/32"]'),
                     ('"10.0.0.11:9425"', f'"127.0.0.1:{metrics}"'), ('"10.0.0.20:25"', f'"{sink.address}"'),
                     ('"10.0.0.5:6379"', f'"127.0.0.1:{redis_port}"')):
        text = replace_once(text, old, new)
    d = tmp_path / name
    d.mkdir()
    path = d / "postern.toml"
    path.write_text(materialize(text, d, (None, None)))
    return path, smtp, metrics


def scale_out_haproxy(tmp_path, servers):
    """The guide's haproxy.cfg (section 3), its addresses on loopback and a
    global section with no syslog; the rest as printed."""
    text = doc_commands.block(SCALE_OUT, "defaults")
    port = free_port()
    out = []
    for line in text.split("\n"):
        s = line.strip()
        if s == "bind :25":
            line = f"    bind 127.0.0.1:{port}"
        if s.startswith("server "):
            continue
        out.append(line)
        if s.startswith("default-server"):
            out += [f"    server postern{i + 1} 127.0.0.1:{smtp} check port {metrics}"
                    for i, (smtp, metrics) in enumerate(servers)]
    path = tmp_path / "haproxy.cfg"
    path.write_text("global\n    maxconn 64\n\n" + "\n".join(out) + "\n")
    return path, port


def healthy(port):
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def with_server(argv, option, value):
    argv = list(argv)
    argv[argv.index(option) + 1] = value
    return argv


def test_scale_out_check_commands(postern, make_sink, tmp_path):
    assert os.access(HAPROXY, os.X_OK), f"{HAPROXY} is missing (Debian package haproxy)"
    redis_port = free_port()
    redis = subprocess.Popen([REDIS_SERVER, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", "change-me"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    haproxy = None
    try:
        wait_port(redis_port, 10 * SCALE)
        sink = make_sink()
        servers = []
        for name in ("postern1", "postern2"):
            path, smtp, metrics = scale_out_config(tmp_path, sink, redis_port, name)
            postern.start(config=path, listen=()).wait_for_log("started")
            servers.append((smtp, metrics))
        cfg, port = scale_out_haproxy(tmp_path, servers)

        check = shlex.split(doc_commands.command(SCALE_OUT, "haproxy -c -f /etc/haproxy/haproxy.cfg").command)
        r = subprocess.run(with_server(check, "-f", str(cfg)), capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "Configuration file is valid" in r.stdout + r.stderr, r.stdout + r.stderr
        broken = tmp_path / "broken.cfg"
        broken.write_text(cfg.read_text().replace("balance leastconn", "balance leastconnn"))
        r = subprocess.run(with_server(check, "-f", str(broken)), capture_output=True, text=True, timeout=30)
        assert r.returncode != 0, "haproxy -c accepts a misspelt balance algorithm"

        haproxy = subprocess.Popen([HAPROXY, "-f", str(cfg), "-db"], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_port(port, 10 * SCALE)
        # both instances healthy (their MTA probed) before the first message
        wait_until(lambda: all(healthy(m) for _, m in servers), 10 * SCALE, message="/healthz of both instances")
        swaks = doc_commands.commands(SCALE_OUT, "swaks")[0]
        assert "451 4.7.1" in swaks.comment, swaks.comment
        r = subprocess.run(with_server(shlex.split(swaks.command), "--server", f"127.0.0.1:{port}"),
                           capture_output=True, text=True, timeout=60 * SCALE)
        assert re.search(r"^<\*\* 451 4\.7\.1 ", r.stdout, re.M), r.stdout + r.stderr
        assert not sink.messages

        scan = doc_commands.command(SCALE_OUT, "redis-cli -h 10.0.0.5 -a change-me --scan --pattern 'postern:*'")
        argv = with_server(shlex.split(scan.command), "-h", "127.0.0.1")
        argv[argv.index("-h") + 2:argv.index("-h") + 2] = ["-p", str(redis_port)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        keys = r.stdout.split()
        assert any(re.fullmatch(r"postern:rate:ip:127\.0\.0\.1:\d+", k) for k in keys), keys
        assert any(k.startswith("postern:grey:127.0.0|") and "postmaster@example.org" in k for k in keys), keys
    finally:
        for p in (haproxy, redis):
            if p and p.poll() is None:
                p.terminate()
                p.wait(10)


# ---------------------------------------------------------------- docs/authentication.md, the SPF suites

AUTH = "docs/authentication.md"


def test_spf_suite_commands():
    """Both commands from a checkout with build/postern (ROOT/build, as the
    guide assumes); the whole RFC 7208 suite passes, and the two RFC 4408 tests
    named show their result line."""
    postern_bin = os.path.join(ROOT, "build", "postern")
    if not os.access(postern_bin, os.X_OK):
        pytest.skip("no build/postern in the checkout (the guide's commands run from a build)")
    whole, some = [c for c in doc_commands.commands(AUTH, "/usr/bin/python3")]
    r = subprocess.run(whole.command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=600 * SCALE)
    assert r.returncode == 0 and re.search(r"^rfc7208: (\d+) of \1 pass$", r.stdout, re.M), r.stdout + r.stderr
    r = subprocess.run(some.command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300 * SCALE)
    assert r.returncode == 0 and "rfc4408: 2 of 2 pass" in r.stdout, r.stdout + r.stderr
    for name in ("mx-limit", "spfonly"):
        assert re.search(rf"^{name}\s+\S+\s+ok$", r.stdout, re.M), r.stdout
