-- Per-client rate limit: at most `messages` transactions per `window`
-- seconds from one client address (or one authenticated user); past it,
-- 451 4.7.1 at MAIL FROM. Counters live in postern.store, so with a shared
-- store (Redis) the limit holds across instances.
--
--   [lua.settings.ratelimit]
--   messages = 200
--   window = 3600

local s = postern.settings.ratelimit or {}
local limit = s.messages or 200
local window = s.window or 3600

postern.rule{
  name = "RATELIMIT",
  stage = "mail",
  description = "too many messages from one client",
  on_error = "continue",
  fn = function(ctx)
    local c = ctx.client
    local who = c.auth_user ~= "" and ("user:" .. c.auth_user) or ("ip:" .. c.ip)
    -- One bucket per window: the counter expires with it.
    local bucket = math.floor(os.time() / window)
    local n = postern.store.incr("rate:" .. who .. ":" .. bucket, 1, window)
    if n > limit then
      ctx:symbol("RATELIMIT", 0, "over " .. limit .. " messages in " .. window .. "s")
      return postern.tempfail(451, "4.7.1", "Too many messages, slow down and try again later")
    end
  end,
}
