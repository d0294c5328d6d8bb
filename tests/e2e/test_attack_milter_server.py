"""postern's milter server ([milter_server]) against a hostile or buggy MTA:
a raw-socket peer speaks the milter protocol (4-octet big-endian length,
command octet, data) straight to a real postern on loopback.

Framing garbage closes the connection with a milter-server-garbage line and
the server serves on; nothing of one message (envelope, headers, macros,
notes, symbols) reaches the next one on the same connection, nor anything
of one client the next client of a reused connection (SMFIC_QUIT_NC); the
buffers a peer fills (macros, headers, body, recipients) have bounds; a
stalled peer or one that never reads holds only its own connection; no
modification carries a line break an attacker put in a fact."""

import socket
import struct
import time

import pytest

from harness import ASAN, IO_TIMEOUT, SCALE, PosternProcess, free_port, postern_run_args, write_config

TIMEOUT = 3  # [milter_server] timeout: stalled peers are closed within the test's budget

RULES = r"""
-- Every fact a message's verdict could come from, echoed into one field.
postern.rule{
  name = "HELO_SYM", stage = "helo", score = 3,
  fn = function(ctx)
    if ctx.client.helo == "plain.example" then ctx.session_notes.plain = "yes"; return true end
  end,
}
postern.rule{
  name = "MAIL_NOTE", stage = "mail",
  fn = function(ctx)
    ctx.session_notes.count = tostring((tonumber(ctx.session_notes.count) or 0) + 1)
    ctx.notes.from = ctx.envelope.from.addr
  end,
}
postern.rule{
  name = "MAIL_REFUSE", stage = "mail",
  fn = function(ctx)
    if ctx.envelope.from.addr == "refuse@example.org" then return postern.reject(550, "5.7.1", "refused sender") end
  end,
}
postern.rule{
  name = "ECHO", stage = "eom",
  fn = function(ctx)
    local s = ctx.headers:first("Subject") or ""
    if s == "reject me" then return postern.reject(554, "5.7.1", "refused by rule") end
    local fields = {}
    for _, h in ipairs({"X-Old", "X-Early", "X-Body"}) do
      if ctx.headers:first(h) then fields[#fields + 1] = h end
    end
    ctx:add_header("X-Echo", string.format(
      "ip=%s name=%s helo=%s from=%s rcpts=%d subj=%s count=%s plain=%s tls=%s auth=%s note=%s id=%s seen=%s",
      ctx.client.ip, ctx.client.name, ctx.client.helo, ctx.envelope.from.addr, #ctx.envelope.rcpts, s,
      tostring(ctx.session_notes.count), tostring(ctx.session_notes.plain),
      ctx.client.tls.active and ctx.client.tls.version or "-", ctx.client.auth_user ~= "" and ctx.client.auth_user or "-",
      tostring(ctx.notes.from), ctx.envelope.id, table.concat(fields, ",")))
    ctx:add_header("X-Subj", s)
  end,
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("attack-milter")
    rules = d / "rules.lua"
    rules.write_text(RULES)
    port = free_port()
    cfg = write_config(d / "postern.toml", [{}], sections={
        "milter_server": {"listen": [f"inet:127.0.0.1:{port}"], "timeout": TIMEOUT},
        "lua": {"scripts": [str(rules)]},
        "limits": {"message_size": 200000, "header_section_size": 65536, "header_fields": 1000,
                   "recipients": 50},
    })
    p = PosternProcess(postern_run_args(config=cfg, listen=()), cwd=str(d))
    p.start()
    p.wait_for_log("milter-listening")
    p.milter_port = port
    try:
        yield p
    finally:
        try:
            p.stop()
        finally:
            p.kill()


# -- a milter peer (the MTA side) ------------------------------------------

def packet(cmd, data=b""):
    return struct.pack(">I", len(data) + 1) + cmd + data


def optneg(steps=0x1FFFFF, version=6):
    return packet(b"O", struct.pack(">III", version, 0x1FF, steps))


class Mta:
    def __init__(self, port, negotiate=True, rcvbuf=None):
        self.s = socket.socket()
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(IO_TIMEOUT)
        self.s.connect(("127.0.0.1", port))
        if negotiate:
            self.s.sendall(optneg())
            assert self.read()[0] == b"O"

    def close(self):
        self.s.close()

    def read(self):
        def exactly(n):
            b = b""
            while len(b) < n:
                c = self.s.recv(n - len(b))
                if not c:
                    return None
                b += c
            return b
        hdr = exactly(4)
        if hdr is None:
            return None
        d = exactly(struct.unpack(">I", hdr)[0])
        return None if d is None else (d[:1], d[1:])

    def send(self, cmd, data=b""):
        self.s.sendall(packet(cmd, data))

    def cmd(self, cmd, data=b""):
        self.send(cmd, data)
        return self.read()

    def macros(self, stage, pairs):
        self.send(b"D", stage + b"".join(k + b"\0" + v + b"\0" for k, v in pairs))

    def final(self):
        """Replies up to the one that ends end of message."""
        out = []
        while True:
            r = self.read()
            assert r is not None, f"closed after {out}"
            out.append(r)
            if r[0] in (b"a", b"c", b"d", b"r", b"t", b"y"):
                return out

    def connect(self, ip=b"192.0.2.1", host=b"client.example"):
        return self.cmd(b"C", host + b"\x004\x00\x19" + ip + b"\x00")

    def message(self, helo=None, sender=b"<a@example.org>", rcpts=(b"<b@example.net>",),
                headers=((b"Subject", b" hi"),), body=b"body\r\n"):
        if helo is not None:
            assert self.cmd(b"H", helo + b"\0")[0] == b"c"
        assert self.cmd(b"M", sender + b"\0")[0] == b"c"
        for r in rcpts:
            assert self.cmd(b"R", r + b"\0")[0] == b"c"
        for n, v in headers:
            self.send(b"L", n + b"\0" + v + b"\0")
        self.send(b"N")
        if body:
            self.send(b"B", body)
        self.send(b"E")
        return self.final()

    def closed(self, timeout=None):
        self.s.settimeout(timeout or IO_TIMEOUT)
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


def echo(replies):
    """The X-Echo field of an end-of-message answer, as a dict."""
    for cmd, data in replies:
        if cmd == b"h" and data.startswith(b"X-Echo\0"):
            text = data[len(b"X-Echo\0"):-1].decode().replace("\n", "")
            return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)
    raise AssertionError(f"no X-Echo in {replies}")


def serves(server):
    m = Mta(server.milter_port)
    m.connect()
    assert m.message()[-1] == (b"a", b"")
    m.close()


# -- 1. framing ------------------------------------------------------------

GARBAGE = {
    "length 0": (True, b"\0\0\0\0"),
    "length 1 optneg": (False, struct.pack(">I", 1) + b"O"),
    "length 1 connect": (True, struct.pack(">I", 1) + b"C"),
    "length 1 helo": (True, struct.pack(">I", 1) + b"H"),
    "length 1 mail": (True, struct.pack(">I", 1) + b"M"),
    "length 1 rcpt": (True, struct.pack(">I", 1) + b"R"),
    "length 1 header": (True, struct.pack(">I", 1) + b"L"),
    "length 1 macro": (True, struct.pack(">I", 1) + b"D"),
    # only the length and the command are sent: closed without waiting for 1 MiB
    "length over 1 MiB": (True, struct.pack(">I", 1024 * 1024 + 1) + b"B"),
    "length 4 GiB": (True, b"\xff\xff\xff\xff" + b"B"),
    "unknown command": (True, packet(b"Z", b"x")),
    "NUL-less helo": (True, packet(b"H", b"client.example")),
    "NUL-less mail": (True, packet(b"M", b"<a@example.org>")),
    "NUL-less header value": (True, packet(b"L", b"Subject\0 x")),
    "NUL-less connect address": (True, packet(b"C", b"host\x004\x00\x19192.0.2.1")),
    "odd macro list": (True, packet(b"D", b"Ci\0Q1\0j\0")),
    "a second optneg": (True, optneg()),
    "protocol version 1": (False, optneg(version=1)),
    "mail before optneg": (False, packet(b"M", b"<a@example.org>\0")),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_framing_garbage_closes_with_a_log_line_and_the_server_serves_on(server, name):
    negotiate, garbage = GARBAGE[name]
    before = len(server.events("milter-server-garbage"))
    m = Mta(server.milter_port, negotiate=negotiate)
    m.s.sendall(garbage)
    assert m.closed(), name
    m.close()
    server.wait_for_log("milter-server-garbage", count=before + 1)
    serves(server)


def test_packets_split_across_writes_and_batched_in_one(server):
    m = Mta(server.milter_port, negotiate=False)
    for b in optneg() + packet(b"C", b"h\x004\x00\x19192.0.2.9\0"):
        m.s.send(bytes([b]))
        time.sleep(0.005)
    assert m.read()[0] == b"O"
    assert m.read()[0] == b"c"
    # HELO, MAIL, RCPT, header, end of header, body and end of message in one write
    m.s.sendall(packet(b"H", b"x.example\0") + packet(b"M", b"<a@example.org>\0") +
                packet(b"R", b"<b@example.net>\0") + packet(b"L", b"Subject\0 batched\0") + packet(b"N") +
                packet(b"B", b"x\r\n") + packet(b"E"))
    assert [m.read()[0] for _ in range(3)] == [b"c", b"c", b"c"]
    assert echo(m.final())["subj"] == "batched"


def test_a_connection_that_ends_mid_packet_and_stalled_peers_hold_only_themselves(server):
    stalled = []
    for i in range(20):
        m = Mta(server.milter_port)
        m.s.sendall(struct.pack(">I", 100) + b"H" + b"half")  # 95 octets never come
        stalled.append(m)
    gone = Mta(server.milter_port)
    gone.s.sendall(struct.pack(">I", 100) + b"H" + b"half")
    gone.close()
    before = len(server.events("milter-server-timeout"))
    start = time.monotonic()
    serves(server)
    assert time.monotonic() - start < 1.0 * SCALE
    for m in stalled:
        assert m.closed(TIMEOUT + IO_TIMEOUT)
        m.close()
    server.wait_for_log("milter-server-timeout", count=before + 20)


# -- 2. order and state ----------------------------------------------------

def test_commands_out_of_order_are_answered_and_leave_nothing_behind(server):
    m = Mta(server.milter_port)
    # MAIL and RCPT without CONNECT: no client address, nothing invented
    got = echo(m.message(headers=((b"Subject", b" noconnect"),)))
    assert got["ip"] == "" and got["helo"] == "" and got["subj"] == "noconnect"
    # end of message without MAIL: accepted, nothing filtered
    assert m.cmd(b"E") == (b"a", b"")
    # RCPT without MAIL: a clear 4xx
    cmd, data = m.cmd(b"R", b"<b@example.net>\0")
    assert cmd == b"y" and data.startswith(b"451 4.5.2")
    # header fields before MAIL belong to no message
    m.connect()
    m.send(b"L", b"Subject\0 reject me\0")
    m.send(b"L", b"X-Early\0 1\0")
    got = echo(m.message(headers=((b"Subject", b" second"),)))
    assert got["subj"] == "second" and got["seen"] == ""
    # a body before the end of header: the header section ends there, a
    # "header" inside the body is body, a field after it is ignored
    assert m.cmd(b"M", b"<c@example.org>\0")[0] == b"c"
    assert m.cmd(b"R", b"<d@example.net>\0")[0] == b"c"
    m.send(b"B", b"Subject: reject me\r\nX-Body: 1\r\n\r\nbody\r\n")
    m.send(b"L", b"Subject\0 reject me\0")
    m.send(b"E")
    got = echo(m.final())
    assert got["subj"] == "" and got["seen"] == "" and got["from"] == "c@example.org"
    assert m.cmd(b"Q") is None
    m.close()


@pytest.mark.parametrize("abort_after", ["mail", "rcpt", "header", "eoh", "body"])
def test_abort_at_every_point_then_the_next_message_has_only_its_own_verdict(server, abort_after):
    m = Mta(server.milter_port)
    m.connect()
    assert m.cmd(b"H", b"h.example\0")[0] == b"c"
    m.macros(b"M", [(b"i", b"QUEUE1")])
    assert m.cmd(b"M", b"<first@example.org>\0")[0] == b"c"
    steps = [("rcpt", lambda: m.cmd(b"R", b"<r1@example.net>\0")),
             ("header", lambda: [m.send(b"L", b"Subject\0 reject me\0"), m.send(b"L", b"X-Old\0 1\0")]),
             ("eoh", lambda: m.send(b"N")),
             ("body", lambda: m.send(b"B", b"old body\r\n"))]
    for name, step in steps:
        if abort_after == "mail":
            break
        step()
        if name == abort_after:
            break
    m.send(b"A")
    replies = m.message(sender=b"<second@example.org>", rcpts=(b"<r2@example.net>",),
                        headers=((b"Subject", b" fresh"),))
    assert replies[-1] == (b"a", b"")
    got = echo(replies)
    assert got["from"] == "second@example.org" and got["note"] == "second@example.org"
    assert got["rcpts"] == "1" and got["subj"] == "fresh" and got["seen"] == ""
    assert got["id"] != "QUEUE1"  # the aborted message's queue id names nothing after it
    # and the rejected message after it is rejected, the one after that accepted
    replies = m.message(headers=((b"Subject", b" reject me"),))
    assert replies[-1][0] == b"y" and replies[-1][1].startswith(b"554 5.7.1 refused by rule")
    assert echo(m.message(headers=((b"Subject", b" after"),)))["subj"] == "after"
    m.close()


@pytest.mark.parametrize("second_mail_macros", [None, [], [(b"{mail_addr}", b"second@example.org")],
                                                [(b"i", b"QUEUE2")]])
def test_a_mail_without_abort_never_takes_the_last_transactions_queue_id(server, second_mail_macros):
    """A second MAIL without SMFIC_ABORT between (a hostile or buggy MTA)
    opens a new transaction: the queue id the last one learned at RCPT (or
    its {mail_*} macros) must not name it, whether this MAIL came with MAIL
    macros of its own, empty ones, or none; its own queue id does."""
    m = Mta(server.milter_port)
    m.connect()
    assert m.cmd(b"M", b"<first@example.org>\0")[0] == b"c"
    m.macros(b"R", [(b"i", b"QUEUE1")])
    assert m.cmd(b"R", b"<r1@example.net>\0")[0] == b"c"
    if second_mail_macros is not None:
        m.macros(b"M", second_mail_macros)
    got = echo(m.message(sender=b"<second@example.org>", headers=((b"Subject", b" two"),)))
    assert got["from"] == "second@example.org" and got["rcpts"] == "1"
    assert got["id"] != "QUEUE1", got
    if second_mail_macros and second_mail_macros[0][0] == b"i":
        assert got["id"] == "QUEUE2"
    m.close()


def test_mails_without_a_queue_id_each_get_their_own_id(server):
    """Without the MTA's queue id, each MAIL gets an id of its own: a MAIL
    refused by a rule and the message after it are two records, not one."""
    m = Mta(server.milter_port)
    m.connect(ip=b"192.0.2.61")
    session = server.wait_for_log("milter-connect", client="192.0.2.61").get("session")
    cmd, data = m.cmd(b"M", b"<refuse@example.org>\0")
    assert cmd == b"y" and data.startswith(b"550 5.7.1"), (cmd, data)
    refused = server.wait_for_log("milter-refused", session=session, stage="mail").get("id")
    got = echo(m.message(headers=((b"Subject", b" after"),)))
    assert refused and got["id"] and got["id"] != refused, (refused, got)
    m.close()


CONNECT_ADDRESSES = {
    "a name, family 4": (b"4", b"evil.example", ""),
    "two addresses, family 4": (b"4", b"192.0.2.1 192.0.2.2", ""),
    "a zone, family 6": (b"6", b"fe80::1%eth0", ""),
    "a CIDR, family 4": (b"4", b"192.0.2.0/24", ""),
    "IPv4-mapped, family 6": (b"6", b"::ffff:192.0.2.78", "192.0.2.78"),
    "IPv6, family 6": (b"6", b"2001:db8::7", "2001:db8::7"),
    "IPv6 uppercase": (b"6", b"2001:DB8::8", "2001:db8::8"),
}


@pytest.mark.parametrize("name", list(CONNECT_ADDRESSES))
def test_the_client_address_is_an_ip_address_or_none(server, name):
    """SPF, DNSBLs, trusted_networks and the audit log key on the client
    address: what the MTA sends as one is taken only as an IP address, in
    canonical form; anything else is no address and a log line."""
    family, address, expected = CONNECT_ADDRESSES[name]
    before = len(server.events("milter-server-garbage"))
    m = Mta(server.milter_port)
    assert m.cmd(b"C", b"client.example\0" + family + b"\x00\x19" + address + b"\0") == (b"c", b"")
    got = echo(m.message(helo=b"h.example"))
    assert got["ip"] == expected, got
    if not expected:
        server.wait_for_log("milter-server-garbage", count=before + 1)
        assert "not an IP address" in server.events("milter-server-garbage")[-1].get("error", ""), \
            server.events("milter-server-garbage")[-1]
    m.close()


def test_a_unix_socket_clients_address_macro_is_an_ip_address_or_none(server):
    m = Mta(server.milter_port)
    m.macros(b"C", [(b"{client_addr}", b"192.0.2.5\r\nX-Injected: 1")])
    assert m.cmd(b"C", b"local\0U\0") == (b"c", b"")
    assert echo(m.message(helo=b"h.example"))["ip"] == ""
    m.macros(b"C", [(b"{client_addr}", b"::FFFF:192.0.2.6")])
    assert m.cmd(b"C", b"local\0U\0") == (b"c", b"")
    assert echo(m.message(helo=b"h.example"))["ip"] == "192.0.2.6"
    m.close()


def test_a_reused_connection_forgets_everything_of_the_previous_client(server):
    m = Mta(server.milter_port)
    m.macros(b"C", [(b"j", b"mx")])
    m.connect(ip=b"192.0.2.1", host=b"first.example")
    m.macros(b"H", [(b"{tls_version}", b"TLSv1.3"), (b"{cipher}", b"X")])
    m.macros(b"M", [(b"i", b"Q1"), (b"{auth_authen}", b"alice")])
    assert m.cmd(b"H", b"plain.example\0")[0] == b"c"
    assert m.cmd(b"M", b"<alice@example.org>\0")[0] == b"c"
    assert m.cmd(b"R", b"<r1@example.net>\0")[0] == b"c"
    m.send(b"L", b"Subject\0 reject me\0")
    m.send(b"K")  # SMFIC_QUIT_NC in the middle of the message
    m.connect(ip=b"192.0.2.2", host=b"second.example")
    replies = m.message(helo=b"other.example", sender=b"<bob@example.org>", headers=((b"Subject", b" two"),))
    got = echo(replies)  # no auth_user: the inbound rules ran, not the submission ones
    assert got == dict(got, ip="192.0.2.2", name="second.example", helo="other.example", **{"from": "bob@example.org"},
                       rcpts="1", subj="two", count="1", plain="nil", tls="-", auth="-", note="bob@example.org")
    assert got["id"] != "Q1"
    assert not any(c == b"h" and b"HELO_SYM" in d for c, d in replies)  # the first client's symbol
    m.close()


def test_a_new_client_without_quit_nc_keeps_its_own_connect_macros(server):
    """A CONNECT without SMFIC_QUIT_NC before it (Sendmail's way) ends the
    previous client; the connect macros sent just before it are the new
    client's and name its address (family U: {client_addr})."""
    m = Mta(server.milter_port)
    for n, ip in ((1, b"192.0.2.50"), (2, b"192.0.2.51")):
        m.macros(b"C", [(b"{client_addr}", ip)])
        assert m.cmd(b"C", b"c%d.example\0U\0" % n) == (b"c", b"")
        got = echo(m.message(helo=b"h%d.example" % n, headers=((b"Subject", b" m%d" % n),)))
        assert (got["ip"], got["name"], got["helo"], got["count"]) == (ip.decode(), f"c{n}.example", f"h{n}.example",
                                                                       "1"), got
    m.close()


def test_starttls_forgets_what_was_learned_in_plaintext(server):
    """Postfix sends HELO again after STARTTLS, with the TLS macros: the
    session notes and symbols of the plaintext HELO are forgotten, as a
    proxied session forgets them (RFC 3207 §4.2)."""
    m = Mta(server.milter_port)
    m.connect()
    assert m.cmd(b"H", b"plain.example\0")[0] == b"c"
    m.send(b"A")  # Postfix's helo_reset before the new EHLO
    m.macros(b"H", [(b"{tls_version}", b"TLSv1.3"), (b"{cipher}", b"TLS_AES_256_GCM_SHA384")])
    replies = m.message(helo=b"after-tls.example")
    got = echo(replies)
    assert got["tls"] == "TLSv1.3" and got["helo"] == "after-tls.example"
    assert got["plain"] == "nil", got
    assert not any(c == b"h" and b"HELO_SYM" in d for c, d in replies), replies
    m.close()


# -- 3. resource bounds ----------------------------------------------------

def test_macro_names_are_bounded(server):
    """256 macros of ~1 MiB names each would hold 256 MiB for one connection."""
    m = Mta(server.milter_port)
    m.connect()
    before = server.status_kb("VmRSS")
    name = b"{" + b"n" * 1000000
    for i in range(60):
        m.macros(b"C", [(name + str(i).encode() + b"}", b"v")])
    assert m.cmd(b"H", b"x.example\0")[0] == b"c"  # every macro packet was read
    grown = server.status_kb("VmRSS") - before
    if not ASAN:  # ASan's quarantine holds every freed packet
        assert grown < 20 * 1024, f"{grown} KiB held for 60 long macro names"
    assert m.message()[-1] == (b"a", b"")
    m.close()


def test_headers_body_and_recipients_past_their_limits(server):
    m = Mta(server.milter_port)
    m.connect()
    # more header fields than limits.header_fields
    replies = m.message(headers=[(b"X-H", b" v")] * 1100)
    assert replies == [(b"y", b"552 5.3.4 Error: message header section exceeds fixed limit\0")]
    # one field larger than limits.header_section_size
    replies = m.message(headers=[(b"X-Big", b" " + b"v" * 70000)])
    assert replies == [(b"y", b"552 5.3.4 Error: message header section exceeds fixed limit\0")]
    # body chunks past limits.message_size
    assert m.cmd(b"M", b"<a@example.org>\0")[0] == b"c"
    assert m.cmd(b"R", b"<b@example.net>\0")[0] == b"c"
    m.send(b"L", b"Subject\0 big\0")
    m.send(b"N")
    for _ in range(4):
        m.send(b"B", b"x" * 65000 + b"\r\n")
    m.send(b"E")
    assert m.final() == [(b"y", b"552 5.3.4 Error: message size exceeds fixed limit\0")]
    # recipients past limits.recipients: 452 for each one more
    assert m.cmd(b"M", b"<a@example.org>\0")[0] == b"c"
    answers = [m.cmd(b"R", f"<r{i}@example.net>\0".encode()) for i in range(55)]
    assert [a[0] for a in answers] == [b"c"] * 50 + [b"y"] * 5
    assert answers[-1][1].startswith(b"452 4.5.3")
    m.send(b"N")
    m.send(b"E")
    got = echo(m.final())
    assert got["rcpts"] == "50"
    # the connection is fine after all of it
    assert echo(m.message(headers=((b"Subject", b" small"),)))["subj"] == "small"
    m.close()


def test_a_peer_that_never_reads_holds_only_its_own_connection(server):
    m = Mta(server.milter_port, rcvbuf=4096)
    m.connect(ip=b"192.0.2.77")
    session = server.wait_for_log("milter-connect", client="192.0.2.77").get("session")
    m.s.setblocking(False)
    # SMFIC_DATA (not negotiated away by this MTA) is answered with a continue each
    blob = packet(b"T") * 10000
    off = sent = 0
    # ASan's postern answers too slowly to fill the socket buffers in time:
    # it gets a megabyte, which it works through within the test's budget
    budget = 1 << 20 if ASAN else 64 << 20
    last = start = time.monotonic()
    while time.monotonic() - last < 1.5 and time.monotonic() - start < 15 and sent < budget:
        try:
            n = m.s.send(blob[off:])
            off = (off + n) % len(blob)
            sent += n
            last = time.monotonic()
        except BlockingIOError:
            time.sleep(0.02)
    assert time.monotonic() - last >= 1.5 or ASAN, "postern read on without its answers being read"
    t = time.monotonic()
    serves(server)
    assert time.monotonic() - t < 1.0 * SCALE
    # closed within [milter_server] timeout: its write given up (or, when
    # the buffers held every answer, its silence)
    end = server.wait_for_log("milter-session-end", session=session, timeout=TIMEOUT + IO_TIMEOUT)
    assert end.get("end") in ("write-error", "timeout") and (ASAN or end.get("end") == "write-error"), end.raw
    m.close()


# -- 4. replies ------------------------------------------------------------

def test_no_modification_carries_a_line_break_from_the_peer(server):
    m = Mta(server.milter_port)
    m.macros(b"C", [(b"{client_addr}", b"192.0.2.7\r\nX-Inj-Addr: 1")])
    assert m.cmd(b"C", b"evil\r\nX-Inj-Name: 1\x00U\x00")[0] == b"c"
    m.macros(b"H", [(b"{tls_version}", b"TLSv1.3\r\nX-Inj-Tls: 1")])
    replies = m.message(helo=b"h.example\r\nX-Inj-Helo: 1\rX-Inj-Cr: 1\nX-Inj-Lf: 1",
                        headers=((b"Subject", b" s\r\n\tX-Inj-Subj: 1"), (b"From", b" a@example.org")))
    assert replies[-1] == (b"a", b"")
    mods = [r for r in replies if r[0] in (b"h", b"i", b"m")]
    assert mods
    for cmd, data in mods:
        body = data[4:] if cmd in (b"i", b"m") else data
        name, value, rest = body.split(b"\0")
        assert rest == b"" and b"\r" not in value, (cmd, data)
        # every line break is a fold: the next line starts with white space
        for line in value.split(b"\n")[1:]:
            assert line[:1] in (b" ", b"\t"), (cmd, data)
    m.close()


@pytest.mark.parametrize("value", [b" s\nX-Old: 1", b" s\r\nX-Old: 1", b"\nX-Old: 1", b" s\n\n\nX-Old: 1",
                                   b" s\n"])
def test_a_header_value_whose_line_break_does_not_fold_is_garbage(server, value):
    """Postfix sends a folded field's value with LF + white space between
    its lines. A line break followed by anything else would end the field
    (or, doubled, the header section) in postern's copy while the MTA holds
    one field: postern would judge a message with other fields than the
    one the MTA delivers."""
    before = len(server.events("milter-server-garbage"))
    m = Mta(server.milter_port)
    m.connect()
    assert m.cmd(b"M", b"<a@example.org>\0")[0] == b"c"
    assert m.cmd(b"R", b"<b@example.net>\0")[0] == b"c"
    m.send(b"L", b"Subject\0" + value + b"\0")  # no reply (SMFIP_NR_HDR): closed at once
    assert m.closed()
    m.close()
    server.wait_for_log("milter-server-garbage", count=before + 1)
    # folds are fine, as Postfix sends them
    m = Mta(server.milter_port)
    m.connect()
    got = echo(m.message(headers=((b"Subject", b" s\n\tfolded"), (b"X-Old", b" a\r\n b"))))
    assert got["subj"] == "s" and got["seen"] == "X-Old"
    m.close()


def test_connections_past_the_limit_are_closed_at_once_and_counted_back(tmp_path):
    """[milter_server] connections: a flood of idle MTA connections takes
    the slots it is given and no more; each closed one frees its slot."""
    port = free_port()
    cfg = write_config(tmp_path / "postern.toml", [{}], sections={
        "milter_server": {"listen": [f"inet:127.0.0.1:{port}"], "timeout": TIMEOUT, "connections": 5}})
    p = PosternProcess(postern_run_args(config=cfg, listen=()), cwd=str(tmp_path))
    p.start()
    try:
        p.wait_for_log("milter-listening")
        held = [Mta(port) for _ in range(5)]
        for _ in range(3):
            extra = Mta(port, negotiate=False)
            assert extra.closed()
            extra.close()
        p.wait_for_log("session-limit", count=3)
        garbage = held.pop()
        garbage.s.sendall(b"\0\0\0\0")  # one slot freed by garbage
        assert garbage.closed()
        garbage.close()
        p.wait_for_log("milter-session-end", end="garbage")
        deadline = time.monotonic() + IO_TIMEOUT
        while True:  # the slot is given back just after the log line
            try:
                m = Mta(port)
                break
            except (ConnectionResetError, BrokenPipeError, TypeError):
                assert time.monotonic() < deadline, "the freed slot never came back"
                time.sleep(0.05)
        m.connect()
        assert m.message()[-1] == (b"a", b"")
        for h in held + [m]:
            h.close()
        p.stop()
    finally:
        p.kill()
