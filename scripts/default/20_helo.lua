-- HELO sanity: scores HELO/EHLO names that real mail servers do not send
-- (RFC 5321 §4.1.1.1 asks for the client's FQDN or an address literal).
--   HELO_BARE_IP      an IP address without brackets
--   HELO_NOT_FQDN     a name without a dot
--   HELO_LOCALHOST    "localhost" or a loopback literal from a remote client
--   HELO_IP_MISMATCH  an address literal that is not the client's address
-- Scores can be changed in [lua.settings.helo] (e.g. bare_ip = 3).
-- Authenticated clients (submission) are not scored.

local s = postern.settings.helo or {}

local function bracketed_ip(helo)
  return helo:match("^%[IPv6:([%x:%.]+)%]$") or helo:match("^%[(%d+%.%d+%.%d+%.%d+)%]$")
end

postern.rule{
  name = "HELO_SANITY",
  stage = "helo",
  description = "HELO/EHLO name checks",
  on_error = "continue",
  fn = function(ctx)
    local c = ctx.client
    if c.auth_user ~= "" then return end
    local helo = c.helo
    if helo:match("^%d+%.%d+%.%d+%.%d+$") or (helo:find(":", 1, true) and not helo:find("[", 1, true)) then
      ctx:symbol("HELO_BARE_IP", s.bare_ip or 1.5, "HELO is an IP address without brackets")
      return
    end
    local literal = bracketed_ip(helo)
    local remote = not c.ip:match("^127%.") and c.ip ~= "::1"
    if (helo:lower() == "localhost" or helo:lower():match("^localhost%.") or literal == "127.0.0.1") and remote then
      ctx:symbol("HELO_LOCALHOST", s.localhost or 3, "remote client says it is localhost")
    elseif literal then
      if literal:lower() ~= c.ip:lower() then
        ctx:symbol("HELO_IP_MISMATCH", s.ip_mismatch or 2, "address literal is not the client's address")
      end
    elseif not helo:find(".", 1, true) then
      ctx:symbol("HELO_NOT_FQDN", s.not_fqdn or 1, "HELO name is not a fully qualified domain name")
    end
  end,
}
