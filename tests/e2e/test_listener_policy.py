"""Each listener has its own filter policy ([[listener]] policy): one postern
with three listeners and two rule sets; the rule each session ran shows in
the header the sink receives ("inbound" runs [lua], "submission" runs
[submission] from the first command, "none" runs nothing)."""
from harness import SmtpClient, check_reply, listener_ports, make_message, write_config

RULE = """postern.rule{{ name = "{name}", stage = "eom", fn = function(ctx)
  ctx:add_header("X-Policy", "{name}")
end }}
"""


def test_each_listener_runs_its_own_policy(postern, sink, tmp_path):
    inbound = tmp_path / "inbound.lua"
    inbound.write_text(RULE.format(name="INBOUND"))
    submission = tmp_path / "submission.lua"
    submission.write_text(RULE.format(name="SUBMISSION"))
    config = write_config(tmp_path / "postern.toml",
                          [{"policy": "inbound"}, {"policy": "submission"}, {"policy": "none"}],
                          upstream=sink.address,
                          sections={"lua": {"scripts": [str(inbound)]},
                                    "submission": {"scripts": [str(submission)]}})
    p = postern.start(config=config, listen=())
    ports = listener_ports(p)
    assert len(ports) == 3
    seen = []
    for port in ports:
        c = SmtpClient(port)
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message(str(port))), 250)
        c.expect("QUIT", 221)
        lines = [l for l in sink.messages[-1].content.split(b"\r\n") if l.startswith(b"X-Policy:")]
        seen.append([l.split(b":", 1)[1].strip().decode() for l in lines])
    assert seen == [["INBOUND"], ["SUBMISSION"], []]


def test_an_unknown_policy_is_a_config_error_with_its_line(tmp_path):
    from harness import run_cli
    path = tmp_path / "bad.toml"
    path.write_text('[[listener]]\naddress = "127.0.0.1:0"\npolicy = "outbound"\n')
    r = run_cli(["config", "check", str(path)])
    assert r.returncode == 1
    assert f"{path}:3:" in r.stderr and "listener.policy" in r.stderr and '"inbound"' in r.stderr, r.stderr
