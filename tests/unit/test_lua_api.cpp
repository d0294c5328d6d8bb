// The rule API: every verdict, every change recorded in the transaction's
// Changes, symbols and scores, notes, headers and body access, the store,
// and a rule that yields (postern.sleep) while another runs.
#include <catch2/catch.hpp>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>

#include "filters/auth/auth_results.h"
#include "filters/filter_chain.h"
#include "test_lua_util.h"

using postern::HeaderEdit;
using postern::Mailbox;
using postern::Stage;
using postern::Verdict;
using postern::test::LuaHarness;

namespace {
std::string rule(const std::string& stage, const std::string& body, const std::string& extra = "") {
  return "postern.rule{name='R', stage='" + stage + "', score=2.5, description='test rule'" + extra +
         ", fn=function(ctx)\n" + body + "\nend}\n";
}

constexpr const char* kMessage =
    "From: =?UTF-8?B?SsO8cmdlbg==?= <j@example.org>\r\n"
    "To: a@example.com\r\n"
    "Subject: =?iso-8859-1?Q?Gr=FC=DFe?= aus\r\n"
    " Berlin\r\n"
    "Received: one\r\n"
    "Received: two\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
    "\r\n"
    "preamble\r\n"
    "--b1\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Hallo =C3=BCber soft=\r\n"
    "break\r\n"
    "--b1\r\n"
    "Content-Type: application/octet-stream; name=\"invoice.exe\"\r\n"
    "Content-Disposition: attachment; filename=\"invoice.exe\"\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "TVqQAAMAAAAEAAAA\r\n"
    "--b1--\r\n";
}  // namespace

TEST_CASE("lua api: every verdict", "[lua]") {
  struct Case {
    const char* expr;
    Verdict::Action action;
    int code;
    const char* enhanced;
    const char* text;
  } cases[] = {
      {"postern.accept()", Verdict::Action::kAccept, 0, "", ""},
      {"postern.reject()", Verdict::Action::kReject, 0, "", ""},
      {"postern.reject('go away')", Verdict::Action::kReject, 0, "", "go away"},
      {"postern.reject(554, '5.7.1', 'spam')", Verdict::Action::kReject, 554, "5.7.1", "spam"},
      {"postern.reject('5.7.1', 'spam')", Verdict::Action::kReject, 0, "5.7.1", "spam"},
      {"postern.tempfail(450, '4.2.0', 'later')", Verdict::Action::kTempfail, 450, "4.2.0", "later"},
      {"postern.tempfail()", Verdict::Action::kTempfail, 0, "", ""},
      {"postern.discard()", Verdict::Action::kDiscard, 0, "", ""},
      {"postern.quarantine('looks bad')", Verdict::Action::kQuarantine, 0, "", ""},
      {"postern.disconnect('bye')", Verdict::Action::kDisconnect, 0, "", "bye"},
      {"nil", Verdict::Action::kContinue, 0, "", ""},
  };
  for (const auto& c : cases) {
    LuaHarness h;
    auto f = h.load(rule("mail", std::string("return ") + c.expr));
    Verdict v = h.run(*f, Stage::kMail);
    INFO(c.expr);
    CHECK(v.action == c.action);
    CHECK(v.code == c.code);
    CHECK(v.enhanced == c.enhanced);
    CHECK(v.text == c.text);
  }
  LuaHarness h;
  auto q = h.load(rule("mail", "return postern.quarantine('looks bad')"));
  CHECK(h.run(*q, Stage::kMail).reason == "looks bad");
  // Wrong classes, CR/LF in text, and returning junk are rule errors or cleaned.
  for (const char* bad : {"postern.reject(450, 'x')", "postern.tempfail(550)", "postern.reject(550, '4.1.1', 'x')",
                          "{action='reject'}", "42"}) {
    LuaHarness e;
    auto f = e.load(rule("mail", std::string("return ") + bad));
    INFO(bad);
    CHECK(e.run(*f, Stage::kMail).action == Verdict::Action::kTempfail);
  }
  auto crlf = h.load(rule("mail", "return postern.reject('a\\r\\n250 ok')"));
  CHECK(h.run(*crlf, Stage::kMail).text == "a??250 ok");
}

TEST_CASE("lua api: addresses compare with the domain folded, the local part exact", "[lua]") {
  struct Case {
    const char* a;
    const char* b;
    bool equal;
  } cases[] = {
      {"a@example.com", "a@example.com", true},
      {"a@example.com", "a@EXAMPLE.Com", true},
      {"a@example.com", "A@example.com", false},
      // A domain that only starts like the other one, from either side.
      {"a@example.com", "a@example.comx", false},
      {"a@example.comx", "a@example.com", false},
      {"a@example.com", "a@example.co", false},
      {"ab@example.com", "a@bexample.com", false},
  };
  for (const auto& c : cases) {
    LuaHarness h;
    auto f = h.load(rule("mail", std::string("if postern.util.address('") + c.a + "') == postern.util.address('" + c.b +
                                     "') then return postern.reject() end"));
    INFO(c.a << " == " << c.b);
    CHECK((h.run(*f, Stage::kMail).action == Verdict::Action::kReject) == c.equal);
  }
}

TEST_CASE("lua api: ctx.symbols and ctx.envelope.rcpts are arrays in order", "[lua]") {
  LuaHarness h;
  h.txn.symbols = {{"FIRST", 1.5, "one"}, {"SECOND", -2, "two"}};
  h.txn.recipients = {Mailbox{"a", "example.com"}, Mailbox{"b", "example.net"}};
  auto f = h.load(rule("mail", R"(
    local s, r = ctx.symbols, ctx.envelope.rcpts
    return postern.reject(string.format('%d %s %g %s %s %g %s | %d %s %s %s', #s, s[1].name, s[1].score,
      s[1].description, s[2].name, s[2].score, s[2].description, #r, r[1].addr, r[2].addr, tostring(r[3])))
  )"));
  CHECK(h.run(*f, Stage::kMail).text == "2 FIRST 1.5 one SECOND -2 two | 2 a@example.com b@example.net nil");
  h.txn.symbols.clear();
  h.txn.recipients.clear();
  auto empty = h.load(rule("mail", "return postern.reject(#ctx.symbols .. ' ' .. #ctx.envelope.rcpts)"));
  CHECK(h.run(*empty, Stage::kMail).text == "0 0");
}

TEST_CASE("lua api: the first decisive rule wins, stages filter rules", "[lua]") {
  LuaHarness h;
  auto f = h.load("postern.rule{name='A', stage='rcpt', fn=function() end}\n"
                  "postern.rule{name='B', stage={'rcpt','mail'}, fn=function() return postern.reject('B') end}\n"
                  "postern.rule{name='C', stage='rcpt', fn=function() return postern.reject('C') end}\n");
  CHECK(f->wants(Stage::kRcpt));
  CHECK(f->wants(Stage::kMail));
  CHECK_FALSE(f->wants(Stage::kEom));
  CHECK(h.run(*f, Stage::kRcpt).text == "B");
  REQUIRE(f->rules().size() == 3);
  CHECK(f->rules()[1].stages.size() == 2);
}

TEST_CASE("lua api: symbols and scores", "[lua]") {
  LuaHarness h;
  auto f = h.load(rule("mail", "ctx:symbol() ctx:symbol('OTHER', -1, 'other') ctx:symbol('OTHER', 5) "
                               "if not ctx:has_symbol('OTHER') then error('has_symbol') end") +
                  "postern.rule{name='TRUE_HIT', stage='mail', score=3, fn=function() return true end}\n");
  CHECK(h.run(*f, Stage::kMail).action == Verdict::Action::kContinue);
  REQUIRE(h.txn.symbols.size() == 3);
  CHECK(h.txn.symbols[0].name == "R");
  CHECK(h.txn.symbols[0].score == 2.5);
  CHECK(h.txn.symbols[0].description == "test rule");
  CHECK(h.txn.symbols[1].name == "OTHER");
  CHECK(h.txn.symbols[1].score == -1);
  CHECK(h.txn.symbols[2].name == "TRUE_HIT");
  CHECK(h.txn.score == Approx(4.5));
}

TEST_CASE("lua api: symbols from connect and helo reach the transaction at MAIL", "[lua]") {
  LuaHarness h;
  auto f = h.load("postern.rule{name='EARLY', stage='connect', score=4, fn=function(ctx) ctx:symbol() end}\n"
                  "postern.rule{name='SEEN', stage='mail', fn=function(ctx) return postern.reject(tostring(ctx.score)) end}\n");
  CHECK(f->wants(Stage::kMail));
  h.run(*f, Stage::kConnect);
  CHECK(h.txn.symbols.empty());
  Verdict v = h.run(*f, Stage::kMail);
  REQUIRE(h.txn.symbols.size() == 1);
  CHECK(h.txn.symbols[0].name == "EARLY");
  CHECK(v.text == "4.0");
  h.run(*f, Stage::kRcpt);  // not carried twice
  CHECK(h.txn.symbols.size() == 1);
}

TEST_CASE("lua api: symbols before MAIL are typed session facts, exact and once each", "[lua]") {
  LuaHarness h;
  // A score no decimal text round-trips short of 17 digits, a description with
  // a tab and a newline: kept as given, not encoded into notes and parsed back.
  auto f = h.load("postern.rule{name='EARLY', stage='connect', score=0.1, fn=function(ctx)\n"
                  "  ctx:symbol('EARLY', 0.1 + 0.2, 'a\\tb') ctx:symbol('EARLY', 9) ctx:symbol('SECOND', -1e-9)\n"
                  "  if not ctx:has_symbol('EARLY') then error('has_symbol before MAIL') end end}\n"
                  "postern.rule{name='HELO_SEES', stage='helo', fn=function(ctx)\n"
                  "  if not ctx:has_symbol('SECOND') then error('has_symbol at helo') end end}\n");
  h.run(*f, Stage::kConnect);
  REQUIRE(h.session.symbols.size() == 2);
  CHECK(h.session.symbols[0].name == "EARLY");
  CHECK(h.session.symbols[0].score == 0.1 + 0.2);
  CHECK(h.session.symbols[0].description == "a\tb");
  CHECK(h.session.symbols[1].score == -1e-9);
  CHECK(h.session.notes.empty());  // nothing written into the rules' notes
  CHECK(h.run(*f, Stage::kHelo).action == Verdict::Action::kContinue);
  h.run(*f, Stage::kMail);
  REQUIRE(h.txn.symbols.size() == 2);
  CHECK(h.txn.symbols[0].score == 0.1 + 0.2);
  CHECK(h.txn.session_symbols_taken);
  CHECK(h.txn.score == 0.1 + 0.2 + -1e-9);
}

TEST_CASE("lua api: header changes are validated and recorded", "[lua]") {
  LuaHarness h;
  h.set_message(kMessage);
  auto f = h.load(rule("eom", R"(
    ctx:add_header('X-Test', 'one')
    ctx:prepend_header('X-First', 'zero')
    ctx:change_header('Received', 'changed', 2)
    ctx:remove_header('Received')
    ctx:remove_header('To', 1)
    ctx:add_header('X-Injected', 'a\r\nBcc: victim@example.com')
    ctx:tag_subject('[SPAM]')
    ctx:add_header('X-Long', string.rep('word ', 400))
  )"));
  REQUIRE(h.run(*f, Stage::kEom).action == Verdict::Action::kContinue);
  const auto& e = h.txn.changes.headers;
  REQUIRE(e.size() == 7);
  CHECK((e[0].kind == HeaderEdit::Kind::kAdd && e[0].name == "X-Test" && e[0].value == "one"));
  CHECK(e[1].kind == HeaderEdit::Kind::kPrepend);
  CHECK((e[2].kind == HeaderEdit::Kind::kChange && e[2].index == 2 && e[2].value == "changed"));
  CHECK((e[3].kind == HeaderEdit::Kind::kRemove && e[3].index == 0));
  CHECK((e[4].kind == HeaderEdit::Kind::kRemove && e[4].index == 1));
  CHECK(e[5].value == "a  Bcc: victim@example.com");
  CHECK(e[6].value.find("\r\n ") != std::string::npos);
  for (std::size_t pos = 0, next; pos < e[6].value.size(); pos = next + 2) {
    next = e[6].value.find("\r\n", pos);
    if (next == std::string::npos) next = e[6].value.size();
    CHECK(next - pos + (pos == 0 ? 8 : 0) <= 998);
  }
  CHECK(h.txn.changes.subject_tag == "[SPAM]");
  for (const char* bad : {"ctx:add_header('Bad Name', 'x')", "ctx:add_header('X:Y', 'x')",
                          "ctx:add_header('X-Big', string.rep('x', 20000))", "ctx:add_header('X-Word', string.rep('x', 1200))"}) {
    LuaHarness e2;
    auto g = e2.load(rule("mail", bad));
    INFO(bad);
    CHECK(e2.run(*g, Stage::kMail).action == Verdict::Action::kTempfail);
    CHECK(e2.txn.changes.headers.empty());
  }
}

TEST_CASE("lua api: envelope changes", "[lua]") {
  LuaHarness h;
  auto f = h.load(rule("rcpt", R"(
    ctx:add_rcpt('archive@example.com')
    ctx:remove_rcpt('<old@example.com>')
    ctx:set_sender('')
    ctx:redirect({'a@example.net', postern.util.address('b@example.net')})
  )"));
  h.txn.current_rcpt = Mailbox{"x", "example.com"};
  REQUIRE(h.run(*f, Stage::kRcpt).action == Verdict::Action::kContinue);
  const auto& c = h.txn.changes;
  REQUIRE(c.add_recipients.size() == 1);
  CHECK(c.add_recipients[0].str() == "archive@example.com");
  REQUIRE(c.remove_recipients.size() == 1);
  CHECK(c.remove_recipients[0].str() == "old@example.com");
  REQUIRE(c.reverse_path);
  CHECK(c.reverse_path->empty());
  REQUIRE(c.redirect);
  REQUIRE(c.redirect->size() == 2);
  CHECK((*c.redirect)[1].str() == "b@example.net");
  for (const char* bad : {"ctx:add_rcpt('no at sign')", "ctx:add_rcpt('')", "ctx:redirect({})",
                          "ctx:add_rcpt('a@b>\\r\\nRCPT TO:<c@d')"}) {
    LuaHarness e;
    auto g = e.load(rule("mail", bad));
    INFO(bad);
    CHECK(e.run(*g, Stage::kMail).action == Verdict::Action::kTempfail);
    CHECK(e.txn.changes.add_recipients.empty());
  }
}

TEST_CASE("lua api: client, envelope and notes", "[lua]") {
  LuaHarness h;
  h.session.tls.active = true;
  h.session.tls.version = "TLSv1.3";
  h.session.auth_user = "alice";
  h.txn.reverse_path = Mailbox{"Bob", "Example.ORG"};
  h.txn.recipients = {Mailbox{"a", "example.com"}};
  h.txn.current_rcpt = Mailbox{"c", "example.com"};
  auto f = h.load(rule("rcpt", R"(
    local c, e = ctx.client, ctx.envelope
    local out = {c.ip, c.port, c.helo, tostring(c.tls.active), c.tls.version, c.auth_user,
                 e.from.local_part, e.from.domain, tostring(e.from), #e.rcpts, e.rcpt.addr, ctx.stage,
                 tostring(e.from == postern.util.address('Bob@example.org'))}
    ctx.notes.seen = 1
    ctx.session_notes.count = (tonumber(ctx.session_notes.count) or 0) + 1
    local n = 0 for k, v in pairs(ctx.notes) do n = n + 1 end
    out[#out + 1] = n
    if pcall(function() ctx.notes['postern.accepted'] = 'x' end) then error('reserved note written') end
    if pcall(function() ctx.client = 1 end) then error('ctx written') end
    return postern.reject(table.concat(out, '|'))
  )"));
  Verdict v = h.run(*f, Stage::kRcpt);
  CHECK(v.text == "192.0.2.10|40000|mail.example.net|true|TLSv1.3|alice|Bob|Example.ORG|Bob@Example.ORG|1|c@example.com|rcpt|true|1");
  CHECK(h.txn.notes["seen"] == "1");
  h.run(*f, Stage::kRcpt);
  CHECK(h.session.notes["count"] == "2");
}

TEST_CASE("lua api: ctx.client and ctx.envelope are read-only views with pairs", "[lua]") {
  LuaHarness h;
  h.session.client_name = "mail.example.net";
  h.txn.reverse_path = Mailbox{"bob", "example.org"};
  h.txn.recipients = {Mailbox{"a", "example.com"}, Mailbox{"b", "example.com"}};
  h.txn.current_rcpt = Mailbox{"c", "example.com"};
  h.txn.id = "T1";
  auto f = h.load(rule("rcpt", R"(
    local c, e = ctx.client, ctx.envelope
    local keys = {}
    for k, v in pairs(c) do
      if k == 'tls' then v = v.active end
      keys[#keys + 1] = k .. '=' .. tostring(v)
    end
    for k, v in pairs(e) do keys[#keys + 1] = k .. '=' .. (k == 'rcpts' and #v or tostring(v)) end
    table.sort(keys)
    local refused = {}
    for _, write in ipairs({function() c.ip = '1.2.3.4' end, function() e.from = 'x@y' end,
                            function() e.rcpts = {} end}) do
      local ok, err = pcall(write)
      refused[#refused + 1] = ok and 'written' or (err:match('read%-only') and 'read-only' or err)
    end
    -- The lists a view hands out are copies: changing one changes nothing.
    table.insert(e.rcpts, 'z@example.com')
    return postern.reject(table.concat(keys, ',') .. '|' .. table.concat(refused, ',') .. '|' ..
                          #e.rcpts .. '|' .. tostring(ctx.client == c) .. '|' .. tostring(c.nothing))
  )"));
  Verdict v = h.run(*f, Stage::kRcpt);
  CHECK(v.text ==
        "auth_user=,esmtp=false,from=bob@example.org,helo=mail.example.net,id=T1,ip=192.0.2.10,listener=,"
        "name=mail.example.net,port=40000,rcpt=c@example.com,rcpts=2,session_id=S1,tls=false"
        "|read-only,read-only,read-only|2|true|nil");
}

TEST_CASE("lua api: a stashed ctx.client or ctx.envelope is refused in a later call", "[lua]") {
  for (const char* field : {"client", "envelope"}) {
    LuaHarness h;
    auto f = h.load(std::string(R"(
      local saved
      postern.rule{name='STASH', stage={'helo', 'mail'}, on_error='tempfail', fn=function(ctx)
        if ctx.stage == 'helo' then saved = ctx.)") + field + R"( return end
        return postern.reject(tostring(saved.id or saved.ip))
      end}
    )");
    INFO(field);
    CHECK(h.run(*f, Stage::kHelo).action == Verdict::Action::kContinue);
    CHECK(h.run(*f, Stage::kMail).action == Verdict::Action::kTempfail);
    CHECK(h.logged(std::string(field) + " used outside the rule call"));
  }
}

TEST_CASE("lua api: the authenticity results read as notes, read-only", "[lua]") {
  LuaHarness h;
  postern::SpfOutcome spf;
  spf.result = postern::SpfResult::kSoftfail;
  spf.domain = "example.org";
  auth_results(h.txn).spf = spf;
  postern::DkimSignature sig;
  sig.result = postern::DkimResult::kPass;
  sig.domain = "example.net";
  sig.key_bits = 2048;
  auth_results(h.txn).dkim_checked = true;
  auth_results(h.txn).dkim = {sig};
  h.txn.notes["mine"] = "x";
  auto f = h.load(rule("mail", R"(
    local n = ctx.notes
    local keys = {}
    for k in pairs(n) do keys[#keys + 1] = k end
    table.sort(keys)
    local ok, err = pcall(function() n['spf.result'] = 'pass' end)
    return postern.reject(table.concat({n['spf.result'], n['spf.domain'], n['dkim.count'], n['dkim.1.domain'],
                                        n['dkim.1.key_bits'], tostring(n['dmarc.result']), tostring(n['dkim.2.domain']),
                                        #keys, keys[1], tostring(ok), err:match('read%-only') or err}, '|'))
  )"));
  Verdict v = h.run(*f, Stage::kMail);
  // 8 spf.* + dkim.count + 11 dkim.1.* + "mine"
  CHECK(v.text == "softfail|example.org|1|example.net|2048|nil|nil|21|dkim.1.algorithm|false|read-only");
  CHECK(auth_results(h.txn).spf->result == postern::SpfResult::kSoftfail);
  CHECK_FALSE(h.txn.notes.count("spf.result"));
}

TEST_CASE("lua api: headers and body", "[lua]") {
  // A spool in memory is read in place, one on disk through a copy: same answers.
  const std::size_t spool_memory = GENERATE(std::size_t{1} << 20, std::size_t{64});
  INFO("spool_memory " << spool_memory);
  LuaHarness h;
  h.set_message(kMessage, spool_memory);
  REQUIRE(h.spool->in_memory() == (spool_memory > 64));
  auto f = h.load(rule("eom", R"(
    local hd, b = ctx.headers, ctx.body
    local out = {hd:first('subject'), hd:first('from'), #hd:all('received'), hd:all('received')[2],
                 hd:count('Received'), tostring(hd:first('missing')), hd:raw('subject')[1]:sub(1, 12)}
    local parts = b:text_parts()
    out[#out + 1] = #parts
    out[#out + 1] = parts[1].text
    local att = b:attachments()
    out[#out + 1] = att[1].filename
    out[#out + 1] = table.concat(att[1].names, ',')
    local n = 0 for line in b:lines() do n = n + 1 end
    out[#out + 1] = n
    out[#out + 1] = tostring(b:size() > 100)
    return postern.reject(table.concat(out, '|'))
  )"));
  Verdict v = h.run(*f, Stage::kEom);
  // Reply text is cleaned to ASCII; the decoded values are UTF-8 ("?" per octet here).
  CHECK(v.text == "Gr????e aus Berlin|J??rgen <j@example.org>|2|two|2|nil|Subject: =?i|1|Hallo ??ber softbreak|invoice.exe|invoice.exe|14|true");
}

TEST_CASE("lua api: the store counts and expires", "[lua]") {
  LuaHarness h;
  auto f = h.load(rule("mail", R"(
    local n = postern.store.incr('rate:' .. ctx.client.ip, 1, 60)
    postern.store.set('k', 'v', 60)
    local v = postern.store.get('k')
    postern.store.del('k')
    return postern.reject(n .. ':' .. v .. ':' .. tostring(postern.store.get('k')))
  )"));
  CHECK(h.run(*f, Stage::kMail).text == "1:v:nil");
  CHECK(h.run(*f, Stage::kMail).text == "2:v:nil");
  postern::MemoryStore store(2);
  store.set_now("a", "1", std::chrono::seconds(0));
  store.set_now("b", "1", std::chrono::seconds(0));
  store.set_now("c", "1", std::chrono::seconds(0));
  CHECK(store.size() == 2);
  CHECK(store.incr_now("x", 5, std::chrono::seconds(0)) == 5);
}

TEST_CASE("lua api: a rule yields while waiting and the thread serves others", "[lua]") {
  LuaHarness h;
  auto f = h.load(rule("mail", "postern.sleep(0.2) ctx.notes.done = os.clock() return postern.reject('slept')"));
  postern::SessionFacts s2 = h.session;
  postern::TransactionFacts t1, t2;
  asio::io_context io;
  std::vector<std::string> order;
  postern::FilterContext c1{Stage::kMail, h.session, t1};
  postern::FilterContext c2{Stage::kMail, s2, t2};
  auto start = std::chrono::steady_clock::now();
  asio::co_spawn(io, f->run(c1), [&](std::exception_ptr, Verdict v) { order.push_back("1:" + v.text); });
  asio::co_spawn(io, f->run(c2), [&](std::exception_ptr, Verdict v) { order.push_back("2:" + v.text); });
  io.run();
  auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(order.size() == 2);
  // Both slept at once: one after the other takes 400 ms at least (a timer never fires early).
  CHECK(elapsed < std::chrono::milliseconds(400));
  CHECK(t1.notes.count("done"));
  CHECK(t2.notes.count("done"));
  // A wait past the rule's deadline is a failure with the rule's policy.
  h.options.timeout = std::chrono::milliseconds(50);
  auto g = h.load(rule("mail", "postern.sleep(10)"));
  CHECK(h.run(*g, Stage::kMail).action == Verdict::Action::kTempfail);
  CHECK(h.logged("time limit exceeded while waiting"));
  // Yielding inside pcall works.
  auto p = h.load(rule("mail", "local ok = pcall(postern.sleep, 0) return postern.reject(tostring(ok))"));
  CHECK(h.run(*p, Stage::kMail).text == "true");
}

TEST_CASE("lua api: settings reach scripts", "[lua]") {
  LuaHarness h;
  postern::LuaSetting zones;
  zones.kind = postern::LuaSetting::Kind::kList;
  postern::LuaSetting z;
  z.kind = postern::LuaSetting::Kind::kString;
  z.string = "zen.example";
  zones.items.push_back(z);
  h.options.settings.keys = {"zones"};
  h.options.settings.items = {zones};
  auto f = h.load(rule("mail", "return postern.reject(postern.settings.zones[1])"));
  CHECK(h.run(*f, Stage::kMail).text == "zen.example");
}

// Not run by default ("[.]"): the cost of one rule call, for the figures in
// the report. postern_unit_tests "[.lua-bench]"
TEST_CASE("lua bench: rule calls per second", "[.lua-bench]") {
  LuaHarness h;
  auto f = h.load(rule("mail", "if ctx.client.ip == '203.0.113.1' then return postern.reject() end ctx:symbol()"));
  const int n = 100000;
  auto start = std::chrono::steady_clock::now();
  asio::io_context io;
  for (int i = 0; i < n; ++i) {
    postern::TransactionFacts t;
    postern::FilterContext c{Stage::kMail, h.session, t};
    asio::co_spawn(io, f->run(c), [](std::exception_ptr, Verdict) {});
    io.run();
    io.restart();
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  WARN("calls/s: " << n / secs << ", memory: " << f->memory_used());
}

TEST_CASE("lua api: authenticity results from the built-in filters' symbols", "[lua]") {
  LuaHarness h;
  h.txn.add_symbol({"SPF_SOFTFAIL", 1, "example.org"});
  h.txn.add_symbol({"DKIM_WEAK_KEY", 1, "example.org"});
  h.txn.add_symbol({"DKIM_PASS", -1, "example.org"});
  auto f = h.load(rule("eom", "local a = ctx.auth return postern.reject(tostring(a.spf) .. ' ' .. tostring(a.dkim) .. ' ' .. tostring(a.dmarc))"));
  CHECK(h.run(*f, Stage::kEom).text == "softfail pass nil");
}
