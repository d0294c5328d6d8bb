-- DNSBL on connect: looks the client address up in DNS blocklists and
-- rejects (554 5.7.1) or scores it. Zones come from [lua.settings.dnsbl]:
--
--   [lua.settings.dnsbl]
--   zones = [ { zone = "zen.spamhaus.org", score = 10, reject = true } ]
--
-- Private, loopback and link-local clients are never looked up. Answers
-- outside 127.0.0.0/8, and 127.255.255.x (Spamhaus' "query refused" codes),
-- are ignored.

local settings = postern.settings.dnsbl or {}
local zones = settings.zones or { { zone = "zen.spamhaus.org", score = 10, reject = true } }

local function is_private(ip)
  return ip:match("^10%.") or ip:match("^127%.") or ip:match("^192%.168%.") or ip:match("^169%.254%.")
      or ip:match("^172%.1[6-9]%.") or ip:match("^172%.2%d%.") or ip:match("^172%.3[01]%.")
      or ip == "::1" or ip:match("^[fF][cdCD]") or ip:match("^[fF][eE]80:")
end

local function symbol_for(entry)
  return entry.symbol or ("RBL_" .. entry.zone:upper():gsub("[^%w]", "_"))
end

postern.rule{
  name = "DNSBL",
  stage = "connect",
  description = "client address listed in a DNS blocklist",
  on_error = "continue",
  fn = function(ctx)
    local ip = ctx.client.ip
    if ip == "" or is_private(ip) then return end
    for _, entry in ipairs(zones) do
      local codes, err = postern.dns.dnsbl(entry.zone, ip)
      if not codes then
        postern.log("warning", "dnsbl " .. entry.zone .. " lookup failed: " .. tostring(err))
      else
        local listed = {}
        for _, code in ipairs(codes) do
          if code:match("^127%.") and not code:match("^127%.255%.255%.") then listed[#listed + 1] = code end
        end
        if #listed > 0 then
          ctx:symbol(symbol_for(entry), entry.score or 5, entry.zone .. " " .. table.concat(listed, ","))
          if entry.reject then
            return postern.reject(554, "5.7.1", "Service unavailable; client [" .. ip .. "] blocked using " .. entry.zone)
          end
        end
      end
    end
  end,
}
