-- Greylisting (RFC 6647): the first delivery attempt of an unknown
-- (client network, sender, recipient) triplet gets 451 4.7.1; a retry after
-- `delay` seconds and within `retry_window` passes, and the triplet then
-- passes at once for `pass_ttl` seconds. Authenticated clients, and clients
-- with a DNSBL-clean reverse name in `skip_names`, are not greylisted.
--
--   [lua.settings.greylist]
--   delay = 300            # seconds before a retry is accepted
--   retry_window = 86400   # seconds a first attempt is remembered
--   pass_ttl = 3110400     # 36 days
--   skip_names = ["google.com", "outlook.com"]   # reverse-name suffixes

local s = postern.settings.greylist or {}
local delay = s.delay or 300
local retry_window = s.retry_window or 86400
local pass_ttl = s.pass_ttl or 3110400
local skip_names = s.skip_names or {}

-- Retries may come from another address of the same pool: key on the /24
-- (IPv4) or /64 (IPv6).
local function network(ip)
  local v4 = ip:match("^(%d+%.%d+%.%d+)%.%d+$")
  if v4 then return v4 end
  local groups = {}
  for g in (ip .. ":"):gmatch("([^:]*):") do groups[#groups + 1] = g end
  return table.concat(groups, ":", 1, math.min(4, #groups))
end

local function skipped(name)
  name = name:lower()
  for _, suffix in ipairs(skip_names) do
    if name == suffix or name:sub(-#suffix - 1) == "." .. suffix then return true end
  end
  return false
end

postern.rule{
  name = "GREYLIST",
  stage = "rcpt",
  description = "first attempt of an unknown triplet",
  on_error = "continue",
  fn = function(ctx)
    local c, e = ctx.client, ctx.envelope
    if c.auth_user ~= "" or (c.name ~= "" and skipped(c.name)) then return end
    local key = "grey:" .. network(c.ip) .. "|" .. tostring(e.from):lower() .. "|" .. tostring(e.rcpt):lower()
    if postern.store.get(key .. "|ok") then return end
    local now = os.time()
    -- add, not get-then-set: with a shared store (Redis) two postern
    -- instances seeing the first attempt at once record it once.
    if postern.store.add(key, now, retry_window) then
      return postern.tempfail(451, "4.7.1", "Greylisted, please try again later")
    end
    local first = tonumber(postern.store.get(key))
    if not first or now - first < delay then
      return postern.tempfail(451, "4.7.1", "Greylisted, please try again later")
    end
    postern.store.set(key .. "|ok", now, pass_ttl)
  end,
}
