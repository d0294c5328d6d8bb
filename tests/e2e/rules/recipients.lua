-- Rules test_attack_recipients.py runs: hostile and careless recipient
-- changes at end of data, keyed by the X-Test-Case header, and a bounce rule.
postern.rule{ name = "NO_BOUNCES_TO_NOREPLY", stage = "rcpt", fn = function(ctx)
  if ctx.envelope.from.addr == "" and ctx.envelope.rcpt.local_part == "noreply" then
    return postern.reject(550, "5.1.1", "This address does not receive mail")
  end
  if ctx.envelope.rcpt.local_part == "trap" then return postern.discard("spam trap") end
  if ctx.envelope.rcpt.local_part == "boom" then error("rcpt rule broke") end
  if ctx.envelope.rcpt.local_part == "bye" then return postern.disconnect("go away") end
end }

postern.rule{ name = "RECIPIENT_CHANGES", stage = "eom", fn = function(ctx)
  local case = ctx.headers:first("X-Test-Case") or ""
  if case == "redirect-crlf" then ctx:redirect("a@example.net>\r\nRCPT TO:<evil@example.net") end
  if case == "redirect-space" then ctx:redirect({"ok@example.net", "a b@example.net"}) end
  if case == "redirect-angle" then ctx:redirect("<a@example.net> NOTIFY=NEVER") end
  if case == "redirect-nul" then ctx:redirect("evil@example.net\0x") end
  if case == "redirect-empty" then ctx:redirect({}) end
  if case == "redirect-many" or case == "redirect-too-many" then
    local n = case == "redirect-many" and 1000 or 1001
    local to = {}
    for i = 1, n do to[i] = "m" .. i .. "@example.net" end
    ctx:redirect(to)
  end
  if case == "redirect-dup" then ctx:redirect({"d@example.net", "d@example.net"}) end
  if case == "redirect-then-reject" then
    ctx:redirect("archive@example.net")
    return postern.reject("5.7.1", "refused after all")
  end
  if case == "redirect-then-discard" then
    ctx:redirect("archive@example.net")
    return postern.discard("dropped after all")
  end
  if case == "add-existing" then ctx:add_rcpt(ctx.envelope.rcpts[1].addr) end
  if case == "remove-all" then
    for _, r in ipairs(ctx.envelope.rcpts) do ctx:remove_rcpt(r.addr) end
  end
  if case == "rule-error" then
    ctx:add_header("X-Half", "done")
    error("boom")
  end
end }
