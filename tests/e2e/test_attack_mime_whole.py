"""Attachments hidden past lua.body_scan_limit, end to end: a real client
through postern running the shipped 60_attachments.lua, to an aiosmtpd MTA.

limits.message_size takes 50 MB while ctx.body reads text from the first
body_scan_limit octets (10 MiB). Each message here puts 11 MiB of harmless
content (a text part, a base64 attachment) before an executable, or cuts the
executable's part header at the limit; a mail reader shows the recipient the
.exe, so each must be refused 554 5.7.1 and never relayed, with the spool in
memory and in its temp file. A probe rule checks the second value of
ctx.body:text_parts(): false when text was left out (past the text budget,
past text_parts_max), true when the text was read whole.
"""
import base64
import io
import pathlib
import tarfile
import time

import pytest

from harness import ASAN, SmtpClient, check_reply, data_payload, free_port, wait_until
from prometheus import scrape

ROOT = pathlib.Path(__file__).resolve().parents[2]
ATTACHMENTS = ROOT / "scripts" / "default" / "60_attachments.lua"
LIMIT = 10 * 1024 * 1024  # lua.body_scan_limit's default
PAD = 11 * 1024 * 1024

# Rejects messages with an X-Probe field, saying what text_parts() returned:
# whether it says complete, how many parts, and whether "buy now" was seen.
PROBE = """
postern.rule{ name = "TEXT_PROBE", stage = "eom", on_error = "tempfail", fn = function(ctx)
  if not ctx.headers:first("X-Probe") then return end
  local parts, complete = ctx.body:text_parts()
  local seen = false
  for _, p in ipairs(parts) do seen = seen or p.text:find("buy now", 1, true) ~= nil end
  return postern.reject(550, "5.7.1", string.format("probe complete=%s parts=%d buy=%s",
                        tostring(complete), #parts, tostring(seen)))
end }
"""

EXE = "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
EXE_PART = f"Content-Disposition: attachment; filename=setup.exe\nContent-Transfer-Encoding: base64\n\n{EXE}"
TEXT = "Content-Type: text/plain\n\nPlease find the invoice attached."
HEAD = "From: a@example.org\nTo: bob@example.com\nSubject: invoice\nMessage-ID: <m@example.org>\n"


TAIL = ("--XYZ\r\nContent-Disposition: attachment; filename=setup.exe\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n" + EXE + "\r\n--XYZ--\r\n").encode()


def filler(octets):
    """At least `octets` of base64-looking lines (LF ends)."""
    line = "Q" * 76 + "\n"
    return line * (octets // len(line) + 1)


def multipart(parts, boundary="XYZ", head=""):
    text = HEAD + head + f'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{boundary}"\n\n'
    for part in parts:
        text += f"--{boundary}\n{part}\n"
    text += f"--{boundary}--\n"
    return text.replace("\n", "\r\n").encode("latin-1")


def big_pdf():
    return "Content-Type: application/pdf; name=report.pdf\nContent-Transfer-Encoding: base64\n\n" + filler(PAD)


# Each puts the executable where a read of the first 10 MiB does not reach.
PAST_LIMIT = {
    "after-11mib-text-part": lambda: multipart(["Content-Type: text/plain\n\n" + filler(PAD), EXE_PART]),
    "after-11mib-base64-attachment": lambda: multipart([TEXT, big_pdf(), EXE_PART]),
    "nested-multipart-past-limit": lambda: multipart([
        big_pdf(),
        'Content-Type: multipart/alternative; boundary="in"\n\n--in\n' + TEXT + "\n--in\n"
        'Content-Type: multipart/mixed; boundary="in2"\n\n--in2\n' + EXE_PART + "\n--in2--\n--in--"]),
    "base64-rfc822-past-limit": lambda: multipart([
        big_pdf(),
        "Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n" + base64.encodebytes(
            b"Subject: fwd\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n--in\r\n" +
            EXE_PART.replace("\n", "\r\n").encode() + b"\r\n--in--\r\n").decode()]),
    "quoted-printable-rfc822-past-limit": lambda: multipart([
        big_pdf(),
        "Content-Type: message/rfc822\nContent-Transfer-Encoding: quoted-printable\n\n"
        "Subject: fwd\nContent-Disposition: attachment; filename=3Dsetup.e=\nxe\n\nMZ"]),
    "plain-rfc822-past-limit": lambda: multipart([
        big_pdf(),
        "Content-Type: message/rfc822\n\nSubject: fwd\nContent-Type: multipart/mixed; boundary=in\n\n--in\n" +
        EXE_PART + "\n--in--"]),
}


def straddling(cut):
    """A message whose last part names setup.exe, its Content-Disposition
    line placed so that octet LIMIT falls `cut` octets into the line
    (negative: that many before it)."""
    head = multipart([])[:-len(b"--XYZ--\r\n")] + b"--XYZ\r\nContent-Type: text/plain\r\n\r\n"
    line_at = len("--XYZ\r\n")  # the Content-Disposition line's offset in TAIL
    pad = LIMIT - cut - line_at - len(head) - len(b"\r\n")
    message = head + (b"Q" * 76 + b"\r\n") * (pad // 78) + b"Q" * (pad % 78) + b"\r\n" + TAIL
    assert message.index(b"Content-Disposition", len(head)) + cut == LIMIT
    return message


def straddle_cases():
    # The limit before the line, at its start, in "Content-", in "filename=", in ".exe", at its CRLF.
    out = {f"line-at-limit{cut:+d}": (lambda cut=cut: straddling(cut)) for cut in (-1, 0, 1, 20, 42, 49, 50, 51)}
    # The whole message ends at LIMIT - 1, LIMIT, LIMIT + 1.
    out.update({f"message-of-limit{delta:+d}-octets": (lambda delta=delta: exact(LIMIT + delta))
                for delta in (-1, 0, 1)})
    return out


def exact(size):
    """A message of exactly `size` octets ending with the exe part."""
    tail = TAIL
    head = multipart([])[:-len(b"--XYZ--\r\n")] + b"--XYZ\r\nContent-Type: text/plain\r\n\r\n"
    pad = size - len(head) - len(tail) - 2
    message = head + (b"Q" * 76 + b"\r\n") * (pad // 78) + b"Q" * (pad % 78) + b"\r\n" + tail
    assert len(message) == size
    return message


STRADDLE = straddle_cases()


@pytest.fixture(params=["memory", "file"])
def proxy(request, postern, sink, tmp_path):
    """postern with the shipped attachments rule and the probe; the spool in
    memory (64 MiB) or in its temp file past 64 KiB."""
    probe = tmp_path / "probe.lua"
    probe.write_text(PROBE)
    spool = 64 * 1024 * 1024 if request.param == "memory" else 65536
    return postern.start(upstream=sink.address,
                         sets={"lua.scripts": f'["{ATTACHMENTS}", "{probe}"]', "data.spool_memory": spool})


def send(p, content):
    with SmtpClient(p.port, timeout=60 if ASAN else 30) as c:
        c.ehlo()
        return c.send_message("a@example.org", ["bob@example.com"], content)


def refused(p, sink, content, what):
    r = check_reply(send(p, content), 554, "5.7.1", what=what)
    assert "Executable attachments are not accepted (exe)" in r.text, r
    assert p.wait_for_log("message", result="rejected")
    assert not sink.messages


@pytest.mark.parametrize("case", sorted(PAST_LIMIT))
def test_executable_past_the_scan_limit_is_refused(proxy, sink, case):
    refused(proxy, sink, PAST_LIMIT[case](), case)


@pytest.mark.parametrize("case", sorted(STRADDLE))
def test_executable_at_the_scan_limit_is_refused(proxy, sink, case):
    refused(proxy, sink, STRADDLE[case](), case)


def test_honest_large_message_passes(proxy, sink):
    """12 MiB of PDF and a text part after it: relayed, not taken for hiding anything."""
    content = multipart([big_pdf(), TEXT, 'Content-Type: application/pdf; name="--XYZ.pdf"\n\n%PDF'])
    check_reply(send(proxy, content), 250)
    assert len(sink.wait_messages(1)) == 1


@pytest.mark.parametrize("case,expected", [
    # Read whole: a small message, and text after an 11 MiB attachment.
    ("small", "complete=true parts=1 buy=true"),
    ("text-after-big-attachment", "complete=true parts=1 buy=true"),
    # Left out: an 11 MiB text part before the words, and 40 filler parts.
    ("words-after-11mib-text", "complete=false parts=1 buy=false"),  # the words' part past the budget
    ("words-after-40-filler-parts", "complete=false parts=32 buy=false"),
])
def test_text_parts_say_whether_they_are_whole(proxy, sink, case, expected):
    words = "Content-Type: text/plain\n\nbuy now"
    content = {
        "small": lambda: multipart([words], head="X-Probe: 1\n"),
        "text-after-big-attachment": lambda: multipart([big_pdf(), words], head="X-Probe: 1\n"),
        "words-after-11mib-text": lambda: multipart(["Content-Type: text/plain\n\n" + filler(PAD), words],
                                                    head="X-Probe: 1\n"),
        "words-after-40-filler-parts": lambda: multipart(["Content-Type: text/plain\n\nhello"] * 40 + [words],
                                                         head="X-Probe: 1\n"),
    }[case]()
    r = check_reply(send(proxy, content), 550, "5.7.1", what=case)
    assert f"probe {expected}" in r.text, r
    assert not sink.messages


# While ctx.body:attachments() reads a large message's structure, the rule
# waits as for a DNS answer and its I/O thread serves other sessions: a
# connect-stage rule of another session runs meanwhile and leaves a mark in
# the store, which the waiting rule finds when attachments() returns.
OVERLAP = """
postern.rule{ name = "OTHER_SESSION_MARK", stage = "connect", on_error = "continue", fn = function(ctx)
  postern.store.set("other-session", "1")
end }
postern.rule{ name = "WALK_PROBE", stage = "eom", on_error = "tempfail", fn = function(ctx)
  if not ctx.headers:first("X-Walk-Probe") then return end
  postern.store.del("other-session")
  postern.log("info", "walk-start")
  local list = ctx.body:attachments()
  local other = postern.store.get("other-session") ~= nil
  return postern.reject(550, "5.7.1", string.format("probe other=%s attachments=%d exe=%s", tostring(other),
                        #list, tostring(#list > 0 and list[#list].filename == "setup.exe")))
end }
postern.rule{ name = "NO_YIELD_PROBE", stage = "eom", on_error = "tempfail", fn = function(ctx)
  if not ctx.headers:first("X-No-Yield-Probe") then return end
  local n, whole
  -- A gsub callback cannot yield: the structure is read right there.
  ("x"):gsub("x", function()
    n = #ctx.body:attachments()
    local _, complete = ctx.body:text_parts()
    whole = complete
  end)
  return postern.reject(550, "5.7.1", string.format("probe attachments=%d text_whole=%s", n, tostring(whole)))
end }
"""


def slow_to_walk(octets):
    """A message whose structure takes long to read for its size: 16 nested
    multiparts and then lines that each could be a delimiter ("--"), with an
    executable after them (about half a second for 48 MiB in a Release build)."""
    b = "b" * 60
    text = HEAD + "X-Walk-Probe: 1\nMIME-Version: 1.0\n" + f'Content-Type: multipart/mixed; boundary="{b}0"\n\n'
    for depth in range(1, 16):
        text += f'--{b}{depth - 1}\nContent-Type: multipart/mixed; boundary="{b}{depth}"\n\n'
    text += f"--{b}15\nContent-Type: text/plain\n\n"
    head = text.replace("\n", "\r\n").encode()
    tail = (f"--{b}15\r\nContent-Disposition: attachment; filename=setup.exe\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{EXE}\r\n--{b}15--\r\n").encode()
    return head + b"--\r\n" * ((octets - len(head) - len(tail)) // 4) + tail


@pytest.mark.parametrize("spool", ["memory", "file"])
def test_other_sessions_are_served_while_a_large_structure_is_read(postern, sink, tmp_path, spool):
    rules = tmp_path / "overlap.lua"
    rules.write_text(OVERLAP)
    p = postern.start(upstream=sink.address, sets={
        "lua.scripts": f'["{rules}"]', "server.threads": 1,
        "data.spool_memory": 64 * 1024 * 1024 if spool == "memory" else 65536})
    content = slow_to_walk(48 * 1024 * 1024)
    with SmtpClient(p.port, timeout=120 if ASAN else 60) as a:
        a.ehlo()
        a.expect("MAIL FROM:<a@example.org>", 250)
        a.expect("RCPT TO:<bob@example.com>", 250)
        a.expect("DATA", 354)
        a.send(data_payload(content))
        deadline = time.monotonic() + (120 if ASAN else 60)
        while not any("walk-start" in e.get("line", "") for e in p.events("lua")):
            assert time.monotonic() < deadline, "the probe rule never started\n" + p.log_tail()
            time.sleep(0.005)
        with SmtpClient(p.port, timeout=120 if ASAN else 60) as b:  # its greeting follows its connect rule
            b.expect("QUIT", 221)
        r = check_reply(a.read_reply(), 550, "5.7.1")
    assert "probe other=true attachments=1 exe=true" in r.text, r
    assert not sink.messages


def test_a_large_structure_is_read_where_a_rule_cannot_wait(postern, sink, tmp_path):
    """Inside a callback Lua cannot yield from (string.gsub's), attachments()
    and text_parts() of a message over 1 MiB read the structure on the spot."""
    rules = tmp_path / "overlap.lua"
    rules.write_text(OVERLAP)
    p = postern.start(upstream=sink.address, sets={"lua.scripts": f'["{rules}"]'})
    pdf = "Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n" + filler(2 * 1024 * 1024)
    content = multipart([TEXT, pdf, EXE_PART],
                        head="X-No-Yield-Probe: 1\n")
    r = check_reply(send(p, content), 550, "5.7.1")
    assert "probe attachments=1 text_whole=true" in r.text, r
    assert not sink.messages


TWO_READERS = """
for _, name in ipairs({ "FIRST_READER", "SECOND_READER" }) do
  postern.rule{ name = name, stage = "eom", on_error = "tempfail", fn = function(ctx)
    local _, complete = ctx.body:text_parts()
    ctx:add_header("X-" .. name, string.format("%d attachments, text whole: %s", #ctx.body:attachments(),
                   tostring(complete)))
  end }
end
"""


@pytest.mark.parametrize("size,where", [(3 * 1024 * 1024, "worker"), (10 * 1024, "io_thread")])
def test_a_message_structure_is_read_once_for_all_rules(postern, sink, tmp_path, size, where):
    """Two rules, each calling text_parts() and attachments(): the message's
    structure is read once (postern_mime_structure_reads_total), on a worker
    thread for a message over 1 MiB, and both rules see the same lists."""
    rules = tmp_path / "readers.lua"
    rules.write_text(TWO_READERS)
    metrics_port = free_port()
    p = postern.start(upstream=sink.address, sets={"lua.scripts": f'["{rules}"]',
                                                   "metrics.address": f'"127.0.0.1:{metrics_port}"'})
    pdf = "Content-Type: application/pdf; name=a.pdf\nContent-Transfer-Encoding: base64\n\n" + filler(size)
    check_reply(send(p, multipart([TEXT, pdf])), 250)
    msg = sink.wait_messages(1)[0]
    assert msg.content.count(b"1 attachments, text whole: true") == 2, msg.content[:2000]
    exp = scrape(metrics_port)
    assert exp.value("postern_mime_structure_reads_total", where=where) == 1
    assert exp.value("postern_mime_structure_reads_total", where={"worker": "io_thread", "io_thread": "worker"}[where]) == 0


def tgz(entries):
    """A gzip-compressed tar archive of (name, octets) files, by Python's tarfile."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("expands,where,verdict", [
    (512 * 1024, "io_thread", 250),  # within what is expanded where the rule runs
    (4 << 20, "worker", 250),        # past it: the small message is read again on a worker
    (80 << 20, "worker", 554),       # past the 64 MiB a small message's files may expand to
])
def test_a_small_message_whose_files_expand_far_is_read_on_a_worker(postern, sink, tmp_path, expands, where, verdict):
    """A message under 1 MiB whose compressed files expand past 1 MiB has its
    structure read again on a worker thread, with the whole decompression
    budget, rather than hold the I/O thread for the expansion; past that
    budget it is a structure that cannot be read whole."""
    rules = tmp_path / "readers.lua"
    rules.write_text(TWO_READERS)
    scripts = f'["{rules}"]' if verdict == 250 else f'["{ATTACHMENTS}"]'
    metrics_port = free_port()
    p = postern.start(upstream=sink.address, sets={"lua.scripts": scripts, "metrics.address": f'"127.0.0.1:{metrics_port}"'})
    archive = tgz([("logs/big.log", bytes(expands)), ("logs/readme.txt", b"hello\n")])
    assert len(archive) < 256 * 1024
    part = ('Content-Type: application/gzip; name="logs.tgz"\nContent-Transfer-Encoding: base64\n\n' +
            base64.encodebytes(archive).decode())
    r = check_reply(send(p, multipart([TEXT, part])), verdict)
    if verdict == 250:
        msg = sink.wait_messages(1)[0]
        assert msg.content.count(b"3 attachments, text whole: true") == 2, msg.content[:2000]
    else:
        assert "too complex to check" in r.text, r
    exp = scrape(metrics_port)
    # Read once where the rule runs, and past kInlineDecompressed once more on a worker.
    assert exp.value("postern_mime_structure_reads_total", where="io_thread") == 1
    assert exp.value("postern_mime_structure_reads_total", where="worker") == (1 if where == "worker" else 0)


def test_a_rule_stops_waiting_for_a_structure_read_past_structure_timeout(postern, sink, tmp_path):
    """A large message's structure read on a worker that takes longer than
    lua.structure_timeout (here 0.05 s against about a quarter of a second for
    24 MiB slow to walk): the rule stops waiting and fails (not an error
    its pcall could take for a message too complex, which it refuses 554),
    so the shipped rule's on_error defers the message (451 4.7.0) rather
    than hold the session; the wait is counted, and postern serves the next
    message."""
    metrics_port = free_port()
    p = postern.start(upstream=sink.address, sets={"lua.scripts": f'["{ATTACHMENTS}"]', "lua.structure_timeout": 0.05,
                                                   "metrics.address": f'"127.0.0.1:{metrics_port}"'})
    r = check_reply(send(p, slow_to_walk(24 * 1024 * 1024)), 451, "4.7.0")
    wait_until(lambda: any("lua-rule-error rule=EXECUTABLE_ATTACHMENT" in e.get("line", "") and
                           "not read within lua.structure_timeout (0.05 s)" in e.get("line", "")
                           for e in p.events("lua")), 10, message="the rule's error in the log")
    assert not sink.messages
    exp = scrape(metrics_port)
    assert exp.value("postern_mime_structure_late_total") == 1
    assert exp.value("postern_mime_structure_reads_total", where="worker") == 0
    check_reply(send(p, multipart([TEXT])), 250)
    assert len(sink.wait_messages(1)) == 1
