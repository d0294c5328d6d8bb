-- miltertest(8) script for test_milter_server.py: the MTA side of
-- libmilter's own test tool drives postern's milter server
-- (POSTERN_MILTER = "inet:PORT@127.0.0.1") through tests/e2e/rules/milter_server.lua:
-- reject, tempfail, header changes, recipient changes and a DKIM signature.
local where = os.getenv("POSTERN_MILTER")

local function check(ok, what)
  if not ok then
    mt.echo("FAILED: " .. what)  -- miltertest prints no error() text
    error("FAILED: " .. what)
  end
end

-- One message; returns the connection after SMFIC_BODYEOB.
local function message(subject, from, rcpts, helo)
  local conn = mt.connect(where, 5, 0.2)
  check(conn ~= nil, "connect")
  check(mt.conninfo(conn, "client.example", "127.0.0.1") == nil, "conninfo")
  check(mt.getreply(conn) == SMFIR_CONTINUE, "connect reply")
  check(mt.helo(conn, helo or "client.example") == nil, "helo")
  check(mt.getreply(conn) == SMFIR_CONTINUE, "helo reply")
  mt.macro(conn, SMFIC_MAIL, "i", "QID" .. subject:gsub("%W", ""))
  check(mt.mailfrom(conn, "<" .. from .. ">") == nil, "mail")
  check(mt.getreply(conn) == SMFIR_CONTINUE, "mail reply")
  for _, r in ipairs(rcpts) do
    check(mt.rcptto(conn, "<" .. r .. ">") == nil, "rcpt")
    check(mt.getreply(conn) == SMFIR_CONTINUE, "rcpt reply")
  end
  mt.header(conn, "From", "Alice <" .. from .. ">")
  mt.header(conn, "To", "<" .. rcpts[1] .. ">")
  mt.header(conn, "Subject", subject)
  mt.header(conn, "Date", "Sun, 06 Dec 2026 06:00:00 +0000")
  mt.header(conn, "Message-ID", "<" .. subject:gsub("%W", ".") .. "@miltertest>")
  mt.header(conn, "X-Mailer", "foo")
  mt.header(conn, "X-Remove-Me", "1")
  check(mt.eoh(conn) == nil, "eoh")
  check(mt.bodystring(conn, "First line.\r\n  indented \r\n") == nil, "body")
  check(mt.eom(conn) == nil, "eom")
  return conn
end

-- reject
local conn = message("reject me", "a@example.net", { "b@example.net" })
check(mt.getreply(conn) == SMFIR_REPLYCODE, "reject is a reply code")
check(mt.eom_check(conn, MT_SMTPREPLY, "554", "5.7.1", "Message refused by postern rule"), "reject text")
mt.disconnect(conn)

-- tempfail
conn = message("tempfail me", "a@example.net", { "b@example.net" })
check(mt.getreply(conn) == SMFIR_REPLYCODE, "tempfail is a reply code")
check(mt.eom_check(conn, MT_SMTPREPLY, "451", "4.7.1", "Try again later, says postern"), "tempfail code and text")
mt.disconnect(conn)

-- header changes and the subject tag; values keep their leading space
-- (SMFIP_HDR_LEADSPC, which miltertest offers and postern takes)
conn = message("headers", "a@example.net", { "b@example.net" })
check(mt.getreply(conn) == SMFIR_ACCEPT, "headers accepted")
check(mt.eom_check(conn, MT_HDRADD, "X-Postern-Added", " yes"), "added field")
check(mt.eom_check(conn, MT_HDRINSERT, "X-Postern-Top", " first"), "inserted field")
check(mt.eom_check(conn, MT_HDRINSERT, "Authentication-Results"), "Authentication-Results inserted")
check(mt.eom_check(conn, MT_HDRCHANGE, "X-Mailer", " hidden"), "changed field")
check(mt.eom_check(conn, MT_HDRDELETE, "X-Remove-Me"), "deleted field")
mt.disconnect(conn)
conn = message("tag me", "a@example.net", { "b@example.net" })
check(mt.eom_check(conn, MT_HDRCHANGE, "Subject", " [SPAM] tag me"), "subject tag")
mt.disconnect(conn)

-- recipient changes
conn = message("redirect me", "a@example.net", { "b@example.net", "second@example.net" })
check(mt.getreply(conn) == SMFIR_ACCEPT, "redirect accepted")
check(mt.eom_check(conn, MT_RCPTDELETE, "<b@example.net>"), "first recipient removed")
check(mt.eom_check(conn, MT_RCPTDELETE, "<second@example.net>"), "second recipient removed")
check(mt.eom_check(conn, MT_RCPTADD, "<abuse-desk@example.net>"), "redirect target added")
mt.disconnect(conn)
conn = message("add rcpt", "a@example.net", { "b@example.net" })
check(mt.eom_check(conn, MT_RCPTADD, "<copy@example.net>"), "bcc added")
mt.disconnect(conn)

-- postern signs mail from 127.0.0.0/8 for signed.example
conn = message("sign me", "alice@signed.example", { "b@example.net" })
check(mt.getreply(conn) == SMFIR_ACCEPT, "signed accepted")
check(mt.eom_check(conn, MT_HDRINSERT, "DKIM-Signature"), "signature inserted")
local sig = mt.getheader(conn, "DKIM-Signature", 0)
check(sig ~= nil and sig:find("d=signed.example", 1, true) ~= nil and sig:find("s=pm1", 1, true) ~= nil,
      "signature tags: " .. tostring(sig))
mt.disconnect(conn)

mt.echo("all checks passed")
