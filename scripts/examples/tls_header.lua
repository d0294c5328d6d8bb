-- Adds a header telling the mailbox owner whether the message came in
-- over TLS, and quarantines unencrypted mail for the finance department.
postern.rule{
  name = "TLS_INFO",
  stage = "eom",
  fn = function(ctx)
    local tls = ctx.client.tls
    ctx:add_header("X-Postern-TLS", tls.active and (tls.version .. " " .. tls.cipher) or "none")
    if not tls.active then
      for _, r in ipairs(ctx.envelope.rcpts) do
        if r.domain:lower() == "finance.example.com" then
          return postern.quarantine("unencrypted mail to finance")
        end
      end
    end
  end,
}
