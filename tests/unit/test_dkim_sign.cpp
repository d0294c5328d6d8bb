// DKIM signing: keys made by the openssl CLI, signatures checked by postern's
// verifier against the public records served by a real unbound on loopback.
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "../auth/dns_test_server.h"
#include "filters/dkim/dkim_signer.h"
#include "filters/dkim/dkim_verifier.h"
#include "filters/dns/unbound_resolver.h"

using namespace postern;

namespace {

struct Keys {
  std::string dir;
  std::string rsa, ed, small, cert;
  Keys() {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/postern-dkimsign-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir = templ;
    rsa = dir + "/rsa.key", ed = dir + "/ed.key", small = dir + "/small.key", cert = dir + "/cert.pem";
    run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " + rsa);
    run("openssl genpkey -algorithm ED25519 -out " + ed);
    run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:512 -out " + small);
    run("openssl req -x509 -new -key " + rsa + " -subj /CN=x -days 1 -out " + cert);
  }
  ~Keys() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  static void run(const std::string& cmd) {
    if (std::system((cmd + " >/dev/null 2>&1").c_str()) != 0) throw std::runtime_error("failed: " + cmd);
  }
  static Keys& get() {
    static Keys k;
    return k;
  }
};

DkimSigningKey loaded(const std::string& domain, const std::string& selector, const std::string& file) {
  DkimSigningKey k{domain, selector, file, {}};
  std::string why = load_dkim_signing_key(k);
  if (!why.empty()) throw std::runtime_error(why);
  return k;
}

// unbound local-data: character-strings of at most 255 octets.
std::string txt_record(const std::string& name, const std::string& value) {
  std::string parts;
  for (std::size_t i = 0; i < value.size(); i += 200) parts += " \"" + value.substr(i, 200) + "\"";
  return name + " 300 IN TXT" + parts;
}

struct Signed {
  explicit Signed(const std::string& content) : spool(1 << 20, "") {
    spool.append(content);
    spool.finish();
  }
  Spool spool;
};

const std::string kHead =
    "From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: a signed\r\n message\r\n"
    "Date: Tue, 24 Nov 2026 05:00:00 +0000\r\nX-Not-Signed: 1\r\n\r\n";
const std::string kBody = "Hello,\r\n\r\n  with  spaces \t\r\n\r\n\r\n";

}  // namespace

TEST_CASE("dkim sign: key files are checked when the configuration loads", "[dkim][sign]") {
  Keys& k = Keys::get();
  DkimSigningKey rsa{"example.org", "s", k.rsa, {}};
  CHECK(load_dkim_signing_key(rsa).empty());
  CHECK_FALSE(rsa.ed25519);
  CHECK(rsa.bits == 2048);
  // libopendkim 2.11 leaks the key of every Ed25519 signature: refused.
  DkimSigningKey ed{"example.org", "s", k.ed, {}};
  CHECK(load_dkim_signing_key(ed).find("Ed25519 key; libopendkim 2.11 leaks") != std::string::npos);

  DkimSigningKey missing{"example.org", "s", k.dir + "/none.key", {}};
  CHECK(load_dkim_signing_key(missing).find("cannot read key file") != std::string::npos);
  DkimSigningKey cert{"example.org", "s", k.cert, {}};
  CHECK(load_dkim_signing_key(cert).find("no PEM private key") != std::string::npos);
  DkimSigningKey small{"example.org", "s", k.small, {}};
  CHECK(load_dkim_signing_key(small).find("512-bit RSA key") != std::string::npos);
}

TEST_CASE("dkim sign: the public record is what openssl derives", "[dkim][sign]") {
  Keys& k = Keys::get();
  std::string der = k.dir + "/pub.der";
  Keys::run("openssl pkey -in " + k.rsa + " -pubout -outform DER -out " + der);
  std::ifstream in(der, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Keys::run("openssl base64 -A -in " + der + " -out " + der + ".b64");
  std::ifstream b64(der + ".b64");
  std::string p;
  std::getline(b64, p);
  CHECK(dkim_public_record(loaded("example.org", "s", k.rsa)) == "v=DKIM1; k=rsa; p=" + p);
  DkimSigningKey edk{"example.org", "s", k.ed, {}};
  {
    std::ifstream e(k.ed);
    edk.key_pem.assign((std::istreambuf_iterator<char>(e)), std::istreambuf_iterator<char>());
  }
  std::string ed = dkim_public_record(edk);
  CHECK(ed.rfind("v=DKIM1; k=ed25519; p=", 0) == 0);
  CHECK(ed.size() == std::string("v=DKIM1; k=ed25519; p=").size() + 44);  // 32 octets in base64
}

TEST_CASE("dkim sign: who is signed and with which key", "[dkim][sign]") {
  Keys& k = Keys::get();
  DkimSignOptions o;
  o.keys = {loaded("Example.ORG", "a", k.rsa), loaded("mail.example.org", "b", k.rsa)};
  o.sign_networks = {"10.0.0.0/8", "192.0.2.7", "2001:db8::/32"};
  DkimSigner signer(o);
  CHECK(signer.wants("10.1.2.3", ""));
  CHECK(signer.wants("192.0.2.7", ""));
  CHECK_FALSE(signer.wants("192.0.2.8", ""));
  CHECK(signer.wants("::ffff:10.9.9.9", ""));  // IPv4 on a dual-stack socket
  CHECK(signer.wants("2001:db8:1::5", ""));
  CHECK_FALSE(signer.wants("2001:db9::5", ""));
  CHECK_FALSE(signer.wants("203.0.113.1", ""));
  CHECK(signer.wants("203.0.113.1", "alice"));
  CHECK_FALSE(signer.wants("not an ip", ""));

  REQUIRE(signer.key_for("example.org"));
  CHECK(signer.key_for("EXAMPLE.org")->selector == "a");
  CHECK(signer.key_for("mail.example.org")->selector == "b");
  CHECK(signer.key_for("x.mail.example.org")->selector == "b");
  CHECK(signer.key_for("news.example.org")->selector == "a");
  CHECK(signer.key_for("example.com") == nullptr);
  CHECK(signer.key_for("org") == nullptr);

  o.sign_authenticated = false;
  DkimSigner no_auth(o);
  CHECK_FALSE(no_auth.wants("203.0.113.1", "alice"));
  CHECK_FALSE(valid_network("10.0.0.0/33"));
  CHECK_FALSE(valid_network("example.org"));
  CHECK(valid_network("::1"));
}

TEST_CASE("dkim sign: signatures of two domains verify; a changed message does not", "[dkim][sign]") {
  Keys& k = Keys::get();
  DkimSigningKey rsa = loaded("example.org", "r1", k.rsa);
  DkimSigningKey ed = loaded("example.net", "e1", k.rsa);
  test::DnsTestServer dns({txt_record("r1._domainkey.example.org.", dkim_public_record(rsa)),
                           txt_record("e1._domainkey.example.net.", dkim_public_record(ed))});
  DnsOptions dopt;
  dopt.servers = {dns.address()};
  dopt.timeout = std::chrono::milliseconds(2000);
  DkimVerifier verifier(UnboundResolver::create(dopt, {}), DkimVerifyOptions{});
  DkimSignOptions o;
  o.keys = {rsa, ed};
  DkimSigner signer(o);

  for (const std::string domain : {"example.org", "example.net"}) {
    std::string head = kHead;
    head.replace(head.find("example.org"), 11, domain);
    Signed content(head + kBody);
    DkimSignOutcome out = signer.sign(head, content.spool, head.size());
    INFO(out.reason);
    REQUIRE(out.status == DkimSignOutcome::Status::kSigned);
    CHECK(out.domain == domain);
    CHECK(out.field.rfind("DKIM-Signature: v=1; a=", 0) == 0);
    CHECK(out.field.find("h=From:To:Subject:Date:From;") != std::string::npos);
    CHECK(out.field.find("X-Not-Signed") == std::string::npos);
    CHECK(out.field.substr(out.field.size() - 2) == "\r\n");

    Signed relayed(out.field + head + kBody);
    Message m(relayed.spool);
    auto sigs = verifier.verify(m, std::chrono::milliseconds(5000));
    REQUIRE(sigs.size() == 1);
    INFO(sigs[0].reason);
    CHECK(sigs[0].result == DkimResult::kPass);
    CHECK(sigs[0].algorithm == "rsa-sha256");
    CHECK(sigs[0].selector == (domain == "example.net" ? "e1" : "r1"));

    // relaxed canonicalization: refolding and white space changes still pass
    std::string refolded = head;
    refolded.replace(refolded.find("Subject: a signed\r\n message"), 27, "Subject:  a signed message");
    Signed loose(out.field + refolded + kBody);
    Message lm(loose.spool);
    CHECK(verifier.verify(lm, std::chrono::milliseconds(5000))[0].result == DkimResult::kPass);

    // an unsigned field may be added; a second From may not (oversigned)
    Signed added(out.field + "X-Later: ok\r\n" + head + kBody);
    Message am(added.spool);
    CHECK(verifier.verify(am, std::chrono::milliseconds(5000))[0].result == DkimResult::kPass);
    std::string two_from = head;
    two_from.insert(two_from.size() - 2, "From: mallory@evil.example\r\n");
    Signed forged(out.field + two_from + kBody);
    Message fm(forged.spool);
    CHECK(verifier.verify(fm, std::chrono::milliseconds(5000))[0].result == DkimResult::kFail);

    Signed body_changed(out.field + head + "Hello!\r\n");
    Message bm(body_changed.spool);
    CHECK(verifier.verify(bm, std::chrono::milliseconds(5000))[0].result == DkimResult::kFail);
  }
}

TEST_CASE("dkim sign: the body is read from the spool at the offset given", "[dkim][sign]") {
  Keys& k = Keys::get();
  DkimSignOptions o;
  o.keys = {loaded("example.org", "r1", k.rsa)};
  DkimSigner signer(o);
  // The spool holds the received header (here: different) followed by the body.
  std::string received_head = "From: x@example.org\r\nX-Orig: 1\r\n\r\n";
  Signed content(received_head + kBody);
  DkimSignOutcome a = signer.sign(kHead, content.spool, received_head.size());
  Signed direct(kHead + kBody);
  DkimSignOutcome b = signer.sign(kHead, direct.spool, kHead.size());
  REQUIRE(a.status == DkimSignOutcome::Status::kSigned);
  REQUIRE(b.status == DkimSignOutcome::Status::kSigned);
  auto bh = [](const std::string& f) {
    auto at = f.find("bh=");
    return f.substr(at, f.find(';', at) - at);
  };
  CHECK(bh(a.field) == bh(b.field));
}

TEST_CASE("dkim sign: messages it cannot sign are skipped with a reason", "[dkim][sign]") {
  Keys& k = Keys::get();
  DkimSignOptions o;
  o.keys = {loaded("example.org", "r1", k.rsa)};
  DkimSigner signer(o);
  auto skip = [&](const std::string& head) {
    Signed content(head + kBody);
    DkimSignOutcome out = signer.sign(head, content.spool, head.size());
    CHECK(out.status == DkimSignOutcome::Status::kSkipped);
    CHECK(out.field.empty());
    return out.reason;
  };
  CHECK(skip("To: bob@example.com\r\n\r\n") == "not exactly one From mailbox");
  CHECK(skip("From: a@example.org\r\nFrom: b@example.org\r\n\r\n") == "not exactly one From mailbox");
  CHECK(skip("From: a@example.org, b@example.org\r\n\r\n") == "not exactly one From mailbox");
  CHECK(skip("From: a@example.com\r\n\r\n") == "no signing key for the From domain");
  CHECK(header_block_from_domain("From: \"x\" <A@Example.ORG>\r\n\r\n") == "example.org");
  // A body without the empty line before it (a header section cut short, a
  // body starting with a non-field line): a verifier would split it elsewhere.
  std::string no_gap = "From: a@example.org\r\n";
  Signed content(no_gap + "X-Rest: of a cut header section\r\n\r\nbody\r\n");
  DkimSignOutcome cut = signer.sign(no_gap, content.spool, no_gap.size());
  CHECK(cut.status == DkimSignOutcome::Status::kSkipped);
  CHECK(cut.reason.find("not signable") != std::string::npos);
  // Header fields only, no body: signed.
  Signed bare(no_gap);
  CHECK(signer.sign(no_gap, bare.spool, no_gap.size()).status == DkimSignOutcome::Status::kSigned);
}
