"""Hostile data in the audit trail and what postern makes of it for an admin.

Everything an audit record holds that came from the network (From domain,
HELO, client name, DKIM d=/s=, results, actions, times) is hostile, and so are
the DMARC records (rua=, the §7.1 authorization) an attacker publishes in DNS
and the replies of the MTA the reports go through. Each test is a class of
hostile input with the exact outcome: `postern report`'s table shows every
control and bidi character as a visible '?', the HTML page shows them as
U+FFFD; malformed, over-long and ill-typed audit lines are skipped with
"FILE:LINE: reason" and a count while every good record is kept, in bounded
memory; `postern report dmarc --send` mails only well-formed, verified,
distinct rua= mailboxes, with none of the record's own header fields, and
writes a report whose RFC file name is too long for the file system."""

import email
import gzip
import json
import os
import re
import subprocess
import sys

from dns_server import UnboundServer, txt_record
from harness import POSTERN_BIN, run_cli, write_config

REPORTER = "dmarc-reports@reporter.test"

# What a terminal acts on: CSI (clear screen, cursor moves, colours), OSC 8
# (hyperlink), OSC 52 (write the clipboard), BEL, a CR that rewrites the
# line, a backspace, NUL, the 8-bit CSI (C1 U+009B), and the characters that
# reorder or hide text (RLO U+202E, RLI U+2067, RLM U+200F, zero-width space,
# the line separator U+2028, BOM).
TERMINAL = {
    "csi": "\x1b[2J\x1b[31m",
    "osc8": "\x1b]8;;http://198.51.100.99/\x1b\\click\x1b]8;;\x1b\\",
    "osc52": "\x1b]52;c;ZXZpbA==\x07",
    "bel": "\x07",
    "cr": "\rFAKE LINE",
    "bs": "\x08\x08",
    "nul": "\x00",
    "c1": "\u009b31m",
    "rlo": "\u202emoc.knab",
    "rli": "\u2067x\u2069",
    "rlm": "\u200f",
    "zwsp": "\u200b",
    "lsep": "\u2028",
    "bom": "\ufeff",
}
# Octets none of which may reach the terminal or the page.
FORBIDDEN = [b"\x1b", b"\x07", b"\r", b"\x08", b"\x00", "\u009b".encode(), "\u202e".encode(), "\u2067".encode(),
             "\u2069".encode(), "\u200f".encode(), "\u200b".encode(), "\u2028".encode(), "\ufeff".encode()]


def record(time="2026-11-20T10:00:00.000Z", ip="192.0.2.1", from_domain="example.com", *, helo="helo.test",
           name="", action="relayed", spf="fail", dkim=(), dmarc="fail", record_domain=None, mail_from=None):
    dmarc_obj = None
    if dmarc:
        dmarc_obj = {"result": dmarc, "policy": "reject", "disposition": "none", "from_domain": from_domain,
                     "record_domain": from_domain if record_domain is None else record_domain,
                     "spf_aligned": dmarc == "pass", "dkim_aligned": False,
                     "published": {"p": "reject", "sp": "reject", "adkim": "r", "aspf": "r", "pct": 100}}
    rec = {"time": time, "session": "s", "transaction": "s.1", "client": {"ip": ip, "port": 1, "name": name},
           "helo": helo, "mail_from": mail_from if mail_from is not None else f"b@{from_domain}",
           "rcpt_to": ["r@example.net"], "rcpt_count": 1, "message_id": "<m@x>", "from_domain": from_domain,
           "size": 10, "dkim": [{"domain": d, "selector": s, "result": r} for d, s, r in dkim],
           "symbols": [], "score": 0, "stage": "eom", "action": action, "signed": False,
           "upstream_reply": "250 ok", "queue_id": "Q"}
    if spf:
        rec["spf"] = {"result": spf, "identity": "mailfrom", "domain": from_domain}
    if dmarc_obj:
        rec["dmarc"] = dmarc_obj
    return json.dumps(rec)


def run_bytes(args):
    """postern with args; stdout as bytes (a terminal gets octets, not text)."""
    return subprocess.run([POSTERN_BIN] + args, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


def hostile_audit(tmp_path):
    """One failing message per hostile string, the string in every field the
    table and the page print: From domain, HELO (the name shown without a
    PTR), PTR name, client address, action, DKIM d= (shown for an unaligned
    passing signature), SPF result, time."""
    lines = []
    for i, (key, bad) in enumerate(TERMINAL.items()):
        lines.append(record(f"2026-11-20T10:00:{i:02d}.000Z{bad}", f"192.0.2.{i}{bad}", f"{key}{bad}.example",
                            helo=f"helo{bad}", action=f"relayed{bad}", spf=f"fail{bad}",
                            dkim=[(f"esp{bad}.other", f"s{bad}", "pass")]))
        lines.append(record(f"2026-11-20T11:00:{i:02d}.000Z", f"198.51.100.{i}", "ptr.example",
                            name=f"ptr{bad}.example"))
    path = tmp_path / "audit.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_terminal_table_shows_every_control_and_bidi_character_visibly(tmp_path):
    audit = hostile_audit(tmp_path)
    r = run_bytes(["report", "--all", str(audit)])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for octets in FORBIDDEN:
        assert octets not in out, (octets, out[:3000])
    text = out.decode("utf-8")  # still well-formed UTF-8
    # Each hostile domain (lowered) is there, its bad characters each a visible '?'.
    assert "csi?[2j?[31m.example" in text
    assert "osc52?]52;c;zxzpba==?.example" in text
    assert "cr?fake line.example" in text
    assert "rlo?moc.knab.example" in text
    assert "c1??31m.example" in text  # the two octets of U+009B
    assert "rli?x?.example" in text and "zwsp?.example" in text and "bom?.example" in text
    # The HELO, the PTR name, the address, the action and the unaligned DKIM
    # signer of those messages likewise.
    assert "helo?[2J?[31m" in text and "ptr?]52;c;zxzpba==?.example" in text
    assert "192.0.2.3?" in text  # "bel": the address with a BEL after it
    assert "relayed?moc.knab=1" in text
    assert "d=esp?moc.knab.other, unaligned" in text
    # One table row per From domain: no line was split or rewritten.
    table = text.split("\nDOMAIN ", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert len(table) == len(TERMINAL) + 1, table


def test_html_page_replaces_bidi_and_control_characters(tmp_path):
    audit = hostile_audit(tmp_path)
    r = run_bytes(["report", "html", str(audit)])
    assert r.returncode == 0, r.stderr
    page = r.stdout
    for octets in FORBIDDEN:
        assert octets not in page, octets
    text = page.decode("utf-8")
    assert "rlo&#xfffd;moc.knab.example" in text and "rli&#xfffd;x&#xfffd;.example" in text
    assert "csi&#xfffd;[2j&#xfffd;[31m.example" in text
    assert "ptr&#xfffd;]52;c;zxzpba==&#xfffd;.example" in text


MALFORMED = [
    ('{"time": "2026-11-20T10:00:00Z", "action": "relayed", "client": {"ip": "192.0.2.1"', "not JSON (expected ',' or '}' at octet 82)"),
    ("not json at all", "not JSON (invalid literal at octet 0)"),
    ("[" * 5000 + "]" * 5000, "not JSON (nested too deep"),
    ('{"a": 1} trailing', "not JSON (text after the value"),
    ('"just a string"', "not an audit record"),
    ('{"time": "2026-11-20T10:00:00Z", "client": {}}', "not an audit record"),
    ('{"x": "\\ud800\\u0041"}', "not an audit record"),
    ('{"x": "bad \\q escape"}', "not JSON (bad escape"),
    ("x" * (1024 * 1024 + 1), "line longer than 1048576 octets"),
]


def good_and_odd_records():
    """Audit records that parse: the good ones, and ones with invalid UTF-8,
    numbers out of range and members of the wrong type, which must count."""
    good = [record(f"2026-11-20T10:00:{i:02d}.000Z", "192.0.2.7", "example.com") for i in range(3)]
    odd = json.loads(record("2026-11-20T10:01:00.000Z", "192.0.2.8", "example.com"))
    odd["dmarc"]["published"]["pct"] = 10 ** 400  # an integer no double holds
    odd["size"] = -1e308
    odd["client"]["port"] = "not a number"
    odd_text = json.dumps(odd)
    wrong = json.loads(record("2026-11-20T10:02:00.000Z", "192.0.2.9", "example.com"))
    wrong["dkim"] = {"domain": "example.com"}
    wrong["spf"] = "pass"
    wrong["helo"] = ["x"]
    utf8_bad = record("2026-11-20T10:03:00.000Z", "192.0.2.10", "example.com",
                      helo="PLACEHOLDER").encode().replace(b"PLACEHOLDER", b"\xff\xfe\xc0\xaf")
    return [l.encode() for l in good] + [odd_text.encode(), json.dumps(wrong).encode(), utf8_bad]


def test_malformed_lines_are_named_counted_and_good_records_kept(tmp_path):
    records = good_and_odd_records()
    lines = []
    for i, rec in enumerate(records):
        lines.append(rec)
        if i < len(MALFORMED):
            lines.append(MALFORMED[i][0].encode())
    lines += [m[0].encode() for m in MALFORMED[len(records):]]
    audit = tmp_path / "audit.jsonl"
    # The last line is cut short, with no LF: a log read while it is written.
    audit.write_bytes(b"\n".join(lines) + b"\n" + records[0][:40])
    expected_malformed = len(MALFORMED) + 1
    r = run_bytes(["report", "--all", str(audit)])
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode("utf-8")
    assert f"{len(records)} records, {expected_malformed} malformed lines" in out, out
    row = next(l.split() for l in out.splitlines() if l.startswith("example.com "))
    assert row[1] == str(len(records)), out
    numbered = {}
    for n, line in enumerate(lines, 1):
        for text, reason in MALFORMED:
            if line == text.encode():
                numbered[n] = reason
    for n, reason in numbered.items():
        assert f"{audit}:{n}: {reason}" in out, (n, reason, out)
    assert f"{audit}:{len(lines) + 1}: not JSON (" in out, out

    # report dmarc reads the same file the same way, and names the lines too.
    dns = UnboundServer([txt_record("_dmarc.example.com", "v=DMARC1; p=reject; rua=mailto:d@example.com")]).start()
    try:
        cfg = report_config(tmp_path, dns)
        r = run_bytes(["report", "dmarc", "--config", cfg, "--from", "2026-11-20", "--to", "2026-11-21",
                       "--out", str(tmp_path / "out"), str(audit)])
    finally:
        dns.stop()
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode("utf-8")
    # In the period: the records, and the line with a time but no "action".
    assert f"{len(records) + 1} audit records in the period (0 without a DMARC record), " in out, out
    assert f"{audit}:{max(numbered)}: line longer than 1048576 octets" in out, out
    first = min(numbered)
    assert f"{audit}:{first}: {numbered[first]}" in out, out
    [name] = os.listdir(tmp_path / "out")
    xml = gzip.decompress((tmp_path / "out" / name).read_bytes())
    assert sum(int(c) for c in re.findall(rb"<count>(\d+)</count>", xml)) == len(records)


MEASURE = r"""
import resource, subprocess, sys
args = sys.argv[1:]
p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
chunk = b"x" * (1 << 20)
p.stdin.write(b'{"action": "relayed", "client": {}, "from_domain": "huge.example", "helo": "')
for _ in range(300):
    p.stdin.write(chunk)
p.stdin.write(b'"}\n{"action": "relayed", "client": {"ip": "192.0.2.1"}, "from_domain": "after.example"}\n')
p.stdin.close()
err = p.stderr.read()
assert p.wait() == 0, err
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_a_300_megabyte_line_costs_bounded_memory(tmp_path):
    """A line of 300 MB (or a file that never ends its line) is skipped as
    too long after reading at most the bound; the reader's peak memory stays
    far below the line, and the record after it counts."""
    for args in (["report", "--all", "-"], ["report", "dmarc", "--config", str(write_config(
            tmp_path / "m.toml", [], upstream="127.0.0.1:9", sections={"audit": {"path": "/dev/null"}})),
            "--from", "2026-11-20", "--to", "2026-11-21", "--out", str(tmp_path / "o"), "/dev/stdin"]):
        r = subprocess.run([sys.executable, "-c", MEASURE, POSTERN_BIN] + args, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        peak_kib = int(r.stdout.strip())
        assert peak_kib < 150 * 1024, (args[1], peak_kib)


def report_config(tmp_path, dns, upstream="127.0.0.1:9"):
    sections = {"dns": {"servers": [dns.address], "timeout": 2, "retries": 0},
                "report": {"org_name": "Reporter Org", "email": REPORTER}}
    return write_config(tmp_path / "report.toml", [], upstream=upstream, sections=sections)


def send_reports(tmp_path, records, audit, sink):
    """`postern report dmarc --send` over `audit` for the test period, with
    unbound serving `records` and `sink` as the upstream; its run's result."""
    dns = UnboundServer(records).start()
    try:
        cfg = report_config(tmp_path, dns, sink.address)
        return run_cli(["report", "dmarc", "--config", cfg, "--from", "2026-11-20", "--to", "2026-11-21",
                        "--out", str(tmp_path / "out"), "--send", str(audit)])
    finally:
        dns.stop()


# rua= as hostile DNS can write it: each URI with the address the report may
# go to, or None when it must not be used.
RUA = [
    ("mailto:dmarc@rua.example", "dmarc@rua.example"),
    ("mailto:DMARC@RUA.EXAMPLE", None),                    # the same mailbox again, in capitals
    ("mailto:dmarc@rua.example!10m", None),                # again, with a size
    ("mailto:sub@rua.example?subject=x%0D%0ABcc:%20spy@evil.example&to=spy@evil.example", "sub@rua.example"),
    ("mailto:x%0D%0ABcc:spy@evil.example@rua.example", None),  # CR LF and a second '@' after decoding
    ("mailto:victim@evil.example@rua.example", None),      # the last '@' is in the organization, the first not
    ("mailto:victim%40evil.example@rua.example", None),
    ("mailto:%22q%22@rua.example", None),                  # a quoted local part
    ("mailto:q%20q@rua.example", None),                    # a space
    ("mailto:bad@[192.0.2.1]", None),                      # a domain literal
    ("mailto:dots..x@rua.example", None),
    ("https://evil.example/collect", None),                # not mailto
    ("mailto:huge@rua.example!999999999999t", "huge@rua.example"),  # a limit past 2^64: none
    ("mailto:third@unauthorized.example", None),           # no _report._dmarc record
    ("mailto:agg@authorized.example", "agg@authorized.example"),
    ("mailto:over@override.example", "new@override.example"),   # its authorization names another address there
    ("mailto:away@redirect.example", None),                # its authorization names one at a third domain
]


def test_rua_from_hostile_dns_reaches_only_verified_distinct_mailboxes(tmp_path, make_sink):
    audit = tmp_path / "audit.jsonl"
    audit.write_text(record(from_domain="rua.example") + "\n")
    dmarc = "v=DMARC1; p=reject; rua=" + ",".join(u for u, _ in RUA)
    sink = make_sink()
    r = send_reports(tmp_path, [
        txt_record("_dmarc.rua.example", dmarc),
        txt_record("rua.example._report._dmarc.authorized.example", "v=DMARC1"),
        txt_record("rua.example._report._dmarc.override.example", "v=DMARC1; rua=mailto:new@override.example"),
        txt_record("rua.example._report._dmarc.redirect.example", "v=DMARC1; rua=mailto:steal@evil.example"),
    ], audit, sink)
    assert r.returncode == 0, r.stdout + r.stderr
    expected = sorted(a for _, a in RUA if a)
    sent = sink.wait_messages(len(expected))
    assert sorted(m.rcpt_tos[0] for m in sent) == expected, r.stdout
    assert all(len(m.rcpt_tos) == 1 for m in sent)
    assert "not sent to third@unauthorized.example: external destination not verified" in r.stdout
    assert "not sent to away@redirect.example: the authorization at rua.example._report._dmarc.redirect.example " \
           "names a rua= at another domain" in r.stdout, r.stdout
    for m in sent:
        msg = email.message_from_bytes(m.content)
        assert msg["To"] == m.rcpt_tos[0]
        assert msg.get_all("Bcc") is None and b"spy@" not in m.content and b"evil.example" not in m.content
        assert set(msg.keys()) <= {"Received", "X-Peer", "X-MailFrom", "X-RcptTo", "From", "To", "Date", "Subject",
                                   "Message-ID", "MIME-Version", "Content-Type"}, msg.keys()
        assert all(len(msg.get_all(k)) == 1 for k in ("From", "To", "Subject")), msg.keys()


def test_hostile_upstream_reply_reaches_the_terminal_printable(tmp_path, make_sink):
    """The MTA's refusal is shown to the admin, its control characters as '?'."""
    audit = tmp_path / "audit.jsonl"
    audit.write_text(record(from_domain="rua.example") + "\n")
    dns = UnboundServer([txt_record("_dmarc.rua.example", "v=DMARC1; p=none; rua=mailto:d@rua.example")]).start()
    sink = make_sink()
    sink.on("RCPT", "550 5.1.1 \x1b]52;c;ZXZpbA==\x07\x1b[2Jgone")
    try:
        cfg = report_config(tmp_path, dns, sink.address)
        r = run_bytes(["report", "dmarc", "--config", cfg, "--from", "2026-11-20", "--to", "2026-11-21",
                       "--out", str(tmp_path / "out"), "--send", str(audit)])
    finally:
        dns.stop()
    assert r.returncode == 1, r.stdout
    assert b"\x1b" not in r.stdout and b"\x07" not in r.stdout
    assert b"not sent to d@rua.example: RCPT: 550 5.1.1 ?]52;c;ZXZpbA==??[2Jgone" in r.stdout, r.stdout


def test_a_policy_domain_too_long_for_a_file_name_is_still_reported(tmp_path, make_sink):
    """A 246-octet policy domain (_dmarc. and it fill a DNS name) makes an RFC 7489 §7.2.1.1 file name past
    NAME_MAX: the file is written under a shortened name, the mail keeps the
    RFC name, and two such domains do not overwrite each other."""
    domains = [".".join(["a" * 63, "b" * 63, "c" * 63, f"{p}" + "d" * 53]) for p in ("x", "y")]
    assert all(len(d) == 246 for d in domains)  # the longest with a _dmarc. name
    audit = tmp_path / "audit.jsonl"
    audit.write_text("".join(record(from_domain=d) + "\n" for d in domains))
    sink = make_sink()
    r = send_reports(tmp_path, [txt_record(f"_dmarc.{d}", f"v=DMARC1; p=none; rua=mailto:r@{d}") for d in domains],
                     audit, sink)
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(os.listdir(tmp_path / "out"))
    assert len(files) == 2 and all(len(f) <= 255 and f.endswith("!1795132800!1795219199.xml.gz") for f in files), (files, r.stdout)
    sent = sink.wait_messages(2)
    for m in sent:
        att = next(p for p in email.message_from_bytes(m.content).walk()
                   if p.get_content_type() == "application/gzip")
        domain = m.rcpt_tos[0].split("@")[1]
        assert att.get_filename() == f"reporter.test!{domain}!1795132800!1795219199.xml.gz"
        on_disk = [f for f in files if (tmp_path / "out" / f).read_bytes() == att.get_payload(decode=True)]
        assert len(on_disk) == 1
