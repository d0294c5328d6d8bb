// Fuzz target: the header section parser (Message over a Spool) and
// render_header_block (filters/message.h). The input is spooled message
// content (CRLF line ends, unstuffed); the spool's memory limit and the header
// edits derive from it, so seeds are plain header blocks / messages.
//
// Asserts:
//  - the parse is the same whether the spool is in memory or spilled to a file;
//  - the fields' raw texts, concatenated, are exactly the start of the content;
//    then comes the empty line ("\r\n") or nothing, then body_offset; each
//    field is "Name:" with Name of %d33-126 minus ':', its continuation lines
//    start with SP or HT, and it ends with CRLF; nothing is truncated;
//  - value() has no CRLF and no leading or trailing SP / HT; for content with
//    only CRLF line ends, no CR or LF at all; first() is all()[0];
//  - render_header_block with no changes is trace + content[0, body_offset);
//  - with header edits and a Subject tag, the rendered block followed by the
//    body re-parses to exactly the fields a model of the edits predicts
//    (trace, prepends, changed / removed / tagged originals, adds) and the
//    body starts right after the rendered block: no edit and no content can
//    fold into another field or move the body (header injection);
//  - no rendered line exceeds 998 octets when no received one did.
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"
#include "filters/message.h"
#include "filters/spool.h"
#include "fuzz_util.h"

using postern::Changes;
using postern::HeaderEdit;
using postern::HeaderField;
using postern::Message;
using postern::Spool;
using postern::fuzz::Choices;
using postern::fuzz::escape;

namespace {

std::string describe(const Message& m) {
  std::string s = "body_offset=" + std::to_string(m.body_offset()) +
                  " truncated=" + std::to_string(m.headers_truncated()) + " fields:";
  for (const HeaderField& f : m.headers()) s += "\n    [" + escape(f.name) + "] \"" + escape(f.raw) + "\"";
  return s;
}

bool crlf_only(std::string_view s) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r' && (i + 1 >= s.size() || s[i + 1] != '\n')) return false;
    if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')) return false;
  }
  return true;
}

bool same_parse(const Message& a, const Message& b) {
  if (a.body_offset() != b.body_offset() || a.headers_truncated() != b.headers_truncated() ||
      a.headers().size() != b.headers().size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.headers().size(); ++i) {
    if (a.headers()[i].name != b.headers()[i].name || a.headers()[i].raw != b.headers()[i].raw) return false;
  }
  return true;
}

void check_structure(std::string_view content, const Message& m) {
  auto where = [&] {
    return std::string("  content: \"" + escape(content) + "\"\n  got: " + describe(m));
  };
  FUZZ_CHECK(!m.headers_truncated(), where());
  std::string joined;
  for (const HeaderField& f : m.headers()) {
    joined += f.raw;
    // name, then WSP (obsolete syntax, RFC 5322 §4.5.3), then the colon
    std::size_t colon = f.name.size();
    while (colon < f.raw.size() && (f.raw[colon] == ' ' || f.raw[colon] == '\t')) ++colon;
    bool ok = !f.name.empty() && f.raw.size() >= colon + 3 && f.raw.compare(0, f.name.size(), f.name) == 0 &&
              f.raw[colon] == ':' && f.raw.substr(f.raw.size() - 2) == "\r\n";
    for (unsigned char c : f.name) ok = ok && c >= 33 && c <= 126 && c != ':';
    // Every line after the first is a continuation.
    for (std::size_t eol = f.raw.find("\r\n"); ok && eol + 2 < f.raw.size(); eol = f.raw.find("\r\n", eol + 2)) {
      ok = f.raw[eol + 2] == ' ' || f.raw[eol + 2] == '\t';
    }
    FUZZ_CHECK(ok, "malformed field [" + escape(f.name) + "] \"" + escape(f.raw) + "\"\n" + where());

    std::string value = f.value();
    bool value_ok = value.find("\r\n") == std::string::npos &&
                    (value.empty() || (value.front() != ' ' && value.front() != '\t' && value.back() != ' ' &&
                                       value.back() != '\t'));
    if (crlf_only(content)) value_ok = value_ok && value.find_first_of("\r\n") == std::string::npos;
    FUZZ_CHECK(value_ok, "value() \"" + escape(value) + "\" of \"" + escape(f.raw) + "\"\n" + where());
    auto first = m.first(f.name);
    auto all = m.all(f.name);
    FUZZ_CHECK(first && !all.empty() && *first == all.front(), "first()/all() of " + escape(f.name) + "\n" + where());
  }
  FUZZ_CHECK(content.substr(0, joined.size()) == joined, "fields are not the start of the content\n" + where());
  std::size_t gap = m.body_offset() - joined.size();
  FUZZ_CHECK(m.body_offset() >= joined.size() && m.body_offset() <= content.size() &&
                 (gap == 0 || (gap == 2 && content.substr(joined.size(), 2) == "\r\n")),
             where());
}

// The raw text a field gets when render_header_block writes it: folded by
// fold_header_field (its own unit tests pin the folding; here the model is
// about which fields land where).
std::string field(std::string_view name, std::string_view value) {
  return postern::fold_header_field(name, value);
}

// The fields render_header_block should produce, by the contract of Changes.
std::vector<std::string> model(const Message& m, const Changes& changes, const std::vector<std::string>& trace) {
  std::vector<std::string> out = trace;
  for (const HeaderEdit& e : changes.headers) {
    if (e.kind == HeaderEdit::Kind::kPrepend) out.push_back(field(e.name, e.value));
  }
  std::vector<std::size_t> seen(changes.headers.size(), 0);
  bool subject_done = changes.subject_tag.empty();
  for (const HeaderField& f : m.headers()) {
    bool removed = false;
    const HeaderEdit* replacement = nullptr;
    for (std::size_t i = 0; i < changes.headers.size(); ++i) {
      const HeaderEdit& e = changes.headers[i];
      if (e.kind != HeaderEdit::Kind::kChange && e.kind != HeaderEdit::Kind::kRemove) continue;
      if (!postern::header_name_equals(e.name, f.name)) continue;
      ++seen[i];
      if (e.index != 0 && e.index != seen[i]) continue;
      if (e.kind == HeaderEdit::Kind::kRemove) removed = true;
      else replacement = &e;
    }
    if (removed) continue;
    if (!subject_done && postern::header_name_equals(f.name, "Subject")) {
      subject_done = true;
      std::string value = replacement ? replacement->value : f.value();
      if (value.compare(0, changes.subject_tag.size(), changes.subject_tag) == 0) {
        out.push_back(replacement ? field(f.name, replacement->value) : f.raw);
      } else if (replacement) {
        out.push_back(field(f.name, changes.subject_tag + " " + value));
      } else {
        // The tag goes in front of the raw value: the field keeps its folds;
        // a first line that would pass 78 octets gets the tag on a line of
        // its own (RFC 5322 §2.1.1). The colon, not the name: WSP may stand
        // between them (obsolete syntax).
        std::string raw = f.raw;
        std::size_t at = raw.find(':') + 1;
        if (at < raw.size() && raw[at] == ' ') ++at;
        const std::size_t first_line = raw.find("\r\n");
        if (first_line != std::string::npos && first_line + changes.subject_tag.size() + 1 > 78 && at < first_line) {
          raw.insert(at, postern::fold_header_field("", changes.subject_tag).substr(2) + " ");
        } else {
          raw.insert(at, changes.subject_tag + " ");
        }
        out.push_back(raw);
      }
      continue;
    }
    out.push_back(replacement ? field(f.name, replacement->value) : f.raw);
  }
  if (!subject_done) out.push_back(field("Subject", changes.subject_tag));
  for (const HeaderEdit& e : changes.headers) {
    if (e.kind == HeaderEdit::Kind::kAdd) out.push_back(field(e.name, e.value));
  }
  return out;
}

Changes make_changes(const Message& m, Choices& choices) {
  static const char* const kNames[] = {"Subject", "X-Spam-Flag", "Received", "From", "To",
                                       "Authentication-Results", "x-spam-score"};
  static const char* const kValues[] = {"yes", "[SPAM] hello", "mx.example; spf=pass smtp.mailfrom=a.example",
                                        "", "a\tb", "folded by the Lua binding\r\n\tat 998 octets"};
  static const char* const kTags[] = {"", "", "[SPAM]", "***SPAM***"};
  Changes c;
  std::size_t n = choices.range(0, 4);
  for (std::size_t i = 0; i < n; ++i) {
    HeaderEdit e;
    e.kind = static_cast<HeaderEdit::Kind>(choices.range(0, 3));
    std::size_t pick = choices.range(0, std::size(kNames) + m.headers().size() - 1);
    e.name = pick < std::size(kNames) ? kNames[pick] : m.headers()[pick - std::size(kNames)].name;
    e.value = kValues[choices.range(0, std::size(kValues) - 1)];
    e.index = choices.range(0, 2);
    c.headers.push_back(std::move(e));
  }
  c.subject_tag = kTags[choices.range(0, std::size(kTags) - 1)];
  return c;
}

std::string spool_dir() {
  static const std::string dir = [] {
    const char* t = std::getenv("TMPDIR");
    return std::string(t && *t ? t : "/tmp");
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view content(reinterpret_cast<const char*>(data), size);
  Choices choices(content);

  Spool memory(size + 1, spool_dir());
  FUZZ_CHECK(memory.append(content) && memory.finish() && memory.in_memory(), "memory spool");
  Message m(memory);
  check_structure(content, m);
  if (choices.next() % 16 == 0) {  // sometimes through a spill file
    Spool file(0, spool_dir());
    FUZZ_CHECK(file.append(content.substr(0, size / 2)) && file.append(content.substr(size / 2)) && file.finish(),
               "spool write");
    Message f(file);
    FUZZ_CHECK(same_parse(m, f), "  content: \"" + escape(content) + "\"\n  memory: " + describe(m) +
                                     "\n  file: " + describe(f));
  }

  static const std::vector<std::string> kTraces[] = {
      {},
      {"Received: from client.example ([192.0.2.1])\r\n\tby mx.example (postern) with ESMTP id 1;\r\n"
       "\tTue, 24 Nov 2026 02:00:00 +0000\r\n"},
  };
  const std::vector<std::string>& trace_fields = kTraces[choices.range(0, 1)];
  std::string trace;
  for (const std::string& t : trace_fields) trace += t;

  // No changes: the header section exactly as received, after the trace; and
  // an empty line when the body would otherwise fold into the trace.
  std::string plain = postern::render_header_block(m, Changes{}, trace);
  FUZZ_EQ(plain, trace + std::string(content.substr(0, m.body_offset())) + (m.body_would_fold() ? "\r\n" : ""));

  // Edits: the rendered block plus the body must re-parse as the model says.
  Changes changes = make_changes(m, choices);
  std::string rendered = postern::render_header_block(m, changes, trace);
  std::string relayed = rendered + std::string(content.substr(m.body_offset()));
  Spool again_spool(relayed.size() + 1, spool_dir());
  again_spool.append(relayed);
  again_spool.finish();
  Message again(again_spool);
  std::vector<std::string> expected = model(m, changes, trace_fields);
  std::vector<std::string> got;
  for (const HeaderField& f : again.headers()) got.push_back(f.raw);
  std::string joined_expected;
  for (const std::string& e : expected) joined_expected += e;
  std::string edits;
  for (const HeaderEdit& e : changes.headers) {
    edits += "\n    kind=" + std::to_string(static_cast<int>(e.kind)) + " name=" + e.name + " value=\"" +
             escape(e.value) + "\" index=" + std::to_string(e.index);
  }
  // A body that starts with SP / HT right after the fields (no empty line)
  // folds into the last rendered field: reported as its own finding.
  std::string_view body = content.substr(m.body_offset());
  std::size_t field_bytes = 0;
  for (const HeaderField& f : m.headers()) field_bytes += f.raw.size();
  bool leading_wsp = m.body_offset() == field_bytes && !body.empty() && (body[0] == ' ' || body[0] == '\t');
  FUZZ_CHECK_NAMED(leading_wsp ? "render-body-folds-into-field" : "render-reparse",
                   got == expected && again.body_offset() == rendered.size(),
                   "  the relayed header section does not re-parse as rendered\n  content: \"" + escape(content) +
                       "\"\n  edits:" + edits + "\n  subject_tag=\"" + changes.subject_tag +
                       "\"\n  rendered: \"" + escape(rendered) + "\"\n  expected fields: \"" +
                       escape(joined_expected) + "\"\n  re-parsed: " + describe(again) +
                       "\n  (body should start at " + std::to_string(rendered.size()) + ")");

  // RFC 5322 §2.1.1: lines of at most 998 octets. If the received header
  // section keeps to it, so must the rendered one (edits here are short).
  auto longest_line = [](std::string_view text) {
    std::size_t longest = 0;
    for (std::size_t pos = 0; pos < text.size();) {
      std::size_t eol = text.find("\r\n", pos);
      if (eol == std::string_view::npos) eol = text.size();
      longest = std::max(longest, eol - pos);
      pos = eol + 2;
    }
    return longest;
  };
  if (longest_line(content.substr(0, m.body_offset())) <= 998) {
    FUZZ_CHECK_NAMED("render-line-length", longest_line(rendered) <= 998,
                     "  rendered header line longer than 998 octets (" + std::to_string(longest_line(rendered)) +
                         ")\n  content: \"" + escape(content, 2000) + "\"\n  subject_tag=\"" + changes.subject_tag +
                         "\"\n  rendered: \"" + escape(rendered, 2000) + "\"");
  }
  return 0;
}
