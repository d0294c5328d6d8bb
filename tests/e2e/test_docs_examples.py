"""The documentation's examples work.

- Every ```toml block of docs/*.md, and every config/*.toml file, is a
  configuration `postern config check` accepts. Absolute paths it names
  (certificates, rule scripts, spool and audit directories) are recreated
  under a temporary directory first: certificates as a real matching pair,
  rule files from scripts/ when postern ships them. A block whose first line
  starts with `# fragment` is part of a configuration, or a `postern test`
  fixture: it must still be valid TOML.
- docs/deploy-postfix.md: its master.cf and main.cf snippets are applied to a
  private Postfix (tests/e2e/test_xclient.py) and its postern.toml, on free
  ports, relays a message into that Postfix, which sees the real client
  through XCLIENT and refuses to relay for strangers.
- docs/deploy-exchange.md: its Lua rule removes forged X-Spam-Status fields.
- docs/audit-only.md: its audit-only configuration relays and tags what its
  enforcing one holds back.
- docs/configuration.md has a table row for every key `postern config check`
  accepts (the Checker lists them in its "unknown key; allowed: ..." error).
- Every `swaks` command of README.md and docs/*.md runs as printed (only its
  --server pointed at a postern on loopback): STARTTLS and AUTH work with the
  swaks .ci/deps installs, and a reply the comment above it promises arrives.
  README's quick start and the package commands run in tests/package; every
  other command of the docs, and which test runs it, is in test_docs_commands.py.
- docs/operations-metrics.md: every metric its PromQL and alert rules use is
  one postern exports, and its YAML blocks parse.
"""

import glob
import os
import re
import shlex
import shutil
import subprocess
import tomllib
import uuid

import pytest

import doc_commands
from harness import (POSTERN_BIN, SCALE, SmtpClient, check_reply, free_port, listener_ports, make_cert,
                     make_message, wait_port, wait_until, write_config)
from test_xclient import private_postfix

ROOT = doc_commands.ROOT


class Block:
    def __init__(self, path, line, text):
        self.path = path          # relative to ROOT
        self.line = line
        self.text = text

    @property
    def fragment(self):
        return self.text.lstrip().startswith("# fragment")

    @property
    def name(self):
        return f"{self.path}:{self.line}"


def toml_blocks():
    blocks = [Block(b.path, b.line, b.text) for md in doc_commands.doc_paths() if md.startswith("docs/")
              for b in doc_commands.blocks(md) if b.lang == "toml"]
    for cfg in sorted(glob.glob(os.path.join(ROOT, "config", "*.toml"))):
        with open(cfg) as f:
            blocks.append(Block(os.path.relpath(cfg, ROOT), 1, f.read()))
    return blocks


BLOCKS = toml_blocks()
COMPLETE = [b for b in BLOCKS if not b.fragment]
FRAGMENTS = [b for b in BLOCKS if b.fragment]


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs-tls")
    cert, key, _ = make_cert(d, cn="mx.example.com")
    return cert, key


def shipped_script(name):
    """A rule file of scripts/ with this name, if postern ships one."""
    for sub in ("default", "examples"):
        p = os.path.join(ROOT, "scripts", sub, name)
        if os.path.isfile(p):
            return p
    return None


def string_values(node, key=""):
    """(key, value) of every string in a parsed TOML document, lists included."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from string_values(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from string_values(v, key)
    elif isinstance(node, str):
        yield key, node


def materialize(text, tmp, tls_pair):
    """The block with every absolute path it names moved under `tmp`, and the
    files or directories those keys expect created there."""
    cert, key = tls_pair
    doc = tomllib.loads(text)
    seen = set()
    for k, value in string_values(doc):
        if not value.startswith("/") or os.path.exists(value) or value in seen:
            continue
        seen.add(value)
        local = os.path.join(str(tmp), value.lstrip("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        if k in ("cert_file", "ca_file"):
            shutil.copy(cert, local)
        elif k == "key_file":
            shutil.copy(key, local)
        elif k in ("scripts", "module_path") and value.endswith(".lua"):
            src = shipped_script(os.path.basename(value))
            if src:
                shutil.copy(src, local)
            else:
                with open(local, "w") as f:
                    f.write("-- placeholder for a rule file of the documentation\n")
        elif k == "scripts":
            # a rule directory: postern's default rule set
            if not os.path.isdir(local):
                shutil.copytree(os.path.join(ROOT, "scripts", "default"), local)
        elif k in ("module_path", "spool_dir", "dir"):
            os.makedirs(local, exist_ok=True)
        # anything else (audit path, ...) only needs its directory
        new = text.replace(f'"{value}"', f'"{local}"')
        assert new != text, f"path {value!r} of key {k!r} not found as a \"string\""
        text = new
    return text


def config_check(path, cwd):
    return subprocess.run([POSTERN_BIN, "config", "check", str(path)], capture_output=True,
                          text=True, timeout=30 * SCALE, cwd=str(cwd), stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("block", COMPLETE, ids=[b.name for b in COMPLETE])
def test_config_check_accepts_documented_config(block, tmp_path, tls_pair):
    text = materialize(block.text, tmp_path, tls_pair)
    path = tmp_path / "postern.toml"
    path.write_text(text)
    r = config_check(path, tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"{path}: ok", (
        f"{block.name}: postern config check refused the documented configuration\n"
        f"{r.stdout}{r.stderr}\n---- as checked ----\n{text}")


@pytest.mark.parametrize("block", FRAGMENTS, ids=[b.name for b in FRAGMENTS])
def test_fragment_is_valid_toml(block):
    tomllib.loads(block.text)


def test_config_check_refuses_a_broken_block(tmp_path, tls_pair):
    """The check above can fail: a documented block with a misspelt key is refused."""
    guide = next(b for b in COMPLETE if b.path == "docs/deploy-postfix.md")
    broken = guide.text.replace("client_identity", "client_identiy", 1)
    assert broken != guide.text
    path = tmp_path / "postern.toml"
    path.write_text(materialize(broken, tmp_path, tls_pair))
    r = config_check(path, tmp_path)
    assert r.returncode == 1, r
    assert "key 'upstream.client_identiy': unknown key; did you mean 'client_identity'?" in r.stderr, r.stderr


@pytest.mark.parametrize("doc", ["docs/deploy-postfix.md", "docs/deploy-exchange.md", "docs/audit-only.md",
                                 "docs/configuration.md"])
def test_guides_carry_complete_examples(doc):
    assert any(b.path == doc for b in COMPLETE), f"{doc} has no complete ```toml example"


# --------------------------------------------------------------------------
# docs/deploy-postfix.md against a real Postfix

GUIDE = "docs/deploy-postfix.md"
CLIENT_IP = "127.0.0.9"
CLIENT_HELO = "client.example"


def guide_block(first_line):
    """The fenced block of the Postfix guide that starts with `first_line`."""
    return doc_commands.block(GUIDE, first_line)


def replace_once(text, old, new):
    assert text.count(old) == 1, f"expected {old!r} once in:\n{text}"
    return text.replace(old, new)


def merge_main_cf(main_cf, snippet):
    """main.cf with the snippet's parameters set (replaced where present)."""
    lines = main_cf.rstrip("\n").split("\n")
    for line in snippet.split("\n"):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name = line.split("=", 1)[0].strip()
        lines = [l for l in lines if l.split("=", 1)[0].strip() != name]
        lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def guide_postfix():
    """The private Postfix with the guide's master.cf service and main.cf
    settings; mail for example.com (the guide's domain) is relayed to the
    recording sink."""
    port = free_port()

    def prepare(pf):
        master = os.path.join(pf.etc, "master.cf")
        main = os.path.join(pf.etc, "main.cf")
        service = replace_once(guide_block("# /etc/postfix/master.cf"), "127.0.0.1:10025",
                               f"127.0.0.1:{port}")
        with open(master, "a") as f:
            f.write(service)
        with open(main) as f:
            text = f.read()
        text = merge_main_cf(text, guide_block("# /etc/postfix/main.cf"))
        # the site's own domain, relayed on to the mail store (here: the sink)
        text = merge_main_cf(text, f"relay_domains = example.com\n"
                                   f"relay_transport = relay:[127.0.0.1]:{pf.sink.port}\n")
        with open(main, "w") as f:
            f.write(text)

    for pf in private_postfix(prepare):
        wait_port(port, 20 * SCALE)
        pf.guide_port = port
        yield pf


def start_guide_postern(postern, pf, tmp_path, tls_pair, sets=None):
    toml = next(b for b in COMPLETE if b.path == "docs/deploy-postfix.md"
                and b.text.startswith("# /etc/postern/postern.toml")).text
    toml = replace_once(toml, '"0.0.0.0:25"', '"127.0.0.1:0"')
    toml = replace_once(toml, '"0.0.0.0:587"', '"127.0.0.1:0"')
    toml = replace_once(toml, '"127.0.0.1:10025"', f'"127.0.0.1:{pf.guide_port}"')
    path = tmp_path / "postern.toml"
    path.write_text(materialize(toml, tmp_path, tls_pair))
    p = postern.start(config=path, listen=(), sets=sets)
    p.wait_for_log("started")
    ports = [int(l.get("address").rsplit(":", 1)[1]) for l in p.events("listening")]
    assert len(ports) == 2, ports
    return p, ports


def relay_one(port, rcpt="bob@example.com"):
    tag = uuid.uuid4().hex[:12]
    with SmtpClient(port, source=CLIENT_IP) as c:
        client_port = c.sock.getsockname()[1]
        c.ehlo(CLIENT_HELO)
        r = check_reply(c.send_message("alice@example.org", [rcpt], make_message(f"guide {tag}")),
                        250, what="end of data")
        c.expect("QUIT", 221)
    m = re.search(r"queued as ([0-9A-F]+)", r.text)
    assert m, f"no Postfix queue id in {r}"
    return m.group(1), client_port


def delivered(pf, qid):
    wait_until(lambda: any(qid.encode() in (m.content or b"") for m in pf.sink.messages), 20 * SCALE,
               message=f"Postfix relaying {qid} to the sink")
    msg = next(m for m in pf.sink.messages if qid.encode() in m.content)
    head = msg.content.decode("latin-1").split("\r\n\r\n", 1)[0]
    return re.sub(r"\r\n(?=[ \t])", " ", head).split("\r\n")


def test_postfix_guide_relays_with_the_real_client(postern, guide_postfix, tmp_path, tls_pair):
    pf = guide_postfix
    p, (mx, _) = start_guide_postern(postern, pf, tmp_path, tls_pair)
    qid, client_port = relay_one(mx)
    # Postfix's log (syslog_name postfix/postern) names the real client: XCLIENT took effect
    client = pf.wait_log(rf"postfix/postern/smtpd\[\d+\]: {qid}: client=(.*)$").group(1)
    assert client == f"unknown[{CLIENT_IP}]:{client_port}", client
    head = delivered(pf, qid)
    postfix_rcv = [l for l in head if l.startswith("Received:") and f"id {qid}" in l]
    assert postfix_rcv and postfix_rcv[0].startswith(f"Received: from {CLIENT_HELO} (unknown [{CLIENT_IP}])"), head
    postern_rcv = [l for l in head if l.startswith("Received:") and "(postern)" in l]
    assert postern_rcv and f"[{CLIENT_IP}]" in postern_rcv[0] and "by mx.example.com (postern)" in postern_rcv[0], head
    line = p.wait_for_log("message", result="relayed")
    assert qid in line.get("upstream", ""), line


@pytest.mark.parametrize("identity", ["xclient", "none"])
def test_postfix_guide_refuses_to_relay_for_strangers(postern, guide_postfix, tmp_path, tls_pair, identity):
    """Postfix's `Relay access denied` reaches the client verbatim, with XCLIENT
    and also when XCLIENT is not used (every client then looks like
    127.0.0.1, which the guide keeps out of the loopback smtpd's mynetworks)."""
    pf = guide_postfix
    p, (mx, _) = start_guide_postern(postern, pf, tmp_path, tls_pair,
                                     sets={"upstream.client_identity": identity})
    with SmtpClient(mx, source=CLIENT_IP) as c:
        c.ehlo(CLIENT_HELO)
        c.expect("MAIL FROM:<alice@example.org>", 250)
        r = c.expect("RCPT TO:<someone@elsewhere.example>", 554, "5.7.1")
        assert "Relay access denied" in r.text, r
        c.expect("RCPT TO:<bob@example.com>", 250)
        c.expect("QUIT", 221)


def test_postfix_guide_submission_needs_tls(postern, guide_postfix, tmp_path, tls_pair):
    pf = guide_postfix
    p, (_, submission) = start_guide_postern(postern, pf, tmp_path, tls_pair)
    with SmtpClient(submission) as c:
        r = c.ehlo(CLIENT_HELO)
        assert "STARTTLS" in r.lines and not any(l.startswith("AUTH") for l in r.lines), r
        c.expect("MAIL FROM:<alice@example.com>", 530, "5.7.0")
        c.starttls()
        r = c.ehlo(CLIENT_HELO)
        assert "AUTH PLAIN LOGIN" in r.lines, r


# --------------------------------------------------------------------------
# docs/deploy-exchange.md: the rule that keeps X-Spam-Status postern's own

EXCHANGE_GUIDE = "docs/deploy-exchange.md"


@pytest.mark.parametrize("scored", [False, True])
def test_exchange_guide_rule_strips_foreign_spam_status(postern, sink, tmp_path, scored):
    """A forged `X-Spam-Status: No` never reaches Exchange: without symbols the
    message carries no X-Spam-Status at all, with symbols only postern's."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "05_strip_spam_status.lua").write_text(
        doc_commands.block(EXCHANGE_GUIDE, "-- /etc/postern/rules/05_strip_spam_status.lua"))
    if scored:   # a rule of the test's own, so that postern adds its field
        (rules / "50_test_symbol.lua").write_text(
            'postern.rule{ name = "DOCS_TEST", stage = "eom", score = 6, fn = function(ctx)\n'
            '  return ctx:symbol("DOCS_TEST")\nend }\n')
    p = postern.start(upstream=sink.address, sets={"lua.scripts": str(rules)})
    forged = b"X-Spam-Status: No, score=0.00 symbols=\r\nX-Spam-Status: No\r\n"
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(c.send_message("someone@example.net", ["alice@example.com"],
                                   make_message("forged", extra_headers=forged)), 250)
    msg = sink.wait_messages(1)[0]
    head = msg.content.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    fields = [l for l in head.split("\r\n") if l.lower().startswith("x-spam-status:")]
    if scored:
        assert fields == ["X-Spam-Status: Yes, score=6.00 symbols=DOCS_TEST"], head
    else:
        assert fields == [], head


# --------------------------------------------------------------------------
# docs/audit-only.md: the audit-only configuration tags what enforcement refuses

AUDIT_GUIDE = "docs/audit-only.md"


@pytest.fixture
def nxdomain_dns():
    """A DNS server on loopback answering NXDOMAIN to everything, so SPF,
    DKIM and DMARC run to a result (none) without the internet."""
    from dnslib import RCODE
    from dnslib.server import BaseResolver, DNSServer

    class Nx(BaseResolver):
        def resolve(self, request, handler):
            reply = request.reply()
            reply.header.rcode = RCODE.NXDOMAIN
            return reply

    server = DNSServer(Nx(), port=0, address="127.0.0.1")
    server.start_thread()
    try:
        yield f"127.0.0.1@{server.server.server_address[1]}"
    finally:
        server.stop()


def start_guide_config(postern, block, sink, tmp_path, tls_pair, dns):
    text = replace_once(block.text, '"0.0.0.0:25"', '"127.0.0.1:0"')
    text = replace_once(text, '"127.0.0.1:10025"', f'"{sink.address}"')
    path = tmp_path / "postern.toml"
    path.write_text(materialize(text, tmp_path, tls_pair))
    p = postern.start(config=path, listen=(), sets={"dns.servers": f'["{dns}"]'})
    p.wait_for_log("started")
    (port,) = [int(l.get("address").rsplit(":", 1)[1]) for l in p.events("listening")]
    return p, port


def exe_message():
    with open(os.path.join(ROOT, "scripts", "tests", "messages", "exe_attachment.eml"), "rb") as f:
        return f.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def audit_blocks():
    blocks = [b for b in COMPLETE if b.path == AUDIT_GUIDE]
    audit = [b for b in blocks if "audit only" in b.text.split("\n", 1)[0]]
    enforcing = [b for b in blocks if "enforcing" in b.text.split("\n", 1)[0]]
    assert len(audit) == 1 and len(enforcing) == 1, [b.name for b in blocks]
    return audit[0], enforcing[0]


def test_audit_only_config_relays_and_tags_an_executable(postern, sink, tmp_path, tls_pair, nxdomain_dns):
    audit, _ = audit_blocks()
    p, port = start_guide_config(postern, audit, sink, tmp_path, tls_pair, nxdomain_dns)
    with SmtpClient(port) as c:
        c.ehlo("mail.example.net")
        r = check_reply(c.send_message("someone@example.net", ["alice@example.com"], exe_message()), 250)
    msg = sink.wait_messages(1)[0]
    head = re.sub(r"\r\n(?=[ \t])", " ", msg.content.split(b"\r\n\r\n", 1)[0].decode("latin-1"))
    status = [l for l in head.split("\r\n") if l.startswith("X-Spam-Status:")]
    assert len(status) == 1 and status[0].startswith("X-Spam-Status: Yes, score=1"), head
    # scored by the rules and by every authenticity check, refused by none
    for symbol in ("EXECUTABLE_ATTACHMENT", "SPF_", "DKIM_NONE", "DMARC_NONE"):
        assert symbol in status[0], status
    assert any(l.startswith("Authentication-Results: mx.example.com;") for l in head.split("\r\n")), head
    assert p.wait_for_log("message", result="relayed"), r


def test_enforcing_config_defers_a_first_time_sender(postern, sink, tmp_path, tls_pair, nxdomain_dns):
    """The guide's final configuration runs the whole default set: greylisting
    answers a new (network, sender, recipient) triplet with 451 4.7.1."""
    _, enforcing = audit_blocks()
    p, port = start_guide_config(postern, enforcing, sink, tmp_path, tls_pair, nxdomain_dns)
    with SmtpClient(port) as c:
        c.ehlo("mail.example.net")
        c.expect("MAIL FROM:<someone@example.net>", 250)
        c.expect("RCPT TO:<alice@example.com>", 451, "4.7.1")
    assert not sink.messages


# --------------------------------------------------------------------------
# docs/configuration.md names every key postern's Checker knows

CONFIG_DOC = os.path.join(ROOT, "docs", "configuration.md")
UNKNOWN = "zzzzzzzzzzzzzzzzzzzz"   # no key is near it, so the Checker lists them all


def allowed_keys(tmp_path, toml_text, where):
    path = tmp_path / "probe.toml"
    path.write_text(toml_text)
    r = config_check(path, tmp_path)
    m = re.search(rf"key '{re.escape(where)}{UNKNOWN}': unknown key; allowed: (.*)$", r.stderr, re.M)
    assert m, f"postern config check did not list the keys of {where or 'the top level'}:\n{r.stderr}"
    return m.group(1).split()


def documented_keys():
    """{section: set of keys} from the tables under the `## [section]` headings."""
    with open(CONFIG_DOC) as f:
        text = f.read()
    doc = {}
    section = None
    for line in text.split("\n"):
        h = re.match(r"^##+ `\[\[?([a-z0-9_.]+)\]\]?`", line)
        if h:
            section = h.group(1)
            doc.setdefault(section, set())
            continue
        if line.startswith("## "):
            section = None
        if section and line.startswith("| `"):
            first_cell = line.split("|")[1]
            doc[section].update(re.findall(r"`([a-z0-9_]+)`", first_cell))
    return doc


def test_configuration_md_documents_every_key(tmp_path):
    sections = allowed_keys(tmp_path, f"{UNKNOWN} = 1\n", "")
    doc = documented_keys()
    missing = []
    for section in sections:
        if section == "listener":
            keys = allowed_keys(tmp_path, f'[[listener]]\naddress = "127.0.0.1:0"\n{UNKNOWN} = 1\n',
                                "listener.")
        elif section == "milter":
            keys = allowed_keys(tmp_path, f'[[milter]]\nname = "m"\nsocket = "inet:127.0.0.1:9"\n{UNKNOWN} = 1\n',
                                "milter.")
        else:
            keys = allowed_keys(tmp_path, f"[{section}]\n{UNKNOWN} = 1\n", f"{section}.")
        if section not in doc:
            missing.append(f"[{section}] (no section)")
            continue
        for key in keys:
            if key not in doc[section] and f"{section}.{key}" not in doc:
                missing.append(f"{section}.{key}")
    assert not missing, f"keys postern accepts but {CONFIG_DOC} does not document: {missing}"


# ---------------------------------------------------------------- the docs' swaks commands

SWAKS = [c for path in doc_commands.doc_paths() for c in doc_commands.commands(path, "swaks")]
DOC_PASSWORD = "documented-secret"


def test_docs_have_swaks_commands():
    names = [c.name for c in SWAKS]
    assert any(c.path == "docs/deploy-postfix.md" and "--tls" in c.text and "--auth" in c.text
               for c in SWAKS), names
    assert len(SWAKS) >= 5, names


@pytest.mark.parametrize("command", SWAKS, ids=[c.name for c in SWAKS])
def test_docs_swaks_command_runs_as_written(command, postern, make_sink, tmp_path, tls_pair):
    """The command as printed, only its --server pointed at a postern on loopback
    (STARTTLS on both listeners, AUTH passthrough on the one standing for 587)
    in front of an MTA that checks a password; a reply code the comment above
    the command promises comes from that MTA, and swaks shows it."""
    argv = shlex.split(command.text)
    user = argv[argv.index("--auth-user") + 1] if "--auth-user" in argv else "nobody"
    mta = make_sink(auth=(user, DOC_PASSWORD), auth_required="--auth" in argv)
    promised = re.search(r"\b([45]\d\d) ([45]\.\d{1,3}\.\d{1,3})\b", command.comment)
    to = argv[argv.index("--to") + 1]
    if promised:
        mta.on("RCPT", reply=f"{promised.group(1)} {promised.group(2)} as the documentation says",
               match=to)
    cert, key = tls_pair
    cfg = write_config(tmp_path / "postern.toml",
                       [{"tls": "starttls"}, {"tls": "starttls", "auth": "passthrough"}],
                       upstream=mta.address, tls={"cert_file": cert, "key_file": key})
    p = postern.start(config=cfg, listen=())
    plain, submission = listener_ports(p)
    server = argv[argv.index("--server") + 1]
    port = submission if server.endswith(":587") else plain
    argv[argv.index("--server") + 1] = f"127.0.0.1:{port}"
    r = subprocess.run(argv, input=DOC_PASSWORD + "\n", capture_output=True, text=True,
                       timeout=60 * SCALE)
    out = r.stdout + r.stderr
    assert "not available" not in out, f"{command.name}: swaks lacks a feature:\n{out}"
    if promised:
        assert re.search(rf"^<~?\*\* {promised.group(1)} {re.escape(promised.group(2))}", out, re.M), (
            f"{command.name}: expected {promised.group(0)}:\n{out}")
        assert not mta.messages
        return
    assert r.returncode == 0, f"{command.name}: swaks exited {r.returncode}:\n{out}"
    wait_until(lambda: len(mta.messages) == 1, 10 * SCALE, message="the message at the MTA")
    if "--tls" in argv:
        assert b"with ESMTPS (TLSv1.3" in mta.messages[0].content or \
            b"with ESMTPSA (TLSv1.3" in mta.messages[0].content, mta.messages[0].content[:600]
    if "--auth" in argv:
        assert [a[1:] for a in mta.auth_attempts] == [(argv[argv.index("--auth") + 1], user, True)], \
            mta.auth_attempts


# ---------------------------------------------------------------- docs/operations-metrics.md's queries and rules

METRICS_DOC = "docs/operations-metrics.md"


def test_metrics_guide_queries_name_exported_metrics(postern, tmp_path):
    """Every postern_* metric its PromQL examples and alert rules use is one a
    running postern exports (a Redis store configured, so that the store's
    metrics are there too), and every ```yaml block is valid YAML: a query
    copied from the guide does not silently match nothing."""
    import yaml
    from prometheus import http_get
    port = free_port()
    p = postern.start(upstream=f"maildir:{tmp_path / 'mail'}",
                      sets={"metrics.address": f"127.0.0.1:{port}", "store.backend": "redis",
                            "store.redis_address": f"127.0.0.1:{free_port()}"})
    p.wait_for_log("metrics")
    status, _, body = http_get(port, "/metrics")
    assert status == 200
    exported = set(re.findall(r"^# TYPE (\S+) (\S+)$", body, re.M))
    names = set()
    for name, kind in exported:
        names |= {name} | ({f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else set())
    used, yaml_blocks = set(), 0
    for b in doc_commands.blocks(METRICS_DOC):
        if b.lang not in ("promql", "yaml"):
            continue
        if b.lang == "yaml":
            yaml.safe_load(b.text)
            yaml_blocks += 1
        used |= set(re.findall(r"\bpostern_[a-z_]+", b.text))
    assert yaml_blocks == 3 and len(used) >= 12, (yaml_blocks, sorted(used))
    unknown = sorted(used - names)
    assert not unknown, f"{METRICS_DOC} queries metrics postern does not export: {unknown}"
