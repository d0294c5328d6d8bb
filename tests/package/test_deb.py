"""The Debian package, built, checked, installed, verified and purged as root
(.ci/test runs this after the Release pass; CI is root):

- `dpkg-buildpackage -b -us -uc` (the documented command, docs/operations.md)
  in a copy of the checkout's files builds postern_<version>_amd64.deb;
- lintian finds no error in the binary or the source package, and every tag it
  shows is one debian/README.source accepts with its reason;
- the package holds every file the issue names, /etc/postern/postern.toml and
  /etc/logrotate.d/postern as conffiles, and depends on the package of every
  library the binary links (shlibdeps);
- `apt-get install ./postern_*.deb` installs it, creates the `postern` system
  user (sysusers.d), `postern config check /etc/postern/postern.toml` passes,
  `systemd-analyze verify` accepts the unit, man finds the pages;
- `apt-get purge` leaves none of its files behind.

The build runs in a fixed directory so that ccache (debian/rules uses it when
installed; CCACHE_DIR as set, else ~/.cache/ccache) hits on the next run.
"""

import glob
import os
import re
import shutil

from debtools import (BUILD_LINE, INSTALL, ROOT, WORK, UnitLike, copy_checkout, install_deb, maildir_new, purge_deb,
                      run, version)

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs a package: needs root (CI is root)")


def test_documented_commands():
    for doc in ("README.md", "docs/operations.md"):
        with open(os.path.join(ROOT, doc)) as f:
            text = f.read()
        assert BUILD_LINE in text and INSTALL in text, f"{doc} no longer prints the commands this file runs"


def accepted_lintian_tags():
    """The tags debian/README.source lists under "Lintian findings accepted"."""
    with open(os.path.join(ROOT, "debian", "README.source")) as f:
        section = f.read().split("Lintian findings accepted", 1)[1]
    return set(re.findall(r"^  [EWIPX]: ([a-z0-9.+-]+)$", section, re.M))


def source_package():
    """`dpkg-source -b` of a clean copy of the checkout: the .dsc lintian checks."""
    d = os.path.join(WORK, "source")
    copy_checkout(os.path.join(d, "postern"))
    run(["dpkg-source", "-b", "postern"], cwd=d, timeout=600)
    (dsc,) = glob.glob(os.path.join(d, "postern_*.dsc"))
    return dsc


def test_lintian_reports_no_error(deb):
    """Neither package has an error; every tag lintian shows, at any level
    (-I -E --pedantic), is one debian/README.source accepts with its reason."""
    changes = glob.glob(os.path.join(WORK, "postern_*_amd64.changes"))
    assert changes, "dpkg-buildpackage wrote no .changes"
    r = run(["lintian", "-I", "-E", "--pedantic", "--tag-display-limit", "0", deb, source_package()],
            check=False, timeout=900)
    print(r.stdout)
    assert r.returncode == 0 and not re.search(r"^E: ", r.stdout, re.M), r.stdout + r.stderr
    tags = set(re.findall(r"^[EWIPX]: postern(?: source)?: ([a-z0-9.+-]+)", r.stdout, re.M))
    accepted = accepted_lintian_tags()
    assert "package-supports-alternative-init-but-no-init.d-script" in accepted, accepted
    assert tags <= accepted, f"lintian tags debian/README.source does not accept: {sorted(tags - accepted)}"


EXPECTED = [
    "/usr/sbin/postern",
    "/etc/postern/postern.toml",
    "/etc/logrotate.d/postern",
    "/lib/systemd/system/postern.service",
    "/lib/systemd/system/postern-dmarc-report.service",
    "/lib/systemd/system/postern-dmarc-report.timer",
    "/usr/lib/sysusers.d/postern.conf",
    "/usr/share/postern/scripts/default/20_helo.lua",
    "/usr/share/postern/scripts/examples",
    "/usr/share/postern/scripts/types/postern.lua",
    "/usr/share/bash-completion/completions/postern",
    "/usr/share/doc/postern/operations.md",
    "/usr/share/doc/postern/configuration.md",
    "/usr/share/doc/postern/README.md",
    "/usr/share/man/man8/postern.8.gz",
    "/usr/share/man/man5/postern.toml.5.gz",
    "/usr/share/man/man7/postern-lua.7.gz",
]


def test_package_contents(deb):
    listing = run(["dpkg-deb", "-c", deb]).stdout
    paths = {"/" + line.split()[5].lstrip("./").rstrip("/") for line in listing.splitlines()}
    missing = [p for p in EXPECTED if p not in paths]
    assert not missing, f"not in the package: {missing}\n{listing}"
    conffiles = run(["dpkg-deb", "-f", deb, "Conffiles"], check=False).stdout
    ctrl = os.path.join(WORK, "control")
    shutil.rmtree(ctrl, ignore_errors=True)
    run(["dpkg-deb", "-e", deb, ctrl])
    with open(os.path.join(ctrl, "conffiles")) as f:
        conffiles = f.read().split()
    assert {"/etc/postern/postern.toml", "/etc/logrotate.d/postern"} <= set(conffiles), conffiles
    # the shipped configuration is the embedded default, byte for byte
    run(["dpkg-deb", "-x", deb, os.path.join(WORK, "tree")])
    with open(os.path.join(WORK, "tree", "etc", "postern", "postern.toml")) as a, \
            open(os.path.join(ROOT, "config", "postern.toml")) as b:
        assert a.read() == b.read()


def test_depends_on_the_libraries_it_links(deb):
    depends = run(["dpkg-deb", "-f", deb, "Depends"]).stdout
    binary = os.path.join(WORK, "tree", "usr", "sbin", "postern")
    if not os.path.exists(binary):
        run(["dpkg-deb", "-x", deb, os.path.join(WORK, "tree")])
    needed = re.findall(r"NEEDED\s+(\S+)", run(["objdump", "-p", binary]).stdout)
    assert len(needed) >= 10, needed
    resolved = dict(re.findall(r"^\s*(\S+) => (/\S+)", run(["ldd", binary]).stdout, re.M))
    missing = []
    for lib in needed:
        path = resolved.get(lib)
        assert path, f"ldd does not resolve {lib}"
        owner = ""
        for candidate in (path, os.path.realpath(path), "/usr" + path, path.removeprefix("/usr")):
            r = run(["dpkg", "-S", candidate], check=False)
            if r.returncode == 0:
                owner = r.stdout.split(":")[0]
                break
        assert owner, f"no package owns {path}"
        if not re.search(rf"(^|[ ,|]){re.escape(owner)}([ ,(]|$)", depends):
            missing.append(f"{lib} ({owner})")
    assert not missing, f"Depends ({depends.strip()}) lacks: {missing}"


def operations_commands():
    """The reload/status commands docs/operations.md prints."""
    with open(os.path.join(ROOT, "docs", "operations.md")) as f:
        text = f.read()
    block = re.search(r"^```sh\n(postern reload -c .*?)^```", text, re.M | re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().split("\n")]


def run_like_the_unit():
    """The installed postern as postern.service runs it, without systemd: the
    README's swaks lands in the Maildir, operations.md's reload and status answer."""
    daemon = UnitLike()
    try:
        before = maildir_new()
        run(["swaks", "--to", "a@b", "--server", "127.0.0.1:2525"])
        assert len(maildir_new() - before) == 1
        commands = operations_commands()
        assert len(commands) == 3, commands
        outputs = [run(["bash", "-c", c]).stdout for c in commands]
        assert outputs[0].startswith("reloaded"), outputs[0]
        assert outputs[1].startswith(f"postern {version()}"), outputs[1]
        assert '"version"' in outputs[2], outputs[2]
    finally:
        daemon.stop()


def test_install_verify_purge(deb):
    install_deb()
    try:
        files = run(["dpkg", "-L", "postern"]).stdout.split()
        for p in EXPECTED:
            assert os.path.exists(p), f"{p} missing after install"
        out = run(["/usr/sbin/postern", "--version"]).stdout
        assert out.startswith(f"postern {version()}"), out
        r = run(["/usr/sbin/postern", "config", "check", "/etc/postern/postern.toml"])
        assert r.stdout.strip() == "/etc/postern/postern.toml: ok", r.stdout + r.stderr
        assert run(["id", "-u", "postern"]).stdout.strip() != "0"
        assert run(["getent", "passwd", "postern"]).stdout.split(":")[6].strip() == "/usr/sbin/nologin"
        r = run(["systemd-analyze", "verify", "/lib/systemd/system/postern.service"], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        for page in ("postern", "postern.toml", "postern-lua"):
            assert run(["man", "-w", page]).stdout.startswith("/usr/share/man/"), page
        # the service user can run it: the config is readable, the rules load
        r = run(["setpriv", "--reuid=postern", "--regid=postern", "--clear-groups", "/usr/sbin/postern",
                 "config", "check", "/etc/postern/postern.toml"], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        run_like_the_unit()
    finally:
        purge_deb()
    left = [p for p in files if not os.path.isdir(p) and os.path.lexists(p)]   # /lib is a link to usr/lib
    assert not left, f"left behind after purge: {left}"
    for d in ("/etc/postern", "/usr/share/postern", "/usr/share/doc/postern"):
        assert not os.path.exists(d), f"{d} left behind after purge"
