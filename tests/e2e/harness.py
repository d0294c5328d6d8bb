"""End-to-end harness for postern: the postern process, a scriptable SMTP sink,
Postfix's smtp-sink, and a raw SMTP client.

Everything here talks to real programs on loopback. Nothing is mocked.

- PosternProcess  starts `postern run --listen 127.0.0.1:0 ...`, parses the
                  `listening address=` line, collects every log line, and
                  stops it with SIGTERM (exit status 0 expected).
- RecordingSink   an aiosmtpd server in its own thread and event loop that
                  records every envelope and the exact DATA bytes, and can be
                  scripted per stage: reply, stall, drop the connection.
- PostfixSink     Postfix's /usr/sbin/smtp-sink on a free port.
- SmtpClient      a raw socket client with a time-out on every read.
"""

import asyncio
import hashlib
import logging
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
import weakref

from aiosmtpd.smtp import SMTP

from ports import free_port  # noqa: F401 (the tests import it from here)

POSTERN_BIN = os.path.abspath(os.environ.get("POSTERN_BIN", "/work/main/build/postern"))


def _binary_is_asan(path):
    """True when the binary under test is built with AddressSanitizer."""
    if os.environ.get("POSTERN_ASAN") in ("1", "yes", "true"):
        return True
    try:
        with open(path, "rb") as f:
            data = f.read()
        return b"__asan_init" in data or b"AddressSanitizer" in data
    except OSError:
        return False


ASAN = _binary_is_asan(POSTERN_BIN)
# Sanitizer builds are ~3x slower: stretch the test side's waits, never the
# time-outs configured in postern (those are what the tests measure).
SCALE = float(os.environ.get("POSTERN_TIMEOUT_SCALE", "3" if ASAN else "1"))
IO_TIMEOUT = 10.0 * SCALE
HOSTNAME = "mx.postern.test"

logging.getLogger("mail.log").setLevel(logging.CRITICAL)


# --------------------------------------------------------------------------
# small helpers


def wait_port(port, timeout=5.0):
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_until(predicate, timeout, interval=0.02, message="condition"):
    """Poll predicate() until it is true; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {message}")
        time.sleep(interval)


def stop_process(proc, grace=5.0, sig=signal.SIGTERM):
    """Ask a helper program to exit (SIGTERM), give it `grace` seconds, then
    SIGKILL it: the end every test-started server gets."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


def strip_received(content):
    """Split off the leading Received: header (with its continuation lines).

    Returns (received_header_bytes, rest). Fails if the content does not
    start with a Received: header."""
    if not content[:9].lower() == b"received:":
        raise AssertionError(f"message does not start with Received: {content[:200]!r}")
    pos = content.find(b"\r\n")
    assert pos >= 0, "Received header has no CRLF"
    pos += 2
    while pos < len(content) and content[pos:pos + 1] in (b" ", b"\t"):
        nxt = content.find(b"\r\n", pos)
        assert nxt >= 0, "Received continuation line has no CRLF"
        pos = nxt + 2
    return content[:pos], content[pos:]


RECEIVED_RE = re.compile(
    r"^Received: from .+?\s+by (\S+) \(postern\) with ESMTP id (\S+)\s*;\s*(\S.*)$", re.S)


def parse_received(header):
    """Unfold a Received header and match it against the contract's form."""
    text = header.decode("latin-1")
    unfolded = re.sub(r"\r\n(?=[ \t])", "", text).rstrip("\r\n")
    m = RECEIVED_RE.match(unfolded)
    assert m, f"Received header does not match the contract: {unfolded!r}"
    return m


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def dot_stuff(content):
    """Dot-stuff CRLF content for the wire (RFC 5321 4.5.2)."""
    if content.startswith(b"."):
        content = b"." + content
    return content.replace(b"\r\n.", b"\r\n..")


def data_payload(content):
    """The bytes a client sends after 354: stuffed content + end marker."""
    stuffed = dot_stuff(content)
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def has_bare_line_ending(data):
    return re.search(rb"(?<!\r)\n|\r(?!\n)", data) is not None


def normalize_line_endings(data):
    """Bare CR or bare LF -> CRLF, as data.bare_line_ending=normalize promises."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


# --------------------------------------------------------------------------
# postern logs

_FIELD_RE = re.compile(r'([A-Za-z0-9_.-]+)=("(?:[^"\\]|\\.)*"|\S*)')


class LogLine:
    def __init__(self, raw):
        self.raw = raw
        parts = raw.split(None, 3)
        self.ts = parts[0] if len(parts) > 0 else ""
        self.level = parts[1] if len(parts) > 1 else ""
        self.event = parts[2] if len(parts) > 2 else ""
        self.fields = {}
        rest = parts[3] if len(parts) > 3 else ""
        for key, value in _FIELD_RE.findall(rest):
            if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            self.fields[key] = value

    def get(self, key, default=None):
        return self.fields.get(key, default)

    def __repr__(self):
        return f"LogLine({self.raw!r})"


# --------------------------------------------------------------------------
# postern process

_live_clients = weakref.WeakSet()


class PosternProcess:
    """One `postern` process; its stderr lines are in self.lines, stdout's in self.stdout_lines."""

    def __init__(self, args, cwd, env=None, binary=None):
        self.binary = binary or POSTERN_BIN
        self.args = list(args)
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        self._lines = []
        self._stdout_lines = []
        self._pipes = {}                      # fd -> [sink, partial line, at EOF]
        self._cond = threading.Condition()
        self.proc = None
        self.port = None
        self.addresses = []
        self.stopped = False
        self.returncode = None

    # -- start / stop ------------------------------------------------------

    def start(self, wait=True, timeout=None):
        self.proc = subprocess.Popen(
            [self.binary] + self.args, cwd=self.cwd, env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._pipes = {}
        for stream, sink in ((self.proc.stderr, self._lines), (self.proc.stdout, self._stdout_lines)):
            os.set_blocking(stream.fileno(), False)
            self._pipes[stream.fileno()] = [sink, b"", False]
        self._threads = [threading.Thread(target=self._reader, args=(fd,), daemon=True)
                         for fd in self._pipes]
        for t in self._threads:
            t.start()
        if wait:
            line = self.wait_for_log(event="listening", timeout=timeout or 10 * SCALE)
            self.addresses = [l.get("address") for l in self.events("listening")]
            addr = line.get("address")
            assert addr and ":" in addr, f"bad listening line: {line.raw!r}"
            self.port = int(addr.rsplit(":", 1)[1])
            assert self.port != 0, f"listening line shows port 0: {line.raw!r}"
            self._await_probe(timeout or 10 * SCALE)
        return self

    def _await_probe(self, timeout):
        """postern probes an SMTP upstream once at start-up (EHLO, QUIT) to learn
        what to advertise; wait for it and discount it from a recording sink's
        connection count, so tests count only the sessions' connections."""
        if "--upstream" not in self.args:
            return
        target = self.args[self.args.index("--upstream") + 1]
        if target.startswith("maildir:"):
            return
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self.events("upstream-capabilities") or self.events("upstream-probe-failed")):
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, \
                    "postern logged neither upstream-capabilities nor upstream-probe-failed\n" + self.log_tail()
                self._cond.wait(min(left, 0.1))
            if not self.events("upstream-capabilities"):
                return
        port = int(target.rsplit(":", 1)[1])
        for sink in _LIVE_SINKS:
            if sink.port == port:
                with sink._lock:
                    sink.connections -= 1

    # postern's stderr and stdout are read by a thread each, and also by whoever
    # looks at the lines: `lines`, `stdout_lines` and `events()` first drain what
    # the pipe holds, under the lock the threads read under. So a line postern
    # wrote before the action a test just saw the effect of is in the list, even
    # when the reader thread has not been scheduled since (a loaded machine).

    def _reader(self, fd):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while True:
            poller.poll()
            with self._cond:
                at_eof = self._drain(fd)
                self._cond.notify_all()
            if at_eof:
                return

    def _drain(self, fd):
        """Append every whole line the pipe holds now; True once it reached EOF.
        Called with self._cond held."""
        pipe = self._pipes[fd]
        sink, partial, at_eof = pipe
        while not at_eof:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                at_eof = True
                if partial:
                    sink.append(partial.decode("utf-8", "replace").rstrip("\r"))
                    partial = b""
                break
            *whole, partial = (partial + chunk).split(b"\n")
            sink.extend(raw.decode("utf-8", "replace").rstrip("\r") for raw in whole)
        pipe[1], pipe[2] = partial, at_eof
        return at_eof

    def _caught_up(self, sink):
        with self._cond:
            for fd, pipe in self._pipes.items():
                if pipe[0] is sink:
                    self._drain(fd)
        return sink

    @property
    def lines(self):
        """postern's stderr so far, one entry a line."""
        return self._caught_up(self._lines)

    @property
    def stdout_lines(self):
        return self._caught_up(self._stdout_lines)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        """Wait for the process to exit; returns its status or None."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for t in self._threads:
            t.join(timeout=2)
        self.returncode = rc
        return rc

    def stop(self, timeout=None, expect_rc=0):
        """SIGTERM; assert it exits with expect_rc within timeout seconds."""
        close_all_clients()
        timeout = timeout if timeout is not None else 5 * SCALE
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        self.stopped = True
        if rc is None:
            self.proc.kill()
            self.wait_exit(5)
            raise AssertionError(
                f"postern did not exit within {timeout:.1f}s of SIGTERM\n{self.log_tail()}")
        if expect_rc is not None:
            assert rc == expect_rc, f"postern exited with {rc}, expected {expect_rc}\n{self.log_tail()}"
        self.check_sanitizers()
        return rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.wait_exit(5)

    def check_sanitizers(self):
        bad = [l for l in self.lines if "AddressSanitizer" in l or "LeakSanitizer" in l
               or "runtime error:" in l or "ThreadSanitizer" in l]
        assert not bad, "sanitizer report in postern's stderr:\n" + "\n".join(self.lines[-200:])

    # -- logs --------------------------------------------------------------

    def log_tail(self, n=60):
        with self._cond:
            return "---- postern stderr (last lines) ----\n" + "\n".join(self.lines[-n:])

    def events(self, event=None, **fields):
        with self._cond:
            lines = list(self.lines)      # caught up with the pipe (see _drain)
        out = []
        for raw in lines:
            ll = LogLine(raw)
            if event is not None and ll.event != event:
                continue
            if all(ll.get(k) == v for k, v in fields.items()):
                out.append(ll)
        return out

    def wait_for_log(self, event=None, timeout=None, count=1, **fields):
        """Wait until `count` log lines with this event/fields exist."""
        timeout = timeout if timeout is not None else IO_TIMEOUT
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.events(event, **fields)
                if len(found) >= count:
                    return found[count - 1] if count == 1 else found
                if self.proc.poll() is not None and all(not t.is_alive() for t in self._threads):
                    raise AssertionError(
                        f"postern exited ({self.proc.returncode}) before logging {event} {fields}\n"
                        + self.log_tail())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {count} log line(s) event={event} {fields} within {timeout:.1f}s "
                        f"(found {len(found)})\n" + self.log_tail())
                self._cond.wait(min(left, 0.2))

    # -- memory ------------------------------------------------------------

    def status_kb(self, key):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)


def postern_run_args(upstream=None, sets=None, config=None, listen=("127.0.0.1:0",), extra=()):
    args = ["run"]
    if config is not None:
        args += ["--config", str(config)]
    for l in listen or ():
        args += ["--listen", l]
    if upstream is not None:
        args += ["--upstream", upstream]
    for k, v in (sets or {}).items():
        args += ["--set", f"{k}={v}"]
    args += list(extra)
    return args


def run_cli(args, timeout=None, cwd=None):
    """Run the postern binary with args to completion; returns CompletedProcess."""
    return subprocess.run([POSTERN_BIN] + list(args), capture_output=True, text=True,
                          timeout=timeout or 20 * SCALE, cwd=cwd, stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------
# raw SMTP client


class ConnectionClosed(Exception):
    pass


class Reply:
    def __init__(self, raw_lines):
        self.raw_lines = raw_lines            # full lines, e.g. "250-PIPELINING"
        self.code = int(raw_lines[-1][:3])
        self.lines = [l[4:] for l in raw_lines]  # texts
        last = self.lines[-1]
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})(?: |$)", last)
        self.enhanced = m.group(1) if m else None

    @property
    def text(self):
        return "\n".join(self.lines)

    def __str__(self):
        return "\\r\\n".join(self.raw_lines)

    __repr__ = __str__


def check_reply(reply, code, enhanced=None, what=""):
    assert reply.code == code, f"{what}: expected {code} {enhanced or ''}, got {reply}"
    if enhanced is not None:
        assert reply.enhanced == enhanced, f"{what}: expected {code} {enhanced}, got {reply}"
    return reply


class SmtpClient:
    """Line-oriented raw client: nothing is hidden, every read has a time-out."""

    def __init__(self, port, host="127.0.0.1", timeout=None, greeting=True, source=None,
                 tls_context=None):
        """source: local IP to bind before connecting (e.g. "127.0.0.7");
        tls_context: an ssl.SSLContext for implicit TLS (RFC 8314)."""
        self.timeout = timeout if timeout is not None else IO_TIMEOUT
        self.sock = socket.create_connection((host, port), timeout=self.timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.settimeout(self.timeout)
        self.buf = bytearray()
        self.eof = False
        _live_clients.add(self)
        if tls_context is not None:
            self.sock = tls_context.wrap_socket(self.sock, server_hostname=HOSTNAME)
        self.greeting = self.read_reply() if greeting else None

    def starttls(self, context=None):
        """STARTTLS, check the 220, then the handshake on this socket.

        Returns the 220 reply. Fails if the server sent more than the 220."""
        reply = self.expect("STARTTLS", 220, "2.0.0")
        assert not self.buf, f"bytes after the 220 to STARTTLS: {bytes(self.buf)!r}"
        self.sock = (context or client_tls_context()).wrap_socket(self.sock, server_hostname=HOSTNAME)
        return reply

    def peer_cert_sha256(self):
        """SHA-256 of the server's certificate (DER) on a TLS connection."""
        return sha256(self.sock.getpeercert(binary_form=True))

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self, timeout=None):
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        finally:
            self.sock.settimeout(self.timeout)
        if not chunk:
            self.eof = True
            raise ConnectionClosed("server closed the connection")
        self.buf += chunk

    def read_line(self, timeout=None):
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            pos = self.buf.find(b"\r\n")
            if pos >= 0:
                line = bytes(self.buf[:pos])
                del self.buf[:pos + 2]
                return line.decode("latin-1")
            if self.eof:
                raise ConnectionClosed(f"server closed the connection (partial: {bytes(self.buf)!r})")
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"no reply line within time-out (buffered {bytes(self.buf)!r})")
            self._fill(left)

    def read_reply(self, timeout=None):
        lines = []
        while True:
            line = self.read_line(timeout)
            assert re.match(r"^[2-5]\d\d([ -]|$)", line), f"malformed reply line {line!r}"
            if lines:
                assert line[:3] == lines[0][:3], f"reply code changed inside a multi-line reply: {lines + [line]}"
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return Reply(lines)

    def cmd(self, line, timeout=None):
        self.send(line + "\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.read_reply(timeout)

    def expect(self, line, code, enhanced=None, timeout=None):
        return check_reply(self.cmd(line, timeout), code, enhanced, what=str(line)[:80])

    def ehlo(self, name="client.example"):
        return self.expect(f"EHLO {name}", 250)

    def send_message(self, sender, rcpts, content, mail_params=""):
        """A whole transaction without pipelining; returns the final reply."""
        self.expect(f"MAIL FROM:<{sender}>{' ' + mail_params if mail_params else ''}", 250)
        for r in rcpts:
            self.expect(f"RCPT TO:<{r}>", 250)
        self.expect("DATA", 354)
        self.send(data_payload(content))
        return self.read_reply()

    def wait_closed(self, timeout=None):
        """True if the server closes the connection (no further bytes) in time."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self._fill(left)
            except ConnectionClosed:
                return True
            except (socket.timeout, TimeoutError):
                return False
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        _live_clients.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def close_all_clients():
    for c in list(_live_clients):
        c.close()


# --------------------------------------------------------------------------
# scriptable recording sink (aiosmtpd)


class ScriptedServer:
    """A TCP server on a free loopback port whose subclass scripts each
    connection in session(conn), one thread per connection: for MTA
    behaviour no real MTA shows on purpose."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def session(self, conn):
        raise NotImplementedError

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self.sock.close()


class Rule:
    """What the sink does at one stage.

    stage: CONNECT, EHLO, MAIL, RCPT, DATA (the DATA command), DATA_CONTENT
           (when the first content bytes arrive), DATA_END (after the final dot).
    match: None, an address string, or a callable(address) -> bool (MAIL/RCPT).
    reply: None (normal), a reply string (may hold CRLF for multi-line), or a
           callable(address_or_message) -> str.
    delay: seconds to stall before acting.  drop: close the connection, no reply.
    close_after: send the (given or normal) reply, then close the connection.
    times: apply at most this many times (None = always)."""

    def __init__(self, stage, reply=None, delay=0.0, drop=False, match=None, times=None,
                 close_after=False):
        self.stage = stage
        self.close_after = close_after
        self.reply = reply
        self.delay = delay
        self.drop = drop
        self.match = match
        self.times = times
        self.used = 0

    def matches(self, stage, arg):
        if self.stage != stage:
            return False
        if self.times is not None and self.used >= self.times:
            return False
        if self.match is None:
            return True
        if callable(self.match):
            return bool(self.match(arg))
        return self.match == arg


class SinkMessage:
    def __init__(self, conn_id, mail_from, mail_options, rcpt_tos, raw, content, keep):
        self.conn_id = conn_id
        self.mail_from = mail_from
        self.mail_options = list(mail_options)
        self.rcpt_tos = list(rcpt_tos)
        self.size = len(content)
        self.sha256 = sha256(content)
        try:
            self.received, body = strip_received(content)
            self.body_sha256 = sha256(body)
            self.body_size = len(body)
        except AssertionError:
            self.received, body = None, None
            self.body_sha256 = None
            self.body_size = None
        self.content = content if keep else None
        self.body = body if keep else None
        self.raw = raw if keep else None      # stuffed bytes as they came on the wire
        self.raw_has_bare_line_ending = has_bare_line_ending(raw)
        self.raw_has_nul = b"\x00" in raw

    def __repr__(self):
        return (f"SinkMessage(from={self.mail_from!r} to={self.rcpt_tos!r} size={self.size} "
                f"head={(self.content or b'')[:120]!r})")


_LENIENT_END = re.compile(rb"(\r\n|\r|\n)\x00*\.\x00*(?:\r\n|\r|\n)")


class _SinkHandler:
    def __init__(self, sink):
        self.sink = sink

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        act = await self.sink._act(server, "EHLO", hostname)
        self.sink._event(server, "EHLO", hostname)
        if act is not None:
            return [act]
        session.host_name = hostname
        out = [r for r in responses if r not in ("250 HELP",)]
        out += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        if self.sink.xclient:
            out.append("250-XCLIENT ADDR PORT NAME HELO PROTO LOGIN")
        if self.sink.chunking:
            out.append("250-CHUNKING")
        if self.sink.dsn:
            out.append("250-DSN")
        out.append("250 HELP")
        return out

    async def handle_HELO(self, server, session, envelope, hostname):
        self.sink._event(server, "HELO", hostname)
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(self, server, session, envelope, address, options):
        self.sink._event(server, "MAIL", address, options)
        act = await self.sink._act(server, "MAIL", address)
        if act is not None:
            return act
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, options):
        self.sink._event(server, "RCPT", address, options)
        act = await self.sink._act(server, "RCPT", address)
        if act is not None:
            return act
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_RSET(self, server, session, envelope):
        self.sink._event(server, "RSET")
        act = await self.sink._act(server, "RSET", None)
        return act if act is not None else "250 2.0.0 Ok"

    async def handle_NOOP(self, server, session, envelope, arg):
        self.sink._event(server, "NOOP")
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server, session, envelope):
        self.sink._event(server, "QUIT")
        return "221 2.0.0 Bye"


class _SinkSMTP(SMTP):
    def __init__(self, sink, **kw):
        super().__init__(_SinkHandler(sink), **kw)
        self.sink = sink
        self.conn_id = None
        self.close_after_reply = False
        self.xclient_attrs = None     # what the last XCLIENT said, as a dict
        self._chunks = None           # BDAT: the chunks of the message so far

    def _stamp(self, msg):
        # Who the MTA believed the client was when the message ended.
        msg.xclient = dict(self.xclient_attrs) if self.xclient_attrs is not None else None
        msg.helo = self.session.host_name
        msg.chunks = None
        return msg

    async def smtp_XCLIENT(self, arg):
        # Postfix XCLIENT_README: not inside a transaction; a 220 greeting
        # follows and the session starts over (EHLO needed again).
        if not self.sink.xclient:
            await self.push("502 5.5.2 Error: command not recognized")
            return
        if self.envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: MAIL transaction in progress")
            return
        attrs = {}
        for item in (arg or "").split():
            k, _, v = item.partition("=")
            attrs[k.upper()] = re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), v)
        self.sink._event(self, "XCLIENT", attrs)
        act = await self.sink._act(self, "XCLIENT", attrs)
        if act is not None:
            await self.push(act)
            return
        self.xclient_attrs = attrs
        self._set_rset_state()
        self.session.host_name = None
        self.session.extended_smtp = False
        await self.push("220 sink.test ESMTP")

    # RFC 3461 DSN, as far as a sink needs it (aiosmtpd knows no DSN and
    # refuses its parameters): with dsn=True each MAIL and RCPT line is
    # recorded as sent ("MAIL-LINE"/"RCPT-LINE" events, sink.lines()) and its
    # DSN parameters are taken out before aiosmtpd parses the rest.
    _DSN_MAIL = ("RET=", "ENVID=")
    _DSN_RCPT = ("NOTIFY=", "ORCPT=")

    def _without_dsn(self, arg, keywords):
        words = (arg or "").split(" ")
        return " ".join(w for w in words if not w.upper().startswith(keywords))

    async def smtp_MAIL(self, arg):
        if self.sink.dsn:
            self.sink._event(self, "MAIL-LINE", f"MAIL {arg}")
            arg = self._without_dsn(arg, self._DSN_MAIL)
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg):
        if self.sink.dsn:
            self.sink._event(self, "RCPT-LINE", f"RCPT {arg}")
            arg = self._without_dsn(arg, self._DSN_RCPT)
        await super().smtp_RCPT(arg)

    async def smtp_BDAT(self, arg):
        # RFC 3030, as far as a sink needs it: the chunk's octets are read
        # whatever the reply; sizes and LAST recorded as ("BDAT", size, last).
        if not self.sink.chunking:
            await self.push("502 5.5.2 Error: command not recognized")
            return
        parts = (arg or "").split()
        if not parts or not parts[0].isdigit() or len(parts) > 2 or (len(parts) == 2 and parts[1].upper() != "LAST"):
            await self.push("501 5.5.4 Syntax: BDAT size [LAST]")
            self.transport.close()
            return
        size, last = int(parts[0]), len(parts) == 2
        chunk = await self._reader.readexactly(size) if size else b""
        self.sink._event(self, "BDAT", size, last)
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        act = await self.sink._act(self, "BDAT", (size, last))
        if act is not None:
            await self.push(act)
            return
        if self._chunks is None:
            self._chunks = []
        self._chunks.append(chunk)
        if not last:
            await self.push(f"250 2.0.0 Ok: {size} octets received")
            return
        chunks, self._chunks = self._chunks, None
        content = b"".join(chunks)
        msg = self._stamp(SinkMessage(self.conn_id, self.envelope.mail_from, self.envelope.mail_options,
                                      self.envelope.rcpt_tos, content, content, self.sink.keep_content))
        msg.chunks = [len(c) for c in chunks]
        act = await self.sink._act(self, "DATA_END", msg)
        final = act if act is not None else self.sink.final_reply
        if callable(final):
            final = final(msg)
        self.sink._record(msg, final)
        self._set_post_data_state()
        await self.push(final)

    async def push(self, status):
        await super().push(status)
        if self.close_after_reply and self.transport is not None:
            self.close_after_reply = False
            self.transport.close()

    def connection_made(self, transport):
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.sink._connection(self)

    def connection_lost(self, error):
        self.sink._event(self, "LOST")
        super().connection_lost(error)

    def _getaddr(self, arg):
        # aiosmtpd rejects the null reverse-path; a real MTA takes it.
        if arg is not None and arg.strip().startswith("<>"):
            return "<>", arg.strip()[2:].strip()
        return super()._getaddr(arg)

    async def _handle_client(self):
        act = await self.sink._act(self, "CONNECT", None)
        if act is not None:
            await self.push(act)
            self.transport.close()
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg):
        if await self.check_helo_needed():
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        self.sink._event(self, "DATA")
        act = await self.sink._act(self, "DATA", None)
        if act is not None:
            await self.push(act)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")

        lenient = self.sink.lenient
        buf = bytearray(b"\r\n")     # virtual line end before the first line
        scanned = 0
        first = True
        leftover = b""
        while True:
            if lenient:
                m = _LENIENT_END.search(buf)
                end, after = (m.end(1) - 2, m.end()) if m else (-1, -1)
            else:
                end = buf.find(b"\r\n.\r\n", max(0, scanned - 4))
                after = end + 5
            if end >= 0:
                raw = bytes(buf[2:end + 2])
                leftover = bytes(buf[after:])
                break
            scanned = len(buf)
            chunk = await self._reader.read(1 << 18)
            if not chunk:
                self.sink._event(self, "EOF_IN_DATA")
                return
            if first:
                first = False
                act = await self.sink._act(self, "DATA_CONTENT", None)
                if act is not None:
                    await self.push(act)
                    self.transport.close()
                    return
            buf += chunk
        del buf
        if leftover:
            # pipelined commands after the end of data go back to the reader
            self._reader._buffer[0:0] = leftover
        content = raw[1:] if raw.startswith(b".") else raw
        if lenient:   # a lenient MTA's lines end at CR, LF or CRLF
            content = re.sub(rb"(\r\n|\r(?!\n)|\n)\.", rb"\1", content)
        else:
            content = content.replace(b"\r\n.", b"\r\n")
        msg = self._stamp(SinkMessage(self.conn_id, self.envelope.mail_from, self.envelope.mail_options,
                                      self.envelope.rcpt_tos, raw, content, self.sink.keep_content))
        del raw, content
        act = await self.sink._act(self, "DATA_END", msg)
        if act is not None:
            self.sink._record(msg, act)
            self._set_post_data_state()
            await self.push(act)
            return
        final = self.sink.final_reply
        if callable(final):
            final = final(msg)
        self.sink._record(msg, final)
        self._set_post_data_state()
        await self.push(final)


# Sinks alive in this process, so a starting postern can discount its
# capability probe (one EHLO/QUIT connection at start-up) from their counts.
_LIVE_SINKS = []


class RecordingSink:
    """aiosmtpd-based MTA stand-in that records everything it is given."""

    def __init__(self, lenient=False, keep_content=True,
                 final_reply="250 2.0.0 Ok: queued as ABC123", data_size_limit=104857600,
                 auth=None, auth_required=False, smtputf8=False, xclient=False, chunking=False, dsn=False):
        """auth: (user, password) -- offer AUTH PLAIN LOGIN (over plaintext, as
        postern talks to it on loopback) and accept exactly these credentials;
        auth_required: refuse MAIL before a successful AUTH (530);
        smtputf8: offer SMTPUTF8 (RFC 6531); xclient: offer and take XCLIENT
        as Postfix does (220, then EHLO again), each message records it in
        .xclient; chunking: offer CHUNKING and take BDAT, each message
        records its chunk sizes in .chunks; dsn: offer DSN (RFC 3461), take
        its parameters and record every MAIL and RCPT line (lines())."""
        self.xclient = xclient
        self.dsn = dsn
        self.chunking = chunking
        self.lenient = lenient                # also end DATA on LF.LF, CR.CR, NUL tricks
        self.auth = auth
        self.auth_required = auth_required
        self.smtputf8 = smtputf8
        self.auth_attempts = []               # (conn_id, mechanism, login, success)
        self.keep_content = keep_content
        self.final_reply = final_reply
        self.data_size_limit = data_size_limit
        self.rules = []
        self.messages = []                    # accepted (2xx) messages
        self.refused_messages = []            # complete content answered with non-2xx
        self.events = []                      # (conn_id, verb, args...)
        self.connections = 0
        self._ids = 0
        self._lock = threading.Lock()
        self._protocols = []
        self.loop = None
        self.port = None
        _LIVE_SINKS.append(self)

    # -- scripting ---------------------------------------------------------

    def on(self, stage, reply=None, delay=0.0, drop=False, match=None, times=None,
           close_after=False):
        rule = Rule(stage, reply, delay, drop, match, times, close_after)
        self.rules.append(rule)
        return rule

    def lines(self, verb=None):
        """With dsn=True: the MAIL and RCPT command lines as received."""
        with self._lock:
            return [e[2] for e in self.events
                    if e[1] in ("MAIL-LINE", "RCPT-LINE") and (verb is None or e[1] == verb + "-LINE")]

    def clear_rules(self):
        self.rules = []

    async def _act(self, server, stage, arg):
        for rule in list(self.rules):
            if rule.matches(stage, arg):
                rule.used += 1
                self._event(server, "RULE", stage)
                if rule.delay:
                    await asyncio.sleep(rule.delay)
                if rule.drop:
                    server.transport.close()
                    await asyncio.sleep(3600)   # cancelled by connection_lost
                if rule.close_after:
                    server.close_after_reply = True
                if rule.reply is None:
                    return None
                return rule.reply(arg) if callable(rule.reply) else rule.reply
        return None

    # -- recording ---------------------------------------------------------

    def _connection(self, proto):
        with self._lock:
            self.connections += 1
            self._ids += 1                  # unique, though a probe is discounted from `connections`
            proto.conn_id = self._ids
            self._protocols.append(proto)
        self._event(proto, "CONNECT")

    def _event(self, proto, verb, *args):
        with self._lock:
            self.events.append((proto.conn_id, verb) + args)

    def _record(self, msg, reply):
        with self._lock:
            if reply.startswith("2"):
                self.messages.append(msg)
            else:
                self.refused_messages.append(msg)

    def commands(self, verb):
        with self._lock:
            return [e for e in self.events if e[1] == verb]

    def took_no_content(self):
        """No message reached this MTA: none accepted or refused after a
        complete content, and every DATA it was sent is over without one: the
        connection closed inside it, or DATA was refused and other commands
        followed (postern sends DATA ahead of the content to an MTA without
        CHUNKING, [upstream] early_data, and closes that connection when the
        message is not relayed)."""
        def settled():
            with self._lock:
                last = {}
                for e in self.events:
                    last[e[0]] = e[1]
            return all(verb != "DATA" for verb in last.values())
        # the MTA may see the close a moment after the client its reply
        deadline = time.monotonic() + 5
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._lock:
            delivered = self.messages or self.refused_messages
        return settled() and not delivered

    def _protocol(self, conn_id):
        with self._lock:
            return next(p for p in self._protocols if p.conn_id == conn_id)

    def inject(self, conn_id, data):
        """Writes `data` on connection conn_id unasked (an MTA misbehaving
        while idle); `close`: then closes it."""
        p = self._protocol(conn_id)
        self.loop.call_soon_threadsafe(p.transport.write, data)

    def hangup(self, conn_id):
        """Closes connection conn_id from the MTA's side."""
        p = self._protocol(conn_id)
        self.loop.call_soon_threadsafe(p.transport.close)

    def connection_events(self, conn_id):
        with self._lock:
            return [e[1:] for e in self.events if e[0] == conn_id]

    def wait_messages(self, n, timeout=None):
        wait_until(lambda: len(self.messages) >= n, timeout or IO_TIMEOUT,
                   message=f"{n} message(s) at the sink (have {len(self.messages)})")
        return self.messages

    # -- server ------------------------------------------------------------

    def _authenticator(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword
        ok = False
        login = None
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            ok = (login, password) == tuple(self.auth)
        with self._lock:
            self.auth_attempts.append((server.conn_id, mechanism, login, ok))
        return AuthResult(success=ok, handled=False)

    def _factory(self):
        kw = {}
        if self.auth is not None:
            kw.update(authenticator=self._authenticator, auth_require_tls=False,
                      auth_required=self.auth_required)
        if self.smtputf8:
            kw["enable_SMTPUTF8"] = True
        return _SinkSMTP(self, hostname="sink.test", data_size_limit=self.data_size_limit,
                         loop=self.loop, timeout=120, **kw)

    def start(self):
        ready = threading.Event()
        err = []

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            try:
                self.server = self.loop.run_until_complete(
                    self.loop.create_server(self._factory, "127.0.0.1", 0))
                self.port = self.server.sockets[0].getsockname()[1]
            except Exception as e:  # pragma: no cover
                err.append(e)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()
            tasks = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        if err:
            raise err[0]
        return self

    def stop(self):
        if self.loop is None:
            return

        def shutdown():
            self.server.close()
            for p in self._protocols:
                if p.transport is not None:
                    p.transport.close()
            self.loop.call_later(0.05, self.loop.stop)

        try:
            self.loop.call_soon_threadsafe(shutdown)
        except RuntimeError:
            pass
        self.thread.join(10)

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"


# --------------------------------------------------------------------------
# Postfix smtp-sink


class PostfixSink:
    """/usr/sbin/smtp-sink on a free port (throws the mail away)."""

    def __init__(self, options=()):
        self.options = list(options)
        self.proc = None
        self.port = None

    def start(self):
        for _ in range(5):
            port = free_port()
            cmd = ["/usr/sbin/smtp-sink"]
            if os.geteuid() == 0:
                cmd += ["-u", "nobody"]
            cmd += self.options + [f"127.0.0.1:{port}", "100"]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                wait_port(port, 5)
                if self.proc.poll() is None:
                    self.port = port
                    return self
            except OSError:
                pass
            self.stop()
        raise RuntimeError("could not start smtp-sink")

    def stop(self):
        stop_process(self.proc)

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"


# --------------------------------------------------------------------------
# test messages


def start_with_rules(postern, sink, rules, qdir, **sets):
    """postern relaying to `sink`, running the Lua rules file `rules`, its
    quarantine in `qdir`; `sets` as postern.start's."""
    all_sets = {"lua.scripts": f'["{rules}"]', "quarantine.dir": f'"{qdir}"'}
    all_sets.update(sets)
    return postern.start(upstream=sink.address, sets=all_sets)


def case_message(case="none", subject="hello", extra=""):
    """A small message whose X-Test-Case field tells a test's rules what to do."""
    return (f"From: a@example.org\r\nTo: r1@example.com\r\nSubject: {subject}\r\n{extra}"
            f"X-Test-Case: {case}\r\nMessage-ID: <{case}@example.org>\r\n\r\nbody line\r\n").encode()


def send_envelope(c, sender, rcpts, content, pipelined, bdat):
    """MAIL and the RCPTs, then `BDAT n LAST` with `content`, or `DATA` alone;
    pipelined in one write, or each command after the last reply. The replies
    to MAIL and the RCPTs (the DATA or BDAT reply is left to read)."""
    lines = [f"MAIL FROM:<{sender}>\r\n".encode()] + [f"RCPT TO:<{r}>\r\n".encode() for r in rcpts]
    payload = (f"BDAT {len(content)} LAST\r\n".encode() + content) if bdat else b"DATA\r\n"
    if pipelined:
        c.send(b"".join(lines) + payload)
        return [c.read_reply() for _ in lines]
    replies = [c.cmd(line.decode().rstrip("\r\n")) for line in lines]
    c.send(payload)
    return replies


def greeted_client(p):
    """An SmtpClient to postern `p`, after its EHLO."""
    c = SmtpClient(p.port)
    c.ehlo()
    return c


def make_message(subject="test", body=b"Hello.\r\n", extra_headers=b"",
                 sender="sender@example.org", rcpt="rcpt@example.com"):
    if isinstance(body, str):
        body = body.encode()
    return (b"From: <" + sender.encode() + b">\r\n"
            b"To: <" + rcpt.encode() + b">\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Message-ID: <" + subject.replace(" ", "-").encode() + b"@postern.test>\r\n"
            + extra_headers +
            b"\r\n" + body)


# --------------------------------------------------------------------------
# TLS, listener configuration files


def client_tls_context():
    """A client context that takes any certificate (the tests' are self-signed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def make_cert(directory, name="cert", cn=HOSTNAME):
    """A self-signed RSA certificate and its key (PEM) made by openssl.

    Returns (cert_path, key_path, sha256 of the DER certificate)."""
    cert = os.path.join(str(directory), f"{name}.crt")
    key = os.path.join(str(directory), f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", key, "-out", cert, "-subj", f"/CN={cn}"],
                   check=True, capture_output=True, timeout=60)
    with open(cert) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    return cert, key, sha256(der)


def _toml_value(v):
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path, listeners, upstream=None, tls=None, sections=None):
    """Writes a postern TOML file for tests that need [[listener]] settings.

    listeners: list of dicts (address defaults to 127.0.0.1:0); tls: dict for
    [tls]; sections: {"upstream": {...}, ...} merged in. Start postern with
    postern.start(config=path, listen=()) and read the ports with
    listener_ports()."""
    tables = {"server": {"hostname": HOSTNAME, "shutdown_timeout": 3}}
    if upstream is not None:
        tables["upstream"] = {"target": upstream}
    if tls:
        tables["tls"] = dict(tls)
    for name, values in (sections or {}).items():
        tables.setdefault(name, {}).update(values)
    out = []
    for name, values in tables.items():
        out.append(f"[{name}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        out.append("")
    for l in listeners:
        l = dict(l)
        l.setdefault("address", "127.0.0.1:0")
        out.append("[[listener]]")
        out += [f"{k} = {_toml_value(v)}" for k, v in l.items()]
        out.append("")
    with open(path, "w") as f:
        f.write("\n".join(out))
    return str(path)


def listener_ports(proc):
    """The ports of postern's listeners, in the order of the config file."""
    proc.wait_for_log("started")
    return [int(l.get("address").rsplit(":", 1)[1]) for l in proc.events("listening")]


def run_swaks(args, timeout=30):
    """swaks to completion; returns CompletedProcess (text)."""
    return subprocess.run(["swaks", "--hide-informational"] + list(args), capture_output=True,
                          text=True, timeout=timeout * SCALE, stdin=subprocess.DEVNULL)


RECEIVED_TLS_RE = re.compile(
    r"^Received: from (\S+) \(unknown \[([^\]]+)\]\)\s+by (\S+) \(postern\) "
    r"with (E?SMTPS?)(?: \((TLSv1\.[23]) ([A-Za-z0-9_-]+)\))? id (\S+)", re.S)


def parse_received_any(header):
    """postern's Received header, with or without TLS: a match with groups
    (helo, ip, by, with, tls_version, cipher, id)."""
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    unfolded = re.sub(r"\r\n(?=[ \t])", "", text).rstrip("\r\n")
    m = RECEIVED_TLS_RE.match(unfolded)
    assert m, f"Received header does not match: {unfolded!r}"
    return m


class SourceLoop:
    """Load that lasts as long as the test acts: smtp-source batches, one after
    another, until stop(). A fixed message count raced against sleeps ends early
    on a fast or idle machine; this does not. `sent` counts the messages of the
    batches that ran; every batch must exit 0."""

    def __init__(self, target, sessions=10, batch=300, size=2048,
                 sender="a@example.org", recipient="b@example.com"):
        self.argv = ["/usr/sbin/smtp-source", "-s", str(sessions), "-m", str(batch), "-l", str(size), "-d",
                     "-f", sender, "-t", recipient, target]
        self.batch = batch
        self.sent = 0
        self.batches = 0
        self.failures = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            r = subprocess.run(self.argv, capture_output=True, text=True, timeout=300 * SCALE,
                               stdin=subprocess.DEVNULL)
            self.batches += 1
            self.sent += self.batch
            if r.returncode != 0:
                self.failures.append(f"smtp-source exited {r.returncode}: {(r.stdout + r.stderr)[-800:]}")
                return

    def start(self):
        self._thread.start()
        return self

    def running(self):
        return self._thread.is_alive()

    def stop(self):
        """Lets the batch in flight finish; returns the number of messages sent."""
        self._stop.set()
        self._thread.join(timeout=300 * SCALE)
        assert not self._thread.is_alive(), "smtp-source did not finish its batch"
        return self.sent
