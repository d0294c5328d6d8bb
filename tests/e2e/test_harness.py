"""The harness's own promise that the other tests lean on: a log line postern
wrote before an effect a test has seen (a reply, a file, a counter) is in
`p.lines` / `p.events()` when the test looks, even when the thread that reads
postern's stderr has not run since (a loaded CI machine, two tests a core).

The program here is a shell script standing in for postern, so that what it
writes and when is exact; the reader threads are replaced by ones that never
read, the worst a scheduler could do."""

import os
import stat
import time

from harness import PosternProcess

SCRIPT = """#!/bin/sh
i=1
while [ $i -le 500 ]; do
  echo "2026-01-01T00:00:00Z info line n=$i" >&2
  i=$((i + 1))
done
echo "2026-01-01T00:00:00Z info on-stdout"
printf '2026-01-01T00:00:00Z info half' >&2
touch "$1"
exec sleep 30
"""


def fake_postern(tmp_path):
    script = tmp_path / "fake-postern"
    script.write_text(SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def wait_for_file(path, timeout=10):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} not created"
        time.sleep(0.01)


def test_lines_written_before_a_seen_effect_are_there_without_the_reader_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(PosternProcess, "_reader", lambda self, fd: None)  # never reads
    flag = tmp_path / "written"
    p = PosternProcess([str(flag)], cwd=str(tmp_path), binary=fake_postern(tmp_path)).start(wait=False)
    try:
        wait_for_file(flag)  # the effect: everything above it was written first
        lines = p.events("line")
        assert [int(l.get("n")) for l in lines] == list(range(1, 501))  # all, in order, once
        assert [l.event for l in p.events()] == ["line"] * 500  # the unfinished line waits for its end
        assert p.stdout_lines == ["2026-01-01T00:00:00Z info on-stdout"]
        assert len(p.lines) == 500 and len(p.events("line")) == 500  # reading twice adds nothing
    finally:
        p.kill()
    # at the end of the pipe, a last line without its newline is kept
    assert p.events()[-1].event == "half"
    assert len(p.lines) == 501


def test_the_reader_threads_and_the_readers_share_the_pipe_without_loss_or_doubles(tmp_path):
    flag = tmp_path / "written"
    p = PosternProcess([str(flag)], cwd=str(tmp_path), binary=fake_postern(tmp_path)).start(wait=False)
    try:
        deadline = time.monotonic() + 10
        while not flag.exists():   # read while the threads read too
            assert time.monotonic() < deadline, "the script did not finish writing"
            p.events("line")
        assert [int(l.get("n")) for l in p.events("line")] == list(range(1, 501))
    finally:
        p.kill()
    assert p.events()[-1].event == "half" and len(p.lines) == 501
