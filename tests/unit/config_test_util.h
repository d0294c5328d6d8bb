// Loading test configurations as a user's would be loaded: from a file, or
// from a TOML text written to a temporary file; and the ConfigError raised.
#pragma once

#include <memory>
#include <string>

#include "proxy/config.h"
#include "test_util.h"

namespace postern::test {

// The message of the ConfigError `source` raises, or "<no error>".
inline std::string config_error(const ConfigSource& source) {
  try {
    load_config(source);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "<no error>";
}

// The same for the file at `path`.
inline std::string config_error_at(const std::string& path) {
  ConfigSource source;
  source.path = path;
  return config_error(source);
}

// The configuration of `text`, read from a postern.toml in a fresh directory.
inline std::shared_ptr<const Config> load_config_text(const std::string& text) {
  TempDir dir;
  ConfigSource source;
  source.path = dir.write("postern.toml", text);
  return load_config(source);
}

// The ConfigError message of `text`, or "<no error>".
inline std::string config_error_of_text(const std::string& text) {
  TempDir dir;
  return config_error_at(dir.write("postern.toml", text));
}

}  // namespace postern::test
