"""DMARC aggregate reports (RFC 7489 §7.2, Appendix C): `postern report dmarc`
on the audit log of real messages that went through postern (SPF, DKIM by
dkimpy, DMARC against a real unbound on loopback), and on audit records
with what a live run rarely shows (IPv6, overrides, many signatures,
hostile text). Every generated report is validated with `xmllint --schema`
against docs/dmarc/rua.xsd (the RFC's schema); --send mails them through an
aiosmtpd upstream, respecting §7.1 external destination verification and the
!size limits."""

import base64
import datetime
import email
import gzip
import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET

import pytest

from auth_setup import (GOOD_IP, RCPT, SPOOF_IP, audit_records, auth_sections, example_com, example_net, example_org,
                        message, proxy_client)
from dns_server import UnboundServer, serve, txt_record
from harness import SCALE, check_reply, listener_ports, run_cli, wait_until, write_config
from test_upstream_tls import TLS_NAME, tls_mta  # noqa: F401 (a fixture: a real Postfix offering STARTTLS)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
XSD = os.path.join(REPO, "docs", "dmarc", "rua.xsd")
NS = {"d": "http://dmarc.org/dmarc-xml/0.1"}
REPORTER = "dmarc-reports@reporter.test"


@pytest.fixture(scope="module")
def dns(dkim_key):
    yield from serve(
        # An address of its own, and one with a limit no report fits in.
        example_com(dkim_key, dmarc="v=DMARC1; p=reject; rua=mailto:dmarc@example.com,mailto:tiny@example.com!1k")
        # External destinations: one verified (§7.1), one not; a percent-encoded one.
        + example_org(dmarc="v=DMARC1; p=reject; adkim=s; fo=d:s; rua=mailto:agg@reports.example.net!10m,"
                            "mailto:x@unverified.example, mailto:a%2Bb@example.org")
        + [txt_record("example.org._report._dmarc.reports.example.net", "v=DMARC1")]
        # example.net: a DMARC record without rua=: nothing to report.
        + example_net())


def validate(xml_bytes, tmp_path, name="report.xml"):
    path = tmp_path / name
    path.write_bytes(xml_bytes)
    r = subprocess.run(["xmllint", "--noout", "--schema", XSD, str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return ET.fromstring(xml_bytes)


def report_config(tmp_path, dns, upstream, audit, extra=None):
    sections = {
        "dns": {"servers": [dns.address], "timeout": 2, "retries": 0},
        "audit": {"path": str(audit)},
        "report": dict({"org_name": "Reporter Org", "email": REPORTER, "extra_contact_info": "https://reporter.test/dmarc"},
                       **(extra or {})),
    }
    return write_config(tmp_path / "report.toml", [], upstream=upstream, sections=sections)


def today_window():
    day = datetime.datetime.now(datetime.timezone.utc).date()
    return day.isoformat(), (day + datetime.timedelta(days=1)).isoformat()


def reports_in(out_dir):
    return sorted(p for p in os.listdir(out_dir) if p.endswith(".xml.gz"))


def test_reports_from_real_traffic_are_valid_named_and_sent_to_verified_rua(postern, make_sink, tmp_path, dns,
                                                                            dkim_key):
    sink = make_sink(final_reply="250 2.0.0 Ok: queued as Q1")
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "postern.toml", [{"proxy_protocol": True}], upstream=sink.address,
                          sections=auth_sections(dns.address, audit_path=audit, authentication_results=None))
    proc = postern.start(config=config, listen=())
    port = listener_ports(proc)[0]
    with proxy_client(port, GOOD_IP) as c:
        c.ehlo("client.example.com")
        for i in range(3):
            check_reply(c.send_message("sender@example.com", [RCPT],
                                       dkim_key.sign(message("sender@example.com", f"good {i}"))), 250)
    with proxy_client(port, SPOOF_IP) as c:
        c.ehlo("spoofer.example")
        for i in range(2):
            check_reply(c.send_message("spoof@example.org", [RCPT], message("ceo@example.org", f"bad {i}")), 550)
        check_reply(c.send_message("x@example.net", [RCPT], message("x@example.net", "monitor")), 250)
    audit_records(audit, 6)
    proc.stop()
    sink.messages.clear()

    out_dir = tmp_path / "out"
    frm, to = today_window()
    cfg = report_config(tmp_path, dns, sink.address, audit)
    r = run_cli(["report", "dmarc", "--config", cfg, "--from", frm, "--to", to, "--out", str(out_dir), "--send"])
    assert r.returncode == 0, r.stdout + r.stderr
    begin = int(datetime.datetime.fromisoformat(frm).replace(tzinfo=datetime.timezone.utc).timestamp())
    end = begin + 86400 - 1
    # One report per domain that asks for them; example.net publishes no rua=.
    assert reports_in(out_dir) == [f"reporter.test!example.com!{begin}!{end}.xml.gz",
                                   f"reporter.test!example.org!{begin}!{end}.xml.gz"], r.stdout
    assert "example.net: 1 messages; no report" in r.stdout, r.stdout

    docs = {}
    for name in reports_in(out_dir):
        raw = gzip.decompress((out_dir / name).read_bytes())
        docs[name.split("!")[1]] = validate(raw, tmp_path, name[:-3])
    com = docs["example.com"]
    assert com.findtext("d:report_metadata/d:org_name", namespaces=NS) == "Reporter Org"
    assert com.findtext("d:report_metadata/d:email", namespaces=NS) == REPORTER
    assert com.findtext("d:report_metadata/d:extra_contact_info", namespaces=NS) == "https://reporter.test/dmarc"
    assert com.findtext("d:report_metadata/d:date_range/d:begin", namespaces=NS) == str(begin)
    assert com.findtext("d:report_metadata/d:date_range/d:end", namespaces=NS) == str(end)
    assert com.findtext("d:policy_published/d:domain", namespaces=NS) == "example.com"
    assert com.findtext("d:policy_published/d:p", namespaces=NS) == "reject"
    [rec] = com.findall("d:record", NS)
    assert rec.findtext("d:row/d:source_ip", namespaces=NS) == GOOD_IP
    assert rec.findtext("d:row/d:count", namespaces=NS) == "3"
    assert [rec.findtext(f"d:row/d:policy_evaluated/d:{k}", namespaces=NS) for k in ("disposition", "dkim", "spf")] \
        == ["none", "pass", "pass"]
    assert rec.findtext("d:identifiers/d:header_from", namespaces=NS) == "example.com"
    assert rec.findtext("d:identifiers/d:envelope_from", namespaces=NS) == "example.com"
    [dk] = rec.findall("d:auth_results/d:dkim", NS)
    assert (dk.findtext("d:domain", namespaces=NS), dk.findtext("d:selector", namespaces=NS),
            dk.findtext("d:result", namespaces=NS)) == ("example.com", "s1", "pass")
    [sp] = rec.findall("d:auth_results/d:spf", NS)
    assert (sp.findtext("d:domain", namespaces=NS), sp.findtext("d:scope", namespaces=NS),
            sp.findtext("d:result", namespaces=NS)) == ("example.com", "mfrom", "pass")
    org = docs["example.org"]
    assert org.findtext("d:policy_published/d:adkim", namespaces=NS) == "s"
    assert org.findtext("d:policy_published/d:fo", namespaces=NS) == "d:s"
    assert com.findtext("d:policy_published/d:fo", namespaces=NS) == "0"
    [rec] = org.findall("d:record", NS)
    assert rec.findtext("d:row/d:source_ip", namespaces=NS) == SPOOF_IP
    assert rec.findtext("d:row/d:count", namespaces=NS) == "2"
    assert [rec.findtext(f"d:row/d:policy_evaluated/d:{k}", namespaces=NS) for k in ("disposition", "dkim", "spf")] \
        == ["reject", "fail", "fail"]
    assert rec.findall("d:auth_results/d:dkim", NS) == []
    assert rec.findtext("d:auth_results/d:spf/d:result", namespaces=NS) == "fail"

    # Sent: the own-domain address and the verified external one; not the
    # unverified one, nor the one whose !1k limit no report fits in.
    sent = sink.wait_messages(3)
    by_rcpt = {m.rcpt_tos[0]: m for m in sent}
    assert sorted(by_rcpt) == ["a+b@example.org", "agg@reports.example.net", "dmarc@example.com"], r.stdout
    assert "not sent to x@unverified.example: external destination not verified" in r.stdout
    assert "not sent to tiny@example.com:" in r.stdout and "exceed its limit of 1024" in r.stdout
    for rcpt, domain in (("dmarc@example.com", "example.com"), ("agg@reports.example.net", "example.org")):
        m = by_rcpt[rcpt]
        assert m.mail_from == REPORTER
        msg = email.message_from_bytes(m.content)
        report_id = f"{domain}.{begin}.{end}@reporter.test"
        assert " ".join(msg["Subject"].split()) == \
            f"Report Domain: {domain} Submitter: reporter.test Report-ID: <{report_id}>"
        assert msg["From"] == REPORTER and msg["To"] == rcpt
        [att] = [p for p in msg.walk() if p.get_content_type() == "application/gzip"]
        name = f"reporter.test!{domain}!{begin}!{end}.xml.gz"
        assert att.get_filename() == name
        assert att.get_payload(decode=True) == (out_dir / name).read_bytes()
        xml = gzip.decompress(att.get_payload(decode=True))
        root = validate(xml, tmp_path)
        assert root.findtext("d:report_metadata/d:report_id", namespaces=NS) == report_id


def record(time, ip, from_domain, *, result="fail", disposition="none", policy="reject", published=None,
           override=None, dkim=(), spf=("fail", "mailfrom"), mail_from=None, record_domain=None, name="",
           action="relayed"):
    dmarc = {"result": result, "policy": policy, "disposition": disposition, "from_domain": from_domain,
             "org_domain": from_domain, "record_domain": record_domain if record_domain is not None else from_domain,
             "spf_aligned": result == "pass", "dkim_aligned": False, "reason": ""}
    if dmarc["record_domain"]:
        dmarc["published"] = published or {"p": policy, "sp": policy, "adkim": "r", "aspf": "r", "pct": 100}
    if override:
        dmarc["override"] = {"type": override[0], "comment": override[1]}
    rec = {"time": time, "session": "s", "transaction": "s.1",
           "client": {"ip": ip, "port": 1, "name": name}, "helo": "helo.test",
           "mail_from": mail_from if mail_from is not None else f"bounce@{from_domain}",
           "rcpt_to": [RCPT], "rcpt_count": 1, "message_id": "<m@x>", "from_domain": from_domain, "size": 10,
           "dkim": [{"domain": d, "selector": s, "result": res} for d, s, res in dkim],
           "dmarc": dmarc, "symbols": [], "score": 0, "stage": "eom", "action": action, "signed": False,
           "upstream_reply": "250 ok", "queue_id": "Q"}
    if spf:
        rec["spf"] = {"result": spf[0], "identity": spf[1], "domain": from_domain}
    return json.dumps(rec)


def test_every_shape_of_record_validates_against_the_schema(tmp_path, dns, make_sink):
    hostile = 'x"><script>alert(1)</script>&amp;\u0007\u202e'
    lines = [
        record("2026-11-20T10:00:00.000Z", "2001:db8::1", "v6.example.com"),  # IPv6: the schema's full form
        record("2026-11-20T10:00:01.000Z", "::ffff:192.0.2.9", "v6.example.com"),  # IPv4-mapped
        record("2026-11-20T10:00:02.000Z", "192.0.2.10", "v6.example.com", disposition="none",
               override=("sampled_out", "pct=10")),
        record("2026-11-20T10:00:03.000Z", "192.0.2.11", "v6.example.com",
               override=("local_policy", "arc: trusted sealer " + hostile)),
        record("2026-11-20T10:00:04.000Z", "192.0.2.12", "v6.example.com", override=("made-up", "")),
        record("2026-11-20T10:00:05.000Z", "192.0.2.13", "v6.example.com",
               dkim=[("v6.example.com", "a", "pass"), ("esp.example", hostile, "fail"),
                     ("x.example", "", "weird-result"), ("", "noselector", "pass")]),
        record("2026-11-20T10:00:06.000Z", "192.0.2.14", "v6.example.com", spf=None, mail_from=""),
        record("2026-11-20T10:00:07.000Z", "192.0.2.15", "v6.example.com", spf=("pass", "helo")),
        # p=reject not carried out (postern's [dmarc] enforce = "report"): disposition none, local_policy.
        record("2026-11-20T10:00:07.500Z", "192.0.2.19", "v6.example.com", disposition="reject"),
        record("2026-11-20T10:00:07.600Z", "192.0.2.20", "v6.example.com", disposition="reject", action="rejected"),
        record("2026-11-20T10:00:08.000Z", "192.0.2.16", "sub.v6.example.com", record_domain="v6.example.com",
               published={"p": "reject", "sp": "quarantine", "adkim": "s", "aspf": "s", "pct": 50}),
        # Not reported: outside the period, no record found, no client address, not JSON.
        record("2026-11-21T00:00:00.000Z", "192.0.2.17", "v6.example.com"),
        record("2026-11-20T10:00:09.000Z", "192.0.2.18", "norecord.example", record_domain=""),
        record("2026-11-20T10:00:10.000Z", "", "v6.example.com"),
        "not json",
    ]
    audit = tmp_path / "audit.jsonl"
    audit.write_text("\n".join(lines) + "\n")
    dns_records = UnboundServer([txt_record("_dmarc.v6.example.com", "v=DMARC1; p=reject; rua=mailto:r@v6.example.com")])
    server = dns_records.start()
    try:
        cfg = report_config(tmp_path, server, make_sink().address, audit)
        out_dir = tmp_path / "out"
        r = run_cli(["report", "dmarc", "--config", cfg, "--from", "2026-11-20", "--to", "2026-11-21",
                     "--out", str(out_dir)])
    finally:
        server.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    [name] = reports_in(out_dir)
    assert name == "reporter.test!v6.example.com!1795132800!1795219199.xml.gz"
    raw = gzip.decompress((out_dir / name).read_bytes())
    root = validate(raw, tmp_path)
    assert b"<script" not in raw and b"\x07" not in raw
    rows = {rec.findtext("d:row/d:source_ip", namespaces=NS): rec for rec in root.findall("d:record", NS)}
    assert set(rows) == {"2001:db8:0:0:0:0:0:1", "192.0.2.9", "192.0.2.10", "192.0.2.11", "192.0.2.12",
                         "192.0.2.13", "192.0.2.14", "192.0.2.15", "192.0.2.16", "192.0.2.19", "192.0.2.20"}
    reason = lambda ip: (rows[ip].findtext("d:row/d:policy_evaluated/d:reason/d:type", namespaces=NS),
                         rows[ip].findtext("d:row/d:policy_evaluated/d:reason/d:comment", namespaces=NS))
    assert reason("192.0.2.10") == ("sampled_out", "pct=10")
    assert reason("192.0.2.11")[0] == "local_policy" and "<script>" in reason("192.0.2.11")[1]
    assert reason("192.0.2.12") == ("other", None)
    disposition = lambda ip: rows[ip].findtext("d:row/d:policy_evaluated/d:disposition", namespaces=NS)
    assert disposition("192.0.2.19") == "none"
    assert reason("192.0.2.19") == ("local_policy", "policy not enforced by the receiver; message relayed")
    assert disposition("192.0.2.20") == "reject" and reason("192.0.2.20") == (None, None)
    sigs = [(d.findtext("d:domain", namespaces=NS), d.findtext("d:selector", namespaces=NS),
             d.findtext("d:result", namespaces=NS)) for d in rows["192.0.2.13"].findall("d:auth_results/d:dkim", NS)]
    assert sigs[0] == ("v6.example.com", "a", "pass") and sigs[1][0] == "esp.example"
    assert sigs[2] == ("x.example", None, "permerror") and len(sigs) == 3
    no_spf = rows["192.0.2.14"]
    assert no_spf.findtext("d:identifiers/d:envelope_from", namespaces=NS) is None or \
        no_spf.findtext("d:identifiers/d:envelope_from", namespaces=NS) == ""
    assert no_spf.findtext("d:auth_results/d:spf/d:result", namespaces=NS) == "none"
    assert rows["192.0.2.15"].findtext("d:auth_results/d:spf/d:scope", namespaces=NS) == "helo"
    assert rows["192.0.2.16"].findtext("d:identifiers/d:header_from", namespaces=NS) == "sub.v6.example.com"
    # policy_published is the newest record's.
    assert root.findtext("d:policy_published/d:sp", namespaces=NS) == "quarantine"
    assert root.findtext("d:policy_published/d:pct", namespaces=NS) == "50"
    assert "1 malformed" in r.stdout


def test_an_invalid_report_fails_the_schema(tmp_path):
    """The validation can fail: a report with a compressed IPv6 address or a
    disposition outside the RFC's list is refused by xmllint."""
    good = ('<?xml version="1.0"?><feedback xmlns="http://dmarc.org/dmarc-xml/0.1"><report_metadata>'
            "<org_name>o</org_name><email>e@x</email><report_id>1</report_id><date_range><begin>1</begin>"
            "<end>2</end></date_range></report_metadata><policy_published><domain>x</domain><p>none</p>"
            "<sp>none</sp><pct>100</pct><fo>0</fo></policy_published><record><row><source_ip>IP</source_ip>"
            "<count>1</count><policy_evaluated><disposition>DISP</disposition><dkim>fail</dkim><spf>fail</spf>"
            "</policy_evaluated></row><identifiers><envelope_from>x</envelope_from><header_from>x</header_from>"
            "</identifiers><auth_results><spf><domain>x</domain><scope>mfrom</scope><result>none</result></spf>"
            "</auth_results></record></feedback>")
    validate(good.replace("IP", "192.0.2.1").replace("DISP", "none").encode(), tmp_path)
    for ip, disp in (("2001:db8::1", "none"), ("192.0.2.1", "discard")):
        path = tmp_path / "bad.xml"
        path.write_text(good.replace("IP", ip).replace("DISP", disp))
        r = subprocess.run(["xmllint", "--noout", "--schema", XSD, str(path)], capture_output=True, text=True)
        assert r.returncode != 0, (ip, disp)


def test_usage_errors_and_the_default_period(tmp_path, dns, make_sink):
    audit = tmp_path / "audit.jsonl"
    audit.write_text("")
    cfg = report_config(tmp_path, dns, make_sink().address, audit, extra={"interval": 3600})
    assert run_cli(["report", "dmarc", "--help"]).stdout.startswith("Usage: postern report dmarc")
    bad = run_cli(["report", "dmarc", "--config", cfg, "--from", "yesterday", "--to", "2026-11-21"])
    assert bad.returncode == 2 and "--from and --to" in bad.stderr
    bad = run_cli(["report", "dmarc", "--config", cfg, "--from", "2026-11-21", "--to", "2026-11-20"])
    assert bad.returncode == 2 and "after --from" in bad.stderr
    # Without --from/--to: the last complete [report] interval (an hour here),
    # read from the [audit] path.
    r = run_cli(["report", "dmarc", "--config", cfg, "--out", str(tmp_path / "o")])
    assert r.returncode == 0, r.stderr
    m = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) to (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", r.stdout)
    a, b = (datetime.datetime.strptime(x, "%Y-%m-%dT%H:%M:%SZ") for x in m.groups())
    assert (b - a).total_seconds() == 3600 and a.minute == 0 and a.second == 0
    assert "no domain to report" in r.stdout
    # --send without [report] email is refused before anything is read.
    no_email = write_config(tmp_path / "noemail.toml", [], upstream=make_sink().address,
                            sections={"audit": {"path": str(audit)}})
    r = run_cli(["report", "dmarc", "--config", no_email, "--send", "--from", "2026-11-20", "--to", "2026-11-21"])
    assert r.returncode == 2 and "[report] email" in r.stderr


def test_send_uses_starttls_as_upstream_tls_says(tmp_path, dns, tls_mta):
    """--send talks to the upstream as relayed mail does: with tls = "verify"
    the report goes over STARTTLS to a real Postfix whose certificate and name
    are checked; a wrong name sends nothing and says why (exit status 1)."""
    audit = tmp_path / "audit.jsonl"
    audit.write_text(record("2026-11-20T10:00:00.000Z", "192.0.2.1", "example.com") + "\n")
    frm, to = "2026-11-20", "2026-11-21"
    upstream = f"127.0.0.1:{tls_mta.xforward_port}"
    before = len(tls_mta.sink.messages)
    cfg = report_config(tmp_path, dns, upstream, audit)
    wrong = tmp_path / "wrong.toml"
    text = open(cfg).read().replace(f'target = "{upstream}"',
                                    f'target = "{upstream}"\ntls = "verify"\nca_file = "{tls_mta.cert}"\n'
                                    f'tls_name = "wrong.test"\nclient_identity = "none"')
    wrong.write_text(text)
    r = run_cli(["report", "dmarc", "--config", str(wrong), "--from", frm, "--to", to, "--out", str(tmp_path / "w"),
                 "--send"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not sent to dmarc@example.com:" in r.stdout and "certificate verify failed" in r.stdout, r.stdout
    good = tmp_path / "good.toml"
    good.write_text(text.replace('tls_name = "wrong.test"', f'tls_name = "{TLS_NAME}"'))
    r = run_cli(["report", "dmarc", "--config", str(good), "--from", frm, "--to", to, "--out", str(tmp_path / "g"),
                 "--send"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sent to dmarc@example.com" in r.stdout, r.stdout
    wait_until(lambda: len(tls_mta.sink.messages) > before, 20 * SCALE, message="Postfix relaying the report")
    msg = tls_mta.sink.messages[-1]
    assert msg.rcpt_tos == ["dmarc@example.com"] and msg.mail_from == REPORTER
    received = email.message_from_bytes(msg.content).get_all("Received")
    assert any("with ESMTPS" in r for r in received), received
