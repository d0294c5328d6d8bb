"""`postern check --config` = live (issue 17): a set of messages is relayed
through a running postern (PROXY listener with public client addresses, a
real unbound serving SPF, DKIM and DMARC records, Lua rules at every stage,
score thresholds), then checked offline with the same configuration and DNS;
the two must agree field by field: the action, the reply code, enhanced code
and (for postern's own replies) text, each recipient's reply, the deciding
rule, the symbols and score, and every header change as the MTA received it."""
import email
import email.policy
import json
import os

import pytest

from auth_setup import (GOOD_IP, QUEUE_REPLY, SPOOF_IP, auth_sections, example_com, example_net, example_org,
                        message, proxy_client)
from dns_server import serve
from harness import IO_TIMEOUT, check_reply, listener_ports, run_cli, wait_until, write_config

RULES = r"""
postern.rule{ name = "CONNECT_SPOOFER_NET", stage = "connect", score = 1.5, fn = function(ctx)
  return ctx.client.ip:find("^203%.0%.113%.") ~= nil
end }
postern.rule{ name = "HELO_NO_DOT", stage = "helo", score = 2.5, fn = function(ctx)
  return not ctx.client.helo:find(".", 1, true)
end }
postern.rule{ name = "MAIL_FROM_NET", stage = "mail", score = 0.5, fn = function(ctx)
  return ctx.envelope.from.domain == "example.net"
end }
postern.rule{ name = "RCPT_BLOCKED", stage = "rcpt", fn = function(ctx)
  if ctx.envelope.rcpt.local_part == "blocked" then
    return postern.reject(550, "5.1.1", "No such user here")
  end
end }
postern.rule{ name = "DATA_TAG", stage = "data", fn = function(ctx)
  if (ctx.headers:first("Subject") or ""):find("win", 1, true) then
    ctx:add_header("X-Check-Tag", "subject mentions winning")
    ctx:tag_subject("[WIN]")
    ctx:symbol("SUBJECT_WIN", 3)
  end
end }
postern.rule{ name = "DMARC_FAIL_TEMP", stage = "eom", fn = function(ctx)
  if ctx.dmarc.result == "fail" and ctx.dmarc.policy == "none" then
    return postern.tempfail(451, "4.7.26", "DMARC fail for a p=none domain, try later")
  end
end }
postern.rule{ name = "LOTTERY", stage = "eom", score = 6, fn = function(ctx)
  for _, part in ipairs(ctx.body:text_parts()) do
    if part.text:lower():find("lottery") then return true end
  end
end }
"""


@pytest.fixture(scope="module")
def dns(dkim_key):
    yield from serve(example_com(dkim_key) + example_org() + example_net())


def cases(key):
    """(name, client ip, helo, mail from, recipients, message)."""
    return [
        ("authentic", GOOD_IP, "mail.example.com", "a@example.com", ["rcpt@example.net"],
         key.sign(message("a@example.com", "hello there"))),
        ("spoofed-reject", SPOOF_IP, "mail.example.com", "a@example.org", ["rcpt@example.net"],
         message("a@example.org", "spoofed")),
        ("pnone-tempfail", SPOOF_IP, "mail.example.com", "a@example.net", ["rcpt@example.net"],
         message("a@example.net", "monitor only")),
        ("tagged", GOOD_IP, "bare", "a@example.com", ["rcpt@example.net", "blocked@example.net"],
         key.sign(message("a@example.com", "you win big"))),
        ("score-reject", GOOD_IP, "bare", "a@example.com", ["rcpt@example.net"],
         key.sign(message("a@example.com", "a win for you", body=b"Claim your LOTTERY prize.\r\n"))),
    ]


def live_run(port, ip, helo, mail_from, rcpts, content):
    """One transaction through the live proxy: the replies as the client heard them."""
    with proxy_client(port, ip) as c:
        c.ehlo(helo)
        check_reply(c.cmd(f"MAIL FROM:<{mail_from}>"), 250)
        rcpt_replies = {}
        for r in rcpts:
            rcpt_replies[r] = c.cmd(f"RCPT TO:<{r}>")
        c.expect("DATA", 354)
        c.send(content + b".\r\n")
        final = c.read_reply()
        c.cmd("QUIT")
    return rcpt_replies, final


def enhanced_of(text):
    first = text.split()[0] if text else ""
    return first if first.count(".") == 2 and first[0] in "245" else ""


ACTION_OF_AUDIT = {"relayed": "accept", "rejected": "reject", "tempfailed": "tempfail"}


def test_check_agrees_with_the_live_proxy(postern, make_sink, tmp_path, dns, dkim_key):
    sink = make_sink(final_reply=QUEUE_REPLY)
    rules = tmp_path / "rules.lua"
    rules.write_text(RULES)
    audit = tmp_path / "audit.jsonl"
    sections = auth_sections(dns.address, audit_path=audit, lua={"scripts": [str(rules)]},
                             scores={"add_header": 2, "reject": 10})
    config = write_config(tmp_path / "postern.toml", [{"proxy_protocol": True}], upstream=sink.address,
                          sections=sections)
    proc = postern.start(config=config, listen=())
    port = listener_ports(proc)[0]

    all_cases = cases(dkim_key)
    live = []
    for name, ip, helo, mail_from, rcpts, content in all_cases:
        live.append(live_run(port, ip, helo, mail_from, rcpts, content))

    def records():
        return open(audit).read().splitlines() if os.path.exists(audit) else []
    wait_until(lambda: len(records()) >= len(all_cases), IO_TIMEOUT, message="audit records")
    audits = [json.loads(l) for l in records()]
    relayed = iter(sink.wait_messages(sum(1 for (_, final) in live if final.code == 250)))

    for (name, ip, helo, mail_from, rcpts, content), (rcpt_replies, final), rec in zip(all_cases, live, audits):
        path = tmp_path / f"{name}.eml"
        path.write_bytes(content)
        args = ["check", "--config", config, "--client-ip", ip, "--helo", helo, "--mail-from", mail_from]
        for r in rcpts:
            args += ["--rcpt", r]
        r = run_cli(args + [str(path)])
        assert r.returncode == 0, r.stderr
        off = json.loads(r.stdout)
        what = f"{name}: offline {off}\nlive {final} {rcpt_replies} audit {rec}"
        # Every stage ran, in the session's order.
        ran = [s["stage"] for s in off["stages"]]
        assert ran[:3] == ["connect", "helo", "mail"] and ran.count("rcpt") == len(rcpts), what
        assert ran[-1] in ("data", "eom"), what
        # Verdict, reply, deciding rule.
        assert off["verdict"]["action"] == ACTION_OF_AUDIT[rec["action"]], what
        assert off["reply"]["code"] == final.code, what
        assert off["reply"]["enhanced"] == enhanced_of(final.text), what
        if off["reply"]["by"] == "postern":
            assert off["reply"]["text"] == final.text, what
        assert off["verdict"]["rule"] == rec.get("rule", ""), what
        # Each recipient's reply.
        off_rcpts = {x["rcpt"]: x["reply"] for x in off["rcpts"]}
        for rcpt, reply in rcpt_replies.items():
            assert off_rcpts[rcpt]["code"] == reply.code, what
            if off_rcpts[rcpt]["by"] == "postern":
                assert off_rcpts[rcpt]["text"] == reply.text, what
        # Symbols and score.
        assert [(s["name"], s["score"]) for s in off["verdict"]["symbols"]] == \
            [(s["name"], s["score"]) for s in rec["symbols"]], what
        assert off["verdict"]["score"] == pytest.approx(rec["score"]), what
        # Authenticity results.
        assert off["spf"]["result"] == rec["spf"]["result"], what
        assert (off["dmarc"] or {}).get("result") == (rec.get("dmarc") or {}).get("result"), what
        if final.code != 250:
            continue
        # Every header change, as the MTA received the message.
        got = email.message_from_bytes(next(relayed).content, policy=email.policy.compat32)
        for change in off["header_changes"]:
            assert change["op"] in ("add", "prepend"), what
            values = [" ".join(v.split()) for v in got.get_all(change["name"], [])]
            assert " ".join(change["value"].split()) in values, f"{change} not in {values}\n{what}"
        if off["subject_tag"]:
            assert got["Subject"].startswith(off["subject_tag"] + " "), what
        assert off["envelope"]["recipients"] == [f"{x}" for x in rcpts if rcpt_replies[x].code == 250], what

    # The set covers what it claims: every action and a rule from several stages.
    actions = {ACTION_OF_AUDIT[r["action"]] for r in audits}
    assert actions == {"accept", "reject", "tempfail"}, audits
    assert {"dmarc", "DMARC_FAIL_TEMP", "score"} <= {r.get("rule") for r in audits}, audits
    symbols = {s["name"] for r in audits for s in r["symbols"]}
    assert {"CONNECT_SPOOFER_NET", "HELO_NO_DOT", "MAIL_FROM_NET", "SUBJECT_WIN", "LOTTERY"} <= symbols, audits
