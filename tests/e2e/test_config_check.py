"""`postern config check` refuses what `postern run` would refuse, beyond the
file's own keys: a TLS key that does not match its certificate, and a rule
script (of either policy) that does not compile. Each problem names the file
and what to fix; a good configuration passes."""
from harness import make_cert, run_cli, write_config

GOOD_RULE = 'postern.rule{ name = "OK", stage = "eom", fn = function(ctx) end }\n'
BROKEN_RULE = 'postern.rule{ name = "BROKEN", stage = "eom", fn = function(ctx)\n'


def _config(tmp_path, tls=None, lua=None, submission=None):
    sections = {}
    if lua is not None:
        sections["lua"] = {"scripts": [str(lua)]}
    if submission is not None:
        sections["submission"] = {"scripts": [str(submission)]}
    listener = {"tls": "starttls"} if tls else {}
    return write_config(tmp_path / "postern.toml", [listener], upstream="127.0.0.1:10025",
                        tls=tls, sections=sections)


def test_a_good_configuration_passes(tmp_path):
    cert, key, _ = make_cert(tmp_path, "a")
    rules = tmp_path / "rules.lua"
    rules.write_text(GOOD_RULE)
    path = _config(tmp_path, tls={"cert_file": cert, "key_file": key}, lua=rules, submission=rules)
    r = run_cli(["config", "check", path])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: ok"


def test_a_key_that_does_not_match_its_certificate_is_refused(tmp_path):
    cert, _, _ = make_cert(tmp_path, "a")
    _, other_key, _ = make_cert(tmp_path, "b")
    path = _config(tmp_path, tls={"cert_file": cert, "key_file": other_key})
    r = run_cli(["config", "check", path])
    assert r.returncode == 1
    assert "tls.key_file" in r.stderr and "does not match the certificate" in r.stderr, r.stderr
    assert other_key in r.stderr and path in r.stderr


def test_a_rule_script_that_does_not_compile_is_refused_with_its_line(tmp_path):
    rules = tmp_path / "rules.lua"
    rules.write_text(BROKEN_RULE)
    r = run_cli(["config", "check", _config(tmp_path, lua=rules)])
    assert r.returncode == 1
    assert f"{rules}:" in r.stderr, r.stderr
    assert ": ok" not in r.stdout


def test_a_broken_submission_script_is_refused_too(tmp_path):
    good = tmp_path / "rules.lua"
    good.write_text(GOOD_RULE)
    broken = tmp_path / "submission.lua"
    broken.write_text(BROKEN_RULE)
    r = run_cli(["config", "check", _config(tmp_path, lua=good, submission=broken)])
    assert r.returncode == 1
    assert f"{broken}:" in r.stderr and f"{good}:" not in r.stderr, r.stderr


def test_help_names_what_is_checked():
    r = run_cli(["config", "check", "--help"])
    assert r.returncode == 0
    assert "certificate" in r.stdout and "Lua" in r.stdout
