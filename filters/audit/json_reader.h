// A small, bounded JSON reader (RFC 8259) for the audit log's own lines:
// I/O-free, never throws on bad input, depth- and size-limited. Numbers are
// doubles; strings are decoded to UTF-8 (\u escapes, surrogate pairs).
#pragma once

#include "filters/text/utf8.h"

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace postern {

struct JsonValue {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject } type = Type::kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<JsonValue> array;
  std::vector<std::pair<std::string, JsonValue>> object;  // in document order

  // The member named `key` of an object; null when absent or not an object.
  const JsonValue* get(std::string_view key) const;
  // Convenience for the report: the member as text / bool, `fallback` otherwise.
  std::string str(std::string_view key, std::string_view fallback = "") const;
  bool flag(std::string_view key) const;
};

struct JsonParse {
  bool ok = false;
  JsonValue value;
  std::string error;      // what was wrong, when !ok
  std::size_t offset = 0;  // where
};

constexpr std::size_t kJsonMaxDepth = 32;
constexpr std::size_t kJsonMaxInput = 1024 * 1024;

// Parses one complete JSON text (white space around it allowed).
JsonParse parse_json(std::string_view text);


}  // namespace postern
