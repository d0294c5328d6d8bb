"""Trust under attack: early DATA and the preparation of pooled connections
(issue 23) against a hostile MTA and hostile clients, beyond what
test_early_data.py, test_upstream_prepare.py and test_upstream_reuse.py try.

Whatever the MTA or the client does, these must hold: the client hears 250
for a message only when the MTA took it complete exactly once; a message the
policy refused never reaches the MTA complete; every refusal carries an
enhanced status code; postern neither hangs nor dies, and the next client
(over the same pooled connection, when it is pooled) sees nothing of the
previous one: its own XCLIENT address, no reply left over.

The MTA is HostileMta below: a real SMTP server on loopback whose every
reply can be replaced by arbitrary octets, written a byte at a time, or
followed by a close or a reset at each step. It records every complete
message it read (the end of data seen), with the reply it gave.
"""

import socket
import ssl
import struct
import threading
import time

import pytest

from conftest import PosternFactory
from harness import (ScriptedServer, SmtpClient, check_reply, data_payload, make_cert, make_message, wait_until)
from test_early_data import QUICK, group, replies, serving, start_postern


# --------------------------------------------------------------------------
# the hostile MTA


class Complete:
    """A message whose end of data the MTA read; `reply` what it answered
    (None: the connection ended instead)."""

    def __init__(self, conn, sender, rcpts, content, reply, addr, helo):
        self.conn, self.sender, self.rcpts = conn, sender, list(rcpts)
        self.content, self.reply, self.addr, self.helo = content, reply, addr, helo

    @property
    def accepted(self):
        return self.reply is not None and self.reply[:1] == b"2"

    def __repr__(self):
        return (f"Complete(conn={self.conn} from={self.sender} to={self.rcpts} reply={self.reply!r} "
                f"addr={self.addr} helo={self.helo})")


class HostileMta(ScriptedServer):
    """PIPELINING, no CHUNKING, XCLIENT when asked. script(sender, ...):
    mail/data/end=bytes (the whole reply, CRLF included) instead of the
    normal one (data: to the transaction's first DATA); rcpt={address: bytes}; after_354=bytes written right behind
    the 354 (in the same write), late_after_354=(seconds, bytes) written that
    long after it; close_after_354=True (the connection ends behind the 354); close_at="mail"|"rcpt"|"data"|"content"|"end" (the
    connection ends when that arrives, without a reply; rst=True: with a
    reset); split=True (every reply written one octet a segment).
    xclient_replies: a list of (delay, bytes) taken by the next XCLIENTs."""

    def __init__(self, xclient=False, tls=None):
        self.xclient = xclient
        self.tls = tls              # an ssl.SSLContext (server side): STARTTLS offered
        self.lock = threading.Lock()
        self.scripts = {}
        self.xclient_replies = []
        self.commands = []          # (conn, line)
        self.segments = []          # (conn, octets read at once)
        self.complete = []          # Complete
        self.ended = {}
        self.count = 0
        super().__init__()          # last: it starts accepting

    def script(self, sender, **what):
        self.scripts[sender] = what

    @staticmethod
    def _send_quietly(conn, octets):
        try:
            conn.sendall(octets)
        except OSError:
            pass

    # -- what was seen ------------------------------------------------------

    def got(self, sender):
        with self.lock:
            return [m for m in self.complete if m.sender == sender]

    def conns_of(self, sender):
        with self.lock:
            return sorted({c for c, line in self.commands if line.upper().startswith(f"MAIL FROM:<{sender.upper()}>")})

    def lines(self, conn):
        with self.lock:
            return [line for c, line in self.commands if c == conn]

    def segs(self, conn):
        with self.lock:
            return [octets for c, octets in self.segments if c == conn]

    def wait_ended(self, conn, timeout=QUICK):
        return wait_until(lambda: self.ended.get(conn), timeout, message=f"the end of MTA connection {conn}")

    # -- the server ----------------------------------------------------------

    def session(self, conn):
        with self.lock:
            self.count += 1
            cid = self.count
        conn.settimeout(30)
        st = {"mail": None, "rcpts": [], "sc": {}, "addr": None, "helo": None}
        buf, data, mode, how = b"", bytearray(), "cmd", "eof"
        split = False

        def write(out):
            if not out:
                return
            if split:
                for i in range(len(out)):
                    conn.sendall(out[i:i + 1])
                    time.sleep(0.002)
            else:
                conn.sendall(out)

        def end(why, rst):
            # The replies gathered so far still go: the write after the
            # command loop sends them, then the connection closes.
            nonlocal how
            how = why
            if rst:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        try:
            conn.sendall(b"220 hostile.test ESMTP\r\n")
            while how == "eof":
                chunk = conn.recv(65536)
                if not chunk:
                    if mode != "cmd":
                        how = "eof in data"
                    break
                with self.lock:
                    self.segments.append((cid, chunk))
                buf += chunk
                out = b""
                while buf and how == "eof":
                    sc = st["sc"]
                    if mode == "data":
                        if sc.get("close_at") == "content":
                            end("closed mid-content", sc.get("rst"))
                            break
                        data += buf
                        buf = b""
                        e = data.find(b"\r\n.\r\n")
                        if e < 0:
                            break
                        raw, buf = bytes(data[2:e + 2]), bytes(data[e + 5:])
                        content = (b"\r\n" + raw).replace(b"\r\n.", b"\r\n")[2:]
                        mode = "cmd"
                        reply = None if sc.get("close_at") == "end" else sc.get("end", b"250 2.0.0 Ok: queued\r\n")
                        with self.lock:
                            self.complete.append(Complete(cid, st["mail"], st["rcpts"], content, reply, st["addr"],
                                                           st["helo"]))
                        st.update(mail=None, rcpts=[], sc={})
                        if reply is None:
                            end("closed after the end of data", sc.get("rst"))
                            break
                        out += reply
                        continue
                    eol = buf.find(b"\r\n")
                    if eol < 0:
                        break
                    line, buf = buf[:eol].decode("latin-1"), buf[eol + 2:]
                    with self.lock:
                        self.commands.append((cid, line))
                    verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
                    if verb in ("EHLO", "HELO"):
                        st["helo"] = line[5:]
                        out += (b"250-hostile.test\r\n250-PIPELINING\r\n"
                                + (b"250-XCLIENT ADDR PORT NAME HELO PROTO\r\n" if self.xclient else b"")
                                + (b"250-STARTTLS\r\n" if self.tls and not st.get("tls") else b"")
                                + b"250 ENHANCEDSTATUSCODES\r\n")
                    elif verb == "XCLIENT":
                        with self.lock:
                            delay, reply = (self.xclient_replies.pop(0) if self.xclient_replies
                                            else (0, b"220 hostile.test ESMTP\r\n"))
                        if delay:
                            write(out)
                            out = b""
                            time.sleep(delay)
                        if reply[:1] == b"2":
                            attrs = dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
                            st.update(mail=None, rcpts=[], sc={}, addr=attrs.get("ADDR"))
                        if reply == b"":
                            end("closed at XCLIENT", False)
                            break
                        out += reply
                    elif verb == "MAIL":
                        sender = line[line.find("<") + 1:line.find(">")]
                        sc = self.scripts.get(sender, {})
                        split = bool(sc.get("split"))
                        if sc.get("close_at") == "mail":
                            end("closed at MAIL", sc.get("rst"))
                            break
                        st["sc"] = sc
                        st["data_used"] = False
                        if "mail" in sc:
                            out += sc["mail"]
                        else:
                            st.update(mail=sender, rcpts=[])
                            out += b"250 2.1.0 Ok\r\n"
                    elif verb == "RCPT":
                        if sc.get("close_at") == "rcpt":
                            end("closed at RCPT", sc.get("rst"))
                            break
                        rcpt = line[line.find("<") + 1:line.find(">")]
                        reply = sc.get("rcpt", {}).get(rcpt, b"250 2.1.5 Ok\r\n")
                        if st["mail"] is None:
                            reply = b"503 5.5.1 Error: need MAIL command\r\n"
                        elif reply[:1] == b"2":
                            st["rcpts"].append(rcpt)
                        out += reply
                    elif verb == "DATA":
                        if sc.get("close_at") == "data":
                            end("closed at DATA", sc.get("rst"))
                            break
                        if "data" in sc and not st.get("data_used"):
                            st["data_used"] = True          # the transaction's first DATA only
                            out += sc["data"]
                            if sc["data"].startswith(b"354"):
                                mode, data = "data", bytearray(b"\r\n")
                        elif not st["rcpts"]:
                            out += b"554 5.5.1 Error: no valid recipients\r\n"
                        else:
                            out += b"354 End data with <CR><LF>.<CR><LF>\r\n" + sc.get("after_354", b"")
                            mode, data = "data", bytearray(b"\r\n")
                            if sc.get("close_after_354"):
                                end("closed after 354", sc.get("rst"))
                                break
                            if "late_after_354" in sc:
                                delay, late = sc["late_after_354"]
                                threading.Timer(delay, self._send_quietly, (conn, late)).start()
                    elif verb == "STARTTLS" and self.tls and not st.get("tls"):
                        write(out + b"220 2.0.0 Ready to start TLS\r\n")
                        out, buf = b"", b""
                        conn = self.tls.wrap_socket(conn, server_side=True)
                        st.update(mail=None, rcpts=[], sc={}, tls=True)
                    elif verb == "RSET":
                        st.update(mail=None, rcpts=[], sc={})
                        out += b"250 2.0.0 Ok\r\n"
                    elif verb == "NOOP":
                        out += b"250 2.0.0 Ok\r\n"
                    elif verb == "QUIT":
                        out += b"221 2.0.0 Bye\r\n"
                        how = "quit"
                    else:
                        out += b"502 5.5.2 Error: command not recognized\r\n"
                write(out)
        except OSError:
            pass
        finally:
            with self.lock:
                self.ended[cid] = how
            conn.close()


# --------------------------------------------------------------------------
# fixtures: one postern per MTA kind, shared by the file


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    f = PosternFactory(tmp_path_factory.mktemp("attack-early-data"))
    yield from serving(f, f.cleanup)


@pytest.fixture(scope="module")
def mta():
    m = HostileMta()
    yield from serving(m, m.close)


@pytest.fixture(scope="module")
def px(factory, mta):
    """postern (early DATA, Lua policy) -> HostileMta without XCLIENT."""
    return start_postern(factory, mta.address, lua=True)


@pytest.fixture(scope="module")
def xmta():
    m = HostileMta(xclient=True)
    yield from serving(m, m.close)


@pytest.fixture(scope="module")
def pxx(factory, xmta):
    """postern (early DATA, Lua policy) -> HostileMta with XCLIENT."""
    return start_postern(factory, xmta.address, lua=True)


def consistent(mta, sender, final):
    """The invariant of every attack: 250 to the client means the MTA took
    the message complete exactly once; anything else means it took none;
    a refusal carries an enhanced status code."""
    got = mta.got(sender)
    taken = [m for m in got if m.accepted]
    if final is not None and final.code == 250:
        assert len(taken) == 1, (final, got)
    else:
        assert taken == [], (final, got)
    if final is not None and final.code >= 400:
        assert final.enhanced and final.enhanced[0] == str(final.code)[0], final
    return got


def still_serving(p, mta, tag, source=None):
    """A new client's message reaches the MTA once, with 250: postern neither
    hangs nor died."""
    assert p.proc.poll() is None, "postern died"
    sender = f"next-{tag}@example.org"
    msg = make_message(f"after {tag}")
    with SmtpClient(p.port, source=source) as c:
        c.ehlo()
        check_reply(c.send_message(sender, ["r@example.com"], msg), 250, "2.0.0")
        c.expect("QUIT", 221)
    [m] = mta.got(sender)
    assert m.accepted and m.content.endswith(msg)
    return m


def pipelined_message(p, sender, msg, rcpts=("r@example.com",)):
    """MAIL, RCPT and DATA in one write, then the content: the replies."""
    with SmtpClient(p.port) as c:
        c.ehlo()
        c.send(group(sender, rcpts))
        r = replies(c, 2 + len(rcpts))
        if r[-1].code != 354:
            return r, None
        c.send(data_payload(msg))
        return r, c.read_reply()


# --------------------------------------------------------------------------
# replies cut up, glued together, or of the wrong kind


@pytest.mark.parametrize("stepwise", [False, True], ids=["pipelined", "stepwise"])
def test_replies_written_an_octet_at_a_time_deliver_once(px, mta, stepwise):
    sender = f"split-{int(stepwise)}@example.org"
    mta.script(sender, split=True)
    msg = make_message("split replies")
    if stepwise:
        with SmtpClient(px.port) as c:
            c.ehlo()
            final = c.send_message(sender, ["r@example.com"], msg)
    else:
        _, final = pipelined_message(px, sender, msg)
    check_reply(final, 250, "2.0.0")
    [m] = consistent(mta, sender, final)
    assert m.content.endswith(msg)
    still_serving(px, mta, f"split-{int(stepwise)}")


def test_multiline_354_is_one_reply_and_the_message_goes_once(px, mta):
    sender = "ml354@example.org"
    mta.script(sender, data=b"354-Go ahead\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
    msg = make_message("multi-line 354")
    _, final = pipelined_message(px, sender, msg)
    check_reply(final, 250, "2.0.0")
    [m] = consistent(mta, sender, final)
    assert m.content.endswith(msg)


@pytest.mark.parametrize("reply", [
    b"250 2.0.0 Ok\r\n",                        # a final reply where 354 belongs
    b"220 hostile.test ESMTP\r\n",
    b"334 VXNlcm5hbWU6\r\n",                     # an intermediate reply, not 354
    b"354-Go\r\n250 2.0.0 Ok\r\n",               # the code changes inside the reply
    b"35 4 go\r\n",                               # not a reply at all
], ids=["250", "220", "334", "354-then-250", "garbage"])
def test_wrong_reply_to_the_early_data_gets_no_content(px, mta, reply):
    sender = f"wrong-data-{reply[:3].decode().strip()}-{len(reply)}@example.org"
    mta.script(sender, data=reply)
    msg = make_message("wrong reply to DATA")
    r, final = pipelined_message(px, sender, msg)
    assert [x.code for x in r] == [250, 250, 354]           # postern's 354
    check_reply(final, 451, "4.4.0")
    consistent(mta, sender, final)
    assert mta.got(sender) == []
    [conn] = mta.conns_of(sender)
    assert mta.wait_ended(conn) in ("eof", "eof in data")   # dropped, never given content or QUIT
    still_serving(px, mta, f"wrong-data-{len(reply)}")


@pytest.mark.parametrize("held", [True, False], ids=["mail-held", "mail-alone"])
@pytest.mark.parametrize("rcpt, data", [
    (b"354 End data with <CR><LF>.<CR><LF>\r\n", b"250 2.1.5 Ok\r\n"),   # 354 before the RCPT's reply
    (b"250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n", None),                      # one reply too many to RCPT
    (b"250-2.1.5 Ok\r\n354 go\r\n", None),                             # RCPT's reply runs into the 354
], ids=["354-first", "extra-250", "code-change"])
def test_rcpt_answered_out_of_turn_never_gets_content(px, mta, rcpt, data, held):
    """Replies that do not match the commands pipelined with DATA: no reply
    is taken for another's, the message never reaches the MTA, and the
    client hears 4xx with an enhanced code, never a 250 for it."""
    sender = f"turn-{len(rcpt)}-{int(held)}@example.org"
    script = {"rcpt": {"r@example.com": rcpt}}
    if data is not None:
        script["data"] = data
    mta.script(sender, **script)
    msg = make_message("out of turn")
    with SmtpClient(px.port) as c:
        c.ehlo()
        if held:
            c.send(group(sender, ["r@example.com"]))
            r = replies(c, 3)
        else:
            c.expect(f"MAIL FROM:<{sender}>", 250)
            c.send(b"RCPT TO:<r@example.com>\r\nDATA\r\n")
            r = replies(c, 2)
        if rcpt.count(b"\r\n") == 2 and rcpt[3:4] == b" ":
            # two whole replies: the first is RCPT's, the second is read as
            # DATA's, and a 250 to DATA fails the message at its end
            assert [x.code for x in r[-2:]] == [250, 354], r
            c.send(data_payload(msg))
            check_reply(c.read_reply(), 451, "4.4.0")
        else:
            check_reply(r[-2], 451, "4.4.0")          # the RCPT: postern's protocol error
            assert r[-1].code in (451, 503, 554), r      # DATA refused: no recipient, or the transaction failed
            assert r[-1].enhanced and r[-1].enhanced[0] == str(r[-1].code)[0], r[-1]
        c.expect("RSET", 250)
    assert mta.got(sender) == []
    [conn] = mta.conns_of(sender)
    mta.wait_ended(conn)
    still_serving(px, mta, f"turn-{len(rcpt)}-{int(held)}")


@pytest.mark.parametrize("late", [False, True], ids=["same-write", "later"])
def test_reply_injected_behind_the_354_fails_the_message_unsent(px, mta, late):
    """The MTA says "250" right behind its 354, before any content: a
    reply nothing asked for, never the message's reply; the content never
    goes."""
    sender = f"inject-{int(late)}@example.org"
    fake = b"250 2.0.0 Ok: queued as FAKE\r\n"
    if late:
        mta.script(sender, late_after_354=(0.2, fake))
    else:
        mta.script(sender, after_354=fake)
    msg = make_message("injected reply")
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(group(sender, ["r@example.com"]))
        assert [x.code for x in replies(c, 3)] == [250, 250, 354]
        time.sleep(0.5)                 # the injection is in before the content
        c.send(data_payload(msg))
        final = c.read_reply()
    check_reply(final, 451, "4.4.0")
    assert mta.got(sender) == []
    [conn] = mta.conns_of(sender)
    mta.wait_ended(conn)
    still_serving(px, mta, f"inject-{int(late)}")


@pytest.mark.parametrize("trailer", [b"EXTRA", b"250 2.0.0 Ok again\r\n"], ids=["octets", "second-250"])
def test_final_reply_with_bytes_behind_it_is_never_relayed_and_the_connection_is_dropped(px, mta, trailer):
    """DESIGN "Every byte from the MTA is explained": a 250 to the end of
    data with octets behind it is a protocol error (451), the connection is
    not pooled, and the next client's message goes over a new one."""
    sender = f"trailer-{len(trailer)}@example.org"
    mta.script(sender, end=b"250 2.0.0 Ok: queued\r\n" + trailer)
    _, final = pipelined_message(px, sender, make_message("trailer"))
    check_reply(final, 451, "4.4.0")
    [conn] = mta.conns_of(sender)
    mta.wait_ended(conn)
    m = still_serving(px, mta, f"trailer-{len(trailer)}")
    assert m.conn != conn


@pytest.mark.parametrize("then", ["RSET", "RCPT"])
@pytest.mark.parametrize("reply", [
    b"250 2.0.0 Ok\r\n",                       # a 2xx to a DATA without a recipient
    b"354 go ahead\r\n",                       # lax: DATA open without a recipient
    b"451 4.3.0 try later\r\n",
    b"554 no valid recipients\r\n",            # no enhanced code from the MTA
    b"421 4.3.2 closing\r\n",
], ids=["250", "354", "451", "554-bare", "421"])
def test_reply_to_a_data_that_no_recipient_took_is_settled_before_the_next_command(px, mta, reply, then):
    """The only RCPT refused, DATA pipelined behind it: postern refuses the
    client's DATA itself, and whatever the MTA answered the DATA sent ahead
    is read before the next command (RSET, or another RCPT) goes; a reply
    that leaves the MTA in DATA, or that no DATA may have, ends that
    connection. The client's message reaches the MTA exactly once."""
    sender = f"settle-{reply[:3].decode()}-{then.lower()}@example.org"
    mta.script(sender, rcpt={"nobody@example.com": b"550 5.1.1 no such user\r\n"}, data=reply)
    msg = make_message("after the settled DATA")
    kept = reply[:1] in (b"4", b"5") and reply[:3] != b"421"    # the transaction goes on
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(group(sender, ["nobody@example.com"]))
        r = replies(c, 3)
        assert [x.code for x in r] == [250, 550, 554], r
        check_reply(r[2], 554, "5.5.1")                 # postern's own: no valid recipients
        to = sender
        if then == "RCPT":
            second = c.cmd("RCPT TO:<r@example.com>")
            if kept:
                check_reply(second, 250)
                c.expect("DATA", 354)
                c.send(data_payload(msg))
                final = c.read_reply()
            else:
                # that connection is gone with the open transaction: 4xx, and the client starts over
                assert second.code // 100 == 4 and second.enhanced and second.enhanced[0] == "4", second
                c.expect("RSET", 250, "2.0.0")
                to = sender + ".next"
                final = c.send_message(to, ["r@example.com"], msg)
        else:
            c.expect("RSET", 250, "2.0.0")
            to = sender + ".next"
            final = c.send_message(to, ["r@example.com"], msg)
        c.expect("QUIT", 221)
    check_reply(final, 250, "2.0.0")
    [m] = consistent(mta, to, final)
    assert m.content.endswith(msg) and m.rcpts == ["r@example.com"]
    [conn] = mta.conns_of(sender)
    assert (m.conn == conn) == kept, (m, conn)
    if to != sender:
        assert mta.got(sender) == []


# --------------------------------------------------------------------------
# the MTA leaves at each step


@pytest.mark.parametrize("rst", [False, True], ids=["close", "reset"])
@pytest.mark.parametrize("step", ["mail", "rcpt", "data", "content", "end"])
def test_mta_leaving_at_each_step_never_gets_a_250_without_the_message(px, mta, step, rst):
    sender = f"leave-{step}-{int(rst)}@example.org"
    mta.script(sender, close_at=step, rst=rst)
    msg = make_message(f"MTA leaves at {step}", b"line\r\n" * 200)
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(group(sender, ["r@example.com"]))
        r = replies(c, 3)
        final = None
        if r[-1].code == 354:
            c.send(data_payload(msg))
            final = c.read_reply()
        else:
            # refused before the content: every refusal has its enhanced code
            for x in r:
                if x.code >= 400:
                    assert x.enhanced and x.enhanced[0] == str(x.code)[0], x
    if final is not None:
        assert final.code // 100 == 4, final
    got = consistent(mta, sender, final)
    # the MTA read the whole message only when it left after the end of data
    assert len(got) == (1 if step == "end" else 0), got
    still_serving(px, mta, f"leave-{step}-{int(rst)}")


# --------------------------------------------------------------------------
# multi-recipient transactions DATA went out in


def test_recipients_refused_around_the_early_data_deliver_to_the_accepted_ones_once(px, mta):
    sender = "mixed@example.org"
    mta.script(sender, rcpt={"b@example.com": b"550 5.1.1 no such user\r\n",
                             "d@example.com": b"452 4.2.2 mailbox full\r\n"})
    msg = make_message("mixed recipients")
    r, final = pipelined_message(px, sender, msg, rcpts=("a@example.com", "b@example.com", "c@example.com",
                                                         "d@example.com"))
    assert [x.code for x in r] == [250, 250, 550, 250, 452, 354]
    check_reply(final, 250, "2.0.0")
    [m] = consistent(mta, sender, final)
    assert m.rcpts == ["a@example.com", "c@example.com"]


# --------------------------------------------------------------------------
# the client's side


@pytest.mark.parametrize("verb", [b"data", b"Data"])
def test_lower_case_pipelined_data_goes_early_and_delivers_once(px, mta, verb):
    sender = f"lower-{verb.decode()}@example.org"
    msg = make_message("lower-case data")
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(f"MAIL FROM:<{sender}>\r\nRCPT TO:<r@example.com>\r\n".encode() + verb + b"\r\n")
        assert [x.code for x in replies(c, 3)] == [250, 250, 354]
        c.send(data_payload(msg))
        final = c.read_reply()
    check_reply(final, 250, "2.0.0")
    [m] = consistent(mta, sender, final)
    assert m.content.endswith(msg)
    [conn] = mta.conns_of(sender)
    # postern's own DATA, upper case, in the write of the RCPT it followed
    assert any(seg.endswith(b"RCPT TO:<r@example.com>\r\nDATA\r\n") for seg in mta.segs(conn)), mta.segs(conn)


@pytest.mark.parametrize("shape", [b"DATA \r\n", b"DATA\n", b"DATA x\r\n"], ids=["space", "bare-lf", "argument"])
def test_odd_data_commands_never_leave_the_mta_in_data(px, mta, shape):
    """A DATA postern does not answer with 354 must not have put the MTA in
    DATA; one it does answer delivers once. Either way the session goes on."""
    sender = f"odd-{len(shape)}-{shape[-2]}@example.org"
    msg = make_message("odd DATA")
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(f"MAIL FROM:<{sender}>\r\nRCPT TO:<r@example.com>\r\n".encode() + shape)
        r = replies(c, 3)
        assert [x.code for x in r[:2]] == [250, 250]
        if r[2].code == 354:
            c.send(data_payload(msg))
            final = c.read_reply()
            check_reply(final, 250, "2.0.0")
            consistent(mta, sender, final)
        else:
            assert r[2].code // 100 == 5 and r[2].enhanced and r[2].enhanced[0] == "5", r[2]
            c.expect("RSET", 250)
            check_reply(c.send_message(sender + ".then", ["r@example.com"], msg), 250, "2.0.0")
            assert mta.got(sender) == []
            assert len(mta.got(sender + ".then")) == 1
        c.expect("QUIT", 221)


def test_data_and_content_in_one_packet_deliver_once(px, mta):
    sender = "onepacket@example.org"
    msg = make_message("all in one write")
    with SmtpClient(px.port) as c:
        c.ehlo()
        c.send(group(sender, ["r@example.com"]) + data_payload(msg) + b"QUIT\r\n")
        r = replies(c, 5)
    assert [x.code for x in r] == [250, 250, 354, 250, 221]
    [m] = consistent(mta, sender, r[3])
    assert m.content.endswith(msg)


@pytest.mark.parametrize("how", ["close", "reset", "rset-quit-as-content"])
def test_client_gone_right_after_its_pipelined_data_leaves_no_message(px, mta, how):
    sender = f"gone-{how}@example.org"
    c = SmtpClient(px.port)
    c.ehlo()
    if how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.send(group(sender, ["r@example.com"]))
    if how == "rset-quit-as-content":
        assert [x.code for x in replies(c, 3)] == [250, 250, 354]
        c.send(b"RSET\r\nQUIT\r\n")        # content after the 354: no command
        time.sleep(0.2)
        c.sock.shutdown(socket.SHUT_WR)
    c.close()
    wait_until(lambda: mta.conns_of(sender), QUICK, message="the MAIL at the MTA")
    [conn] = mta.conns_of(sender)
    mta.wait_ended(conn)
    assert mta.got(sender) == []
    assert mta.lines(conn)[-1] == "DATA"
    still_serving(px, mta, f"gone-{how}")


def test_policy_refused_message_is_never_complete_at_the_mta(px, mta):
    """A rule rejects the content after DATA went early: the MTA never reads
    an end of data for it, whatever its content looks like (a lone dot line
    inside, dot-stuffed by the client)."""
    sender = "policy@example.org"
    msg = make_message("refused", b"line one\r\n.\r\nline three\r\n", extra_headers=b"X-Test-Case: reject\r\n")
    _, final = pipelined_message(px, sender, msg)
    check_reply(final, 554, "5.7.1")
    assert mta.got(sender) == []
    [conn] = mta.conns_of(sender)
    assert mta.wait_ended(conn) in ("eof in data",)
    still_serving(px, mta, "policy")


# --------------------------------------------------------------------------
# one pooled connection, two clients: the second sees nothing of the first


def first_ends(p, mta, how, n):
    sender = f"first-{how}-{n}@example.org"
    src = f"127.0.0.{n}"
    with SmtpClient(p.port, source=src) as c:
        c.ehlo(f"first-{n}.example")
        if how == "refused-rcpt":
            mta.script(sender, rcpt={"r@example.com": b"550 5.1.1 no\r\n"})
            c.send(group(sender, ["r@example.com"]))
            assert [x.code for x in replies(c, 3)] == [250, 550, 554]
            c.expect("RSET", 250)
        elif how == "policy-reject":
            c.send(group(sender, ["r@example.com"]))
            assert [x.code for x in replies(c, 3)] == [250, 250, 354]
            c.send(data_payload(make_message("no", extra_headers=b"X-Test-Case: reject\r\n")))
            check_reply(c.read_reply(), 554, "5.7.1")
        elif how == "data-refused":
            mta.script(sender, data=b"554 5.7.1 no DATA\r\n")
            c.send(group(sender, ["r@example.com"]))
            assert [x.code for x in replies(c, 3)] == [250, 250, 354]
            c.send(data_payload(make_message("no")))
            check_reply(c.read_reply(), 554, "5.7.1")
        elif how == "trailer":
            mta.script(sender, end=b"250 2.0.0 Ok: queued\r\n250 2.0.0 and again\r\n")
            check_reply(c.send_message(sender, ["r@example.com"], make_message("trailer")), 451, "4.4.0")
        elif how == "taken-back":
            mta.script(sender, after_354=b"421 4.4.2 timeout\r\n", close_after_354=True)
            c.send(group(sender, ["r@example.com"]))
            assert [x.code for x in replies(c, 3)] == [250, 250, 354]
            time.sleep(0.2)
            mta.script(sender)
            c.send(data_payload(make_message("sent again")))
            check_reply(c.read_reply(), 250, "2.0.0")
        elif how == "left-after-data":
            c.send(group(sender, ["r@example.com"]))
            assert [x.code for x in replies(c, 3)] == [250, 250, 354]
            return sender
        elif how == "delivered":
            check_reply(c.send_message(sender, ["r@example.com"], make_message("yes")), 250)
        c.expect("QUIT", 221)
    return sender


HOW_FIRST_ENDS = ["delivered", "refused-rcpt", "policy-reject", "data-refused", "trailer", "taken-back",
                  "left-after-data"]


@pytest.mark.parametrize("how", HOW_FIRST_ENDS)
def test_second_client_on_the_pooled_connection_sees_only_itself(pxx, xmta, how):
    n = 21 + HOW_FIRST_ENDS.index(how)
    first_ends(pxx, xmta, "delivered", n)              # a connection in the pool
    time.sleep(0.1)
    first = first_ends(pxx, xmta, how, n + 50)
    time.sleep(0.1)
    second = f"127.0.0.{n + 100}"
    m = still_serving(pxx, xmta, f"second-{how}", source=second)
    assert m.addr == second, m
    assert m.helo == "client.example", m
    assert len([x for x in xmta.got(first) if x.accepted]) == (1 if how in ("delivered", "trailer", "taken-back")
                                                                 else 0)


@pytest.fixture(scope="module")
def pxx_unpooled(factory, xmta):
    """postern without a pool (upstream.reuse off) -> HostileMta with XCLIENT."""
    return start_postern(factory, xmta.address, lua=True, **{"upstream.reuse": "false"})


@pytest.mark.parametrize("pool", ["reuse", "no-reuse"])
def test_a_greeting_after_a_message_is_what_the_mta_hears_for_the_next(pxx, pxx_unpooled, xmta, pool):
    """A client greets again after a message (EHLO with another name, then
    HELO): its next messages must reach the MTA under the name it gave
    last, as a second greeting before the first MAIL does, never under the
    name the connection was identified with for the earlier message."""
    p = pxx if pool == "reuse" else pxx_unpooled
    src = "127.0.6.1" if pool == "reuse" else "127.0.6.2"
    names = [("EHLO", "first.example"), ("EHLO", "second.example"), ("HELO", "third.example"),
             ("HELO", "third.example")]
    with SmtpClient(p.port, source=src) as c:
        for i, (verb, name) in enumerate(names):
            c.expect(f"{verb} {name}", 250)
            check_reply(c.send_message(f"greet-{pool}-{i}@example.org", ["r@example.com"], make_message(name)),
                        250, "2.0.0")
        c.expect("QUIT", 221)
    for i, (verb, name) in enumerate(names):
        [m] = xmta.got(f"greet-{pool}-{i}@example.org")
        assert (m.addr, m.helo) == (src, name), (i, m)
        lines = xmta.lines(m.conn)
        mail = lines.index(f"MAIL FROM:<greet-{pool}-{i}@example.org>")
        xclient = [line for line in lines[:mail] if line.startswith("XCLIENT ")][-1]
        assert f"ADDR={src} " in xclient, xclient
        assert "HELO=" not in xclient or f"HELO={name}" in xclient, xclient
        assert "PROTO=" not in xclient or f"PROTO={'ESMTP' if verb == 'EHLO' else 'SMTP'}" in xclient, xclient


# --------------------------------------------------------------------------
# the preparation at the greeting against a hostile XCLIENT


XCLIENT_ATTACKS = {
    "550": (0, b"550 5.7.1 not authorized\r\n"),
    "421": (0, b"421 4.3.2 shutting down\r\n"),
    "garbage": (0, b"hello there\r\n"),
    "220-then-extra": (0, b"220 hostile.test ESMTP\r\n250 2.0.0 extra\r\n"),
    "close": (0, b""),                                        # the MTA closes
    "slow": (0.8, b"220 hostile.test ESMTP\r\n"),            # answered after the client's MAIL
    "slow-550": (0.8, b"550 5.7.1 not authorized\r\n"),      # slow and refused
}


@pytest.mark.parametrize("attack", list(XCLIENT_ATTACKS))
def test_hostile_xclient_at_the_greeting_never_misnames_the_client(pxx, xmta, attack):
    """The pooled connection prepared at the greeting gets a hostile answer
    to its XCLIENT: the client's message goes once, 250, and the MTA books
    it under this client's address and name (a failed preparation falls
    back to another connection), never the previous client's."""
    n = 40 + list(XCLIENT_ATTACKS).index(attack)
    first_ends(pxx, xmta, "delivered", n)             # a connection in the pool
    time.sleep(0.1)
    with xmta.lock:
        xmta.xclient_replies.append(XCLIENT_ATTACKS[attack])
    src = f"127.0.1.{n}"
    sender = f"xc-{attack}@example.org"
    msg = make_message(attack)
    with SmtpClient(pxx.port, source=src) as c:
        c.ehlo("victim.example")
        c.send(group(sender, ["r@example.com"]))
        r = replies(c, 3)
        assert [x.code for x in r] == [250, 250, 354], r
        c.send(data_payload(msg))
        final = c.read_reply()
        c.expect("QUIT", 221)
    check_reply(final, 250, "2.0.0")
    assert xmta.xclient_replies == []              # the preparation took the hostile answer
    [m] = consistent(xmta, sender, final)
    assert (m.addr, m.helo) == (src, "victim.example"), m     # never the previous client's
    assert pxx.proc.poll() is None
    still_serving(pxx, xmta, f"xc-{attack}", source="127.0.2.1")


def test_client_pipelining_ehlo_to_data_while_xclient_is_slow(pxx, xmta):
    """EHLO, MAIL, RCPT and DATA in one packet right after the greeting,
    while the prepared connection's XCLIENT is still unanswered: the MAIL
    waits for it, and the MTA hears this client's address and name."""
    first_ends(pxx, xmta, "delivered", 60)
    time.sleep(0.1)
    with xmta.lock:
        xmta.xclient_replies.append((0.5, b"220 hostile.test ESMTP\r\n"))
    sender = "eager@example.org"
    msg = make_message("eager client")
    with SmtpClient(pxx.port, source="127.0.4.1") as c:
        c.send(b"EHLO eager.example\r\n" + group(sender, ["r@example.com"]))
        r = replies(c, 4)
        assert [x.code for x in r] == [250, 250, 250, 354], r
        c.send(data_payload(msg))
        final = c.read_reply()
        c.expect("QUIT", 221)
    check_reply(final, 250, "2.0.0")
    [m] = consistent(xmta, sender, final)
    assert (m.addr, m.helo) == ("127.0.4.1", "eager.example"), m


# --------------------------------------------------------------------------
# the same over STARTTLS to the MTA: what arrives behind the 354 is read
# through TLS


@pytest.fixture(scope="module")
def tmta(tmp_path_factory):
    cert, key, _ = make_cert(tmp_path_factory.mktemp("hostile-tls"), name="mta", cn="hostile.test")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    m = HostileMta(tls=ctx)
    yield from serving(m, m.close)


@pytest.fixture(scope="module")
def ptls(factory, tmta):
    return start_postern(factory, tmta.address, lua=True, **{"upstream.tls": '"opportunistic"'})


@pytest.mark.parametrize("case", ["taken-back", "closed-behind", "injected", "policy-reject", "plain"])
def test_early_data_over_upstream_tls(ptls, tmta, case):
    sender = f"tls-{case}@example.org"
    extra = b""
    if case == "taken-back":
        tmta.script(sender, after_354=b"421 4.4.2 timeout\r\n", close_after_354=True)
    elif case == "closed-behind":
        tmta.script(sender, close_after_354=True)
    elif case == "injected":
        tmta.script(sender, after_354=b"250 2.0.0 Ok: queued as FAKE\r\n")
    elif case == "policy-reject":
        extra = b"X-Test-Case: reject\r\n"
    msg = make_message(f"over TLS: {case}", extra_headers=extra)
    with SmtpClient(ptls.port) as c:
        c.ehlo()
        c.send(group(sender, ["r@example.com"]))
        assert [x.code for x in replies(c, 3)] == [250, 250, 354]
        [conn] = tmta.conns_of(sender)
        if case in ("taken-back", "closed-behind"):
            tmta.wait_ended(conn)
            tmta.script(sender)          # the next connection takes it
        time.sleep(0.2)
        c.send(data_payload(msg))
        final = c.read_reply()
    [starttls] = [line for line in tmta.lines(conn) if line == "STARTTLS"]
    got = consistent(tmta, sender, final)
    if case in ("taken-back", "closed-behind", "plain"):
        check_reply(final, 250, "2.0.0")
        assert got[0].conn == (conn if case == "plain" else max(tmta.conns_of(sender)))
        assert (case == "plain") == (len(tmta.conns_of(sender)) == 1)
    elif case == "injected":
        check_reply(final, 451, "4.4.0")
        assert got == []
    else:
        check_reply(final, 554, "5.7.1")
        assert got == []
        assert tmta.wait_ended(conn) == "eof in data"
    still_serving(ptls, tmta, f"tls-{case}")


# --------------------------------------------------------------------------
# replies without an enhanced status code


@pytest.mark.parametrize("end", [
    (b"250 queued as 42\r\n", 250, ["2.0.0 queued as 42"]),
    (b"250-queued\r\n250 as 42\r\n", 250, ["2.0.0 queued", "2.0.0 as 42"]),
    (b"250-2.6.0 queued\r\n250 as 42\r\n", 250, ["2.6.0 queued", "2.6.0 as 42"]),
    (b"554 content refused\r\n", 554, ["5.0.0 content refused"]),
    (b"451 try again later\r\n", 451, ["4.0.0 try again later"]),
    (b"554 2.0.0 Ok\r\n", 554, ["5.0.0 2.0.0 Ok"]),            # a code of another class is none
    (b"250-2.0.0 Ok\r\n250 5.7.1 no\r\n", 250, ["2.0.0 Ok", "2.0.0 5.7.1 no"]),
], ids=["250", "250-multi", "250-multi-first-coded", "554", "451", "554-wrong-class", "250-wrong-class-line"])
def test_mta_replies_without_enhanced_codes_reach_the_client_with_them(px, mta, end):
    """postern offers ENHANCEDSTATUSCODES (RFC 2034), so every line of a
    2xx/4xx/5xx reply it relays starts with an enhanced status code: an MTA
    that sends none gets the first line's on the others, else X.0.0 (RFC 3463
    "undefined"), to RCPT and to the end of data alike; the text is kept."""
    reply, code, lines = end
    sender = f"bare-{code}-{len(reply)}@example.org"
    mta.script(sender, rcpt={"nobody@example.com": b"550 no such user\r\n"}, end=reply)
    with SmtpClient(px.port) as c:
        c.ehlo()
        check_reply(c.cmd(f"MAIL FROM:<{sender}>"), 250)
        refused = c.cmd("RCPT TO:<nobody@example.com>")
        check_reply(refused, 550, "5.0.0")
        assert refused.lines == ["5.0.0 no such user"], refused
        check_reply(c.cmd("RCPT TO:<r@example.com>"), 250)
        c.expect("DATA", 354)
        c.send(data_payload(make_message("bare codes")))
        final = c.read_reply()
        c.expect("QUIT", 221)
    assert final.code == code and final.lines == lines, final
    consistent(mta, sender, final)
