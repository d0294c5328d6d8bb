"""Reload under attack: storms of SIGHUP and control-socket reloads while
sessions are mid-transaction; a session keeps the configuration (and the
rules built from it) it started with, never a mix of two; refused reloads of
every kind keep everything running as before and name file:line; keys that
need a restart are reported; reloads racing SIGTERM and start-up."""
import os
import re
import signal
import socket
import threading
import time

import pytest

from harness import (ASAN, IO_TIMEOUT, SCALE, PosternProcess, SmtpClient, check_reply, free_port, make_message,
                     postern_run_args, wait_until)

RULE = """postern.rule{{ name = "GEN", stage = "eom", fn = function(ctx)
  ctx:add_header("X-Gen", "{gen}")
end }}
"""


class Generation:
    """One postern.toml + rules.lua pair; generation N says N everywhere it can:
    the greeting's host name (the Config) and an X-Gen header (the rule chain)."""

    def __init__(self, tmp_path, sockdir, upstream, port=0, extra=""):
        self.dir = tmp_path
        self.config = tmp_path / "postern.toml"
        self.rules = tmp_path / "rules.lua"
        self.control = os.path.join(sockdir, "control.sock")
        self.upstream = upstream
        self.port = port
        self.extra = extra

    def write(self, gen, upstream=None, extra=None, listen=None, rules=None):
        self.rules.write_text(rules if rules is not None else RULE.format(gen=gen))
        self.config.write_text(
            f'[server]\nhostname = "g{gen}.postern.test"\nshutdown_timeout = 5\n'
            f'[upstream]\ntarget = "{upstream or self.upstream}"\n'
            f'[lua]\nscripts = ["{self.rules}"]\ninstruction_budget = 1000000000\n'
            f'[control]\nsocket = "{self.control}"\n'
            f'{self.extra if extra is None else extra}\n'
            f'[[listener]]\naddress = "{listen or f"127.0.0.1:{self.port}"}"\n')
        return str(self.config)


def control(path, command=b"reload\n", timeout=None):
    """One command over the control socket; the whole answer."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout or IO_TIMEOUT)
    try:
        s.connect(path)
        s.sendall(command)
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return out.decode(errors="replace")
            out += chunk
    finally:
        s.close()


def sighup(p, event="reloaded"):
    """SIGHUP and wait for its outcome line."""
    before = len(p.events(event))
    p.send_signal(signal.SIGHUP)
    p.wait_for_log(event, count=before + 1)


def start(postern, gen_files, gen=1):
    p = postern.start(config=gen_files.write(gen), listen=())
    p.wait_for_log("control")
    return p


def greeting_gen(c):
    m = re.search(r"g(\d+)\.postern\.test", str(c.greeting))
    assert m, f"greeting without a generation: {c.greeting}"
    return int(m.group(1))


def header_gen(content):
    m = re.search(rb"\r\nX-Gen: (\d+)\r\n", content)
    return int(m.group(1)) if m else None


def received_gen(content):
    m = re.search(rb"by g(\d+)\.postern\.test", content)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------
# 1 + 2: storms; one generation per session


def test_reload_storm_every_session_sees_one_generation(postern, sink, tmp_path, sockdir):
    """Dozens of reloads (SIGHUP and control socket, some at once) while
    clients connect all the time: every message is relayed exactly once,
    and its greeting, Received header and rule header all come from the same
    generation (config and rule chain taken together)."""
    files = Generation(tmp_path, sockdir, sink.address)
    p = start(postern, files)
    stop = threading.Event()
    sent = {}  # message id -> greeting generation
    failures = []
    lock = threading.Lock()

    def client(n):
        i = 0
        while not stop.is_set():
            i += 1
            mid = f"m{n}-{i}"
            try:
                c = SmtpClient(p.port)
                g = greeting_gen(c)
                c.ehlo()
                r = c.send_message("a@example.org", ["b@example.com"], make_message(subject=mid))
                c.close()
            except Exception as e:  # noqa: BLE001 -- every failure is reported
                with lock:
                    failures.append(f"{mid}: {e!r}")
                return
            if r.code != 250:
                with lock:
                    failures.append(f"{mid}: {r}")
                return
            with lock:
                sent[mid] = g

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(6)]
    for t in threads:
        t.start()
    try:
        gen = 1
        for round_ in range(12):
            gen += 1
            files.write(gen)
            if round_ % 3 == 0:
                sighup(p)
            elif round_ % 3 == 1:
                assert control(files.control).startswith("ok reloaded"), p.log_tail()
            else:
                # two at once, of both kinds: both apply the same file
                before = len(p.events("reloaded"))
                p.send_signal(signal.SIGHUP)
                answers = []
                ts = [threading.Thread(target=lambda: answers.append(control(files.control))) for _ in range(2)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join(IO_TIMEOUT)
                assert all(a.startswith("ok reloaded") for a in answers), answers
                p.wait_for_log("reloaded", count=before + 3)
            assert not failures, failures
    finally:
        stop.set()
        for t in threads:
            t.join(IO_TIMEOUT)
    assert not failures, failures
    assert len(sent) >= 12, f"too little load: {len(sent)} messages"
    msgs = sink.wait_messages(len(sent))
    time.sleep(0.2)
    ids = [re.search(rb"Message-ID: <([^@]+)@", m.content).group(1).decode() for m in sink.messages]
    assert sorted(ids) == sorted(sent), "relayed twice or lost"
    mixed = []
    for m, mid in zip(msgs, ids):
        gens = (sent[mid], received_gen(m.content), header_gen(m.content))
        if len(set(gens)) != 1:
            mixed.append((mid, gens))
    assert not mixed, f"sessions with a mix of generations (greeting, Received, rule): {mixed[:10]}"
    assert not p.events("reload-failed")


def test_open_sessions_at_every_stage_finish_with_their_generation(postern, make_sink, tmp_path, sockdir):
    """Sessions stopped after EHLO, after MAIL, after some RCPTs, mid-DATA
    and mid-BDAT live through reloads that change the rules, the limits and
    the upstream: each finishes with the configuration it started with, the
    message relayed once to the old upstream; a new session gets the new."""
    old, new = make_sink(), make_sink()
    files = Generation(tmp_path, sockdir, old.address,
                       extra="[limits]\nmessage_size = 100000\nrecipients = 3\n")
    p = start(postern, files)
    body = (b"x" * 76 + b"\r\n") * 26  # 2028 octets: over the new limit only
    stages = {}
    for stage in ("ehlo", "mail", "rcpt", "data", "bdat"):
        c = SmtpClient(p.port)
        c.ehlo()
        stages[stage] = c
        if stage == "ehlo":
            continue
        check_reply(c.cmd("MAIL FROM:<a@example.org> SIZE=50000"), 250)
        if stage == "mail":
            continue
        for r in ("r1@example.com", "r2@example.com"):
            check_reply(c.cmd(f"RCPT TO:<{r}>"), 250)
        if stage == "data":
            check_reply(c.cmd("DATA"), 354)
            c.send(make_message(subject=f"s-{stage}")[:40])
        elif stage == "bdat":
            chunk = make_message(subject=f"s-{stage}")
            c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
            check_reply(c.read_reply(), 250)
    # the new generation: other rules, a smaller size, one recipient, another MTA
    files.write(2, upstream=new.address, extra="[limits]\nmessage_size = 1000\nrecipients = 1\n")
    assert control(files.control).startswith("ok reloaded"), p.log_tail()
    sighup(p)
    for stage, c in stages.items():
        subject = f"s-{stage}"
        msg = make_message(subject=subject, body=body)
        if stage in ("ehlo", "mail"):
            if stage == "ehlo":
                check_reply(c.cmd("MAIL FROM:<a@example.org> SIZE=50000"), 250, what="old size limit")
            for r in ("r1@example.com", "r2@example.com", "r3@example.com"):
                check_reply(c.cmd(f"RCPT TO:<{r}>"), 250, what="old recipient limit")
            check_reply(c.cmd("DATA"), 354)
            c.send(msg + b".\r\n")
        elif stage == "rcpt":
            check_reply(c.cmd("RCPT TO:<r3@example.com>"), 250, what="old recipient limit")
            check_reply(c.cmd("DATA"), 354)
            c.send(msg + b".\r\n")
        elif stage == "data":
            c.send(msg[40:] + b".\r\n")
        else:
            c.send(b"BDAT %d LAST\r\n" % len(body) + body)
        check_reply(c.read_reply(), 250, what=f"{stage}: the old size limit holds to the end of data")
        c.close()
    old.wait_messages(5)
    for m in old.messages:
        assert header_gen(m.content) == 1 and received_gen(m.content) == 1, m.content[:400]
    assert not new.messages
    # a new session: all new
    c = SmtpClient(p.port)
    assert greeting_gen(c) == 2
    c.ehlo()
    check_reply(c.cmd("MAIL FROM:<a@example.org> SIZE=50000"), 552, "5.3.4")
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
    check_reply(c.cmd("RCPT TO:<r1@example.com>"), 250)
    check_reply(c.cmd("RCPT TO:<r2@example.com>"), 452, "4.5.3")
    check_reply(c.cmd("DATA"), 354)
    c.send(make_message(subject="fresh") + b".\r\n")
    check_reply(c.read_reply(), 250)
    m = new.wait_messages(1)[0]
    assert header_gen(m.content) == 2 and received_gen(m.content) == 2
    assert len(old.messages) == 5


# --------------------------------------------------------------------------
# 3: refused reloads


BAD = {
    "toml": lambda f: f.config.write_text(f.config.read_text() + "\n[limits]\nrecipients = \"many\"\n"),
    "toml-syntax": lambda f: f.config.write_text(f.config.read_text().replace("[lua]", "[lua")),
    "lua": lambda f: f.rules.write_text("postern.rule{ name = 'X', stage = 'eom', fn = function(ctx)\n"),
    "lua-runtime": lambda f: f.rules.write_text("local x = nil\nx.y = 1\n"),
    "cert": lambda f: f.config.write_text(
        f.config.read_text() + f'\n[tls]\ncert_file = "{f.dir}/missing.pem"\nkey_file = "{f.dir}/missing.key"\n'),
    "dkim-key": lambda f: f.config.write_text(
        f.config.read_text() + f'\n[[dkim.sign]]\ndomain = "example.org"\nselector = "s"\n'
                               f'key_file = "{f.dir}/nokey.pem"\n'),
    "listener": lambda f: f.config.write_text(
        f.config.read_text() + '\n[[listener]]\naddress = "300.1.2.3:25"\n'),
    "upstream": lambda f: f.config.write_text(
        f.config.read_text().replace(f'target = "{f.upstream}"', 'target = "nowhere"')),
}
WHERE = {"toml": "postern.toml:", "toml-syntax": "postern.toml:", "lua": "rules.lua:", "lua-runtime": "rules.lua:",
         "cert": "missing.pem", "dkim-key": "nokey.pem", "listener": "postern.toml:", "upstream": "postern.toml:"}


def test_refused_reloads_keep_everything_running(postern, sink, tmp_path, sockdir):
    """Each kind of broken reload is refused with the file (and line) named,
    over the control socket, in the log and in `status`; the sessions that
    follow run generation 1 exactly; a good reload afterwards applies."""
    files = Generation(tmp_path, sockdir, sink.address)
    p = start(postern, files)
    for n, (kind, breaker) in enumerate(BAD.items()):
        files.write(2)
        breaker(files)
        answer = control(files.control)
        assert answer.startswith("error reload refused"), (kind, answer)
        assert WHERE[kind] in answer, (kind, answer)
        p.wait_for_log("reload-failed", count=2 * n + 1)
        line = p.events("reload-failed")[-1]
        assert WHERE[kind] in line.raw, (kind, line.raw)
        p.send_signal(signal.SIGHUP)  # the same file by signal: refused the same way
        p.wait_for_log("reload-failed", count=2 * n + 2)
        assert "error" in control(files.control, b"status\n").split("last reload: ")[1].split("\n")[0]
        c = SmtpClient(p.port)
        assert greeting_gen(c) == 1, kind
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message(subject=kind)), 250)
        c.close()
        m = sink.wait_messages(n + 1)[n]
        assert header_gen(m.content) == 1 and received_gen(m.content) == 1, kind
    files.write(3)
    assert control(files.control).startswith("ok reloaded")
    assert "last reload: ok" in control(files.control, b"status\n")
    c = SmtpClient(p.port)
    assert greeting_gen(c) == 3
    assert not p.events("reloaded-partially")


# --------------------------------------------------------------------------
# 4: keys that need a restart


def test_restart_only_keys_are_reported_and_not_applied(postern, sink, tmp_path, sockdir):
    """A reload that moves the listener or changes server.threads applies the
    rest, keeps the running listener (the new address is not bound) and says,
    in the log and in the control answer, which keys wait for a restart."""
    files = Generation(tmp_path, sockdir, sink.address, extra="")
    p = start(postern, files)
    port = p.port
    other = free_port()
    files.write(2, listen=f"127.0.0.1:{other}")
    files.config.write_text(files.config.read_text().replace("shutdown_timeout = 5\n",
                                                             "shutdown_timeout = 5\nthreads = 3\n"))
    answer = control(files.control)
    assert answer.startswith("ok reloaded"), answer
    assert "restart" in answer and "listener" in answer and "server.threads" in answer, answer
    # the running listener in the configuration's own words, not enum numbers
    # the running listener as its file says it (port 0: any), in the file's words
    assert "restart needed: listener (running: 127.0.0.1:0 tls=none require_tls=false " \
        "proxy_protocol=false from=127.0.0.0/8,::1/128 auth=off policy=inbound)" in answer, answer
    assert "restart needed: server.threads (running: 0, one per core)" in answer, answer
    p.wait_for_log("restart-needed", key="listener")  # the log is read in the background
    p.wait_for_log("restart-needed", key="server.threads")
    c = SmtpClient(port)
    assert greeting_gen(c) == 2  # the rest applied
    c.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", other), timeout=1).close()
    # the same file again: still reported (the running listener has not moved)
    assert "listener" in control(files.control)


def test_a_store_change_is_reported_as_restart_needed(postern, sink, tmp_path, sockdir):
    """[store] is built once per process (greylisting and rate limits survive
    reloads): a reload that changes it keeps the running store and says so
    like the other restart-only keys, in the answer and the log."""
    files = Generation(tmp_path, sockdir, sink.address, extra="")
    p = start(postern, files)
    files.write(2, extra="[store]\nmax_bytes = 1048576\n")
    answer = control(files.control)
    assert answer.startswith("ok reloaded"), answer
    assert "restart needed: store (running: memory)" in answer, answer
    p.wait_for_log("restart-needed", key="store")  # the log is read in the background
    c = SmtpClient(p.port)
    assert greeting_gen(c) == 2  # the rest applied
    c.close()
    # back to the running store's options: nothing to report
    files.write(3)
    assert "restart needed" not in control(files.control)


# --------------------------------------------------------------------------
# 5: shutdown and start-up


def test_reload_during_drain_loses_nothing(postern, sink, tmp_path, sockdir):
    """SIGTERM with a message mid-DATA, then reloads by signal and socket
    while draining: the message is relayed once with its own generation,
    the process exits 0."""
    files = Generation(tmp_path, sockdir, sink.address)
    p = start(postern, files)
    c = SmtpClient(p.port)
    c.ehlo()
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
    check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
    check_reply(c.cmd("DATA"), 354)
    msg = make_message(subject="draining")
    c.send(msg[:30])
    files.write(2)
    p.send_signal(signal.SIGHUP)
    p.send_signal(signal.SIGTERM)
    p.wait_for_log("shutdown")
    p.send_signal(signal.SIGHUP)
    try:
        control(files.control, timeout=2 * SCALE)
    except OSError:
        pass  # the socket may be closed by then: either answer is fine
    c.send(msg[30:] + b".\r\n")
    check_reply(c.read_reply(), 250)
    assert p.wait_exit(15 * SCALE) == 0
    p.check_sanitizers()
    m = sink.wait_messages(1)[0]
    assert len(sink.messages) == 1
    assert header_gen(m.content) == 1 and received_gen(m.content) == 1


def test_sighup_during_start_up_does_not_kill(tmp_path, sockdir, sink):
    """SIGHUP while postern is still starting (here: compiling a slow rule
    file, before the listeners): postern comes up,
    serves, and applies the held reload once it does."""
    files = Generation(tmp_path, sockdir, sink.address)
    slow = "local n = 0\nfor i = 1, 20000000 do n = n + i end\n" + RULE.format(gen=1)
    files.write(1, rules=slow)
    p = PosternProcess(postern_run_args(config=str(files.config), listen=()), cwd=str(tmp_path))
    p.start(wait=False)
    try:
        # Before main() runs, SIGHUP has its default action in any program; the
        # attack starts once postern catches it (SigCgt bit 0 in /proc), which
        # it does first thing, long before the slow rule file is compiled.
        def catches_hangup():
            try:
                status = open(f"/proc/{p.pid}/status").read()
            except OSError:
                return False
            caught = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)
            return bool(caught) and int(caught.group(1), 16) & (1 << (signal.SIGHUP - 1)) != 0
        wait_until(lambda: not p.alive() or catches_hangup() or bool(p.events("started")), 10 * SCALE)
        assert not p.events("started"), "postern started before it caught SIGHUP (or the rule file is not slow enough)"
        deadline = time.monotonic() + 20 * SCALE
        while not p.events("started") and p.alive() and time.monotonic() < deadline:
            p.send_signal(signal.SIGHUP)
            time.sleep(0.005)
        assert p.alive(), f"killed by SIGHUP during start-up (rc {p.proc.poll()}): {p.log_tail()}"
        p.wait_for_log("started")
        p.wait_for_log("reloaded", timeout=20 * SCALE)
        wait_until(lambda: os.path.exists(files.control), 10 * SCALE)
        assert control(files.control, b"status\n").startswith("postern")
        p.stop()
    finally:
        p.kill()


def test_hundred_reloads_do_not_grow_fds_or_memory(postern, sink, tmp_path, sockdir):
    """120 reloads, a session between every few: the count of open file
    descriptors comes back to what it was and VmRSS stays bounded."""
    files = Generation(tmp_path, sockdir, sink.address)
    p = start(postern, files)

    def fds():
        return len(os.listdir(f"/proc/{p.pid}/fd"))

    def one_message(i):
        c = SmtpClient(p.port)
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message(subject=f"n{i}")), 250)
        c.close()

    for i in range(10):  # warm-up: pools, caches, arenas
        files.write(i + 2)
        assert control(files.control).startswith("ok reloaded")
        one_message(i)
    wait_until(lambda: p.status_kb("VmRSS") is not None, 5)
    fd0, rss0 = fds(), p.status_kb("VmRSS")
    for i in range(120):
        files.write(i + 20)
        if i % 2:
            assert control(files.control).startswith("ok reloaded")
        else:
            sighup(p)
        if i % 10 == 0:
            one_message(100 + i)
    # idle pool connections and probe sockets settle within a probe
    wait_until(lambda: fds() <= fd0 + 2, 10 * SCALE, message=f"fds back near {fd0} (now {fds()})")
    rss1 = p.status_kb("VmRSS")
    # (ASan keeps freed memory in its quarantine, 256 MB by default: there RSS
    # says nothing; its leak check at exit does.)
    assert rss1 - rss0 < 16 * 1024 or ASAN, f"VmRSS grew {rss0} -> {rss1} kB over 120 reloads"
    print(f"fds {fd0} -> {fds()}, VmRSS {rss0} -> {rss1} kB over 120 reloads")
