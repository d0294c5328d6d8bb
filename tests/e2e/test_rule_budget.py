"""A rule's budget holds everywhere (issue 17), end to end: a rule stuck in
pattern matching or in a C built-in gets its on_error reply within the time
budget, the session goes on, an honest session on the same I/O thread
(server.threads = 1) is not held longer than the budget, the watchdog names
the rule, and ordinary idioms over ordinary big mail do not hit the budget.
Rule log output is rate-limited and its lines carry the session id."""

import base64
import threading
import time

import pytest

from harness import SmtpClient, check_reply, make_message
from prometheus import scrape
from harness import free_port

TIMEOUT = 1.0   # lua.timeout of these tests
GRACE = 1.0     # scheduling slack on a loaded machine


def rule_file(tmp_path, name, text):
    path = tmp_path / f"{name}.lua"
    path.write_text(text)
    return path


def start(postern, sink, tmp_path, script, **extra):
    sets = {"lua.scripts": f'["{script}"]', "lua.timeout": TIMEOUT, "server.threads": 1,
            "lua.instruction_budget": 1 << 40}
    sets.update(extra)
    return postern.start(upstream=sink.address, sets=sets)


def honest_session(port, out):
    """A whole ordinary transaction; records how long it took and its reply."""
    start = time.monotonic()
    with SmtpClient(port) as c:
        c.ehlo()
        reply = c.send_message("honest@example.org", ["b@example.com"], make_message("honest"))
    out["reply"] = reply
    out["seconds"] = time.monotonic() - start


TRIM = """
postern.rule{ name = "TRIM", stage = "eom", on_error = "tempfail", fn = function(ctx)
  for _, part in ipairs(ctx.body:text_parts()) do
    local trimmed = part.text:match("^%s*(.-)%s*$")
    if trimmed == "" then return true end
  end
end }
"""

# Each hangs Lua's own string/table library for minutes or for good.
HOSTILE = {
    "trim": "local s = 'x' .. (' '):rep(60000) .. 'y' local t = s:match('^%s*(.-)%s*$')",
    "find": "string.find(('a'):rep(60000), 'a*a*a*b')",
    "nested": "(('a'):rep(60000)):find('(a*)*b')",
    "gsub": "local r = (('a'):rep(60000)):gsub('a*a*a*b', 'x')",
    "rep": "local s = string.rep('x', 2^40, ',')",
    "move": "table.move({}, 1, 2^50, 1, {})",
    "insert": "table.insert(setmetatable({}, {__len = function() return 2^50 end}), 1, 'x')",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_rule_ends_within_budget_and_spares_the_thread(postern, sink, tmp_path, case):
    script = rule_file(tmp_path, "hostile", 'postern.rule{ name = "HOSTILE", stage = "rcpt", on_error = "tempfail", '
                       'fn = function(ctx) if ctx.envelope.rcpt.addr ~= "victim@example.com" then return end '
                       + HOSTILE[case] + ' end }\n')
    p = start(postern, sink, tmp_path, script, **{"lua.busy_threshold": 0.3})
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        c.send(b"RCPT TO:<victim@example.com>\r\n")
        time.sleep(0.1)  # the rule is running on the one I/O thread now
        honest = {}
        t = threading.Thread(target=honest_session, args=(p.port, honest))
        # The honest client connects while the thread is busy; it needs the
        # hostile rule's thread for its greeting and every command.
        t.start()
        began = time.monotonic()
        reply = c.read_reply(timeout=TIMEOUT + GRACE + 1)
        took = time.monotonic() - began + 0.1
        check_reply(reply, 451, "4.7.0", f"{case}: the rule's on_error")
        assert took < TIMEOUT + GRACE, f"{case}: the reply took {took:.2f} s"
        # The session goes on.
        check_reply(c.cmd("RSET"), 250)
        check_reply(c.cmd("NOOP"), 250)
        t.join(TIMEOUT + GRACE + 5)
    assert honest.get("reply") is not None, "the honest session did not finish"
    check_reply(honest["reply"], 250, what="the honest session")
    assert honest["seconds"] < TIMEOUT + GRACE, f"honest session took {honest['seconds']:.2f} s"
    p.wait_for_log("lua", timeout=5)
    errors = [l.get("line", "") for l in p.events("lua") if "lua-rule-error rule=HOSTILE" in l.get("line", "")]
    assert errors and ("time limit exceeded" in errors[0] or "memory limit" in errors[0]), p.log_tail()


def test_trim_idiom_over_a_text_part_gets_on_error_within_budget(postern, sink, tmp_path):
    """The remote case of the issue: x + 60 kB of spaces + y in a message."""
    script = rule_file(tmp_path, "trim", TRIM)
    metrics_port = free_port()
    p = start(postern, sink, tmp_path, script, **{"lua.busy_threshold": 0.3,
                                                   "metrics.address": f'"127.0.0.1:{metrics_port}"'})
    # The text part decodes to one line of "x", 60 kB of spaces and "y"
    # (base64: lines on the wire stay under the SMTP line limit).
    text = base64.encodebytes(b"x" + b" " * 60000 + b"y").replace(b"\n", b"\r\n")
    body = text
    extra = b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: base64\r\n"
    with SmtpClient(p.port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@example.org>", 250)
        c.expect("RCPT TO:<b@example.com>", 250)
        c.expect("DATA", 354)
        c.send(make_message("trim", body, extra_headers=extra) + b".\r\n")
        began = time.monotonic()
        time.sleep(0.1)
        honest = {}
        t = threading.Thread(target=honest_session, args=(p.port, honest))
        t.start()
        reply = c.read_reply(timeout=TIMEOUT + GRACE + 2)
        took = time.monotonic() - began
        check_reply(reply, 451, "4.7.0", "the rule's on_error")
        assert took < TIMEOUT + GRACE, f"the reply took {took:.2f} s"
        # The session goes on: an ordinary message on the same connection passes.
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("next", b"Hello.\r\n")), 250)
        t.join(10)
    assert honest["reply"].code == 250
    assert honest["seconds"] < TIMEOUT + GRACE, f"honest session took {honest['seconds']:.2f} s"
    # The watchdog named the rule, and counted it.
    busy = p.wait_for_log("lua", timeout=5)
    lines = [l.get("line", "") for l in p.events("lua")]
    assert any(l.startswith("io-thread-busy rule=TRIM") for l in lines), p.log_tail()
    assert any(l.startswith("io-thread-busy-end rule=TRIM") for l in lines), p.log_tail()
    assert busy is not None
    exp = scrape(metrics_port)
    assert exp.value("postern_lua_thread_busy_total", rule="TRIM") == 1
    assert exp.value("postern_lua_rule_errors_total", rule="TRIM", script=str(script), kind="timeout") == 1


LOTTERY = """
postern.rule{
  name = "LOTTERY",
  stage = "eom",
  score = 4,
  fn = function(ctx)
    for _, part in ipairs(ctx.body:text_parts()) do
      if part.text:lower():find("you have won", 1, true) then return true end
      -- and the pattern idioms a rule author writes over the same text
      if part.text:match("^%s*(.-)%s*$"):find("[Ll]ottery%s+winner") then return true end
      for word in part.text:gmatch("%a+") do if word == "jackpot" then return true end end
    end
    for line in ctx.body:lines() do
      if line:find("^begin 6%d%d ") then return true end   -- uuencoded attachment
    end
  end,
}
"""


def test_docs_lottery_over_an_80kb_newsletter_passes(postern, sink, tmp_path):
    """The docs' own idiom over ordinary big mail: no subject limit, no tempfail."""
    script = rule_file(tmp_path, "lottery", LOTTERY)
    p = start(postern, sink, tmp_path, script, **{"lua.timeout": 5})
    paragraph = (b"This week in the newsletter: the garden club meets on Tuesday, the library extends "
                 b"its opening hours, and the football team won again.  Read more on our site.\r\n")
    body = paragraph * (82082 // len(paragraph) + 1)
    assert len(body) > 80000
    with SmtpClient(p.port) as c:
        c.ehlo()
        began = time.monotonic()
        check_reply(c.send_message("news@example.org", ["b@example.com"], make_message("Newsletter", body)), 250)
        assert time.monotonic() - began < 2
    assert len(sink.messages) == 1
    assert not any("lua-rule-error" in l.get("line", "") for l in p.events("lua")), p.log_tail()


def test_rule_log_is_rate_limited_and_carries_the_session(postern, sink, tmp_path):
    script = rule_file(tmp_path, "chatty", 'postern.rule{ name = "CHATTY", stage = "eom", fn = function(ctx) '
                       'for i = 1, 20000 do print("line " .. i .. (" "):rep(500)) end end }\n')
    metrics_port = free_port()
    p = start(postern, sink, tmp_path, script, **{"lua.log_rate": 5, "lua.log_burst": 20, "lua.timeout": 10,
                                                   "metrics.address": f'"127.0.0.1:{metrics_port}"'})
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("chatty")), 250)
    start_line = p.wait_for_log("session-start")
    prints = [l for l in p.events("lua") if l.get("line", "").startswith("lua-print")]
    assert 20 <= len(prints) <= 30, len(prints)
    assert all(l.get("session") == start_line.get("session") for l in prints)
    assert all(l.get("id") for l in prints)
    exp = scrape(metrics_port)
    assert exp.value("postern_lua_log_dropped_total", rule="CHATTY") == 20000 - len(prints)
