-- The sender domain's DMARC policy, applied by a rule: a message that fails
-- DMARC for a domain publishing p=reject scores DMARC_POLICY_REJECT (or is
-- refused with 550 5.7.1 when [lua.settings] dmarc_policy.reject = true);
-- p=quarantine scores DMARC_POLICY_QUARANTINE. p=none is only reported.
-- Reads ctx.dmarc, which the built-in DMARC check fills at end of message
-- ([dmarc] enabled); without it the rule does nothing.
--   [lua.settings]
--   dmarc_policy = { reject = false, reject_score = 6, quarantine_score = 3 }

local s = postern.settings.dmarc_policy or {}

postern.rule{
  name = "DMARC_POLICY",
  stage = "eom",
  description = "the From: domain's DMARC policy for a failing message",
  on_error = "continue",
  fn = function(ctx)
    local d = ctx.dmarc
    if not d or d.result ~= "fail" then return end
    if d.policy == "reject" then
      if s.reject then
        return postern.reject(550, "5.7.1", "DMARC policy of " .. d.from_domain .. " rejects this message")
      end
      ctx:symbol("DMARC_POLICY_REJECT", s.reject_score or 6, "DMARC fail, " .. d.from_domain .. " p=reject")
    elseif d.policy == "quarantine" then
      ctx:symbol("DMARC_POLICY_QUARANTINE", s.quarantine_score or 3, "DMARC fail, " .. d.from_domain .. " p=quarantine")
    end
  end,
}
