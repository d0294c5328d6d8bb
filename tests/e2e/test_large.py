"""A 50 MB message streams through postern without postern holding it in memory."""

import hashlib
import os
import threading
import time

from harness import ASAN, SCALE, SmtpClient, check_reply, dot_stuff, make_message

QUEUED = "250 2.0.0 Ok: queued as ABC123"
TOTAL = 50_000_000          # under the default limits.message_size (52428800)
# ASan keeps freed blocks in a quarantine; give it a small one and some slack
LIMIT_KB = (16 if ASAN else 8) * 1024


def make_block():
    """~1 MB of lines, some starting with '.', all under 1000 octets."""
    lines = []
    i = 0
    size = 0
    while size < 1_000_000:
        if i % 10 == 3:
            line = b"." + (b"dot line %08d " % i) * 4 + b"\r\n"
        elif i % 97 == 5:
            line = (b"L%08d" % i) * 110 + b"\r\n"        # 992 octets
        else:
            line = b"line %08d the quick brown fox jumps over the lazy dog 0123456789\r\n" % i
        lines.append(line)
        size += len(line)
        i += 1
    return b"".join(lines)


class RssSampler(threading.Thread):
    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc = proc
        self.peak = 0
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            try:
                self.peak = max(self.peak, self.proc.status_kb("VmRSS"))
            except (OSError, KeyError):
                return
            time.sleep(0.02)


def send_big(c, head, block, count):
    check_reply(c.cmd("MAIL FROM:<big@example.org>"), 250)
    check_reply(c.cmd("RCPT TO:<rcpt@example.com>"), 250)
    check_reply(c.cmd("DATA"), 354)
    c.send(dot_stuff(head))
    stuffed = dot_stuff(block)
    for _ in range(count):
        c.send(stuffed)
    c.send(b".\r\n")
    return c.read_reply(timeout=120 * SCALE)


def test_50mb_message(postern, make_sink):
    sink = make_sink(keep_content=False)
    env = {}
    if ASAN:
        env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") +
                               ":quarantine_size_mb=1:thread_local_quarantine_size_kb=64").lstrip(":")
    p = postern.start(upstream=sink.address, env=env)
    block = make_block()
    head = make_message("large", b"")

    # warm up: one spooled (> spool_memory) message so one-time allocations are done
    with SmtpClient(p.port) as c:
        c.ehlo()
        assert str(send_big(c, head, block, 2)) == QUEUED
    hwm_before = p.status_kb("VmHWM")
    rss_before = p.status_kb("VmRSS")

    count = (TOTAL - len(head)) // len(block)
    expected = hashlib.sha256(head)
    for _ in range(count):
        expected.update(block)
    size = len(head) + count * len(block)
    assert size > 49_000_000

    sampler = RssSampler(p)
    sampler.start()
    try:
        with SmtpClient(p.port, timeout=60 * SCALE) as c:
            c.ehlo()
            r = send_big(c, head, block, count)
            assert str(r) == QUEUED, r
    finally:
        sampler.stop_flag.set()
        sampler.join()
    hwm_after = p.status_kb("VmHWM")

    assert len(sink.messages) == 2
    got = sink.messages[1]
    assert got.body_size == size
    assert got.body_sha256 == expected.hexdigest()
    growth = max(hwm_after - hwm_before, sampler.peak - rss_before)
    assert growth < LIMIT_KB, (f"postern's memory grew by {growth} kB for a {size} byte message "
                               f"(VmHWM {hwm_before} -> {hwm_after} kB, VmRSS peak {sampler.peak} kB)")
