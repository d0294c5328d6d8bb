-- From / envelope mismatch: scores a message whose From: header domain
-- differs from the envelope sender's domain (compared by their last two
-- labels, a cheap stand-in for the organizational domain), a missing From:,
-- or several From: fields (RFC 5322 §3.6 allows one).
--   FROM_ENVELOPE_MISMATCH, FROM_MISSING, FROM_MULTIPLE
-- Bounces (null reverse-path) are not compared.

local s = postern.settings.from_mismatch or {}

local function base_domain(domain)
  domain = domain:lower():gsub("%.$", "")
  return domain:match("([^.]+%.[^.]+)$") or domain
end

local function header_domain(from)
  local addr = from:match("<([^>]*)>") or from
  return addr:match("@([%w%.%-]+)%s*$")
end

postern.rule{
  name = "FROM_CHECKS",
  stage = "data",
  description = "From: header sanity and envelope alignment",
  on_error = "continue",
  fn = function(ctx)
    local count = ctx.headers:count("From")
    if count == 0 then
      ctx:symbol("FROM_MISSING", s.missing or 2, "no From: header")
      return
    end
    if count > 1 then ctx:symbol("FROM_MULTIPLE", s.multiple or 3, "several From: headers") end
    local sender = ctx.envelope.from
    if not sender or sender.domain == "" then return end
    local hdom = header_domain(ctx.headers:first("From"))
    if hdom and base_domain(hdom) ~= base_domain(sender.domain) then
      ctx:symbol("FROM_ENVELOPE_MISMATCH", s.mismatch or 1, "From: " .. hdom .. ", envelope " .. sender.domain)
    end
  end,
}
