"""`postern check`, the offline verdict a mail admin asks for one message file,
through the CLI against a real unbound on loopback (dns_server.py): the JSON
object carries SPF, each DKIM signature, DMARC, the Authentication-Results
text and the rules' verdict; the exit status is 0 whatever the verdict and 2
for bad usage."""
import json

import pytest

from auth_setup import GOOD_IP, SPOOF_IP, example_com
from dns_server import serve
from harness import run_cli

RULE = """postern.rule{ name = "SPOOFED_EXAMPLE", stage = "eom", score = 20, fn = function(ctx)
  -- the checks' full results as tables (ctx.spf, ctx.dkim, ctx.dmarc)
  return ctx.spf.result == "fail" and ctx.spf.domain == "example.com" and #ctx.dkim == 0
     and ctx.dmarc.result == "fail" and ctx.dmarc.policy == "reject" and not ctx.dmarc.spf_aligned
end }
"""


@pytest.fixture(scope="module")
def dns(dkim_key):
    yield from serve(example_com(dkim_key))


def message(key, signed=True):
    m = (b"From: Sender <a@example.com>\r\nTo: <b@example.net>\r\nSubject: check\r\n"
         b"Date: Tue, 24 Nov 2026 02:00:00 +0000\r\nMessage-ID: <check@example.com>\r\n"
         b"\r\nHello.\r\n")
    return key.sign(m) if signed else m


def check(tmp_path, dns, client_ip, msg, rules=None):
    path = tmp_path / "message.eml"
    path.write_bytes(msg)
    args = ["check", "--client-ip", client_ip, "--helo", "mail.example.com", "--mail-from", "a@example.com",
            "--dns-server", dns.address]
    if rules:
        args += ["--rules", str(rules)]
    r = run_cli(args + [str(path)])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_an_authentic_message(tmp_path, dns, dkim_key):
    out = check(tmp_path, dns, GOOD_IP, message(dkim_key))
    assert out["spf"]["result"] == "pass" and out["spf"]["domain"] == "example.com"
    assert [(d["domain"], d["selector"], d["algorithm"], d["result"]) for d in out["dkim"]] == \
        [("example.com", "s1", "rsa-sha256", "pass")]
    assert out["dmarc"]["result"] == "pass" and out["dmarc"]["policy"] == "reject"
    assert out["dmarc"]["from_domain"] == "example.com" and out["dmarc"]["org_domain"] == "example.com"
    ar = out["authentication_results"]
    assert "spf=pass" in ar and "dkim=pass" in ar and "header.d=example.com" in ar and "dmarc=pass" in ar
    assert out["verdict"]["action"] == "accept"


def test_a_spoofed_message_and_the_rules_verdict(tmp_path, dns, dkim_key):
    rules = tmp_path / "rules.lua"
    rules.write_text(RULE)
    out = check(tmp_path, dns, SPOOF_IP, message(dkim_key, signed=False), rules=rules)
    assert out["spf"]["result"] == "fail"
    assert out["dkim"] == []
    assert out["dmarc"]["result"] == "fail"
    assert "spf=fail" in out["authentication_results"] and "dmarc=fail" in out["authentication_results"]
    names = [s["name"] for s in out["verdict"]["symbols"]]
    assert "SPOOFED_EXAMPLE" in names, out["verdict"]
    assert out["verdict"]["score"] >= 20


def test_an_altered_body_fails_dkim(tmp_path, dns, dkim_key):
    out = check(tmp_path, dns, GOOD_IP, message(dkim_key).replace(b"Hello.", b"Hullo."))
    assert [d["result"] for d in out["dkim"]] == ["fail"]
    assert out["dmarc"]["result"] == "pass"   # SPF still aligns


def test_usage():
    assert run_cli(["check", "--help"]).returncode == 0
    r = run_cli(["check", "--helo", "x"])
    assert r.returncode == 2 and "--client-ip" in r.stderr
