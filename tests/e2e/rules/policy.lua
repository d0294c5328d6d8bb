-- Rules the filter end-to-end tests run through the proxy: one per verdict
-- and change, keyed by recipient or header so each test picks its case.
postern.rule{ name = "BLOCKED_RCPT", stage = "rcpt", fn = function(ctx)
  if ctx.envelope.rcpt.local_part == "blocked" then
    return postern.reject("5.7.1", "recipient blocked by policy")
  end
end }

postern.rule{ name = "EOM_POLICY", stage = "eom", fn = function(ctx)
  local case = ctx.headers:first("X-Test-Case") or ""
  if case == "reject" then return postern.reject("5.7.1", "content refused") end
  if case == "tempfail" then return postern.tempfail("4.7.1", "try later") end
  if case == "discard" then return postern.discard() end
  if case == "quarantine" then return postern.quarantine("test case") end
  if case == "tag" then
    ctx:tag_subject("[SPAM]")
    ctx:add_header("X-Postern-Test", "tagged")
    ctx:remove_header("X-Remove-Me")
    ctx:symbol("TEST_SPAMMY", 6)
  end
  if case == "redirect" then ctx:redirect({"archive@example.net"}) end
  if case == "envelope" then
    ctx:add_rcpt("copy@example.net")
    ctx:remove_rcpt("c@example.com")
    ctx:set_sender("bounces@example.org")
  end
end }
