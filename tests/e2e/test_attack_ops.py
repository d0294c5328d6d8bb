"""postern's operational interfaces against hostile input, end to end.

The metrics HTTP endpoint as a hostile client sees it (slowloris, oversized
and malformed requests, methods, HTTP/0.9, pipelining, traversal, NUL and CR,
chunked bodies, a flood of idle connections under a low open-file limit);
the control socket likewise (overlong and binary commands, no newline,
idle and never-reading clients, the socket's mode); label values and
cardinality in the exposition, read by the strict parser of prometheus.py;
the DMARC aggregate XML built from hostile audit records (parsed by expat
and validated with xmllint against docs/dmarc/rua.xsd); and the main log
and the audit log under client text with CR, LF, ESC, NUL and 8-bit octets.
Each attack ends with a check that SMTP still relays a message."""

import gzip
import json
import os
import re
import resource
import select
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from dns_server import UnboundServer, txt_record
from harness import (IO_TIMEOUT, SCALE, PosternProcess, RecordingSink, SmtpClient, check_reply,
                     free_port, listener_ports, make_message, postern_run_args, run_cli, wait_until, write_config)
from prometheus import scrape
from test_dmarc_report import NS, XSD, record, report_config, reports_in

# A careless rule: a symbol named after client text (the MAIL FROM domain),
# and a script whose file name holds a quote, a backslash and a newline,
# with a rule that fails (its path becomes the "script" label).
CARELESS_RULES = """
postern.rule{ name = "OPS_DOMAIN", stage = "mail", fn = function(ctx)
  local d = ctx.envelope.from.domain or ""
  local name = (d:gsub("[^%w]", "_"))
  ctx:symbol("D_" .. name:sub(1, 60), 0)
end }
"""
FAILING_RULE = """
postern.rule{ name = "OPS_FAILS", stage = "rcpt", fn = function(ctx)
  if ctx.envelope.rcpt.local_part == "fail" then error("failing on purpose") end
end }
"""
HOSTILE_SCRIPT_NAME = 'ops "quoted" back\\slash\nnewline.lua'


class Ops:
    """One postern with a listener, a PROXY-protocol listener, /metrics, a
    control socket and an audit log, in front of a recording sink."""

    def __init__(self, tmp, sockdir, sink, name, log_format="text"):
        rules = tmp / "careless.lua"
        rules.write_text(CARELESS_RULES)
        failing = tmp / HOSTILE_SCRIPT_NAME
        failing.write_text(FAILING_RULE)
        self.metrics_port = free_port()
        self.control = os.path.join(sockdir, f"{name}.sock")
        self.audit = tmp / "audit.jsonl"
        cfg = write_config(tmp / "postern.toml", [{}, {"proxy_protocol": True}], upstream=sink.address,
                           sections={"metrics": {"address": f"127.0.0.1:{self.metrics_port}"},
                                     "control": {"socket": self.control},
                                     "audit": {"path": str(self.audit)},
                                     "log": {"format": log_format},
                                     "lua": {"scripts": [str(rules), str(failing)]}})
        # write_config escapes '"' and '\\' in TOML strings; the newline too, here.
        with open(cfg) as f:
            text = f.read()
        with open(cfg, "w") as f:
            f.write(text.replace("slash\nnewline", "slash\\nnewline"))
        self.proc = PosternProcess(postern_run_args(config=cfg, listen=()), cwd=str(tmp)).start(wait=False)
        if log_format == "json":
            wait_until(lambda: any('"event":"started"' in l for l in self.proc.lines), IO_TIMEOUT,
                       message="postern started")
            events = [json.loads(l) for l in self.proc.lines]
            self.port, self.proxy_port = [int(e["address"].rsplit(":", 1)[1]) for e in events
                                          if e["event"] == "listening"]
        else:
            self.port, self.proxy_port = listener_ports(self.proc)

    def relay_one(self, subject="still relaying"):
        """A whole SMTP transaction through postern: the service still works."""
        with SmtpClient(self.port) as c:
            c.ehlo()
            check_reply(c.send_message("a@example.org", ["b@example.com"], make_message(subject=subject)), 250)


@pytest.fixture(scope="module")
def sockdir():
    d = tempfile.mkdtemp(prefix="pa", dir="/tmp")  # sun_path holds 108 octets
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def sink():
    s = RecordingSink().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ops(tmp_path_factory, sockdir, sink):
    o = Ops(tmp_path_factory.mktemp("ops"), sockdir, sink, "ops")
    yield o
    o.proc.stop()


# --------------------------------------------------------------------------
# raw HTTP


def exchange(s, data, shut, timeout):
    """Sends `data` on the connected socket `s`, reads until postern closes;
    returns the octets read (a reset after postern answered counts as the
    close). Closes `s`."""
    got = b""
    with s:
        s.settimeout(timeout)
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        else:
            raise AssertionError(f"postern kept the connection open past {timeout} s; read {got[:200]!r}")
    return got


def raw_http(port, data, timeout=None, shut=True):
    """One request on a fresh metrics connection: what postern answered."""
    timeout = timeout or IO_TIMEOUT
    return exchange(socket.create_connection(("127.0.0.1", port), timeout=timeout), data, shut, timeout)


def status_of(response):
    m = re.match(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n", response)
    assert m, f"not an HTTP response: {response[:200]!r}"
    return int(m.group(1))


def split_response(response):
    head, _, body = response.partition(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        fields[k.strip().lower().decode()] = v.strip().decode()
    return status_of(response), fields, body


def test_methods_other_than_get_and_head_are_refused(ops):
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "get", "Get"]:
        r = raw_http(ops.metrics_port, f"{method} /metrics HTTP/1.1\r\nHost: x\r\nX-Echo: canary\r\n\r\n".encode())
        status, fields, body = split_response(r)
        assert status == 405, (method, r[:200])
        assert fields.get("allow") == "GET, HEAD", (method, fields)
        assert b"canary" not in r and b"postern_" not in body, method  # TRACE echoes nothing
    # HEAD: the GET's header section, no body.
    r = raw_http(ops.metrics_port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    status, fields, body = split_response(r)
    assert status == 200 and body == b"" and int(fields["content-length"]) > 1000, r[:300]
    assert fields["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    r = raw_http(ops.metrics_port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(r) in (200, 503) and r.endswith(b"\r\n\r\n"), r
    ops.relay_one()


def test_malformed_request_lines_are_bad_requests(ops):
    bad = [
        b"GET /metrics\r\n\r\n",                       # HTTP/0.9 simple request
        b"GET /metrics\n\n",                           # the same with bare LF
        b"GET\r\n\r\n",
        b" GET /metrics HTTP/1.0\r\n\r\n",
        b"GET /metrics HTTP/1.0 extra\r\n\r\n",
        b"GET /metrics HTTP/1.x\r\n\r\n",
        b"GET /metrics http/1.0\r\n\r\n",
        b"GET  /metrics HTTP/1.0\r\n\r\n",             # two spaces: an empty target
        b"GET /metrics\x00 HTTP/1.0\r\n\r\n",          # NUL in the target
        b"GET /met\x00rics HTTP/1.0\r\n\r\n",
        b"GET\x00/metrics HTTP/1.0\r\n\r\n",           # NUL in the method
        b"GET /metrics HTTP/1.0\x00\r\n\r\n",          # NUL after the version
        b"GET /metrics\rX HTTP/1.0\r\n\r\n",          # a CR inside the line
        b"GET /metrics\r HTTP/1.0\r\n\r\n",
        b"GET /metrics\x1b[2J HTTP/1.0\r\n\r\n",      # ESC
        b"GET /metrics\t HTTP/1.0\r\n\r\n",
        b"GET /m\xc3\xa9trics HTTP/1.0\r\n\r\n",       # 8-bit in the target
        b"GET http://127.0.0.1/metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # absolute-form
        b"GET * HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",    # NUL in a header field
        b"GET /metrics HTTP/1.1\r\nX-A: \x1b]0;pwned\x07\r\n\r\n",  # escape sequence in a field
        b"\r\n\r\n",
        b"\n\n",
    ]
    for request in bad:
        r = raw_http(ops.metrics_port, request)
        status, _, body = split_response(r)
        assert status == 400, (request, r[:200])
        assert b"postern_" not in body
    ops.relay_one()


def test_paths_other_than_the_two_are_not_found(ops):
    for path in ["/../metrics", "/%2e%2e/metrics", "/%2E%2E/%2e%2e/etc/passwd", "/metrics/../metrics",
                 "/metrics/", "//metrics", "/./metrics", "/METRICS", "/metrics%00", "/metrics;x", "/healthz/..",
                 "/" + "a" * 4000]:
        r = raw_http(ops.metrics_port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, _, body = split_response(r)
        assert status == 404 and b"postern_" not in body, (path, r[:200])
    # A query does not change the path.
    r = raw_http(ops.metrics_port, b"GET /metrics?name[]=postern_build_info&x=%0d%0a HTTP/1.1\r\n\r\n")
    assert status_of(r) == 200 and b"postern_build_info" in r


def test_one_request_per_connection_pipelining_and_bodies(ops):
    # Pipelined requests: one answer, then the close; the second is not read.
    r = raw_http(ops.metrics_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(re.findall(rb"HTTP/1\.0 \d{3} ", r)) == 1 and b"postern_" not in r, r[:300]
    # Bodies are never read: a chunked body, a huge Content-Length, both at
    # once; a request smuggled in a body is not answered.
    for request in [
        b"POST /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1e\r\nGET /metrics HTTP/1.1\r\n\r\n\r\n0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    ]:
        # Not half-closed: postern must answer without waiting for the body.
        r = raw_http(ops.metrics_port, request, shut=False)
        assert len(re.findall(rb"HTTP/1\.0 \d{3} ", r)) == 1 and b"postern_" not in r, (request, r[:300])
    ops.relay_one()


def test_oversized_requests_are_cut_off(ops):
    for request in [
        b"GET /" + b"a" * 100_000,                                      # endless request line
        b"GET /metrics HTTP/1.1\r\n" + b"X-Long: " + b"b" * 100_000,    # endless header field
        b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 20_000 + b"\r\n",  # too many fields
        b"\x00" * 100_000,                                              # binary
    ]:
        r = raw_http(ops.metrics_port, request, shut=False)
        if r:  # an answer is optional; a 2xx is not
            assert 400 <= status_of(r) < 500, r[:200]
            assert b"postern_" not in r
    assert scrape(ops.metrics_port).value("postern_upstream_up") in (0, 1)
    ops.relay_one()


def slow_client(port, prefix, result, key, stop):
    """Sends `prefix` one octet a second, then idles, until postern closes the
    connection (recorded in result[key]) or `stop` is set."""
    s = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    try:
        i = 0
        while not stop.is_set():
            if i < len(prefix):
                try:
                    s.send(prefix[i:i + 1])
                except OSError:
                    result[key] = "closed"
                    return
                i += 1
            readable, _, _ = select.select([s], [], [], 1.0)
            if readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                result[key] = "closed" if not data else "answered: " + repr(data[:100])
                return
        result[key] = "open"
    finally:
        s.close()


def test_slowloris_is_cut_off_and_does_not_block_scrapes(ops):
    prefixes = {
        "request-line": b"GET /metrics HTTP/1.1" + b"x" * 100,
        "headers": b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"y" * 100,
        "silent": b"",
        "cr-lf-cr": b"GET /metrics HTTP/1.1\r\n\r",
    }
    result, stop, threads = {}, threading.Event(), []
    for key, prefix in prefixes.items():
        for n in range(3):
            t = threading.Thread(target=slow_client, args=(ops.metrics_port, prefix, result, (key, n), stop),
                                 daemon=True)
            t.start()
            threads.append(t)
    try:
        # While they trickle, scrapes and SMTP are served.
        for _ in range(3):
            scrape(ops.metrics_port)
        ops.relay_one()
        # Each slow client is closed by postern (its deadline is 5 s), not answered.
        wait_until(lambda: len(result) == len(threads), 60 * SCALE, interval=0.2,
                   message=f"every slow client closed (so far {result})")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert set(result.values()) == {"closed"}, result


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def lower_open_files(proc, headroom):
    """Lowers the running postern's open-file limit to what it uses now plus
    `headroom`, so a flood of idle connections would exhaust it."""
    limit = fd_count(proc.pid) + headroom
    resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
    return limit


@pytest.fixture
def lone(tmp_path, sockdir, sink):
    """A postern of its own: these tests lower its open-file limit."""
    o = Ops(tmp_path, sockdir, sink, "lone")
    yield o
    o.proc.stop()


def test_idle_http_connections_cannot_take_every_descriptor(lone):
    limit = lower_open_files(lone.proc, 120)
    idle = []
    try:
        for _ in range(400):
            idle.append(socket.create_connection(("127.0.0.1", lone.metrics_port), timeout=IO_TIMEOUT))
        # A scrape after all of them is answered (postern accepts in order) ...
        page = scrape(lone.metrics_port)
        assert page.value("postern_upstream_up") in (0, 1)
        # ... with a bounded number of descriptors, and SMTP still accepts.
        assert fd_count(lone.proc.pid) < limit - 40, (fd_count(lone.proc.pid), limit)
        lone.relay_one("after the HTTP flood")
        assert not lone.proc.events("accept-error"), lone.proc.log_tail()
    finally:
        for s in idle:
            s.close()


class Flood(threading.Thread):
    """Keeps `n` idle connections open to a Unix socket: each one postern
    closes is opened again, as a determined client would."""

    def __init__(self, path, n):
        super().__init__(daemon=True)
        self.path, self.n = path, n
        self.socks = {}
        self.opened = 0
        self.done = threading.Event()

    def _connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        if s.connect_ex(self.path) != 0:  # EAGAIN: the listen queue is full
            s.close()
            return None
        return s

    def run(self):
        poller = select.poll()
        while not self.done.is_set():
            for fd, _ in poller.poll(0):
                s = self.socks.pop(fd)
                poller.unregister(fd)
                s.close()  # readable: postern closed it
            while len(self.socks) < self.n:
                s = self._connect()
                if s is None:
                    break
                self.socks[s.fileno()] = s
                poller.register(s, select.POLLIN)
                self.opened += 1
            self.done.wait(0.02)
        for s in self.socks.values():
            s.close()

    def stop(self):
        self.done.set()
        self.join(timeout=10)


def test_idle_control_connections_cannot_take_every_descriptor(lone):
    limit = lower_open_files(lone.proc, 120)
    flood = Flood(lone.control, 300)
    flood.start()
    try:
        wait_until(lambda: flood.opened >= 300, 30 * SCALE, interval=0.05, message="300 control connections")
        # While the flood goes on: bounded descriptors, SMTP accepts.
        assert fd_count(lone.proc.pid) < limit - 40, (fd_count(lone.proc.pid), limit)
        lone.relay_one("during the control flood")
        assert not lone.proc.events("accept-error"), lone.proc.log_tail()
    finally:
        flood.stop()
    # The flood's last connections may still fill the listen queue (a Unix
    # socket's connect fails with EAGAIN then): once postern has taken and
    # closed them, control answers again.
    answer = wait_until(lambda: control_unless_queue_full(lone.control, b"status\n"), IO_TIMEOUT,
                        message="a control answer after the flood")
    assert answer.startswith(b"postern"), answer


# --------------------------------------------------------------------------
# the control socket


def control(path, data, shut=False, timeout=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout or IO_TIMEOUT)
    s.connect(path)
    return exchange(s, data, shut, timeout or IO_TIMEOUT)


def control_unless_queue_full(path, data):
    """control()'s answer, or None while the socket's listen queue is full."""
    try:
        return control(path, data)
    except BlockingIOError:
        return None


def test_control_socket_refuses_hostile_commands(ops):
    reloads = len(ops.proc.events("reloaded")) + len(ops.proc.events("reload-failed"))
    for data in [b"status" + b"x" * 10_000 + b"\n", b"reload" + b" " * 100 + b"\n", b"r" * 100]:
        assert control(ops.control, data).startswith(b"error command too long"), data[:20]
    for data in [b"\x00\n", b"\xff\xfe\x1b[2J\x1b]0;pwned\x07\n", b"reload\x00\n", b"\x00reload\n",
                 b"status\x00json\n", b"status json; reload\n", b"status json\x1b[A\n", b"reload now\n",
                 b"RELOAD\n", b"status\rreload\n", b"$(reload)\n", b"\n", b"\r\n", b"reload\x85\n"]:
        assert control(ops.control, data).startswith(b"error unknown command"), data
    # A command without its newline, the connection then half-closed:
    # no answer and nothing done.
    assert control(ops.control, b"reload", shut=True) == b""
    # Each command is logged on one sanitized line (stderr is read by a thread: wait).
    wait_until(lambda: len(ops.proc.events("control-command")) >= 14, IO_TIMEOUT, message="14 control-command lines")
    logged = [l.get("command") for l in ops.proc.events("control-command")]
    assert reloads == len(ops.proc.events("reloaded")) + len(ops.proc.events("reload-failed"))
    assert all(c is None or all(32 <= ord(ch) < 127 for ch in c) for c in logged), logged
    assert not [l for l in ops.proc.lines if "\x1b" in l or "\x00" in l or "\x07" in l]
    assert control(ops.control, b"status json\n").startswith(b"{")
    assert stat.S_IMODE(os.stat(ops.control).st_mode) == 0o600
    ops.relay_one()


def test_control_clients_that_never_read_do_not_block(ops):
    lazy = []
    try:
        for _ in range(12):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(ops.control)
            s.sendall(b"status json\n")
            lazy.append(s)
        # A client that never sends and one that never reads, side by side
        # with a real `postern status`.
        r = run_cli(["status", "--socket", ops.control], timeout=20 * SCALE)
        assert r.returncode == 0 and r.stdout.startswith("postern"), r.stdout + r.stderr
        ops.relay_one()
    finally:
        for s in lazy:
            s.close()


# --------------------------------------------------------------------------
# metric labels


def test_labels_stay_parseable_and_bounded(ops):
    before = scrape(ops.metrics_port)
    # 700 distinct MAIL FROM domains in one session, each a transaction of
    # its own (MAIL, RSET): the careless rule names a symbol after each.
    with SmtpClient(ops.port) as c:
        c.ehlo("labels.example")
        for i in range(700):
            c.send(f"MAIL FROM:<x@d{i}.quote-and-backslash.example>\r\n".encode())
            check_reply(c.read_reply(), 250)
            c.send(b"RSET\r\n")
            check_reply(c.read_reply(), 250)
        c.send(b"QUIT\r\n")
    # 150 sessions with distinct hostile HELO names and senders.
    for i in range(150):
        with SmtpClient(ops.port) as c:
            c.send(f"EHLO h{i}.\"x\\y{{}}=\r\n".encode())
            c.read_reply()
            c.ehlo(f"h{i}.example")
            c.send(f"MAIL FROM:<\"q\\\"{i}\"@s{i}.example>\r\n".encode())
            c.read_reply()
            c.send(b"RCPT TO:<fail@example.com>\r\n")
            c.read_reply()
            c.send(b"QUIT\r\n")
    after = scrape(ops.metrics_port)  # the strict parser checked every line
    symbols = [labels for (name, labels) in after.samples if name == "postern_symbols_total"]
    assert 0 < len(symbols) <= 513, len(symbols)
    assert after.value("postern_symbols_total", symbol="_other_") > 0
    # No family but the rule's symbols grew with the client's text.
    def series(page):
        return {(re.sub(r"_(bucket|sum|count)$", "", name), frozenset((k, v) for k, v in labels if k != "le"))
                for (name, labels) in page.samples if name != "postern_symbols_total"}
    new = series(after) - series(before)
    assert len(new) < 20, sorted(new)
    # The failing rule's script path (quote, backslash, newline) is one label value.
    [(labels, value)] = [(dict(l), v) for (n, l), v in after.samples.items() if n == "postern_lua_rule_errors_total"]
    assert value >= 150 and labels["rule"] == "OPS_FAILS" and labels["kind"] == "error"
    assert labels["script"].endswith('ops "quoted" back\\slash?newline.lua'), labels
    ops.relay_one()


def test_mta_reply_codes_cannot_invent_label_values(ops, sink):
    """The "code" label of postern_replies_enhanced_total comes from replies
    postern relays, so from the MTA: only X.0.0 to X.7.39 get a series."""
    codes = ["5.999.999", '5.1.1"}} 1\npostern_x_total 9', "5.7.39", "5.8.0", "5.1.1000", "5.01.1", "4.4.40",
             "9.9.9", "5.1", "5.-1.1", "5.1.1\\", "4.7.0\x1b[2J"]
    for i, code in enumerate(codes):
        sink.on("RCPT", f"{550 if code.startswith('5') else 450} {code} hostile",
                match=lambda a, i=i: a.startswith(f"code{i}@"))
    try:
        with SmtpClient(ops.port) as c:
            c.ehlo()
            c.expect("MAIL FROM:<a@example.org>", 250)
            for i in range(len(codes)):
                reply = c.cmd(f"RCPT TO:<code{i}@example.com>")
                assert reply.code // 100 in (4, 5), reply
            c.send(b"QUIT\r\n")
    finally:
        sink.clear_rules()
    page = scrape(ops.metrics_port)  # strict: an injected line would fail here
    seen = {dict(labels)["code"] for (name, labels) in page.samples if name == "postern_replies_enhanced_total"}
    bad = [c for c in seen if not re.fullmatch(r"[45]\.([0-7]\.(\d|[1-3]\d)|other|none)", c)]
    assert not bad, seen
    assert not [k for k in page.samples if k[0] == "postern_x_total"]
    ops.relay_one()


# --------------------------------------------------------------------------
# log lines and the audit log


def hostile_smtp(o):
    """Client text with CR, LF, ESC, NUL, 8-bit and overlong runs into every
    command postern logs."""
    esc = b"\x1b[31;1mRED\x1b[0m\x1b]0;title\x07"
    with SmtpClient(o.port) as c:
        c.send(b"EHLO evil" + esc + b"\xff\xfe\xc3\xa9" + b"h" * 400 + b"\r\n")
        c.read_reply()
        c.send(b"EHLO client.example\r\n")
        c.read_reply()
        c.send(b"AUTH PL" + esc + b"AIN\x00\r\n")
        c.read_reply()
        c.send(b"XYZZY " + esc + b"\x00\x01\x7f\x80\xff" + b"z" * 400 + b"\r\n")
        c.read_reply()
        c.send(b"XYZZY2 " + esc + b"\x01\x7f\x80\xff" + b"z" * 400 + b"\r\n")  # no NUL: logged, cut
        c.read_reply()
        c.send(b"FOO\rinjected 999 fake-event\r\n")
        c.read_reply()
        c.send(b"BAR " + b"z" * 3000 + b"\r\n")  # past the command line limit
        c.read_reply()
        c.send(b"MAIL FROM:<a" + esc + b"@example.org>\r\n")
        c.read_reply()
        c.send(b"MAIL FROM:<\"\xc3\xa9\\\x1b\"@example.org> SMTPUTF8\r\n")
        c.read_reply()
        c.send(b"RCPT TO:<b\x1b[2J@example.com>\r\n")
        c.read_reply()
        c.send(b"RSET\r\n")
        c.read_reply()
        c.send(b"MAIL FROM:<\"x\\\"y\"@example.org>\r\n")
        check_reply(c.read_reply(), 250)
        c.send(b"RCPT TO:<b@example.com>\r\n")
        check_reply(c.read_reply(), 250)
        c.send(b"DATA\r\n")
        check_reply(c.read_reply(), 354)
        c.send(b"From: \"\x1b[31m\" <a@ex\xc3\xa9mple.org>\r\nSubject: \x1b]0;x\x07 \xff\r\n"
               b"Message-ID: <\x1b[2J\"\\@x>\r\n\r\nbody\r\n.\r\n")
        c.read_reply()  # accepted or refused: either way audited
        c.send(b"QUIT\r\n")
    for header in [b"PROXY TCP4 192.0.2.1\x1b[2J 192.0.2.2 1 2\r\n", b"PROXY TCP4 192.0.2.1\r\n192.0.2.2 1 2\r\n",
                   b"PROXY \x00\xff\r\n"]:
        with SmtpClient(o.proxy_port, greeting=False) as c:
            c.send(header)
            c.wait_closed()


def assert_clean_log(lines, start_pattern):
    """Every line one record: printable ASCII, starting like a record, bounded."""
    for line in lines:
        assert all(32 <= ord(ch) < 127 for ch in line), repr(line)
        assert re.match(start_pattern, line), repr(line)
        assert len(line) < 8192, len(line)


def test_text_log_lines_stay_one_line_each(ops):
    start = len(ops.proc.lines)
    hostile_smtp(ops)
    ops.relay_one()
    wait_until(lambda: len(ops.proc.events("unknown-command")) >= 2 and ops.proc.events("line-too-long"), IO_TIMEOUT,
               message="unknown-command and line-too-long logged")
    lines = ops.proc.lines[start:]
    assert_clean_log(lines, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info|warning|error) [a-z0-9-]+( |$)")
    # Values are cut (limits::kLogText is 256 octets).
    logged = [l.get("line") or "" for l in ops.proc.events("unknown-command")]
    assert any(x.startswith("XYZZY2 ?[31;1mRED") and x.endswith("zzz...") and len(x) == 259 for x in logged), logged
    check_audit(ops.audit)


def check_audit(path):
    wait_until(lambda: path.exists() and path.read_bytes().count(b"\n") >= 1, IO_TIMEOUT)
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    records = []
    for line in raw.split(b"\n")[:-1]:
        text = line.decode("utf-8")  # strict: valid UTF-8
        assert "\n" not in text and "\r" not in text
        records.append(json.loads(text))
    # The hostile transaction left its record, its text escaped, not dropped.
    assert any(r.get("mail_from") == '"x\\"y"@example.org' for r in records), [r.get("mail_from") for r in records]
    return records


def test_json_log_lines_and_the_audit_log_stay_valid(tmp_path, sockdir, sink):
    o = Ops(tmp_path, sockdir, sink, "json", log_format="json")
    try:
        hostile_smtp(o)
        o.relay_one()
        wait_until(lambda: sum('"event":"unknown-command"' in l for l in o.proc.lines) >= 2, IO_TIMEOUT)
        for line in o.proc.lines:
            assert all(32 <= ord(ch) < 127 for ch in line), repr(line)
            rec = json.loads(line)
            assert isinstance(rec, dict) and rec["event"], line
            assert all(isinstance(v, (str, int, float, bool)) for v in rec.values()), line
        check_audit(o.audit)
    finally:
        o.proc.stop()


# --------------------------------------------------------------------------
# the DMARC aggregate report


HOSTILE_TEXT = [
    "]]><injected>x</injected><![CDATA[",
    "<!-- -->&amp;&#0;&#x1;<?xml version=\"1.0\"?>",
    "\"'><script>alert(1)</script>",
    "nul\x00bel\x07esc\x1b[2Jdel\x7fc1\x85",
    "nonchar\ufffe\uffff end",
    "lone surrogate \ud800 end",
    "bidi \u202e\u2066 and \U0001f4e7",
    "x" * 5000,
]


def test_dmarc_report_xml_stays_well_formed_and_valid(tmp_path, sink):
    lines = []
    t = 0

    def at():
        nonlocal t
        t += 1
        return f"2026-11-20T10:{t // 60 % 60:02d}:{t % 60:02d}.000Z"

    for i, h in enumerate(HOSTILE_TEXT):
        lines.append(record(at(), f"192.0.2.{i + 1}", h, record_domain="v6.example.com"))
        lines.append(record(at(), f"192.0.2.{i + 1}", "v6.example.com", override=("local_policy", h)))
        lines.append(record(at(), f"192.0.2.{i + 1}", "v6.example.com", dkim=[(h, h, "fail"), ("ok.example", h, h)],
                            spf=("fail", "mailfrom"), mail_from=f"bounce@{h}"))
        lines.append(record(at(), f"192.0.2.{i + 1}", "v6.example.com", action=h, disposition="reject"))
    # Invalid UTF-8 written raw into the JSON strings.
    raw = record(at(), "192.0.2.100", "v6.example.com", override=("other", "RAWBYTES"),
                 dkim=[("d.example", "RAWBYTES", "pass")])
    lines_b = [l.encode() for l in lines]
    lines_b.append(raw.encode().replace(b"RAWBYTES", b"\xff\xfe\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80"))
    # Many distinct sources, and policy domains that are not host names.
    for i in range(2000):
        lines_b.append(record(at(), f"198.51.{i // 250}.{i % 250 + 1}", "v6.example.com").encode())
    for bad in ["../../etc", "a/b.example", "x\r\nBcc: y.example", ".."]:
        lines_b.append(record(at(), "192.0.2.200", bad, record_domain=bad).encode())
    audit = tmp_path / "audit.jsonl"
    audit.write_bytes(b"\n".join(lines_b) + b"\n")
    dns = UnboundServer([txt_record("_dmarc.v6.example.com", "v=DMARC1; p=reject; rua=mailto:r@v6.example.com")])
    server = dns.start()
    try:
        cfg = report_config(tmp_path, server, sink.address, audit)
        out_dir = tmp_path / "out"
        r = run_cli(["report", "dmarc", "--config", cfg, "--from", "2026-11-20", "--to", "2026-11-21",
                     "--out", str(out_dir)], timeout=60 * SCALE)
    finally:
        server.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    assert reports_in(out_dir) == ["reporter.test!v6.example.com!1795132800!1795219199.xml.gz"]
    # No file outside its name: the policy domains that are not host names
    # ("../../etc", a CR LF) made none.
    written = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs if ".xml" in f]
    assert written == [str(out_dir / reports_in(out_dir)[0])], written
    xml = gzip.decompress((out_dir / reports_in(out_dir)[0]).read_bytes())
    xml.decode("utf-8")  # strict
    root = ET.fromstring(xml)  # expat: well-formed, every character an XML Char
    path = tmp_path / "report.xml"
    path.write_bytes(xml)
    v = subprocess.run(["xmllint", "--noout", "--schema", XSD, str(path)], capture_output=True, text=True)
    assert v.returncode == 0, v.stderr
    # Nothing injected: the only elements are the schema's.
    names = {el.tag.split("}")[1] for el in root.iter()}
    assert names <= {"feedback", "report_metadata", "org_name", "email", "extra_contact_info", "report_id",
                     "date_range", "begin", "end", "policy_published", "domain", "adkim", "aspf", "p", "sp", "pct",
                     "fo", "record", "row", "source_ip", "count", "policy_evaluated", "disposition", "dkim", "spf",
                     "reason", "type", "comment", "identifiers", "envelope_from", "header_from", "auth_results",
                     "selector", "result", "scope"}, names
    texts = [el.text or "" for el in root.iter()]
    assert all(len(x.encode()) <= 255 for x in texts), max(len(x.encode()) for x in texts)
    assert any("]]><injected>" in x for x in texts)  # kept, as text
    assert not any(ch in x for x in texts for ch in "\x00\x07\x1b\ufffe\uffff")
    sources = {rec.findtext("d:row/d:source_ip", namespaces=NS) for rec in root.findall("d:record", NS)}
    assert len(sources) >= 2000
    # Every in-range record is counted once: the four domains that are not host
    # names are malformed, and so is the raw line if its octets are refused.
    counts = sum(int(rec.findtext("d:row/d:count", namespaces=NS)) for rec in root.findall("d:record", NS))
    malformed = int(re.search(r"(\d+) malformed lines", r.stdout).group(1))
    assert malformed in (4, 5), r.stdout
    assert counts == 4 * len(HOSTILE_TEXT) + 1 + 2000 - (malformed - 4), (counts, r.stdout)
