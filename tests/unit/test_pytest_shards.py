"""scripts/pytest_shards.py, which runs gpu_checks.sh's test stages in several processes: every test
runs once, a failure in any shard fails the whole, and a time limit's SIGINT still ends in a summary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pytest_shards.py"

_TESTS = """
import os, time
import pytest

@pytest.mark.parametrize("i", range(5))
def test_passes(i):
    open(f"ran-{i}-{os.getpid()}", "w").close()

def test_fails():
    assert 1 == 2

@pytest.mark.skip
def test_skipped():
    pass
"""


def test_every_test_runs_once_in_some_shard_and_a_failure_fails_the_whole(tmp_path):
    (tmp_path / "test_demo.py").write_text(_TESTS)
    run = subprocess.run([sys.executable, str(SCRIPT), "3", "out", "test_demo.py", "--", "-q", "-rfE"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    ran = sorted(p.name for p in tmp_path.glob("ran-*"))
    assert [name.split("-")[1] for name in ran] == ["0", "1", "2", "3", "4"]
    assert len({name.split("-")[2] for name in ran}) == 3  # in three processes
    assert "FAILED test_demo.py::test_fails - assert 1 == 2" in run.stdout
    assert run.stdout.splitlines()[-1].startswith("all shards: 1 failed, 5 passed, 1 skipped in ")
    assert all((tmp_path / f"out.shard{k}.log").is_file() for k in (1, 2, 3))


def test_fewer_tests_than_shards_and_all_passing(tmp_path):
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    run = subprocess.run([sys.executable, str(SCRIPT), "4", "out", "test_one.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[0] == "1 tests in 1 shards: out.shard1.log"
    assert not (tmp_path / "out.shard2.log").exists()


_SLOW = """
import time

def test_quick():
    pass

def test_slow_a():
    open("started-a", "w").close()
    time.sleep(120)

def test_slow_b():
    open("started-b", "w").close()
    time.sleep(120)
"""


def test_an_interrupted_run_still_says_what_passed_and_where_each_shard_stopped(tmp_path):
    """gpu_checks.sh's time limit sends SIGINT to the whole process group, as here."""
    (tmp_path / "test_slow.py").write_text(_SLOW)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "2", "out", "test_slow.py", "--", "-v"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not ((tmp_path / "started-a").exists() and (tmp_path / "started-b").exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert out.splitlines()[-1].startswith("all shards: 1 passed in ") and out.endswith("(interrupted)\n"), out
    assert sum(line.endswith(": KeyboardInterrupt") for line in out.splitlines()) == 2, out
