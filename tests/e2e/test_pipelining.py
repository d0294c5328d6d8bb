"""PIPELINING (RFC 2920): command groups in one write, replies in order."""

from harness import run_swaks, SmtpClient, check_reply, data_payload, make_message

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
