"""The programs the end-to-end tests drive, and the capabilities they need from them.

A package installed by hand on one machine must not hide a missing line in
.ci/deps: each check asks the program itself (not dpkg) whether it can do what
the tests need, and a failure names the Debian package that provides it.
Keep the list in step with .ci/deps.
"""

import os
import re
import subprocess
import sys

import pytest

# (path, Debian package, argv that must exit 0)
PROGRAMS = [
    ("/usr/sbin/smtp-sink", "postfix", None),
    ("/usr/sbin/smtp-source", "postfix", None),
    ("/usr/sbin/postfix", "postfix", None),
    ("/usr/sbin/unbound", "unbound", ["/usr/sbin/unbound", "-V"]),
    ("/usr/sbin/haproxy", "haproxy", ["/usr/sbin/haproxy", "-v"]),
    ("/usr/bin/redis-server", "redis-server", ["/usr/bin/redis-server", "--version"]),
    ("/usr/bin/redis-cli", "redis-tools", ["/usr/bin/redis-cli", "--version"]),
    ("/usr/bin/openssl", "openssl", ["/usr/bin/openssl", "version"]),
    ("/usr/bin/swaks", "swaks", ["/usr/bin/swaks", "--version"]),
    ("/usr/bin/prlimit", "util-linux", ["/usr/bin/prlimit", "--version"]),
    ("/usr/bin/unshare", "util-linux", ["/usr/bin/unshare", "--version"]),
    # the Debian package and the man pages (tests/package, test_man_pages.py)
    ("/usr/bin/dpkg-buildpackage", "dpkg-dev", ["/usr/bin/dpkg-buildpackage", "--version"]),
    ("/usr/bin/dh", "debhelper", None),
    ("/usr/bin/dh_installsysusers", "debhelper", None),
    ("/usr/bin/lintian", "lintian", ["/usr/bin/lintian", "--version"]),
    ("/usr/bin/systemd-analyze", "systemd", ["/usr/bin/systemd-analyze", "--version"]),
    ("/usr/bin/man", "man-db", ["/usr/bin/man", "--version"]),
    ("/usr/bin/ccache", "ccache", ["/usr/bin/ccache", "--version"]),
    ("/usr/bin/setpriv", "util-linux", ["/usr/bin/setpriv", "--version"]),
]


def missing(package, what):
    return f"{what}: install the Debian package '{package}' (add it to .ci/deps)"


@pytest.mark.parametrize("path,package,argv", PROGRAMS, ids=[os.path.basename(p[0]) for p in PROGRAMS])
def test_program_present(path, package, argv):
    assert os.access(path, os.X_OK), missing(package, f"{path} is missing")
    if argv:
        r = subprocess.run(argv, capture_output=True, timeout=30)
        assert r.returncode == 0, missing(package, f"{' '.join(argv)} exited {r.returncode}: "
                                                   f"{(r.stdout + r.stderr).decode(errors='replace')[:400]}")


# swaks reports each optional feature as "=== X supported" or "*** X not available: requires M".
SWAKS_FEATURES = {
    "TLS": "libnet-ssleay-perl",          # --tls, --tlsc (tests: test_tls, test_auth, test_dkim_sign)
    "Basic AUTH": "swaks",                # --auth PLAIN / LOGIN
    "IPv6": "libio-socket-inet6-perl",    # docs' copy-paste commands against [::1]
    "Socket Transport": "swaks",
}


def swaks_support():
    r = subprocess.run(["swaks", "--support"], capture_output=True, text=True, timeout=30)
    return r.stdout + r.stderr


@pytest.mark.parametrize("feature", sorted(SWAKS_FEATURES))
def test_swaks_supports(feature):
    report = swaks_support()
    ok = re.search(rf"^=== {re.escape(feature)} supported", report, re.M)
    assert ok, missing(SWAKS_FEATURES[feature], f"swaks --support does not list {feature}:\n{report}")


# Modules the helpers import under Debian's /usr/bin/python3 (the tests run there).
PYTHON_MODULES = {
    "aiosmtpd.smtp": "python3-aiosmtpd",
    "dkim": "python3-dkim",
    "nacl.signing": "python3-nacl",       # dkimpy's ed25519 (test_dkim_sign)
    "dnslib.server": "python3-dnslib",
    "pytest": "python3-pytest",
    "yaml": "python3-yaml",               # the openspf suites (test_spf_suite)
}


@pytest.mark.parametrize("module", sorted(PYTHON_MODULES))
def test_python_module(module):
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, missing(PYTHON_MODULES[module], f"{sys.executable} cannot import {module}: "
                                                              f"{r.stderr.strip()[-400:]}")


def test_dkimpy_signs_ed25519():
    """dkimpy signs ed25519 only with nacl; a missing recommend would make it fail inside a test."""
    code = ("import dkim, nacl.signing, base64\n"
            "k = nacl.signing.SigningKey.generate()\n"
            "sig = dkim.sign(b'From: a@b\\r\\n\\r\\nx\\r\\n', b's', b'b', base64.b64encode(bytes(k)),\n"
            "                signature_algorithm=b'ed25519-sha256', include_headers=[b'from'])\n"
            "assert sig.startswith(b'DKIM-Signature:'), sig\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, missing("python3-nacl", f"dkimpy cannot sign ed25519: {r.stderr.strip()[-400:]}")


def test_the_openspf_suites_are_installed():
    """test_spf_suite reads them where Debian's python3-spf puts them."""
    for name in ("rfc7208-tests.yml.gz", "rfc4408-tests.yml.gz"):
        path = os.path.join("/usr/share/doc/python3-spf", name)
        assert os.path.isfile(path), missing("python3-spf", f"{path} is missing")
