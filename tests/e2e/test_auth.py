"""AUTH passthrough (RFC 4954): a listener with auth = "passthrough" relays
SASL PLAIN and LOGIN to the MTA, which decides; only under TLS.

The MTA is an aiosmtpd server (RecordingSink(auth=...)) that really checks
one user and password, and with auth_required=True refuses MAIL before AUTH,
so a relayed message proves the upstream session itself was authenticated.
Clients: swaks (--tls --auth) and the raw SmtpClient.
"""

import base64

import pytest

from harness import (SmtpClient, check_reply, listener_ports, make_cert, make_message,
                     run_swaks, strip_received, write_config)

USER = "alice"
PASSWORD = "S3cr3t-pW-7f1c9e"
WRONG = "Wr0ng-pW-4d2a8b"


def b64(data):
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


# aiosmtpd warns that it takes AUTH without TLS: postern->MTA is loopback plaintext
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

PLAIN_OK = b64(f"\0{USER}\0{PASSWORD}")
PLAIN_WRONG = b64(f"\0{USER}\0{WRONG}")


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("certs"), "auth")


def start(postern, sink, tmp_path, cert, listeners=({"tls": "starttls", "auth": "passthrough"},)):
    cfg = write_config(tmp_path / "postern.toml", list(listeners), upstream=sink.address,
                       tls={"cert_file": cert[0], "key_file": cert[1]})
    p = postern.start(config=cfg, listen=())
    return p, listener_ports(p)


def assert_no_secrets(p):
    """No password, in clear or in any base64 form a client sent, in the log."""
    log = "\n".join(p.lines + p.stdout_lines)
    for secret in (PASSWORD, WRONG, b64(PASSWORD), b64(WRONG), PLAIN_OK, PLAIN_WRONG,
                   b64(f"{USER}\0{PASSWORD}"), b64(f"\0{USER}\0{PASSWORD}")[:-4]):
        assert secret not in log, f"secret {secret!r} in postern's log:\n{log}"


def tls_session(port):
    c = SmtpClient(port)
    c.ehlo()
    c.starttls()
    return c, c.ehlo()


def test_no_auth_before_tls_then_offered(postern, tmp_path, cert, make_sink):
    sink = make_sink(auth=(USER, PASSWORD))
    p, (port,) = start(postern, sink, tmp_path, cert)
    with SmtpClient(port) as c:
        r = c.ehlo()
        assert "STARTTLS" in r.lines
        assert not any(l.upper().startswith("AUTH") for l in r.lines), r
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 538, "5.7.11")
        c.expect("AUTH LOGIN", 538, "5.7.11")
        c.expect("NOOP", 250)
        c.starttls()
        r = c.ehlo()
        assert "AUTH PLAIN LOGIN" in r.lines, r
    assert not sink.auth_attempts, sink.auth_attempts
    assert_no_secrets(p)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_auth_relays(postern, tmp_path, cert, make_sink, mechanism):
    sink = make_sink(auth=(USER, PASSWORD), auth_required=True)
    p, (port,) = start(postern, sink, tmp_path, cert)
    r = run_swaks(["--server", f"127.0.0.1:{port}", "--tls", "--ehlo", "client.example",
                   "--auth", mechanism, "--auth-user", USER, "--auth-password", PASSWORD,
                   "--from", "alice@example.org", "--to", "bob@example.com",
                   "--header", f"Subject: auth {mechanism}", "--body", "authenticated\n"])
    assert r.returncode == 0, f"swaks failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert "<~  235" in r.stdout, r.stdout
    msgs = sink.wait_messages(1)
    assert msgs[0].mail_from == "alice@example.org" and msgs[0].rcpt_tos == ["bob@example.com"]
    assert b"authenticated" in msgs[0].body
    received = strip_received(msgs[0].content)[0].decode()
    assert " with ESMTPSA (TLSv1." in received, received
    line = p.wait_for_log("auth", result="ok")
    assert line.get("user") == USER and line.get("mechanism") == mechanism, line
    assert [a[1:] for a in sink.auth_attempts] == [(mechanism, USER, True)], sink.auth_attempts
    assert_no_secrets(p)


def test_wrong_password_relays_mta_reply(postern, tmp_path, cert, make_sink):
    sink = make_sink(auth=(USER, PASSWORD), auth_required=True)
    p, (port,) = start(postern, sink, tmp_path, cert)
    c, _ = tls_session(port)
    with c:
        # aiosmtpd's own refusal, verbatim
        r = c.cmd(f"AUTH PLAIN {PLAIN_WRONG}")
        assert str(r) == "535 5.7.8 Authentication credentials invalid", r
        # LOGIN: the MTA's challenges pass through unchanged too
        r = c.expect("AUTH LOGIN", 334)
        assert base64.b64decode(r.lines[0]).lower().startswith(b"user"), r
        r = c.expect(b64(USER), 334)
        assert base64.b64decode(r.lines[0]).lower().startswith(b"pass"), r
        r = c.cmd(b64(WRONG))
        assert str(r) == "535 5.7.8 Authentication credentials invalid", r
        # not authenticated: the MTA refuses the transaction
        c.expect("MAIL FROM:<alice@example.org>", 530, "5.7.0")
    assert [a[1:] for a in sink.auth_attempts] == [("PLAIN", USER, False), ("LOGIN", USER, False)]
    fails = p.wait_for_log("auth", count=2)
    assert all(f.get("result", "").startswith("535") for f in fails), fails
    assert not p.events("auth", result="ok")
    assert_no_secrets(p)


def test_auth_twice_is_503(postern, tmp_path, cert, make_sink):
    sink = make_sink(auth=(USER, PASSWORD))
    p, (port,) = start(postern, sink, tmp_path, cert)
    c, _ = tls_session(port)
    with c:
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 235)
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 503, "5.5.1")
        r = c.ehlo()
        assert not any(l.upper().startswith("AUTH") for l in r.lines), r
        c.expect("AUTH LOGIN", 503, "5.5.1")
        check_reply(c.send_message("alice@example.org", ["bob@example.com"], make_message("twice")), 250)
    assert len(sink.auth_attempts) == 1, sink.auth_attempts
    assert b" with ESMTPSA " in sink.wait_messages(1)[0].received
    assert_no_secrets(p)


def test_unknown_mechanism_is_504(postern, tmp_path, cert, make_sink):
    sink = make_sink(auth=(USER, PASSWORD))
    p, (port,) = start(postern, sink, tmp_path, cert)
    c, _ = tls_session(port)
    with c:
        c.expect("AUTH CRAM-MD5", 504, "5.5.4")
        c.expect("NOOP", 250)
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 235)
    assert [a[1:] for a in sink.auth_attempts] == [("PLAIN", USER, True)]


def test_client_cancels(postern, tmp_path, cert, make_sink):
    sink = make_sink(auth=(USER, PASSWORD))
    p, (port,) = start(postern, sink, tmp_path, cert)
    c, _ = tls_session(port)
    with c:
        c.expect("AUTH LOGIN", 334)
        r = c.cmd("*")
        assert str(r) == "501 5.7.0 Auth aborted", r     # aiosmtpd's reply, relayed
        c.expect("NOOP", 250)                            # back to commands
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 235)
    assert_no_secrets(p)


def test_mta_without_auth_is_454(postern, tmp_path, cert, make_sink):
    sink = make_sink()   # aiosmtpd offers no AUTH on plaintext by default
    p, (port,) = start(postern, sink, tmp_path, cert)
    c, r = tls_session(port)
    with c:
        assert "AUTH PLAIN LOGIN" in r.lines, r
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 454, "4.7.0")
        c.expect("AUTH LOGIN", 454, "4.7.0")
        check_reply(c.send_message("alice@example.org", ["bob@example.com"], make_message("noauth")), 250)
    p.wait_for_log("upstream-auth-unavailable")
    assert b" with ESMTPS " in sink.wait_messages(1)[0].received
    assert_no_secrets(p)


def test_auth_off_listener_is_502(postern, tmp_path, cert, make_sink):
    sink = make_sink(auth=(USER, PASSWORD))
    p, (off, on) = start(postern, sink, tmp_path, cert,
                         [{"tls": "starttls", "auth": "off"}, {"tls": "starttls", "auth": "passthrough"}])
    c, r = tls_session(off)
    with c:
        assert not any(l.upper().startswith("AUTH") for l in r.lines), r
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 502, "5.5.1")
    c, r = tls_session(on)
    with c:
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 235)
    assert [a[1:] for a in sink.auth_attempts] == [("PLAIN", USER, True)]


def test_authenticated_sessions_run_the_submission_policy(postern, tmp_path, cert, make_sink):
    """[submission] scripts replace the [lua] rules once the client authenticated."""
    sink = make_sink(auth=(USER, PASSWORD))
    inbound = tmp_path / "inbound.lua"
    inbound.write_text('postern.rule{ name = "INBOUND", stage = "eom", fn = function(ctx)\n'
                       '  return postern.reject("5.7.1", "inbound policy ran")\nend }\n')
    submission = tmp_path / "submission.lua"
    submission.write_text('postern.rule{ name = "SUBMIT", stage = "eom", fn = function(ctx)\n'
                          '  ctx:add_header("X-Submitted-By", ctx.client.auth_user)\nend }\n')
    cfg = write_config(tmp_path / "postern.toml", [{"tls": "starttls", "auth": "passthrough"}],
                       upstream=sink.address, tls={"cert_file": cert[0], "key_file": cert[1]},
                       sections={"lua": {"scripts": [str(inbound)]},
                                 "submission": {"scripts": [str(submission)]}})
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    msg = make_message("submission policy")
    # Not authenticated: the inbound rules.
    c, _ = tls_session(port)
    r = c.send_message("a@example.org", ["b@example.com"], msg)
    check_reply(r, 554, "5.7.1")
    assert "inbound policy ran" in str(r)
    c.close()
    # Authenticated: the submission rules.
    c, _ = tls_session(port)
    c.expect(f"AUTH PLAIN {PLAIN_OK}", 235)
    check_reply(c.send_message("a@example.org", ["b@example.com"], msg), 250)
    c.close()
    [m] = sink.messages
    assert b"X-Submitted-By: alice\r\n" in m.content
    assert_no_secrets(p)


# --------------------------------------------------------------------------
# issue 18: brute force is bounded, SASL lines are checked before relaying


def start_limited(postern, sink, tmp_path, cert, limits):
    cfg = write_config(tmp_path / "postern.toml", [{"tls": "starttls", "auth": "passthrough"}],
                       upstream=sink.address, tls={"cert_file": cert[0], "key_file": cert[1]},
                       sections={"limits": limits})
    p = postern.start(config=cfg, listen=())
    return p, listener_ports(p)


def test_auth_failures_end_the_session(postern, tmp_path, cert, make_sink):
    """limits.auth_failures = 3: the third 535 is relayed, then 421 4.7.0 and
    the connection closes; the MTA heard three attempts, not sixty; each
    failure was answered later than the last (the tarpit)."""
    import time
    sink = make_sink(auth=(USER, PASSWORD))
    p, (port,) = start_limited(postern, sink, tmp_path, cert,
                               {"auth_failures": 3, "auth_failure_delay": 0.3})
    c, _ = tls_session(port)
    with c:
        waits = []
        for i in range(2):
            start = time.monotonic()
            check_reply(c.cmd(f"AUTH PLAIN {PLAIN_WRONG}"), 535, "5.7.8", f"attempt {i + 1}")
            waits.append(time.monotonic() - start)
        c.send(f"AUTH PLAIN {PLAIN_WRONG}\r\n")
        check_reply(c.read_reply(), 535, "5.7.8", "attempt 3")
        check_reply(c.read_reply(), 421, "4.7.0", "after the third failure")
        assert c.wait_closed(5), "session still open after too many AUTH failures"
    assert waits[0] >= 0.3 and waits[1] >= 0.6, waits
    assert len(sink.auth_attempts) == 3, sink.auth_attempts
    line = p.wait_for_log("too-many-auth-failures")
    assert line.get("failures") == "3", line
    assert_no_secrets(p)


def test_auth_failures_count_toward_limits_errors(postern, tmp_path, cert, make_sink):
    """limits.errors counts failed AUTH like any other error: with errors = 3
    and a high auth_failures, two bad commands and one failed AUTH end it."""
    sink = make_sink(auth=(USER, PASSWORD))
    p, (port,) = start_limited(postern, sink, tmp_path, cert,
                               {"errors": 3, "auth_failures": 50, "auth_failure_delay": 0})
    c, _ = tls_session(port)
    with c:
        c.expect("BOGUS", 500, "5.5.2")
        c.expect("MAIL FROM:<broken", 501)
        c.send(f"AUTH PLAIN {PLAIN_WRONG}\r\n")
        check_reply(c.read_reply(), 535, "5.7.8")
        check_reply(c.read_reply(), 421, "4.7.0", "third error")
        assert c.wait_closed(5)
    assert p.wait_for_log("too-many-errors").get("errors") == "3"


def test_sixty_failed_logins_reach_the_mta_at_most_limit_times(postern, tmp_path, cert, make_sink):
    """The issue's case: 60 AUTH PLAIN pipelined in one session."""
    sink = make_sink(auth=(USER, PASSWORD))
    p, (port,) = start_limited(postern, sink, tmp_path, cert, {"auth_failure_delay": 0})
    c, _ = tls_session(port)
    with c:
        c.send("".join(f"AUTH PLAIN {PLAIN_WRONG}\r\n" for _ in range(60)))
        codes = []
        try:
            while True:
                codes.append(c.read_reply(timeout=5).code)
        except Exception:
            pass
    assert codes[-1] == 421, codes
    assert len(sink.auth_attempts) <= 5, len(sink.auth_attempts)  # default limits.auth_failures


@pytest.mark.parametrize("bad", [
    b"AAAA\rBBBB",       # bare CR inside
    b"AAAA\x00BBBB",     # NUL
    b"AAAA\nBBBB",       # bare LF: the line ends early
    b"AAAA BBBB",        # space: not base64
    b"QUJD\xc3\xa9",     # 8-bit
    b"*\r",              # a cancel with a CR tacked on
], ids=["cr", "nul", "lf", "space", "8bit", "star-cr"])
def test_sasl_response_with_control_octets_is_refused(postern, tmp_path, cert, make_sink, bad):
    """A response line with CR, LF, NUL or anything not base64 gets 501 5.5.2
    and never reaches the MTA, which sees its exchange cancelled; the
    session stays usable and a correct AUTH then works."""
    sink = make_sink(auth=(USER, PASSWORD))
    p, (port,) = start_limited(postern, sink, tmp_path, cert, {"auth_failure_delay": 0})
    c, _ = tls_session(port)
    with c:
        c.expect("AUTH LOGIN", 334)
        c.send(bad + b"\r\n")
        check_reply(c.read_reply(), 501, "5.5.2", f"response {bad!r}")
        if bad == b"AAAA\nBBBB":
            # what followed the LF is a line of its own, read as a command
            check_reply(c.read_reply(), 500, "5.5.2")
        c.expect("NOOP", 250)
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 235)
    # the MTA never saw a response carrying those octets: LOGIN was cancelled
    assert [a[1:] for a in sink.auth_attempts] == [("PLAIN", USER, True)], sink.auth_attempts
    assert p.wait_for_log("sasl-response-refused")


@pytest.mark.parametrize("bad", [b"AUTH PLAIN AAAA\rBBBB", b"AUTH PLAIN AA AA", b"AUTH LOGIN dXNlcg\r=="],
                         ids=["cr", "space", "login-cr"])
def test_initial_response_with_control_octets_is_refused(postern, tmp_path, cert, make_sink, bad):
    sink = make_sink(auth=(USER, PASSWORD))
    p, (port,) = start_limited(postern, sink, tmp_path, cert, {"auth_failure_delay": 0})
    c, _ = tls_session(port)
    with c:
        c.send(bad + b"\r\n")
        check_reply(c.read_reply(), 501, "5.5.2", f"{bad!r}")
        c.expect(f"AUTH PLAIN {PLAIN_OK}", 235)
    assert [a[1:] for a in sink.auth_attempts] == [("PLAIN", USER, True)], sink.auth_attempts
