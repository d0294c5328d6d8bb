-- Rules for test_milter_server.py: the Subject (or a recipient's local
-- part, or the HELO name) picks what postern decides when it runs as
-- Postfix's milter.
postern.rule{
  name = "HELO_REFUSED",
  stage = "helo",
  fn = function(ctx)
    if ctx.client.helo == "refused.example" then return postern.reject(554, "5.7.1", "HELO refused by postern") end
  end,
}

postern.rule{
  name = "RCPT_CHECK",
  stage = "rcpt",
  fn = function(ctx)
    local l = ctx.envelope.rcpt.local_part
    if l == "nobody" then return postern.reject(550, "5.1.1", "No such user here (postern)") end
    if l == "later" then return postern.tempfail(450, "4.2.1", "Mailbox busy, try later (postern)") end
  end,
}

postern.rule{
  name = "BY_SUBJECT",
  stage = "eom",
  fn = function(ctx)
    local s = ctx.headers:first("Subject") or ""
    if s == "reject me" then return postern.reject(554, "5.7.1", "Message refused by postern rule") end
    if s == "tempfail me" then return postern.tempfail(451, "4.7.1", "Try again later, says postern") end
    if s == "discard me" then return postern.discard("test discard") end
    if s == "quarantine me" then return postern.quarantine("test quarantine") end
    if s == "tag me" then ctx:tag_subject("[SPAM]") end
    if s == "headers" then
      ctx:add_header("X-Postern-Added", "yes")
      ctx:prepend_header("X-Postern-Top", "first")
      ctx:change_header("X-Mailer", "hidden")
      ctx:remove_header("X-Remove-Me")
    end
    if s == "redirect me" then ctx:redirect({ "abuse-desk@example.net" }) end
    if s == "add rcpt" then ctx:add_rcpt("copy@example.net") end
    if s == "remove rcpt" then ctx:remove_rcpt("second@example.net") end
    if s == "new sender" then ctx:set_sender("bounces@example.com") end
    local tls = ctx.client.tls
    ctx:add_header("X-Postern-Client", string.format("ip=%s helo=%s name=%s tls=%s auth=%s id=%s listener=%s",
      ctx.client.ip, ctx.client.helo, ctx.client.name ~= "" and ctx.client.name or "-",
      tls.active and tls.version or "-", ctx.client.auth_user ~= "" and ctx.client.auth_user or "-",
      ctx.envelope.id, ctx.client.listener))
  end,
}
