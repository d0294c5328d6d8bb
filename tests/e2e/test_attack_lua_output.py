"""What a careless or hostile Lua rule can make postern emit (adversarial
pass over the rules' outputs and the sandbox boundary), end to end: one
postern with the rules below in front of the recording sink. Each case is
chosen by the recipient's local part (stage rcpt) or by the X-Case header
(stage eom); the tests check the client's view, what the MTA received, the
log, the audit log and the metrics page.

Classes: reply codes and texts (CR, LF, NUL, 8-bit, overlong, codes of the
wrong class, malformed enhanced codes, verdict tables changed after they
were made); header edits (names and values with CR/LF/NUL/':', forged
fields, early end of the header section, dot lines, overlong values, many
fields, subject tags); envelope edits (addresses with '>', CRLF, ESMTP
parameters, overlong, many); odd return values and error objects; sandbox
escapes and memory/time bombs; state leaking from one rule run to another
script or the next message through shared tables."""

import json
import re
import time

import pytest

from conftest import PosternFactory
from harness import LogLine, RecordingSink, SmtpClient, check_reply, free_port, wait_until
from prometheus import scrape

TIMEOUT = 2  # lua.timeout: the bombs below end there


# First script: the attacks. Its rules run before those of GUARD_RULES.
ATTACK_RULES = r'''
local R = {}   -- stage rcpt, by the recipient's local part
local E = {}   -- stage eom, by the X-Case header

-- reply texts
R["txt-crlf"] = function() return postern.reject(550, "5.7.1", "no\r\n250 2.0.0 Ok queued") end
R["txt-lf"] = function() return postern.reject(550, "5.7.1", "no\n250 2.0.0 Ok queued") end
R["txt-cr"] = function() return postern.tempfail(451, "4.7.1", "no\r250 2.0.0 Ok queued") end
R["txt-nul"] = function() return postern.reject(550, "5.7.1", "no\0\r\n250 Ok") end
R["txt-8bit"] = function() return postern.reject(550, "5.7.1", "caf\xc3\xa9 \xff\xfe\x80 bad") end
R["txt-10k"] = function() return postern.reject(550, "5.7.1", ("A"):rep(10240)) end
R["txt-1m"] = function() return postern.tempfail(451, "4.7.1", ("B\r\n"):rep(350000)) end
R["disc-crlf"] = function() return postern.disconnect("bye\r\n250 2.0.0 Ok") end
-- codes of the wrong class: a rule error, so on_error (451 4.7.0)
R["code-250"] = function() return postern.reject(250, "5.7.1", "x") end
R["code-354"] = function() return postern.reject(354) end
R["code-99"] = function() return postern.reject(99, "x") end
R["code-600"] = function() return postern.reject(600, "x") end
R["code-t550"] = function() return postern.tempfail(550, "x") end
R["code-nan"] = function() return postern.reject(0/0, "x") end
R["code-inf"] = function() return postern.reject(math.huge, "x") end
R["code-frac"] = function() return postern.reject(550.5, "x") end
R["enh-2"] = function() return postern.reject(550, "2.0.0", "x") end
R["enh-t5"] = function() return postern.tempfail(451, "5.7.1", "x") end
R["enh-crlf"] = function() return postern.reject(550, "5.7.1\r\n250 Ok", "x") end
R["enh-long"] = function() return postern.reject(550, "5.7777.1", "x") end
-- verdict tables changed after postern made them
R["vt-code"] = function() local v = postern.reject(550, "5.7.1", "x") v.code = 250 return v end
R["vt-code354"] = function() local v = postern.reject() v.code = 354 return v end
R["vt-code-t"] = function() local v = postern.tempfail() v.code = 550 return v end
R["vt-code-big"] = function() local v = postern.reject() v.code = 2^32 + 250 return v end
R["vt-code-str"] = function() local v = postern.reject() v.code = "250" return v end
R["vt-enh"] = function() local v = postern.reject() v.enhanced = "2.0.0" return v end
R["vt-enh-crlf"] = function() local v = postern.reject() v.enhanced = "5.7.1\r\n250 2.0.0" return v end
R["vt-text"] = function() local v = postern.reject() v.text = "no\r\n250 2.0.0 Ok\r\n" .. ("x"):rep(100000) return v end
R["vt-text-lines"] = function() local v = postern.reject() v.text = ("250 Ok\n"):rep(100000) return v end
R["vt-text-tbl"] = function() local v = postern.reject() v.text = {} return v end
R["vt-action"] = function() local v = postern.reject() v.action = "relay" return v end
R["vt-reason"] = function() local v = postern.reject() v.reason = "r\r\n{\"forged\":1}\n" .. ("r"):rep(100000) return v end
-- odd return values: the rule failed, so on_error
R["ret-num"] = function() return 42 end
R["ret-nan"] = function() return 0/0 end
R["ret-str"] = function() return "250 2.0.0 Ok\0" end
R["ret-fn"] = function() return print end
R["ret-tbl"] = function() return {action = "reject", code = 250, text = "forged"} end
R["ret-meta"] = function()
  return setmetatable({}, {__index = function() error("index") end, __tostring = function() error("tostring") end,
                           __eq = function() while true do end end, __len = function() while true do end end})
end
R["ret-many"] = function() return postern.reject(550, "5.7.1", "first"), postern.accept() end
R["err-tbl"] = function() error(setmetatable({}, {__tostring = function() error("again") end})) end
R["err-loop"] = function() error(setmetatable({}, {__tostring = function() while true do end end})) end
R["err-ud"] = function(ctx) error(ctx) end
R["err-regex"] = function() error(postern.regex("x")) end
R["err-nil"] = function() error(nil) end
R["err-crlf"] = function() error("boom\r\n250 2.0.0 Ok \"quoted\" \x1b[31m", 0) end
R["err-forge"] = function() error('x" rule=FORGED policy=continue error="', 0) end
R["log-forge"] = function() postern.log("warning", 'x" rule=FORGED msg="y') end
R["err-huge"] = function() error(("E"):rep(1000000), 0) end
-- budgets and the sandbox: each must end in on_error, nothing else
R["pcall-budget"] = function() while true do pcall(function() while true do end end) end end
R["xpcall-budget"] = function() for i = 1, 1e9 do xpcall(function() while true do end end, function() return "caught" end) end end
R["pcall-mem"] = function() local t = {} while true do pcall(function() t[#t + 1] = ("x"):rep(1e6) .. #t end) end end
R["rep-bomb"] = function() local s = string.rep("x", 2^31) return postern.reject(tostring(#s)) end
R["fmt-bomb"] = function() return postern.reject(string.format("%99999s", "x")) end
R["concat-bomb"] = function() local t = {} for i = 1, 1e8 do t[i] = "xxxxxxxx" end return postern.reject(table.concat(t)) end
R["recurse"] = function() local function f(n) return f(n + 1) + 1 end return f(1) end
R["recurse-c"] = function() local t = setmetatable({}, {}) getmetatable(t).__index = function(t, k) return t[k] end return t.x end
R["gsub-bomb"] = function() local s = ("a"):rep(200000) s:gsub("a*a*a*a*b", "") end
R["gc-error"] = function() setmetatable({}, {__gc = function() error("gc") end}) end
R["sandbox-os"] = function() os.execute("touch /tmp/postern-pwned") end
R["sandbox-io"] = function() io.open("/etc/passwd") end
R["sandbox-debug"] = function() debug.sethook() end
R["sandbox-package"] = function() package.loaded.x = 1 end
R["sandbox-load"] = function() load("return 1") end
R["sandbox-dump"] = function() string.dump(print) end
R["sandbox-gc"] = function() collectgarbage("stop") end
R["sandbox-require"] = function() require("os") end
R["sandbox-strmeta"] = function() setmetatable("", {}) end
R["sandbox-getstrmeta"] = function() getmetatable("").__index.upper = function() return "x" end end
R["sandbox-coroutine"] = function() coroutine.wrap(function() end)() end
-- state a rule run may try to leave behind for other scripts and messages
R["leak-G"] = function() _G.postern = nil end
R["leak-G-new"] = function() _G.LEAKED = "yes" end
R["leak-G-string"] = function() _G.string = {lower = function() return "pwned" end} end
R["leak-string"] = function() string.lower = function() return "pwned" end end
R["leak-string-rawset"] = function() rawset(string, "lower", function() return "pwned" end) end
R["leak-table"] = function() table.concat = function() return "pwned" end end
R["leak-math"] = function() math.max = function() return -1 end end
R["leak-postern"] = function() postern.reject = function() return nil end end
R["leak-postern-rawset"] = function() rawset(postern, "reject", function() return nil end) end
R["leak-dns"] = function() postern.dns.a = function() return {"127.0.0.2"} end end
R["leak-util"] = function() rawset(postern.util, "address", function() return nil end) end
R["leak-os"] = function() os.time = function() return 0 end end
R["leak-utf8"] = function() utf8.char = nil end
R["leak-store"] = function() postern.store.get = nil end
R["leak-settings-deep"] = function() postern.settings.list[1] = "changed" end
R["leak-settings-rawset"] = function() rawset(postern.settings, "blocked", "x") end
R["leak-setmeta"] = function() setmetatable(string, {__index = function() return nil end}) end
R["leak-pairs"] = function() local _, t = pairs(string) t.lower = function() return "pwned" end end
R["leak-pairs-deep"] = function() for _, v in pairs(postern) do if type(v) == "table" then rawset(v, "a", print) end end end
R["pairs-iter"] = function() local it = pairs(string) it(setmetatable({}, {__index = print}), nil) end
R["pairs-iter2"] = function() local it = pairs(postern) it({}, "x") end
R["leak-next"] = function() for k in pairs(string) do rawset(string, k, nil) end end
R["leak-settings"] = function() postern.settings.blocked = "nobody" end
R["leak-env-meta"] = function() getmetatable(_ENV).__index.LEAKED = "yes" end
R["leak-address-meta"] = function(ctx) getmetatable(ctx.envelope.rcpt).__eq = function() return false end end
R["leak-address-meta2"] = function(ctx) getmetatable(ctx.envelope.rcpt).__tostring = function() return "pwned@example.com" end end
R["leak-verdict-meta"] = function() getmetatable(postern.reject()).__index = {} end
R["leak-regex-meta"] = function() getmetatable(postern.regex("x")).__index.test = function() return false end end

-- a forgotten `local`: the global would outlive the message
R["global-set"] = function(ctx) trusted_by_leak = ctx.envelope.rcpt.addr end
R["global-read"] = function() if trusted_by_leak ~= nil then return postern.reject(550, "5.7.1", "leaked") end end

-- header edits (stage eom)
E["hdr-name-colon"] = function(ctx) ctx:add_header("X-A: forged", "v") end
E["hdr-name-space"] = function(ctx) ctx:add_header("X A", "v") end
E["hdr-name-crlf"] = function(ctx) ctx:add_header("X-A\r\nX-Forged", "v") end
E["hdr-name-nul"] = function(ctx) ctx:add_header("X-A\0X-Forged: yes\r\n", "v") end
E["hdr-name-8bit"] = function(ctx) ctx:add_header("X-\xc3\xa9", "v") end
E["hdr-name-empty"] = function(ctx) ctx:add_header("", "v") end
E["hdr-name-long"] = function(ctx) ctx:add_header(("N"):rep(5000), "v") end
E["hdr-name-tbl"] = function(ctx) ctx:add_header({}, "v") end
E["hdr-change-name-crlf"] = function(ctx) ctx:change_header("Subject\r\nX-Forged", "v") end
E["hdr-remove-name-crlf"] = function(ctx) ctx:remove_header("Subject\r\nX-Forged") end
E["hdr-val-crlf"] = function(ctx) ctx:add_header("X-A", "v\r\nX-Forged: crlf") end
E["hdr-val-lf"] = function(ctx) ctx:add_header("X-A", "v\nX-Forged: lf") end
E["hdr-val-cr"] = function(ctx) ctx:add_header("X-A", "v\rX-Forged: cr") end
E["hdr-val-eoh"] = function(ctx) ctx:add_header("X-A", "v\r\n\r\nINJECTED BODY") end
E["hdr-val-dot"] = function(ctx) ctx:add_header("X-A", "v\r\n.\r\nMAIL FROM:<evil@example.net>\r\n") end
E["hdr-val-nul"] = function(ctx) ctx:add_header("X-A", "v\0X-Forged: nul") end
E["hdr-val-fold"] = function(ctx) ctx:add_header("X-A", "v\r\n X-Forged: fold") end
E["hdr-prepend-crlf"] = function(ctx) ctx:prepend_header("X-A", "v\r\nX-Forged: prepend") end
E["hdr-change-crlf"] = function(ctx) ctx:change_header("Subject", "v\r\nX-Forged: change\r\n\r\nbody") end
E["hdr-change-all"] = function(ctx) ctx:change_header("Subject", "\r\n.\r\n", 0) end
E["hdr-val-long"] = function(ctx) ctx:add_header("X-A", ("word "):rep(3000)) end
E["hdr-val-huge"] = function(ctx) ctx:add_header("X-A", ("w"):rep(1000000)) end
E["hdr-val-word"] = function(ctx) ctx:add_header("X-A", ("w"):rep(5000)) end
E["hdr-val-spaces"] = function(ctx) ctx:add_header("X-A", ("v" .. (" "):rep(1200)):rep(5)) end
E["hdr-val-8bit"] = function(ctx) ctx:add_header("X-A", "caf\xc3\xa9 \xff\xfe") end
E["hdr-many"] = function(ctx) for i = 1, 5000 do ctx:add_header("X-Many", tostring(i)) end end
E["hdr-index"] = function(ctx) ctx:change_header("Subject", "v", -1) end
E["hdr-index-big"] = function(ctx) ctx:remove_header("Subject", 2^40) end
E["hdr-val-meta"] = function(ctx) ctx:add_header("X-A", setmetatable({}, {__tostring = function() return "v\r\nX-Forged: meta" end})) end
E["tag-crlf"] = function(ctx) ctx:tag_subject("[T]\r\nX-Forged: tag") end
E["tag-eoh"] = function(ctx) ctx:tag_subject("[T]\r\n\r\n.\r\n") end
E["tag-del"] = function(ctx) ctx:tag_subject("[T]\x7f\0\x1b") end
E["tag-long"] = function(ctx) ctx:tag_subject(("T"):rep(5000)) end
E["tag-200"] = function(ctx) ctx:tag_subject(("T"):rep(200)) end
E["rm-trace"] = function(ctx) ctx:remove_header("Received") ctx:remove_header("Authentication-Results") ctx:remove_header("DKIM-Signature") end
E["chg-trace"] = function(ctx) ctx:change_header("Received", "forged", 0) ctx:change_header("Authentication-Results", "mx.test; dkim=pass", 0) end
-- envelope edits
E["rcpt-gt"] = function(ctx) ctx:add_rcpt("a@example.com> NOTIFY=NEVER") end
E["rcpt-crlf"] = function(ctx) ctx:add_rcpt("a@example.com\r\nRCPT TO:<evil@example.net>") end
E["rcpt-param"] = function(ctx) ctx:add_rcpt("<a@example.com> NOTIFY=SUCCESS ORCPT=rfc822;evil@example.net") end
E["rcpt-space"] = function(ctx) ctx:add_rcpt("a b@example.com") end
E["rcpt-nul"] = function(ctx) ctx:add_rcpt("a@example.com\0evil@example.net") end
E["rcpt-long"] = function(ctx) ctx:add_rcpt(("l"):rep(100000) .. "@example.com") end
E["rcpt-long-local"] = function(ctx) ctx:add_rcpt(("l"):rep(400) .. "@example.com") end
E["rcpt-many"] = function(ctx) for i = 1, 5000 do ctx:add_rcpt("r" .. i .. "@example.com") end end
E["rcpt-obj"] = function(ctx) ctx:add_rcpt({addr = "a@example.com>\r\nDATA"}) end
E["redirect-crlf"] = function(ctx) ctx:redirect("x@example.com>\r\nRSET") end
E["redirect-list"] = function(ctx) ctx:redirect({"ok@example.com", "bad@example.com\r\nRSET"}) end
E["redirect-many"] = function(ctx) local t = {} for i = 1, 5000 do t[i] = "r" .. i .. "@example.com" end ctx:redirect(t) end
E["redirect-len"] = function(ctx) ctx:redirect(setmetatable({}, {__len = function() while true do end end})) end
E["sender-crlf"] = function(ctx) ctx:set_sender("s@example.com> SIZE=1\r\nRCPT TO:<evil@example.net>") end
E["sender-param"] = function(ctx) ctx:set_sender("<s@example.com> BODY=8BITMIME") end
E["quarantine-crlf"] = function() return postern.quarantine("r\r\nX-Forged: quarantine\r\n\r\n.\r\n" .. ("q"):rep(100000)) end
E["discard-crlf"] = function() return postern.discard("r\r\n\"forged\"\n" .. ("d"):rep(100000)) end
E["reject-eom"] = function() return postern.reject(554, "5.7.1", "no\r\n250 2.0.0 Ok: queued as FORGED") end
E["reject-eom-vt"] = function() local v = postern.reject() v.code = 250 v.enhanced = "2.0.0" v.text = "Ok: queued as FORGED" return v end
E["tempfail-eom-vt"] = function() local v = postern.tempfail() v.code = 250 return v end
E["edit-then-error"] = function(ctx) ctx:add_header("X-Before-Error", "v") ctx:add_rcpt("extra@example.com") error("after the edits") end
-- log, notes and symbols
E["log-crlf"] = function(ctx)
  postern.log("info", "x\r\n1970-01-01 error forged-event key=\"v\" \x1b[2J")
  print("p\r\nforged", setmetatable({}, {__tostring = function() return "t\nforged" end}))
end
E["log-meta"] = function(ctx) postern.log("info", setmetatable({}, {__tostring = function() error("boom") end})) end
E["note-crlf"] = function(ctx) ctx.notes["k\r\nforged"] = "v\r\nforged\0" .. ("n"):rep(4000) end
E["symbol-bad"] = function(ctx) ctx:symbol("BAD\r\nSYM", 1) end
E["symbol-quote"] = function(ctx) ctx:symbol('Q"}', 1) end
E["symbol-desc"] = function(ctx) ctx:symbol("DESC_SYM", 1, "d\r\n\"}forged\x00" .. ("d"):rep(10000)) end
E["symbol-score"] = function(ctx) ctx:symbol("NAN_SYM", 0/0) end
E["symbol-many"] = function(ctx) for i = 1, 1e9 do ctx:symbol("S" .. i, 0) end end

-- Symbols a rule invents before MAIL join every transaction of the session.
postern.rule{ name = "ATTACK_HELO", stage = "helo", on_error = "continue", fn = function(ctx)
  if ctx.client.helo == "many-symbols.example" then
    for i = 1, 1e9 do ctx:symbol("HELO_SYMBOL_WITH_A_LONG_NAME_" .. i, 0) end
  end
end }

postern.rule{ name = "ATTACK_RCPT", stage = "rcpt", on_error = "tempfail", fn = function(ctx)
  local f = R[ctx.envelope.rcpt.local_part]
  if f then return f(ctx) end
end }

postern.rule{ name = "ATTACK_EOM", stage = "eom", on_error = "tempfail", fn = function(ctx)
  local f = E[ctx.headers:first("X-Case") or ""]
  if f then return f(ctx) end
end }
'''

# Second script: rules an admin relies on, which the first must not bend.
# Each refuses a recipient by its own means; "probe" reports what this
# script sees of the shared libraries.
GUARD_RULES = r'''
local given = {dns_a = postern.dns.a, store_get = postern.store.get, address = postern.util.address,
               regex = postern.regex, log = postern.log, accept = postern.accept, upper = string.upper,
               insert = table.insert, floor = math.floor, time = os.time, char = utf8.char}

postern.rule{ name = "GUARD", stage = "rcpt", on_error = "tempfail", fn = function(ctx)
  local rcpt = ctx.envelope.rcpt
  if rcpt.local_part == "blocked" then return postern.reject(550, "5.7.1", "guard refused") end
  if rcpt == postern.util.address("blocked2@example.com") then return postern.reject(550, "5.7.1", "guard refused") end
  if tostring(rcpt) == "blocked3@example.com" then return postern.reject(550, "5.7.1", "guard refused") end
  if rcpt.local_part == "probe" then
    local seen = {}
    if ("ABC"):lower() ~= "abc" then seen[#seen + 1] = "method" end
    if string.lower("ABC") ~= "abc" then seen[#seen + 1] = "string" end
    if table.concat({"a", "b"}) ~= "ab" then seen[#seen + 1] = "table" end
    if math.max(1, 2) ~= 2 then seen[#seen + 1] = "math" end
    if LEAKED ~= nil then seen[#seen + 1] = "global" end
    if postern.settings.blocked ~= nil or postern.settings.list[1] ~= "one" or #postern.settings.list ~= 2 then
      seen[#seen + 1] = "settings"
    end
    if not postern.regex("x"):test("x") then seen[#seen + 1] = "regex" end
    if postern.dns.a ~= given.dns_a or postern.store.get ~= given.store_get or postern.util.address ~= given.address
       or postern.regex ~= given.regex or postern.log ~= given.log or postern.accept ~= given.accept then
      seen[#seen + 1] = "api"
    end
    if string.upper ~= given.upper or table.insert ~= given.insert or math.floor ~= given.floor
       or os.time ~= given.time or utf8.char ~= given.char then
      seen[#seen + 1] = "library"
    end
    if postern.util.address("a@example.com\0@evil.example") ~= nil then seen[#seen + 1] = "nul-address" end
    local ok, v = pcall(postern.reject, 550, "5.7.1", "x")
    if not ok or type(v) ~= "table" then seen[#seen + 1] = "postern" end
    if #seen == 0 then return postern.reject(550, "5.7.1", "probe clean") end
    return postern.reject(550, "5.7.1", "probe saw " .. table.concat(seen, ","))
  end
end }
'''


class Env:
    def __init__(self, proc, sink, metrics_port, qdir, audit):
        self.p = proc
        self.sink = sink
        self.metrics_port = metrics_port
        self.qdir = qdir
        self.audit = audit


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("luaout")
    attack = tmp / "10_attack.lua"
    attack.write_text(ATTACK_RULES)
    guard = tmp / "20_guard.lua"
    guard.write_text(GUARD_RULES)
    sink = RecordingSink().start()
    factory = PosternFactory(tmp)
    metrics_port = free_port()
    qdir = tmp / "quarantine"
    audit = tmp / "audit.jsonl"
    try:
        p = factory.start(upstream=sink.address, sets={
            "lua.scripts": f'["{attack}", "{guard}"]',
            "lua.timeout": TIMEOUT,
            "lua.instruction_budget": 20000000,
            "lua.memory_limit": 32 * 1024 * 1024,
            "lua.busy_threshold": 0,
            "lua.settings.list": '["one", "two"]',

            "lua.log_burst": 100000,
            "server.threads": 1,
            "quarantine.dir": f'"{qdir}"',
            "audit.path": f'"{audit}"',
            "metrics.address": f'"127.0.0.1:{metrics_port}"',
        })
        yield Env(p, sink, metrics_port, qdir, audit)
    finally:
        factory.cleanup()
        sink.stop()


@pytest.fixture(autouse=True)
def fresh_sink(env):
    """Each test reads only what its own transactions gave the sink."""
    with env.sink._lock:
        env.sink.messages.clear()
        env.sink.refused_messages.clear()
        env.sink.events.clear()
    yield
    assert env.p.alive(), "postern died:\n" + env.p.log_tail()


def rcpt_reply(env, local, more=("ok@example.com",)):
    """MAIL, RCPT <local@example.com> (the case), then RCPT of each of `more`
    to see that the session goes on; returns the case's reply."""
    with SmtpClient(env.p.port, timeout=TIMEOUT + 20) as c:
        c.ehlo()
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        reply = c.cmd(f"RCPT TO:<{local}@example.com>")
        if reply.code != 421:
            for r in more:
                check_reply(c.cmd(f"RCPT TO:<{r}>"), 250, what=f"{local}: the session goes on")
            check_reply(c.cmd("RSET"), 250)
        return reply


def assert_clean_reply(reply, klass, what):
    """One reply (read_reply checked its syntax and that every line has one
    code), of the verdict's class, each line printable ASCII and bounded."""
    assert reply.code // 100 == klass, f"{what}: {reply}"
    assert len(reply.raw_lines) <= 10, f"{what}: {len(reply.raw_lines)} lines"
    for line in reply.raw_lines:
        assert len(line) <= 512, f"{what}: a line of {len(line)} octets"
        assert all(32 <= ord(ch) < 127 for ch in line), f"{what}: {line!r}"
    if reply.enhanced is not None:
        assert reply.enhanced[0] == str(klass), f"{what}: enhanced {reply.enhanced} in {reply}"


# ---- reply codes and texts


@pytest.mark.parametrize("case,klass", [
    ("txt-crlf", 5), ("txt-lf", 5), ("txt-cr", 4), ("txt-nul", 5), ("txt-8bit", 5), ("txt-10k", 5),
    ("txt-1m", 4), ("vt-code", 5), ("vt-code354", 5), ("vt-code-t", 4), ("vt-code-big", 5), ("vt-code-str", 5),
    ("vt-enh", 5), ("vt-enh-crlf", 5), ("vt-text", 5), ("vt-text-lines", 5), ("vt-text-tbl", 5),
    ("vt-reason", 5), ("ret-many", 5),
])
def test_reply_text_and_code_stay_one_clean_reply_of_the_verdicts_class(env, case, klass):
    reply = rcpt_reply(env, case)
    assert_clean_reply(reply, klass, case)


def test_disconnect_text_cannot_forge_a_second_reply(env):
    with SmtpClient(env.p.port, timeout=TIMEOUT + 20) as c:
        c.ehlo()
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        reply = c.cmd("RCPT TO:<disc-crlf@example.com>")
        check_reply(reply, 421)
        assert_clean_reply(reply, 4, "disc-crlf")
        assert c.wait_closed(10), "the session was not closed after 421"
        assert not c.buf, f"octets after the 421: {bytes(c.buf)!r}"


@pytest.mark.parametrize("case", [
    "code-250", "code-354", "code-99", "code-600", "code-t550", "code-nan", "code-inf", "code-frac",
    "enh-2", "enh-t5", "enh-crlf", "enh-long", "vt-action",
])
def test_a_code_outside_the_verdicts_class_is_the_rules_error(env, case):
    check_reply(rcpt_reply(env, case), 451, "4.7.0", case)


def test_refused_recipient_never_reaches_the_mta(env):
    with SmtpClient(env.p.port, timeout=TIMEOUT + 20) as c:
        c.ehlo()
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        for case in ("txt-crlf", "vt-code", "vt-code-str", "code-250"):
            assert c.cmd(f"RCPT TO:<{case}@example.com>").code >= 400, case
        check_reply(c.cmd("RCPT TO:<ok@example.com>"), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        check_reply(c.read_reply(), 250)
    wait_until(lambda: env.sink.messages, 10, message="the message at the sink")
    assert [m.rcpt_tos for m in env.sink.messages] == [["ok@example.com"]]
    rcpts = str(env.sink.commands("RCPT"))
    for case in ("txt-crlf", "vt-code", "vt-code-str", "code-250"):
        assert case not in rcpts


# ---- odd return values, error objects, budgets, the sandbox


@pytest.mark.parametrize("case", [
    "ret-num", "ret-nan", "ret-str", "ret-fn", "ret-tbl", "ret-meta",
    "err-tbl", "err-loop", "err-ud", "err-regex", "err-nil", "err-crlf", "err-huge",
    "pcall-budget", "xpcall-budget", "pcall-mem", "rep-bomb", "fmt-bomb", "concat-bomb", "recurse", "recurse-c",
    "gsub-bomb", "gc-error",
    "sandbox-os", "sandbox-io", "sandbox-debug", "sandbox-package", "sandbox-load", "sandbox-dump", "sandbox-gc",
    "sandbox-require", "sandbox-strmeta", "sandbox-getstrmeta", "sandbox-coroutine", "pairs-iter", "pairs-iter2",
])
def test_odd_results_errors_and_bombs_end_in_on_error(env, case):
    # The reply comes within the client's time-out (lua.timeout + 20 s): the
    # budget held; and the session goes on (rcpt_reply).
    check_reply(rcpt_reply(env, case), 451, "4.7.0", case)


def test_error_text_reaches_the_log_as_one_sanitized_line(env):
    check_reply(rcpt_reply(env, "err-crlf"), 451, "4.7.0")
    check_reply(rcpt_reply(env, "err-huge"), 451, "4.7.0")
    env.p.wait_for_log("lua", timeout=10)
    raw = "\n".join(l.raw for l in env.p.events("lua"))
    assert "\x1b" not in raw and "\r" not in raw
    errors = [l.get("line", "") for l in env.p.events("lua") if "lua-rule-error rule=ATTACK_RCPT" in l.get("line", "")]
    assert any("boom" in e for e in errors), errors
    assert any("EEEE" in e for e in errors), errors
    assert all(len(e) <= 4096 for e in errors), max(len(e) for e in errors)


def test_rule_text_cannot_forge_fields_of_its_log_line(env):
    """The text of an error or a postern.log call is one quoted value of the
    lua-rule-error / lua-log line: a '"' in it cannot end the value and add a
    rule= or policy= of its own."""
    check_reply(rcpt_reply(env, "err-forge"), 451, "4.7.0")
    check_reply(rcpt_reply(env, "log-forge"), 250)
    inner = [LogLine("ts level " + l.get("line", "")) for l in env.p.events("lua")]
    errors = [l for l in inner if l.event == "lua-rule-error" and "FORGED" in l.raw]
    logs = [l for l in inner if l.event == "lua-log" and "FORGED" in l.raw]
    assert errors and logs, env.p.log_tail()
    for l in errors:
        assert l.get("rule") == "ATTACK_RCPT" and l.get("policy") == "tempfail", l.raw
        assert l.get("error").startswith('x" rule=FORGED'), l.raw
    for l in logs:
        assert l.get("rule") == "ATTACK_RCPT" and l.get("msg") == 'x" rule=FORGED msg="y', l.raw


def test_no_file_was_touched_by_os_execute(env):
    check_reply(rcpt_reply(env, "sandbox-os"), 451, "4.7.0")
    import os
    assert not os.path.exists("/tmp/postern-pwned")


# ---- header edits


def send_case(env, case, subject="hello", rcpts=("b@example.com",), extra=""):
    content = (f"From: a@example.org\r\nTo: b@example.com\r\nSubject: {subject}\r\nX-Case: {case}\r\n{extra}"
               f"Message-ID: <{case}@postern.test>\r\n\r\nbody line\r\n").encode()
    with SmtpClient(env.p.port, timeout=TIMEOUT + 30) as c:
        c.ehlo()
        return c.send_message("a@example.org", list(rcpts), content)


def relayed(env, case):
    wait_until(lambda: env.sink.messages, 10, message=f"{case}: the message at the sink")
    assert len(env.sink.messages) == 1, env.sink.messages
    return env.sink.messages[0]


def header_block(content):
    head, sep, body = content.partition(b"\r\n\r\n")
    assert sep, "no end of the header section"
    return head, body


def assert_well_formed_head(content, case):
    """Every line of the header section a field or its continuation, each
    at most 998 octets, no NUL, no line that is a lone dot; the body intact."""
    head, body = header_block(content)
    for line in head.split(b"\r\n"):
        assert len(line) <= 998, f"{case}: a header line of {len(line)} octets"
        assert b"\r" not in line and b"\n" not in line and b"\0" not in line, f"{case}: {line!r}"
        assert line[:1] in (b" ", b"\t") or re.match(rb"^[!-9;-~]+:", line), f"{case}: not a field: {line[:100]!r}"
    assert body == b"body line\r\n", f"{case}: body changed: {body[:200]!r}"
    return head


def field_names(head):
    return [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]


@pytest.mark.parametrize("case", [
    "hdr-val-crlf", "hdr-val-lf", "hdr-val-cr", "hdr-val-eoh", "hdr-val-dot", "hdr-val-nul", "hdr-val-fold",
    "hdr-prepend-crlf", "hdr-change-crlf", "hdr-change-all", "hdr-val-long", "hdr-val-spaces", "hdr-val-8bit",
    "tag-crlf", "tag-eoh", "tag-del", "tag-200", "hdr-val-meta",
])
def test_header_values_and_tags_cannot_forge_fields_or_end_the_header_early(env, case):
    reply = send_case(env, case, subject="x" * 900 if case.startswith("tag") else "hello")
    if reply.code == 451:
        check_reply(reply, 451, "4.7.0", case)   # refused as the rule's error: nothing relayed
        assert env.sink.took_no_content(), env.sink.messages
        return
    check_reply(reply, 250, what=case)
    msg = relayed(env, case)
    head = assert_well_formed_head(msg.content, case)
    assert b"x-forged" not in field_names(head), f"{case}: forged field in {head!r}"
    assert b"mail from" not in field_names(head) and b"rcpt to" not in field_names(head)
    assert not any(l == b"." for l in head.split(b"\r\n"))
    assert msg.rcpt_tos == ["b@example.com"] and msg.mail_from == "a@example.org"
    for line in head.split(b"\r\n"):
        text = line.decode("utf-8")   # 8-bit only as well-formed UTF-8 (RFC 6532)
        assert all(ord(ch) >= 32 and ord(ch) != 127 or ch == "\t" for ch in text), f"{case}: {line!r}"


@pytest.mark.parametrize("case", [
    "hdr-name-colon", "hdr-name-space", "hdr-name-crlf", "hdr-name-nul", "hdr-name-8bit", "hdr-name-empty",
    "hdr-name-long", "hdr-name-tbl", "hdr-change-name-crlf", "hdr-remove-name-crlf", "hdr-val-huge",
    "hdr-val-word", "hdr-many", "hdr-index", "hdr-index-big", "tag-long",
    "rcpt-gt", "rcpt-crlf", "rcpt-param", "rcpt-space", "rcpt-nul", "rcpt-long", "rcpt-long-local", "rcpt-many",
    "rcpt-obj", "redirect-crlf", "redirect-list", "redirect-many", "redirect-len", "sender-crlf", "sender-param",
    "edit-then-error", "reject-eom-vt", "symbol-bad", "symbol-quote", "symbol-score", "log-meta",
])
def test_invalid_edits_are_the_rules_error_and_nothing_is_relayed(env, case):
    reply = send_case(env, case)
    check_reply(reply, 451 if case != "reject-eom-vt" else 554, None, case)
    assert_clean_reply(reply, reply.code // 100, case)
    assert env.sink.took_no_content(), f"{case}: relayed {env.sink.messages} {env.sink.refused_messages}"
    assert "evil" not in str(env.sink.events)


def test_eom_reject_text_cannot_forge_the_queued_reply(env):
    for case in ("reject-eom", "reject-eom-vt", "tempfail-eom-vt"):
        reply = send_case(env, case)
        assert_clean_reply(reply, 5 if case.startswith("reject") else 4, case)
    assert env.sink.took_no_content(), env.sink.messages


def test_removing_or_changing_trace_fields_keeps_posterns_own(env):
    for case in ("rm-trace", "chg-trace"):
        env.sink.messages.clear()
        check_reply(send_case(env, case, extra="Received: from old.example by mx.old\r\n"), 250, what=case)
        msg = relayed(env, case)
        assert msg.received is not None and b"(postern)" in msg.received, f"{case}: {msg.content[:300]!r}"
        assert_well_formed_head(msg.content, case)


# ---- quarantine, discard, logs, audit, metrics


def test_quarantine_reason_is_one_folded_field(env):
    check_reply(send_case(env, "quarantine-crlf"), 250)
    wait_until(lambda: (env.qdir / "new").is_dir() and list((env.qdir / "new").iterdir()), 10,
               message="the quarantined file")
    data = list((env.qdir / "new").iterdir())[0].read_bytes().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
    head, body = header_block(data)
    assert b"x-forged" not in field_names(head)
    assert body.startswith(b"body line")
    assert all(len(l) <= 998 for l in head.split(b"\r\n"))
    assert env.sink.messages == []


def test_discard_reason_and_note_and_symbols_stay_bounded_in_the_audit_log(env):
    for case in ("discard-crlf", "note-crlf", "symbol-desc"):
        r = send_case(env, case)
        assert r.code == 250, f"{case}: {r}"

    def records():
        if not env.audit.exists():
            return []
        return [json.loads(l) for l in env.audit.read_text().splitlines() if l.strip()]
    wait_until(lambda: len(records()) >= 3, 15, message="the audit records")
    for line in env.audit.read_text().splitlines():
        json.loads(line)  # every line one JSON object
        assert len(line) < 64 * 1024, len(line)


def test_log_lines_from_rules_cannot_forge_lines(env):
    check_reply(send_case(env, "log-crlf"), 250)
    env.p.wait_for_log("lua", timeout=10)
    for l in env.p.events("lua"):
        text = l.get("line", "")
        assert "\n" not in text and "\r" not in text and "\x1b" not in text, text
    with env.p._cond:
        lines = list(env.p.lines)
    assert not [l for l in lines if l.startswith(("1970-01-01", "forged", "p\r", "t\n"))], lines[-20:]
    assert any("lua-print p??forged" in l for l in lines), lines[-20:]


def test_many_symbols_at_eom_end_in_on_error(env):
    reply = send_case(env, "symbol-many")
    check_reply(reply, 451, "4.7.0")
    assert env.sink.took_no_content(), env.sink.messages


def test_symbols_invented_before_mail_stay_bounded_in_every_message(env):
    """A rule at helo that adds symbols until its budget ends (on_error =
    continue): each message of the session carries them in X-Spam-Status
    and the audit log; their number is capped, so the field stays small."""
    content = b"From: a@example.org\r\nSubject: s\r\n\r\nbody line\r\n"
    with SmtpClient(env.p.port, timeout=TIMEOUT + 60) as c:
        check_reply(c.cmd("EHLO many-symbols.example", timeout=TIMEOUT + 60), 250)
        for _ in range(2):
            check_reply(c.send_message("a@example.org", ["b@example.com"], content), 250)
    wait_until(lambda: len(env.sink.messages) == 2, 10, message="both messages at the sink")
    for msg in env.sink.messages:
        head, body = header_block(msg.content)
        assert body == b"body line\r\n"
        status = re.search(rb"(?im)^X-Spam-Status:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head)
        assert status, head[:500]
        assert b"symbols=" in status.group(1), status.group(0)[:300]
        names = re.sub(rb"\s", b"", status.group(1)).split(b"symbols=", 1)[1].split(b",")
        assert 1 <= len(names) <= 256, f"{len(names)} symbols in X-Spam-Status"
        assert len(head) < 32 * 1024, f"a header section of {len(head)} octets"


# ---- state leaking to other scripts and later messages (last: a leak would
# change what every later test of this module's postern sees)


LEAKS = ["leak-G", "leak-G-new", "leak-G-string", "leak-string", "leak-string-rawset", "leak-table",
         "leak-math", "leak-postern", "leak-postern-rawset", "leak-dns", "leak-util", "leak-os", "leak-utf8",
         "leak-store", "leak-settings", "leak-settings-deep", "leak-settings-rawset", "leak-setmeta",
         "leak-next", "leak-pairs", "leak-pairs-deep", "leak-env-meta", "leak-address-meta",
         "leak-address-meta2", "leak-verdict-meta", "leak-regex-meta"]


@pytest.mark.parametrize("case", LEAKS)
def test_a_rule_run_cannot_change_what_other_scripts_and_messages_see(env, case):
    reply = rcpt_reply(env, case)
    # Whatever the attempt answered (an error, or nothing), the other script
    # still refuses what it refuses, and sees the libraries it was given.
    assert reply.code in (250, 451), f"{case}: {reply}"
    for blocked in ("blocked", "blocked2", "blocked3"):
        check_reply(rcpt_reply(env, blocked), 550, "5.7.1", f"after {case}: {blocked}")
    probe = rcpt_reply(env, "probe")
    check_reply(probe, 550, "5.7.1", f"after {case}")
    assert "probe clean" in probe.text, f"after {case}: {probe}"


def test_a_global_created_inside_a_rule_does_not_outlive_the_call(env):
    """A forgotten `local` in a rule: refused as the rule's error, so the
    value never reaches the next message (or session)."""
    check_reply(rcpt_reply(env, "global-set"), 451, "4.7.0")
    check_reply(rcpt_reply(env, "global-read"), 250)
    assert any("undeclared global 'trusted_by_leak'" in l.get("line", "") for l in env.p.events("lua"))


def test_metrics_page_stays_parseable_after_the_attacks(env):
    scrape(env.metrics_port)  # Exposition checks every line
