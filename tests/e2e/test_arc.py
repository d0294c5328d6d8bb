"""ARC (RFC 8617) end to end against an independent implementation: chains
sealed by dkimpy's ARC (Debian's python3-dkim, dkim.arc_sign), keys served
by a real unbound on loopback (dns_server.py), postern's verdict read from
the Authentication-Results field the sink receives and from the audit log;
and chains postern seals verified by dkim.arc_verify.

The story of every message: example.com (SPF for 198.51.100.0/24, DKIM s1,
DMARC p=reject) sends to a mailing list, lists.example.org, which tags the
subject and adds a footer -- the DKIM signature breaks -- and seals; the list
(or forwarders after it) relays to postern from 192.0.2.50, which SPF does
not allow. DMARC fails; only ARC can tell the mail is genuine.
"""

import json
import re

import dkim
import pytest

from auth_setup import GOOD_IP, RCPT, audit_records, auth_sections, example_com, proxy_client
from dns_server import DkimKey, serve
from harness import HOSTNAME, check_reply, listener_ports, run_cli, write_config

LIST_IP = "192.0.2.50"
QUEUE_REPLY = "250 2.0.0 Ok: queued as ARC123"
AUTHOR_RESULTS = ("spf=pass smtp.mailfrom=sender@example.com; dkim=pass header.d=example.com; "
                  "dmarc=pass header.from=example.com")


@pytest.fixture(scope="module")
def keys(dkim_key):
    return {
        "author": dkim_key,
        "list": DkimKey("lists.example.org", "arc"),
        "fwd1": DkimKey("fwd1.example.net", "arc", bits=1024),
        "fwd2": DkimKey("fwd2.example.net", "arc", bits=1024),
        "rogue": DkimKey("rogue.example.org", "arc", bits=1024),
        "postern": DkimKey("mx.example.net", "seal"),
    }


@pytest.fixture(scope="module")
def dns(keys):
    yield from serve(example_com() + [k.record() for k in keys.values()])


def start(postern, tmp_path, sink, dns, arc, seal_key=None, name="postern.toml", lua=None, enforce="report"):
    """postern with SPF, DKIM, DMARC (enforce: "reject" where a test is about
    the DMARC override, "report" where it reads the verdict from the relayed
    message), ARC with `arc` and Authentication-Results."""
    audit = tmp_path / (name + ".audit.jsonl")
    sections = auth_sections(dns.address, audit_path=audit, dmarc={"enforce": enforce},
                             arc=dict({"enabled": True, "timeout": 5}, **arc))
    if lua:
        sections["lua"] = {"scripts": [str(lua)]}
    path = write_config(tmp_path / name, [{"proxy_protocol": True}], upstream=sink.address, sections=sections)
    if seal_key:
        key_file = tmp_path / (seal_key.domain + ".pem")
        key_file.write_bytes(seal_key.pem)
        with open(path, "a") as f:
            f.write(f'\n[[arc.sign]]\ndomain = "{seal_key.domain}"\nselector = "{seal_key.selector}"\n'
                    f'key_file = "{key_file}"\n')
    proc = postern.start(config=path, listen=())
    return proc, listener_ports(proc)[0], audit


def original(subject="list post"):
    """The author's message, DKIM-signed by example.com."""
    msg = (b"From: Sender <sender@example.com>\r\nTo: <list@lists.example.org>\r\n"
           b"Subject: " + subject.encode() + b"\r\nDate: Tue, 24 Nov 2026 02:00:00 +0000\r\n"
           b"Message-ID: <" + subject.replace(" ", ".").encode() + b"@example.com>\r\n"
           b"\r\nHello list,\r\n\r\nthis is a post.\r\n")
    return msg


def list_rewrite(msg):
    """What a mailing list does: a subject tag and a footer (DKIM breaks)."""
    msg = msg.replace(b"Subject: ", b"Subject: [list] ", 1)
    return msg + b"-- \r\nlist footer\r\n"


def arc_hop(msg, key, srv_id, cv, results=AUTHOR_RESULTS):
    """One intermediary: its Authentication-Results (with arc=cv for a chain
    it received), then dkimpy's ARC set on top."""
    arc = "" if cv == "none" else f"; arc={cv}"
    msg = f"Authentication-Results: {srv_id}; {results}{arc}\r\n".encode() + msg
    lines = dkim.arc_sign(msg, key.selector.encode(), key.domain.encode(), key.pem, srv_id.encode())
    assert lines, "dkimpy did not seal"
    return b"".join(l if l.endswith(b"\r\n") else l + b"\r\n" for l in lines) + msg


def list_message(keys, subject="list post"):
    """Signed by the author, rewritten and sealed (i=1) by the list."""
    return arc_hop(list_rewrite(keys["author"].sign(original(subject))), keys["list"], "lists.example.org", "none")


def chain(keys, hops, subject):
    """The list's set, then `hops` forwarders alternating fwd1 / fwd2 (i=2..)."""
    msg = list_message(keys, subject)
    for n in range(hops):
        k = keys["fwd1"] if n % 2 == 0 else keys["fwd2"]
        msg = arc_hop(msg, k, f"mx{n}.{k.domain}", "pass")
    return msg


def send(port, content, code=250, mail_from="list-bounces@lists.example.org"):
    with proxy_client(port, LIST_IP) as c:
        c.ehlo("lists.example.org")
        r = c.send_message(mail_from, [RCPT], content)
        check_reply(r, code)
        c.expect("QUIT", 221)
    return r


def our_ar(content):
    text = content.decode("latin-1")
    for m in re.finditer(r"^Authentication-Results: (.*?)\r\n(?![ \t])", text, re.S | re.M):
        v = re.sub(r"\s+", " ", m.group(1))
        if v.startswith(HOSTNAME + ";"):
            return v
    raise AssertionError("no Authentication-Results of postern in:\n" + text[:1500])


def dnsfunc_for(*ks):
    table = {f"{k.selector}._domainkey.{k.domain}.".encode(): f"v=DKIM1; k=rsa; p={k.public_b64}".encode()
             for k in ks}

    def lookup(name, timeout=5):
        if not name.endswith(b"."):
            name += b"."
        return table.get(name.lower())
    return lookup


# --- verification --------------------------------------------------------


def test_one_hop_from_trusted_list_passes_and_overrides_dmarc(postern, make_sink, tmp_path, dns, keys):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {"trusted_sealers": ["lists.example.org"]}, enforce="reject")
    msg = list_message(keys, "trusted one")
    # dkimpy itself agrees the chain passes
    assert dkim.arc_verify(msg, dnsfunc=dnsfunc_for(keys["list"]))[0] == dkim.CV_Pass
    send(port, msg)
    [got] = sink.wait_messages(1)
    ar = our_ar(got.content)
    assert f"arc=pass (i=1 as=lists.example.org) smtp.remote-ip={LIST_IP} header.oldest-pass=0" in ar, ar
    assert "dkim=fail" in ar, ar  # the list broke the author's signature
    assert re.search(r"dmarc=fail \(p=reject dis=none override=local_policy: arc=pass as=lists\.example\.org "
                     r"i=1 dmarc=pass\)", ar), ar
    [rec] = audit_records(audit, 1)
    assert rec["action"] == "relayed"
    assert rec["arc"]["result"] == "pass" and rec["arc"]["count"] == 1 and rec["arc"]["oldest_pass"] == 0
    assert rec["arc"]["trusted_sealer"] == "lists.example.org" and rec["arc"]["trusted_saw"] == "dmarc=pass"
    [s] = rec["arc"]["sets"]
    assert (s["i"], s["sealer"], s["cv"], s["ams_valid"], s["as_valid"]) == (1, "lists.example.org", "none", True, True)
    assert rec["dmarc"]["result"] == "fail" and rec["dmarc"]["disposition"] == "none"
    assert rec["dmarc"]["override"] == {"type": "local_policy",
                                        "comment": "arc=pass as=lists.example.org i=1 dmarc=pass"}
    names = {s["name"] for s in rec["symbols"]}
    assert {"ARC_PASS", "DMARC_FAIL", "DMARC_ARC_OVERRIDE"} <= names, names


def test_same_chain_from_untrusted_sealer_is_rejected(postern, make_sink, tmp_path, dns, keys):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {"trusted_sealers": ["fwd1.example.net"]}, enforce="reject")
    send(port, list_message(keys, "untrusted"), code=550)
    assert sink.messages == []
    [rec] = audit_records(audit, 1)
    assert rec["action"] == "rejected"
    assert rec["arc"]["result"] == "pass" and "trusted_sealer" not in rec["arc"]
    assert rec["dmarc"]["disposition"] == "reject" and "override" not in rec["dmarc"]


def test_trusted_sealer_that_saw_dmarc_fail_does_not_override(postern, make_sink, tmp_path, dns, keys):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {"trusted_sealers": ["lists.example.org"]}, enforce="reject")
    msg = arc_hop(list_rewrite(original("list saw fail")), keys["list"], "lists.example.org", "none",
                  results="spf=fail smtp.mailfrom=sender@example.com; dkim=none; dmarc=fail header.from=example.com")
    send(port, msg, code=550)
    [rec] = audit_records(audit, 1)
    assert rec["arc"]["result"] == "pass" and "trusted_sealer" not in rec["arc"]


@pytest.mark.parametrize("hops", [1, 2, 5])
def test_several_hops_pass(postern, make_sink, tmp_path, dns, keys, hops):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {"trusted_sealers": ["lists.example.org"]}, enforce="reject")
    msg = chain(keys, hops, f"hops {hops}")
    assert dkim.arc_verify(msg, dnsfunc=dnsfunc_for(keys["list"], keys["fwd1"], keys["fwd2"]))[0] == dkim.CV_Pass
    send(port, msg)
    [got] = sink.wait_messages(1)
    ar = our_ar(got.content)
    n = hops + 1
    last = "fwd1.example.net" if hops % 2 == 1 else "fwd2.example.net"
    assert f"arc=pass (i={n} as={last})" in ar and "header.oldest-pass=0" in ar, ar
    # the list (i=1) is trusted and saw the author pass
    assert "override=local_policy: arc=pass as=lists.example.org i=1 dmarc=pass" in ar, ar
    [rec] = audit_records(audit, 1)
    assert [s["sealer"] for s in rec["arc"]["sets"]][:2] == ["lists.example.org", "fwd1.example.net"]
    assert all(s["as_valid"] and s["ams_valid"] for s in rec["arc"]["sets"])


def test_fifty_sets_pass_and_a_fifty_first_fails(postern, make_sink, tmp_path, dns, keys):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {})
    msg = chain(keys, 49, "fifty")
    send(port, msg)
    [got] = sink.wait_messages(1)
    assert "arc=pass (i=50 as=fwd1.example.net)" in our_ar(got.content)
    # dkimpy refuses to seal a 51st set: a forged one with i=51 on top
    head = msg.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    sets = re.findall(rb"^(ARC-[A-Za-z-]+: i=50;[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)", head, re.M)
    assert len(sets) == 3, sets
    send(port, b"".join(s.replace(b"i=50;", b"i=51;", 1) for s in sets) + msg)
    got = sink.wait_messages(2)[1]
    ar = our_ar(got.content)
    assert "arc=fail (ARC-Seal without a valid i= 1-50)" in ar, ar
    assert "header.oldest-pass" not in ar


def test_changed_body_after_seal_fails_the_newest_ams(postern, make_sink, tmp_path, dns, keys):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {"trusted_sealers": ["lists.example.org"]}, enforce="reject")
    msg = chain(keys, 1, "body changed").replace(b"this is a post.", b"this is a p0st.")
    send(port, msg, code=550)   # no valid chain: no override, DMARC p=reject applies
    [rec] = audit_records(audit, 1)
    assert rec["arc"]["result"] == "fail"
    assert rec["arc"]["reason"].startswith("ARC-Message-Signature i=2: body hash does not match"), rec["arc"]


@pytest.mark.parametrize("field", [b"Subject: [list] ", b"From: Sender"])
def test_changed_signed_header_fails_the_newest_ams(postern, make_sink, tmp_path, dns, keys, field):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {})
    msg = chain(keys, 1, "header changed").replace(field, field + b"X", 1)
    send(port, msg)
    [got] = sink.wait_messages(1)
    ar = our_ar(got.content)
    assert "arc=fail (ARC-Message-Signature i=2: signature does not verify" in ar, ar


def test_older_ams_broken_is_oldest_pass(postern, make_sink, tmp_path, dns, keys):
    """The list's AMS (i=1) no longer verifies after the body changed at hop
    2, which then sealed: the chain passes, oldest-pass is 2 (RFC 8617 5.2)."""
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {})
    msg = list_message(keys, "oldest pass").replace(b"list footer", b"list footer, changed by fwd1")
    msg = arc_hop(msg, keys["fwd1"], "mx.fwd1.example.net", "pass")
    send(port, msg)
    [got] = sink.wait_messages(1)
    ar = our_ar(got.content)
    assert "arc=pass (i=2 as=fwd1.example.net)" in ar and "header.oldest-pass=2" in ar, ar
    [rec] = audit_records(audit, 1)
    assert [s["ams_valid"] for s in rec["arc"]["sets"]] == [False, True]


def test_broken_seal_fails(postern, make_sink, tmp_path, dns, keys):
    """The list's ARC-Authentication-Results changed: only the seals cover it."""
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {})
    msg = chain(keys, 1, "seal broken")
    msg = msg.replace(b"ARC-Authentication-Results: i=1; lists.example.org;",
                      b"ARC-Authentication-Results: i=1; lists.example.org ;", 1)
    assert msg.count(b"lists.example.org ;") == 1
    send(port, msg)
    [got] = sink.wait_messages(1)
    ar = our_ar(got.content)
    assert "arc=fail (ARC-Seal i=2: signature does not verify)" in ar, ar


def test_seal_by_a_key_not_published_fails(postern, make_sink, tmp_path, dns, keys):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {})
    stranger = DkimKey("unpublished.example.org", "arc", bits=1024)
    msg = arc_hop(list_message(keys, "no key"), stranger, "mx.unpublished.example.org", "pass")
    send(port, msg)
    [got] = sink.wait_messages(1)
    assert "arc=fail (ARC-Message-Signature i=2: no key at arc._domainkey.unpublished.example.org" in \
        our_ar(got.content)


def renumber(msg, old, new):
    """Every ARC field of set `old` relabelled i=`new` (its signatures break too,
    but the structure check comes first)."""
    out = re.sub(rb"^(ARC-(?:Seal|Message-Signature): )i=%d;" % old, rb"\1i=%d;" % new, msg, flags=re.M)
    return re.sub(rb"^(ARC-Authentication-Results: )i=%d;" % old, rb"\1i=%d;" % new, out, flags=re.M)


@pytest.mark.parametrize("case, reason", [
    ("gap", "ARC set i=2 is missing"),
    ("duplicate", "two ARC-Seal fields with i=1"),
    ("missing_aar", "ARC set i=2 has no ARC-Authentication-Results"),
    ("zero", "ARC-Seal without a valid i= (1-50)"),
    ("cv_none_later", "ARC-Seal i=2 has cv=none, not pass"),
    ("cv_pass_first", "ARC-Seal i=1 has cv=pass, not none"),
])
def test_broken_structure_fails(postern, make_sink, tmp_path, dns, keys, case, reason):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {"trusted_sealers": ["lists.example.org"]}, enforce="reject")
    msg = chain(keys, 1, "structure " + case)
    if case == "gap":
        msg = renumber(msg, 2, 3)
    elif case == "duplicate":
        first = re.search(rb"^ARC-Seal: i=1;.*?\r\n(?![ \t])", msg, re.S | re.M).group(0)
        msg = first + msg
    elif case == "missing_aar":
        msg = re.sub(rb"^ARC-Authentication-Results: i=2;.*?\r\n(?![ \t])", b"", msg, count=1, flags=re.S | re.M)
    elif case == "zero":
        msg = renumber(msg, 1, 0)
    elif case == "cv_none_later":
        msg = re.sub(rb"(ARC-Seal: i=2; cv=)pass", rb"\1none", msg)
    elif case == "cv_pass_first":
        msg = re.sub(rb"(ARC-Seal: i=1; cv=)none", rb"\1pass", msg)
    assert dkim.arc_verify(msg, dnsfunc=dnsfunc_for(keys["list"], keys["fwd1"]))[0] != dkim.CV_Pass
    send(port, msg, code=550)   # the list's pass does not count: DMARC p=reject
    [rec] = audit_records(audit, 1)
    assert rec["arc"]["result"] == "fail" and rec["arc"]["reason"] == reason, rec["arc"]
    assert rec["arc"]["sets"] == []


def test_cv_fail_propagates(postern, make_sink, tmp_path, dns, keys):
    """A forwarder that found the chain broken seals with cv=fail (dkimpy does
    that when its A-R says arc=fail); a later hop's cv=pass cannot revive it."""
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {"trusted_sealers": ["lists.example.org"]}, enforce="reject")
    msg = arc_hop(list_message(keys, "cv fail"), keys["fwd1"], "mx.fwd1.example.net", "fail")
    assert b"cv=fail" in msg
    send(port, msg, code=550)
    msg2 = arc_hop(msg, keys["fwd2"], "mx.fwd2.example.net", "pass")
    send(port, msg2, code=550)
    recs = audit_records(audit, 2)
    assert recs[0]["arc"]["reason"] == "ARC-Seal i=2 has cv=fail", recs[0]["arc"]
    assert recs[1]["arc"]["result"] == "fail" and "cv=fail" in recs[1]["arc"]["reason"], recs[1]["arc"]


def test_message_without_arc_is_none(postern, make_sink, tmp_path, dns, keys):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {})
    send(port, keys["author"].sign(original("no arc")))  # unchanged: the author's DKIM passes
    [rec] = audit_records(audit, 1)
    assert rec["arc"] == {"result": "none", "count": 0, "oldest_pass": 0, "reason": "", "sets": []}


# --- sealing -------------------------------------------------------------


def test_postern_seals_a_fresh_chain_dkimpy_verifies(postern, make_sink, tmp_path, dns, keys):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {"seal": "all"}, seal_key=keys["postern"])
    # from the author's own network: SPF, DKIM, DMARC pass, no chain yet
    with proxy_client(port, GOOD_IP) as c:
        c.ehlo("mail.example.com")
        check_reply(c.send_message("sender@example.com", [RCPT], keys["author"].sign(original("fresh"))), 250)
    [got] = sink.wait_messages(1)
    assert got.content.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=mx.example.net; s=seal;"), \
        got.content[:300]
    cv, results, why = dkim.arc_verify(got.content, dnsfunc=dnsfunc_for(keys["postern"]))
    assert cv == dkim.CV_Pass, (why, results)
    aar = re.search(rb"^ARC-Authentication-Results: (.*?)\r\n(?![ \t])", got.content, re.S | re.M).group(1)
    aar = re.sub(rb"\s+", b" ", aar).decode()
    assert aar.startswith(f"i=1; {HOSTNAME}; spf=pass") and "dkim=pass" in aar and "dmarc=pass" in aar, aar
    assert "arc=none" in aar, aar
    line = proc.wait_for_log("arc-seal")
    assert line.get("result") == "sealed" and line.get("i") == "1", line


def test_postern_extends_a_chain_dkimpy_verifies(postern, make_sink, tmp_path, dns, keys):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns,
                              {"seal": "all", "trusted_sealers": ["lists.example.org"]}, seal_key=keys["postern"])
    send(port, chain(keys, 1, "extend"))
    [got] = sink.wait_messages(1)
    assert got.content.startswith(b"ARC-Seal: i=3; cv=pass;"), got.content[:200]
    cv, results, why = dkim.arc_verify(
        got.content, dnsfunc=dnsfunc_for(keys["postern"], keys["list"], keys["fwd1"]))
    assert cv == dkim.CV_Pass, (why, results)
    assert [r["instance"] for r in results] == [3, 2, 1]
    # the next hop reads postern's view of the chain
    aar = re.search(rb"^ARC-Authentication-Results: i=3; (.*?)\r\n(?![ \t])", got.content, re.S | re.M).group(1)
    assert b"arc=pass" in re.sub(rb"\s+", b" ", aar)


def test_postern_does_not_extend_a_failed_chain(postern, make_sink, tmp_path, dns, keys):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {"seal": "all"}, seal_key=keys["postern"])
    msg = chain(keys, 1, "no extend").replace(b"this is a post.", b"this is a p0st.")
    send(port, msg)
    [got] = sink.wait_messages(1)
    assert not re.search(rb"^ARC-Seal: i=3", got.content, re.M)
    line = proc.wait_for_log("arc-seal")
    assert line.get("result") == "skipped" and "fails" in line.get("reason"), line


def test_seal_modified_only_seals_changed_messages(postern, make_sink, tmp_path, dns, keys):
    """seal = "modified": a subject tag (which breaks the author's DKIM) gets
    a seal dkimpy verifies; an unchanged message none."""
    sink = make_sink(final_reply=QUEUE_REPLY)
    rules = tmp_path / "tag.lua"
    rules.write_text('postern.rule{ name = "TAG", stage = "eom", fn = function(ctx)\n'
                     '  if (ctx.headers:first("Subject") or ""):find("tagme", 1, true) then ctx:tag_subject("[EXT]") end\n'
                     'end }\n')
    proc, port, audit = start(postern, tmp_path, sink, dns, {"seal": "modified"}, seal_key=keys["postern"],
                              lua=rules)
    for subject in ("unchanged", "tagme please"):
        with proxy_client(port, GOOD_IP) as c:
            c.ehlo("mail.example.com")
            check_reply(c.send_message("sender@example.com", [RCPT], keys["author"].sign(original(subject))), 250)
    plain, tagged = sink.wait_messages(2)
    assert b"ARC-Seal:" not in plain.content
    assert b"Subject: [EXT] tagme please" in tagged.content
    assert tagged.content.startswith(b"ARC-Seal: i=1; cv=none;"), tagged.content[:200]
    cv, results, why = dkim.arc_verify(tagged.content, dnsfunc=dnsfunc_for(keys["postern"]))
    assert cv == dkim.CV_Pass, (why, results)


# --- Lua, postern check --------------------------------------------------

ARC_RULE = r"""
postern.rule{ name = "ARC_SEEN", stage = "eom", fn = function(ctx)
  local a = ctx.arc
  if not a then ctx:add_header("X-Arc-Seen", "nil") return end
  local sets = {}
  for _, s in ipairs(a.sets) do
    sets[#sets + 1] = s.instance .. ":" .. s.sealer .. ":" .. s.selector .. ":" .. s.ams_domain .. ":" .. s.cv
                      .. ":" .. tostring(s.ams_valid) .. ":" .. tostring(s.as_valid)
  end
  ctx:add_header("X-Arc-Seen", a.result .. " count=" .. a.count .. " oldest=" .. a.oldest_pass ..
                 " trusted=" .. a.trusted_sealer .. " sealers=" .. table.concat(a.sealers, ",") ..
                 " sets=" .. table.concat(sets, " ") .. " reason=" .. a.reason)
end }
"""


def test_lua_ctx_arc_and_postern_check_agree_with_the_audit_log(postern, make_sink, tmp_path, dns, keys):
    sink = make_sink(final_reply=QUEUE_REPLY)
    rules = tmp_path / "arc.lua"
    rules.write_text(ARC_RULE)
    proc, port, audit = start(postern, tmp_path, sink, dns, {"trusted_sealers": ["lists.example.org"]},
                              lua=rules, enforce="reject")
    msg = chain(keys, 1, "lua and check")
    send(port, msg)
    [got] = sink.wait_messages(1)
    seen = re.search(rb"^X-Arc-Seen: (.*?)\r\n(?![ \t])", got.content, re.S | re.M).group(1)
    seen = re.sub(rb"\s+", b" ", seen).decode()
    assert seen == ("pass count=2 oldest=0 trusted=lists.example.org sealers=lists.example.org,fwd1.example.net "
                    "sets=1:lists.example.org:arc:lists.example.org:none:true:true "
                    "2:fwd1.example.net:arc:fwd1.example.net:pass:true:true reason="), seen
    [rec] = audit_records(audit, 1)

    path = tmp_path / "chain.eml"
    path.write_bytes(msg)
    base = ["check", "--client-ip", LIST_IP, "--helo", "lists.example.org", "--mail-from",
            "list-bounces@lists.example.org"]
    config = str(tmp_path / "postern.toml")
    for args in (["--config", config, "--rcpt", RCPT], ["--config", config, "--auth-only"]):
        r = run_cli(base + args + [str(path)])
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["arc"] == rec["arc"], (args, out["arc"], rec["arc"])
    # without --config: ARC runs (like SPF, DKIM, DMARC), but no sealer is trusted
    r = run_cli(base + ["--dns-server", dns.address, str(path)])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["arc"]["result"] == "pass" and out["arc"]["count"] == 2 and "trusted_sealer" not in out["arc"]
    assert "arc=pass (i=2 as=fwd1.example.net)" in out["authentication_results"]


def test_trusted_set_copied_onto_a_forgery_does_not_override(postern, make_sink, tmp_path, dns, keys):
    """A genuine list post's ARC set, the body replaced by a forger who seals
    i=2 with a key of their own: the chain passes (the newest AMS and every
    seal verify), but the list's AMS does not, so what the list saw says
    nothing about this message: DMARC p=reject applies."""
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start(postern, tmp_path, sink, dns, {"trusted_sealers": ["lists.example.org"]},
                              enforce="reject")
    forged = list_message(keys, "copied set").replace(b"this is a post.", b"please wire the money.")
    forged = arc_hop(forged, keys["rogue"], "mx.rogue.example.org", "pass")
    send(port, forged, code=550)
    [rec] = audit_records(audit, 1)
    assert rec["arc"]["result"] == "pass" and rec["arc"]["oldest_pass"] == 2, rec["arc"]
    assert "trusted_sealer" not in rec["arc"] and "override" not in rec["dmarc"]
