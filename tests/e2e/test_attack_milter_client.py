"""postern as a milter client facing a hostile milter: a raw scripted milter
(the milter wire format written byte by byte, so it can misbehave in ways
libmilter never would) in front of the recording sink. Whatever the milter
answers, postern must not crash or hang past its time-outs, relay a message
the milter refused, ack a message it did not relay, or relay anything but
what the milter's legal actions say (docs/milter.md "Calling milters from
postern")."""
import json
import re
import socket
import struct
import threading
import time

import pytest

from harness import ScriptedServer, SmtpClient, check_reply, data_payload

# A message with a dot line, a folded field and a second paragraph.
MESSAGE = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hello\r\n"
           b"X-Folded: one\r\n\ttwo\r\nMessage-ID: <m1@example.org>\r\n\r\n"
           b"body line\r\n.dot line\r\n\r\nlast line\r\n")

# Every SMFIF_* action, and no SMFIP_* step (every command is answered).
ALL_ACTIONS = 0x1ff
CLOSE = object()      # a handler's answer: close the connection
STALL = object()      # a handler's answer: stop reading and answering


def packet(command, data=b""):
    if isinstance(command, str):
        command = command.encode()
    return struct.pack(">I", len(data) + 1) + command + data


def optneg(version=6, actions=ALL_ACTIONS, steps=0):
    return packet("O", struct.pack(">III", version, actions, steps))


def header_reply(command, name, value, index=None):
    idx = b"" if index is None else struct.pack(">I", index)
    return packet(command, idx + name + b"\0" + value + b"\0")


def replycode(text):
    return packet("y", text + b"\0")


C = packet("c")
ACCEPT = packet("a")
REJECT = packet("r")


class RawMilter(ScriptedServer):
    """The milter protocol spoken by hand. `replies` maps an SMFIC_* command
    letter ('C' connect, 'H', 'M', 'R', 'T' data, 'L' header, 'N' end of
    header, 'B' body, 'E' end of message) to bytes, or to a callable
    (conn, data) -> bytes | CLOSE | STALL | None; unlisted commands get
    SMFIR_CONTINUE. Macros, abort and quit get nothing."""

    def __init__(self, replies=None, negotiation=None):
        super().__init__()
        self.replies = dict(replies or {})
        self.negotiation = negotiation if negotiation is not None else optneg()
        self.commands = []       # (connection number, command letter, data)
        self.connections = 0
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def seen(self, command=None):
        with self.lock:
            return [c for c in self.commands if command is None or c[1] == command]

    def _read(self, conn, n):
        out = b""
        while len(out) < n:
            chunk = conn.recv(n - len(out))
            if not chunk:
                return None
            out += chunk
        return out

    def session(self, conn):
        with self.lock:
            self.connections += 1
            number = self.connections
        conn.settimeout(60)
        try:
            while True:
                head = self._read(conn, 4)
                if head is None:
                    return
                body = self._read(conn, struct.unpack(">I", head)[0])
                if body is None:
                    return
                command, data = chr(body[0]), body[1:]
                with self.lock:
                    self.commands.append((number, command, data))
                if command == "O":
                    answer = self.negotiation
                elif command in "DA":
                    continue
                elif command == "Q":
                    return
                else:
                    answer = self.replies.get(command, C)
                if callable(answer):
                    answer = answer(conn, data)
                if answer is CLOSE:
                    return
                if answer is STALL:
                    self.stopped.wait(60)
                    return
                if answer:
                    conn.sendall(answer)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stopped.set()
        super().close()


@pytest.fixture
def raw_milter():
    milters = []

    def make(replies=None, negotiation=None):
        m = RawMilter(replies, negotiation)
        milters.append(m)
        return m

    try:
        yield make
    finally:
        for m in milters:
            m.close()


def start(postern, sink, tmp_path, milter, limits=None, **kw):
    entry = {"name": "raw", "socket": f"inet:127.0.0.1:{milter.port}", "connect_timeout": 2,
             "command_timeout": 2, "eom_timeout": 1, "on_error": "tempfail"}
    entry.update(kw)
    sets = {"milter": "[{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in entry.items()) + "}]",
            "quarantine.dir": f'"{tmp_path / "quarantine"}"', "limits.message_size": (limits or {}).get("message_size", 200000)}
    return postern.start(upstream=sink.address, sets=sets)


def transaction(c, content=MESSAGE, rcpts=("b@example.com",), sender="a@example.org"):
    """One transaction; returns the first reply that is not a success, or the
    reply to the end of data."""
    r = c.cmd(f"MAIL FROM:<{sender}>")
    if r.code != 250:
        return r
    for rcpt in rcpts:
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        if r.code != 250:
            if r.code != 421:
                check_reply(c.cmd("RSET"), 250)
            return r
    r = c.cmd("DATA")
    if r.code != 354:
        check_reply(c.cmd("RSET"), 250)
        return r
    c.send(data_payload(content))
    return c.read_reply(timeout=60)


def send_one(p, content=MESSAGE, rcpts=("b@example.com",)):
    c = SmtpClient(p.port, timeout=30)
    c.ehlo()
    return c, transaction(c, content, rcpts)


def relayed_content(msg):
    """What the MTA got after postern's own Received field."""
    assert msg.body is not None, msg
    return msg.body


def on_error_held(r, sink, on_error, n=1):
    """A failed milter's on_error: 451 and nothing relayed, or the n-th
    message relayed unmodified (returned)."""
    if on_error == "tempfail":
        check_reply(r, 451, "4.7.1")
        assert sink.messages == []
        return None
    check_reply(r, 250)
    assert len(sink.messages) == n
    assert relayed_content(sink.messages[n - 1]) == MESSAGE  # unmodified, nothing of a half answer
    return sink.messages[n - 1]


def head_and_body(msg):
    head, _, body = relayed_content(msg).partition(b"\r\n\r\n")
    return head, body


def fields(head):
    """(name, unfolded value) of each field of a header section."""
    out = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + b" " + line.strip())
        else:
            name, sep, value = line.partition(b":")
            assert sep, f"a header line without a colon: {line!r} in {head!r}"
            out.append((name, value.strip()))
    return out


def assert_healthy(p, sink, before):
    """postern still takes and relays mail after the attack (a fresh session:
    the milter's own session state is the attack's)."""
    assert p.alive()
    with SmtpClient(p.port, timeout=30) as c:
        c.ehlo()
        check_reply(c.cmd("NOOP"), 250)
    assert len(sink.messages) == before


def assert_refused_not_relayed(r, sink, code_class=4):
    assert r.code // 100 == code_class, str(r)
    assert sink.messages == []


# --- framing --------------------------------------------------------------

FRAMING_AT_MAIL = {
    "length-zero": b"\x00\x00\x00\x00",
    "length-huge": b"\x7f\xff\xff\xffc",
    "length-max": b"\xff\xff\xff\xff",
    "length-just-past-bound": struct.pack(">I", 1024 * 1024 + 1) + b"c",
    "truncated-then-close": lambda conn, data: (conn.sendall(b"\x00\x00\x00\x10c"), CLOSE)[1],
    "header-only-then-close": lambda conn, data: (conn.sendall(b"\x00\x00"), CLOSE)[1],
    "unknown-reply-z": packet("z"),
    "unknown-reply-nul": packet("\0"),
    "optneg-again": optneg(),
    "continue-with-data": packet("c", b"junk"),
    "reject-with-data": packet("r", b"\0"),
    "chgheader-too-short": packet("m", b"\0\0\0"),
    "replycode-empty": packet("y"),
    "replycode-only-nul": packet("y", b"\0"),
}


@pytest.mark.parametrize("case", list(FRAMING_AT_MAIL))
def test_malformed_framing_applies_on_error(postern, sink, tmp_path, raw_milter, case):
    m = raw_milter({"M": FRAMING_AT_MAIL[case]})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    assert_refused_not_relayed(r, sink)
    check_reply(r, 451, "4.7.1")
    assert p.wait_for_log(event="milter-error") is not None
    assert_healthy(p, sink, 0)


NEGOTIATIONS = {
    "garbage-before-optneg": C + optneg(),
    "http": b"HTTP/1.1 400 Bad Request\r\n\r\n",
    "optneg-short": packet("O", struct.pack(">II", 6, 0)),
    "version-0": optneg(version=0),
    "version-1": optneg(version=1),
    "version-7": optneg(version=7),
    "version-huge": optneg(version=0xffffffff),
    "actions-not-offered": optneg(actions=0x200),
    "actions-all-bits": optneg(actions=0xffffffff),
    "step-rcpt-rej": optneg(steps=0x800),
    "step-hdr-leadspc": optneg(steps=0x100000),
    "step-unknown-bit": optneg(steps=0x80000000),
    "silence": STALL,
    "close": CLOSE,
}


@pytest.mark.parametrize("case", list(NEGOTIATIONS))
def test_bad_negotiation_applies_on_error(postern, sink, tmp_path, raw_milter, case):
    m = raw_milter(negotiation=NEGOTIATIONS[case])
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 451, "4.7.1")
    assert sink.messages == []
    # nothing after the failed negotiation reached the milter
    assert [x[1] for x in m.seen()] == ["O"]
    assert_healthy(p, sink, 0)


def trickle(answer, pause=0.0):
    def handler(conn, data):
        for i in range(len(answer)):
            conn.sendall(answer[i:i + 1])
            if pause:
                time.sleep(pause)
    return handler


def test_replies_split_byte_by_byte_are_reassembled(postern, sink, tmp_path, raw_milter):
    eom = (header_reply("h", b"X-Split", b"one byte at a time") + packet("+", b"<added@example.net>\0") +
           ACCEPT)
    m = raw_milter({"C": trickle(C), "M": trickle(C), "E": trickle(eom)},
                   negotiation=trickle(optneg()))
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 250)
    assert len(sink.messages) == 1
    msg = sink.messages[0]
    assert sorted(msg.rcpt_tos) == ["added@example.net", "b@example.com"]
    head, body = head_and_body(msg)
    assert (b"X-Split", b"one byte at a time") in fields(head)
    assert relayed_content(msg).endswith(MESSAGE.split(b"\r\n\r\n", 1)[1])


# --- replies out of order -------------------------------------------------

EXTRA_REPLIES = {
    # two answers to one command: the second would answer the next command
    "two-continues-to-mail": ({"M": C + C, "E": REJECT}),
    "two-continues-to-rcpt": ({"R": C + C, "E": REJECT}),
    "continue-then-reject-to-helo": ({"H": C + REJECT, "E": REJECT}),
    "a-reply-before-connect": ({}, C + REJECT),
    "two-continues-to-a-header": ({"L": C + C, "E": REJECT}),
    "two-continues-to-data": ({"T": C + C, "E": REJECT}),
}


@pytest.mark.parametrize("case", list(EXTRA_REPLIES))
def test_extra_replies_never_shift_the_answers(postern, sink, tmp_path, raw_milter, case):
    spec = EXTRA_REPLIES[case]
    if isinstance(spec, tuple):
        replies, after_optneg = spec
        m = raw_milter(replies, negotiation=optneg() + after_optneg)
    else:
        m = raw_milter(spec)
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    # every stage's answer is the milter's first; the milter rejects the
    # message at the end, so an error, a rejection: never the relay
    assert r.code // 100 in (4, 5), str(r)
    assert sink.messages == []
    assert_healthy(p, sink, 0)


def test_extra_reply_after_end_of_message_is_caught_at_the_next_command(postern, sink, tmp_path, raw_milter):
    m = raw_milter({"E": ACCEPT + REJECT})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 250)  # the first answer counts: accept
    assert len(sink.messages) == 1
    r = transaction(c)
    check_reply(r, 451, "4.7.1")  # the stray reject is an error, not MAIL's answer
    assert len(sink.messages) == 1


def progress_forever(conn, data):
    # SMFIR_PROGRESS every 0.2 s, never a final answer
    for _ in range(300):
        conn.sendall(packet("p"))
        time.sleep(0.2)
    return CLOSE


@pytest.mark.parametrize("on_error,code", [("tempfail", 451), ("accept", 250)])
def test_progress_flood_at_end_of_message_is_bounded(postern, sink, tmp_path, raw_milter, on_error, code):
    m = raw_milter({"E": progress_forever})
    p = start(postern, sink, tmp_path, m, eom_timeout=1, on_error=on_error)
    t0 = time.monotonic()
    c, r = send_one(p)
    check_reply(r, code)
    # eom_timeout (1 s) bounds the whole wait; the client's 30 s would not
    assert time.monotonic() - t0 < 20
    assert len(sink.messages) == (1 if code == 250 else 0)
    if code == 250:
        assert relayed_content(sink.messages[0]) == MESSAGE


def test_progress_flood_at_mail_is_bounded(postern, sink, tmp_path, raw_milter):
    m = raw_milter({"M": progress_forever})
    p = start(postern, sink, tmp_path, m, command_timeout=1)
    t0 = time.monotonic()
    c, r = send_one(p)
    check_reply(r, 451, "4.7.1")
    assert time.monotonic() - t0 < 20
    assert sink.messages == []


MODIFICATION_BEFORE_EOM = {
    "M": header_reply("h", b"X-Early", b"1") + C,
    "R": packet("+", b"<early@example.net>\0") + C,
    "H": packet("b", b"new body\r\n") + C,
    "L": packet("e", b"<early@example.net>\0") + C,
    "N": packet("q", b"early\0") + C,
    "B": header_reply("m", b"Subject", b"early", 1) + C,
    "T": packet("-", b"<b@example.com>\0") + C,
}


@pytest.mark.parametrize("stage", list(MODIFICATION_BEFORE_EOM))
def test_modification_before_end_of_message_is_an_error(postern, sink, tmp_path, raw_milter, stage):
    m = raw_milter({stage: MODIFICATION_BEFORE_EOM[stage]})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 451, "4.7.1")
    assert sink.messages == []
    assert_healthy(p, sink, 0)


NOT_NEGOTIATED = {
    "addheader": (0x1ff & ~0x01, header_reply("h", b"X-Not", b"allowed")),
    "inheader": (0x1ff & ~0x01, header_reply("i", b"X-Not", b"allowed", 0)),
    "chgheader": (0x1ff & ~0x10, header_reply("m", b"Subject", b"changed", 1)),
    "replbody": (0x1ff & ~0x02, packet("b", b"replaced\r\n")),
    "addrcpt": (0x1ff & ~0x04, packet("+", b"<x@example.net>\0")),
    "delrcpt": (0x1ff & ~0x08, packet("-", b"<b@example.com>\0")),
    "chgfrom": (0x1ff & ~0x40, packet("e", b"<x@example.net>\0")),
    "addrcpt-par": (0x1ff & ~0x80, packet("2", b"<x@example.net>\0NOTIFY=NEVER\0")),
    "quarantine": (0x1ff & ~0x20, packet("q", b"held\0")),
}


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
@pytest.mark.parametrize("case", list(NOT_NEGOTIATED))
def test_modification_not_negotiated_changes_nothing(postern, sink, tmp_path, raw_milter, case, on_error):
    actions, mod = NOT_NEGOTIATED[case]
    m = raw_milter({"E": mod + ACCEPT}, negotiation=optneg(actions=actions))
    p = start(postern, sink, tmp_path, m, on_error=on_error)
    c, r = send_one(p)
    msg = on_error_held(r, sink, on_error)
    if msg:
        assert msg.rcpt_tos == ["b@example.com"] and msg.mail_from == "a@example.org"
        assert not list((tmp_path / "quarantine").rglob("*.*"))


# --- modification payloads ------------------------------------------------

INJECTED_VALUES = [
    b"x\r\nBcc: evil@example.net",
    b"x\nX-Forged: 1",
    b"x\rX-Forged: 1",
    b"x\r\n\r\nforged body",
    b"x\n\nforged body",
    b"x\r\n \r\n\r\nforged body",
    b"\r\n\r\n",
    b"x\x0b\x0c\x1b[31m\x7f",
]


@pytest.mark.parametrize("command", ["h", "i", "m"])
@pytest.mark.parametrize("value", INJECTED_VALUES, ids=range(len(INJECTED_VALUES)))
def test_header_values_cannot_inject_lines(postern, sink, tmp_path, raw_milter, command, value):
    name = b"Subject" if command == "m" else b"X-Milter"
    index = None if command == "h" else 1
    m = raw_milter({"E": header_reply(command, name, value, index) + ACCEPT})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 250)
    assert len(sink.messages) == 1
    head, body = head_and_body(sink.messages[0])
    names = [n.lower() for n, _ in fields(head)]
    assert b"bcc" not in names and b"x-forged" not in names
    assert body == MESSAGE.split(b"\r\n\r\n", 1)[1]  # the header section did not end early
    for line in head.split(b"\r\n"):
        assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", line), line
        assert line.strip() or not line, f"a whitespace-only line in the header: {head!r}"
    assert names.count(name.lower()) == 1


BAD_NAMES = [b"", b"X Bad", b"X:Bad", b"X-\xe9", b"X\r\nBcc", b"X\nBcc", b"X\tTab", b"\x7f", b"N" * 201]


@pytest.mark.parametrize("command,name",
                         [("h", n) for n in BAD_NAMES] + [(c, n) for c in "im" for n in BAD_NAMES[:5]],
                         ids=[f"h-{i}" for i in range(len(BAD_NAMES))] + [f"{c}-{i}" for c in "im" for i in range(5)])
def test_invalid_header_names_are_an_error(postern, sink, tmp_path, raw_milter, command, name):
    index = None if command == "h" else 1
    m = raw_milter({"E": header_reply(command, name, b"value", index) + ACCEPT})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 451, "4.7.1")
    assert sink.messages == []


def test_nul_inside_a_header_reply_is_an_error(postern, sink, tmp_path, raw_milter):
    m = raw_milter({"E": packet("h", b"X-Nul\0a\0b\0") + ACCEPT})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 451, "4.7.1")
    assert sink.messages == []


@pytest.mark.parametrize("command,index", [("m", 0), ("m", 7), ("m", 0xffffffff), ("i", 1000),
                                           ("i", 0xffffffff), ("m-delete", 0xffffffff)])
def test_header_index_out_of_range(postern, sink, tmp_path, raw_milter, command, index):
    if command == "m-delete":
        mod = header_reply("m", b"X-Folded", b"", index)
    else:
        mod = header_reply(command, b"Subject" if command == "m" else b"X-Ins", b"far", index)
    m = raw_milter({"E": mod + ACCEPT})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 250)
    assert len(sink.messages) == 1
    head, body = head_and_body(sink.messages[0])
    assert body == MESSAGE.split(b"\r\n\r\n", 1)[1]
    f = fields(head)
    subjects = [v for n, v in f if n == b"Subject"]
    if command == "m" and index == 0:
        assert subjects == [b"far"]  # index 0 means the first (smfi_chgheader)
    elif command == "m":
        assert len(subjects) in (1, 2) and b"hello" in subjects
    elif command == "i":
        assert f[-1] == (b"X-Ins", b"far")  # past the last field: after it
    else:
        assert [v for n, v in f if n == b"X-Folded"] == [b"one two"]


def test_huge_header_values(postern, sink, tmp_path, raw_milter):
    # at the bound: relayed, each line within RFC 5322's 998 octets
    long_word = b"w" * 2000
    spaced = b" ".join([b"word"] * 3000)[:16 * 1024]
    m = raw_milter({"E": header_reply("h", b"X-Long", spaced) + header_reply("h", b"X-Word", long_word) + ACCEPT})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 250)
    head, _ = head_and_body(sink.messages[0])
    assert all(len(line) <= 998 for line in head.split(b"\r\n")), max(len(x) for x in head.split(b"\r\n"))
    assert dict(fields(head))[b"X-Long"].split() == spaced.split()
    # past the bound: an error
    m.replies["E"] = header_reply("h", b"X-Huge", b"v" * (16 * 1024 + 1)) + ACCEPT
    r = transaction(c)
    check_reply(r, 451, "4.7.1")
    assert len(sink.messages) == 1


BAD_ADDRESSES = [
    b"<x@example.net>\r\nRCPT TO:<evil@example.net>",
    b"<x@example.net> NOTIFY=NEVER",
    b"x@example.net> ORCPT=rfc822;evil@example.net <y",
    b"<x@example.net\r\n>",
    b"<x\n@example.net>",
    b"<>",
    b"",
    b"<x y@example.net>",
    b"<" + b"x" * 300 + b"@example.net>",
    b"<@relay.example:x@example.net>",
]


@pytest.mark.parametrize("command,address",
                         [(c, a) for c in "+e" for a in BAD_ADDRESSES] + [(c, a) for c in "2-" for a in BAD_ADDRESSES[:5]],
                         ids=[f"{c}-{i}" for c in "+e" for i in range(len(BAD_ADDRESSES))] +
                         [f"{c}-{i}" for c in "2-" for i in range(5)])
def test_hostile_addresses_never_reach_the_envelope(postern, make_sink, tmp_path, raw_milter, command, address):
    sink = make_sink(dsn=True)
    data = address + b"\0" + (b"NOTIFY=NEVER\0" if command == "2" else b"")
    m = raw_milter({"E": packet(command, data) + ACCEPT})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    for line in sink.lines():
        assert "evil" not in line and "\r" not in line and "\n" not in line, line
    if r.code == 250:
        # only the source-routed form may be taken (its route dropped)
        # (and the null path where it means something harmless: a sender,
        # or a recipient to remove that is not there)
        assert address == b"<@relay.example:x@example.net>" or (address == b"<>" and command in "e-"), str(r)
        msg = sink.messages[0]
        assert all(a in ("b@example.com", "x@example.net") for a in msg.rcpt_tos), msg
    else:
        check_reply(r, 451, "4.7.1")
        assert sink.messages == []


@pytest.mark.parametrize("args", [
    b"NOTIFY=NEVER\r\nRCPT TO:<evil@example.net>",
    b"NOTIFY=NEVER ORCPT=rfc822;evil@example.net\nX",
    b"FOO=BAR",
    b"NOTIFY=NEVER\x00X",
    b"SIZE=1",
    b"=",
])
@pytest.mark.parametrize("command", ["2", "e"])
def test_hostile_esmtp_arguments_are_dropped(postern, make_sink, tmp_path, raw_milter, args, command):
    sink = make_sink(dsn=True)
    data = b"<x@example.net>\0" + args + b"\0"  # a NUL inside args: a third string, malformed
    m = raw_milter({"E": packet(command, data) + ACCEPT})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    for line in sink.lines():
        assert "evil" not in line and "FOO" not in line and "SIZE=1 " not in line, line
    if b"\x00" in args:
        check_reply(r, 451, "4.7.1")
        assert sink.messages == []
        return
    check_reply(r, 250)
    msg = sink.messages[0]
    if command == "2":
        assert sorted(msg.rcpt_tos) == ["b@example.com", "x@example.net"]
    else:
        assert msg.mail_from == "x@example.net"


BODIES = {
    "dot-lines": (b".\r\nMAIL FROM:<evil@example.net>\r\n..\r\n.x\r\n", None),
    "smuggling": (b"a\n.\nMAIL FROM:<evil@example.net>\r\n\r.\r", None),
    "bare-endings": (b"a\rb\nc\r\nd", b"a\r\nb\r\nc\r\nd\r\n"),
    "no-final-crlf": (b"tail", b"tail\r\n"),
    "cr-at-the-end": (b"tail\r", b"tail\r\n"),
    "empty": (b"", b""),
}


@pytest.mark.parametrize("case", list(BODIES))
@pytest.mark.parametrize("chunked", [False, True])
def test_replaced_body_is_relayed_as_lines(postern, sink, tmp_path, raw_milter, case, chunked):
    body, expected = BODIES[case]
    if chunked:  # one piece a byte: pieces join where they were cut (CR | LF)
        mod = b"".join(packet("b", body[i:i + 1]) for i in range(len(body))) or packet("b")
    else:
        mod = packet("b", body)
    m = raw_milter({"E": mod + ACCEPT})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 250)
    assert len(sink.messages) == 1
    msg = sink.messages[0]
    assert not msg.raw_has_bare_line_ending
    head, got = head_and_body(msg)
    if expected is None:
        expected = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
    assert got == expected
    assert msg.mail_from == "a@example.org" and msg.rcpt_tos == ["b@example.com"]
    # the session goes on: a second message is relayed as sent
    m.replies["E"] = ACCEPT
    check_reply(transaction(c), 250)
    assert relayed_content(sink.messages[1]) == MESSAGE


def test_replaced_body_with_nul_is_an_error(postern, sink, tmp_path, raw_milter):
    m = raw_milter({"E": packet("b", b"a\0b\r\n") + ACCEPT})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 451, "4.7.1")
    assert sink.messages == []


@pytest.mark.parametrize("shape", ["one-piece", "many-pieces", "lf-doubling"])
def test_replaced_body_past_the_size_limit_is_an_error(postern, sink, tmp_path, raw_milter, shape):
    limit = 200000
    if shape == "one-piece":
        mod = packet("b", b"x" * (limit + 1))
    elif shape == "many-pieces":
        mod = b"".join(packet("b", b"y" * 999 + b"\n") for _ in range(limit // 1000 + 1))
    else:  # under the limit as sent, over it once each LF is a CRLF
        mod = packet("b", b"\n" * (limit - 10))
    m = raw_milter({"E": mod + ACCEPT})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 451, "4.7.1")
    assert sink.messages == []
    assert_healthy(p, sink, 0)


def test_many_body_pieces_are_joined_in_order(postern, sink, tmp_path, raw_milter):
    pieces = [b"line %05d\r\n" % i for i in range(3000)]
    m = raw_milter({"E": b"".join(packet("b", x) for x in pieces) + ACCEPT})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 250)
    assert head_and_body(sink.messages[0])[1] == b"".join(pieces)


@pytest.mark.parametrize("reason", [
    b"held\r\nX-Forged: 1", b"held\nX-Forged: 1\n\nbody", b"\x1b[2J\x07" + b"r" * 5000, b"",
])
def test_quarantine_reason_cannot_inject(postern, sink, tmp_path, raw_milter, reason):
    m = raw_milter({"E": packet("q", reason + b"\0") + ACCEPT})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 250)
    assert "quarantined" in str(r)
    assert sink.messages == []
    held = [f for f in (tmp_path / "quarantine").rglob("*") if f.is_file()]
    assert len(held) == 1
    content = held[0].read_bytes().replace(b"\r\n", b"\n")  # a Maildir file has LF lines
    head, _, body = content.partition(b"\n\n")
    assert body == MESSAGE.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
    head = head.replace(b"\n", b"\r\n")
    names = [n.lower() for n, _ in fields(head)]
    assert b"x-forged" not in names
    for line in head.split(b"\r\n"):
        assert len(line) <= 998 and not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", line), line
    assert p.alive()


# --- SMFIR_REPLYCODE ------------------------------------------------------

REPLYCODES = {
    # text: (class the client must hear, the code when exact)
    b"550 5.7.1 go away": (5, 550),
    b"451 4.7.1 later": (4, 451),
    b"550-5.7.1 first\r\n550 5.7.1 second": (5, 550),
    b"550 4.7.1 enhanced of the wrong class": (5, 550),
    b"450 5.7.1 enhanced of the wrong class": (4, 450),
    b"550 5.7.1 x\r\n250 2.0.0 a second reply": (5, 550),
    b"550 5.7.1 x\r\n\r\n250 2.0.0 ok": (5, 550),
    b"550 5.7.1 trailing line end\r\n": (5, 550),
    b"550-5.7.1 a\r\n551 5.7.1 other code": (5, 550),
    b"550 5.7.1 " + b"x" * 5000: (5, 550),
    b"550 5.7.1 \x1b[31mcontrol\x07\xff": (5, 550),
    b"550-5.7.1 many\r\n" * 50 + b"550 5.7.1 end": (5, 550),
    b"550 5.7.1 x\rinjected": (5, 550),
    b"550": (5, 550),
    b"599 5.9.9 odd": (5, None),
}


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
@pytest.mark.parametrize("text", list(REPLYCODES), ids=range(len(REPLYCODES)))
def test_replycode_reaches_the_client_as_one_reply_of_its_class(postern, sink, tmp_path, raw_milter, text, on_error):
    klass, code = REPLYCODES[text]
    m = raw_milter({"E": replycode(text)})
    p = start(postern, sink, tmp_path, m, on_error=on_error)
    c, r = send_one(p)  # read_reply checks each line's form and one code
    assert r.code // 100 == klass, str(r)
    if code:
        assert r.code == code, str(r)
    assert sink.messages == []
    for line in r.lines:
        assert len(line) <= 512 and re.fullmatch(r"[\x20-\x7e]*", line), line
    # exactly one reply: the next command gets its own
    check_reply(c.cmd("NOOP"), 250)
    assert c.buf == b""


@pytest.mark.parametrize("stage", ["M", "R", "E"])
@pytest.mark.parametrize("text", [b"421 4.7.0 closing", b"421-4.3.2 shutting\r\n421 4.3.2 down\r\n250 ok"])
def test_replycode_421_closes_the_session(postern, sink, tmp_path, raw_milter, stage, text):
    m = raw_milter({stage: replycode(text)})
    p = start(postern, sink, tmp_path, m, on_error="accept")
    c, r = send_one(p)
    check_reply(r, 421)
    assert c.wait_closed(timeout=10)
    assert sink.messages == []
    assert_healthy(p, sink, 0)


@pytest.mark.parametrize("text", [b"250 2.0.0 fine", b"354 go ahead", b"199 x", b"600 x", b"x50 5.7.1",
                                  b"55", b"\x00550 5.7.1"])
def test_replycode_of_no_refusal_class_is_an_error(postern, sink, tmp_path, raw_milter, text):
    m = raw_milter({"E": replycode(text)})
    p = start(postern, sink, tmp_path, m)
    c, r = send_one(p)
    check_reply(r, 451, "4.7.1")
    assert sink.messages == []
    check_reply(c.cmd("NOOP"), 250)


@pytest.mark.parametrize("stage", ["M", "R"])
def test_replycode_at_envelope_stages(postern, sink, tmp_path, raw_milter, stage):
    m = raw_milter({stage: replycode(b"550-5.1.1 no\r\n550 5.1.1 such user\r\n250 2.1.5 ok")})
    p = start(postern, sink, tmp_path, m, on_error="accept")
    c, r = send_one(p)
    check_reply(r, 550)
    assert sink.messages == []
    check_reply(c.cmd("NOOP"), 250)


# --- lifecycle -------------------------------------------------------------

def close_after(answer):
    def handler(conn, data):
        if answer:
            conn.sendall(answer)
        return CLOSE
    return handler


LIFECYCLE = {
    # stage letter: handler
    "close-at-mail": ("M", CLOSE),
    "close-at-header": ("L", CLOSE),
    "close-at-body": ("B", CLOSE),
    "close-at-eom": ("E", CLOSE),
    "half-eom-then-close": ("E", close_after(header_reply("h", b"X-Half", b"1") + packet("b", b"new\r\n"))),
    "stall-at-rcpt": ("R", STALL),
    "stall-at-eom": ("E", STALL),
    "slow-loris-eom": ("E", trickle(header_reply("h", b"X-Slow", b"1") + ACCEPT, pause=0.3)),
    "slow-loris-data": ("T", trickle(C + C, pause=0.5)),
    "half-packet-then-stall": ("E", lambda conn, data: (conn.sendall(ACCEPT[:3]), STALL)[1]),
}


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
@pytest.mark.parametrize("case", list(LIFECYCLE))
def test_milter_failing_mid_session_applies_on_error_once(postern, sink, tmp_path, raw_milter, case, on_error):
    stage, handler = LIFECYCLE[case]
    m = raw_milter({stage: handler})
    p = start(postern, sink, tmp_path, m, on_error=on_error, command_timeout=1, eom_timeout=1)
    t0 = time.monotonic()
    c, r = send_one(p)
    assert time.monotonic() - t0 < 20
    on_error_held(r, sink, on_error)
    # the same session: the milter stays failed, on_error holds
    on_error_held(transaction(c), sink, on_error, n=2)
    c.close()
    # a new session gets a new milter connection, and a sane milter works again
    m.replies = {"E": header_reply("h", b"X-Again", b"yes") + ACCEPT}
    before = len(sink.messages)
    c2, r = send_one(p)
    check_reply(r, 250)
    assert len(sink.messages) == before + 1
    assert (b"X-Again", b"yes") in fields(head_and_body(sink.messages[-1])[0])


def test_milter_that_stops_reading_times_out(postern, sink, tmp_path, raw_milter):
    # Only unanswered commands after connect (no HELO, MAIL, RCPT, DATA, end
    # of header; SMFIP_NR_HDR | SMFIP_NR_BODY): postern writes the message
    # without waiting, the milter never reads, the writes block.
    steps = 0x2 | 0x4 | 0x8 | 0x200 | 0x40 | 0x80 | 0x80000
    m = raw_milter({"C": lambda conn, data: (conn.sendall(C), STALL)[1]}, negotiation=optneg(steps=steps))
    p = start(postern, sink, tmp_path, m, command_timeout=1, eom_timeout=1,
              limits={"message_size": 16 * 1024 * 1024})
    big = MESSAGE + b"".join(b"%08d " % i + b"z" * 900 + b"\r\n" for i in range(8000))
    t0 = time.monotonic()
    c = SmtpClient(p.port, timeout=60)
    c.ehlo()
    r = transaction(c, big)
    check_reply(r, 451, "4.7.1")
    assert time.monotonic() - t0 < 40
    assert sink.messages == []
    assert p.wait_for_log(event="milter-error") is not None
    assert_healthy(p, sink, 0)
