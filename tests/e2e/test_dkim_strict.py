"""DKIM by the letter (issue 15): signatures crafted here tag by tag (the
cryptography done with dkimpy's canonicalization and RSA, so only the tags
differ from a valid signature), verified by a live postern behind a real
unbound (dns_server.py), by `postern check` on the same bytes, and by dkimpy
as the independent reference.

The client is not allowed by example.com's SPF and _dmarc.example.com says
p=reject, so a signature that passes gets the message relayed (250) and one
that does not gets it refused (550 5.7.1): the verdict, not only a header."""

import base64
import hashlib
import json
import re

import dkim
import dkim.canonicalization as canon
import dkim.crypto
import pytest

from auth_setup import QUEUE_REPLY, RCPT, SPOOF_IP, auth_sections, example_com, proxy_client
from dns_server import serve, txt_record
from harness import check_reply, listener_ports, run_cli, write_config


def key_records(key):
    p = key.public_b64
    return {
        "s1": "v=DKIM1; k=rsa; p=" + p,
        "ts": "v=DKIM1; k=rsa; t=s; p=" + p,                  # no subdomain i= (RFC 6376 3.6.1)
        "ked": "v=DKIM1; k=ed25519; p=" + p,                  # k= does not match a=rsa-sha256
        "dup": "v=DKIM1; k=rsa; k=rsa; p=" + p,               # an invalid key tag-list
    }


@pytest.fixture(scope="module")
def dns(dkim_key):
    yield from serve(example_com() + [txt_record(f"{sel}._domainkey.example.com", rec)
                                      for sel, rec in key_records(dkim_key).items()])


def fields_of(head):
    """(name, value-with-CRLF) of each header field, as dkimpy takes them."""
    out = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            out[-1] = (out[-1][0], out[-1][1] + line + b"\r\n")
        else:
            name, value = line.split(b":", 1)
            out.append((name, value + b"\r\n"))
    return out


def craft(msg, key, tags, signed=(b"from", b"to", b"subject"), length=None, mangle_b=None):
    """msg with a relaxed/relaxed rsa-sha256 DKIM-Signature whose tag-list is
    `tags` (a template: {bh} is the body hash, {h} the signed names; b= is
    appended last)."""
    head, body = msg.split(b"\r\n\r\n", 1)
    cbody = canon.Relaxed.canonicalize_body(body)
    if length is not None:
        cbody = cbody[:length]
    bh = base64.b64encode(hashlib.sha256(cbody).digest()).decode()
    value = tags.format(bh=bh, h=":".join(n.decode() for n in signed)) + " b="
    fields = fields_of(head)
    data = b""
    used = set()
    for name in signed:                     # the last unused occurrence first (RFC 6376 5.4.2)
        for i in range(len(fields) - 1, -1, -1):
            if i not in used and fields[i][0].strip().lower() == name:
                used.add(i)
                n, v = canon.Relaxed.canonicalize_headers([fields[i]])[0]
                data += n + b":" + v
                break
    n, v = canon.Relaxed.canonicalize_headers([(b"DKIM-Signature", b" " + value.encode() + b"\r\n")])[0]
    data += n + b":" + v.rstrip(b"\r\n")
    sig = dkim.crypto.RSASSA_PKCS1_v1_5_sign(hashlib.sha256(data), dkim.crypto.parse_pem_private_key(key.pem))
    b = base64.b64encode(sig).decode()
    if mangle_b:
        b = mangle_b(b)
    return b"DKIM-Signature: " + value.encode() + b.encode() + b"\r\n" + msg


def message(from_line=b"From: Sender <sender@example.com>\r\n", body=b"Hello,\r\n\r\nA test.\r\n"):
    return (from_line + b"To: <" + RCPT.encode() + b">\r\nSubject: strict\r\n"
            b"Date: Tue, 24 Nov 2026 02:00:00 +0000\r\nMessage-ID: <strict@example.com>\r\n\r\n" + body)


BASE = "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s={sel}; h={{h}}; bh={{bh}};"


def dkimpy_verdict(msg, key):
    records = key_records(key)

    def dnsfunc(name, timeout=5):
        sel = name.decode().split(".")[0]
        return records.get(sel, "").encode()
    try:
        return dkim.verify(msg, dnsfunc=dnsfunc)
    except Exception:
        return False


def start(postern, make_sink, tmp_path, dns):
    sink = make_sink(final_reply=QUEUE_REPLY)
    config = write_config(tmp_path / "postern.toml", [{"proxy_protocol": True}], upstream=sink.address,
                          sections=auth_sections(dns.address))
    proc = postern.start(config=config, listen=())
    return sink, listener_ports(proc)[0]


def live(port, msg, bdat=False):
    with proxy_client(port, SPOOF_IP) as c:
        c.ehlo("spoofer.example")
        if not bdat:
            return c.send_message("x@example.com", [RCPT], msg)
        c.expect("MAIL FROM:<x@example.com>", 250)
        c.expect(f"RCPT TO:<{RCPT}>", 250)
        c.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
        return c.read_reply()


def offline(tmp_path, dns, msg):
    path = tmp_path / "m.eml"
    path.write_bytes(msg)
    r = run_cli(["check", "--client-ip", SPOOF_IP, "--helo", "spoofer.example", "--mail-from", "x@example.com",
                 "--dns-server", dns.address, str(path)])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# name -> (signature template, key selector, whether it passes per the RFCs)
CASES = {
    "valid": (BASE, "s1", True),
    "l= with spaces": (BASE + " l = {{length}};", "s1", True),
    "duplicated d=": (BASE + " d=example.com;", "s1", False),
    "duplicated c=": ("v=1; a=rsa-sha256; c=relaxed/relaxed; c=relaxed/relaxed; d=example.com; s={sel};"
                      " h={{h}}; bh={{bh}};", "s1", False),
    "duplicated unknown tag": (BASE + " x1=a; x1=b;", "s1", False),
    "unknown q=": (BASE + " q=dns/other;", "s1", False),
    "known q= among others": (BASE + " q=dns/txt:other/x;", "s1", True),
    "t=s with a subdomain i=": (BASE + " i=@sub.example.com;", "ts", False),
    "t=s with i= at d=": (BASE + " i=ceo@example.com;", "ts", True),
    "k= not matching a=": (BASE, "ked", False),
    "key record with a duplicated tag": (BASE, "dup", False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_signature_tags_by_the_letter_live_and_check_agree(postern, make_sink, tmp_path, dns, dkim_key, case):
    template, sel, passes = CASES[case]
    msg = message()
    body_len = len(canon.Relaxed.canonicalize_body(msg.split(b"\r\n\r\n", 1)[1]))
    signed = craft(msg, dkim_key, template.format(sel=sel).replace("{length}", str(body_len)),
                   length=body_len if "length" in template else None)
    sink, port = start(postern, make_sink, tmp_path, dns)
    r = live(port, signed)
    out = offline(tmp_path, dns, signed)
    results = [d["result"] for d in out["dkim"]]
    if passes:
        check_reply(r, 250)
        assert results == ["pass"], out["dkim"]
    else:
        check_reply(r, 550, "5.7.1")
        assert results and "pass" not in results, out["dkim"]
    if case not in DKIMPY_DIFFERS:
        assert dkimpy_verdict(signed, dkim_key) == passes, case


# Where dkimpy (Debian 12's) is not the RFCs' reading: it takes q= as one
# value (RFC 6376 3.5 makes it a colon-separated list of methods, dns/txt
# among them is enough), and it does not apply a key's t=s to i= (3.6.1).
DKIMPY_DIFFERS = {"known q= among others", "t=s with a subdomain i="}


def test_b_with_non_base64_characters_is_not_pass(postern, make_sink, tmp_path, dns, dkim_key):
    """dkimpy decodes b= leniently (invalid characters skipped) and says
    pass; RFC 6376 3.5 makes b= a base64string, so postern does not."""
    signed = craft(message(), dkim_key, BASE.format(sel="s1"), mangle_b=lambda b: b[:20] + "!*" + b[20:])
    sink, port = start(postern, make_sink, tmp_path, dns)
    check_reply(live(port, signed), 550, "5.7.1")
    out = offline(tmp_path, dns, signed)
    assert [d["result"] for d in out["dkim"]] == ["permerror"], out["dkim"]
    assert "base64" in out["dkim"][0]["reason"]


def test_relaxed_header_canonicalization_removes_wsp_before_the_colon(postern, make_sink, tmp_path, dns, dkim_key):
    msg = message(from_line=b"From : Sender <sender@example.com>\r\n")
    signed = craft(msg, dkim_key, BASE.format(sel="s1"))
    # dkimpy canonicalizes "From :" right (3.4.2) but looks the field up by
    # "from " and so never finds it: it says fail, the RFC says pass.
    sink, port = start(postern, make_sink, tmp_path, dns)
    check_reply(live(port, signed), 250)
    assert [d["result"] for d in offline(tmp_path, dns, signed)["dkim"]] == ["pass"]


def test_rsa_sha1_is_never_pass_nor_aligned(postern, make_sink, tmp_path, dns, dkim_key):
    msg = message()
    signed = dkim.sign(msg, b"s1", b"example.com", dkim_key.pem, include_headers=[b"from", b"to", b"subject"],
                       canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=b"rsa-sha1") + msg
    sink, port = start(postern, make_sink, tmp_path, dns)
    check_reply(live(port, signed), 550, "5.7.1")    # DMARC: nothing aligned passes
    out = offline(tmp_path, dns, signed)
    assert [d["result"] for d in out["dkim"]] == ["policy"], out["dkim"]
    assert out["dmarc"]["result"] == "fail"


@pytest.mark.parametrize("ending", ["no final newline", "final newline", "white space, no final newline"])
def test_a_body_without_final_newline_live_and_check_agree(postern, make_sink, tmp_path, dns, dkim_key, ending):
    """Live (BDAT, whose last line then gets its CRLF) and `postern check` (a
    file ending the same way) agree with dkimpy on the body as relayed."""
    tail = {"no final newline": b"", "final newline": b"\r\n", "white space, no final newline": b" \t"}[ending]
    body = b"Hello,\r\n\r\nno newline at the end" + tail
    msg = message(body=body)
    # Signed over the body as it is relayed: with its last line ended.
    relayed = msg if msg.endswith(b"\r\n") else msg + b"\r\n"
    signed = craft(relayed, dkim_key, BASE.format(sel="s1"))[:-2 if relayed != msg else None]
    expected = dkimpy_verdict(signed + (b"\r\n" if relayed != msg else b""), dkim_key)
    assert expected
    sink, port = start(postern, make_sink, tmp_path, dns)
    check_reply(live(port, signed, bdat=True), 250 if expected else 550)
    assert [d["result"] for d in offline(tmp_path, dns, signed)["dkim"]] == ["pass" if expected else "fail"]
