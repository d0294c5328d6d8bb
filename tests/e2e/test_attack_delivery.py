"""Verdict delivery with several recipients under attack, end to end: a real
client through postern to a scriptable aiosmtpd MTA (or a Maildir), with the
rules in tests/e2e/rules/delivery.lua.

The invariants (DESIGN.md): every message the client was told 250 for is
relayed or quarantined exactly once, with the envelope it goes with; a
refused one is nowhere; the quarantine's record of the envelope is postern's
own and names exactly who the message was for after the rules' changes; a
quarantine or Maildir that cannot be written is a 4xx, never a 250."""
import json
import pathlib
import shutil

import re

import pytest

from harness import case_message, check_reply, data_payload, greeted_client, run_cli, send_envelope, start_with_rules

RULES = pathlib.Path(__file__).parent / "rules" / "delivery.lua"
RCPTS = ["r1@example.com", "r2@example.com"]


def start(postern, sink, qdir, **sets):
    return start_with_rules(postern, sink, RULES, qdir, **sets)


message = case_message
client = greeted_client


def quarantined(qdir):
    """The quarantine's messages: (header section as lines, whole text)."""
    new = qdir / "new"
    out = []
    for f in sorted(new.iterdir()) if new.exists() else []:
        text = f.read_bytes().decode()
        out.append((text.split("\n\n", 1)[0].split("\n"), text))
    return out


def envelope_of(head):
    """The quarantine record's envelope: (from, [to...]), every field counted."""
    froms = [l.split(": ", 1)[1] for l in head if l.startswith("X-Postern-Envelope-From:")]
    tos = [l.split(": ", 1)[1].strip("<>") for l in head if l.startswith("X-Postern-Envelope-To:")]
    assert len(froms) == 1, head
    return froms[0].strip("<>"), tos


# ---- 1. the quarantine records the envelope the message goes with ----------

@pytest.mark.parametrize("case,sender,rcpts", [
    ("quarantine", "a@example.org", RCPTS),
    ("add quarantine", "a@example.org", RCPTS + ["bcc@example.net"]),
    ("remove quarantine", "a@example.org", ["r1@example.com"]),
    ("redirect quarantine", "a@example.org", ["archive@example.net", "archive2@example.net"]),
    ("sender quarantine", "bounces@example.org", RCPTS),
    ("add remove sender quarantine", "bounces@example.org", ["r1@example.com", "bcc@example.net"]),
])
def test_quarantine_records_the_envelope_after_the_rules_changes(postern, make_sink, tmp_path, case, sender, rcpts):
    sink = make_sink()
    qdir = tmp_path / "q"
    p = start(postern, sink, qdir)
    c = client(p)
    check_reply(c.send_message("a@example.org", RCPTS, message(case)), 250)
    assert p.wait_for_log(event="message").get("result") == "quarantined"
    (head, _), = quarantined(qdir)
    assert envelope_of(head) == (sender, rcpts)
    assert sink.took_no_content()


def test_quarantine_at_rcpt_records_every_accepted_recipient_and_no_refused_one(postern, make_sink, tmp_path):
    sink = make_sink()
    sink.on("RCPT", "550 5.1.1 unknown user", match="gone@example.com")
    sink.on("RCPT", "452 4.2.2 over quota", match="full@example.com")
    qdir = tmp_path / "q"
    p = start(postern, sink, qdir)
    c = client(p)
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
    for rcpt, code in [("r1@example.com", 250), ("gone@example.com", 550), ("hold@example.com", 250),
                       ("blocked@example.com", 550), ("full@example.com", 452), ("r2@example.com", 250)]:
        check_reply(c.cmd(f"RCPT TO:<{rcpt}>"), code)
    check_reply(c.cmd("DATA"), 354)
    c.send(data_payload(message("add")))
    check_reply(c.read_reply(), 250)
    (head, _), = quarantined(qdir)
    assert envelope_of(head) == ("a@example.org",
                                 ["r1@example.com", "hold@example.com", "r2@example.com", "bcc@example.net"])
    assert sink.took_no_content()


# A client's own X-Postern-* fields in the content would stand beside
# postern's in the quarantine copy: a release script reading every
# X-Postern-Envelope-To would deliver to whomever the client named.
@pytest.mark.parametrize("forged", [
    "X-Postern-Envelope-To: <ceo@example.com>\r\n",
    "x-postern-envelope-to: <ceo@example.com>\r\n",
    "X-Postern-Envelope-To:\r\n <ceo@example.com>\r\n",
    "X-Postern-Envelope-From: <ceo@example.com>\r\nX-Postern-Quarantine: session=forged; reason=none\r\n",
])
def test_forged_quarantine_fields_in_the_content_do_not_reach_the_record(postern, make_sink, tmp_path, forged):
    sink = make_sink()
    qdir = tmp_path / "q"
    p = start(postern, sink, qdir)
    c = client(p)
    check_reply(c.send_message("a@example.org", RCPTS, message("quarantine", extra=forged)), 250)
    (head, text), = quarantined(qdir)
    assert envelope_of(head) == ("a@example.org", RCPTS)
    assert "ceo@example.com" not in text
    assert sum(1 for l in head if l.lower().startswith("x-postern-quarantine:")) == 1
    assert sink.took_no_content()


# ---- 2. verdicts at RCPT act on the whole message, and say so ---------------

@pytest.mark.parametrize("trigger,verdict,result", [("trap", "discard", "discarded"),
                                                    ("hold", "quarantine", "quarantined")])
def test_verdict_at_rcpt_holds_the_whole_message_and_logs_who_caused_it(postern, make_sink, tmp_path,
                                                                       trigger, verdict, result):
    sink = make_sink()
    qdir = tmp_path / "q"
    p = start(postern, sink, qdir)
    c = client(p)
    rcpts = ["r1@example.com", f"{trigger}@example.com", "r2@example.com"]
    check_reply(c.send_message("a@example.org", rcpts, message()), 250)
    line = p.wait_for_log(event="rcpt-verdict")
    assert line.get("to") == f"<{trigger}@example.com>"
    assert line.get("verdict") == verdict
    assert line.get("applies") == "whole message"
    msg = p.wait_for_log(event="message")
    assert msg.get("result") == result and msg.get("verdict") == verdict
    assert msg.get("to") == ",".join(f"<{r}>" for r in rcpts)
    assert sink.took_no_content()
    assert len(quarantined(qdir)) == (1 if verdict == "quarantine" else 0)


# A discard or quarantine at RCPT was decided first: a later accept (a
# whitelist rule) skips the rules after it but does not undo it, nor does a
# later discard or quarantine replace it; a later reject or tempfail refuses
# the message outright. The same in the proxy and in `postern check`.
@pytest.mark.parametrize("trigger,held", [("trap", "discard"), ("hold", "quarantine")])
@pytest.mark.parametrize("case,result", [("eom-accept", None), ("eom-discard", None), ("eom-quarantine", None),
                                         ("eom-reject", 554), ("eom-tempfail", 451)])
def test_end_of_data_after_a_verdict_at_rcpt(postern, make_sink, tmp_path, trigger, held, case, result):
    sink = make_sink()
    qdir = tmp_path / "q"
    p = start(postern, sink, qdir)
    c = client(p)
    r = c.send_message("a@example.org", ["r1@example.com", f"{trigger}@example.com"], message(case))
    msg = p.wait_for_log(event="message")
    assert sink.took_no_content()
    if result is None:  # the RCPT's verdict stands
        check_reply(r, 250)
        assert msg.get("verdict") == held, msg.raw
        records = quarantined(qdir)
        assert len(records) == (1 if held == "quarantine" else 0)
        if records:
            assert "reason=held\n recipient" in records[0][1]  # the RCPT rule's reason, folded
    else:
        check_reply(r, result)
        assert quarantined(qdir) == []
    # `postern check` with the same rules decides the same
    eml, config = tmp_path / "m.eml", tmp_path / "check.toml"
    eml.write_bytes(message(case))
    config.write_text(f'[lua]\nscripts = ["{RULES}"]\n')
    r = run_cli(["check", "--config", str(config), "--client-ip", "192.0.2.9", "--helo", "client.example",
                 "--mail-from", "a@example.org", "--rcpt", "r1@example.com", "--rcpt", f"{trigger}@example.com",
                 str(eml)])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verdict"]["action"] == (held if result is None else ("reject" if result == 554 else "tempfail")), out


# The verdict belongs to a recipient the MTA then refused: that recipient is
# not in the transaction, so its verdict holds nothing for the others.
@pytest.mark.parametrize("trigger", ["trap", "hold"])
@pytest.mark.parametrize("mta", ["550 5.1.1 unknown user", "452 4.2.2 over quota"])
def test_verdict_at_rcpt_for_a_recipient_the_mta_refused_holds_nothing(postern, make_sink, tmp_path, trigger, mta):
    sink = make_sink()
    sink.on("RCPT", mta, match=f"{trigger}@example.com")
    qdir = tmp_path / "q"
    p = start(postern, sink, qdir)
    c = client(p)
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
    check_reply(c.cmd("RCPT TO:<r1@example.com>"), 250)
    check_reply(c.cmd(f"RCPT TO:<{trigger}@example.com>"), int(mta[:3]))
    check_reply(c.cmd("RCPT TO:<r2@example.com>"), 250)
    check_reply(c.cmd("DATA"), 354)
    c.send(data_payload(message()))
    check_reply(c.read_reply(), 250)
    assert sink.wait_messages(1)[0].rcpt_tos == RCPTS
    assert p.wait_for_log(event="message").get("result") == "relayed"
    assert quarantined(qdir) == [] and not p.events("rcpt-verdict")


# ---- 3. a recipient the client names twice ----------------------------------

# Every spelling an MTA reads as the same mailbox (RFC 5321 §2.4, §4.5.1;
# RFC 5322 §3.2.4: quotes and a quoted-pair's backslash are not the value).
SAME_MAILBOX = [
    ("r1@example.com", "r1@example.com"),
    ("r1@example.com", "r1@EXAMPLE.com"),
    ("r1@example.com", '"r1"@example.com'),
    ('"r1"@example.com', "r1@example.com"),
    ("r1@example.com", '"r\\1"@Example.Com'),
    ("Postmaster@example.com", "postmaster@example.com"),
    ("postmaster@example.com", '"POSTMASTER"@example.com'),
    ("r1@[192.0.2.7]", "r1@[IPv6:::ffff:192.0.2.7]"),
]


def mailbox_value(addr):
    """`addr` as the sink (aiosmtpd) reports it: a quoted local part that can
    be a dot-atom without its quotes and quoted-pairs."""
    local, _, domain = addr.rpartition("@")
    if local.startswith('"') and local.endswith('"'):
        value = re.sub(r"\\(.)", r"\1", local[1:-1])
        if re.fullmatch(r"[\w!#$%&'*+/=?^`{|}~-]+(\.[\w!#$%&'*+/=?^`{|}~-]+)*", value, re.ASCII):
            local = value
    return f"{local}@{domain}"


@pytest.mark.parametrize("first,second", SAME_MAILBOX)
@pytest.mark.parametrize("pipelined", [False, True], ids=["lockstep", "pipelined"])
@pytest.mark.parametrize("bdat", [False, True], ids=["data", "bdat"])
def test_recipient_named_twice_by_the_client_gets_the_message_once(postern, make_sink, tmp_path,
                                                                   first, second, pipelined, bdat):
    sink = make_sink(chunking=bdat)
    p = start(postern, sink, tmp_path / "q")
    c = client(p)
    content = message()
    rcpts = [first, "r2@example.com", second]
    replies = send_envelope(c, "a@example.org", rcpts, content, pipelined, bdat)
    assert [r.code for r in replies] == [250, 250, 250, 250], [str(r) for r in replies]
    if not bdat:
        check_reply(c.read_reply(), 354)
        c.send(data_payload(content))
    check_reply(c.read_reply(), 250)
    msgs = sink.wait_messages(1)
    assert len(msgs) == 1 and msgs[0].rcpt_tos == [mailbox_value(first), "r2@example.com"]
    assert len(sink.commands("RCPT")) == 2
    dup = p.wait_for_log(event="rcpt-duplicate")
    assert dup.get("to") == f"<{second}>"
    assert p.wait_for_log(event="message").get("to") == f"<{first}>,<r2@example.com>"


# Spellings that name different mailboxes: both go to the MTA.
@pytest.mark.parametrize("first,second", [
    ("r1@example.com", "R1@example.com"),           # a local part's case is the receiving host's (§2.4)
    ("abuse@example.com", "Abuse@example.com"),     # only postmaster is case-insensitive by rule
    ("r1@example.com", '"r1 "@example.com'),
    ("r1@[192.0.2.7]", "r1@[192.0.2.8]"),
    ("postmaster@example.com", "postmaster@example.org"),
])
def test_recipients_that_differ_only_in_spelling_an_mta_tells_apart_both_go_on(postern, make_sink, tmp_path,
                                                                               first, second):
    sink = make_sink()
    p = start(postern, sink, tmp_path / "q")
    c = client(p)
    check_reply(c.send_message("a@example.org", [first, second], message()), 250)
    assert sink.wait_messages(1)[0].rcpt_tos == [mailbox_value(first), mailbox_value(second)]
    assert not p.events("rcpt-duplicate")


# An internationalized domain (SMTPUTF8, RFC 6531) in U-labels and in
# A-labels, in any case, composed or decomposed: one host (IDNA2008), the
# message goes to its mailbox once; a look-alike ASCII domain is another.
@pytest.mark.parametrize("second", [
    "r1@xn--bcher-kva.example",
    "r1@XN--BCHER-KVA.EXAMPLE",
    "r1@BÜCHER.example",
    "r1@bu\u0308cher.example",
    '"r1"@bücher.example',
])
def test_recipient_named_again_in_the_other_form_of_its_idn_gets_the_message_once(postern, make_sink, tmp_path, second):
    sink = make_sink(smtputf8=True)
    p = start(postern, sink, tmp_path / "q")
    c = client(p)
    check_reply(c.cmd("MAIL FROM:<a@example.org> SMTPUTF8"), 250)
    check_reply(c.cmd("RCPT TO:<r1@bücher.example>"), 250)
    check_reply(c.cmd("RCPT TO:<r1@bucher.example>"), 250)
    r = check_reply(c.cmd(f"RCPT TO:<{second}>"), 250, "2.1.5")
    assert "duplicate" in r.text, r
    check_reply(c.cmd("DATA"), 354)
    c.send(data_payload(message()))
    check_reply(c.read_reply(), 250)
    assert sink.wait_messages(1)[0].rcpt_tos == ["r1@bücher.example", "r1@bucher.example"]
    assert len(sink.commands("RCPT")) == 2
    # The log writes each octet past ASCII as "?".
    logged = "".join(c if c.isascii() else "?" * len(c.encode()) for c in second)
    assert p.wait_for_log(event="rcpt-duplicate").get("to") == f"<{logged}>"


def test_recipient_named_again_after_the_mta_deferred_it_is_asked_again(postern, make_sink, tmp_path):
    sink = make_sink()
    sink.on("RCPT", "452 4.2.2 over quota", match="r1@example.com", times=1)
    p = start(postern, sink, tmp_path / "q")
    c = client(p)
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
    check_reply(c.cmd("RCPT TO:<r1@example.com>"), 452)
    check_reply(c.cmd("RCPT TO:<r1@example.com>"), 250)
    check_reply(c.cmd("RCPT TO:<r1@example.com>"), 250)
    check_reply(c.cmd("DATA"), 354)
    c.send(data_payload(message()))
    check_reply(c.read_reply(), 250)
    assert sink.wait_messages(1)[0].rcpt_tos == ["r1@example.com"]


def test_recipient_named_twice_is_quarantined_once_in_the_record(postern, make_sink, tmp_path):
    sink = make_sink()
    qdir = tmp_path / "q"
    p = start(postern, sink, qdir)
    c = client(p)
    check_reply(c.send_message("a@example.org", RCPTS + ["r1@example.com"], message("quarantine")), 250)
    (head, _), = quarantined(qdir)
    assert envelope_of(head) == ("a@example.org", RCPTS)


def test_duplicates_do_not_use_up_the_recipient_limit_nor_escape_it(postern, make_sink, tmp_path):
    sink = make_sink()
    p = start(postern, sink, tmp_path / "q", **{"limits.recipients": 2})
    c = client(p)
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
    check_reply(c.cmd("RCPT TO:<r1@example.com>"), 250)
    check_reply(c.cmd("RCPT TO:<r1@example.com>"), 250)
    check_reply(c.cmd("RCPT TO:<r2@example.com>"), 250)
    check_reply(c.cmd("RCPT TO:<r3@example.com>"), 452, "4.5.3")
    check_reply(c.cmd("DATA"), 354)
    c.send(data_payload(message()))
    check_reply(c.read_reply(), 250)
    assert sink.wait_messages(1)[0].rcpt_tos == RCPTS


# ---- 4. a quarantine or Maildir that stops being writable -------------------

def test_quarantine_dir_replaced_mid_run_is_4xx_then_recovers(postern, make_sink, tmp_path):
    sink = make_sink()
    qdir = tmp_path / "q"
    p = start(postern, sink, qdir)
    c = client(p)
    check_reply(c.send_message("a@example.org", RCPTS, message("quarantine")), 250)
    assert len(quarantined(qdir)) == 1
    shutil.rmtree(qdir)   # removed: made anew, the message is written
    check_reply(c.send_message("a@example.org", RCPTS, message("quarantine")), 250)
    assert len(quarantined(qdir)) == 1
    shutil.rmtree(qdir / "new")
    (qdir / "new").write_text("in the way")   # new/ is a file: nothing can be written
    r = c.send_message("a@example.org", RCPTS, message("quarantine"))
    check_reply(r, 451, "4.3.0")
    assert p.wait_for_log(event="maildir-error")
    assert p.wait_for_log(event="message", result="tempfailed")
    assert not any((qdir / "tmp").iterdir())   # nothing half-written left behind
    (qdir / "new").unlink()
    check_reply(c.send_message("a@example.org", RCPTS, message("quarantine")), 250)
    assert len(quarantined(qdir)) == 1
    assert sink.took_no_content()


def maildir_files(root):
    new = root / "new"
    return sorted(new.iterdir()) if new.exists() else []


@pytest.mark.parametrize("sender,rcpt", [
    ('"../../etc"@example.org', '"../x/y"@example.com'),
    ("a@example.org", '"a/b:c"@example.com'),
    ("x" * 64 + "@" + ("d" * 60 + ".") * 3 + "org", "y" * 64 + "@example.com"),
    ("", '"..\\\\"@example.com'),
])
def test_maildir_upstream_file_names_are_postern_s_whatever_the_envelope(postern, tmp_path, sender, rcpt):
    root = tmp_path / "mail"
    p = postern.start(upstream=f"maildir:{root}")
    c = client(p)
    r = c.send_message(sender, [rcpt, "r2@example.com"], message())
    check_reply(r, 250)
    files = maildir_files(root)
    assert len(files) == 1
    assert files[0].parent == root / "new" and "/" not in files[0].name
    assert sorted(p.parent for p in tmp_path.rglob("*") if p.is_file()) == [root / "new"]
    text = files[0].read_text()
    assert text.startswith(f"Return-Path: <{sender}>\n")


def test_maildir_upstream_that_cannot_be_written_is_4xx_never_250(postern, tmp_path):
    root = tmp_path / "mail"
    p = postern.start(upstream=f"maildir:{root}")
    c = client(p)
    check_reply(c.send_message("a@example.org", RCPTS, message()), 250)
    assert len(maildir_files(root)) == 1
    for f in maildir_files(root):
        f.unlink()
    (root / "new").rmdir()
    (root / "new").write_text("in the way")
    r = c.send_message("a@example.org", RCPTS, message())
    check_reply(r, 451, "4.3.0")
    assert p.wait_for_log(event="maildir-error")
    assert not any((root / "tmp").iterdir())
    (root / "new").unlink()
    check_reply(c.send_message("a@example.org", RCPTS, message()), 250)
    assert len(maildir_files(root)) == 1


# ---- 5. pipelined, early data and the MTA's answers at end of data ----------

@pytest.mark.parametrize("mta_takes_trigger", [True, False], ids=["mta-takes-it", "mta-refuses-it"])
@pytest.mark.parametrize("trigger", ["trap", "hold"])
@pytest.mark.parametrize("bdat", [False, True], ids=["data", "bdat"])
def test_rcpt_verdict_right_before_pipelined_data(postern, make_sink, tmp_path, trigger, mta_takes_trigger, bdat):
    sink = make_sink(chunking=bdat)
    if not mta_takes_trigger:
        sink.on("RCPT", "550 5.1.1 unknown user", match=f"{trigger}@example.com")
    qdir = tmp_path / "q"
    p = start(postern, sink, qdir, **{"upstream.early_data": "true"})
    c = client(p)
    content = message()
    payload = (f"BDAT {len(content)} LAST\r\n".encode() + content) if bdat else b"DATA\r\n"
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<r1@example.com>\r\n"
           + f"RCPT TO:<{trigger}@example.com>\r\n".encode() + payload)
    codes = [c.read_reply().code for _ in range(3)]
    assert codes == [250, 250, 250 if mta_takes_trigger else 550]
    if not bdat:
        check_reply(c.read_reply(), 354)
        c.send(data_payload(content))
    check_reply(c.read_reply(), 250)
    if mta_takes_trigger:
        assert sink.took_no_content()
        assert len(quarantined(qdir)) == (1 if trigger == "hold" else 0)
    else:
        assert sink.wait_messages(1)[0].rcpt_tos == ["r1@example.com"]
        assert quarantined(qdir) == []


@pytest.mark.parametrize("final", ["554 5.7.1 refused by the MTA", "451 4.3.0 try again"])
@pytest.mark.parametrize("bdat", [False, True], ids=["data", "bdat"])
def test_mta_refusing_some_recipients_then_the_content_is_never_250(postern, make_sink, tmp_path, final, bdat):
    sink = make_sink(chunking=bdat)
    sink.on("RCPT", "550 5.1.1 unknown user", match="gone@example.com")
    sink.on("DATA_END", final, times=1)
    p = start(postern, sink, tmp_path / "q")
    c = client(p)
    content = message()
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
    check_reply(c.cmd("RCPT TO:<r1@example.com>"), 250)
    check_reply(c.cmd("RCPT TO:<gone@example.com>"), 550)
    check_reply(c.cmd("RCPT TO:<blocked@example.com>"), 550, "5.7.1")
    check_reply(c.cmd("RCPT TO:<r2@example.com>"), 250)
    if bdat:
        c.send(f"BDAT {len(content)} LAST\r\n".encode() + content)
    else:
        check_reply(c.cmd("DATA"), 354)
        c.send(data_payload(content))
    r = c.read_reply()
    assert r.code == int(final[:3]), str(r)
    assert sink.messages == []
    assert p.wait_for_log(event="message").get("result") == ("rejected" if final[0] == "5" else "tempfailed")


def test_every_message_of_a_session_is_delivered_or_quarantined_exactly_once(postern, make_sink, tmp_path):
    sink = make_sink()
    qdir = tmp_path / "q"
    p = start(postern, sink, qdir)
    c = client(p)
    plan = [("none", 250), ("quarantine", 250), ("add", 250), ("redirect quarantine", 250),
            ("redirect", 250), ("none", 250)]
    for i, (case, code) in enumerate(plan):
        body = message(case).replace(b"body line", f"message {i}".encode())
        check_reply(c.send_message("a@example.org", RCPTS + ["r1@example.com"], body), code)
    relayed = [(m.rcpt_tos, m.content.split(b"message ")[1][:1]) for m in sink.wait_messages(4)]
    assert relayed == [(RCPTS, b"0"), (RCPTS + ["bcc@example.net"], b"2"),
                       (["archive@example.net", "archive2@example.net"], b"4"), (RCPTS, b"5")]
    kept = [(envelope_of(head)[1], text.split("message ")[1][:1]) for head, text in quarantined(qdir)]
    assert sorted(kept, key=lambda k: k[1]) == [(RCPTS, "1"),
                                                (["archive@example.net", "archive2@example.net"], "3")]
    assert len(p.events("message")) == len(plan)
    assert sink.refused_messages == []
