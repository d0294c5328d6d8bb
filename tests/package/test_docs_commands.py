"""The guides' commands that need the installed postern, run as written, as
root (.ci/test runs tests/package after the Release pass; CI is root). The
inventory of every documented command is tests/e2e/test_docs_commands.py.

test_docs_commands_on_the_installed_package, on the package:
- every `postern config check /etc/postern/postern.toml` (configuration.md,
  audit-only.md, deploy-postfix.md, first-rule.md; README's with the
  checkout's build/postern), and deploy-postfix.md's `postern run --config`;
- docs/first-rule.md from start to end: its .luarc.json names the installed
  annotations, its rule, message and fixture saved
  where it says, its [lua] block added to the configuration, `postern test`
  printing exactly the guide's output, the rule refusing the phishing live,
  and `kill -HUP $(pidof postern)` / `postern reload` reloading it (postern
  runs in a PID namespace of its own, so that pidof finds it and no other);
- docs/operations.md's refused reload, both ways, printing the guide's lines;
- docs/audit-only.md and docs/authentication.md on the audit log the running
  postern wrote: `postern report` (table, --html), the jq query, and log
  rotation by the shipped /etc/logrotate.d/postern and by the guide's block
  for the audit log alone (the file moved, postern writing the new one);
- `systemctl status postern` / `reload` where systemd is the init.

test_install_without_the_package: docs/operations.md's `cmake --install`
block in a copy of the checkout, into /usr: the files in place,
`systemd-sysusers postern.conf` makes the user, `systemd-analyze verify`
accepts the unit, postern runs as the unit runs it, and the guide's removal
leaves none of the files (`systemctl` lines as written where systemd is the
init; without it, `systemctl enable` as far as it works offline).
"""

import glob
import gzip
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from debtools import (ROOT, UnitLike, copy_checkout, doc_commands, install_deb, installed, maildir_new, port_open,
                      purge_deb, run, version, wait_port)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs postern: needs root (CI is root)")

CONFIG = "/etc/postern/postern.toml"
AUDIT = "/var/log/postern/audit.jsonl"
SYSTEMD_BOOTED = os.path.isdir("/run/systemd/system")
FIRST_RULE = "docs/first-rule.md"
AUTH = "docs/authentication.md"
AUDIT_ONLY = "docs/audit-only.md"
OPERATIONS = "docs/operations.md"


def cmd(path, text):
    return doc_commands.command(path, text).command


def swaks(subject, to="bob@example.com"):
    return run(["swaks", "--to", to, "--from", "service@bank.example", "--server", "127.0.0.1:2525",
                "--header", f"Subject: {subject}"], check=False)


def audit_lines(path=AUDIT):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(l) for l in f if l.strip()]


def wait_for(predicate, what, seconds=15):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def check_config_everywhere():
    for doc in ("docs/configuration.md", AUDIT_ONLY, "docs/deploy-postfix.md", FIRST_RULE):
        r = run(cmd(doc, "postern config check /etc/postern/postern.toml"))
        assert r.stdout.strip() == f"{CONFIG}: ok", (doc, r.stdout, r.stderr)


def first_rule_files():
    """The guide's rule, message, fixture and [lua] block, where it says to put them."""
    os.makedirs("/etc/postern/rules", exist_ok=True)
    os.makedirs("/etc/postern/tests", exist_ok=True)
    rule = doc_commands.block(FIRST_RULE, '-- Refuses phishing that asks the reader to "verify your account".')
    with open("/etc/postern/rules/50_verify_account.lua", "w") as f:
        f.write(rule)
    with open("/etc/postern/tests/phish.eml", "w") as f:
        f.write(doc_commands.block(FIRST_RULE, 'From: "Bank" <service@bank.example>'))
    with open("/etc/postern/tests/verify_account.toml", "w") as f:
        f.write(doc_commands.block(FIRST_RULE, "# fragment: a postern test fixture, not a configuration"))
    # a rule of the test's own, so that audit-only.md's jq query (score >= 15) has an answer
    # (the shipped [scores] reject = 15 refuses that message; the audit log has it all the same)
    with open("/etc/postern/rules/90_docs_test.lua", "w") as f:
        f.write('postern.rule{ name = "DOCS_TEST_LOTTERY", stage = "data", score = 16, fn = function(ctx)\n'
                '  if (ctx.headers:first("Subject") or ""):find("lottery", 1, true) then return true end\nend }\n')
    lua = doc_commands.block(FIRST_RULE, "# /etc/postern/postern.toml")
    with open(CONFIG, "a") as f:
        f.write("\n" + lua + "\n[audit]\npath = \"/var/log/postern/audit.jsonl\"\nrotate_size = 0   "
                "# logrotate moves it (docs/authentication.md)\n")


def test_docs_commands_on_the_installed_package(deb, tmp_path):
    install_deb()
    daemon = None
    try:
        check_config_everywhere()
        # README's line, with the checkout's own build (.ci/test built it before this tier)
        readme = cmd("README.md", "build/postern config check /etc/postern/postern.toml")
        assert os.access(os.path.join(ROOT, "build", "postern"), os.X_OK), "no build/postern in the checkout"
        r = run(readme, cwd=ROOT)
        assert r.stdout.strip() == f"{CONFIG}: ok", r.stdout + r.stderr

        # deploy-postfix.md: postern run --config, in the foreground (here as root, from /var/lib/postern)
        os.makedirs("/var/lib/postern", exist_ok=True)
        assert not port_open(2525), "something already listens on 127.0.0.1:2525"
        proc = subprocess.Popen(["bash", "-c", "exec " + cmd("docs/deploy-postfix.md", f"postern run --config {CONFIG}")],
                                cwd="/var/lib/postern", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
        try:
            wait_port(2525, proc)
        finally:
            proc.terminate()
            out = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0 and "listening address=127.0.0.1:2525" in out, out

        # docs/first-rule.md
        luarc = json.loads(doc_commands.block(FIRST_RULE, '{ "runtime.version": "Lua 5.4", "workspace.library": '
                                                          '["/usr/share/postern/scripts/types"] }'))
        (types,) = luarc["workspace.library"]
        assert os.path.isfile(os.path.join(types, "postern.lua")), f"{types} has no postern.lua"
        first_rule_files()
        test = doc_commands.command(FIRST_RULE, "postern test /etc/postern/tests/verify_account.toml")
        r = run(test.command, check=False)
        assert r.returncode == 0 and r.stdout.splitlines() == test.output, (r.stdout + r.stderr, test.output)
        check_config_everywhere()

        daemon = UnitLike(pid_namespace=True)
        r = swaks("Please verify your account today")
        assert re.search(r"^<\*\* +550 5\.7\.1 Message refused as phishing", r.stdout, re.M), r.stdout
        r = swaks("hello")
        assert r.returncode == 0, r.stdout
        r = swaks("you won the lottery", to="carol@example.com")    # 16 points: over [scores] reject (15)
        assert re.search(r"^<\*\* +554 5\.7\.1 ", r.stdout, re.M), r.stdout
        wait_for(lambda: os.path.exists(AUDIT) and len(audit_lines()) == 3, "three audit records")

        hup = doc_commands.command(FIRST_RULE, "kill -HUP $(pidof postern)")
        assert len(daemon.pids()) == 1, (f"pidof postern finds {daemon.pids()}: `{hup.command}` would signal other "
                                         "postern processes too (no PID namespace here, and others run)")
        for line in (hup.command, cmd(FIRST_RULE, "postern reload")):
            mark = len(daemon.output())
            r = daemon.shell(line)
            daemon.wait_log("info reloaded", after=mark)
        assert r.stdout.startswith("reloaded"), r.stdout

        # docs/operations.md: a reload of a broken file, refused both ways; the guide's output
        # with this file's line and column
        refused = [c for c in doc_commands.commands(OPERATIONS) if c.output and c.command.startswith("postern reload")]
        assert len(refused) == 2, [c.text for c in refused]
        with open(CONFIG) as f:
            good = f.read()
        broken = re.sub(r"^recipients = \d+", 'recipients = "many"', good, count=1, flags=re.M)
        assert broken != good
        with open(CONFIG, "w") as f:
            f.write(broken)
        try:
            for c in refused:
                r = daemon.shell(c.command, check=False)
                got = re.sub(rf"{CONFIG}:\d+:\d+:", f"{CONFIG}:L:C:", r.stdout + r.stderr).splitlines()
                want = [re.sub(rf"{CONFIG}:\d+:\d+:", f"{CONFIG}:L:C:", l) for l in c.output]
                assert r.returncode == 1 and got == want, (c.text, r.stdout + r.stderr, c.output)
        finally:
            with open(CONFIG, "w") as f:
                f.write(good)
        if SYSTEMD_BOOTED:
            run("systemctl status postern")   # the package's own unit: active
            run("systemctl reload postern")

        # docs/audit-only.md: the report and the jq query
        r = run(cmd(AUDIT_ONLY, f"postern report {AUDIT}"))
        assert r.stdout.startswith("postern report: 1 file, 3 records"), r.stdout
        assert re.search(r"^bank\.example +3 .* rejected=2 relayed=1$", r.stdout, re.M), r.stdout
        try:
            run(cmd(AUDIT_ONLY, f"postern report {AUDIT} --html /tmp/postern-report.html"))
            with open("/tmp/postern-report.html") as f:
                assert f.read().startswith("<!DOCTYPE html>")
        finally:
            if os.path.exists("/tmp/postern-report.html"):
                os.unlink("/tmp/postern-report.html")
        jq = doc_commands.commands(AUDIT_ONLY, "jq")[0]
        r = run(jq.command)
        found = [json.loads(l) for l in r.stdout.splitlines()]
        assert found == [{"from": "service@bank.example", "to": ["carol@example.com"], "score": 16,
                          "symbols": ["DOCS_TEST_LOTTERY"]}], r.stdout

        # docs/authentication.md's example, in a directory of its own: the same layout as printed
        example = [c for c in doc_commands.commands(AUTH) if c.output][0]
        r = run(example.command, cwd=str(tmp_path))
        lines = r.stdout.splitlines()
        assert lines[0].startswith("postern report: 1 file, 3 records"), r.stdout
        fixed = [l for l in example.output if l.startswith(("DOMAIN ", "SPF, DKIM, DMARC:", "with the From", "(or,"))]
        # (the columns are as wide as the longest domain: compared word by word)
        assert len(fixed) == 4 and all(l.split() in [x.split() for x in lines] for l in fixed), (fixed, r.stdout)
        assert lines[-1] == example.output[-1] == "HTML report: report.html", r.stdout
        assert (tmp_path / "report.html").is_file()

        # log rotation: the shipped /etc/logrotate.d/postern, as authentication.md says to try it
        rotate_and_reopen(daemon, "logrotate -f /etc/logrotate.d/postern", f"{AUDIT}.1", "rotated by the package")
        # the guide's block for the audit log alone, taken out of the shipped block's list
        with open("/etc/logrotate.d/postern") as f:
            shipped = f.read()
        own = doc_commands.block(AUTH, "/var/log/postern/audit.jsonl {")
        assert f"/var/log/postern/postern.log {AUDIT} {{" in shipped, shipped
        with open("/etc/logrotate.d/postern", "w") as f:
            f.write(shipped.replace(f"/var/log/postern/postern.log {AUDIT} {{", "/var/log/postern/postern.log {")
                    + "\n" + own)
        r = run(["logrotate", "-d", "/etc/logrotate.d/postern"], check=False)
        assert r.returncode == 0 and "error" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
        # second rotation: .1 becomes .2.gz (delaycompress), the moved file is .1
        rotate_and_reopen(daemon, "logrotate -f /etc/logrotate.d/postern", f"{AUDIT}.1", "rotated by the guide's block")
        assert os.path.exists(f"{AUDIT}.2.gz")
        assert oct(os.stat(AUDIT).st_mode & 0o777) == "0o640", oct(os.stat(AUDIT).st_mode)
    finally:
        if daemon:
            daemon.stop()
        for f in glob.glob(AUDIT + "*"):
            os.unlink(f)
        for d in ("/etc/postern/rules", "/etc/postern/tests"):   # the guide's files: the admin's, not the package's
            shutil.rmtree(d, ignore_errors=True)
        purge_deb()
    for d in ("/etc/postern", "/usr/share/postern"):
        assert not os.path.exists(d), f"{d} left behind after purge"


def rotate_and_reopen(daemon, command, moved, subject):
    before = len(audit_lines())
    mark = len(daemon.output())
    run(command)
    assert os.path.exists(moved) and len(audit_lines(moved)) == before, (moved, os.listdir(os.path.dirname(AUDIT)))
    daemon.wait_log("info reloaded", after=mark)     # postrotate: postern reopened the file
    r = swaks(subject)
    assert r.returncode == 0, r.stdout
    wait_for(lambda: os.path.exists(AUDIT) and len(audit_lines()) == 1, f"the new {AUDIT} written after the rotation")
    assert len(audit_lines(moved)) == before


# ---------------------------------------------------------------- docs/operations.md without the package

INSTALL_WORK = os.environ.get("POSTERN_INSTALL_WORKDIR", "/tmp/postern-install")


def install_block():
    cmds = doc_commands.commands(OPERATIONS)
    start = [c.command for c in cmds].index(
        "cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr -DPOSTERN_BUILD_MAN=ON")
    return [c.command for c in cmds[start:start + 5]]


def removal_block():
    cmds = [c.command for c in doc_commands.commands(OPERATIONS)]
    start = cmds.index("systemctl disable --now postern")
    return cmds[start:start + 2]


def test_install_without_the_package(tmp_path):
    if installed() or os.path.exists("/usr/sbin/postern"):
        pytest.fail("postern is installed already (the package, or a cmake --install): this test installs into /usr")
    configure, build_install, sysusers, reload, enable = install_block()
    disable, remove = removal_block()
    assert (sysusers, reload, enable) == ("systemd-sysusers postern.conf", "systemctl daemon-reload",
                                          "systemctl enable --now postern")
    src = os.path.join(INSTALL_WORK, "postern")
    copy_checkout(src)
    env = dict(os.environ)
    if shutil.which("ccache"):   # as debian/rules: the same sources compile once across runs
        env.update(CMAKE_CXX_COMPILER_LAUNCHER="ccache", CMAKE_C_COMPILER_LAUNCHER="ccache")
        # Paths hashed relative to the copy, as .ci/test hashes the checkout's:
        # this Release build then finds the objects .ci/test's Release build made.
        env.update(CCACHE_BASEDIR=src, CCACHE_NOHASHDIR="1")
    daemon = None
    manifest = os.path.join(src, "build", "install_manifest.txt")
    try:
        run(configure, cwd=src, env=env, timeout=300)
        run(build_install, cwd=src, env=env, timeout=1800)
        with open(manifest) as f:
            files = f.read().split()
        for p in ("/usr/sbin/postern", CONFIG, "/etc/logrotate.d/postern", "/lib/systemd/system/postern.service",
                  "/usr/lib/sysusers.d/postern.conf", "/usr/share/postern/scripts/default/20_helo.lua",
                  "/usr/share/postern/scripts/types/postern.lua", "/usr/share/bash-completion/completions/postern",
                  "/usr/share/doc/postern/operations.md", "/usr/share/man/man8/postern.8",
                  "/usr/share/man/man5/postern.toml.5", "/usr/share/man/man7/postern-lua.7"):
            assert p in files and os.path.exists(p), f"{p} not installed"
        assert run(["/usr/sbin/postern", "--version"]).stdout.startswith(f"postern {version()}")
        run(sysusers, cwd=str(tmp_path))     # as printed: the name, found in /usr/lib/sysusers.d
        assert run(["getent", "passwd", "postern"]).stdout.split(":")[6].strip() == "/usr/sbin/nologin"
        r = run(["systemd-analyze", "verify", "/lib/systemd/system/postern.service"], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        r = run(f"postern config check {CONFIG}")
        assert r.stdout.strip() == f"{CONFIG}: ok", r.stdout
        if SYSTEMD_BOOTED:
            run(reload)
            run(enable)
            wait_for(lambda: run(["systemctl", "is-active", "postern"], check=False).stdout.strip() == "active",
                     "postern.service active")
            r = run(["swaks", "--to", "a@b", "--server", "127.0.0.1:2525"])
            run(disable)
        else:
            # no systemd to talk to: enable as far as it works offline (the symlink), and the
            # daemon started the way the unit starts it
            run(enable.replace(" --now", ""))
            assert run(["systemctl", "is-enabled", "postern"], check=False).stdout.strip() == "enabled"
            daemon = UnitLike()
            before = maildir_new()
            run(["swaks", "--to", "a@b", "--server", "127.0.0.1:2525"])
            assert len(maildir_new() - before) == 1
            daemon.stop()
            daemon = None
            run(disable.replace(" --now", ""))
            assert run(["systemctl", "is-enabled", "postern"], check=False).stdout.strip() != "enabled"
        run(remove, cwd=src)
        left = [p for p in files if os.path.lexists(p)]
        assert not left, f"left after the guide's removal: {left}"
    finally:
        if daemon:
            daemon.stop()
        if os.path.exists(manifest):
            with open(manifest) as f:
                for p in f.read().split():
                    if os.path.lexists(p):
                        os.unlink(p)
        for d in ("/etc/postern", "/usr/share/postern", "/usr/share/doc/postern"):
            shutil.rmtree(d, ignore_errors=True)
