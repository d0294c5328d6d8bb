-- Refuses mail from a list of sender domains at MAIL FROM.
local blocked = { ["spam.example"] = true, ["phish.example"] = true }

postern.rule{
  name = "BLOCKED_SENDER_DOMAIN",
  stage = "mail",
  fn = function(ctx)
    if blocked[ctx.envelope.from.domain:lower()] then
      return postern.reject(550, "5.7.1", "Sender domain not accepted here")
    end
  end,
}
