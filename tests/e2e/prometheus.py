"""Prometheus text exposition (format 0.0.4) for the tests: fetch postern's
/metrics and parse it strictly, so a malformed page fails the test that
scraped it (test_metrics.py checks the parser itself)."""
import http.client
import math
import re

from harness import IO_TIMEOUT

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE_RE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)(?: -?\d+)?$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_HELP_RE = re.compile(rf"^# HELP ({_NAME}) (.*)$")
_TYPE_RE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")


def _unescape(value):
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def _parse_labels(text):
    labels = {}
    pos = 0
    while pos < len(text):
        m = _LABEL_RE.match(text, pos)
        assert m, f"bad label syntax at {text[pos:]!r}"
        name, value = m.group(1), _unescape(m.group(2))
        assert name not in labels, f"label {name} twice in {{{text}}}"
        labels[name] = value
        pos = m.end()
        if pos < len(text):
            assert text[pos] == ",", f"expected ',' in labels at {text[pos:]!r}"
            pos += 1
            assert pos < len(text), "trailing comma in labels"
    return labels


def _float(text):
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    assert re.match(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$", text), f"bad sample value {text!r}"
    return float(text)


class Exposition:
    """One scraped page, checked line by line; raises AssertionError on any
    deviation from the format (and from Prometheus naming conventions)."""

    def __init__(self, text):
        assert text.endswith("\n"), "the page must end with a newline"
        self.types = {}
        self.samples = {}
        helped = set()
        finished = set()
        current = None
        for line in text.split("\n")[:-1]:
            assert line, "empty line in the page"
            m = _HELP_RE.match(line)
            if m:
                assert m.group(1) not in helped, f"second HELP for {m.group(1)}"
                assert "\n" not in m.group(2)
                helped.add(m.group(1))
                continue
            m = _TYPE_RE.match(line)
            if m:
                family, kind = m.groups()
                assert family not in self.types, f"second TYPE for {family}"
                assert family in helped, f"TYPE without HELP for {family}"
                assert family.startswith(("postern_", "process_")), family
                if kind == "counter":
                    assert family.endswith("_total"), f"counter {family} must end in _total"
                if kind == "histogram":
                    assert family.endswith("_seconds"), f"histogram {family} must be in seconds"
                if current:
                    finished.add(current)
                assert family not in finished
                self.types[family] = kind
                current = family
                continue
            assert not line.startswith("#"), f"unknown comment line {line!r}"
            m = _SAMPLE_RE.match(line)
            assert m, f"bad sample line {line!r}"
            name, labels, value = m.group(1), _parse_labels(m.group(2) or ""), _float(m.group(3))
            family = name
            if self.types.get(current) == "histogram":
                family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert family == current, f"sample {name} outside its family block (in {current})"
            key = (name, frozenset(labels.items()))
            assert key not in self.samples, f"sample twice: {line!r}"
            if self.types[current] == "counter" or name.endswith(("_bucket", "_count")):
                assert value >= 0 and not math.isnan(value), f"negative counter: {line!r}"
            self.samples[key] = value
        self._check_histograms()

    def _check_histograms(self):
        for family, kind in self.types.items():
            if kind != "histogram":
                continue
            series = {}
            for (name, labels), value in self.samples.items():
                if name == family + "_bucket":
                    d = dict(labels)
                    le = d.pop("le")
                    series.setdefault(frozenset(d.items()), []).append((_float(le), value))
            for labels, buckets in series.items():
                bounds = [le for le, _ in buckets]
                assert bounds == sorted(bounds), f"{family}{dict(labels)}: le out of order"
                assert bounds[-1] == math.inf, f"{family}{dict(labels)}: no +Inf bucket"
                counts = [v for _, v in buckets]
                assert counts == sorted(counts), f"{family}{dict(labels)}: buckets decrease {counts}"
                count = self.samples[(family + "_count", labels)]
                assert counts[-1] == count, f"{family}{dict(labels)}: +Inf {counts[-1]} != _count {count}"
                assert self.samples[(family + "_sum", labels)] >= 0

    def value(self, name, **labels):
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no sample {name}{labels}"
        return self.samples[key]

    def total(self, name, **labels):
        """Sum over every sample of `name` whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))

    def monotonic_since(self, earlier):
        """Counters and histogram counts never go down between two scrapes."""
        for (name, labels), old in earlier.samples.items():
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            kind = earlier.types.get(name) or earlier.types.get(family)
            if kind in ("counter", "histogram"):
                new = self.samples.get((name, labels))
                assert new is not None, f"{name}{dict(labels)} disappeared"
                assert new >= old, f"{name}{dict(labels)} went down: {old} -> {new}"


def http_get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        conn.close()


def scrape(port):
    status, ctype, body = http_get(port, "/metrics")
    assert status == 200
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    return Exposition(body)
