-- Scores messages whose text mentions listed phrases, and records which.
local phrases = { "wire transfer urgently", "verify your account", "gift card" }

postern.rule{
  name = "BODY_PHRASES",
  stage = "eom",
  score = 2,
  fn = function(ctx)
    for _, part in ipairs(ctx.body:text_parts()) do
      local text = part.text:lower()
      for _, phrase in ipairs(phrases) do
        if text:find(phrase, 1, true) then
          ctx.notes.phrase = phrase
          return true
        end
      end
    end
  end,
}
