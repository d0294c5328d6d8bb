"""The client's identity reaches the MTA: XCLIENT, else XFORWARD, else nothing
(upstream.client_identity), tested against a real Postfix smtpd.

A private Postfix instance (own config, queue and log directories under /tmp,
loopback only) listens on two smtpd ports:

- xclient port:  smtpd_authorized_xclient_hosts and _xforward_hosts = 127/8,
                 so it offers both XCLIENT and XFORWARD;
- xforward port: XCLIENT not authorized (not offered), XFORWARD offered.

Postfix relays every message to a recording sink, so the Received header
Postfix itself wrote can be read; its maillog_file (postlogd) shows what it
believed about the client. The test client binds 127.0.0.9 and says
EHLO client.example.
"""

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest

from dns_server import serve
from harness import (SCALE, RecordingSink, SmtpClient, check_reply, free_port, listener_ports,
                     make_message, wait_port, wait_until, write_config)

POSTFIX = "/usr/sbin/postfix"
CLIENT_IP = "127.0.0.9"
CLIENT_HELO = "client.example"
# A client with a verified name, through a PROXY listener (libunbound answers
# the reverse zone of 127/8 itself, so the name is served for a public address).
NAMED_IP = "44.44.44.7"
NAMED_NET = "44.44.44.0/24"

MASTER_CF = """\
{xclient_addr} inet n - n - - smtpd
{xforward_addr} inet n - n - - smtpd
  -o smtpd_authorized_xclient_hosts=
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
myhostname = postfix.test
mydomain = test
myorigin = postfix.test
mydestination =
local_transport = error:local delivery is disabled
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8 {named_net}
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_authorized_xforward_hosts = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_client_port_logging = yes
smtpd_peername_lookup = no
relayhost = [127.0.0.1]:{sink_port}
default_transport = smtp
smtp_host_lookup = native
disable_dns_lookups = yes
maillog_file = {dir}/log/maillog
maillog_file_prefixes = {dir}/log
alias_maps =
alias_database =
biff = no
"""


class PrivatePostfix:
    def __init__(self, sink_port):
        self.dir = tempfile.mkdtemp(prefix="postern-postfix-")
        os.chmod(self.dir, 0o755)
        for sub in ("etc", "queue", "data", "log"):
            os.mkdir(os.path.join(self.dir, sub))
        shutil.chown(os.path.join(self.dir, "data"), user="postfix")
        self.etc = os.path.join(self.dir, "etc")
        self.maillog = os.path.join(self.dir, "log", "maillog")
        self.xclient_port = free_port()
        self.xforward_port = free_port()
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(dir=self.dir, sink_port=sink_port, named_net=NAMED_NET))
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(xclient_addr=f"127.0.0.1:{self.xclient_port}",
                                     xforward_addr=f"127.0.0.1:{self.xforward_port}"))
        self.started = False

    def postfix(self, *args):
        return subprocess.run([POSTFIX, "-c", self.etc] + list(args), capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)

    def start(self):
        r = self.postfix("check")
        assert r.returncode == 0, f"postfix check failed:\n{r.stdout}{r.stderr}\n{self.log()}"
        r = self.postfix("start")
        self.started = True
        assert r.returncode == 0, f"postfix start failed:\n{r.stdout}{r.stderr}\n{self.log()}"
        wait_port(self.xclient_port, 20 * SCALE)
        wait_port(self.xforward_port, 20 * SCALE)

    def master_pid(self):
        try:
            with open(os.path.join(self.dir, "queue", "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _running(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def stop(self):
        pid = self.master_pid()
        if self.started:
            self.postfix("stop")
        if pid:
            deadline = time.monotonic() + 15
            while self._running(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._running(pid):   # the master we started, by its pid
                os.kill(pid, 9)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        try:
            with open(self.maillog, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=None):
        rx = re.compile(pattern, re.M)
        try:
            return wait_until(lambda: rx.search(self.log()), timeout or 15 * SCALE,
                              message=f"maillog line /{pattern}/")
        except AssertionError as e:
            raise AssertionError(f"{e}\n---- maillog ----\n{self.log()[-4000:]}") from None

    def smtpd_session(self, qid):
        """The `client=` line of queue id qid and the `disconnect` line of the
        same smtpd connection."""
        client = self.wait_log(rf"postfix/smtpd\[(\d+)\]: {qid}: client=(.*)$")
        pid, offset = client.group(1), client.end()
        rx = re.compile(rf"postfix/smtpd\[{pid}\]: disconnect from (.*)$", re.M)
        found = wait_until(lambda: rx.search(self.log(), offset), 15 * SCALE,
                           message=f"disconnect line of smtpd[{pid}]")
        return client.group(2), found.group(1)


def private_postfix(prepare=None):
    """A started PrivatePostfix relaying to a RecordingSink (pf.sink), stopped
    with it afterwards; `prepare(pf)` may edit its configuration first. For
    module-scoped fixtures: `yield from private_postfix(...)`."""
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    if not os.access(POSTFIX, os.X_OK):
        pytest.fail(f"{POSTFIX} is missing (Debian package postfix)")
    relay_sink = RecordingSink().start()
    pf = PrivatePostfix(relay_sink.port)
    pf.sink = relay_sink
    try:
        if prepare:
            prepare(pf)
        pf.start()
        yield pf
    finally:
        pf.stop()
        relay_sink.stop()


@pytest.fixture(scope="module")
def mta():
    yield from private_postfix()


def send_through_postern(postern, mta, port, mode=None, helo=CLIENT_HELO):
    """One message from CLIENT_IP through postern into Postfix. Returns
    (postfix queue id, client source port, the message as relayed by Postfix)."""
    sets = {"upstream.client_identity": mode} if mode else {}
    p = postern.start(upstream=f"127.0.0.1:{port}", sets=sets)
    tag = uuid.uuid4().hex[:12]
    with SmtpClient(p.port, source=CLIENT_IP) as c:
        client_port = c.sock.getsockname()[1]
        c.expect(f"EHLO {helo}", 250)
        r = check_reply(c.send_message("alice@example.org", ["bob@example.com"],
                                       make_message(f"xclient {tag}")), 250, what="end of data")
        c.expect("QUIT", 221)
    m = re.search(r"queued as ([0-9A-F]+)", r.text)
    assert m, f"no Postfix queue id in {r}"
    qid = m.group(1)
    wait_until(lambda: any(qid.encode() in (msg.content or b"") for msg in mta.sink.messages),
               20 * SCALE, message=f"Postfix relaying {qid} to the sink")
    msg = next(msg for msg in mta.sink.messages if qid.encode() in msg.content)
    p.stop()
    return qid, client_port, msg


def postfix_received(msg, qid):
    """The Received header Postfix wrote for queue id qid, unfolded."""
    text = msg.content.decode("latin-1")
    head = text.split("\r\n\r\n", 1)[0]
    unfolded = re.sub(r"\r\n(?=[ \t])", " ", head)
    for line in unfolded.split("\r\n"):
        if line.startswith("Received:") and "(Postfix) with" in line and f"id {qid}" in line:
            return line
    raise AssertionError(f"no Postfix Received header for {qid} in:\n{head}")


# --------------------------------------------------------------------------
# XCLIENT


def test_xclient_postfix_logs_real_client(postern, mta):
    qid, client_port, _ = send_through_postern(postern, mta, mta.xclient_port)
    client, disconnect = mta.smtpd_session(qid)
    # ADDR and PORT took effect: Postfix believes the connection is the client's
    assert client == f"unknown[{CLIENT_IP}]:{client_port}", client
    assert disconnect.startswith(f"unknown[{CLIENT_IP}]:{client_port} "), disconnect
    assert "xclient=" in disconnect and "xforward" not in disconnect, disconnect


def test_xclient_postfix_received_names_client_address(postern, mta):
    qid, _, msg = send_through_postern(postern, mta, mta.xclient_port)
    rec = postfix_received(msg, qid)
    assert re.match(rf"Received: from \S+ \(unknown \[{re.escape(CLIENT_IP)}\]\)", rec), rec


def test_xclient_postfix_received_names_client_helo(postern, mta):
    """XCLIENT HELO=client.example; postern then sends EHLO again, which must
    carry the client's HELO name, or Postfix records postern's own name."""
    qid, _, msg = send_through_postern(postern, mta, mta.xclient_port)
    rec = postfix_received(msg, qid)
    assert rec.startswith(f"Received: from {CLIENT_HELO} (unknown [{CLIENT_IP}])"), rec


# --------------------------------------------------------------------------
# XFORWARD and the client_identity choices


def test_xforward_when_xclient_not_offered(postern, mta):
    qid, client_port, msg = send_through_postern(postern, mta, mta.xforward_port)
    client, disconnect = mta.smtpd_session(qid)
    assert re.fullmatch(rf"unknown\[127\.0\.0\.1\]:\d+, orig_client=unknown\[{re.escape(CLIENT_IP)}\]:"
                        rf"{client_port}", client), client
    assert "xforward=1" in disconnect and "xclient" not in disconnect, disconnect
    # XFORWARD is for logging: the Received header keeps the real connection
    assert "[127.0.0.1]" in postfix_received(msg, qid)


def test_client_identity_xforward_even_when_xclient_offered(postern, mta):
    qid, client_port, _ = send_through_postern(postern, mta, mta.xclient_port, mode="xforward")
    client, disconnect = mta.smtpd_session(qid)
    assert f"orig_client=unknown[{CLIENT_IP}]:{client_port}" in client, client
    assert "xforward=1" in disconnect and "xclient" not in disconnect, disconnect


def test_client_identity_xclient(postern, mta):
    qid, client_port, _ = send_through_postern(postern, mta, mta.xclient_port, mode="xclient")
    client, disconnect = mta.smtpd_session(qid)
    assert client == f"unknown[{CLIENT_IP}]:{client_port}", client
    assert "xforward" not in disconnect, disconnect


@pytest.mark.parametrize("which", ["xclient_port", "xforward_port"])
def test_client_identity_none_sends_neither(postern, mta, which):
    qid, _, msg = send_through_postern(postern, mta, getattr(mta, which), mode="none")
    client, disconnect = mta.smtpd_session(qid)
    assert re.fullmatch(r"unknown\[127\.0\.0\.1\]:\d+", client), client
    assert "orig_client" not in client
    assert "xclient" not in disconnect and "xforward" not in disconnect, disconnect
    assert "[127.0.0.1]" in postfix_received(msg, qid)
    assert CLIENT_IP not in postfix_received(msg, qid)


# --------------------------------------------------------------------------
# the identity holds for every transaction and for PROXY-protocol clients


def test_xclient_every_transaction_of_a_session(postern, mta):
    p = postern.start(upstream=f"127.0.0.1:{mta.xclient_port}")
    qids = []
    with SmtpClient(p.port, source=CLIENT_IP) as c:
        client_port = c.sock.getsockname()[1]
        c.ehlo(CLIENT_HELO)
        for i in range(2):
            r = check_reply(c.send_message("alice@example.org", ["bob@example.com"],
                                           make_message(f"session msg {i}")), 250)
            qids.append(re.search(r"queued as ([0-9A-F]+)", r.text).group(1))
        c.expect("QUIT", 221)
    for qid in qids:
        client = mta.wait_log(rf"postfix/smtpd\[\d+\]: {qid}: client=(.*)$").group(1)
        assert client == f"unknown[{CLIENT_IP}]:{client_port}", (qid, client)


def test_reused_connection_carries_each_client_to_postfix(postern, mta):
    """Upstream connection reuse (issue 23): one smtpd session of Postfix
    serves three client sessions in turn (RSET, XCLIENT, EHLO again between
    them); its log and its Received header name each client, never the
    one before."""
    p = postern.start(upstream=f"127.0.0.1:{mta.xclient_port}", sets={"server.threads": 1})
    sent = []
    for n in (21, 22, 23):
        ip, helo = f"127.0.0.{n}", f"client-{n}.example"
        with SmtpClient(p.port, source=ip) as c:
            client_port = c.sock.getsockname()[1]
            c.ehlo(helo)
            r = check_reply(c.send_message("alice@example.org", ["bob@example.com"],
                                           make_message(f"reuse {n} {uuid.uuid4().hex[:8]}")), 250)
            c.expect("QUIT", 221)
        sent.append((re.search(r"queued as ([0-9A-F]+)", r.text).group(1), ip, client_port, helo))
    pids = set()
    for qid, ip, client_port, helo in sent:
        found = mta.wait_log(rf"postfix/smtpd\[(\d+)\]: {qid}: client=(.*)$")
        pids.add(found.group(1))
        assert found.group(2) == f"unknown[{ip}]:{client_port}", (qid, found.group(2))
        wait_until(lambda: any(qid.encode() in (m.content or b"") for m in mta.sink.messages),
                   20 * SCALE, message=f"Postfix relaying {qid}")
        msg = next(m for m in mta.sink.messages if qid.encode() in m.content)
        rec = postfix_received(msg, qid)
        assert rec.startswith(f"Received: from {helo} (unknown [{ip}])"), rec
    assert len(pids) == 1, f"one Postfix smtpd session for all three, got {pids}"
    p.stop()
    # postern's pooled connection ends with QUIT at shutdown: a clean disconnect
    pid = pids.pop()
    last = mta.wait_log(rf"postfix/smtpd\[{pid}\]: {sent[-1][0]}: client=").end()
    rx = re.compile(rf"postfix/smtpd\[{pid}\]: disconnect from (.*)$", re.M)
    line = wait_until(lambda: rx.search(mta.log(), last), 15 * SCALE, message="disconnect line").group(1)
    # (Postfix counts no XCLIENT as done: each one starts the session over)
    assert re.search(r" xclient=\d+/3 ", line) and "quit=1" in line and "rset=2" in line, line


def test_proxy_protocol_client_reaches_postfix_via_xclient(postern, mta, tmp_path):
    """load balancer -> postern (PROXY v1) -> Postfix (XCLIENT): Postfix sees
    the address from the PROXY header, not postern's nor the balancer's.
    (127.0.0.77: inside Postfix's mynetworks, so it may relay.)"""
    cfg = write_config(tmp_path / "pp.toml", [{"proxy_protocol": True}],
                       upstream=f"127.0.0.1:{mta.xclient_port}")
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    with SmtpClient(port, greeting=False, source=CLIENT_IP) as c:
        c.send(b"PROXY TCP4 127.0.0.77 127.0.0.1 40077 25\r\n")
        check_reply(c.read_reply(), 220)
        c.ehlo(CLIENT_HELO)
        r = check_reply(c.send_message("alice@example.org", ["bob@example.com"],
                                       make_message("via proxy")), 250)
        c.expect("QUIT", 221)
    qid = re.search(r"queued as ([0-9A-F]+)", r.text).group(1)
    client, _ = mta.smtpd_session(qid)
    assert client == "unknown[127.0.0.77]:40077", client


# --------------------------------------------------------------------------
# the verified client name: XCLIENT NAME=, XFORWARD NAME=, not [UNAVAILABLE]

NOOP_RULE = 'postern.rule{ name = "NOOP", stage = "eom", fn = function(ctx) end }\n'


@pytest.fixture(scope="module")
def named_dns():
    yield from serve(["7.44.44.44.in-addr.arpa. 300 IN PTR mail.example.net.",
                      "mail.example.net. 300 IN A 44.44.44.7",
                      "8.44.44.44.in-addr.arpa. 300 IN PTR liar.example.net.",
                      "liar.example.net. 300 IN A 192.0.2.1"],
                     zones=("44.44.44.in-addr.arpa.", "example.net."))


def send_from(postern, mta, port, dns, tmp_path, source_ip):
    """One message from `source_ip` (a PROXY header) through postern, which
    looks its name up in `dns`, into Postfix. Returns (queue id, message)."""
    rules = tmp_path / "noop.lua"
    rules.write_text(NOOP_RULE)   # something that uses DNS, so the name is looked up
    cfg = write_config(tmp_path / "named.toml", [{"proxy_protocol": True}], upstream=f"127.0.0.1:{port}",
                       sections={"dns": {"servers": [dns.address], "timeout": 2, "retries": 0},
                                 "lua": {"scripts": [str(rules)]}})
    p = postern.start(config=cfg, listen=())
    (lport,) = listener_ports(p)
    tag = uuid.uuid4().hex[:12]
    with SmtpClient(lport, greeting=False) as c:
        c.send(f"PROXY TCP4 {source_ip} 127.0.0.1 40077 25\r\n".encode())
        check_reply(c.read_reply(), 220)
        c.ehlo(CLIENT_HELO)
        r = check_reply(c.send_message("alice@example.org", ["bob@example.com"], make_message(f"named {tag}")),
                        250, what="end of data")
        c.expect("QUIT", 221)
    qid = re.search(r"queued as ([0-9A-F]+)", r.text).group(1)
    wait_until(lambda: any(qid.encode() in (msg.content or b"") for msg in mta.sink.messages),
               20 * SCALE, message=f"Postfix relaying {qid} to the sink")
    p.stop()
    return qid, next(msg for msg in mta.sink.messages if qid.encode() in msg.content)


def test_xclient_name_is_the_verified_name(postern, mta, named_dns, tmp_path):
    qid, msg = send_from(postern, mta, mta.xclient_port, named_dns, tmp_path, NAMED_IP)
    client, _ = mta.smtpd_session(qid)
    assert client == f"mail.example.net[{NAMED_IP}]:40077", client
    rec = postfix_received(msg, qid)
    assert rec.startswith(f"Received: from {CLIENT_HELO} (mail.example.net [{NAMED_IP}])"), rec


def test_xclient_name_unavailable_without_a_confirmed_name(postern, mta, named_dns, tmp_path):
    """44.44.44.8's PTR leads elsewhere: no verified name, NAME=[UNAVAILABLE]."""
    qid, msg = send_from(postern, mta, mta.xclient_port, named_dns, tmp_path, "44.44.44.8")
    client, _ = mta.smtpd_session(qid)
    assert client == "unknown[44.44.44.8]:40077", client


def test_xforward_name_is_the_verified_name(postern, mta, named_dns, tmp_path):
    qid, _ = send_from(postern, mta, mta.xforward_port, named_dns, tmp_path, NAMED_IP)
    client, _ = mta.smtpd_session(qid)
    assert re.fullmatch(rf"unknown\[127\.0\.0\.1\]:\d+, orig_client=mail\.example\.net\[{re.escape(NAMED_IP)}\]:40077",
                        client), client
