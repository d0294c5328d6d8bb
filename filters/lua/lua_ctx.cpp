// The ctx object a rule receives: client and envelope facts, symbols, and
// the changes a rule asks for (headers, body and notes: lua_message.cpp).
// Every handle (ctx, ctx.headers, ctx.body, the notes) names its invocation
// and is refused once that call has returned or from another rule's call
// (rspamd's use-after-free check), so a script that stashes ctx cannot touch
// another session's facts.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iterator>

#include "filters/auth/auth_results.h"
#include "filters/lua/lua_api_util.h"
#include "filters/lua/lua_internal.h"
#include "filters/text/ascii.h"
#include "filters/text/utf8.h"

namespace postern {
Invocation& check_handle(lua_State* L, int idx, const char* meta) {
  auto* h = static_cast<Handle*>(luaL_checkudata(L, idx, meta));
  ThreadTag* tag = thread_tag(L);
  if (!tag->inv || tag->inv->id != h->id) luaL_error(L, "%s used outside the rule call it was given to", meta + 8);
  return *tag->inv;
}

void push_handle(lua_State* L, const Invocation& inv, const char* meta, bool session, int uservalues) {
  auto* h = static_cast<Handle*>(lua_newuserdatauv(L, sizeof(Handle), uservalues));
  h->id = inv.id;
  h->session = session;
  luaL_setmetatable(L, meta);
}

void set_string(lua_State* L, const char* key, std::string_view value) {
  lua_pushlstring(L, value.data(), value.size());
  lua_setfield(L, -2, key);
}

const Message& need_message(lua_State* L, Invocation& inv) {
  if (!inv.ctx->transaction.message) luaL_error(L, "the message is available at the data and eom stages only");
  return *inv.ctx->transaction.message;
}

namespace {

constexpr std::size_t kMaxHeaderEdits = 256;
constexpr std::size_t kMaxRecipientChanges = 1000;
// Symbols of a transaction (of the session before MAIL): each is listed in
// X-Spam-Status, the audit record and the metrics of every message, so a
// rule that invents names in a loop must not grow them without end.
constexpr std::size_t kMaxSymbols = 256;
constexpr std::size_t kMaxHeaderLine = 998;  // RFC 5322 §2.1.1

// Pushes a Lua array (1-based) of `items`, each pushed by `push_one(item)`.
template <class Items, class PushOne>
void push_array(lua_State* L, const Items& items, PushOne push_one) {
  lua_createtable(L, static_cast<int>(items.size()), 0);
  lua_Integer n = 0;
  for (const auto& item : items) {
    push_one(item);
    lua_rawseti(L, -2, ++n);
  }
}

// ---- header edits

// The field name at `idx`, all of its octets: a NUL inside is refused like
// any other octet outside the name syntax, not taken as its end.
std::string check_header_name(lua_State* L, int idx) {
  std::size_t len = 0;
  const char* raw = luaL_checklstring(L, idx, &len);
  std::string_view name(raw, len);
  bool ok = !name.empty() && name.size() <= 76;
  for (unsigned char c : name) ok = ok && c >= 33 && c <= 126 && c != ':';
  if (!ok) luaL_error(L, "not a header field name: \"%s\"", clean_text(name, 80).c_str());
  return std::string(name);
}

// Text a rule puts into a header field: control characters (CR and LF above
// all: header injection) and DEL become spaces, and an octet of no
// well-formed UTF-8 sequence (RFC 6532 §3) becomes '?'.
std::string header_text(std::string_view raw) {
  std::string out;
  out.reserve(raw.size());
  for (std::size_t i = 0; i < raw.size();) {
    const unsigned char c = raw[i];
    if (c < 0x80) {
      out.push_back((c < 32 && c != '\t') || c == 127 ? ' ' : static_cast<char>(c));
      ++i;
    } else if (std::size_t n = utf8_sequence_length(raw, i)) {
      out.append(raw, i, n);
      i += n;
    } else {
      out.push_back('?');
      ++i;
    }
  }
  return out;
}

// The value at `idx` as header text (header_text); a value that makes the
// line longer than 998 octets is folded at white space.
std::string check_header_value(lua_State* L, std::string_view name, int idx) {
  std::size_t len = 0;
  const char* raw = luaL_checklstring(L, idx, &len);
  std::size_t limit = thread_tag(L)->rt->options.header_value_limit;
  if (len > limit) luaL_error(L, "header value of %d octets exceeds lua.header_value_limit (%d)", static_cast<int>(len), static_cast<int>(limit));
  std::string value = header_text(std::string_view(raw, len));
  std::string folded;
  std::size_t line = name.size() + 2;
  std::size_t pos = 0;
  while (value.size() - pos + line > kMaxHeaderLine) {
    std::size_t room = kMaxHeaderLine - line;
    std::size_t cut = value.find_last_of(" \t", pos + room);
    if (cut == std::string::npos || cut <= pos) luaL_error(L, "header value has a word too long to fold into 998-octet lines");
    folded.append(value, pos, cut - pos).append("\r\n");
    pos = cut;  // the white space starts the continuation line
    line = 0;
  }
  folded.append(value, pos, std::string::npos);
  return folded;
}

void push_edit(lua_State* L, Invocation& inv, HeaderEdit edit) {
  auto& edits = inv.ctx->transaction.changes.headers;
  if (edits.size() >= kMaxHeaderEdits) luaL_error(L, "more than %d header edits", static_cast<int>(kMaxHeaderEdits));
  edits.push_back(std::move(edit));
}

int ctx_add_header_kind(lua_State* L, HeaderEdit::Kind kind) {
  Invocation& inv = check_handle(L, 1, kCtxMeta);
  std::string name = check_header_name(L, 2);
  std::string value = check_header_value(L, name, 3);
  push_edit(L, inv, HeaderEdit{kind, std::move(name), std::move(value)});
  return 0;
}

int ctx_add_header(lua_State* L) { return ctx_add_header_kind(L, HeaderEdit::Kind::kAdd); }
int ctx_prepend_header(lua_State* L) { return ctx_add_header_kind(L, HeaderEdit::Kind::kPrepend); }

int ctx_change_header(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kCtxMeta);
  std::string name = check_header_name(L, 2);
  std::string value = check_header_value(L, name, 3);
  lua_Integer index = luaL_optinteger(L, 4, 1);
  if (index < 0 || index > 10000) return luaL_error(L, "change_header: index must be 0 (all) or 1..10000");
  push_edit(L, inv, HeaderEdit{HeaderEdit::Kind::kChange, std::move(name), std::move(value), static_cast<std::size_t>(index)});
  return 0;
}

int ctx_remove_header(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kCtxMeta);
  std::string name = check_header_name(L, 2);
  lua_Integer index = luaL_optinteger(L, 3, 0);
  if (index < 0 || index > 10000) return luaL_error(L, "remove_header: index must be 0 (all) or 1..10000");
  push_edit(L, inv, HeaderEdit{HeaderEdit::Kind::kRemove, std::move(name), "", static_cast<std::size_t>(index)});
  return 0;
}

int ctx_tag_subject(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kCtxMeta);
  std::size_t len = 0;
  const char* tag = luaL_checklstring(L, 2, &len);
  if (len > 200) return luaL_error(L, "tag_subject: a tag is at most 200 octets");
  inv.ctx->transaction.changes.subject_tag = header_text(std::string_view(tag, len));
  return 0;
}

// ---- envelope edits

void count_recipient_change(lua_State* L, const Changes& c) {
  if (c.add_recipients.size() + c.remove_recipients.size() >= kMaxRecipientChanges) {
    luaL_error(L, "more than %d recipient changes", static_cast<int>(kMaxRecipientChanges));
  }
}

// ctx:add_rcpt(addr) and ctx:remove_rcpt(addr): one more entry in `list`.
int change_recipients(lua_State* L, std::vector<Mailbox> Changes::*list) {
  Invocation& inv = check_handle(L, 1, kCtxMeta);
  Mailbox m = check_address(L, 2, false);
  Changes& c = inv.ctx->transaction.changes;
  count_recipient_change(L, c);
  (c.*list).push_back(std::move(m));
  return 0;
}

int ctx_add_rcpt(lua_State* L) { return change_recipients(L, &Changes::add_recipients); }
int ctx_remove_rcpt(lua_State* L) { return change_recipients(L, &Changes::remove_recipients); }

int ctx_set_sender(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kCtxMeta);
  inv.ctx->transaction.changes.reverse_path = check_address(L, 2, true);
  return 0;
}

int ctx_redirect(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kCtxMeta);
  std::vector<Mailbox> to;
  if (lua_istable(L, 2) && !luaL_getmetafield(L, 2, "__tostring")) {
    lua_Integer n = luaL_len(L, 2);
    if (n < 1 || n > static_cast<lua_Integer>(kMaxRecipientChanges)) return luaL_error(L, "redirect: 1 to 1000 addresses");
    for (lua_Integer i = 1; i <= n; ++i) {
      lua_rawgeti(L, 2, i);
      to.push_back(check_address(L, lua_gettop(L), false));
      lua_pop(L, 1);
    }
  } else {
    if (lua_istable(L, 2)) lua_pop(L, 1);  // the metafield
    to.push_back(check_address(L, 2, false));
  }
  inv.ctx->transaction.changes.redirect = std::move(to);
  return 0;
}

// ---- symbols

int ctx_symbol(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kCtxMeta);
  const LuaRuleInfo& rule = inv.rule->info;
  Symbol s;
  std::size_t name_len = 0;
  const char* name = luaL_optlstring(L, 2, rule.name.c_str(), &name_len);
  s.name.assign(name, name_len);  // a NUL inside is no symbol name, not its end
  if (!valid_symbol_name(s.name)) return luaL_error(L, "symbol: a name is 1-64 letters, digits, '_', '-' or '.'");
  s.score = lua_isnoneornil(L, 3) ? rule.score : luaL_checknumber(L, 3);
  if (!(s.score > -1e6 && s.score < 1e6)) return luaL_error(L, "symbol: score out of range");
  s.description = clean_text(luaL_optstring(L, 4, s.name == rule.name ? rule.description.c_str() : ""), 200);
  const FilterContext& ctx = *inv.ctx;
  const std::vector<Symbol>& have = ctx.stage < Stage::kMail ? ctx.session.symbols : ctx.transaction.symbols;
  if (have.size() >= kMaxSymbols &&
      std::none_of(have.begin(), have.end(), [&](const Symbol& h) { return h.name == s.name; })) {
    return luaL_error(L, "symbol: more than %d symbols", static_cast<int>(kMaxSymbols));
  }
  add_symbol(*inv.ctx, std::move(s));
  inv.added_symbol = true;
  return 0;
}

int ctx_has_symbol(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kCtxMeta);
  std::string name = luaL_checkstring(L, 2);
  bool found = false;
  for (const Symbol& s : inv.ctx->transaction.symbols) found = found || s.name == name;
  if (!found && inv.ctx->stage < Stage::kMail) {
    for (const Symbol& s : inv.ctx->session.symbols) found = found || s.name == name;
  }
  lua_pushboolean(L, found);
  return 1;
}

// ---- ctx.client and ctx.envelope
//
// Read-only views that read the facts field by field, not tables built per
// rule call (bench/README.md): a rule reads two or three fields. pairs()
// still lists every field, from a snapshot table.

void push_tls(lua_State* L, const SessionFacts& s) {
  lua_createtable(L, 0, 5);
  lua_pushboolean(L, s.tls.active);
  lua_setfield(L, -2, "active");
  set_string(L, "version", s.tls.version);
  set_string(L, "cipher", s.tls.cipher);
  set_string(L, "subject", s.tls.peer_subject);
  set_string(L, "fingerprint", s.tls.peer_fingerprint);
}

// The client field `key` of `s`; false when there is no such field.
bool push_client_field(lua_State* L, const SessionFacts& s, std::string_view key) {
  const std::string* text = nullptr;
  if (key == "ip") text = &s.client_ip;
  else if (key == "name") text = &s.client_name;
  else if (key == "helo") text = &s.helo;
  else if (key == "auth_user") text = &s.auth_user;
  else if (key == "listener") text = &s.listener;
  else if (key == "session_id") text = &s.id;
  else if (key == "port") lua_pushinteger(L, s.client_port);
  else if (key == "esmtp") lua_pushboolean(L, s.esmtp);
  else if (key == "tls") push_tls(L, s);
  else return false;
  if (text) lua_pushlstring(L, text->data(), text->size());
  return true;
}

constexpr const char* kClientFields[] = {"ip", "port", "name", "helo", "esmtp", "auth_user", "listener", "session_id", "tls"};

bool envelope_has_from(const FilterContext& ctx) { return ctx.stage >= Stage::kMail && ctx.stage <= Stage::kEom; }

bool push_envelope_field(lua_State* L, const FilterContext& ctx, std::string_view key) {
  const TransactionFacts& t = ctx.transaction;
  if (key == "from" && envelope_has_from(ctx)) {
    push_address(L, t.reverse_path);
  } else if (key == "rcpt" && t.current_rcpt) {
    push_address(L, *t.current_rcpt);
  } else if (key == "rcpts") {
    push_array(L, t.recipients, [L](const Mailbox& m) { push_address(L, m); });
  } else if (key == "id") {
    lua_pushlstring(L, t.id.data(), t.id.size());
  } else {
    return false;
  }
  return true;
}

constexpr const char* kEnvelopeFields[] = {"from", "rcpts", "rcpt", "id"};

std::string_view view_key(lua_State* L) {
  std::size_t len = 0;
  const char* key = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &len) : "";
  return {key, len};
}

int client_index(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kClientMeta);
  if (!push_client_field(L, inv.ctx->session, view_key(L))) lua_pushnil(L);
  return 1;
}

int envelope_index(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kEnvelopeMeta);
  if (!push_envelope_field(L, *inv.ctx, view_key(L))) lua_pushnil(L);
  return 1;
}

// pairs(view): next over a table of every present field.
template <std::size_t N, typename Push>
int view_pairs(lua_State* L, const char* const (&fields)[N], Push push) {
  lua_pushcfunction(L, snapshot_next);
  lua_createtable(L, 0, static_cast<int>(N));
  for (const char* field : fields) {
    if (push(field)) lua_setfield(L, -2, field);
  }
  lua_pushnil(L);
  return 3;
}

int client_pairs(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kClientMeta);
  return view_pairs(L, kClientFields, [&](const char* f) { return push_client_field(L, inv.ctx->session, f); });
}

int envelope_pairs(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kEnvelopeMeta);
  return view_pairs(L, kEnvelopeFields, [&](const char* f) { return push_envelope_field(L, *inv.ctx, f); });
}

int client_newindex(lua_State* L) { return luaL_error(L, "ctx.client is read-only"); }

int envelope_newindex(lua_State* L) {
  return luaL_error(L, "ctx.envelope is read-only (use ctx:set_sender, ctx:add_rcpt, ctx:remove_rcpt)");
}

// ---- ctx fields

// The authenticity results the built-in filters recorded as symbols
// (SPF_PASS, DKIM_FAIL, DMARC_NONE, ...): {spf = "pass", dkim = "fail", ...};
// a method is absent until its filter has run.
void push_auth(lua_State* L, const TransactionFacts& t) {
  lua_createtable(L, 0, 3);
  static const char* const kResults[] = {"PASS", "FAIL", "SOFTFAIL", "NEUTRAL", "NONE", "TEMPERROR", "PERMERROR", "POLICY"};
  for (const char* method : {"SPF", "DKIM", "DMARC"}) {
    std::string prefix = std::string(method) + "_";
    for (const Symbol& sym : t.symbols) {
      if (sym.name.rfind(prefix, 0) != 0) continue;
      std::string result = sym.name.substr(prefix.size());
      bool known = false;
      for (const char* r : kResults) known = known || result == r;
      if (!known) continue;
      result = ascii::to_lower(result);
      const std::string field = ascii::to_lower(method);
      lua_getfield(L, -1, field.c_str());
      bool have = !lua_isnil(L, -1);
      lua_pop(L, 1);
      if (!have) set_string(L, field.c_str(), result);
    }
  }
}

void set_bool(lua_State* L, const char* key, bool value) {
  lua_pushboolean(L, value);
  lua_setfield(L, -2, key);
}

void set_integer(lua_State* L, const char* key, long long value) {
  lua_pushinteger(L, static_cast<lua_Integer>(value));
  lua_setfield(L, -2, key);
}

// ctx.spf, ctx.dkim, ctx.dmarc: the checks' full results as the audit log and
// Authentication-Results see them (filters/auth/auth_results.h); nil until
// the check has run. ctx.auth keeps the one-word summary.
void push_spf(lua_State* L, const SpfOutcome& s) {
  lua_createtable(L, 0, 8);
  set_string(L, "result", spf_result_name(s.result));
  set_string(L, "identity", s.identity);
  set_string(L, "sender", s.sender);
  set_string(L, "domain", s.domain);
  set_string(L, "client_ip", s.client_ip);
  set_string(L, "helo", s.helo);
  set_string(L, "explanation", s.explanation);
  set_string(L, "reason", s.reason);
}

void push_dkim(lua_State* L, const std::vector<DkimSignature>& sigs) {
  push_array(L, sigs, [L](const DkimSignature& d) {
    lua_createtable(L, 0, 11);
    set_string(L, "result", dkim_result_name(d.result));
    set_string(L, "domain", d.domain);
    set_string(L, "selector", d.selector);
    set_string(L, "algorithm", d.algorithm);
    set_string(L, "identity", d.identity);
    set_string(L, "b", d.b);
    set_string(L, "reason", d.reason);
    set_integer(L, "key_bits", d.key_bits);
    set_bool(L, "weak_key", d.weak_key);
    if (d.body_length >= 0) set_integer(L, "body_length", d.body_length);
    set_bool(L, "body_truncated", d.body_truncated);
  });
}

void push_dmarc(lua_State* L, const DmarcOutcome& d) {
  lua_createtable(L, 0, 9);
  set_string(L, "result", dmarc_result_name(d.result));
  set_string(L, "from_domain", d.from_domain);
  set_string(L, "org_domain", d.org_domain);
  set_string(L, "policy", d.policy);
  set_string(L, "disposition", d.disposition);
  set_bool(L, "spf_aligned", d.spf_aligned);
  set_bool(L, "dkim_aligned", d.dkim_aligned);
  set_string(L, "record_domain", d.record_domain);
  set_string(L, "reason", d.reason);
}

// ctx.arc (RFC 8617): the chain's result, its sets and the trusted sealer
// whose results overrode DMARC, as the audit log's "arc" object.
void push_arc(lua_State* L, const ArcOutcome& a) {
  lua_createtable(L, 0, 8);
  set_string(L, "result", arc_result_name(a.result));
  set_integer(L, "count", a.count);
  set_integer(L, "oldest_pass", a.oldest_pass);
  set_string(L, "reason", a.reason);
  set_string(L, "trusted_sealer", a.trusted_sealer);
  push_array(L, a.sets, [L](const ArcSet& set) { lua_pushstring(L, set.sealer.c_str()); });
  lua_setfield(L, -2, "sealers");
  push_array(L, a.sets, [L](const ArcSet& set) {
    lua_createtable(L, 0, 7);
    set_integer(L, "instance", set.instance);
    set_string(L, "sealer", set.sealer);
    set_string(L, "selector", set.selector);
    set_string(L, "ams_domain", set.ams_domain);
    set_string(L, "cv", set.cv);
    set_bool(L, "ams_valid", set.ams_valid);
    set_bool(L, "as_valid", set.as_valid);
  });
  lua_setfield(L, -2, "sets");
}

// The ctx fields kept for the rest of the call, each in its user value slot
// (1-based: kCtxCached[slot - 1] is the field's name).
enum CtxSlot : int { kNoSlot, kClientSlot, kEnvelopeSlot, kHeadersSlot, kBodySlot, kNotesSlot, kSessionNotesSlot,
                     kStageSlot, kRuleSlot };
constexpr const char* kCtxCached[] = {"client", "envelope", "headers", "body", "notes", "session_notes", "stage", "rule"};
constexpr int kCtxSlots = static_cast<int>(std::size(kCtxCached));
static_assert(kCtxSlots == kRuleSlot);

int ctx_index(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kCtxMeta);
  const char* key = luaL_checkstring(L, 2);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;  // a method
  lua_pop(L, 1);
  // What does not change during the call is built once and kept in one of
  // the ctx userdata's user values (bench/README.md).
  int slot = kNoSlot;
  for (int i = 0; i < kCtxSlots && slot == kNoSlot; ++i) {
    if (std::strcmp(key, kCtxCached[i]) == 0) slot = i + 1;
  }
  if (slot != kNoSlot) {
    if (lua_getiuservalue(L, 1, slot) != LUA_TNIL) return 1;
    lua_pop(L, 1);
  }
  FilterContext& ctx = *inv.ctx;
  bool cache = true;
  if (slot == kClientSlot) push_handle(L, inv, kClientMeta);
  else if (slot == kEnvelopeSlot) push_handle(L, inv, kEnvelopeMeta);
  else if (slot == kHeadersSlot && ctx.transaction.message) push_handle(L, inv, kHeadersMeta);
  else if (slot == kBodySlot && ctx.transaction.message && ctx.stage == Stage::kEom) push_handle(L, inv, kBodyMeta);
  else if (slot == kNotesSlot) push_handle(L, inv, kNotesMeta, false);
  else if (slot == kSessionNotesSlot) push_handle(L, inv, kNotesMeta, true);
  else if (slot == kStageSlot) lua_pushstring(L, stage_name(ctx.stage));
  else if (slot == kRuleSlot) lua_pushstring(L, inv.rule->info.name.c_str());
  else {
    cache = false;
    if (std::strcmp(key, "score") == 0) {
      lua_pushnumber(L, ctx.transaction.score);
    } else if (std::strcmp(key, "symbols") == 0) {
      push_array(L, ctx.transaction.symbols, [L](const Symbol& sym) {
        lua_createtable(L, 0, 3);
        set_string(L, "name", sym.name);
        lua_pushnumber(L, sym.score);
        lua_setfield(L, -2, "score");
        set_string(L, "description", sym.description);
      });
    } else if (std::strcmp(key, "auth") == 0) {
      push_auth(L, ctx.transaction);
    } else if (std::strcmp(key, "spf") == 0 || std::strcmp(key, "dkim") == 0 || std::strcmp(key, "dmarc") == 0) {
      const AuthResults& r = auth_results(ctx.transaction);
      if (key[1] == 'p' && r.spf) push_spf(L, *r.spf);
      else if (key[1] == 'k' && r.dkim_checked) push_dkim(L, r.dkim);
      else if (key[1] == 'm' && r.dmarc) push_dmarc(L, *r.dmarc);
      else lua_pushnil(L);
    } else if (std::strcmp(key, "arc") == 0) {
      if (auth_results(ctx.transaction).arc) push_arc(L, *auth_results(ctx.transaction).arc);
      else lua_pushnil(L);
    } else {
      lua_pushnil(L);
    }
  }
  if (cache) {
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, slot);
  }
  return 1;
}

int ctx_newindex(lua_State* L) {
  return luaL_error(L, "ctx.%s is read-only (use the ctx methods to change the message)", luaL_checkstring(L, 2));
}

}  // namespace

int snapshot_next(lua_State* L) {
  lua_settop(L, 2);
  return lua_next(L, 1) ? 2 : (lua_pushnil(L), 1);
}

void install_view(lua_State* L, const char* meta, lua_CFunction index, lua_CFunction newindex, lua_CFunction pairs,
                  int index_upvalues) {
  luaL_newmetatable(L, meta);
  lua_insert(L, -(index_upvalues + 1));  // below the upvalues, which the closure takes
  lua_pushcclosure(L, index, index_upvalues);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, newindex);
  lua_setfield(L, -2, "__newindex");
  if (pairs) {
    lua_pushcfunction(L, pairs);
    lua_setfield(L, -2, "__pairs");
  }
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}

void install_ctx_types(lua_State* L) {
  lua_newtable(L);  // the methods: ctx_index's upvalue
  for (auto& [n, fn] : std::initializer_list<std::pair<const char*, lua_CFunction>>{
           {"symbol", ctx_symbol}, {"has_symbol", ctx_has_symbol}, {"add_header", ctx_add_header},
           {"prepend_header", ctx_prepend_header}, {"change_header", ctx_change_header},
           {"remove_header", ctx_remove_header}, {"tag_subject", ctx_tag_subject}, {"add_rcpt", ctx_add_rcpt},
           {"remove_rcpt", ctx_remove_rcpt}, {"set_sender", ctx_set_sender}, {"redirect", ctx_redirect}}) {
    lua_pushcfunction(L, fn);
    lua_setfield(L, -2, n);
  }
  install_view(L, kCtxMeta, ctx_index, ctx_newindex, nullptr, 1);
  install_view(L, kClientMeta, client_index, client_newindex, client_pairs);
  install_view(L, kEnvelopeMeta, envelope_index, envelope_newindex, envelope_pairs);
  install_message_types(L);
}

void push_ctx(lua_State* L, Invocation& inv) {
  auto* h = static_cast<Handle*>(lua_newuserdatauv(L, sizeof(Handle), kCtxSlots));
  h->id = inv.id;
  h->session = false;
  luaL_setmetatable(L, kCtxMeta);
}

// One hit per symbol name and transaction; before MAIL, per session.
void add_symbol(FilterContext& ctx, Symbol s) {
  // No transaction yet: the session keeps it for each of its transactions.
  std::vector<Symbol>& have = ctx.stage < Stage::kMail ? ctx.session.symbols : ctx.transaction.symbols;
  for (const Symbol& h : have) {
    if (h.name == s.name) return;
  }
  if (ctx.stage < Stage::kMail) have.push_back(std::move(s));
  else ctx.transaction.add_symbol(std::move(s));
}

void carry_session_symbols(FilterContext& ctx) {
  if (ctx.transaction.session_symbols_taken) return;
  ctx.transaction.session_symbols_taken = true;
  for (const Symbol& s : ctx.session.symbols) {
    bool dup = false;
    for (const Symbol& have : ctx.transaction.symbols) dup = dup || have.name == s.name;
    if (!dup) ctx.transaction.add_symbol(s);
  }
}

}  // namespace postern
