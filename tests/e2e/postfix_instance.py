"""A private Postfix instance on loopback, for tests and bench/run.

Its own configuration, queue and data directories under one work directory,
an smtpd on a free loopback port, and its own log file (maillog_file, so no
syslog daemon is needed). Mail is relayed to `relay` (host:port, usually a
sink), or thrown away by the discard transport. It never touches the
system's Postfix (/etc/postfix, port 25).

    pf = PostfixInstance(workdir, relay="127.0.0.1:2525").start()
    ...  # SMTP to pf.port
    pf.wait_log(r"status=sent")
    pf.stop()

Postfix must run as root (it drops to the `postfix` user); the work
directory is made world-traversable so that its daemons can reach the queue.
"""

import os
import re
import shutil
import socket
import subprocess
import time

from ports import free_port

POSTFIX = "/usr/sbin/postfix"

# master.cf for a private instance: the services a relay needs, unchrooted
# (the chroot would need a copy of the system's files), plus smtpd on PORT.
_MASTER_CF = """\
{listen} inet n - n - - smtpd{smtpd_args}
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """One private Postfix: `main` adds or overrides main.cf parameters
    (e.g. smtpd_milters, smtpd_tls_cert_file), `smtpd_args` adds `-o` options
    to the smtpd line. relay=None delivers every message to the discard
    transport."""

    def __init__(self, workdir, relay=None, port=None, main=None, smtpd_args=(),
                 hostname="mx.postfix.test"):
        self.workdir = os.path.abspath(workdir)
        self.relay = relay
        self.port = port
        self.main = dict(main or {})
        self.smtpd_args = list(smtpd_args)
        self.hostname = hostname
        self.conf = os.path.join(self.workdir, "conf")
        self.log_path = os.path.join(self.workdir, "maillog")
        self.running = False

    # ------------------------------------------------------------------
    def _main_cf(self):
        queue = os.path.join(self.workdir, "queue")
        data = os.path.join(self.workdir, "data")
        params = {
            "compatibility_level": "3.6",
            "queue_directory": queue,
            "data_directory": data,
            "maillog_file": self.log_path,
            "maillog_file_prefixes": self.workdir,
            "myhostname": self.hostname,
            "mydomain": "postfix.test",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "disable_dns_lookups": "yes",
            "smtp_host_lookup": "native",
            "smtpd_peername_lookup": "no",
            "biff": "no",
            "append_dot_mydomain": "no",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "maximal_queue_lifetime": "1h",
            # The tests and the bench send as fast as they can.
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_connection_count_limit": "0",
            "anvil_rate_time_unit": "60s",
            "in_flow_delay": "0",
            "default_process_limit": "200",
        }
        if self.relay:
            params["relayhost"] = f"[{self.relay.rsplit(':', 1)[0]}]:{self.relay.rsplit(':', 1)[1]}"
            params["default_transport"] = "smtp"
        else:
            params["default_transport"] = "discard:postfix test instance"
            params["relay_transport"] = "discard:postfix test instance"
        params.update(self.main)
        return "".join(f"{k} = {v}\n" for k, v in params.items())

    def start(self, timeout=20):
        os.makedirs(self.workdir, exist_ok=True)
        # Postfix's daemons run as `postfix`: they must be able to reach the queue.
        path = self.workdir
        while path not in ("/", ""):
            mode = os.stat(path).st_mode
            if mode & 0o011 != 0o011:
                os.chmod(path, mode | 0o011)
            path = os.path.dirname(path)
        os.makedirs(self.conf, exist_ok=True)
        os.makedirs(os.path.join(self.workdir, "queue"), exist_ok=True)
        data = os.path.join(self.workdir, "data")
        os.makedirs(data, exist_ok=True)
        shutil.chown(data, "postfix")
        if self.port is None:
            self.port = free_port()
        smtpd = "".join(f"\n  -o {a}" for a in self.smtpd_args)
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(self._main_cf())
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(_MASTER_CF.format(listen=f"127.0.0.1:{self.port}", smtpd_args=smtpd))
        out = subprocess.run([POSTFIX, "-c", self.conf, "start"], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"postfix start failed: {out.stdout}{out.stderr}\n{self.log()}")
        self.running = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.settimeout(5)
                    if s.recv(512).startswith(b"220"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postfix did not greet on port {self.port}\n{self.log()}")

    def reload(self):
        subprocess.run([POSTFIX, "-c", self.conf, "reload"], capture_output=True, check=True)

    def stop(self):
        if not self.running:
            return
        self.running = False
        subprocess.run([POSTFIX, "-c", self.conf, "stop"], capture_output=True)
        # `stop` returns before master has gone; wait for its lock to be released.
        pid_file = os.path.join(self.workdir, "queue", "pid", "master.pid")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(pid_file) as f:
                    pid = int(f.read().split()[0])
                os.kill(pid, 0)
            except (OSError, ValueError, IndexError):
                return
            time.sleep(0.1)
        subprocess.run([POSTFIX, "-c", self.conf, "abort"], capture_output=True)

    # ------------------------------------------------------------------
    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=20, count=1):
        """Wait until `pattern` (a regex) matches `count` log lines; return them."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log().splitlines() if regex.search(line)]
            if len(lines) >= count:
                return lines
            if time.monotonic() >= deadline:
                raise AssertionError(f"postfix log never matched {pattern!r} x{count}:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def queue_empty(self):
        out = subprocess.run(["/usr/sbin/postqueue", "-c", self.conf, "-j"],
                             capture_output=True, text=True)
        return out.stdout.strip() == ""

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
