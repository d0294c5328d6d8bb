"""Lua rule verdicts and changes, end to end: a real client through postern
to a recording aiosmtpd MTA, with the rules in tests/e2e/rules/policy.lua."""
import os
import pathlib
import re

from harness import SmtpClient, check_reply

RULES = pathlib.Path(__file__).parent / "rules" / "policy.lua"


def start(postern, sink, tmp_path):
    qdir = tmp_path / "quarantine"
    p = postern.start(upstream=sink.address, sets={
        "lua.scripts": f'["{RULES}"]',
        "quarantine.dir": f'"{qdir}"',
        "scores.add_header": 5,
    })
    return p, qdir


def message(case, subject="hello"):
    return (f"From: a@example.org\r\nTo: b@example.com\r\nSubject: {subject}\r\n"
            f"X-Test-Case: {case}\r\nX-Remove-Me: yes\r\n\r\nbody line\r\n").encode()


def send(p, case, rcpts=("b@example.com",)):
    c = SmtpClient(p.port)
    c.ehlo()
    return c, c.send_message("a@example.org", list(rcpts), message(case))


def test_rcpt_reject_refuses_that_recipient_only(postern, sink, tmp_path):
    p, _ = start(postern, sink, tmp_path)
    c = SmtpClient(p.port)
    c.ehlo()
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
    check_reply(c.cmd("RCPT TO:<blocked@example.com>"), 550, "5.7.1")
    check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
    check_reply(c.cmd("DATA"), 354)
    c.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
    check_reply(c.read_reply(), 250)
    assert [m.rcpt_tos for m in sink.messages] == [["b@example.com"]]
    # the MTA never heard of the refused recipient
    assert "blocked@example.com" not in str(sink.commands("RCPT"))


def test_eom_reject_and_tempfail_reach_the_client_and_nothing_is_relayed(postern, sink, tmp_path):
    p, _ = start(postern, sink, tmp_path)
    _, r = send(p, "reject")
    check_reply(r, 554, "5.7.1")
    assert "content refused" in str(r)
    _, r = send(p, "tempfail")
    check_reply(r, 451, "4.7.1")
    assert sink.messages == []


def test_discard_answers_250_and_relays_nothing(postern, sink, tmp_path):
    p, _ = start(postern, sink, tmp_path)
    _, r = send(p, "discard")
    check_reply(r, 250)
    assert sink.messages == []
    assert p.wait_for_log(event="message").get("result") == "discarded"


def test_quarantine_writes_the_message_with_its_envelope(postern, sink, tmp_path):
    p, qdir = start(postern, sink, tmp_path)
    _, r = send(p, "quarantine")
    check_reply(r, 250)
    assert "quarantined" in str(r)
    assert sink.messages == []
    files = list((qdir / "new").iterdir())
    assert len(files) == 1
    text = re.sub(r"\n[ \t]+", " ", files[0].read_text())   # unfolded: postern folds what it writes
    assert "X-Postern-Quarantine:" in text and "reason=test case" in text
    assert "X-Postern-Envelope-To: <b@example.com>" in text
    assert "body line" in text
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"


def test_header_changes_subject_tag_and_score_header_are_applied(postern, sink, tmp_path):
    p, _ = start(postern, sink, tmp_path)
    _, r = send(p, "tag")
    check_reply(r, 250)
    [m] = sink.messages
    body = m.body.decode()
    assert "Subject: [SPAM] hello\r\n" in body
    assert "X-Postern-Test: tagged\r\n" in body
    assert "X-Remove-Me" not in body
    assert "X-Spam-Status: Yes, score=6.00 symbols=TEST_SPAMMY" in body
    assert body.endswith("\r\n\r\nbody line\r\n")
    line = p.wait_for_log(event="message")
    assert "TEST_SPAMMY" in line.get("symbols")


def test_redirect_replaces_the_recipients_upstream(postern, sink, tmp_path):
    p, _ = start(postern, sink, tmp_path)
    _, r = send(p, "redirect", rcpts=("b@example.com", "c@example.com"))
    check_reply(r, 250)
    assert [m.rcpt_tos for m in sink.messages] == [["archive@example.net"]]


def test_added_and_removed_recipients_and_a_new_sender_reach_the_mta(postern, sink, tmp_path):
    p, _ = start(postern, sink, tmp_path)
    _, r = send(p, "envelope", rcpts=("b@example.com", "c@example.com"))
    check_reply(r, 250)
    [m] = sink.messages
    assert m.mail_from == "bounces@example.org"
    assert sorted(m.rcpt_tos) == ["b@example.com", "copy@example.net"]


def test_a_script_that_does_not_compile_stops_start_with_file_and_line(postern, sink, tmp_path):
    bad = tmp_path / "bad.lua"
    bad.write_text("postern.rule{ name = 'X', stage = 'eom', fn = function(ctx)\n  return (\nend }\n")
    p = postern.start(upstream=sink.address, sets={"lua.scripts": f'["{bad}"]'}, wait=False)
    p.proc.wait(timeout=10)
    assert p.proc.returncode != 0
    assert "bad.lua:" in p.log_tail()
    p.stopped = True
