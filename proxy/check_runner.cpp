// The live-equivalent `postern check`; see check_runner.h. Each stage's
// verdict is handled as proxy/session.cpp handles it (the comments name the
// function there), and the reply comes from the same verdict_reply().
#include "proxy/check_runner.h"

#include <stdexcept>

#include "filters/address.h"
#include "filters/audit/audit_log.h"
#include "filters/audit/check_run.h"
#include "filters/auth/auth_results.h"
#include "proxy/filter_setup.h"
#include "proxy/verdict_reply.h"

namespace postern {
namespace {

std::string js(std::string_view s) { return check_json(s); }

Mailbox parse_mailbox(const std::string& text, bool reverse) {
  if (text.empty() && reverse) return Mailbox{};
  std::string path = text.front() == '<' ? text : "<" + text + ">";
  PathParse p = parse_path(path, reverse, !reverse, true);
  if (p.error != PathError::kNone || p.end != path.size()) throw std::runtime_error("not an address: " + text);
  return p.mailbox;
}

bool refuses(const Verdict& v) {
  return v.action == Verdict::Action::kReject || v.action == Verdict::Action::kTempfail ||
         v.action == Verdict::Action::kDisconnect;
}

const char* edit_name(HeaderEdit::Kind k) {
  switch (k) {
    case HeaderEdit::Kind::kAdd: return "add";
    case HeaderEdit::Kind::kPrepend: return "prepend";
    case HeaderEdit::Kind::kChange: return "change";
    case HeaderEdit::Kind::kRemove: return "remove";
    case HeaderEdit::Kind::kInsert: return "insert";
  }
  return "add";
}

std::string reply_json(const Reply& r, const char* by) {
  return "{\"code\":" + std::to_string(r.code) + ",\"enhanced\":" + js(r.enhanced_code()) + ",\"text\":" +
         js(r.text) + ",\"by\":" + js(by) + "}";
}

std::string mailboxes(const std::vector<Mailbox>& list) {
  std::string o = "[";
  for (std::size_t i = 0; i < list.size(); ++i) o += std::string(i ? "," : "") + js(list[i].str());
  return o + "]";
}

}  // namespace

std::string run_live_check(const Config& live, const LiveCheck& c) {
  if (c.rcpts.empty()) throw std::runtime_error("check needs at least one --rcpt");
  // The same configuration, but a store of its own: a check must not count
  // against live rate limits or greylisting.
  Config config = live;
  config.store.backend = StoreOptions::Backend::kMemory;
  config.store.persist.clear();
  auto resources = build_filter_resources(config, nullptr);
  auto chain = build_filter_chain(config, *resources);

  CheckRun check(*chain, c.message, c.client_ip);
  SessionFacts& session = check.session;
  session.client_port = c.client_port;
  TransactionFacts& tx = check.tx;
  tx.id = "check.1";
  std::string stages;    // what ran, in order, with each stage's reply
  std::string decided_stage;
  Verdict verdict;
  Reply reply;
  const char* by = "postern";
  std::vector<std::string> rcpt_replies;
  auto step = [&](const char* name, const Reply& r, const char* who) {
    stages += std::string(stages.empty() ? "" : ",") + "{\"stage\":" + js(name) + ",\"reply\":" + reply_json(r, who) + "}";
  };
  auto decide = [&](const char* name, const Verdict& v, Reply r) {
    decided_stage = name;
    verdict = v;
    reply = std::move(r);
  };

  // Session::run: refused at connect.
  Verdict v = check.run(Stage::kConnect);
  if (refuses(v)) {
    Reply r = verdict_reply(v, Stage::kConnect);
    if (v.action != Verdict::Action::kReject) r.code = 421;
    step("connect", r, "postern");
    decide("connect", v, r);
  } else {
    step("connect", Reply{220, config.server.hostname + " ESMTP"}, "postern");
  }
  // Session::handle_helo.
  if (decided_stage.empty()) {
    session.helo = c.helo;
    session.esmtp = true;
    v = check.run(Stage::kHelo);
    if (refuses(v)) {
      step("helo", verdict_reply(v, Stage::kHelo), "postern");
      decide("helo", v, verdict_reply(v, Stage::kHelo));
    } else {
      step("helo", Reply{250, config.server.hostname}, "postern");
    }
  }
  std::optional<Verdict> pending;
  // Session::handle_mail.
  if (decided_stage.empty()) {
    tx.reverse_path = parse_mailbox(c.mail_from, true);
    v = check.run(Stage::kMail);
    if (refuses(v)) {
      step("mail", verdict_reply(v, Stage::kMail), "postern");
      decide("mail", v, verdict_reply(v, Stage::kMail));
    } else {
      if (v.holds_message()) pending = v;
      step("mail", Reply{250, "2.1.0 Ok (the MTA's answer)"}, "upstream");
    }
  }
  // Session::handle_rcpt: a refused recipient is this recipient only.
  if (decided_stage.empty()) {
    for (const std::string& text : c.rcpts) {
      Mailbox rcpt = parse_mailbox(text, false);
      tx.current_rcpt = rcpt;
      v = check.run(Stage::kRcpt);
      tx.current_rcpt.reset();
      if (refuses(v)) {
        Reply r = verdict_reply(v, Stage::kRcpt);
        step("rcpt", r, "postern");
        rcpt_replies.push_back("{\"rcpt\":" + js(rcpt.str()) + ",\"reply\":" + reply_json(r, "postern") +
                               ",\"rule\":" + js(v.rule) + "}");
        if (v.action == Verdict::Action::kDisconnect) {
          decide("rcpt", v, r);
          break;
        }
        continue;
      }
      if (v.holds_message() && !pending) pending = v;
      step("rcpt", Reply{250, "2.1.5 Ok (the MTA's answer)"}, "upstream");
      rcpt_replies.push_back("{\"rcpt\":" + js(rcpt.str()) + ",\"reply\":" +
                             reply_json(Reply{250, "2.1.5 Ok (the MTA's answer)"}, "upstream") + ",\"rule\":\"\"}");
      tx.recipients.push_back(rcpt);
    }
    if (decided_stage.empty() && tx.recipients.empty()) {
      decide("rcpt", Verdict{Verdict::Action::kReject, 554, "5.5.1", "No valid recipients", "", ""},
             Reply{554, "5.5.1 No valid recipients"});
    }
  }
  // Session::end_of_message: data, then eom, then what was pending.
  if (decided_stage.empty()) {
    tx.message = &check.message();
    v = check.run(Stage::kData);
    const char* stage = "data";
    if (!v.decisive()) {
      v = check.run(Stage::kEom);
      stage = "eom";
    }
    v = end_of_data_verdict(std::move(v), pending);
    switch (v.action) {
      case Verdict::Action::kContinue:
      case Verdict::Action::kAccept:
        reply = Reply{250, "2.0.0 Ok (relayed: the MTA's answer)"};
        by = "upstream";
        break;
      case Verdict::Action::kDiscard: reply = Reply{250, "2.0.0 Ok: discarded"}; break;
      case Verdict::Action::kQuarantine: reply = Reply{250, "2.0.0 Ok: quarantined"}; break;
      default: reply = verdict_reply(v, Stage::kEom); break;
    }
    step(stage, reply, by);
    decided_stage = v.decisive() ? stage : "";
    verdict = v;
    tx.message = nullptr;
  }
  check.run(Stage::kClose);

  const Changes& ch = tx.changes;
  std::string o = "{\"verdict\":{\"action\":" + js(verdict.decisive() ? action_name(verdict.action) : "accept");
  o += ",\"stage\":" + js(decided_stage) + ",\"rule\":" + js(verdict.rule) + ",\"reason\":" + js(verdict.reason);
  o += "," + check_symbols_json(tx) + "}";
  o += ",\"reply\":" + reply_json(reply, by);
  o += ",\"rcpts\":[";
  for (std::size_t i = 0; i < rcpt_replies.size(); ++i) o += (i ? "," : "") + rcpt_replies[i];
  o += "],\"stages\":[" + stages + "]";
  o += ",\"header_changes\":[";
  for (std::size_t i = 0; i < ch.headers.size(); ++i) {
    const HeaderEdit& h = ch.headers[i];
    o += std::string(i ? "," : "") + "{\"op\":" + js(edit_name(h.kind)) + ",\"name\":" + js(h.name) +
         ",\"value\":" + js(h.value) + ",\"index\":" + std::to_string(h.index) + "}";
  }
  o += "],\"subject_tag\":" + js(ch.subject_tag);
  o += ",\"envelope\":{\"mail_from\":" + js(ch.reverse_path ? ch.reverse_path->str() : tx.reverse_path.str());
  o += ",\"recipients\":" + mailboxes(tx.recipients) + ",\"add_recipients\":" + mailboxes(ch.add_recipients) +
       ",\"remove_recipients\":" + mailboxes(ch.remove_recipients);
  o += ",\"redirect\":" + (ch.redirect ? mailboxes(*ch.redirect) : std::string("null")) + "}";
  const AuthResults& auth = auth_results(tx);
  o += ",\"spf\":" + (auth.spf ? "{\"result\":" + js(spf_result_name(auth.spf->result)) + ",\"domain\":" +
                                    js(auth.spf->domain) + ",\"explanation\":" + js(auth.spf->explanation) + "}"
                               : std::string("null"));
  o += ",\"dkim\":[";
  for (std::size_t i = 0; i < auth.dkim.size(); ++i) {
    o += std::string(i ? "," : "") + "{\"domain\":" + js(auth.dkim[i].domain) + ",\"selector\":" +
         js(auth.dkim[i].selector) + ",\"result\":" + js(dkim_result_name(auth.dkim[i].result)) + "}";
  }
  o += "],\"dmarc\":" + (auth.dmarc ? "{\"result\":" + js(dmarc_result_name(auth.dmarc->result)) + ",\"policy\":" +
                                         js(auth.dmarc->policy) + "}"
                                    : std::string("null"));
  o += ",\"arc\":" + (auth.arc ? arc_json(*auth.arc) : std::string("null"));
  o += "}";
  return o;
}

}  // namespace postern
