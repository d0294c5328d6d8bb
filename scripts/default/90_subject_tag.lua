-- Subject tagging on score: when the message's score (every symbol added so
-- far, by any filter before the Lua rules and by the rules above) reaches
-- `threshold`, prefix the Subject with `tag`. Runs last (file name order).
--
--   [lua.settings.subject_tag]
--   threshold = 5
--   tag = "[SPAM]"

local s = postern.settings.subject_tag or {}
local threshold = s.threshold or 5
local tag = s.tag or "[SPAM]"

postern.rule{
  name = "SUBJECT_TAG",
  stage = "eom",
  description = "tag the Subject of likely spam",
  on_error = "continue",
  fn = function(ctx)
    if ctx.score >= threshold then ctx:tag_subject(tag) end
  end,
}
