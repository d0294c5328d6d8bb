"""The postern binary caches decoded DKIM keys (filters/dkim/dkim_key_cache.cpp
interposes d2i_PUBKEY_bio for libopendkim). The cache must give every
signature its own key: two keys, alternating, repeated, and a signature made
with one key but naming the other's selector (which must fail), all verified
by one postern process against a real unbound on loopback; the verdicts are
read from the Authentication-Results field the MTA (aiosmtpd) receives."""

import base64
import os
import shutil
import socket
import subprocess
import time

import dkim
import pytest

from harness import SmtpClient, check_reply, free_port, stop_process

DOMAIN = "keycache.example"


def make_key(directory, name):
    path = os.path.join(directory, name + ".key")
    subprocess.run(["openssl", "genrsa", "-out", path, "2048"], check=True, capture_output=True, timeout=60)
    der = subprocess.run(["openssl", "rsa", "-in", path, "-pubout", "-outform", "DER"], check=True,
                         capture_output=True, timeout=30).stdout
    with open(path, "rb") as f:
        return f.read(), base64.b64encode(der).decode()


def txt(value):
    return " ".join('"%s"' % value[i:i + 250] for i in range(0, len(value), 250))


def udp_tcp_port():
    for _ in range(50):
        port = free_port()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
    raise RuntimeError("no free port")


@pytest.fixture
def dns(tmp_path):
    keys = {"a": make_key(str(tmp_path), "a"), "b": make_key(str(tmp_path), "b")}
    port = udp_tcp_port()
    conf = tmp_path / "unbound.conf"
    lines = ["server:", "  interface: 127.0.0.1", f"  port: {port}", "  do-daemonize: no", '  username: ""',
             '  chroot: ""', f'  directory: "{tmp_path}"', '  pidfile: ""', "  use-syslog: no", '  logfile: ""',
             "  do-ip6: no", "  access-control: 127.0.0.0/8 allow", '  module-config: "iterator"',
             "  num-threads: 1", f'  local-zone: "{DOMAIN}." static', '  local-zone: "." static']
    for sel, (_pem, pub) in keys.items():
        lines.append(f"  local-data: '{sel}._domainkey.{DOMAIN}. 3600 IN TXT {txt('v=DKIM1; k=rsa; p=' + pub)}'")
    conf.write_text("\n".join(lines + ["remote-control:", "  control-enable: no"]) + "\n")
    proc = subprocess.Popen(["/usr/sbin/unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = subprocess.run(["/usr/bin/python3", "-c", (
            "import dnslib,sys; q=dnslib.DNSRecord.question('a._domainkey.%s','TXT');"
            "r=dnslib.DNSRecord.parse(q.send('127.0.0.1',%d,timeout=0.5)); sys.exit(0 if r.rr else 1)")
            % (DOMAIN, port)], capture_output=True, timeout=5)
        if r.returncode == 0:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("unbound did not answer")
    yield port, keys
    stop_process(proc)


def signed(pem, selector, n):
    msg = (f"From: <s@{DOMAIN}>\r\nTo: <r@example.com>\r\nSubject: key cache {n}\r\n"
           f"Message-ID: <{n}@{DOMAIN}>\r\n\r\nbody {n}\r\n").encode()
    sig = dkim.sign(msg, selector.encode(), DOMAIN.encode(), pem, include_headers=[b"From", b"Subject"])
    return sig.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + msg


def test_each_signature_is_verified_with_its_own_key(postern, sink, dns):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is required")
    port, keys = dns
    p = postern.start(upstream=sink.address, sets={
        "dns.servers": f'["127.0.0.1@{port}"]', "dkim.enabled": "true",
        "authentication_results.enabled": "true"})
    # (key used to sign, selector named in the signature, expected result)
    cases = [("a", "a", "pass"), ("b", "b", "pass"), ("a", "a", "pass"), ("a", "b", "fail"),
             ("b", "b", "pass"), ("b", "a", "fail"), ("a", "a", "pass")]
    for n, (key, selector, _want) in enumerate(cases):
        c = SmtpClient(p.port)
        c.ehlo()
        check_reply(c.send_message(f"s@{DOMAIN}", ["r@example.com"], signed(keys[key][0], selector, n)), 250)
        c.expect("QUIT", 221)
        c.close()
    assert len(sink.messages) == len(cases)
    for n, (key, selector, want) in enumerate(cases):
        content = sink.messages[n].content
        ar = [l for l in content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
              .split(b"\r\n") if l.lower().startswith(b"authentication-results:")]
        assert ar, f"message {n}: no Authentication-Results"
        assert f"dkim={want}".encode() in ar[0], f"message {n} signed with {key}, s={selector}: {ar[0]!r}"
