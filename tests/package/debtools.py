"""What the package-tier tests share: running a command, the version, a copy
of the checkout's files, the package build (the conftest's `deb` fixture)
and postern run the way postern.service runs it."""

import os
import shlex
import re
import shutil
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORK = os.environ.get("POSTERN_DEB_WORKDIR", "/tmp/postern-deb")
SRC = os.path.join(WORK, "postern")

sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import doc_commands  # noqa: E402,F401  (README.md and docs/*.md: their command blocks, for the tests)

# The commands README.md and docs/operations.md print, run as written.
BUILD = "dpkg-buildpackage -b -us -uc"
BUILD_LINE = f".ci/deps --deb && {BUILD}"      # README's and operations.md's line, from a clean checkout
INSTALL = "apt-get install ../postern_*_amd64.deb"


def run(argv, timeout=120, check=True, **kw):
    if isinstance(argv, str):
        argv = ["bash", "-c", argv]
    kw.setdefault("stdin", subprocess.DEVNULL)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert r.returncode == 0, f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def version():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        return re.search(r"project\(postern VERSION ([0-9.]+)", f.read()).group(1)


def installed():
    r = run(["dpkg-query", "-W", "-f=${Status}", "postern"], check=False)
    return r.returncode == 0 and "installed" in r.stdout and "not-installed" not in r.stdout


def copy_checkout(dest):
    """The checkout's files (tracked and new, not ignored) in `dest`: what a
    clean checkout has, without the developer's build directories."""
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    files = run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard", "-z"]).stdout
    files = [f for f in files.split("\0") if f and os.path.lexists(os.path.join(ROOT, f))]
    tar = subprocess.run(["tar", "-C", ROOT, "--null", "-T", "-", "-cf", "-"], input="\0".join(files).encode(),
                         capture_output=True, check=True).stdout
    subprocess.run(["tar", "-C", dest, "-xf", "-"], input=tar, check=True)


def build_deb():
    """`.ci/deps --deb && dpkg-buildpackage -b -us -uc` in a copy of the checkout,
    in a fixed directory so that ccache (debian/rules uses it when installed)
    hits next time."""
    shutil.rmtree(WORK, ignore_errors=True)
    copy_checkout(SRC)
    env = dict(os.environ, DEB_BUILD_OPTIONS=f"parallel={os.cpu_count() or 1}")
    r = run(BUILD_LINE, timeout=1500, cwd=SRC, env=env)
    path = os.path.join(WORK, f"postern_{version()}_amd64.deb")
    assert os.path.isfile(path), f"no {path}; built: {os.listdir(WORK)}\n{r.stdout[-2000:]}"
    return path


def install_deb():
    """README's `apt-get install ../postern_*_amd64.deb`, as written, in the build directory."""
    if installed():
        run(["apt-get", "purge", "-y", "postern"], timeout=300)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["bash", "-c", INSTALL], cwd=SRC, env=env, input="y\n", capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def purge_deb():
    run(["apt-get", "purge", "-y", "postern"], timeout=300, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    assert not installed()


MAILDIR_NEW = "/var/lib/postern/postern-mail/new"


def maildir_new():
    """The messages in the installed postern's Maildir (/var/lib/postern stays
    after a purge, as Debian keeps a system user's data: count what is new)."""
    return set(os.listdir(MAILDIR_NEW)) if os.path.isdir(MAILDIR_NEW) else set()


def port_open(port, host="127.0.0.1"):
    import socket
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_port(port, proc, seconds=30):
    import time
    deadline = time.monotonic() + seconds
    while not port_open(port):
        assert proc.poll() is None, f"exited {proc.returncode}:\n{proc.stdout.read() if proc.stdout else ''}"
        assert time.monotonic() < deadline, f"nothing listens on 127.0.0.1:{port}"
        time.sleep(0.2)


class UnitLike:
    """The installed postern as postern.service runs it, without systemd: user
    postern, working directory /var/lib/postern, /run/postern and
    RUNTIME_DIRECTORY (systemd's RuntimeDirectory=postern; the control socket
    goes there). With `pid_namespace`, in a PID namespace of its own (with its
    own /proc), so that a documented `pidof postern` inside it (`self.shell`)
    finds this postern and no other on the machine."""

    def __init__(self, pid_namespace=False):
        import pwd
        pw = pwd.getpwnam("postern")
        self.made = []
        for d in ("/run/postern", "/var/lib/postern", "/var/log/postern"):
            if not os.path.isdir(d):
                os.makedirs(d)
                self.made.append(d)
            os.chown(d, pw.pw_uid, pw.pw_gid)
        with open("/lib/systemd/system/postern.service") as f:
            exec_start = re.search(r"^ExecStart=(.*)$", f.read(), re.M).group(1).split()
        argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"] + exec_start
        if pid_namespace and run(["unshare", "--pid", "--fork", "--mount-proc", "true"], check=False).returncode:
            pid_namespace = False     # no CAP_SYS_ADMIN (an unprivileged container): see pids()
        if pid_namespace:
            argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"] + argv
        self.log_path = os.path.join("/tmp", f"postern-unitlike-{os.getpid()}.log")
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(argv, cwd="/var/lib/postern", stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, RUNTIME_DIRECTORY="/run/postern"), text=True,
                                     stdin=subprocess.DEVNULL)
        self.pid_namespace = pid_namespace
        self.enter_namespace = pid_namespace
        try:
            self.wait_listening()
        except BaseException:
            self.stop()
            raise
        # Inside its namespace postern is PID 1. Where entering the namespace
        # does not show its /proc (a chroot, as in fresh-ci: setns puts the
        # caller at the real root), commands run out here instead, and pids()
        # then guards that `pidof postern` finds this postern alone.
        if self.enter_namespace and self.pids() != [1]:
            self.enter_namespace = False

    def wait_listening(self, seconds=30):
        import time
        deadline = time.monotonic() + seconds
        while not port_open(2525):
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, "the installed postern did not listen on 127.0.0.1:2525\n" + self.output()
            time.sleep(0.2)

    def output(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_log(self, needle, after=0, seconds=20):
        import time
        deadline = time.monotonic() + seconds
        while True:
            text = self.output()[after:]
            if needle in text:
                return text
            assert time.monotonic() < deadline, f"no {needle!r} in the log:\n{self.output()[-3000:]}"
            time.sleep(0.1)

    def shell(self, command, check=True, cwd="/"):
        """`command` run by bash as root; with a PID namespace, inside it."""
        argv = ["bash", "-c", command]
        if self.enter_namespace:
            # --root: the target's root (a chroot's, where the tests run in one),
            # under which --mount-proc mounted the namespace's /proc; --wd: a
            # working directory inside that root (setns left it at the real
            # root), then `cwd` there.
            argv = ["nsenter", "--target", str(self.children()[0]), "--pid", "--mount", "--root", "--wd",
                    "bash", "-c", f"cd {shlex.quote(cwd)} && {command}"]
        return run(argv, check=check, cwd=cwd)

    def pids(self):
        """The pids `pidof postern` finds where self.shell runs commands: this
        postern alone, in its namespace or (without one) on a machine where
        no other postern runs."""
        return [int(p) for p in self.shell("pidof postern || true").stdout.split()]

    def children(self):
        """unshare's child: postern, PID 1 of the namespace (its pid out here)."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return []

    def stop(self):
        if self.proc.poll() is None:
            if self.pid_namespace:   # postern itself drains; unshare then ends with it
                import signal
                for child in self.children():
                    os.kill(child, signal.SIGTERM)
            else:
                self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        for d in self.made:
            shutil.rmtree(d, ignore_errors=True)
