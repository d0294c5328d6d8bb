-- Refuses phishing that asks the reader to "verify your account".
postern.rule{
  name = "VERIFY_ACCOUNT",
  stage = "data",            -- the header is complete; the body is not needed
  score = 3,
  description = "Subject asks to verify an account",
  on_error = "continue",     -- if this rule breaks, let the mail through
  fn = function(ctx)
    if ctx.client.auth_user ~= "" then return end       -- our own users
    local subject = (ctx.headers:first("Subject") or ""):lower()
    if subject:find("verify your account", 1, true) then
      return postern.reject(550, "5.7.1", "Message refused as phishing")
    end
  end,
}
