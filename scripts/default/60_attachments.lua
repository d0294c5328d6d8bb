-- Executable attachments: refuses (554 5.7.1) or scores messages carrying
-- files Windows would run, including double extensions ("invoice.pdf.exe").
--
--   [lua.settings.attachments]
--   action = "reject"          # or "score"
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
  on_error = "continue",
  fn = function(ctx)
    for _, a in ipairs(ctx.body:attachments()) do
      local name = a.filename:lower():gsub("[%s%.]+$", "")
      local ext = name:match("%.([%w]+)$")
      if ext and executable[ext] then
        ctx:symbol("EXECUTABLE_ATTACHMENT", nil, "attachment " .. a.filename)
        if (s.action or "reject") == "reject" then
          return postern.reject(554, "5.7.1", "Executable attachments are not accepted (" .. ext .. ")")
        end
        return
      end
    end
  end,
}
