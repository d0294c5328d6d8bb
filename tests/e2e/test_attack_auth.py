"""Adversarial pass over AUTH passthrough (RFC 4954, SASL PLAIN and LOGIN).

postern relays the SASL exchange to the MTA, which checks the credentials.
Attacked here as a hostile client (bad mechanisms and base64, cancels at
every step, AUTH out of order, pipelined, never ended, brute force, control
octets in the identity), through the identity postern derives (the AUTH=
parameter of MAIL, XCLIENT LOGIN=, the pool of MTA connections), as a
hostile MTA during the exchange (challenges that are not base64, loops,
multi-line, wrong code classes, garbage after 235, closes, stalls), and in
the log (no password, no base64 blob of one, ever).

Each class is tried with several members. The honest MTA is aiosmtpd
(RecordingSink(auth=...)), the hostile one AuthMta below.
"""

import base64
import re
import threading
import time

import pytest

from harness import (ScriptedServer, SmtpClient, check_reply, data_payload, listener_ports, make_cert,
                     make_message, wait_until, write_config)

USER = "alice"
PASSWORD = "S3cr3t-pW-9a1b7c"
WRONG = "Wr0ng-pW-3e5d2f"

# aiosmtpd warns that it takes AUTH without TLS: postern->MTA is loopback plaintext
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def b64(data):
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


PLAIN_OK = b64(f"\0{USER}\0{PASSWORD}")
PLAIN_WRONG = b64(f"\0{USER}\0{WRONG}")
SECRETS = (PASSWORD, WRONG, b64(PASSWORD), b64(WRONG), PLAIN_OK, PLAIN_WRONG,
           b64(f"{USER}\0{PASSWORD}"), b64(f"{USER}\0{WRONG}"))


def assert_no_secrets(p, extra=()):
    """No password, in clear or in any base64 form a client sent, in the log."""
    log = "\n".join(p.lines + p.stdout_lines)
    for secret in SECRETS + tuple(extra):
        assert secret not in log, f"secret {secret!r} in postern's log:\n{log}"


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("certs"), "attack-auth")


def start(postern, tmp_path, cert, upstream, limits=None, timeouts=None, listener=None, sections=None):
    """postern with one STARTTLS listener offering AUTH passthrough; failures
    are not tarpitted and the limits are generous unless a test says."""
    all_sections = {"limits": {"auth_failure_delay": 0, "auth_failures": 20, "errors": 50, **(limits or {})},
                    "timeouts": {"command": 10, "upstream_mail": 10, **(timeouts or {})}}
    all_sections.update(sections or {})
    cfg = write_config(tmp_path / "postern.toml",
                       [listener or {"tls": "starttls", "auth": "passthrough"}], upstream=upstream,
                       tls={"cert_file": cert[0], "key_file": cert[1]}, sections=all_sections)
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    return p, port


def tls_session(port):
    c = SmtpClient(port)
    c.ehlo()
    c.starttls()
    c.ehlo()
    return c


def authenticated(c, mechanism="PLAIN"):
    if mechanism == "PLAIN":
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 235)
    else:
        c.expect("AUTH LOGIN", 334)
        c.expect(b64(USER), 334)
        c.expect(b64(PASSWORD), 235)


def offers_auth(c):
    r = c.ehlo()
    return any(l.upper().startswith("AUTH") for l in r.lines)


# --------------------------------------------------------------------------
# a hostile (or merely scriptable) MTA


class AuthMta(ScriptedServer):
    """An MTA offering AUTH PLAIN LOGIN (and XCLIENT when asked) that records
    every line it is sent and answers each line of an AUTH exchange with
    on_auth(line, step) (step 0 is the AUTH command): bytes to write (the
    exchange goes on while they end in a 334 line), a tuple (bytes,) to
    write them and close, or None to close the connection without a word.
    The default takes any credentials with one 235."""

    def __init__(self, on_auth=None, xclient=False):
        self.on_auth = on_auth or (lambda line, step: b"235 2.7.0 Authentication successful\r\n")
        self.xclient = xclient
        self.lock = threading.Lock()
        self.received = []      # (conn, line)
        self.ended = set()
        self.count = 0
        super().__init__()

    def lines(self, conn=None):
        with self.lock:
            return [l for c, l in self.received if conn is None or c == conn]

    def conn_of(self, prefix):
        with self.lock:
            return [c for c, l in self.received if l.upper().startswith(prefix.upper())]

    def session(self, conn):
        with self.lock:
            self.count += 1
            cid = self.count
        conn.settimeout(30)
        f = conn.makefile("rb")
        step = None          # inside an AUTH exchange: the next response's step
        try:
            conn.sendall(b"220 mta.test ESMTP\r\n")
            while True:
                raw = f.readline(100000)
                if not raw:
                    return
                line = raw.rstrip(b"\r\n").decode("latin-1")
                with self.lock:
                    self.received.append((cid, line))
                verb = line.split(" ", 1)[0].upper()
                if step is not None or verb == "AUTH":
                    step = 0 if step is None else step + 1
                    out = self.on_auth(line, step)
                    if out is None:
                        return
                    hang_up = isinstance(out, tuple)
                    if hang_up:
                        out = out[0]
                    last = out.rstrip(b"\r\n").split(b"\r\n")[-1]
                    if not last.startswith(b"334"):
                        step = None
                    conn.sendall(out)
                    if hang_up:
                        return
                elif verb == "EHLO":
                    conn.sendall(b"250-mta.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n"
                                 b"250-AUTH PLAIN LOGIN\r\n"
                                 + (b"250-XCLIENT ADDR PORT NAME HELO PROTO LOGIN\r\n" if self.xclient else b"")
                                 + b"250 8BITMIME\r\n")
                elif verb == "XCLIENT":
                    conn.sendall(b"220 mta.test ESMTP\r\n")
                elif verb == "DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    while True:
                        l = f.readline(100000)
                        if not l or l == b".\r\n":
                            break
                    conn.sendall(b"250 2.0.0 Ok: queued as MTA1\r\n")
                elif verb == "QUIT":
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    conn.sendall(b"250 2.0.0 Ok\r\n")
        except OSError:
            pass
        finally:
            with self.lock:
                self.ended.add(cid)
            try:
                conn.close()
            except OSError:
                pass


@pytest.fixture
def make_mta():
    mtas = []

    def make(**kw):
        m = AuthMta(**kw)
        mtas.append(m)
        return m

    try:
        yield make
    finally:
        for m in mtas:
            m.close()


# --------------------------------------------------------------------------
# client side: the AUTH command itself


@pytest.mark.parametrize("line, code, enhanced", [
    ("AUTH CRAM-MD5", 504, "5.5.4"),                       # a mechanism postern does not relay
    ("AUTH XOAUTH2 dXNlcj1h", 504, "5.5.4"),
    ("AUTH PLAINX", 504, "5.5.4"),
    ("AUTH " + "P" * 1500, 504, "5.5.4"),                  # overlong mechanism name
    ("AUTH PLAIN\tAAAA", 504, "5.5.4"),                    # no SP between mechanism and response
    ("AUTH PLAIN AB!C", 501, "5.5.2"),                     # bad characters
    ("AUTH PLAIN AGFs aWNl", 501, "5.5.2"),                # whitespace inside
    ("AUTH PLAIN  AGFsaWNl", 501, "5.5.2"),                # two spaces
    ("AUTH PLAIN =AAA", 501, "5.5.2"),                     # padding first
    ("AUTH PLAIN AA=A", 501, "5.5.2"),                     # padding inside
    ("AUTH PLAIN AAA", 501, "5.5.2"),                      # length not a multiple of 4
    ("AUTH PLAIN AA===", 501, "5.5.2"),                    # three pads
    ("AUTH LOGIN dXNlcg==dXNlcg==", 501, "5.5.2"),         # padding then more
    ("AUTH PLAIN ====", 501, "5.5.2"),
    ("AUTH PLAIN ==", 501, "5.5.2"),
], ids=["cram-md5", "xoauth2", "plainx", "overlong-mech", "tab", "bad-chars", "space-inside", "two-spaces",
        "pad-first", "pad-inside", "unpadded", "three-pads", "pad-then-more", "all-pads", "two-pads"])
def test_bad_auth_command_is_refused_and_session_stays_usable(postern, tmp_path, cert, make_mta, line, code,
                                                              enhanced):
    """Every refusal has its code and enhanced code and is postern's own:
    the MTA (one that would take anything) never hears it, and a correct
    AUTH works right after it. Base64 is RFC 4648's, strictly: what postern
    relays is what it reads the identity from."""
    mta = make_mta()
    p, port = start(postern, tmp_path, cert, mta.address)
    with tls_session(port) as c:
        check_reply(c.cmd(line), code, enhanced, line[:60])
        c.expect("NOOP", 250)
        authenticated(c)
    assert [l for l in mta.lines() if l.upper().startswith("AUTH")] == [f"AUTH PLAIN {PLAIN_OK}"]
    assert p.wait_for_log("auth", result="ok").get("user") == USER
    assert_no_secrets(p)


def test_wrong_credentials_reach_the_mta_and_are_refused(postern, tmp_path, cert, make_sink):
    """The control for the above: valid base64 is relayed, the MTA decides."""
    sink = make_sink(auth=(USER, PASSWORD))
    p, port = start(postern, tmp_path, cert, sink.address)
    with tls_session(port) as c:
        c.expect(f"AUTH PLAIN {PLAIN_WRONG}", 535, "5.7.8")
        authenticated(c)
    assert [a[1:] for a in sink.auth_attempts] == [("PLAIN", USER, False), ("PLAIN", USER, True)]
    assert_no_secrets(p)


@pytest.mark.parametrize("line", [f"auth plain {PLAIN_OK}", f"Auth Plain {PLAIN_OK}", f"AUTH plain {PLAIN_OK}"])
def test_mechanism_and_verb_are_case_insensitive(postern, tmp_path, cert, make_sink, line):
    sink = make_sink(auth=(USER, PASSWORD))
    p, port = start(postern, tmp_path, cert, sink.address)
    with tls_session(port) as c:
        c.expect(line, 235)
    assert [a[1:] for a in sink.auth_attempts] == [("PLAIN", USER, True)]


def test_empty_initial_response_is_relayed_as_empty(postern, tmp_path, cert, make_mta):
    """"=" is the empty initial response (RFC 4954 §4): relayed as "=", never
    read as base64 of something."""
    mta = make_mta(on_auth=lambda line, step: b"535 5.7.8 empty\r\n")
    p, port = start(postern, tmp_path, cert, mta.address)
    with tls_session(port) as c:
        c.expect("AUTH PLAIN =", 535, "5.7.8")
        c.expect("AUTH LOGIN =", 535, "5.7.8")
        c.expect("NOOP", 250)
        assert offers_auth(c)
    assert [l for l in mta.lines() if l.startswith("AUTH")] == ["AUTH PLAIN =", "AUTH LOGIN ="]


@pytest.mark.parametrize("script", [
    ["AUTH PLAIN", "*"],
    ["AUTH LOGIN", "*"],
    ["AUTH LOGIN", b64(USER), "*"],
    [f"AUTH LOGIN {b64(USER)}", "*"],
], ids=["plain-first", "login-user", "login-password", "login-initial-password"])
def test_cancel_at_every_step(postern, tmp_path, cert, make_sink, script):
    """"*" at any step ends the exchange with 501 (aiosmtpd's own answer,
    relayed): back to commands, nobody authenticated, AUTH still possible."""
    sink = make_sink(auth=(USER, PASSWORD))
    p, port = start(postern, tmp_path, cert, sink.address)
    with tls_session(port) as c:
        for line in script[:-1]:
            c.expect(line, 334)
        check_reply(c.cmd("*"), 501, None, "cancel")
        c.expect("NOOP", 250)
        c.expect("MAIL FROM:<a@example.org>", 250)
        c.expect("RSET", 250)
        assert offers_auth(c)
        authenticated(c, "LOGIN")
    p.wait_for_log("auth", result="ok")
    assert len(p.events("auth", result="ok")) == 1
    assert [a[1:] for a in sink.auth_attempts][-1] == ("LOGIN", USER, True)
    assert_no_secrets(p)


# --------------------------------------------------------------------------
# client side: AUTH out of order


def test_auth_out_of_order(postern, tmp_path, cert, make_sink):
    sink = make_sink(auth=(USER, PASSWORD))
    p, port = start(postern, tmp_path, cert, sink.address)
    # before EHLO, after HELO, and before STARTTLS: nothing leaves postern
    with SmtpClient(port) as c:
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 538, "5.7.11")     # no TLS yet
        c.ehlo()
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 538, "5.7.11")
        c.expect("AUTH LOGIN", 538, "5.7.11")
        c.starttls()
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 503, "5.5.1")      # TLS, but no EHLO after it
        c.expect("HELO client.example", 250)
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 503, "5.5.1")      # HELO is not EHLO
        c.ehlo()
        c.expect("MAIL FROM:<a@example.org>", 250)
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 503, "5.5.1")      # inside a transaction
        c.expect("RCPT TO:<b@example.com>", 250)
        c.expect("AUTH LOGIN", 503, "5.5.1")
        c.expect("RSET", 250)
        authenticated(c)
        for again in (f"AUTH PLAIN {PLAIN_OK}", "AUTH LOGIN", "AUTH CRAM-MD5", "AUTH PLAIN !!"):
            c.expect(again, 503, "5.5.1")                   # already authenticated
    assert [a[1:] for a in sink.auth_attempts] == [("PLAIN", USER, True)], sink.auth_attempts
    assert_no_secrets(p)


def test_auth_on_require_tls_listener_before_tls(postern, tmp_path, cert, make_sink):
    """require_tls: MAIL gets 530, AUTH 538; credentials never leave in clear."""
    sink = make_sink(auth=(USER, PASSWORD))
    p, port = start(postern, tmp_path, cert, sink.address,
                    listener={"tls": "starttls", "auth": "passthrough", "require_tls": True})
    with SmtpClient(port) as c:
        c.ehlo()
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 538, "5.7.11")
        c.expect("AUTH LOGIN", 538, "5.7.11")
        c.expect(b64(USER), 500, "5.5.2")                    # not an exchange: an unknown command
        c.expect("MAIL FROM:<a@example.org>", 530, "5.7.0")
    assert not sink.auth_attempts
    assert not sink.commands("AUTH")
    assert_no_secrets(p, extra=(b64(USER),))


def test_auth_pipelined_with_mail(postern, tmp_path, cert, make_sink):
    """AUTH is not pipelinable (RFC 4954 §4), yet clients do it: the commands
    behind an AUTH with an initial response run after its 235 in order;
    behind an AUTH that gets 334 they are SASL responses, and one that is
    not base64 ends the exchange with 501 without reaching the MTA."""
    sink = make_sink(auth=(USER, PASSWORD), auth_required=True)
    p, port = start(postern, tmp_path, cert, sink.address)
    with tls_session(port) as c:
        c.send("AUTH LOGIN\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\n")
        check_reply(c.read_reply(), 334)
        check_reply(c.read_reply(), 501, "5.5.2", "MAIL read as a SASL response")
        check_reply(c.read_reply(), 250, None, "NOOP back to commands")
        c.send(f"AUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        check_reply(c.read_reply(), 235)
        check_reply(c.read_reply(), 250)
        check_reply(c.read_reply(), 250)
        check_reply(c.read_reply(), 354)
        c.send(data_payload(make_message("pipelined auth")))
        check_reply(c.read_reply(), 250)
    assert [a[1:] for a in sink.auth_attempts] == [("PLAIN", USER, True)], sink.auth_attempts
    assert len(sink.wait_messages(1)) == 1


@pytest.mark.parametrize("stage", ["first", "second"])
def test_overlong_sasl_response_ends_the_exchange(postern, tmp_path, cert, make_sink, stage):
    """A response over the line limit is refused and ends the exchange (the
    MTA's is cancelled): the next line is a command again, not a password.
    QUIT, RSET, NOOP and DATA are all base64 too."""
    sink = make_sink(auth=(USER, PASSWORD))
    p, port = start(postern, tmp_path, cert, sink.address)
    with tls_session(port) as c:
        c.expect("AUTH LOGIN", 334)
        if stage == "second":
            c.expect(b64(USER), 334)
        c.send("QUJD" * 4000 + "\r\n")
        r = c.read_reply()
        assert r.code in (500, 501) and r.enhanced == "5.5.2", r
        c.expect("NOOP", 250)
        c.expect("RSET", 250)
        authenticated(c)
        c.expect("QUIT", 221)
    assert [a[1:] for a in sink.auth_attempts][-1] == ("PLAIN", USER, True), sink.auth_attempts
    assert all(a[3] is False or a[1] == "PLAIN" for a in sink.auth_attempts)


def test_overlong_initial_response(postern, tmp_path, cert, make_sink):
    sink = make_sink(auth=(USER, PASSWORD))
    p, port = start(postern, tmp_path, cert, sink.address)
    with tls_session(port) as c:
        c.send("AUTH PLAIN " + "QUJD" * 4000 + "\r\n")
        check_reply(c.read_reply(), 500, "5.5.2")
        c.expect("NOOP", 250)
        authenticated(c)
    assert [a[1:] for a in sink.auth_attempts] == [("PLAIN", USER, True)]


@pytest.mark.parametrize("partial", ["", "dXNlcg", "dXNl\r"], ids=["nothing", "no-crlf", "cr-only"])
def test_response_that_never_ends_times_out(postern, tmp_path, cert, make_mta, partial):
    mta = make_mta(on_auth=lambda line, step: b"334 VXNlcm5hbWU6\r\n")
    p, port = start(postern, tmp_path, cert, mta.address, timeouts={"command": 2})
    with tls_session(port) as c:
        c.expect("AUTH LOGIN", 334)
        c.send(partial)
        check_reply(c.read_reply(timeout=20), 421, "4.4.2")
        assert c.wait_closed(10)
    wait_until(lambda: len(mta.ended) >= 1 and mta.count >= 1, 10, message="the MTA connection closed")
    assert not p.events("auth", result="ok")


@pytest.mark.parametrize("how", ["wrong-password", "cancel", "bad-base64"])
def test_repeated_failures_end_with_421(postern, tmp_path, cert, make_sink, how):
    sink = make_sink(auth=(USER, PASSWORD))
    p, port = start(postern, tmp_path, cert, sink.address, limits={"auth_failures": 3})
    with tls_session(port) as c:
        replies = []
        for _ in range(3):
            if how == "wrong-password":
                replies.append(c.cmd(f"AUTH PLAIN {PLAIN_WRONG}").code)
            else:
                c.expect("AUTH LOGIN", 334)
                replies.append(c.cmd("*" if how == "cancel" else "!!!!").code)
        assert replies[:2] == [replies[0]] * 2 and replies[0] // 100 == 5, replies
        check_reply(c.read_reply(), 421, "4.7.0", "after the third failure")
        assert c.wait_closed(10)
    p.wait_for_log("too-many-auth-failures")
    assert len(sink.auth_attempts) <= 3
    assert_no_secrets(p)


@pytest.mark.parametrize("identity", [
    b"\0ali\rce\0" + PASSWORD.encode(),                 # CR in the authcid
    b"\0ali\nce\0" + PASSWORD.encode(),                 # LF
    b"\0alice\0\0" + PASSWORD.encode(),                 # NUL after the authcid (an extra field)
    b"boss\0alice\0" + PASSWORD.encode(),               # an authzid
    b"\0al ice+x=y\0" + PASSWORD.encode(),              # SP, + and = (xtext specials)
    b"\0" + "ålîçe".encode() + b"\0" + PASSWORD.encode(),  # 8-bit
], ids=["cr", "lf", "nul", "authzid", "xtext-specials", "8bit"])
def test_hostile_octets_in_plain_identity(postern, tmp_path, cert, make_mta, identity):
    """The identity postern learns from PLAIN reaches the log, XCLIENT LOGIN=
    and the Received field only as printable text: the MTA (here one that
    takes any credentials, closes after 235 so the next MAIL needs a new
    connection with XCLIENT) never sees a raw control octet or space in
    XCLIENT, and the password is never the identity."""
    mta = make_mta(on_auth=lambda line, step: (b"235 2.7.0 Authentication successful\r\n",), xclient=True)
    p, port = start(postern, tmp_path, cert, mta.address)
    with tls_session(port) as c:
        c.expect(f"AUTH PLAIN {b64(identity)}", 235)
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("identity")), 250)
    line = p.wait_for_log("auth", result="ok")
    user = line.get("user")
    assert user and all(32 <= ord(ch) < 127 for ch in user), line
    assert PASSWORD not in user
    for l in mta.lines():
        assert "\r" not in l and "\0" not in l, l
    logins = [l.split("LOGIN=", 1)[1] for l in mta.lines() if l.upper().startswith("XCLIENT") and "LOGIN=" in l]
    assert logins, mta.lines()     # the new connection after the MTA's close speaks for the user
    for login in logins:
        assert " " not in login and all(33 <= ord(ch) < 127 and ch != "=" for ch in login), logins
        decoded = re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), login)
        assert decoded == user, (decoded, user)
    assert_no_secrets(p, extra=(b64(identity),))


@pytest.mark.parametrize("mechanism, lines", [
    ("PLAIN", [f"AUTH PLAIN {b64(chr(0) + chr(0) + PASSWORD)}"]),      # an empty authcid
    ("LOGIN", ["AUTH LOGIN =", b64(PASSWORD)]),                          # an empty user name
    ("LOGIN", ["AUTH LOGIN", "", b64(PASSWORD)]),
], ids=["plain-empty-authcid", "login-empty-initial", "login-empty-line"])
def test_authenticated_without_a_name_is_still_authenticated(postern, tmp_path, cert, make_mta, mechanism, lines):
    """An MTA that says 235 to an identity with no name: its session is
    authenticated, so postern's is too (a second AUTH is 503 and never
    reaches the MTA, EHLO offers AUTH no more), though it knows no name."""
    def on_auth(line, step):
        # as many 334s as the client's script has lines, then 235
        return b"334 UGFzc3dvcmQ6\r\n" if step < len(lines) - 1 else b"235 2.7.0 Ok\r\n"

    mta = make_mta(on_auth=on_auth)
    p, port = start(postern, tmp_path, cert, mta.address)
    with tls_session(port) as c:
        for line in lines[:-1]:
            c.expect(line, 334)
        c.expect(lines[-1], 235)
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 503, "5.5.1")
        assert not offers_auth(c)
    assert not [l for l in mta.lines() if l == f"AUTH PLAIN {PLAIN_OK}"]
    assert_no_secrets(p, extra=(b64(chr(0) + chr(0) + PASSWORD),))


# --------------------------------------------------------------------------
# identity: AUTH= on MAIL, resets, the pool


@pytest.mark.parametrize("auth_param", ["AUTH=<>", "AUTH=boss@example.org", "AUTH=boss+2Bx@example.org"])
@pytest.mark.parametrize("who", ["unauthenticated", "authenticated"])
def test_mail_auth_parameter_is_never_trusted(postern, tmp_path, cert, make_mta, auth_param, who):
    """RFC 4954 §5: a server offering AUTH takes the AUTH= parameter of MAIL;
    one that does not trust it behaves as if AUTH=<> was given. postern
    accepts it where it offers AUTH and asserts nobody upstream: the MTA,
    which authenticated the client itself, never hears a submitter from it."""
    mta = make_mta()
    p, port = start(postern, tmp_path, cert, mta.address)
    with tls_session(port) as c:
        if who == "authenticated":
            authenticated(c)
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("auth param"),
                                   mail_params=auth_param), 250)
    mails = [l for l in mta.lines() if l.upper().startswith("MAIL FROM")]
    assert mails == ["MAIL FROM:<a@example.org>"], mails


@pytest.mark.parametrize("auth_param, code", [
    ("AUTH=", 501), ("AUTH=a+ZZb@example.org", 501), ("AUTH=a+2", 501), ("AUTH", 501),
    ("AUTH=" + "a" * 600, 501),
], ids=["empty", "bad-hex", "short-hex", "no-value", "overlong"])
def test_malformed_mail_auth_parameter(postern, tmp_path, cert, make_mta, auth_param, code):
    mta = make_mta()
    p, port = start(postern, tmp_path, cert, mta.address)
    with tls_session(port) as c:
        check_reply(c.cmd(f"MAIL FROM:<a@example.org> {auth_param}"), code, "5.5.4", auth_param[:40])
        c.expect("MAIL FROM:<a@example.org>", 250)
    assert not [l for l in mta.lines() if "AUTH=" in l.upper()]


def test_mail_auth_parameter_where_auth_is_not_offered(postern, tmp_path, cert, make_mta):
    """Before TLS (AUTH not offered) it is an unknown parameter: 555."""
    mta = make_mta()
    p, port = start(postern, tmp_path, cert, mta.address)
    with SmtpClient(port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@example.org> AUTH=<>", 555, "5.5.4")


def test_identity_survives_rset_and_ehlo_not_a_new_session(postern, tmp_path, cert, make_sink):
    sink = make_sink(auth=(USER, PASSWORD), auth_required=True)
    p, port = start(postern, tmp_path, cert, sink.address)
    with tls_session(port) as c:
        authenticated(c)
        c.expect("RSET", 250)
        c.expect("AUTH LOGIN", 503, "5.5.1")
        c.ehlo()
        c.expect("AUTH LOGIN", 503, "5.5.1")
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("after rset")), 250)
    with tls_session(port) as c:   # a new session is not authenticated
        assert offers_auth(c)
        c.expect("MAIL FROM:<a@example.org>", 530, "5.7.0")   # the MTA: this connection never authenticated
    assert b" with ESMTPSA " in sink.wait_messages(1)[0].received


@pytest.mark.parametrize("first", ["authenticated", "refused", "cancelled"])
def test_auth_never_leaks_through_the_upstream_pool(postern, tmp_path, cert, make_sink, first):
    """An MTA connection that carried AUTH (succeeded, refused or cancelled)
    is never handed to a later client: the next, unauthenticated client's
    message goes over another connection, which the MTA never authenticated
    (auth_required: it refuses MAIL there, 530)."""
    sink = make_sink(auth=(USER, PASSWORD), auth_required=True)
    p, port = start(postern, tmp_path, cert, sink.address)
    with tls_session(port) as c:
        if first == "authenticated":
            authenticated(c)
            check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("first")), 250)
        elif first == "refused":
            c.expect(f"AUTH PLAIN {PLAIN_WRONG}", 535)
        else:
            c.expect("AUTH LOGIN", 334)
            c.expect(b64(USER), 334)
            check_reply(c.cmd("*"), 501)
        c.expect("QUIT", 221)
    for _ in range(3):
        with tls_session(port) as c:
            # 530 from the MTA itself: this connection never authenticated
            c.expect("MAIL FROM:<x@example.org>", 530, "5.7.0")
            c.expect("QUIT", 221)
    assert len(sink.auth_attempts) == (0 if first == "cancelled" else 1), sink.auth_attempts


# --------------------------------------------------------------------------
# MTA side: a hostile upstream during the exchange


def never_authenticated(p, c):
    """postern did not take the client for authenticated: no auth=ok line, and
    AUTH is offered and accepted again."""
    assert not p.events("auth", result="ok"), p.events("auth")
    assert offers_auth(c)


@pytest.mark.parametrize("reply", [
    b"250 2.0.0 Ok\r\n",                     # 2xx but not 235: the client might read success
    b"220 mta.test ESMTP\r\n",
    b"354 go ahead\r\n",                     # another 3xx
    b"235-2.7.0 Authentication\r\n334 more\r\n",   # code changes inside a reply
    b"334-dXNlcg==\r\n334 cGFzcw==\r\n",     # a multi-line challenge
    b"334 this is not base64!\r\n",          # a challenge that is not base64
    b"334 " + b"QUJD" * 5000 + b"\r\n",      # a huge challenge
    b"600 6.0.0 nonsense\r\n",
    b"235\r\n" + b"250 2.1.0 smuggled\r\n",  # 235, then a reply nobody asked for
], ids=["250", "220", "354", "mixed-codes", "multiline-334", "non-base64-334", "huge-334", "600", "235-garbage"])
def test_hostile_reply_to_auth(postern, tmp_path, cert, make_mta, reply):
    """Whatever the MTA answers, the client hears a reply with an enhanced
    code it can act on (235 only where the MTA said exactly 235, and then
    nothing smuggled behind it is taken as a reply), never a 2xx that is not
    235, never a 334 that is not one base64 line; and the session goes on."""
    mta = make_mta(on_auth=lambda line, step: reply)
    p, port = start(postern, tmp_path, cert, mta.address)
    with tls_session(port) as c:
        r = c.cmd(f"AUTH PLAIN {PLAIN_OK}")
        if reply.startswith(b"235\r\n") and r.code == 235:
            assert p.wait_for_log("auth", result="ok")
            # the smuggled 250 is not MAIL's reply
            r = c.cmd("MAIL FROM:<a@example.org>")
            assert r.code // 100 == 4 and r.enhanced, r
            return
        assert r.code // 100 in (4, 5) and r.enhanced and r.enhanced[0] == str(r.code // 100), r
        c.expect("NOOP", 250)
        never_authenticated(p, c)
    assert_no_secrets(p)


@pytest.mark.parametrize("where", [0, 1, 2], ids=["at-auth", "at-user", "at-password"])
def test_mta_closes_mid_exchange(postern, tmp_path, cert, make_mta, where):
    def on_auth(line, step):
        if step == where:
            return None
        return b"334 VXNlcm5hbWU6\r\n" if step == 0 else b"334 UGFzc3dvcmQ6\r\n"

    mta = make_mta(on_auth=on_auth)
    p, port = start(postern, tmp_path, cert, mta.address)
    with tls_session(port) as c:
        r = c.cmd("AUTH LOGIN")
        for step, line in ((1, b64(USER)), (2, b64(PASSWORD))):
            if r.code != 334:
                break
            r = c.cmd(line)
        assert r.code // 100 == 4 and r.enhanced and r.enhanced.startswith("4."), r
        if r.code != 421:
            c.expect("NOOP", 250)
            never_authenticated(p, c)
    assert not p.events("auth", result="ok")
    assert_no_secrets(p)


def test_endless_challenges_are_cut_short(postern, tmp_path, cert, make_mta):
    """An MTA that answers every response with another 334 (even the "*"
    cancel) cannot hold the client in the exchange: after the mechanism's
    steps postern ends it with 4xx and drops that MTA connection."""
    mta = make_mta(on_auth=lambda line, step: b"334 UGFzc3dvcmQ6\r\n")
    p, port = start(postern, tmp_path, cert, mta.address)
    with tls_session(port) as c:
        r = c.cmd("AUTH LOGIN")
        steps = 0
        while r.code == 334 and steps < 50:
            r = c.cmd(b64(f"x{steps}"))
            steps += 1
        assert r.code // 100 == 4 and r.enhanced, (steps, r)
        assert steps <= 3, steps
        c.expect("NOOP", 250)
        never_authenticated(p, c)
        # a cancel answered with 334 is cut short too
        r = c.cmd("AUTH LOGIN")
        check_reply(r, 334)
        r = c.cmd("*")
        steps = 0
        while r.code == 334 and steps < 50:
            r = c.cmd("*")
            steps += 1
        assert r.code // 100 in (4, 5) and steps <= 3, (steps, r)
        c.expect("NOOP", 250)


def test_slow_mta_during_exchange(postern, tmp_path, cert, make_mta):
    """The MTA stalls beyond timeouts.upstream_mail: the client hears 4xx
    in bounded time, and postern does not take it for authenticated even
    though the 235 comes late."""
    def on_auth(line, step):
        if step == 0:
            return b"334 VXNlcm5hbWU6\r\n"
        time.sleep(4)
        return b"235 2.7.0 late\r\n"

    mta = make_mta(on_auth=on_auth)
    p, port = start(postern, tmp_path, cert, mta.address, timeouts={"upstream_mail": 1})
    with tls_session(port) as c:
        c.expect("AUTH LOGIN", 334)
        r = c.cmd(b64(USER), timeout=30)
        assert r.code // 100 == 4 and r.enhanced, r
        if r.code != 421:
            c.expect("NOOP", 250)
            never_authenticated(p, c)
    assert not p.events("auth", result="ok")


# --------------------------------------------------------------------------
# logging: credentials never reach the log


def test_no_credentials_in_the_log_on_any_path(postern, tmp_path, cert, make_sink):
    sink = make_sink(auth=(USER, PASSWORD))
    p, port = start(postern, tmp_path, cert, sink.address, sections={"audit": {"path": str(tmp_path / "audit.jsonl")}})
    with tls_session(port) as c:
        c.expect(f"AUTH PLAIN {PLAIN_WRONG}", 535)
        c.expect("AUTH LOGIN", 334)
        c.expect(b64(USER), 334)
        c.expect(b64(WRONG), 535)
        # LOGIN with the user as initial response: the next line is the password
        c.expect(f"AUTH LOGIN {b64(USER)}", 334)
        c.expect(b64(WRONG), 535)
        c.expect("AUTH PLAIN", 334)
        c.expect(PLAIN_WRONG + "!", 501, "5.5.2")          # a parse error on a credential
        c.expect(f"AUTH PLAIN {PLAIN_WRONG}=", 501, "5.5.2")
        c.expect(PLAIN_WRONG, 500, "5.5.2")                 # a credential out of turn
        c.expect(f"AUTH XPLAIN {PLAIN_WRONG}", 504)
        c.send("AUTH PLAIN " + PLAIN_WRONG * 200 + "\r\n")  # over-long
        check_reply(c.read_reply(), 500, "5.5.2")
        c.expect(f"AUTH LOGIN {b64(USER)}", 334)
        c.expect(b64(PASSWORD), 235)
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("logged")), 250)
    line = p.wait_for_log("auth", result="ok")
    assert line.get("user") == USER, line
    assert_no_secrets(p, extra=(PLAIN_WRONG + "!",))
    p.stop()
    audit = (tmp_path / "audit.jsonl").read_text()
    for secret in SECRETS:
        assert secret not in audit, secret
