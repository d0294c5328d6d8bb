"""PIPELINING (RFC 2920): command groups in one write, replies in order."""

from harness import ScriptedServer, SmtpClient, check_reply, data_payload, make_message, run_swaks

QUEUED = "250 2.0.0 Ok: queued as ABC123"


def read_replies(c, n):
    return [c.read_reply() for _ in range(n)]


def test_ehlo_then_one_group(proxy, sink):
    msg = make_message("pipelined", b"pipelined body\r\n")
    with SmtpClient(proxy.port) as c:
        assert "PIPELINING" in c.ehlo().lines
        c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
               "RCPT TO:<c@example.com>\r\nDATA\r\n")
        r = read_replies(c, 4)
        assert [str(x) for x in r[:3]] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok"]
        check_reply(r[3], 354)
        c.send(data_payload(msg))
        assert str(c.read_reply()) == QUEUED
    assert len(sink.messages) == 1
    assert sink.messages[0].rcpt_tos == ["b@example.com", "c@example.com"]
    assert sink.messages[0].body == msg


def test_whole_session_in_few_writes(proxy, sink):
    """EHLO can end a group; the final dot may start the next group."""
    m1 = make_message("first", b"one\r\n")
    m2 = make_message("second", b"two\r\n")
    with SmtpClient(proxy.port) as c:
        c.send("EHLO client.example\r\n")
        check_reply(c.read_reply(), 250)
        c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        assert [x.code for x in read_replies(c, 3)] == [250, 250, 354]
        c.send(data_payload(m1) + b"MAIL FROM:<a2@example.org>\r\nRCPT TO:<b2@example.com>\r\nDATA\r\n")
        r = read_replies(c, 4)
        assert str(r[0]) == QUEUED
        assert [x.code for x in r[1:]] == [250, 250, 354]
        c.send(data_payload(m2) + b"QUIT\r\n")
        assert str(c.read_reply()) == QUEUED
        check_reply(c.read_reply(), 221, "2.0.0")
        assert c.wait_closed()
    assert [m.body for m in sink.messages] == [m1, m2]
    assert [m.mail_from for m in sink.messages] == ["a@example.org", "a2@example.org"]


def test_twenty_messages_with_rset(proxy, sink):
    n = 20
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        for i in range(n):
            if i % 5 == 2:
                # an abandoned transaction, then RSET, all in one group
                c.send("MAIL FROM:<aborted@example.org>\r\nRCPT TO:<nobody@example.com>\r\nRSET\r\n")
                r = read_replies(c, 3)
                assert [x.code for x in r] == [250, 250, 250], r
                check_reply(r[2], 250, "2.0.0")
            group = ""
            if i % 5 == 4:
                group += "RSET\r\n"
            group += (f"MAIL FROM:<sender{i}@example.org>\r\nRCPT TO:<rcpt{i}@example.com>\r\n"
                      f"RCPT TO:<copy{i}@example.com>\r\nDATA\r\n")
            c.send(group)
            r = read_replies(c, group.count("\r\n"))
            assert [x.code for x in r] == [250] * (len(r) - 1) + [354], r
            c.send(data_payload(make_message(f"message {i}", f"body {i}\r\n".encode())))
            assert str(c.read_reply()) == QUEUED
        c.expect("QUIT", 221)
    assert len(sink.messages) == n
    for i, m in enumerate(sink.messages):
        assert m.mail_from == f"sender{i}@example.org"
        assert m.rcpt_tos == [f"rcpt{i}@example.com", f"copy{i}@example.com"]
        assert m.body == make_message(f"message {i}", f"body {i}\r\n".encode())
    assert not any(m.mail_from == "aborted@example.org" for m in sink.messages + sink.refused_messages)
    end = proxy.wait_for_log("session-end")
    assert end.get("messages") == str(n), end.raw


def test_fifty_recipients_some_rejected(proxy, sink):
    def reject(addr):
        if addr.startswith("unknown"):
            return f"550 5.1.1 <{addr}>: Recipient address rejected: User unknown in local recipient table"
        return f"450 4.2.0 <{addr}>: Recipient address rejected: Greylisted, see http://postgrey.example/"

    sink.on("RCPT", reply=reject, match=lambda a: a.startswith(("unknown", "grey")))
    rcpts = []
    for i in range(50):
        if i % 7 == 3:
            rcpts.append(f"unknown{i}@example.com")
        elif i % 11 == 5:
            rcpts.append(f"grey{i}@example.com")
        else:
            rcpts.append(f"user{i}@example.com")
    accepted = [r for r in rcpts if r.startswith("user")]
    msg = make_message("fifty", b"to many\r\n")
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        c.send("MAIL FROM:<many@example.org>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts)
               + "DATA\r\n")
        r = read_replies(c, 52)
        assert str(r[0]) == "250 2.1.0 Ok"
        for addr, reply in zip(rcpts, r[1:51]):
            if addr.startswith("user"):
                assert str(reply) == "250 2.1.5 Ok", (addr, reply)
            else:
                assert str(reply) == reject(addr), (addr, reply)
        check_reply(r[51], 354)
        c.send(data_payload(msg))
        assert str(c.read_reply()) == QUEUED
    assert len(sink.messages) == 1
    assert sink.messages[0].rcpt_tos == accepted
    assert sink.messages[0].body == msg


def test_all_recipients_rejected_data_gets_554(proxy, sink):
    sink.on("RCPT", reply="550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown")
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<gone@example.com>\r\nDATA\r\n")
        r = read_replies(c, 3)
        check_reply(r[0], 250)
        assert str(r[1]) == "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown"
        check_reply(r[2], 554, "5.5.1", "DATA without a valid recipient")
        # the session goes on; a pipelined RSET + new transaction works
        sink.clear_rules()
        c.send("RSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<ok@example.com>\r\nDATA\r\n")
        assert [x.code for x in read_replies(c, 4)] == [250, 250, 250, 354]
        c.send(data_payload(make_message("after")))
        assert str(c.read_reply()) == QUEUED
    assert [m.rcpt_tos for m in sink.messages] == [["ok@example.com"]]


def test_swaks_pipeline(proxy, sink):
    """swaks --pipeline sends MAIL, RCPT and DATA as one group (RFC 2920)."""
    res = run_swaks(["--pipeline", "--server", f"127.0.0.1:{proxy.port}", "--from", "a@example.org",
                     "--to", "b@example.com,c@example.com", "--body", "pipelined body 5c1e"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "queued as ABC123" in res.stdout
    [m] = sink.messages
    assert m.rcpt_tos == ["b@example.com", "c@example.com"]
    assert b"pipelined body 5c1e" in m.body


# -- PIPELINING towards the MTA: MAIL rides with the pipelined RCPT --------


class ChunkMta(ScriptedServer):
    """A scripted MTA that records what arrives in each read, so a test can
    see which commands postern wrote together. Offers PIPELINING or not;
    `refuse_mail` answers MAIL from that address with 550."""

    def __init__(self, pipelining=True, refuse_mail=None):
        self.pipelining = pipelining
        self.refuse_mail = refuse_mail
        self.chunks = []
        self.delivered = 0
        super().__init__()

    def session(self, conn):
        conn.settimeout(10)
        buf, in_data, have_mail = b"", False, False
        try:
            conn.sendall(b"220 chunk.test ESMTP\r\n")
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                self.chunks.append(chunk)
                buf += chunk
                out = b""
                while True:
                    if in_data:
                        end = buf.find(b"\r\n.\r\n")
                        if end < 0:
                            break
                        buf = buf[end + 5:]
                        in_data, have_mail = False, False
                        self.delivered += 1
                        out += b"250 2.0.0 Ok: queued\r\n"
                        continue
                    eol = buf.find(b"\r\n")
                    if eol < 0:
                        break
                    line, buf = buf[:eol], buf[eol + 2:]
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        out += b"250-chunk.test\r\n" + (b"250-PIPELINING\r\n" if self.pipelining else b"") + \
                            b"250 8BITMIME\r\n"
                    elif verb == b"MAIL":
                        if self.refuse_mail and self.refuse_mail.encode() in line:
                            out += b"550 5.7.1 sender refused\r\n"
                        else:
                            have_mail = True
                            out += b"250 2.1.0 Ok\r\n"
                    elif verb == b"RCPT":
                        out += b"250 2.1.5 Ok\r\n" if have_mail else b"503 5.5.1 Error: need MAIL command\r\n"
                    elif verb == b"DATA":
                        in_data = True
                        out += b"354 go ahead\r\n"
                    elif verb == b"QUIT":
                        conn.sendall(out + b"221 bye\r\n")
                        return
                    else:
                        have_mail = have_mail and verb != b"RSET"
                        out += b"250 Ok\r\n"
                if out:
                    conn.sendall(out)
        except OSError:
            pass
        finally:
            conn.close()

    def written_together(self, *needles):
        return [c for c in self.chunks if all(n in c for n in needles)]


def two_pipelined_messages(port, second_from=b"a2@example.org"):
    """Two messages in one session, each MAIL/RCPT/DATA in one group."""
    m = make_message("pipelined", b"body\r\n")
    c = SmtpClient(port)
    c.ehlo()
    c.send(b"MAIL FROM:<a1@example.org>\r\nRCPT TO:<b1@example.com>\r\nDATA\r\n")
    assert [x.code for x in read_replies(c, 3)] == [250, 250, 354]
    c.send(data_payload(m))
    check_reply(c.read_reply(), 250)
    c.send(b"MAIL FROM:<" + second_from + b">\r\nRCPT TO:<b2@example.com>\r\nRCPT TO:<b3@example.com>\r\n"
           b"DATA\r\n")
    return read_replies(c, 4), c, m


def test_mail_goes_with_the_pipelined_rcpt(postern):
    mta = ChunkMta()
    try:
        p = postern.start(upstream=f"127.0.0.1:{mta.port}")
        replies, c, m = two_pipelined_messages(p.port)
        assert [str(x) for x in replies[:3]] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok"]
        check_reply(replies[3], 354)
        c.send(data_payload(m) + b"QUIT\r\n")
        check_reply(c.read_reply(), 250)
        c.close()
        assert mta.delivered == 2
        # each MAIL rode with its first RCPT, in one write (the first once its
        # connection was open: issue 23); the second RCPT went on its own
        assert mta.written_together(b"MAIL FROM:<a1@example.org>\r\nRCPT TO:<b1@example.com>\r\n")
        assert mta.written_together(b"MAIL FROM:<a2@example.org>\r\nRCPT TO:<b2@example.com>\r\n")
        assert not mta.written_together(b"RCPT TO:<b2@", b"RCPT TO:<b3@")
    finally:
        mta.close()


def test_mail_never_rides_along_without_upstream_pipelining(postern):
    mta = ChunkMta(pipelining=False)
    try:
        p = postern.start(upstream=f"127.0.0.1:{mta.port}")
        replies, c, m = two_pipelined_messages(p.port)
        assert [x.code for x in replies] == [250, 250, 250, 354]
        c.send(data_payload(m))
        check_reply(c.read_reply(), 250)
        c.close()
        assert mta.delivered == 2
        assert not mta.written_together(b"MAIL FROM:<a2@", b"RCPT TO:<b2@")
    finally:
        mta.close()


def test_mail_refused_by_the_mta_while_riding_with_rcpt(postern):
    """MAIL's refusal comes first and verbatim, then the MTA's answer to the
    RCPT that rode along; the transaction is over, the session goes on."""
    mta = ChunkMta(refuse_mail="refused@")
    try:
        p = postern.start(upstream=f"127.0.0.1:{mta.port}")
        replies, c, m = two_pipelined_messages(p.port, second_from=b"refused@example.org")
        assert str(replies[0]) == "550 5.7.1 sender refused"
        assert str(replies[1]) == "503 5.5.1 Error: need MAIL command"
        assert replies[2].code == 503 and replies[3].code == 503, replies  # postern: no MAIL, so no RCPT/DATA
        assert mta.written_together(b"MAIL FROM:<refused@example.org>\r\nRCPT TO:<b2@example.com>\r\n")
        # the session is still good for the next message
        c.send(b"MAIL FROM:<a3@example.org>\r\nRCPT TO:<b4@example.com>\r\nDATA\r\n")
        assert [x.code for x in read_replies(c, 3)] == [250, 250, 354]
        c.send(data_payload(m))
        check_reply(c.read_reply(), 250)
        c.close()
        assert mta.delivered == 2
    finally:
        mta.close()


def test_held_mail_is_answered_before_a_local_reply_to_its_rcpt(postern):
    """A pipelined RCPT that postern answers itself (bad syntax) makes the
    held MAIL go alone first: the replies stay in order."""
    mta = ChunkMta()
    try:
        p = postern.start(upstream=f"127.0.0.1:{mta.port}")
        m = make_message("order", b"body\r\n")
        with SmtpClient(p.port) as c:
            c.ehlo()
            c.send(b"MAIL FROM:<a1@example.org>\r\nRCPT TO:<b1@example.com>\r\nDATA\r\n")
            assert [x.code for x in read_replies(c, 3)] == [250, 250, 354]
            c.send(data_payload(m))
            check_reply(c.read_reply(), 250)
            c.send(b"MAIL FROM:<a2@example.org>\r\nRCPT TO:<no closing bracket\r\nRCPT TO:<b2@example.com>\r\n"
                   b"DATA\r\n")
            r = read_replies(c, 4)
            assert [x.code for x in r] == [250, 501, 250, 354], r
            c.send(data_payload(m))
            check_reply(c.read_reply(), 250)
        assert mta.delivered == 2
        assert not mta.written_together(b"MAIL FROM:<a2@", b"RCPT TO:<b2@")
    finally:
        mta.close()


def test_held_mail_reconnects_when_the_mta_closed_the_kept_connection(postern, sink):
    """The MTA drops the kept connection at the MAIL that rode with a RCPT:
    postern opens a fresh one and sends both again; the client never knows."""
    sink.on("MAIL", drop=True, match="a2@example.org", times=1)
    p = postern.start(upstream=sink.address)
    replies, c, m = two_pipelined_messages(p.port)
    assert [x.code for x in replies] == [250, 250, 250, 354], replies
    c.send(data_payload(m))
    check_reply(c.read_reply(), 250)
    c.close()
    got = sink.wait_messages(2)
    assert got[1].mail_from == "a2@example.org" and got[1].rcpt_tos == ["b2@example.com", "b3@example.com"]
    assert sink.connections == 2
