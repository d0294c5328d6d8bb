// The message-side objects of ctx: ctx.headers (decoded, raw), ctx.body
// (size; the MIME structure of the whole message with its attachments, and
// the text parts' text up to body_scan_limit octets; raw lines from the
// first body_scan_limit octets of the spool), and the notes tables.
#include <algorithm>
#include <cstring>

#include "filters/auth/auth_results.h"
#include "filters/filter_stats.h"
#include "filters/lua/lua_api_util.h"
#include "filters/lua/lua_internal.h"

namespace postern {
namespace {

constexpr std::size_t kMaxNotes = 256;
constexpr std::size_t kMaxNoteKey = 128;
constexpr std::size_t kMaxNoteValue = 4096;

// ---- headers

int headers_first(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kHeadersMeta);
  auto v = need_message(L, inv).first(luaL_checkstring(L, 2));
  if (!v) return lua_pushnil(L), 1;
  std::string decoded = mime::decode_header_value(*v, inv.tag.rt->options.header_value_limit);
  lua_pushlstring(L, decoded.data(), decoded.size());
  return 1;
}

int headers_all(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kHeadersMeta);
  auto values = need_message(L, inv).all(luaL_checkstring(L, 2));
  lua_createtable(L, static_cast<int>(values.size()), 0);
  for (std::size_t i = 0; i < values.size(); ++i) {
    std::string decoded = mime::decode_header_value(values[i], inv.tag.rt->options.header_value_limit);
    lua_pushlstring(L, decoded.data(), decoded.size());
    lua_rawseti(L, -2, static_cast<lua_Integer>(i + 1));
  }
  return 1;
}

int headers_raw(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kHeadersMeta);
  std::string name = luaL_checkstring(L, 2);
  lua_newtable(L);
  lua_Integer n = 0;
  for (const HeaderField& f : need_message(L, inv).headers()) {
    if (!header_name_equals(f.name, name)) continue;
    lua_pushlstring(L, f.raw.data(), std::min(f.raw.size(), inv.tag.rt->options.header_value_limit));
    lua_rawseti(L, -2, ++n);
  }
  return 1;
}

int headers_names(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kHeadersMeta);
  const auto& fields = need_message(L, inv).headers();
  lua_createtable(L, static_cast<int>(fields.size()), 0);
  for (std::size_t i = 0; i < fields.size(); ++i) {
    lua_pushlstring(L, fields[i].name.data(), fields[i].name.size());
    lua_rawseti(L, -2, static_cast<lua_Integer>(i + 1));
  }
  return 1;
}

int headers_count(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kHeadersMeta);
  std::string name = luaL_checkstring(L, 2);
  lua_Integer n = 0;
  for (const HeaderField& f : need_message(L, inv).headers()) n += header_name_equals(f.name, name);
  lua_pushinteger(L, n);
  return 1;
}

// ---- body

std::string_view scanned(lua_State* L, Invocation& inv) {
  if (!inv.scanned) {
    const Message& m = need_message(L, inv);
    inv.scanned = m.spool().head(inv.tag.rt->options.body_scan_limit, inv.scanned_copy);
  }
  return *inv.scanned;
}

// Octets of the spool fed to the structure reader at a time.
constexpr std::size_t kStructureReadBlock = 256 * 1024;

// The structure read for a transaction's message, kept for its other rule
// calls: two rules that call attachments() read a large message once.
struct StructureRead {
  const Message* message = nullptr;
  std::size_t size = 0;
  mime::TextBudget budget;
  std::shared_ptr<const mime::Structure> structure;
};

// The structure of the whole message, read once per message: a part that
// starts past body_scan_limit is listed too (an attachment after 10 MiB of
// padding is still an attachment). A message over kWalkElsewhereOver is read
// on the walk pool while the rule waits (true: the caller yields), because a
// hostile 50 MB message takes most of a second to walk (bench/README.md,
// thirteenth round) and the I/O thread serves every other session meanwhile;
// where the rule cannot yield (in a string.gsub callback or a metamethod) it
// is read here. So is a smaller message whose compressed files expand past
// kInlineDecompressed (a bzip2 file can take a fifth of a second): read
// here up to that, then again on the walk pool.
bool must_wait_for_structure(lua_State* L, Invocation& inv) {
  const Message& message = need_message(L, inv);
  const LuaOptions& o = inv.tag.rt->options;
  const mime::TextBudget budget{o.body_scan_limit, o.text_parts_max};
  StructureRead& read = inv.ctx->transaction.results.get<StructureRead>();
  const bool same = read.message == &message && read.size == message.size() &&
                    read.budget.text_limit == budget.text_limit && read.budget.text_parts_max == budget.text_parts_max;
  if (!inv.parts && same) inv.parts = read.structure;
  if (!inv.parts) {
    const Spool& spool = message.spool();
    const bool elsewhere = o.walk_pool && lua_isyieldable(L);
    auto wait_elsewhere = [&] {
      PendingOp op;
      op.kind = PendingOp::Kind::kStructure;
      op.spool = &spool;
      op.budget = budget;
      op.structure = &inv.parts;
      inv.pending = std::move(op);
      return true;
    };
    if (spool.size() > kWalkElsewhereOver && elsewhere) return wait_elsewhere();
    mime::Structure s = read_spool_structure(spool, budget, nullptr, kInlineDecompressed);
    filter_stats().mime_structure_read(false);
    if (s.decompression_limited) {
      if (elsewhere) return wait_elsewhere();
      s = read_spool_structure(spool, budget);
      filter_stats().mime_structure_read(false);
    }
    inv.parts = std::make_shared<const mime::Structure>(std::move(s));
  }
  read = StructureRead{&message, message.size(), budget, inv.parts};
  return false;
}

int body_size(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kBodyMeta);
  const Message& m = need_message(L, inv);
  lua_pushinteger(L, static_cast<lua_Integer>(m.size() - std::min(m.size(), m.body_offset())));
  return 1;
}

// The text parts, and whether they are all of the message's text, whole: a
// rule that looks for words must be able to tell a message padded with
// text_parts_max filler parts, or with body_scan_limit octets of text, from
// one it read whole.
int body_text_parts(lua_State* L);
int body_text_parts_k(lua_State* L, int, lua_KContext) { return body_text_parts(L); }

int body_text_parts(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kBodyMeta);
  if (must_wait_for_structure(L, inv)) return lua_yieldk(L, 0, 0, body_text_parts_k);
  const LuaOptions& o = inv.tag.rt->options;
  const mime::Structure& s = *inv.parts;
  bool complete = s.problem.empty() && s.text_whole;
  lua_newtable(L);
  lua_Integer n = 0;
  for (const mime::Part& p : s.parts) {
    if (p.type.rfind("text/", 0) != 0 || p.disposition == "attachment") continue;
    if (static_cast<std::size_t>(n) >= o.text_parts_max) {
      complete = false;
      break;
    }
    if (!p.body_whole && p.body.empty() && p.encoded_size > 0) continue;  // past the text budget: none kept
    bool cut = false;
    lua_createtable(L, 0, 4);
    set_string(L, "type", p.type);
    set_string(L, "charset", p.charset);
    set_string(L, "filename", p.filename);
    set_string(L, "text", mime::decoded_text(p, o.text_part_limit, &cut));
    lua_rawseti(L, -2, ++n);
    if (cut || !p.body_whole) complete = false;
  }
  lua_pushboolean(L, complete);
  return 2;
}

// A list that misses an attachment a mail reader shows would let it past
// every rule, so a structure not read whole (mime::Structure::problem) is an
// error: the rule's on_error applies, or the rule catches it with pcall.
int body_attachments(lua_State* L);
int body_attachments_k(lua_State* L, int, lua_KContext) { return body_attachments(L); }

int body_attachments(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kBodyMeta);
  if (must_wait_for_structure(L, inv)) return lua_yieldk(L, 0, 0, body_attachments_k);
  const mime::Structure& s = *inv.parts;
  if (!s.problem.empty()) return luaL_error(L, "attachments: MIME structure not read whole: %s", s.problem.c_str());
  lua_newtable(L);
  lua_Integer n = 0;
  for (const mime::Part& p : s.parts) {
    if (p.filename.empty() && p.disposition != "attachment") continue;
    lua_createtable(L, 0, 5);
    set_string(L, "filename", p.filename);
    // Every name a reader may show: filename, then the others.
    lua_createtable(L, static_cast<int>(1 + p.other_filenames.size()), 0);
    lua_pushlstring(L, p.filename.data(), p.filename.size());
    lua_rawseti(L, -2, 1);
    lua_Integer k = 1;
    for (const std::string& other : p.other_filenames) {
      lua_pushlstring(L, other.data(), other.size());
      lua_rawseti(L, -2, ++k);
    }
    lua_setfield(L, -2, "names");
    if (!p.archive.empty()) set_string(L, "archive", p.archive);
    if (p.unopened) {
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, "unopened");
    }
    set_string(L, "type", p.type);
    set_string(L, "disposition", p.disposition);
    lua_pushinteger(L, static_cast<lua_Integer>(p.encoded_size));
    lua_setfield(L, -2, "encoded_size");
    lua_rawseti(L, -2, ++n);
  }
  return 1;
}

int body_lines_next(lua_State* L) {
  Invocation& inv = check_handle(L, lua_upvalueindex(1), kBodyMeta);
  const std::string_view text = scanned(L, inv);
  auto pos = static_cast<std::size_t>(lua_tointeger(L, lua_upvalueindex(2)));
  if (pos >= text.size()) return 0;
  std::size_t eol = text.find('\n', pos);
  std::size_t next = eol == std::string::npos ? text.size() : eol + 1;
  std::size_t end = eol == std::string::npos ? text.size() : eol;
  if (end > pos && text[end - 1] == '\r') --end;
  lua_pushinteger(L, static_cast<lua_Integer>(next));
  lua_replace(L, lua_upvalueindex(2));
  lua_pushlstring(L, text.data() + pos, end - pos);
  return 1;
}

int body_lines(lua_State* L) {
  Invocation& inv = check_handle(L, 1, kBodyMeta);
  const Message& m = need_message(L, inv);
  lua_pushvalue(L, 1);
  lua_pushinteger(L, static_cast<lua_Integer>(m.body_offset()));
  lua_pushcclosure(L, body_lines_next, 2);
  return 1;
}

// ---- notes

// The notes behind a notes handle, and the authenticity results that show
// through them (null for the session's notes, which have none).
struct NotesView {
  std::map<std::string, std::string>& notes;
  const AuthResults* auth;
};

NotesView notes_of(lua_State* L, int idx) {
  Invocation& inv = check_handle(L, idx, kNotesMeta);
  if (static_cast<Handle*>(lua_touserdata(L, idx))->session) return {inv.ctx->session.notes, nullptr};
  return {inv.ctx->transaction.notes, &auth_results(inv.ctx->transaction)};
}

int notes_index(lua_State* L) {
  auto [notes, auth] = notes_of(L, 1);
  const char* key = luaL_checkstring(L, 2);
  auto it = notes.find(key);
  if (it != notes.end()) {
    lua_pushlstring(L, it->second.data(), it->second.size());
    return 1;
  }
  std::optional<std::string> note;
  if (auth) note = auth_note(*auth, key);
  if (note) lua_pushlstring(L, note->data(), note->size());
  else lua_pushnil(L);
  return 1;
}

int notes_newindex(lua_State* L) {
  auto [notes, auth] = notes_of(L, 1);
  std::size_t klen = 0;
  const char* key = luaL_checklstring(L, 2, &klen);
  if (klen == 0 || klen > kMaxNoteKey) return luaL_error(L, "a note key is 1 to %d octets", static_cast<int>(kMaxNoteKey));
  if (std::strncmp(key, "postern.", 8) == 0) return luaL_error(L, "note keys starting with \"postern.\" are reserved");
  if (auth && is_auth_note_key(key)) {
    return luaL_error(L, "note \"%s\" is an authenticity result (spf.*, dkim.*, dmarc.*) and read-only", key);
  }
  if (lua_isnil(L, 3)) {
    notes.erase(key);
    return 0;
  }
  std::size_t vlen = 0;
  const char* value = luaL_tolstring(L, 3, &vlen);
  if (vlen > kMaxNoteValue) return luaL_error(L, "a note value is at most %d octets", static_cast<int>(kMaxNoteValue));
  if (notes.size() >= kMaxNotes && !notes.count(key)) return luaL_error(L, "more than %d notes", static_cast<int>(kMaxNotes));
  notes[key] = std::string(value, vlen);
  return 0;
}

int notes_pairs(lua_State* L) {
  auto [notes, auth] = notes_of(L, 1);
  lua_pushcfunction(L, snapshot_next);
  lua_createtable(L, 0, static_cast<int>(notes.size()));
  for (auto& [k, v] : notes) {
    lua_pushlstring(L, v.data(), v.size());
    lua_setfield(L, -2, k.c_str());
  }
  if (auth) {
    for (auto& [k, v] : auth_notes(*auth)) {
      lua_pushlstring(L, v.data(), v.size());
      lua_setfield(L, -2, k.c_str());
    }
  }
  lua_pushnil(L);
  return 3;
}

void new_meta(lua_State* L, const char* name, std::initializer_list<std::pair<const char*, lua_CFunction>> methods) {
  luaL_newmetatable(L, name);
  lua_newtable(L);
  for (auto& [n, fn] : methods) {
    lua_pushcfunction(L, fn);
    lua_setfield(L, -2, n);
  }
  lua_setfield(L, -2, "__index");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}

}  // namespace

void install_message_types(lua_State* L) {
  new_meta(L, kHeadersMeta, {{"first", headers_first}, {"all", headers_all}, {"raw", headers_raw},
                             {"names", headers_names}, {"count", headers_count}});
  new_meta(L, kBodyMeta, {{"size", body_size}, {"text_parts", body_text_parts}, {"attachments", body_attachments},
                          {"lines", body_lines}});
  install_view(L, kNotesMeta, notes_index, notes_newindex, notes_pairs);
}

mime::Structure read_spool_structure(const Spool& spool, mime::TextBudget budget, const std::atomic<bool>* stop,
                                     std::size_t decompress_limit) {
  mime::StructureReader reader(spool.size(), budget, decompress_limit);
  const std::string_view memory = spool.in_memory() ? spool.memory() : std::string_view();
  std::string block(spool.in_memory() ? 0 : kStructureReadBlock, '\0');
  for (std::size_t offset = 0; offset < spool.size();) {
    if (stop && stop->load(std::memory_order_relaxed)) {
      reader.fail("the structure walk was stopped (postern is shutting down)");
      break;
    }
    std::string_view piece;
    if (spool.in_memory()) {
      piece = memory.substr(offset, kStructureReadBlock);
    } else {
      long n = spool.read(offset, block.data(), block.size());
      if (n <= 0) {
        reader.fail("the spooled message could not be read");
        break;
      }
      piece = std::string_view(block.data(), static_cast<std::size_t>(n));
    }
    reader.feed(piece);
    offset += piece.size();
  }
  return reader.finish();
}

}  // namespace postern
