// ARC (RFC 8617): the header-field parsing and chain structure (§5.2 steps
// 1-3), canonicalization, the A-R payload reader, and postern's sealer and
// verifier against each other with keys made by the openssl CLI. The
// independent implementation (dkimpy) is in tests/e2e/test_arc.py.
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>

#include "filters/arc/arc_chain.h"
#include "filters/arc/arc_seal.h"
#include "filters/arc/arc_verify.h"
#include "filters/auth/auth_results.h"
#include "filters/auth/authentication_results.h"

using namespace postern;

namespace {

std::string aar(unsigned i, const std::string& rest = "mx.example; spf=pass") {
  return "ARC-Authentication-Results: i=" + std::to_string(i) + "; " + rest + "\r\n";
}
std::string ams(unsigned i) {
  return "ARC-Message-Signature: i=" + std::to_string(i) + "; a=rsa-sha256; d=ex.org; s=s; h=from; bh=AA==; b=AA==\r\n";
}
std::string seal(unsigned i, const std::string& cv = "") {
  const std::string c = cv.empty() ? (i == 1 ? "none" : "pass") : cv;
  return "ARC-Seal: i=" + std::to_string(i) + "; cv=" + c + "; a=rsa-sha256; d=ex.org; s=s; b=AA==\r\n";
}
std::string set(unsigned i) { return seal(i) + ams(i) + aar(i); }

ArcStructure structure_of(const std::string& block, std::vector<HeaderField>& keep) {
  keep = split_header_block(block + "From: a@example.com\r\n\r\nbody\r\n");
  return arc_structure(keep);
}

}  // namespace

TEST_CASE("arc: instance of each ARC header field", "[arc]") {
  CHECK(arc_instance(ArcFieldKind::kAar, "i=1; mx.example; spf=pass") == 1u);
  CHECK(arc_instance(ArcFieldKind::kAar, " i = 50 ;mx") == 50u);
  CHECK(arc_instance(ArcFieldKind::kSeal, "i=7; cv=pass; a=rsa-sha256; d=x; s=y; b=z") == 7u);
  CHECK(arc_instance(ArcFieldKind::kAms, "a=rsa-sha256; i=2; d=x") == 2u);
  // out of range, signs, leading zeros, junk, no i=, a duplicated tag
  for (const char* bad : {"i=0; x", "i=51; x", "i=+1; x", "i=01; x", "i=1x; x", "i=; x", "x=1; i", "mx; spf=pass",
                          "i=100000000000000000000; x"}) {
    CAPTURE(bad);
    CHECK_FALSE(arc_instance(ArcFieldKind::kAar, bad));
  }
  CHECK_FALSE(arc_instance(ArcFieldKind::kSeal, "i=1; i=2; cv=none"));
  CHECK_FALSE(arc_instance(ArcFieldKind::kAms, "a=rsa-sha256; d=x"));
  CHECK_FALSE(arc_instance(ArcFieldKind::kAms, "i=1; garbage"));
  CHECK(arc_field_kind("arc-seal") == ArcFieldKind::kSeal);
  CHECK(arc_field_kind("ARC-MESSAGE-SIGNATURE") == ArcFieldKind::kAms);
  CHECK_FALSE(arc_field_kind("ARC-Sealed"));
}

TEST_CASE("arc: chain structure (RFC 8617 5.2 steps 1-3)", "[arc]") {
  std::vector<HeaderField> f;
  SECTION("no ARC field: none, no error") {
    auto s = structure_of("Subject: x\r\n", f);
    CHECK(s.fields == 0);
    CHECK(s.error.empty());
    CHECK(s.sets.empty());
  }
  SECTION("valid chains of 1, 2 and 50 sets, in any field order") {
    for (unsigned n : {1u, 2u, 50u}) {
      std::string block;
      for (unsigned i = n; i >= 1; --i) block += set(i);
      auto s = structure_of(block, f);
      CHECK(s.error.empty());
      REQUIRE(s.sets.size() == n);
      CHECK(s.sets[0][2]->raw == seal(1));
      CHECK(s.sets[n - 1][0]->raw == aar(n));
    }
    auto s = structure_of(aar(1) + seal(2) + ams(1) + aar(2) + seal(1) + ams(2), f);
    CHECK(s.error.empty());
    CHECK(s.sets.size() == 2);
  }
  SECTION("broken structures, each with its reason") {
    std::string fifty_one;
    for (unsigned i = 1; i <= 50; ++i) fifty_one += set(i);
    const std::vector<std::pair<std::string, std::string>> cases = {
        {set(2) + set(1) + set(1), "two ARC-Seal fields with i=1"},
        {set(1) + ams(1), "two ARC-Message-Signature fields with i=1"},
        {set(1) + set(3), "ARC set i=2 is missing"},
        {set(2), "ARC set i=1 is missing"},
        {set(1) + seal(2) + ams(2), "ARC set i=2 has no ARC-Authentication-Results"},
        {set(1) + seal(2) + aar(2), "ARC set i=2 has no ARC-Message-Signature"},
        {ams(1) + aar(1), "ARC set i=1 has no ARC-Seal"},
        {fifty_one + seal(51) + ams(51) + aar(51), "ARC-Seal without a valid i= (1-50)"},
        {"ARC-Authentication-Results: mx.example; spf=pass\r\n" + set(1),
         "ARC-Authentication-Results without a valid i= (1-50)"},
        {seal(1, "pass") + ams(1) + aar(1), "ARC-Seal i=1 has cv=pass, not none"},
        {set(1) + seal(2, "none") + ams(2) + aar(2), "ARC-Seal i=2 has cv=none, not pass"},
        {set(1) + seal(2, "fail") + ams(2) + aar(2), "ARC-Seal i=2 has cv=fail"},
        // cv=fail anywhere ends the chain, whatever follows (propagation)
        {set(1) + seal(2, "fail") + ams(2) + aar(2) + set(3), "ARC-Seal i=2 has cv=fail"},
        {set(1) + seal(2, "bogus") + ams(2) + aar(2), "ARC-Seal i=2 has cv=bogus, not pass"},
        {"ARC-Seal: i=1; a=rsa-sha256; d=x; s=y; b=AA==\r\n" + ams(1) + aar(1), "ARC-Seal i=1 has cv=(none), not none"},
    };
    for (const auto& [block, reason] : cases) {
      CAPTURE(block);
      auto s = structure_of(block, f);
      CHECK(s.error == reason);
      CHECK(s.sets.empty());
    }
  }
}

TEST_CASE("arc: relaxed header canonicalization and b= removal", "[arc]") {
  CHECK(relaxed_header("SubJect ", "SubJect :  a \t b\r\n\t c  \r\n") == "subject:a b c\r\n");
  CHECK(relaxed_header("X", "X:\r\n") == "x:\r\n");
  CHECK(relaxed_header("h", "h: from  :\tsubject : x \r\n") == "h:from : subject : x\r\n");
  CHECK(without_b_value("ARC-Seal: i=1; b=abc\r\n def; bh=keep; d=x\r\n") == "ARC-Seal: i=1; b=; bh=keep; d=x\r\n");
  CHECK(without_b_value("ARC-Seal: i=1; cv=none; b=abc\r\n\tdef\r\n") == "ARC-Seal: i=1; cv=none; b=\r\n");
  CHECK(without_b_value("X: bh=1; b =2") == "X: bh=1; b =");
}

TEST_CASE("arc: the fields an AMS signs", "[arc]") {
  const auto fields = split_header_block("Subject: one\r\nFrom: a@x\r\nsubject: two\r\nTo: b@y\r\n\r\n");
  REQUIRE(fields.size() == 4);
  auto ams = [](const std::string& tags) { return HeaderField{"ARC-Message-Signature",
                                                              "ARC-Message-Signature: " + tags + "\r\n"}; };
  // bottom-up per name, a name listed more often than present adds nothing
  CHECK(ams_signed_octets(fields, ams("i=1; c=relaxed/relaxed; h=subject:From:subject:subject; b=xyz")) ==
        "subject:two\r\nfrom:a@x\r\nsubject:one\r\narc-message-signature:i=1; c=relaxed/relaxed; "
        "h=subject:From:subject:subject; b=");
  CHECK(ams_signed_octets(fields, ams("i=1; h=To; b=xyz")) ==
        "To: b@y\r\nARC-Message-Signature: i=1; h=To; b=");  // c= absent: simple
  CHECK_FALSE(ams_signed_octets(fields, ams("i=1; h=from:arc-seal; b=")));
  CHECK_FALSE(ams_signed_octets(fields, ams("i=1; b=")));
  CHECK_FALSE(ams_signed_octets(fields, ams("i=1; i=1; h=from; b=")));
  std::string many = "i=1; h=from";
  for (int i = 0; i < 200; ++i) many += ":x";
  CHECK_FALSE(ams_signed_octets(fields, ams(many + "; b=")));
}

TEST_CASE("arc: authentication results payload", "[arc]") {
  auto r = parse_auth_res("i=2; lists.example.org (comment; here); spf=pass (sender ok) smtp.mailfrom=a@ex.com;\r\n"
                          " dkim=PASS header.d=ex.com header.s=\"s;1\"; dmarc=fail header.from=ex.com; arc=none");
  REQUIRE(r.size() == 4);
  CHECK((r[0].method == "spf" && r[0].result == "pass"));
  CHECK(r[0].props == std::vector<std::pair<std::string, std::string>>{{"smtp.mailfrom", "a@ex.com"}});
  CHECK((r[1].method == "dkim" && r[1].result == "pass"));
  CHECK(r[1].props.size() == 2);
  CHECK(r[1].props[1].second == "s 1");
  CHECK((r[2].method == "dmarc" && r[2].result == "fail"));
  CHECK(r[3].method == "arc");
  CHECK(parse_auth_res("mx.example; none").empty());
  CHECK(parse_auth_res("").empty());
  std::string many = "mx";
  for (int i = 0; i < 200; ++i) many += "; spf=pass";
  CHECK(parse_auth_res(many).size() == 64);
}

namespace {

struct SealKey {
  std::string dir, file;
  DkimSigningKey key;
  SealKey() {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/postern-arc-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir = templ;
    file = dir + "/k.pem";
    if (std::system(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " + file + " >/dev/null 2>&1")
                        .c_str()) != 0) {
      throw std::runtime_error("openssl genpkey failed");
    }
    key = DkimSigningKey{"seal.example.net", "arc", file, {}};
    if (std::string why = load_dkim_signing_key(key); !why.empty()) throw std::runtime_error(why);
  }
  ~SealKey() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  static SealKey& get() {
    static SealKey k;
    return k;
  }
};

struct Verified {
  Spool spool{1 << 20, ""};
  std::unique_ptr<Message> message;
  ArcOutcome outcome;
  explicit Verified(const std::string& content, const ArcKeys& keys) {
    spool.append(content);
    spool.finish();
    message = std::make_unique<Message>(spool);
    ArcStructure s = arc_structure(message->headers());
    if (!s.error.empty() || s.sets.empty()) {
      outcome.result = s.sets.empty() && s.error.empty() ? ArcResult::kNone : ArcResult::kFail;
      outcome.reason = s.error;
      return;
    }
    outcome = verify_arc_chain(message->headers(), s, spool, message->body_offset(), keys, 1024);
  }
};

// Seals `content` (header block + body) as postern's relay does.
std::string sealed(const ArcSealer& sealer, const std::string& content, const AuthResults& auth,
                   ArcSealOutcome* out = nullptr) {
  const std::size_t end = content.find("\r\n\r\n") + 4;
  Spool body(1 << 20, "");
  body.append(content.substr(end));
  body.finish();
  ArcSealOutcome o = sealer.seal(content.substr(0, end), body, 0, auth, "example.net", true, 1700000000);
  if (out) *out = o;
  return o.fields + content;
}

}  // namespace

TEST_CASE("arc: postern's seals verify, and break as they should", "[arc]") {
  SealKey& k = SealKey::get();
  ArcSealOptions options;
  options.mode = ArcSealMode::kAll;
  options.keys = {k.key};
  options.authserv_id = "mx.example.net";
  ArcSealer sealer(options);
  ArcKeys keys;
  keys["arc._domainkey.seal.example.net"] = DnsAnswer{DnsStatus::kOk, {dkim_public_record(k.key)}, 300, false};
  const std::string message =
      "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject:  hello\r\n   world\r\n"
      "Date: Tue, 24 Nov 2026 02:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nbody  line \r\n\r\n\r\n";
  AuthResults auth;
  auth.spf = SpfOutcome{SpfResult::kPass, "mailfrom", "alice@example.com", "example.com", "192.0.2.1", "h", "", ""};

  ArcSealOutcome first;
  const std::string one = sealed(sealer, message, auth, &first);
  REQUIRE(first.status == ArcSealOutcome::Status::kSealed);
  CHECK(first.instance == 1);
  CHECK(first.cv == "none");
  std::string unfolded = one;
  for (std::size_t p; (p = unfolded.find("\r\n ")) != std::string::npos;) unfolded.erase(p, 2);
  CHECK(unfolded.starts_with("ARC-Seal: i=1; cv=none; a=rsa-sha256; d=seal.example.net; s=arc; t=1700000000; b="));
  CHECK(unfolded.find("ARC-Authentication-Results: i=1; mx.example.net; spf=pass smtp.mailfrom=alice@example.com\r\n") !=
        std::string::npos);
  Verified v1(one, keys);
  CHECK(v1.outcome.reason == "");
  CHECK(v1.outcome.result == ArcResult::kPass);
  CHECK(v1.outcome.count == 1);
  CHECK(v1.outcome.oldest_pass == 0);

  // The next hop extends it: cv=pass, i=2.
  AuthResults auth2 = auth;
  auth2.arc = v1.outcome;
  ArcSealOutcome second;
  const std::string two = sealed(sealer, one, auth2, &second);
  REQUIRE(second.status == ArcSealOutcome::Status::kSealed);
  CHECK(second.instance == 2);
  CHECK(second.cv == "pass");
  Verified v2(two, keys);
  CHECK(v2.outcome.result == ArcResult::kPass);
  CHECK(v2.outcome.count == 2);

  SECTION("a changed body fails the newest AMS") {
    std::string t = two;
    t.replace(t.find("body  line"), 4, "BODY");
    Verified v(t, keys);
    CHECK(v.outcome.result == ArcResult::kFail);
    CHECK(v.outcome.reason == "ARC-Message-Signature i=2: body hash does not match (body changed)");
  }
  SECTION("white space the relaxed canonicalization ignores does not") {
    std::string t = two;
    t.replace(t.find("body  line"), 10, "body line");
    t.replace(t.find("Subject:  hello"), 15, "Subject: hello");
    Verified v(t, keys);
    CHECK(v.outcome.result == ArcResult::kPass);
  }
  SECTION("a changed signed header fails the newest AMS") {
    std::string t = two;
    t.replace(t.find("hello"), 5, "HELLO");
    Verified v(t, keys);
    CHECK(v.outcome.reason == "ARC-Message-Signature i=2: signature does not verify (header changed or wrong key)");
  }
  SECTION("a changed older AAR fails the seals") {
    std::string t = two;
    t.replace(t.find("i=1; mx.example.net; spf=pass"), 29, "i=1; mx.example.net; spf=fail");
    Verified v(t, keys);
    CHECK(v.outcome.reason == "ARC-Seal i=2: signature does not verify");
  }
  SECTION("a revoked or missing key fails") {
    ArcKeys revoked = keys;
    revoked["arc._domainkey.seal.example.net"].records = {"v=DKIM1; k=rsa; p="};
    CHECK(Verified(two, revoked).outcome.reason == "ARC-Message-Signature i=2: key revoked (empty p=)");
    CHECK(Verified(two, ArcKeys{}).outcome.reason ==
          "ARC-Message-Signature i=2: no answer for the key arc._domainkey.seal.example.net in time");
  }
  SECTION("a failed incoming chain is not extended; 50 sets are the end") {
    AuthResults failed = auth;
    failed.arc = ArcOutcome{};
    failed.arc->result = ArcResult::kFail;
    ArcSealOutcome o;
    CHECK(sealed(sealer, two, failed, &o) == two);
    CHECK(o.status == ArcSealOutcome::Status::kSkipped);
    CHECK(o.reason == "the incoming ARC chain fails");
    AuthResults unchecked = auth;
    sealed(sealer, two, unchecked, &o);
    CHECK(o.reason == "the incoming ARC chain was not validated ([arc] enabled = false)");
  }
  SECTION("trusted sealers and the DMARC override") {
    ArcOutcome o = v2.outcome;
    o.sets[0].aar = "mx.example.net; dmarc=pass header.from=example.com";
    o.sets[1].aar = "mx.example.net; spf=pass smtp.mailfrom=a@other.example; dkim=pass header.d=other.example";
    find_trusted_sealer(o, {"other.example"}, {"example.com"});
    CHECK(o.trusted_sealer.empty());
    find_trusted_sealer(o, {"seal.example.net"}, {"example.org"});  // dmarc=pass for another domain
    CHECK(o.trusted_sealer.empty());
    find_trusted_sealer(o, {"seal.example.net"}, {"example.com"});
    CHECK(o.trusted_sealer == "seal.example.net");
    CHECK(o.trusted_instance == 1);
    CHECK(o.trusted_saw == "dmarc=pass");
    // the trusted set's AMS no longer verifies and an untrusted one sealed after it: not believed
    ArcOutcome copied = v2.outcome;
    copied.sets[0].aar = "mx.example.net; dmarc=pass header.from=example.com";
    copied.sets[0].ams_valid = false;
    copied.sets[1].sealer = "attacker.example";
    copied.sets[1].aar = "mx.attacker.example; spf=none";
    find_trusted_sealer(copied, {"seal.example.net"}, {"example.com"});
    CHECK(copied.trusted_sealer.empty());
    // ... unless every later set is trusted too
    find_trusted_sealer(copied, {"seal.example.net", "attacker.example"}, {"example.com"});
    CHECK(copied.trusted_instance == 1);
    ArcOutcome d = v2.outcome;
    d.sets[1].aar = "mx; spf=fail; dkim=pass header.d=mail.example.com";
    find_trusted_sealer(d, {"seal.example.net"}, {"example.com"});
    CHECK(d.trusted_instance == 2);
    CHECK(d.trusted_saw == "dkim=pass header.d=mail.example.com");

    TransactionFacts t;
    auth_results(t).arc = o;
    DmarcOutcome dm;
    dm.result = DmarcResult::kFail;
    dm.policy = dm.disposition = "reject";
    CHECK(apply_arc_override(dm, t));
    CHECK(dm.disposition == "none");
    CHECK(dm.override_type == "local_policy");
    CHECK(dm.override_comment == "arc=pass as=seal.example.net i=1 dmarc=pass");
    auth_results(t).dmarc = dm;
    const std::string ar = authentication_results_value("mx.example.net", auth_results(t));
    CHECK(ar.find("; arc=pass (i=2 as=seal.example.net) header.oldest-pass=0") != std::string::npos);
    CHECK(ar.find("; dmarc=fail (p=reject dis=none override=local_policy: arc=pass as=seal.example.net i=1 "
                  "dmarc=pass)") != std::string::npos);
    auth_results(t).arc->result = ArcResult::kFail;
    DmarcOutcome again;
    again.result = DmarcResult::kFail;
    again.disposition = "reject";
    CHECK_FALSE(apply_arc_override(again, t));
    CHECK(again.disposition == "reject");
  }
}

#include "config_test_util.h"

TEST_CASE("arc: [arc] configuration", "[arc][config]") {
  using postern::test::config_error_of_text;
  using postern::test::load_config_text;
  auto c = load_config_text("[arc]\nenabled = true\ntimeout = 2.5\ntrusted_sealers = [\"Lists.Example.ORG\"]\n");
  CHECK(c->auth.arc.enabled);
  CHECK(c->auth.arc.timeout == std::chrono::milliseconds(2500));
  CHECK(c->auth.arc.trusted_sealers == std::vector<std::string>{"lists.example.org"});
  CHECK(c->auth.arc.sealer == nullptr);
  CHECK_FALSE(load_config_text("")->auth.arc.enabled);

  CHECK_THAT(config_error_of_text("[arc]\nseal = \"sometimes\"\n"), Catch::Contains("arc.seal"));
  CHECK_THAT(config_error_of_text("[arc]\nseal = \"all\"\n"), Catch::Contains("sealing needs a key"));
  CHECK_THAT(config_error_of_text("[arc]\ntrusted_sealers = [\"not a domain\"]\n"), Catch::Contains("arc.trusted_sealers"));
  CHECK_THAT(config_error_of_text("[arc]\ntrusted_sealers = \"lists.example.org\"\n"),
             Catch::Contains("expected a list of sealer domains"));
  CHECK_THAT(config_error_of_text("[arc]\ntimeout = 0\n"), Catch::Contains("arc.timeout"));
  CHECK_THAT(config_error_of_text("[arc]\nbogus = 1\n"), Catch::Contains("bogus"));
  CHECK_THAT(config_error_of_text("[arc]\nseal = \"all\"\n[[arc.sign]]\ndomain = \"example.net\"\nselector = \"s\"\n"
                                  "key_file = \"/nonexistent.key\"\n"),
             Catch::Contains("arc.sign.key_file"));

  SealKey& k = SealKey::get();
  auto sealed = load_config_text("[arc]\nseal = \"modified\"\n[[arc.sign]]\ndomain = \"example.net\"\nselector = \"arc\"\n"
                                 "key_file = \"" + k.file + "\"\n");
  REQUIRE(sealed->auth.arc.sealer != nullptr);
  CHECK(sealed->auth.arc.sealer->options().mode == ArcSealMode::kModified);
  // seal = "none" with a key: no sealer
  auto off = load_config_text("[arc]\n[[arc.sign]]\ndomain = \"example.net\"\nselector = \"arc\"\nkey_file = \"" + k.file +
                              "\"\n");
  CHECK(off->auth.arc.sealer == nullptr);
}

TEST_CASE("arc: ed25519-sha256 signatures (RFC 8463) and key record checks", "[arc]") {
  SealKey& k = SealKey::get();
  const std::string ed = k.dir + "/ed.pem", pub = k.dir + "/ed.pub";
  REQUIRE(std::system(("openssl genpkey -algorithm ED25519 -out " + ed + " >/dev/null 2>&1").c_str()) == 0);
  // p= is the raw 32-octet public key (RFC 8463 §4), the tail of the DER SubjectPublicKeyInfo
  REQUIRE(std::system(("openssl pkey -in " + ed + " -pubout -outform DER | tail -c 32 | base64 -w0 > " + pub).c_str()) == 0);
  auto slurp = [](const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    std::string out;
    char buf[4096];
    for (std::size_t n; f && (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
    if (f) std::fclose(f);
    return out;
  };
  auto key = ArcSigningKey::load(slurp(ed));
  REQUIRE(key);
  CHECK(std::string(key->algorithm()) == "ed25519-sha256");
  const std::string record = "v=DKIM1; k=ed25519; p=" + slurp(pub);
  auto b = key->sign("the signed octets");
  REQUIRE(b);
  CHECK(arc_verify_signature("ed25519-sha256", record, "the signed octets", *b, 1024) == "");
  CHECK(arc_verify_signature("ed25519-sha256", record, "the signed octetz", *b, 1024) == "signature does not verify");
  CHECK(arc_verify_signature("rsa-sha256", record, "the signed octets", *b, 1024) == "key type k=ed25519 does not match a=");
  // RSA: the key size floor, k= mismatch, revoked, junk
  auto rsa = ArcSigningKey::load(k.key.key_pem);
  REQUIRE(rsa);
  auto rb = rsa->sign("x");
  REQUIRE(rb);
  const std::string rsa_record = dkim_public_record(k.key);
  CHECK(arc_verify_signature("rsa-sha256", rsa_record, "x", *rb, 1024) == "");
  CHECK(arc_verify_signature("rsa-sha256", rsa_record, "x", *rb, 4096) == "RSA key of 2048 bits is below 4096");
  CHECK(arc_verify_signature("rsa-sha1", rsa_record, "x", *rb, 1024) == "unsupported algorithm a=rsa-sha1");
  CHECK(arc_verify_signature("rsa-sha256", "v=DKIM1; p=", "x", *rb, 1024) == "key revoked (empty p=)");
  CHECK(arc_verify_signature("rsa-sha256", "v=DKIM1; p=AAAA", "x", *rb, 1024) == "key p= does not parse");
  CHECK(arc_verify_signature("rsa-sha256", "v=DKIM2; p=AAAA", "x", *rb, 1024) == "key record v= is not DKIM1");
  CHECK(arc_verify_signature("rsa-sha256", rsa_record, "x", "!!!", 1024) == "b= is not base64");
  CHECK_FALSE(ArcSigningKey::load("not a key"));
}

// Not run by default: `postern_unit_tests "[.arc-bench]"` prints the CPU time
// (std::clock: the machine may be shared) of sealing and of verifying chains
// of 1, 10 and 50 sets (2048-bit RSA, 100 KB body).
TEST_CASE("arc: sealing and verification cost", "[.arc-bench]") {
  SealKey& k = SealKey::get();
  ArcSealOptions options;
  options.mode = ArcSealMode::kAll;
  options.keys = {k.key};
  options.authserv_id = "mx.example.net";
  ArcSealer sealer(options);
  ArcKeys keys;
  keys["arc._domainkey.seal.example.net"] = DnsAnswer{DnsStatus::kOk, {dkim_public_record(k.key)}, 300, false};
  std::string content = "From: a@example.com\r\nTo: b@example.net\r\nSubject: bench\r\n\r\n";
  for (int i = 0; i < 1600; ++i) content += "a line of body text, sixty-four octets long, more or less....\r\n";
  AuthResults auth;
  auto ms_since = [](std::clock_t t) { return 1000.0 * static_cast<double>(std::clock() - t) / CLOCKS_PER_SEC; };
  double seal_ms = 0;
  std::vector<std::pair<unsigned, double>> verify_ms;
  for (unsigned n = 1; n <= kArcMaxSets; ++n) {
    const std::clock_t t0 = std::clock();
    content = sealed(sealer, content, auth);
    seal_ms += ms_since(t0);
    const std::clock_t t1 = std::clock();
    Verified v(content, keys);
    const double ms = ms_since(t1);
    REQUIRE(v.outcome.result == ArcResult::kPass);
    if (n == 1 || n == 10 || n == 50) verify_ms.emplace_back(n, ms);
    auth.arc = v.outcome;
  }
  std::printf("arc bench: seal %.2f ms per set (100 KB body)\n", seal_ms / kArcMaxSets);
  for (auto [n, ms] : verify_ms) std::printf("arc bench: verify %u set(s) %.2f ms\n", n, ms);
}
