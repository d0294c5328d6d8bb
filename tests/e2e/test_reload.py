"""Hot reload under load: SIGHUP recompiles the Lua rules while smtp-source
keeps sending through postern; no session is dropped, no message lost, and
a script that no longer compiles leaves the running rules in place."""
import signal
import time

from harness import SCALE, SmtpClient, SourceLoop, check_reply

RULE = """postern.rule{{ name = "TAG", stage = "eom", fn = function(ctx)
  ctx:add_header("X-Rule-Version", "{version}")
end }}
"""


def test_sighup_under_load_drops_nothing(postern, postfix_sink, tmp_path):
    sink = postfix_sink()
    script = tmp_path / "rules.lua"
    script.write_text(RULE.format(version=1))
    config = tmp_path / "postern.toml"
    config.write_text(f'[server]\nhostname = "mx.postern.test"\nshutdown_timeout = 3\n'
                      f'[upstream]\ntarget = "{sink.address}"\n[lua]\nscripts = ["{script}"]\n')
    p = postern.start(config=str(config))
    # the load runs until the reloads are done, however fast the machine is
    load = SourceLoop(f"127.0.0.1:{p.port}").start()
    try:
        for version in range(2, 6):
            time.sleep(0.15)
            script.write_text(RULE.format(version=version))
            p.proc.send_signal(signal.SIGHUP)
            assert load.running(), "the load stopped during the reloads: " + "; ".join(load.failures)
        # a broken script: the reload is refused, the version-5 rules stay
        time.sleep(0.15)
        script.write_text("postern.rule{ name = 'BROKEN', stage = 'eom', fn = function(ctx)\n")
        p.proc.send_signal(signal.SIGHUP)
        p.wait_for_log("reload-failed", timeout=10 * SCALE)
        assert load.running(), "the load stopped before the refused reload: " + "; ".join(load.failures)
    finally:
        total = load.stop()
    assert not load.failures, load.failures
    relayed = p.wait_for_log("message", result="relayed", count=total, timeout=20 * SCALE)
    assert len(relayed) == total
    assert not p.events("message", result="tempfailed")
    assert len(p.events("reloaded")) >= 1
    failed = p.wait_for_log("reload-failed", timeout=10 * SCALE)
    assert "rules.lua:" in failed.raw
    # new sessions still run the last rules that compiled
    c = SmtpClient(p.port)
    c.ehlo()
    check_reply(c.send_message("a@example.org", ["b@example.com"], b"Subject: after\r\n\r\nx\r\n"), 250)
