"""A killed orchestrator leaves no local worker behind, and a job never starts more workers than calls."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from faultkit import alive, children_of, linux_only, wait_for

from orchestrator import functions
from orchestrator.functions import FunctionSpec
from orchestrator.invokers.local import LocalInvoker

SLEEPER = Path(__file__).parent / "handlers" / "sleeper.py"
REPO = Path(__file__).resolve().parents[2]

# An orchestrator whose augment function only sleeps: busy workers at the moment of the kill.
ORCHESTRATOR = textwrap.dedent(f"""
    import sys
    from orchestrator import functions
    from orchestrator.cli import main
    from orchestrator.functions import FunctionSpec
    functions.FUNCTIONS["augment"] = FunctionSpec("augment", r"{SLEEPER}:handler", 256, 300, "AugmentFunctionName")
    sys.exit(main(sys.argv[1:]))
""")


def _orchestrator(tmp_path: Path, concurrency: int) -> subprocess.Popen:
    data = tmp_path / "data" / "raw" / "cat"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        (data / f"{i}.jpg").write_bytes(b"never read: the function sleeps")
    argv = ["--home", str(tmp_path / "home"), "--data", str(tmp_path / "data"), "--concurrency", str(concurrency),
            "augment", "--source", "raw", "--output", "augmented", "--batch-size", "1"]
    return subprocess.Popen([sys.executable, "-c", ORCHESTRATOR, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _workers_started(proc: subprocess.Popen, count: int) -> set[int]:
    assert wait_for(lambda: len(children_of(proc.pid)) >= count, timeout=90), "the workers never started"
    time.sleep(1.0)   # let them get into the handler
    return children_of(proc.pid)


@linux_only
def test_sigkill_of_the_orchestrator_takes_its_workers_with_it(tmp_path):
    proc = _orchestrator(tmp_path, concurrency=2)
    workers: set[int] = set()
    try:
        workers = _workers_started(proc, 2)
        proc.kill()
        proc.wait(timeout=30)
        assert wait_for(lambda: not any(alive(pid) for pid in workers), timeout=30), \
            f"workers {[pid for pid in workers if alive(pid)]} outlived their orchestrator"
    finally:
        proc.kill()
        for pid in workers:   # the test's own leftovers, if it failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@linux_only
def test_sigterm_stops_the_workers_and_exits_as_an_interrupt(tmp_path):
    proc = _orchestrator(tmp_path, concurrency=2)
    try:
        workers = _workers_started(proc, 2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)    # the workers sleep 120 s: waiting for them would time out
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
        # stopped: gone within moments (a killed worker is reaped by whoever inherits it once its parent exits)
        assert wait_for(lambda: not any(alive(pid) for pid in workers), timeout=10), \
            f"workers {[pid for pid in workers if alive(pid)]} outlived their orchestrator"
    finally:
        proc.kill()


@linux_only
def test_a_huge_concurrency_starts_no_more_workers_than_calls(tmp_path):
    proc = _orchestrator(tmp_path, concurrency=1000)
    try:
        _workers_started(proc, 4)
        time.sleep(2.0)   # time enough for the rest of a 1000-worker pool to appear
        assert len(children_of(proc.pid)) <= 4 + 1   # 4 calls; pebble may keep one helper process
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture
def sleeper(monkeypatch):
    spec = FunctionSpec("sleeper", f"{SLEEPER}:handler", 256, 300, "SleeperFunctionName")
    monkeypatch.setitem(functions.FUNCTIONS, "sleeper", spec)
    return spec


def test_pool_grows_to_a_later_batch_but_never_past_the_concurrency(sleeper):
    with LocalInvoker(concurrency=3) as invoker:
        list(invoker.map("sleeper", [{"sleep": 0}]))
        assert invoker._sizes["sleeper"] == 1
        results = list(invoker.map("sleeper", [{"sleep": 0}] * 10))
        assert all(r.ok for r in results) and invoker._sizes["sleeper"] == 3


def test_an_aborted_close_does_not_wait_for_the_calls_under_way(sleeper):
    invoker = LocalInvoker(concurrency=1)
    results = invoker.map("sleeper", [{"sleep": 120}])
    assert wait_for(lambda: bool(children_of(os.getpid())), timeout=60) or not sys.platform.startswith("linux")
    time.sleep(1.0)
    started = time.monotonic()
    invoker.close(abort=True)
    assert time.monotonic() - started < 60     # a plain close() would wait the 120 s out
    del results
