"""CHUNKING (RFC 3030): BDAT from clients, and BDAT or DATA to the MTA.

swaks and smtplib cannot send BDAT, so the client is the raw SmtpClient.
The aiosmtpd sink offers no CHUNKING, so postern must relay with DATA (and
dot-stuff); a private Postfix (tests/e2e/test_xclient.py's PrivatePostfix)
offers CHUNKING, and its log shows postern relaying with BDAT.
"""

import os
import re
import time
import uuid

import pytest

from harness import (SCALE, RecordingSink, SmtpClient, check_reply, data_payload, make_message,
                     strip_received, wait_until)

FINAL = "250 2.0.0 Ok: queued as ABC123"   # the sink's reply to the end of data


def envelope(c, sender="alice@example.org", rcpt="bob@example.com"):
    c.expect(f"MAIL FROM:<{sender}>", 250)
    c.expect(f"RCPT TO:<{rcpt}>", 250)


def body_of(msg):
    return strip_received(msg.content)[1]


def octets_reply(reply, n):
    assert str(reply) == f"250 2.0.0 Ok: {n} octets received", reply


def test_ehlo_lists_chunking(proxy):
    with SmtpClient(proxy.port) as c:
        r = c.ehlo()
        assert "CHUNKING" in r.lines and "PIPELINING" in r.lines, r


def test_pipelined_bdat_in_one_write(proxy, sink):
    content = make_message("bdat pipelined", body=b"line one\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n")
    cut = 37                          # mid-line: a chunk boundary is not a line boundary
    a, b = content[:cut], content[cut:]
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\n"
               + f"BDAT {len(a)}\r\n".encode() + a + f"BDAT {len(b)} LAST\r\n".encode() + b)
        check_reply(c.read_reply(), 250, what="MAIL")
        check_reply(c.read_reply(), 250, what="RCPT")
        octets_reply(c.read_reply(), len(a))
        r = c.read_reply()
        assert str(r) == FINAL, r
        c.expect("NOOP", 250)
    msg = sink.wait_messages(1)[0]
    assert body_of(msg) == content, (body_of(msg), content)
    # a DATA-only MTA gets DATA, with the lines starting with "." stuffed
    assert len(sink.commands("DATA")) == 1
    assert b"\r\n..starts with a dot\r\n...two dots\r\n..\r\n" in msg.raw, msg.raw
    proxy.wait_for_log("message", result="relayed")


def test_chunks_split_across_many_writes(proxy, sink):
    content = make_message("bdat split", body=b"".join(b"%04d abcdefghijklmnopqrstuvwxyz\r\n" % i
                                                       for i in range(300)))
    chunks = [content[:1000], content[1000:1001], content[1001:5000], content[5000:]]
    replies = []
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        envelope(c)
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            wire = f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk
            for pos in range(0, len(wire), 97):      # many small writes
                c.send(wire[pos:pos + 97])
                if pos % 970 == 0:
                    time.sleep(0.01)
            replies.append(str(c.read_reply()))
    msg = sink.wait_messages(1)[0]
    assert body_of(msg) == content
    # RFC 3030: each non-LAST chunk is acknowledged with its own size, however
    # many reads it took to arrive
    assert replies == [f"250 2.0.0 Ok: {len(ch)} octets received" for ch in chunks[:-1]] + [FINAL], replies


def test_bdat_0_last(proxy, sink):
    content = make_message("bdat zero")
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        envelope(c)
        c.send(f"BDAT {len(content)}\r\n".encode() + content)
        octets_reply(c.read_reply(), len(content))
        r = c.cmd("BDAT 0 LAST")
        assert str(r) == FINAL, r
        # BDAT 0 LAST as the only chunk: an empty message, relayed
        envelope(c)
        r = c.cmd("BDAT 0 LAST")
        assert str(r) == FINAL, r
        c.expect("NOOP", 250)
    msgs = sink.wait_messages(2)
    assert body_of(msgs[0]) == content
    assert body_of(msgs[1]) == b""


def test_bare_lf_in_chunk_rejected_by_default(proxy, sink):
    content = b"Subject: bare\r\n\r\none\nbare LF\r\n"
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        envelope(c)
        c.send(f"BDAT {len(content)} LAST\r\n".encode() + content)
        check_reply(c.read_reply(), 554, "5.5.2", what="bare LF chunk")
        c.expect("NOOP", 250)
        # the session goes on; a clean message passes
        envelope(c)
        good = make_message("after bare")
        c.send(f"BDAT {len(good)} LAST\r\n".encode() + good)
        assert str(c.read_reply()) == FINAL
    msgs = sink.wait_messages(1)
    time.sleep(0.2)
    assert len(sink.messages) == 1 and not sink.refused_messages
    assert body_of(msgs[0]) == good
    proxy.wait_for_log("bare-line-ending", bare_lf="yes")


def test_bare_lf_in_chunk_normalized(postern, sink):
    p = postern.start(upstream=sink.address, sets={"data.bare_line_ending": "normalize"})
    content = b"Subject: bare\r\n\r\none\nbare LF\r\nend\n"
    with SmtpClient(p.port) as c:
        c.ehlo()
        envelope(c)
        c.send(f"BDAT 20\r\n".encode() + content[:20] + f"BDAT {len(content) - 20} LAST\r\n".encode()
               + content[20:])
        octets_reply(c.read_reply(), 20)
        assert str(c.read_reply()) == FINAL
    msg = sink.wait_messages(1)[0]
    assert body_of(msg) == b"Subject: bare\r\n\r\none\r\nbare LF\r\nend\r\n", body_of(msg)


def test_bdat_without_mail_discards_its_octets(proxy, sink):
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        # the chunk "QUIT\r\n" is data, not a command
        check_reply(c.cmd("BDAT 6\r\nQUIT"), 503, "5.5.1", what="BDAT without MAIL")
        c.expect("NOOP", 250)
        # the same, pipelined with a command after the chunk
        c.send(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
        check_reply(c.read_reply(), 503, "5.5.1", what="BDAT LAST without MAIL")
        check_reply(c.read_reply(), 250, what="NOOP after discarded chunk")
        # RCPT missing: also refused, octets also discarded
        c.expect("MAIL FROM:<alice@example.org>", 250)
        c.send(b"BDAT 6 LAST\r\nQUIT\r\n")
        check_reply(c.read_reply(), 503, what="BDAT without RCPT")
        c.expect("NOOP", 250)
        c.expect("RSET", 250)
        assert not c.wait_closed(0.3)
    assert not sink.messages and not sink.commands("DATA")


def test_data_after_bdat_is_503(proxy, sink):
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        envelope(c)
        c.send(b"BDAT 16\r\nSubject: mixed\r\n")
        octets_reply(c.read_reply(), 16)
        c.expect("DATA", 503, "5.5.1")
        c.send(b"BDAT 8 LAST\r\n\r\nbody\r\n")
        assert str(c.read_reply()) == FINAL
    assert body_of(sink.wait_messages(1)[0]) == b"Subject: mixed\r\n\r\nbody\r\n"


def test_chunk_over_message_size_is_552(postern, sink):
    p = postern.start(upstream=sink.address, sets={"limits.message_size": 2000})
    part = b"".join(b"%03d xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n" % i for i in range(30))
    assert 1000 < len(part) < 2000
    with SmtpClient(p.port) as c:
        r = c.ehlo()
        assert "SIZE 2000" in r.lines, r
        envelope(c)
        c.send(f"BDAT {len(part)}\r\n".encode() + part)
        octets_reply(c.read_reply(), len(part))
        c.send(f"BDAT {len(part)} LAST\r\n".encode() + part)
        check_reply(c.read_reply(), 552, "5.3.4", what="over the size limit")
        c.expect("NOOP", 250)
    time.sleep(0.2)
    assert not sink.messages and not sink.refused_messages


def test_bdat_bad_size_closes(proxy, sink):
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        envelope(c)
        c.send(b"BDAT x\r\nSubject: x\r\n\r\n")
        check_reply(c.read_reply(), 501, "5.5.4", what="BDAT x")
        assert c.wait_closed(5 * SCALE), "connection still open after BDAT x"
    assert not sink.messages


# --------------------------------------------------------------------------
# upstream BDAT: a real Postfix smtpd offers CHUNKING


@pytest.fixture(scope="module")
def mta():
    from test_xclient import private_postfix
    yield from private_postfix()


@pytest.mark.parametrize("client_uses", ["BDAT", "DATA"])
def test_relay_to_postfix_with_bdat(postern, mta, client_uses):
    p = postern.start(upstream=f"127.0.0.1:{mta.xforward_port}",
                      sets={"upstream.client_identity": "none"})
    tag = uuid.uuid4().hex[:12]
    content = make_message(f"chunking {tag}", body=b"first\r\n.dot line\r\n..\r\nlast\r\n")
    with SmtpClient(p.port) as c:
        c.ehlo()
        envelope(c)
        if client_uses == "BDAT":
            c.send(b"BDAT 30\r\n" + content[:30] + f"BDAT {len(content) - 30} LAST\r\n".encode()
                   + content[30:])
            octets_reply(c.read_reply(), 30)
            r = check_reply(c.read_reply(), 250, what="end of data")
        else:
            c.expect("DATA", 354)
            c.send(data_payload(content))
            r = check_reply(c.read_reply(), 250, what="end of data")
        c.expect("QUIT", 221)
    m = re.search(r"queued as ([0-9A-F]+)", r.text)
    assert m, f"no Postfix queue id in {r}"
    qid = m.group(1)
    _, disconnect = mta.smtpd_session(qid)
    # Postfix counts the commands it got: postern relayed with BDAT, not DATA
    assert re.search(r"\bbdat=1\b", disconnect) and "data=" not in disconnect, disconnect
    wait_until(lambda: any(qid.encode() in (msg.content or b"") for msg in mta.sink.messages),
               20 * SCALE, message=f"Postfix relaying {qid}")
    msg = next(msg for msg in mta.sink.messages if qid.encode() in msg.content)
    assert b"(postern) with ESMTP id" in msg.content
    assert msg.content.endswith(content.split(b"\r\n\r\n", 1)[1]), msg.content
    assert f"Subject: chunking {tag}".encode() in msg.content



def test_binary_chunks(proxy, sink):
    """BDAT chunks with 8-bit octets relay intact (BODY=8BITMIME); a NUL, which
    no DATA transfer can carry and BINARYMIME is not offered for, is refused
    with 554 5.6.0 and nothing reaches the MTA."""
    eight_bit = b"Subject: 8bit\r\n\r\n" + bytes(range(0x80, 0x100)) + b"\r\nend\r\n"
    with SmtpClient(proxy.port) as c:
        r = c.ehlo()
        assert not any(l.upper().startswith("BINARYMIME") for l in r.lines)
        c.expect("MAIL FROM:<alice@example.org> BODY=8BITMIME", 250)
        c.expect("RCPT TO:<bob@example.com>", 250)
        half = len(eight_bit) // 2
        c.send(f"BDAT {half}\r\n".encode() + eight_bit[:half])
        octets_reply(c.read_reply(), half)
        c.send(f"BDAT {len(eight_bit) - half} LAST\r\n".encode() + eight_bit[half:])
        assert str(c.read_reply()) == FINAL
        with_nul = b"Subject: nul\r\n\r\nbinary \x00 octet\r\n"
        envelope(c)
        c.send(f"BDAT {len(with_nul)} LAST\r\n".encode() + with_nul)
        check_reply(c.read_reply(), 554, "5.6.0", what="NUL in a chunk")
    msgs = sink.wait_messages(1)
    time.sleep(0.2)
    assert len(sink.messages) == 1
    assert body_of(msgs[0]) == eight_bit


# --------------------------------------------------------------------------
# BDAT towards an MTA that offers CHUNKING (issue 23): the recording sink
# with chunking=True records every BDAT chunk it is given. The content goes
# as one "BDAT n LAST" of the unstuffed octets; DATA otherwise.

DOTS = (b"line one\r\n.starts with a dot\r\n..two dots\r\n.\r\n. space\r\n"
        b"...\r\nend without a dot\r\n")


@pytest.fixture
def chunking_sink(make_sink):
    return make_sink(chunking=True)


def bdat_to_mta(sink, msg):
    """The message went as one BDAT LAST chunk, and no DATA was sent."""
    chunks = sink.commands("BDAT")
    assert not sink.commands("DATA"), sink.events
    assert msg.chunks == [len(msg.content)], (msg.chunks, len(msg.content))
    assert chunks[-1][2:] == (len(msg.content), True), chunks


def test_data_from_client_goes_up_as_bdat_unstuffed(postern, chunking_sink):
    p = postern.start(upstream=chunking_sink.address)
    content = make_message("data to bdat", body=DOTS)
    with SmtpClient(p.port) as c:
        c.ehlo()
        r = c.send_message("alice@example.org", ["bob@example.com"], content)
        assert str(r) == FINAL, r
    msg = chunking_sink.wait_messages(1)[0]
    bdat_to_mta(chunking_sink, msg)
    # the dot-stuffing of DATA is undone: the MTA gets the message's own octets
    assert body_of(msg) == content, (body_of(msg), content)
    assert b"\r\n.starts with a dot\r\n..two dots\r\n.\r\n" in msg.raw


def test_bdat_from_client_goes_up_as_bdat(postern, chunking_sink):
    p = postern.start(upstream=chunking_sink.address)
    content = make_message("bdat to bdat", body=DOTS * 3)
    chunks = [content[:17], content[17:18], content[18:]]
    with SmtpClient(p.port) as c:
        c.ehlo()
        envelope(c)
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            c.send(f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk)
            r = c.read_reply()
        assert str(r) == FINAL, r
    msg = chunking_sink.wait_messages(1)[0]
    bdat_to_mta(chunking_sink, msg)
    assert body_of(msg) == content


@pytest.mark.parametrize("content", [
    b"Subject: empty body\r\n\r\n",                     # a header section and nothing after it
    b"Subject: no final line end\r\n\r\nlast line",     # the client's DATA ends it with CRLF
])
def test_edge_bodies_through_bdat(postern, chunking_sink, content):
    p = postern.start(upstream=chunking_sink.address)
    with SmtpClient(p.port) as c:
        c.ehlo()
        r = c.send_message("alice@example.org", ["bob@example.com"], content)
        assert str(r) == FINAL, r
    msg = chunking_sink.wait_messages(1)[0]
    bdat_to_mta(chunking_sink, msg)
    expected = content if content.endswith(b"\r\n") else content + b"\r\n"
    assert body_of(msg) == expected, body_of(msg)


def test_bdat_0_last_from_client_goes_up_as_bdat(postern, chunking_sink):
    p = postern.start(upstream=chunking_sink.address)
    with SmtpClient(p.port) as c:
        c.ehlo()
        envelope(c)
        r = c.cmd("BDAT 0 LAST")
        assert str(r) == FINAL, r
    msg = chunking_sink.wait_messages(1)[0]
    bdat_to_mta(chunking_sink, msg)
    assert body_of(msg) == b""


def test_large_message_through_bdat_is_byte_exact(postern, chunking_sink):
    """Beyond data.spool_memory: spooled to a file, read back in blocks."""
    p = postern.start(upstream=chunking_sink.address, sets={"data.spool_memory": 65536})
    line = b".%06d the quick brown fox jumps over the lazy dog; ..and so on\r\n"
    body = b"".join(line % i for i in range(60000))       # ~3.9 MB, every line starting with "."
    content = make_message("large bdat", body=body)
    with SmtpClient(p.port) as c:
        c.ehlo()
        r = c.send_message("alice@example.org", ["bob@example.com"], content)
        assert str(r) == FINAL, r
    msg = chunking_sink.wait_messages(1)[0]
    bdat_to_mta(chunking_sink, msg)
    assert body_of(msg) == content


def test_bare_lf_normalized_then_bdat(postern, chunking_sink):
    p = postern.start(upstream=chunking_sink.address, sets={"data.bare_line_ending": "normalize"})
    content = b"Subject: bare\r\n\r\none\nbare LF\r\nbare CR\rend\n"
    with SmtpClient(p.port) as c:
        c.ehlo()
        envelope(c)
        c.send(f"BDAT {len(content)} LAST\r\n".encode() + content)
        assert str(c.read_reply()) == FINAL
    msg = chunking_sink.wait_messages(1)[0]
    bdat_to_mta(chunking_sink, msg)
    assert not msg.raw_has_bare_line_ending
    assert body_of(msg) == b"Subject: bare\r\n\r\none\r\nbare LF\r\nbare CR\r\nend\r\n", body_of(msg)


def test_bare_lf_refused_before_bdat(postern, chunking_sink):
    p = postern.start(upstream=chunking_sink.address)
    with SmtpClient(p.port) as c:
        c.ehlo()
        envelope(c)
        c.expect("DATA", 354)
        c.send(b"Subject: bare\r\n\r\none\nbare LF\r\n.\r\n")
        check_reply(c.read_reply(), 554, "5.5.2", what="bare LF")
    time.sleep(0.2)
    assert not chunking_sink.commands("BDAT") and not chunking_sink.messages


@pytest.mark.parametrize("reply", ["554 5.7.1 content refused", "452 4.3.1 insufficient storage"])
def test_mta_refusing_bdat_last(postern, chunking_sink, reply):
    """RFC 3030 §2: a refused BDAT leaves the transaction open; the client
    hears the MTA's reply, and its next message goes through."""
    p = postern.start(upstream=chunking_sink.address)
    chunking_sink.on("BDAT", reply, times=1)
    with SmtpClient(p.port) as c:
        c.ehlo()
        r = c.send_message("alice@example.org", ["bob@example.com"], make_message("refused bdat"))
        assert str(r) == reply, r
        r = c.send_message("carol@example.org", ["dave@example.com"], make_message("after refusal"))
        assert str(r) == FINAL, r
    msgs = chunking_sink.wait_messages(1)
    assert len(msgs) == 1 and msgs[0].mail_from == "carol@example.org"
    assert b"Subject: after refusal" in msgs[0].content


def test_chunking_off_sends_data(postern, chunking_sink):
    p = postern.start(upstream=chunking_sink.address, sets={"upstream.chunking": "false"})
    content = make_message("chunking off", body=DOTS)
    with SmtpClient(p.port) as c:
        c.ehlo()
        r = c.send_message("alice@example.org", ["bob@example.com"], content)
        assert str(r) == FINAL, r
    msg = chunking_sink.wait_messages(1)[0]
    assert not chunking_sink.commands("BDAT") and len(chunking_sink.commands("DATA")) == 1
    assert body_of(msg) == content
    assert b"\r\n..starts with a dot\r\n...two dots\r\n..\r\n" in msg.raw      # stuffed on the wire


def test_mta_without_chunking_gets_data(proxy, sink):
    content = make_message("no chunking", body=DOTS)
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        envelope(c)
        c.send(f"BDAT {len(content)} LAST\r\n".encode() + content)
        assert str(c.read_reply()) == FINAL
    msg = sink.wait_messages(1)[0]
    assert not sink.commands("BDAT") and len(sink.commands("DATA")) == 1
    assert body_of(msg) == content
