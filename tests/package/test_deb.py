"""The Debian package, built, checked, installed, verified and purged as root
(.ci/test runs this after the Release pass; CI is root):

- `dpkg-buildpackage -b -us -uc` (the documented command, docs/operations.md)
  in a copy of the checkout's files builds postern_<version>_amd64.deb;
- lintian finds no error (the warnings accepted are in debian/README.source);
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
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORK = os.environ.get("POSTERN_DEB_WORKDIR", "/tmp/postern-deb")
SRC = os.path.join(WORK, "postern")

# The commands README.md and docs/operations.md print, run as written.
BUILD = "dpkg-buildpackage -b -us -uc"
INSTALL = "apt-get install ../postern_*_amd64.deb"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs a package: needs root (CI is root)")


def run(argv, timeout=120, check=True, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if check:
        assert r.returncode == 0, f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def version():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        return re.search(r"project\(postern VERSION ([0-9.]+)", f.read()).group(1)


def installed():
    r = run(["dpkg-query", "-W", "-f=${Status}", "postern"], check=False)
    return r.returncode == 0 and "installed" in r.stdout and "not-installed" not in r.stdout


@pytest.fixture(scope="module")
def deb():
    """Build the package from a copy of the checkout's files (tracked and new, not ignored)."""
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(SRC)
    files = run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard", "-z"]).stdout
    files = [f for f in files.split("\0") if f and os.path.lexists(os.path.join(ROOT, f))]
    subprocess.run(["tar", "-C", ROOT, "--null", "-T", "-", "-cf", "-"], input="\0".join(files).encode(),
                   stdout=open(os.path.join(WORK, "src.tar"), "wb"), check=True)
    run(["tar", "-C", SRC, "-xf", os.path.join(WORK, "src.tar")])
    env = dict(os.environ, DEB_BUILD_OPTIONS=f"parallel={os.cpu_count() or 1}")
    r = run(["bash", "-c", BUILD], timeout=1500, cwd=SRC, env=env)
    path = os.path.join(WORK, f"postern_{version()}_amd64.deb")
    assert os.path.isfile(path), f"no {path}; built: {os.listdir(WORK)}\n{r.stdout[-2000:]}"
    return path


def test_documented_commands():
    for doc in ("README.md", "docs/operations.md"):
        with open(os.path.join(ROOT, doc)) as f:
            text = f.read()
        assert BUILD in text and INSTALL in text, f"{doc} no longer prints the commands this file runs"


def test_lintian_reports_no_error(deb):
    changes = glob.glob(os.path.join(WORK, "postern_*_amd64.changes"))
    r = run(["lintian", "--fail-on", "error", "--tag-display-limit", "0", deb], check=False, timeout=600)
    print(r.stdout)
    assert r.returncode == 0 and not re.search(r"^E: ", r.stdout, re.M), r.stdout + r.stderr
    assert changes, "dpkg-buildpackage wrote no .changes"


EXPECTED = [
    "/usr/sbin/postern",
    "/etc/postern/postern.toml",
    "/etc/logrotate.d/postern",
    "/lib/systemd/system/postern.service",
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
    """The installed postern as postern.service runs it (user postern, working
    directory /var/lib/postern, /run/postern), without systemd: the README's
    swaks lands in the Maildir, operations.md's reload and status answer."""
    import pwd
    import socket
    import time
    pw = pwd.getpwnam("postern")
    made = []
    for d in ("/run/postern", "/var/lib/postern"):
        if not os.path.isdir(d):
            os.makedirs(d)
            made.append(d)
        os.chown(d, pw.pw_uid, pw.pw_gid)
    unit = open("/lib/systemd/system/postern.service").read()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).split()
    proc = subprocess.Popen(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
                            + exec_start, cwd="/var/lib/postern", stdout=subprocess.PIPE,
                            # RuntimeDirectory=postern: systemd tells the daemon where /run/postern is
                            # (its control socket goes there); an admin's shell has no such variable
                            env=dict(os.environ, RUNTIME_DIRECTORY="/run/postern"),
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", 2525)) == 0:
                    break
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the installed postern did not listen on 127.0.0.1:2525"
            time.sleep(0.2)
        r = run(["swaks", "--to", "a@b", "--server", "127.0.0.1:2525"])
        assert len(os.listdir("/var/lib/postern/postern-mail/new")) == 1
        commands = operations_commands()
        assert len(commands) == 3, commands
        outputs = [run(["bash", "-c", c]).stdout for c in commands]
        assert outputs[0].startswith("reloaded"), outputs[0]
        assert outputs[1].startswith(f"postern {version()}"), outputs[1]
        assert '"version"' in outputs[2], outputs[2]
    finally:
        proc.terminate()
        proc.wait(30)
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


def test_install_verify_purge(deb):
    if installed():
        run(["apt-get", "purge", "-y", "postern"], timeout=300)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["bash", "-c", INSTALL], cwd=SRC, env=env, input="y\n", capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
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
        run(["apt-get", "purge", "-y", "postern"], timeout=300, env=env)
    assert not installed()
    left = [p for p in files if not os.path.isdir(p) and os.path.lexists(p)]   # /lib is a link to usr/lib
    assert not left, f"left behind after purge: {left}"
    for d in ("/etc/postern", "/usr/share/postern", "/usr/share/doc/postern"):
        assert not os.path.exists(d), f"{d} left behind after purge"
