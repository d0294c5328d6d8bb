-- Scores senders whose domain cannot receive mail: no MX and no A record.
-- The DNS lookups yield: other sessions run while this rule waits.
postern.rule{
  name = "SENDER_DOMAIN_NO_MX",
  stage = "mail",
  score = 3,
  on_error = "continue",
  fn = function(ctx)
    local domain = ctx.envelope.from.domain
    if domain == "" then return end            -- bounce
    local mx, status = postern.dns.mx(domain)
    if mx and #mx > 0 then return end
    if status == "servfail" or status == "timeout" then return end
    if postern.dns.a(domain) then return end     -- RFC 5321 §5.1 implicit MX
    return true                                  -- adds the symbol with score 3
  end,
}
