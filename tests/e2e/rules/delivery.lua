-- Rules test_attack_delivery.py runs: a quarantine or discard verdict after
-- envelope changes, and verdicts at RCPT that hold the whole message; keyed
-- by the X-Test-Case header and the recipient's local part.
postern.rule{ name = "RCPT_VERDICTS", stage = "rcpt", fn = function(ctx)
  local rcpt = ctx.envelope.rcpt.local_part
  if rcpt == "blocked" then return postern.reject("5.7.1", "recipient blocked by policy") end
  if rcpt == "trap" then return postern.discard("spam trap") end
  if rcpt == "hold" then return postern.quarantine("held recipient") end
end }

postern.rule{ name = "ENVELOPE_THEN_VERDICT", stage = "eom", fn = function(ctx)
  local case = ctx.headers:first("X-Test-Case") or ""
  if case:find("add", 1, true) then ctx:add_rcpt("bcc@example.net") end
  if case:find("remove", 1, true) then ctx:remove_rcpt("r2@example.com") end
  if case:find("redirect", 1, true) then ctx:redirect({"archive@example.net", "archive2@example.net"}) end
  if case:find("sender", 1, true) then ctx:set_sender("bounces@example.org") end
  if case:find("quarantine", 1, true) then return postern.quarantine("after changes") end
end }

-- What the end of data says after a discard or quarantine at RCPT.
postern.rule{ name = "EOM_AFTER_RCPT_VERDICT", stage = "eom", fn = function(ctx)
  local case = ctx.headers:first("X-Test-Case") or ""
  if case == "eom-accept" then return postern.accept() end
  if case == "eom-reject" then return postern.reject("5.7.1", "refused at end of data") end
  if case == "eom-tempfail" then return postern.tempfail("4.7.1", "try again later") end
  if case == "eom-discard" then return postern.discard("discarded at end of data") end
  if case == "eom-quarantine" then return postern.quarantine("quarantined at end of data") end
end }
