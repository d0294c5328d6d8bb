-- Executable attachments: refuses (554 5.7.1) or scores messages carrying
-- files Windows would run, including double extensions ("invoice.pdf.exe"),
-- also when uuencoded or yEnc-encoded in a plain-text body, inside a TNEF
-- winmail.dat, inside a ZIP, RAR, 7z, cabinet or tar archive (plain or
-- compressed with gzip, bzip2, xz or zstd), or compressed whole
-- ("setup.exe.gz"), and inside an archive in one of those, four deep:
-- Windows opens all of these and runs files from them. An archive inside an
-- archive that postern cannot open (encrypted, or inside a RAR, 7z or
-- cabinet archive, whose data it does not decompress) is treated as if it
-- held one.
-- A message whose MIME structure postern cannot read whole (more than 1000
-- parts, nested deeper than 16, a part with two different Content-Type or
-- Content-Disposition fields, encrypted archive file names, a decompression
-- bomb) could hide one, and is treated as if it held one.
-- When the check itself fails (lua.memory_limit reached while listing ten
-- thousand archived files), a rule that rejects defers the message (451
-- 4.7.0) rather than let it through unchecked: the sender retries, as with
-- clamav-milter's OnFail Defer. One that only scores lets it through.
--
--   [lua.settings.attachments]
--   action = "reject"          # or "score"
--   on_error = "tempfail"      # default: "tempfail" with action "reject", else "continue"
--   score = 10
--   extensions = ["exe", ...]  # replaces the list below

local s = postern.settings.attachments or {}
local list = s.extensions or { "exe", "scr", "com", "pif", "bat", "cmd", "cpl", "msi", "msp", "js", "jse",
  "vbs", "vbe", "wsf", "wsh", "hta", "ps1", "jar", "lnk", "reg", "iso", "img", "vhd", "appx", "msix" }
local executable = {}
for _, ext in ipairs(list) do executable[ext:lower()] = true end

postern.rule{
  name = "EXECUTABLE_ATTACHMENT",
  stage = "eom",
  score = s.score or 10,
  description = "executable file attached",
  on_error = s.on_error or ((s.action or "reject") == "reject" and "tempfail" or "continue"),
  fn = function(ctx)
    local reject = (s.action or "reject") == "reject"
    local ok, attachments = pcall(ctx.body.attachments, ctx.body)
    if not ok then
      ctx:symbol("EXECUTABLE_ATTACHMENT", nil, tostring(attachments))
      if reject then
        return postern.reject(554, "5.7.1", "Message structure too complex to check for executable attachments")
      end
      return
    end
    for _, a in ipairs(attachments) do
      -- An archive inside an archive that postern could not open (encrypted,
      -- or inside a RAR, 7z or cabinet archive) could hide one.
      if a.unopened then
        ctx:symbol("EXECUTABLE_ATTACHMENT", nil, "archive " .. a.filename .. " in " .. a.archive .. " not opened")
        if reject then
          return postern.reject(554, "5.7.1", "Archive inside an archive could not be checked for executable attachments")
        end
        return
      end
      -- Every name the part goes by: readers differ on filename= and name=.
      for _, filename in ipairs(a.names) do
        local name = filename:lower():gsub("[%s%.]+$", "")
        local ext = name:match("%.([%w]+)$")
        if ext and executable[ext] then
          ctx:symbol("EXECUTABLE_ATTACHMENT", nil, "attachment " .. filename .. (a.archive and " in " .. a.archive or ""))
          if reject then
            return postern.reject(554, "5.7.1", "Executable attachments are not accepted (" .. ext .. ")")
          end
          return
        end
      end
    end
  end,
}
