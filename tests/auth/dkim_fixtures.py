#!/usr/bin/python3
"""Signs test messages with dkimpy (an independent DKIM implementation) and
writes them with the DNS records of their keys, for postern's DKIM and DMARC
tests:  dkim_fixtures.py OUTDIR  ->  OUTDIR/records.txt (unbound local-data
lines, one a line) and OUTDIR/NAME.eml."""
import base64
import os
import subprocess
import sys

import dkim
import nacl.signing

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
records = []


def rsa_key(bits):
    pem = subprocess.run(["openssl", "genrsa", str(bits)], check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=pem, check=True,
                         capture_output=True).stdout
    return pem, base64.b64encode(der).decode()


def ed_key():
    sk = nacl.signing.SigningKey.generate()
    return base64.b64encode(bytes(sk)), base64.b64encode(bytes(sk.verify_key)).decode()


def txt(name, value):
    # unbound local-data: long values as several character-strings of <= 255.
    parts = " ".join('"%s"' % value[i:i + 200] for i in range(0, len(value), 200))
    records.append("%s 300 IN TXT %s" % (name, parts))


def key_record(selector, domain, k, p):
    txt("%s._domainkey.%s." % (selector, domain), "v=DKIM1; k=%s; p=%s" % (k, p))


def message(from_addr, subject="Test message", body=None, extra=b""):
    body = body or b"Hello,\r\n\r\nThis is a test message.\r\n-- \r\nSender\r\n"
    return (b"From: Sender <" + from_addr.encode() + b">\r\n"
            b"To: rcpt@example.net\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Date: Tue, 24 Nov 2026 02:00:00 +0000\r\n"
            b"Message-ID: <" + subject.replace(" ", ".").encode() + b"@example.com>\r\n" + extra +
            b"\r\n" + body)


def sign(msg, selector, domain, key, canon=(b"relaxed", b"relaxed"), alg=b"rsa-sha256", length=False):
    sig = dkim.sign(msg, selector.encode(), domain.encode(), key, canonicalize=canon,
                    signature_algorithm=alg, length=length,
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + msg


def write(name, data):
    with open(os.path.join(out, name + ".eml"), "wb") as f:
        f.write(data)


rsa2048, rsa2048_pub = rsa_key(2048)
rsa1024, rsa1024_pub = rsa_key(1024)
rsa512, rsa512_pub = rsa_key(512)
ed, ed_pub = ed_key()
key_record("r2048", "example.com", "rsa", rsa2048_pub)
key_record("r1024", "example.com", "rsa", rsa1024_pub)
key_record("r512", "example.com", "rsa", rsa512_pub)
key_record("ed", "example.com", "ed25519", ed_pub)
key_record("revoked", "example.com", "rsa", "")
key_record("bad", "example.com", "rsa", "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAnotakey")
key_record("r2048", "sub.example.com", "rsa", rsa2048_pub)
key_record("r2048", "example.org", "rsa", rsa2048_pub)
key_record("r2048", "co.uk", "rsa", rsa2048_pub)
key_record("r2048", "example.co.uk", "rsa", rsa2048_pub)

m = message("a@example.com", "relaxed 2048")
write("rsa2048_relaxed", sign(m, "r2048", "example.com", rsa2048))
m = message("a@example.com", "simple 1024")
write("rsa1024_simple", sign(m, "r1024", "example.com", rsa1024, canon=(b"simple", b"simple")))
m = message("a@example.com", "ed25519")
write("ed25519", sign(m, "ed", "example.com", ed, alg=b"ed25519-sha256"))
m = message("a@example.com", "folded", extra=b"X-Folded: first part\r\n\tsecond part\r\n   third\r\n")
write("folded_relaxed", sign(m, "r2048", "example.com", rsa2048))
m = message("a@example.com", "length")
write("length", sign(m, "r2048", "example.com", rsa2048, length=True) + b"Appended after signing.\r\n")
m = message("a@example.com", "altered body")
write("altered_body", sign(m, "r2048", "example.com", rsa2048).replace(b"This is a test", b"This is a fake"))
m = message("a@example.com", "altered header")
write("altered_header", sign(m, "r2048", "example.com", rsa2048).replace(b"Subject: altered header",
                                                                          b"Subject: altered HEADER!"))
m = message("a@example.com", "missing key")
write("missing_key", sign(m, "nokey", "example.com", rsa2048))
m = message("a@example.com", "revoked key")
write("revoked_key", sign(m, "revoked", "example.com", rsa2048))
m = message("a@example.com", "malformed key")
write("malformed_key", sign(m, "bad", "example.com", rsa2048))
m = message("a@example.com", "two signatures")
write("two_signatures", sign(sign(m, "ed", "example.com", ed, alg=b"ed25519-sha256"), "r2048", "example.com", rsa2048))
try:
    m = message("a@example.com", "weak key")
    write("weak_key", sign(m, "r512", "example.com", rsa512))
except Exception as e:  # dkimpy may refuse small keys
    print("weak key not signed:", e, file=sys.stderr)
write("unsigned", message("a@example.com", "unsigned"))

# DMARC: From domains and the signing domain.
write("dmarc_aligned_dkim", sign(message("a@example.com", "dmarc aligned"), "r2048", "example.com", rsa2048))
write("dmarc_relaxed_sub", sign(message("a@mail.example.com", "dmarc relaxed"), "r2048", "example.com", rsa2048))
write("dmarc_sub_signer", sign(message("a@example.com", "dmarc subsigner"), "r2048", "sub.example.com", rsa2048))
write("dmarc_foreign_signer", sign(message("a@example.com", "dmarc foreign"), "r2048", "example.org", rsa2048))
write("dmarc_psl", sign(message("a@example.co.uk", "dmarc psl"), "r2048", "co.uk", rsa2048))
write("dmarc_psl_ok", sign(message("a@example.co.uk", "dmarc psl ok"), "r2048", "example.co.uk", rsa2048))
write("dmarc_strict_sub", sign(message("a@example.net", "dmarc strict"), "r2048", "example.org", rsa2048))
for name, frm in [("dmarc_unsigned", "a@example.com"), ("dmarc_unsigned_sub", "a@sub.example.com"),
                  ("dmarc_unsigned_quarantine", "a@quarantine.example.org"),
                  ("dmarc_unsigned_none", "a@none.example.org"),
                  ("dmarc_unsigned_pct0", "a@pct0.example.org"),
                  ("dmarc_unsigned_nodmarc", "a@nodmarc.example.org")]:
    write(name, message(frm, name.replace("_", " ")))

with open(os.path.join(out, "records.txt"), "w") as f:
    f.write("\n".join(records) + "\n")
