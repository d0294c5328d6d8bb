"""The openspf SPF conformance suites through `postern check` (issue 16): every
test of the RFC 7208 suite, 203 of 203, and every test of the RFC 4408 suite,
against a real DNS server on loopback serving each scenario's zone
(spf_suite.py; the suites are read from Debian's python3-spf, never copied).
Where a test lists alternatives any of them counts; an RFC 4408 test answered
with its RFC 7208 alternative must be one RFC 7208 changed on purpose
(RFC4408_CHANGED, with the reason) or one whose answer depends on DNS order.

`postern check` runs the live proxy's code: make_auth_filters() builds the
same SpfFilter and SpfChecker for both (filters/audit/offline_check.cpp). The
RFC 7208 suite also runs through the live proxy (PROXY protocol for the
client address, EHLO, MAIL FROM, the audit log's SPF record), which must agree
with `postern check` on every test an SMTP client can send."""
from harness import POSTERN_BIN
from spf_suite import ORDER_DEPENDENT, RFC4408_CHANGED, load_suite, not_preferred, run_suite


def test_the_rfc7208_suite_passes_whole():
    results = {}
    outcomes = run_suite("rfc7208", POSTERN_BIN, results=results)
    assert len(outcomes) == 203
    assert {k: v for k, v in outcomes.items() if v} == {}
    # Classes of the issue, each answered as the suite wants (spot checks of
    # the run above, so a harness that answered nothing cannot pass).
    assert results["cidr4-0"] == "pass" and results["mx-cidr6-0-ip6"] == "pass"
    assert results["a-null"] == "permerror" and results["cidr4-032"] == "permerror"
    assert results["redirect-is-modifier"] == "permerror" and results["modifier-charset-good"] == "pass"
    assert results["mx-limit"] == "permerror" and results["exp-dns-error"] == "fail"
    # Behind a PTR of a documentation prefix (a zone libunbound answers itself
    # unless told otherwise): answered by the test DNS.
    assert results["bytes-bug"] == "pass"


def test_the_rfc4408_suite_passes_and_its_rfc7208_changes_are_the_listed_ones():
    results = {}
    outcomes = run_suite("rfc4408", POSTERN_BIN, results=results)
    tests = {k for _, _, t in load_suite("rfc4408") for k in t}
    assert set(outcomes) == tests and len(tests) == 191
    assert {k: v for k, v in outcomes.items() if v} == {}
    changed = not_preferred("rfc4408", results) - ORDER_DEPENDENT
    assert changed <= set(RFC4408_CHANGED), changed - set(RFC4408_CHANGED)
    # The RFC 7208 answers themselves, not by chance.
    assert results["spfonly"] == "none" and results["mx-limit"] == "permerror"


def live_outcomes(postern, sink, tmp_path, suite):
    """Each test of `suite` through the live proxy: the client address by the
    PROXY protocol, EHLO with the test's HELO, MAIL FROM with its sender, a
    message relayed to the sink; the SPF outcome from the audit log. A postern
    per scenario (no cache carries one zone's answers into the next).
    {test: (result, explanation)}, and the tests whose envelope the SMTP
    parser refused before SPF ran {test: reply}."""
    import json

    from harness import SmtpClient, check_reply, listener_ports, wait_until, write_config, IO_TIMEOUT
    from spf_suite import ZoneDns, data_payload_of

    outcomes, refused = {}, {}
    with ZoneDns() as dns:
        for n, (_, zone, tests) in enumerate(load_suite(suite)):
            dns.zone = zone
            audit = tmp_path / ("audit-%d.jsonl" % n)
            sections = {
                "server": {"hostname": "receiver.example.org"},
                "dns": {"servers": [dns.address], "timeout": 0.5, "retries": 0, "client_name": False},
                "spf": {"enabled": True, "timeout": 8, "reject_fail": False, "tempfail_temperror": False},
                "audit": {"path": str(audit), "fsync": "always"},
            }
            config = write_config(tmp_path / ("live-%d.toml" % n), [{"proxy_protocol": True}],
                                  upstream=sink.address, sections=sections)
            proc = postern.start(config=config, listen=())
            port = listener_ports(proc)[0]
            sent = {}
            for name, t in tests.items():
                host = str(t["host"])
                family = "TCP6" if ":" in host else "TCP4"
                c = SmtpClient(port, greeting=False)
                c.send("PROXY %s %s %s 40000 25\r\n" % (family, host, "::1" if family == "TCP6" else "127.0.0.1"))
                check_reply(c.read_reply(), 220)
                r = c.cmd("EHLO %s" % t["helo"])
                if r.code != 250:
                    refused[name] = str(r)
                    c.close()
                    continue
                r = c.cmd("MAIL FROM:<%s>" % t["mailfrom"])
                if r.code != 250:
                    refused[name] = str(r)
                    c.close()
                    continue
                c.expect("RCPT TO:<rcpt@receiver.example.org>", 250)
                c.expect("DATA", 354)
                c.send(data_payload_of(name))
                check_reply(c.read_reply(), 250)
                c.cmd("QUIT")
                c.close()
                sent[name] = True

            def written():
                return audit.exists() and len(audit.read_bytes().splitlines()) >= len(sent)
            wait_until(written, IO_TIMEOUT, message="audit records")
            for line in audit.read_bytes().splitlines():
                rec = json.loads(line)
                name = rec["message_id"].strip("<>").split("@")[0]
                outcomes[name] = (rec["spf"]["result"], rec["spf"]["explanation"])
            proc.stop()
    return outcomes, refused


def test_the_live_proxy_agrees_with_postern_check_on_the_rfc7208_suite(postern, sink, tmp_path):
    from spf_suite import verdict
    offline = {}
    run_suite("rfc7208", POSTERN_BIN, results=offline)
    live, refused = live_outcomes(postern, sink, tmp_path, "rfc7208")
    tests = {k: t for _, _, ts in load_suite("rfc7208") for k, t in ts.items()}
    assert set(live) | set(refused) == set(tests)
    print("live: %d compared; refused by the SMTP parser: %s" % (len(live), refused))
    # Senders no SMTP client can send (RFC 5321 §4.1.2): a local-part with a
    # space, an empty one, an empty label, a label over 63 octets. The proxy
    # answers 501 before any check; `postern check` takes them as given.
    assert set(refused) == {"dorky-sentinel", "nolocalpart", "emptylabel", "toolonglabel"}
    assert all(r.startswith("501 5.1.7") for r in refused.values()), refused
    assert {k: (live[k][0], offline[k]) for k in live
            if live[k][0] != offline[k] and k not in ORDER_DEPENDENT} == {}
    assert {k: verdict(tests[k], *live[k]) for k in live if verdict(tests[k], *live[k])} == {}
