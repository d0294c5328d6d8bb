"""The HTML report (`postern report html`) rendered in a real headless
Chromium, as an admin opens it: from an audit log full of hostile text (HTML
and script in the From domain, the Message-ID, the PTR name, the DKIM
selector, the queue id), the page is screenshotted (kept in the test's tmp
dir), has no console message, makes no request (every request goes to a
counting proxy on loopback, which must see none), and the hostile strings
stay text in the DOM. A control page proves each detector can fire.
Also: what the page says (trend, signers and alignment, networks, PTRs,
policy vs applied, drill-down to messages, signed outbound mail, titles)."""

import base64
import collections
import html.parser
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading

import pytest

from harness import IO_TIMEOUT, listener_ports, run_cli, wait_until, write_config

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/deps)")


class CountingProxy:
    """A TCP listener standing in for an HTTP proxy: it counts connections
    and records the first bytes of each (the request line)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                self.requests.append(conn.recv(200))
            except OSError:
                self.requests.append(b"")
            conn.close()

    def close(self):
        self.sock.close()


# Chromium's own housekeeping (network time, component updates, accounts)
# talks to Google whatever the flags say; a proxy auto-config sends those
# hosts to a second listener, every other request to the counting proxy.
BROWSER_HOSTS = ("google.com", ".googleapis.com", ".gstatic.com")


def chromium(args, tmp_path, proxy, housekeeping):
    """Chromium, headless as root in a container without a display; every
    request through `proxy` (Chromium's own to Google through `housekeeping`)."""
    cond = " || ".join(f'dnsDomainIs(host, "{h}")' for h in BROWSER_HOSTS)
    pac = (f"function FindProxyForURL(url, host) {{ if ({cond}) return \"PROXY 127.0.0.1:{housekeeping.port}\"; "
           f"return \"PROXY 127.0.0.1:{proxy.port}\"; }}")
    pac_url = "data:application/x-ns-proxy-autoconfig;base64," + base64.b64encode(pac.encode()).decode()
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio",
           f"--proxy-pac-url={pac_url}"] + args
    return subprocess.run(cmd, capture_output=True, timeout=120)


REPORT_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "h4", "p", "main",
               "section", "div", "span", "table", "tbody", "tr", "th", "td", "a", "svg", "rect", "text", "title",
               "line", "i", "ul", "li", "code"}


class DomElements(html.parser.HTMLParser):
    """The element names, attribute names and text of a serialized DOM."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attributes, self.text = set(), set(), []
        self.count = collections.Counter()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.count[tag] += 1
        self.attributes |= {name for name, _ in attrs}

    def handle_data(self, data):
        self.text.append(data)


def console_lines(stderr):
    return [l for l in stderr.decode("utf-8", "replace").splitlines() if ":CONSOLE" in l]


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


PROXY_PORT_PLACEHOLDER = "PROXYPORT"
HOSTILE = {
    "from": 'evil"><script>console.error("from")</script>.example',
    "mid": '<"><img src="http://198.51.100.99:PROXYPORT/mid" onerror="console.error(1)">@x>',
    "ptr": '<svg/onload=console.error("ptr")>.ptr.example',
    "selector": '"><iframe src="http://198.51.100.99:PROXYPORT/sel"></iframe>',
    "queue": "Q<b>bold</b>",
    "comment": "</td></tr></table><style>body{background:url(http://198.51.100.99:PROXYPORT/css)}</style>",
    # More fields, more contexts: the action, a client "address", the HELO
    # (shown without a PTR), an SPF result, a published p=, an override type;
    # closing title/style/table, a comment opener, a javascript: URL, a long value.
    "action": '</title><script>console.error("act")</script>',
    "ip": '"><img src="http://198.51.100.99:PROXYPORT/ip">',
    "helo": "</style><script>console.error('helo')</script>",
    "spf": "</td></tr></table><svg onload=console.error('spf')>",
    "p": "javascript:console.error('p')//<a href=javascript:x>",
    "otype": "<!--<script>console.error('o')</script>-->",
    "long": "<script>console.error('long')</script>" * 3000,
    "rlo": "evil\u202elpmaxe.gnp",  # bidi override: shown reversed unless replaced
}


def rec(time, ip, from_domain, *, name="", dmarc="fail", dkim=(), spf="fail", signed=False, action="relayed",
        mid="<m@x>", queue="Q1", published=None, override=None, disposition="none"):
    r = {"time": time, "session": "s", "transaction": "s.1", "client": {"ip": ip, "port": 1, "name": name},
         "helo": "helo.example", "mail_from": f"b@{from_domain}", "rcpt_to": ["r@example.net"], "rcpt_count": 1,
         "message_id": mid, "from_domain": from_domain, "size": 100,
         "symbols": [], "score": 0, "stage": "eom", "action": action, "signed": signed,
         "upstream_reply": "250 ok", "queue_id": queue}
    if spf:
        r["spf"] = {"result": spf, "identity": "mailfrom", "domain": from_domain}
    if dkim is not None:
        r["dkim"] = [{"domain": d, "selector": s, "result": res} for d, s, res in dkim]
    if dmarc:
        r["dmarc"] = {"result": dmarc, "policy": "reject", "disposition": disposition, "from_domain": from_domain,
                      "record_domain": from_domain, "spf_aligned": dmarc == "pass", "dkim_aligned": dmarc == "pass",
                      "published": published or {"p": "reject", "sp": "reject", "adkim": "r", "aspf": "r", "pct": 100}}
        if override:
            r["dmarc"]["override"] = {"type": override[0], "comment": override[1]}
    return json.dumps(r)


def audit_log(tmp_path, proxy_port):
    h = {k: v.replace(PROXY_PORT_PLACEHOLDER, str(proxy_port)) for k, v in HOSTILE.items()}
    lines = []
    for day in range(1, 6):  # five days of example.com: inbound passing, a third-party ESP, a spoofer
        t = f"2026-11-0{day}T1{day}:00:00.000Z"
        lines += [rec(t, "198.51.100.7", "example.com", name="mail.example.com", dmarc="pass", spf="pass",
                      dkim=[("example.com", "s1", "pass")]) for _ in range(day)]
        lines.append(rec(t, "192.0.2.50", "example.com", name="o1.esp.example", dmarc="fail",
                         dkim=[("esp.example", "esp1", "pass")], queue=f"Q{day}"))
        lines.append(rec(t, "2001:db8:1:2::99", "example.com", name="", dmarc="fail", disposition="reject",
                         action="rejected", queue="", mid=f"<spoof{day}@x>"))
    # Outbound mail postern signed: no DKIM before signing, counted as signed.
    lines += [rec("2026-11-05T12:00:00.000Z", "10.0.0.5", "example.com", dmarc=None, spf=None, dkim=[],
                  signed=True) for _ in range(4)]
    # Overrides: sampled out, local policy (a trusted ARC sealer).
    lines.append(rec("2026-11-05T13:00:00.000Z", "192.0.2.51", "example.com", override=("sampled_out", "pct=50"),
                     published={"p": "reject", "sp": "reject", "adkim": "r", "aspf": "r", "pct": 50}))
    lines.append(rec("2026-11-05T13:00:01.000Z", "192.0.2.52", "example.com",
                     override=("local_policy", "arc=pass, trusted sealer lists.example " + h["comment"])))
    # Hostile text everywhere it can be.
    lines.append(rec("2026-11-05T14:00:00.000Z", "203.0.113.66", h["from"], name=h["ptr"],
                     dkim=[(h["from"], h["selector"], "fail")], mid=h["mid"], queue=h["queue"]))
    lines.append(rec("2026-11-05T14:00:01.000Z", "203.0.113.67", "spammer.example", dkim=None, dmarc=None))
    more = json.loads(rec("2026-11-05T14:00:02.000Z", h["ip"], h["rlo"], action=h["action"], spf=h["spf"],
                          mid=h["long"], override=(h["otype"], "x"),
                          published={"p": h["p"], "sp": "reject", "adkim": "r", "aspf": "r", "pct": 100}))
    more["helo"] = h["helo"]
    lines.append(json.dumps(more))
    path = tmp_path / "audit.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, h


@pytest.fixture
def proxy():
    p = CountingProxy()
    yield p
    p.close()


@pytest.fixture
def housekeeping():
    p = CountingProxy()
    yield p
    p.close()


def test_report_renders_in_chromium_without_errors_requests_or_live_markup(tmp_path, proxy, housekeeping):
    audit, h = audit_log(tmp_path, proxy.port)
    page = tmp_path / "report.html"
    r = run_cli(["report", "html", str(audit)])
    assert r.returncode == 0, r.stderr
    page.write_text(r.stdout, encoding="utf-8")

    shot = tmp_path / "report.png"
    c = chromium([f"--screenshot={shot}", "--window-size=1400,2600", f"file://{page}"], tmp_path, proxy, housekeeping)
    assert c.returncode == 0, c.stderr.decode(errors="replace")[-2000:]
    assert shot.exists(), "no screenshot"
    assert png_size(shot) == (1400, 2600)
    assert shot.stat().st_size > 50_000, "the screenshot is suspiciously small (blank page?)"
    assert console_lines(c.stderr) == [], console_lines(c.stderr)
    assert proxy.requests == [], proxy.requests

    d = chromium(["--dump-dom", f"file://{page}"], tmp_path, proxy, housekeeping)
    assert d.returncode == 0
    dom = d.stdout.decode("utf-8")
    assert console_lines(d.stderr) == [] and proxy.requests == []
    elements = DomElements()
    elements.feed(dom)
    # The only elements are the report's own: no script, image, frame or
    # foreign style; no event handler attribute anywhere.
    assert elements.tags <= REPORT_TAGS, elements.tags - REPORT_TAGS
    assert not [a for a in elements.attributes if a.startswith("on")], elements.attributes
    assert elements.count["style"] == 1 and elements.count["script"] == 0
    # The hostile strings are there, as text.
    text = "".join(elements.text)
    for key in ("from", "mid", "ptr", "selector", "queue", "comment"):
        assert h[key][:60] in text, key
    for key in ("action", "ip", "helo", "spf", "p", "otype", "long"):
        assert h[key][:25] in text, key
    # The bidi override is not in the page; the name is, with U+FFFD for it.
    assert "\u202e" not in dom and "evil\ufffdlpmaxe.gnp" in text
    # Links are the page's own anchors only; nothing names a resource elsewhere.
    assert set(re.findall(r'href="(.)', dom)) == {"#"}
    assert not elements.attributes & {"src", "srcset", "action", "background", "poster", "data"}
    # Chromium's own housekeeping never carried the page's hostile URLs.
    assert not [r for r in housekeeping.requests if b"198.51.100.99" in r]


def test_control_page_trips_every_detector(tmp_path, proxy, housekeeping):
    """The checks above can fail: unescaped markup without the CSP makes a
    request and writes to the console."""
    page = tmp_path / "control.html"
    page.write_text("<!DOCTYPE html><html><body><p>control</p>"
                    f"<img src=\"http://198.51.100.99:{proxy.port}/x.png\">"
                    "<script>console.error('control')</script></body></html>")
    c = chromium(["--dump-dom", f"file://{page}"], tmp_path, proxy, housekeeping)
    assert c.returncode == 0
    assert any("control" in l for l in console_lines(c.stderr)), c.stderr.decode(errors="replace")[-2000:]
    assert proxy.requests and b"198.51.100.99" in proxy.requests[0], proxy.requests


def test_report_content_trend_signers_sources_policy_messages(tmp_path, proxy):
    audit, h = audit_log(tmp_path, proxy.port)
    r = run_cli(["report", "html", str(audit), "--domain", "example.com"])
    assert r.returncode == 0, r.stderr
    page = r.stdout
    assert "<title>postern report: Who sends as example.com</title>" in page
    # Per-day trend: a bar (with its tooltip) for each of the five days.
    for day in range(1, 6):
        assert f"2026-11-0{day}: " in page
    # DKIM signers, the third-party one said to be unaligned.
    signers = page.split("<h3>DKIM signers</h3>", 1)[1].split("</table>", 1)[0]
    row = lambda d: re.search(r"<tr><td>" + re.escape(d) + r"</td>.*?</tr>", signers).group(0)
    assert "aligned" in row("example.com") and "third-party" not in row("example.com")
    assert "no: third-party signer, does not count for DMARC" in row("esp.example")
    assert ">esp1<" in row("esp.example")
    # Sources by network (/24, /64) and by verified PTR.
    assert "198.51.100.0/24" in page and "192.0.2.0/24" in page and "2001:db8:1:2::/64" in page
    assert "esp.example</td>" in page and "(no verified PTR)" in page
    # Published policy vs applied, with the overrides.
    policy = page.split("DMARC policy published and what postern applied", 1)[1].split("</table>", 1)[0]
    assert "p=reject sp=reject pct=50" in policy and "override sampled_out (pct=50)" in policy
    assert "override local_policy (arc=pass, trusted sealer lists.example" in policy
    assert "disposition reject -&gt; rejected" in policy
    # Drill-down: each failing source's count links to its messages (queue id, Message-ID).
    links = re.findall(r'<a href="#(m-\d+-\d+)">(\d+)</a>', page)
    assert links
    for anchor, _ in links:
        assert f'id="{anchor}"' in page
    spoof = page.split("Messages from 2001:db8:1:2::99", 1)[1].split("</table>", 1)[0]
    assert "&lt;spoof3@x&gt;" in spoof and "rejected" in spoof
    esp = page.split("Messages from 192.0.2.50", 1)[1].split("</table>", 1)[0]
    assert "<td>Q4</td>" in esp
    # Its passing third-party signature is not shown as a bare dkim=pass.
    assert "dkim=pass (d=esp.example, unaligned)" in esp
    failing = page.split("<h3>Failing sources</h3>", 1)[1].split("</table>", 1)[0]
    assert "dkim=pass (d=esp.example, unaligned) dmarc=fail" in failing
    # Outbound mail postern signed counts as signed, not as DKIM 0 %.
    overview = page.split("Messages per From domain", 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", overview.split('href="#d-0">example.com</a>', 1)[1])
    # messages, SPF, DKIM, DMARC, SPF aligned, DKIM aligned, failing, signed by postern
    assert cells[7] == "4", cells
    # DKIM: 20 of the 27 inbound messages checked passed (the ESP's third-party
    # signature passes too); the 4 signed outbound ones are not counted (20/31).
    assert cells[2] == "74.1%", cells


def test_titles_are_honest_and_the_domain_default_comes_from_config(tmp_path, proxy, make_sink):
    audit, h = audit_log(tmp_path, proxy.port)
    # No filter: every From domain, and the page says so (never "your domains").
    page = run_cli(["report", "html", str(audit)]).stdout
    assert "Who sends as which From domain: all From domains" in page
    assert "your domains" not in page.lower()
    assert "spammer.example" in page
    # [report] domains is the default filter.
    cfg = write_config(tmp_path / "a.toml", [], upstream=make_sink().address,
                       sections={"report": {"domains": ["example.com"]}})
    page = run_cli(["report", "html", str(audit), "--config", cfg]).stdout
    assert "<h1>Who sends as example.com</h1>" in page and "spammer.example" not in page
    # Else the [[dkim.sign]] domains.
    key = tmp_path / "k.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    cfg = tmp_path / "b.toml"
    cfg.write_text(f'[upstream]\ntarget = "{make_sink().address}"\n[dkim]\nsign_networks = ["10.0.0.0/8"]\n'
                   f'[[dkim.sign]]\ndomain = "example.com"\nselector = "s1"\nkey_file = "{key}"\n')
    page = run_cli(["report", "html", str(audit), "--config", str(cfg)]).stdout
    assert "<h1>Who sends as the domains postern signs for: example.com</h1>" in page
    assert "spammer.example" not in page
    # --all overrides the configured default; --domain replaces it.
    page = run_cli(["report", "html", str(audit), "--config", str(cfg), "--all"]).stdout
    assert "all From domains" in page and "spammer.example" in page
    page = run_cli(["report", "html", str(audit), "--config", str(cfg), "--domain", "spammer.example"]).stdout
    assert "<h1>Who sends as spammer.example</h1>" in page


def test_outbound_mail_postern_signed_is_counted_as_signed_from_real_traffic(postern, make_sink, tmp_path):
    """Messages from an internal network, DKIM-verified (none had a signature
    yet) and then signed by postern: the report counts them as signed by
    postern, with no DKIM rate, under the title of the signing domains."""
    from test_dkim_sign import message as signed_message, rsa_key, send
    key_file, _ = rsa_key(tmp_path, "org")
    sink = make_sink()
    audit = tmp_path / "audit.jsonl"
    cfg = write_config(tmp_path / "postern.toml", [{}], upstream=sink.address, sections={
        "dkim": {"enabled": True, "sign_networks": ["127.0.0.0/8"]},
        "audit": {"path": str(audit), "fsync": "always"}})
    with open(cfg, "a") as f:
        f.write(f'\n[[dkim.sign]]\ndomain = "example.org"\nselector = "s1"\nkey_file = "{key_file}"\n')
    p = postern.start(config=cfg, listen=())
    port = listener_ports(p)[0]
    for i in range(3):
        send(port, "alice@example.org", signed_message("alice@example.org", f"out {i}"))
    sink.wait_messages(3)
    wait_until(lambda: audit.exists() and len(audit.read_text().splitlines()) >= 3, IO_TIMEOUT,
               message="3 audit records")
    recs = [json.loads(l) for l in audit.read_text().splitlines()]
    assert all(r["signed"] is True and r["dkim"] == [] for r in recs), recs
    r = run_cli(["report", str(audit), "--config", cfg])
    assert r.returncode == 0, r.stderr
    row = next(l.split() for l in r.stdout.splitlines() if l.startswith("example.org "))
    # DOMAIN MESSAGES SPF DKIM DMARC SPF-ALN DKIM-ALN FAILING SIGNED ACTIONS
    assert row[1] == "3" and row[3] == "-" and row[7] == "0" and row[8] == "3", r.stdout
    page = run_cli(["report", "html", str(audit), "--config", cfg]).stdout
    assert "<h1>Who sends as the domains postern signs for: example.org</h1>" in page
    assert "3 outbound messages signed by postern itself" in page
