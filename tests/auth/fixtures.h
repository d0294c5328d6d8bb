// The DKIM/DMARC fixtures of the tests: messages signed by dkimpy (an
// independent implementation, tests/auth/dkim_fixtures.py) with the DNS
// records of their keys, generated once per test run.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "filters/message.h"
#include "filters/spool.h"

namespace postern::test {

std::string source_root();  // tests/unit/source_root.cpp

class AuthFixtures {
 public:
  static AuthFixtures& get() {
    static AuthFixtures f;
    return f;
  }
  const std::vector<std::string>& key_records() const { return records_; }
  std::string message(const std::string& name) const {
    std::ifstream in(dir_ + "/" + name + ".eml", std::ios::binary);
    if (!in) throw std::runtime_error("no fixture " + name);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  ~AuthFixtures() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

 private:
  AuthFixtures() {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/postern-dkim-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir_ = templ;
    auto script = std::filesystem::path(source_root()) / "tests" / "auth" / "dkim_fixtures.py";
    std::string cmd = "/usr/bin/python3 '" + script.string() + "' '" + dir_ + "'";
    if (std::system(cmd.c_str()) != 0) throw std::runtime_error("fixture generation failed: " + cmd);
    std::ifstream in(dir_ + "/records.txt");
    for (std::string line; std::getline(in, line);) {
      if (!line.empty()) records_.push_back(line);
    }
  }
  std::string dir_;
  std::vector<std::string> records_;
};

// A finished in-memory spool and its parsed message.
struct LoadedMessage {
  explicit LoadedMessage(const std::string& content) : spool(1 << 24, "/tmp") {
    spool.append(content);
    spool.finish();
    message = std::make_unique<Message>(spool);
  }
  Spool spool;
  std::unique_ptr<Message> message;
};

}  // namespace postern::test
