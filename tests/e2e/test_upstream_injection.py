"""STARTTLS injection towards the MTA: an upstream that sends plaintext after
its 220 to STARTTLS (the mirror of CVE-2011-0411) is not trusted; the client
hears a 4xx and nothing is relayed. The upstream is a small scripted server,
since no real MTA misbehaves on purpose."""
from harness import ScriptedServer, SmtpClient, check_reply


class InjectingMta(ScriptedServer):
    """Offers STARTTLS, answers it with 220 plus a forged 250 in one write."""

    def __init__(self):
        self.saw_mail = False
        super().__init__()

    def session(self, conn):
        conn.settimeout(10)
        f = conn.makefile("rb")
        try:
            conn.sendall(b"220 evil.test ESMTP\r\n")
            for line in f:
                verb = line[:8].upper()
                if verb.startswith(b"EHLO"):
                    conn.sendall(b"250-evil.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
                elif verb.startswith(b"STARTTLS"):
                    conn.sendall(b"220 2.0.0 go ahead\r\n250 2.1.0 injected\r\n")
                elif verb.startswith(b"MAIL"):
                    self.saw_mail = True
                    conn.sendall(b"250 2.1.0 Ok\r\n")
                elif verb.startswith(b"QUIT"):
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 Ok\r\n")
        except OSError:
            pass
        finally:
            conn.close()


def test_plaintext_after_upstream_220_to_starttls_fails_the_connection(postern):
    mta = InjectingMta()
    try:
        p = postern.start(upstream=f"127.0.0.1:{mta.port}", sets={"upstream.tls": "opportunistic"})
        c = SmtpClient(p.port)
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@example.org>")
        check_reply(r, 451, "4.4.1", "MAIL over a connection with injected plaintext")
        c.close()
        line = p.wait_for_log("upstream-tls-failed")
        assert "injection" in line.raw
        assert not mta.saw_mail
    finally:
        mta.close()
