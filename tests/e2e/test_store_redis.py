"""The shared store: postern.store in a real redis-server (started by the
test on a free loopback port), and the embedded store persisted to LMDB.

Two postern instances sharing one Redis enforce one per-client rate limit
together; Redis killed mid-run applies [store] on_error (continue: mail
flows; tempfail: 451 4.3.0), is logged, crashes nothing, and postern
recovers when Redis comes back; greylisting state survives a restart of a
postern whose store is persisted to an LMDB file.
"""

import pathlib
import signal

from harness import (IO_TIMEOUT, SmtpClient, check_reply, data_payload, free_port, listener_ports,
                     make_message, wait_until, write_config)
from prometheus import scrape
from redis_server import RedisServer

DEFAULT_RULES = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "default"
RATELIMIT = DEFAULT_RULES / "30_ratelimit.lua"
GREYLIST = DEFAULT_RULES / "40_greylist.lua"
LIMIT = 10


def start_postern(postern, tmp_path, sink, name, store, scripts, settings=None, threads=0, metrics=None):
    # threads = 1: one Redis connection, so "connected again" is one log line.
    sections = {"server": {"threads": threads}, "lua": {"scripts": [str(s) for s in scripts]},
                "store": store}
    if metrics:
        sections["metrics"] = {"address": f"127.0.0.1:{metrics}"}
    for key, values in (settings or {}).items():
        sections[f"lua.settings.{key}"] = values
    cfg = write_config(tmp_path / f"{name}.toml", [{}], upstream=sink.address, sections=sections)
    p = postern.start(config=cfg, listen=())
    p.port = listener_ports(p)[0]
    return p


def redis_store(redis, on_error="continue"):
    # A short reconnect ceiling so recovery shows within the test's time.
    return {"backend": "redis", "redis_address": redis.address, "on_error": on_error,
            "redis_timeout": 1, "redis_reconnect_max": 0.5}


def send(port, n):
    """Sends a message; returns the reply to MAIL FROM when it is not 250,
    else the final reply to DATA."""
    with SmtpClient(port) as c:
        c.ehlo()
        reply = c.cmd("MAIL FROM:<sender@example.org>")
        if reply.code != 250:
            return reply
        c.expect("RCPT TO:<rcpt@example.com>", 250)
        c.expect("DATA", 354)
        c.send(data_payload(make_message(subject=f"msg {n}")))
        return c.read_reply()


def store_errors(p):
    """The store-error lines logged so far; waits for the first one (the
    log is read by another thread)."""
    found = lambda: [l for l in p.events("lua") if "store-error" in (l.get("line") or "")]
    return wait_until(found, IO_TIMEOUT, message="a store-error log line")


def test_two_instances_share_one_rate_limit(postern, sink, redis, tmp_path):
    settings = {"ratelimit": {"messages": LIMIT, "window": 86400}}
    a = start_postern(postern, tmp_path, sink, "a", redis_store(redis), [RATELIMIT], settings)
    b = start_postern(postern, tmp_path, sink, "b", redis_store(redis), [RATELIMIT], settings)
    replies = [send(a.port, i) for i in range(6)] + [send(b.port, 6 + i) for i in range(6)]
    codes = [r.code for r in replies]
    assert codes == [250] * LIMIT + [451, 451], codes
    for r in replies[LIMIT:]:
        check_reply(r, 451, "4.7.1")
        assert "Too many messages" in r.text
    assert len(sink.messages) == LIMIT
    # One counter in Redis, under the configured prefix, counted by both.
    keys = redis.keys("postern:rate:*")
    assert len(keys) == 1, keys
    assert keys[0].startswith("postern:rate:ip:127.0.0.1:")
    assert int(redis.cli("GET", keys[0])) == 12
    assert 0 < int(redis.cli("TTL", keys[0])) <= 86400
    assert b.events("store-redis-connected") and a.events("store-redis-connected")


def test_redis_outage_with_continue_lets_mail_flow_and_recovers(postern, sink, redis, tmp_path):
    settings = {"ratelimit": {"messages": LIMIT, "window": 86400}}
    metrics_port = free_port()
    p = start_postern(postern, tmp_path, sink, "c", redis_store(redis, "continue"), [RATELIMIT], settings,
                      threads=1, metrics=metrics_port)
    check_reply(send(p.port, 0), 250)
    before = scrape(metrics_port)
    assert before.value("postern_store_redis_connections") == 1
    assert before.value("postern_store_calls_total") >= 1 and before.value("postern_store_errors_total") == 0
    assert len(redis.keys("postern:rate:*")) == 1
    redis.kill()
    for i in range(3):
        check_reply(send(p.port, 1 + i), 250)
    assert len(sink.messages) == 4
    assert p.alive()
    p.wait_for_log("store-redis-disconnected")
    errors = store_errors(p)
    assert errors and all("policy=continue" in l.get("line") for l in errors)
    assert "rule=RATELIMIT" in errors[0].get("line")
    during = scrape(metrics_port)   # the outage is visible to Prometheus
    assert during.value("postern_store_errors_total") >= 3
    assert during.value("postern_store_redis_connections") == 0
    # Redis comes back (empty): postern reconnects by itself and counts again.
    redis.start()
    p.wait_for_log("store-redis-connected", count=2, timeout=IO_TIMEOUT)
    check_reply(send(p.port, 10), 250)
    wait_until(lambda: redis.keys("postern:rate:*"), IO_TIMEOUT, message="the counter back in Redis")
    assert int(redis.cli("GET", redis.keys("postern:rate:*")[0])) == 1
    after = scrape(metrics_port)
    assert after.value("postern_store_redis_connections") == 1
    assert after.value("postern_store_reconnects_total") >= 1


def test_redis_outage_with_tempfail_defers_and_recovers(postern, sink, redis, tmp_path):
    settings = {"ratelimit": {"messages": LIMIT, "window": 86400}}
    p = start_postern(postern, tmp_path, sink, "d", redis_store(redis, "tempfail"), [RATELIMIT], settings,
                      threads=1)
    check_reply(send(p.port, 0), 250)
    redis.kill()
    for i in range(2):
        check_reply(send(p.port, 1 + i), 451, "4.3.0")
    assert len(sink.messages) == 1
    assert p.alive()
    errors = store_errors(p)
    assert errors and all("policy=tempfail" in l.get("line") for l in errors)
    redis.start()
    p.wait_for_log("store-redis-connected", count=2, timeout=IO_TIMEOUT)
    check_reply(send(p.port, 3), 250)
    assert len(sink.messages) == 2


def test_greylisting_survives_a_restart_with_lmdb(postern, sink, tmp_path):
    store_file = tmp_path / "store.lmdb"
    # A commit interval longer than the test: what survives was written at shutdown.
    store = {"backend": "memory", "persist": str(store_file), "persist_interval": 600}
    # delay = 0: the retry passes at once, so only a forgotten triplet defers it.
    settings = {"greylist": {"delay": 0}}
    p = start_postern(postern, tmp_path, sink, "g1", store, [GREYLIST], settings)
    with SmtpClient(p.port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<first@example.org>", 250)
        c.expect("RCPT TO:<rcpt@example.com>", 451, "4.7.1")
    p.stop()
    assert store_file.exists()
    p2 = start_postern(postern, tmp_path, sink, "g2", store, [GREYLIST], settings)
    loaded = p2.wait_for_log("store")
    assert loaded.get("persist") == str(store_file) and int(loaded.get("loaded")) >= 1
    with SmtpClient(p2.port) as c:
        c.ehlo()
        reply = c.send_message("first@example.org", ["rcpt@example.com"], make_message(subject="retry"))
        check_reply(reply, 250)
        # An unknown triplet is still greylisted: the store is not just empty.
        c.expect("MAIL FROM:<other@example.org>", 250)
        c.expect("RCPT TO:<rcpt@example.com>", 451, "4.7.1")
    assert len(sink.messages) == 1


def test_redis_down_at_start_then_up(postern, sink, tmp_path):
    redis = RedisServer(tmp_path)  # its port, nothing listening yet
    settings = {"ratelimit": {"messages": LIMIT, "window": 86400}}
    p = start_postern(postern, tmp_path, sink, "e", redis_store(redis, "continue"), [RATELIMIT], settings,
                      threads=1)
    try:
        check_reply(send(p.port, 0), 250)
        unreachable = p.wait_for_log("store-redis-unreachable")
        assert unreachable.get("address") == redis.address
        assert store_errors(p)
        redis.start()
        p.wait_for_log("store-redis-connected", timeout=IO_TIMEOUT)
        check_reply(send(p.port, 1), 250)
        keys = redis.keys("postern:rate:*")
        assert len(keys) == 1 and int(redis.cli("GET", keys[0])) == 1
    finally:
        redis.stop()


def test_a_hung_redis_times_out_per_call(postern, sink, redis, tmp_path):
    """SIGSTOP: the socket stays open, no reply comes. Each call ends at
    redis_timeout with the policy applied; after SIGCONT mail is counted again."""
    settings = {"ratelimit": {"messages": LIMIT, "window": 86400}}
    store = dict(redis_store(redis, "tempfail"), redis_timeout=1)
    p = start_postern(postern, tmp_path, sink, "f", store, [RATELIMIT], settings, threads=1)
    check_reply(send(p.port, 0), 250)
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        check_reply(send(p.port, 1), 451, "4.3.0")
        errors = store_errors(p)
        assert errors and "time-out after 1000 ms" in errors[0].get("line"), errors
        assert p.alive()
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: send(p.port, 2).code == 250, IO_TIMEOUT, interval=0.2,
               message="mail counted again after SIGCONT")
    assert len(sink.messages) >= 2


def test_a_persist_file_in_use_by_another_instance_is_refused(postern, sink, tmp_path):
    store = {"backend": "memory", "persist": str(tmp_path / "store.lmdb")}
    start_postern(postern, tmp_path, sink, "h1", store, [GREYLIST])
    cfg = write_config(tmp_path / "h2.toml", [{}], upstream=sink.address,
                       sections={"lua": {"scripts": [str(GREYLIST)]}, "store": store})
    second = postern.start(config=cfg, listen=(), wait=False)
    assert second.wait_exit(10) == 1
    assert "is in use by another postern process" in second.log_tail()
    second.stopped = True


def test_a_reload_keeps_the_running_store(postern, sink, tmp_path):
    """Counters survive SIGHUP; a changed [store] waits for a restart."""
    settings = {"ratelimit": {"messages": 1, "window": 86400}}
    p = start_postern(postern, tmp_path, sink, "r", {"backend": "memory"}, [RATELIMIT], settings)
    check_reply(send(p.port, 0), 250)
    write_config(tmp_path / "r.toml", [{}], upstream=sink.address,
                 sections={"lua": {"scripts": [str(RATELIMIT)]},
                           "lua.settings.ratelimit": {"messages": 1, "window": 86400},
                           "store": {"backend": "redis", "redis_address": "127.0.0.1:1"}})
    p.send_signal(signal.SIGHUP)
    p.wait_for_log("reloaded")
    p.wait_for_log("store-change-needs-restart", backend="memory")
    # Still the in-process counter: the client is over its limit of 1.
    check_reply(send(p.port, 1), 451, "4.7.1")


def test_values_are_bounded_in_redis_and_in_memory(postern, sink, redis, tmp_path):
    """[store] max_value bounds every backend's values, max_bytes the in-process
    store's total (issue 17: 4,000 values of 64 KiB a message grew RSS by 250 MB)."""
    rule = tmp_path / "hoard.lua"
    rule.write_text(
        'postern.rule{ name = "HOARD", stage = "eom", on_error = "continue", fn = function(ctx)\n'
        '  local ok = pcall(postern.store.set, "big:" .. ctx.envelope.id, ("x"):rep(1025))\n'
        '  postern.store.set("fits:" .. ctx.envelope.id, ("y"):rep(1024))\n'
        '  ctx:add_header("X-Hoard", ok and "stored" or "refused")\n'
        'end }\n')
    for name, store in (("redis", dict(redis_store(redis), max_value=1024)),
                        ("memory", {"max_value": 1024, "max_bytes": 65536})):
        p = start_postern(postern, tmp_path, sink, name, store, [rule])
        for n in range(3):
            check_reply(send(p.port, n), 250)
        p.stop()
    got = sink.wait_messages(6)
    for m in got:
        assert b"X-Hoard: refused" in m.content, m.content[:300]
    fits = redis.keys("postern:fits:*")
    assert len(fits) == 3, fits
    assert all(redis.cli("STRLEN", k).strip() == "1024" for k in fits)
    assert redis.keys("postern:big:*") == []
