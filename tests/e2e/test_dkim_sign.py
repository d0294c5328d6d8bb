"""DKIM signing (RFC 6376) of postern's own users' mail: authenticated
sessions and clients in [dkim] sign_networks. Keys are made by openssl; the
RecordingSink's copy of every relayed message is verified by dkimpy (an
independent implementation) against the public key postern's documented
`openssl` recipe yields, served through dkimpy's dnsfunc.
"""

import base64
import json
import re
import subprocess

import dkim
import pytest

from harness import (IO_TIMEOUT, SmtpClient, check_reply, wait_until, listener_ports, make_cert, run_cli, run_swaks,
                     write_config)

USER = "alice"
PASSWORD = "S3cr3t-pW-9e1a77"

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def rsa_key(directory, name, bits=2048):
    path = directory / f"{name}.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}",
                    "-out", str(path)], check=True, capture_output=True)
    # docs/authentication.md: the p= of the TXT record
    der = subprocess.run(["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return str(path), "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def ed25519_key(directory, name):
    path = directory / f"{name}.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ED25519", "-out", str(path)], check=True,
                   capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    # RFC 8463: the raw 32-octet key, the last 32 octets of the DER SubjectPublicKeyInfo
    return str(path), "v=DKIM1; k=ed25519; p=" + base64.b64encode(der[-32:]).decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("dkim-keys")
    org_key, org_txt = rsa_key(d, "org")
    net_key, net_txt = rsa_key(d, "net")
    return {
        "files": {"example.org": ("mail2026", org_key), "example.net": ("ed1", net_key)},
        "dns": {"mail2026._domainkey.example.org.": org_txt, "ed1._domainkey.example.net.": net_txt},
    }


def dnsfunc_for(keys):
    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        if not name.endswith("."):
            name += "."
        txt = keys["dns"].get(name)
        return txt.encode() if txt else None
    return dnsfunc


def start(postern, sink, tmp_path, keys, dkim_section=None, listeners=({},), tls=None, lua=None):
    # The audit record says whether postern signed (issue 17).
    sections = {"dkim": dkim_section or {}, "audit": {"path": str(tmp_path / "audit.jsonl"), "fsync": "always"}}
    if lua:
        script = tmp_path / "rules.lua"
        script.write_text(lua)
        sections["lua"] = {"scripts": [str(script)]}
    cfg = write_config(tmp_path / "postern.toml", list(listeners), upstream=sink.address, tls=tls,
                       sections=sections)
    with open(cfg, "a") as f:
        for domain, (selector, key_file) in keys["files"].items():
            f.write(f'\n[[dkim.sign]]\ndomain = "{domain}"\nselector = "{selector}"\nkey_file = "{key_file}"\n')
    p = postern.start(config=cfg, listen=())
    return p, listener_ports(p)


def message(sender, subject="signed", extra=""):
    return (f"From: Alice <{sender}>\r\nTo: bob@example.com\r\nSubject: {subject}\r\n"
            f"Date: Tue, 24 Nov 2026 05:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}@example>\r\n"
            f"{extra}\r\n"
            "First line of the body.\r\n\r\n  indented line with trailing space \r\n"
            ".. a line that was dot-stuffed\r\n\r\n\r\n").encode()


def audit_signed(tmp_path):
    """The "signed" field of the first audit record."""
    path = tmp_path / "audit.jsonl"
    wait_until(lambda: path.exists() and path.read_text().strip(), IO_TIMEOUT, message="an audit record")
    return json.loads(path.read_text().splitlines()[0])["signed"]


def send(port, sender, content):
    with SmtpClient(port) as c:
        c.ehlo()
        check_reply(c.send_message(sender, ["bob@example.com"], content), 250)


def signature_tags(content):
    text = content.decode("latin-1")
    m = re.search(r"^DKIM-Signature:(.*?)\r\n(?![ \t])", text, re.S | re.M)
    assert m, text[:500]
    value = re.sub(r"\s+", "", m.group(1))
    return dict(t.split("=", 1) for t in value.split(";") if "=" in t)


def test_internal_network_is_signed_and_verifies(postern, sink, tmp_path, keys):
    p, (port,) = start(postern, sink, tmp_path, keys, {"sign_networks": ["127.0.0.0/8"]})
    send(port, "alice@example.org", message("alice@example.org"))
    [m] = sink.wait_messages(1)
    # the signature is the first field, above postern's Received (which it does not cover)
    assert m.content.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;")
    assert re.search(rb"\r\nReceived: from client\.example ", m.content)
    tags = signature_tags(m.content)
    assert tags["d"] == "example.org" and tags["s"] == "mail2026"
    signed = [h.lower() for h in tags["h"].split(":")]
    assert signed.count("from") == 2, tags["h"]  # oversigned: no second From can be added
    assert "received" not in signed and "subject" in signed and "message-id" in signed
    assert dkim.verify(m.content, dnsfunc=dnsfunc_for(keys))
    line = p.wait_for_log("dkim-sign")
    assert line.get("result") == "signed" and line.get("domain") == "example.org", line
    assert audit_signed(tmp_path) is True


def test_external_sender_is_not_signed(postern, sink, tmp_path, keys):
    # 127.0.0.1 is outside the internal networks and the session is not authenticated
    p, (port,) = start(postern, sink, tmp_path, keys, {"sign_networks": ["192.0.2.0/24", "2001:db8::/32"]})
    send(port, "alice@example.org", message("alice@example.org", "external"))
    [m] = sink.wait_messages(1)
    assert b"DKIM-Signature" not in m.content
    assert m.content.startswith(b"Received: from client.example ")
    p.wait_for_log("message")
    assert not p.events("dkim-sign")
    assert audit_signed(tmp_path) is False


def test_authenticated_session_is_signed(postern, make_sink, tmp_path, keys):
    sink = make_sink(auth=(USER, PASSWORD), auth_required=True)
    cert = make_cert(tmp_path, "dkim")
    p, (port,) = start(postern, sink, tmp_path, keys, {"sign_authenticated": True},
                       listeners=({"tls": "starttls", "auth": "passthrough"},),
                       tls={"cert_file": cert[0], "key_file": cert[1]})
    r = run_swaks(["--server", f"127.0.0.1:{port}", "--tls", "--ehlo", "client.example",
                   "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD,
                   "--from", "alice@example.net", "--to", "bob@example.com",
                   "--header", "From: Alice <alice@example.net>", "--header", "Subject: submitted",
                   "--body", "from an authenticated user\n"])
    assert r.returncode == 0, f"swaks failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    [m] = sink.wait_messages(1)
    tags = signature_tags(m.content)
    assert tags["a"] == "rsa-sha256" and tags["d"] == "example.net" and tags["s"] == "ed1"
    assert dkim.verify(m.content, dnsfunc=dnsfunc_for(keys))


def test_a_rule_header_edit_is_covered_and_verifies(postern, sink, tmp_path, keys):
    lua = """
postern.rule{ name = "EDIT", stage = "eom", fn = function(ctx)
  ctx:tag_subject("[ext]")
  ctx:change_header("X-Mailer", "hidden")
  ctx:remove_header("X-Drop")
  ctx:add_header("Reply-To", "team@example.org")
  ctx:prepend_header("X-First", "seen")
end }
"""
    p, (port,) = start(postern, sink, tmp_path, keys, {"sign_networks": ["127.0.0.1"]}, lua=lua)
    send(port, "alice@example.org",
         message("alice@example.org", "edited", extra="X-Mailer: mua 1.0\r\nX-Drop: yes\r\n"))
    [m] = sink.wait_messages(1)
    assert b"\r\nSubject: [ext] edited\r\n" in m.content
    assert b"X-Drop" not in m.content and b"X-Mailer: hidden\r\n" in m.content
    assert b"Reply-To: team@example.org\r\n" in m.content
    tags = signature_tags(m.content)
    assert "reply-to" in tags["h"].lower()  # the field a rule added is signed too
    assert dkim.verify(m.content, dnsfunc=dnsfunc_for(keys))
    # and the signature really covers the edit: undo it and verification fails
    undone = m.content.replace(b"Subject: [ext] edited", b"Subject: edited")
    assert not dkim.verify(undone, dnsfunc=dnsfunc_for(keys))


def test_the_key_follows_the_from_domain(postern, sink, tmp_path, keys):
    p, (port,) = start(postern, sink, tmp_path, keys, {"sign_networks": ["127.0.0.1/32"]})
    send(port, "a@example.org", message("a@example.org", "org"))
    send(port, "b@example.net", message("b@example.net", "net"))
    send(port, "c@mail.example.org", message("c@mail.example.org", "subdomain"))
    send(port, "d@elsewhere.test", message("d@elsewhere.test", "foreign"))
    msgs = sink.wait_messages(4)
    by_subject = {re.search(rb"Subject: (\w+)", m.content).group(1).decode(): m for m in msgs}
    assert signature_tags(by_subject["org"].content)["d"] == "example.org"
    assert signature_tags(by_subject["net"].content)["d"] == "example.net"
    assert signature_tags(by_subject["net"].content)["s"] == "ed1"
    # a subdomain is signed with its parent's key: DMARC relaxed alignment
    assert signature_tags(by_subject["subdomain"].content)["d"] == "example.org"
    for name in ("org", "net", "subdomain"):
        assert dkim.verify(by_subject[name].content, dnsfunc=dnsfunc_for(keys)), name
    assert b"DKIM-Signature" not in by_subject["foreign"].content
    skipped = p.wait_for_log("dkim-sign", result="skipped")
    assert skipped.get("domain") == "elsewhere.test" and "no signing key" in skipped.get("reason"), skipped


def test_config_check_names_a_bad_key_file(tmp_path, keys):
    cert = make_cert(tmp_path, "notakey")
    ed_file, _ = ed25519_key(tmp_path, "ed")
    for key_file, why in ((str(tmp_path / "missing.key"), "cannot read key file"),
                          (cert[0], "no PEM private key"),
                          (ed_file, "libopendkim 2.11 leaks memory")):
        cfg = tmp_path / "bad.toml"
        cfg.write_text('[upstream]\ntarget = "127.0.0.1:25"\n\n[dkim]\nsign_networks = ["10.0.0.0/8"]\n\n'
                       '[[dkim.sign]]\ndomain = "example.org"\nselector = "s1"\n'
                       f'key_file = "{key_file}"\n')
        r = run_cli(["config", "check", str(cfg)])
        assert r.returncode != 0, r.stdout
        assert f"{cfg}:10:" in r.stderr and "dkim.sign.key_file" in r.stderr and why in r.stderr, r.stderr
    good = tmp_path / "good.toml"
    good.write_text('[upstream]\ntarget = "127.0.0.1:25"\n\n[[dkim.sign]]\ndomain = "example.org"\n'
                    f'selector = "mail2026"\nkey_file = "{keys["files"]["example.org"][1]}"\n')
    r = run_cli(["config", "check", str(good)])
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("ending", [b"", b" \t", b"x", b"\r\n\r\n"])
def test_bdat_content_without_final_crlf_is_signed_as_relayed(postern, sink, tmp_path, keys, ending):
    """Issue 15: a BDAT message whose content does not end in CRLF is relayed
    with one (DATA to the MTA); the signature covers exactly that body."""
    p, (port,) = start(postern, sink, tmp_path, keys, {"sign_networks": ["127.0.0.0/8"]})
    content = message("alice@example.org", "bdat no crlf").rstrip(b"\r\n") + b"\r\nlast line" + ending
    with SmtpClient(port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<alice@example.org>", 250)
        c.expect("RCPT TO:<bob@example.com>", 250)
        c.send(f"BDAT {len(content)} LAST\r\n".encode() + content)
        check_reply(c.read_reply(), 250)
    [m] = sink.wait_messages(1)
    assert dkim.verify(m.content, dnsfunc=dnsfunc_for(keys)), m.content[-200:]
