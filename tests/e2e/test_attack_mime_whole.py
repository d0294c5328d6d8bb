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
import pathlib

import pytest

from harness import ASAN, SmtpClient, check_reply

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
