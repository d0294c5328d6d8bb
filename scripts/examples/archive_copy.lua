-- Sends a copy of every message for sales@ to the archive mailbox
-- (a bcc: the recipient is added to the envelope only).
postern.rule{
  name = "ARCHIVE_SALES",
  stage = "rcpt",
  fn = function(ctx)
    if ctx.envelope.rcpt.addr:lower() == "sales@example.com" then
      ctx:add_rcpt("archive@example.com")
    end
  end,
}
