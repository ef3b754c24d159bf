"""The local invoker runs real handler files in warm worker processes, like Lambda."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import functions
from orchestrator.costs import gb_seconds, summarize
from orchestrator.functions import FunctionSpec
from orchestrator.invokers.local import LocalInvoker
from orchestrator.invokers.projection import projected_ms

HANDLERS = Path(__file__).parent / "handlers" / "probe.py"


@pytest.fixture
def probe(monkeypatch):
    spec = FunctionSpec("probe", f"{HANDLERS}:handler", 256, 5, "ProbeFunctionName")
    monkeypatch.setitem(functions.FUNCTIONS, "probe", spec)
    monkeypatch.setitem(functions.FUNCTIONS, "probe_bad_json",
                        FunctionSpec("probe_bad_json", f"{HANDLERS}:not_json", 128, 5, "X"))
    return spec


@pytest.fixture
def invoker(probe):
    inv = LocalInvoker(concurrency=2, env={"DLPIPE_DATA_URL": "/tmp/some-store"}, timeouts={"probe": 2.0})
    yield inv
    inv.close()


def test_results_carry_payload_context_and_records(invoker):
    results = list(invoker.map("probe", [{"echo": i} for i in range(6)]))
    assert sorted(r.index for r in results) == list(range(6))
    for r in results:
        assert r.ok and r.payload["echo"] == r.index
        assert r.payload["request_id"] == r.request_id
        assert r.payload["function_name"] == "probe" and r.payload["memory"] == 256
        assert 0 < r.payload["remaining_ms"] <= 2000
        assert r.payload["env"] == "/tmp/some-store"      # the worker got the session's settings
        assert r.billed_ms >= 1 and r.memory_mb == 256
    assert len({r.request_id for r in results}) == 6
    assert len(invoker.records) == 6


def test_workers_stay_warm_between_invocations(invoker):
    first = list(invoker.map("probe", [{"echo": i} for i in range(4)]))
    second = list(invoker.map("probe", [{"echo": i} for i in range(4)]))
    pids = {r.payload["pid"] for r in first + second}
    assert len(pids) <= 2                                # concurrency 2: at most two environments
    assert max(r.payload["calls_in_this_process"] for r in second) > 2
    # Exactly one cold start per environment, however the calls were spread over them.
    assert sum(bool(r.extra.get("cold")) for r in first + second) == len(pids)
    assert any(r.extra.get("cold") for r in first)


def test_handler_error_is_reported_not_raised(invoker):
    results = {r.index: r for r in invoker.map("probe", [{"echo": 0}, {"fail": "bad shard"}, {"echo": 2}])}
    assert results[0].ok and results[2].ok
    assert not results[1].ok
    assert results[1].error == "ValueError: asked to fail: bad shard"
    assert results[1].payload["errorType"] == "ValueError"
    alone = invoker.invoke("probe", {"fail": "x"})
    assert not alone.ok and alone.error == "ValueError: asked to fail: x"


def test_timeout_kills_the_worker_and_the_pool_recovers(invoker):
    results = {r.index: r for r in invoker.map("probe", [{"sleep": 10}, {"echo": 1}])}
    assert not results[0].ok and "timed out after 2.00 seconds" in results[0].error
    assert results[0].billed_ms == 2000
    assert results[1].ok
    after = invoker.invoke("probe", {"echo": "after"})
    assert after.ok and after.payload["echo"] == "after"


def test_crashed_worker_is_reported_and_replaced(invoker):
    result = invoker.invoke("probe", {"exit": True})
    assert not result.ok and "exited" in result.error
    replaced = invoker.invoke("probe", {"echo": 5})
    assert replaced.ok and replaced.payload["echo"] == 5


@pytest.fixture
def one_worker(probe):
    """One environment, so that the calls after an out-of-memory kill show its replacement."""
    inv = LocalInvoker(concurrency=1, timeouts={"probe": 5.0})
    yield inv
    inv.close()


def test_worker_over_its_memory_size_fails_like_lambda_and_is_replaced(one_worker):
    before = one_worker.invoke("probe", {"echo": 0}).payload
    # Allocated and freed within the handler: the peak counts, as on Lambda, however brief.
    result = one_worker.invoke("probe", {"allocate_mb": 400})
    assert not result.ok
    assert result.error.startswith("Runtime.OutOfMemory: Runtime exited with error: signal: killed")
    peak = result.extra["max_memory_mb"]
    assert peak > 400 and f"Max Memory Used: {peak} MB" in result.error
    assert "Memory Size of 256 MB" in result.error
    assert result.payload["errorType"] == "Runtime.OutOfMemory"
    assert result.billed_ms >= 1
    after = one_worker.invoke("probe", {"echo": 1})
    assert after.ok and after.payload["echo"] == 1
    assert after.payload["pid"] != before["pid"] and after.extra["cold"]     # a new environment


def test_memory_held_over_the_size_is_stopped_while_the_handler_runs(one_worker):
    """The watchdog kills the worker long before the handler's 10 s sleep or the 5 s timeout."""
    result = one_worker.invoke("probe", {"allocate_mb": 400, "sleep": 10})
    assert result.error.startswith("Runtime.OutOfMemory: ") and result.extra["max_memory_mb"] > 400
    assert one_worker.invoke("probe", {"echo": 2}).payload["echo"] == 2


def test_worker_under_its_memory_size_succeeds_and_records_its_peak(one_worker):
    result = one_worker.invoke("probe", {"allocate_mb": 96})
    assert result.ok and result.payload["allocated_mb"] == 96
    assert 96 < result.extra["max_memory_mb"] <= 256


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="per-invocation peaks need Linux's clear_refs")
def test_each_invocation_records_its_own_peak(one_worker):
    big = one_worker.invoke("probe", {"allocate_mb": 160})
    small = one_worker.invoke("probe", {"echo": 3})
    assert big.ok and small.ok and small.payload["pid"] == big.payload["pid"]   # the same warm worker
    assert big.extra["max_memory_mb"] > 160 > small.extra["max_memory_mb"]


def test_non_json_response_is_an_error_like_lambda(invoker):
    result = invoker.invoke("probe_bad_json", {})
    assert not result.ok and result.error.startswith("TypeError")


def test_unknown_function_names_the_known_ones(invoker):
    with pytest.raises(ValueError, match=r"unknown function 'nope'.*augment"):
        invoker.map("nope", [{}])


def test_cost_summary_from_records(invoker):
    list(invoker.map("probe", [{"echo": 1}, {"fail": 1}]))
    summary = summarize(invoker.records)
    assert summary.invocations == 2 and summary.failures == 1
    expected = sum(gb_seconds(r.billed_ms, 256) for r in invoker.records)
    assert summary.gb_seconds == pytest.approx(expected)
    assert summary.dollars == pytest.approx(expected * 0.0000166667 + 2 * 0.2e-6)


@pytest.fixture
def one_vcpu(monkeypatch):
    """A function of 1,769 MB: one vCPU on Lambda, so its projected time is its CPU time (plus transfers)."""
    monkeypatch.setitem(functions.FUNCTIONS, "probe_vcpu", FunctionSpec("probe_vcpu", f"{HANDLERS}:handler", 1769, 30,
                                                                         "X"))
    inv = LocalInvoker(concurrency=1)
    yield inv
    inv.close()


def test_projected_time_follows_cpu_seconds_not_the_wall_clock(one_vcpu):
    """Whatever else loads the machine: a CPU-bound call is projected (and billed) at its CPU time,
    a sleeping one at almost nothing, though it took longer here."""
    one_vcpu.invoke("probe_vcpu", {"echo": 0})                      # the cold start, out of the way
    busy = one_vcpu.invoke("probe_vcpu", {"spin_cpu_s": 0.4})
    idle = one_vcpu.invoke("probe_vcpu", {"sleep": 0.5})
    assert busy.ok and idle.ok
    spun_ms = busy.payload["spun_cpu_s"] * 1000
    # the process's CPU time covers the handler's own and a little around it (JSON, the memory guard)
    assert spun_ms <= busy.extra["cpu_ms"] < spun_ms + 150
    assert busy.extra["projected_ms"] == pytest.approx(busy.extra["cpu_ms"], rel=1e-6)
    assert busy.billed_ms == max(1, -(-busy.extra["projected_ms"] // 1))
    assert idle.duration_ms >= 500 and idle.extra["projected_ms"] < 150 and idle.billed_ms < 150
    assert busy.lambda_seconds == pytest.approx(busy.extra["projected_ms"] / 1000)


def test_projected_time_adds_the_store_transfers(one_vcpu, tmp_path):
    moved = one_vcpu.invoke("probe_vcpu", {"put_bytes": [str(tmp_path), 7_000_000]})
    assert moved.ok and moved.extra["store_bytes"] == 7_000_000
    assert moved.extra["projected_ms"] == pytest.approx(projected_ms("probe_vcpu", moved.extra["cpu_ms"], 1769,
                                                                     7_000_000), rel=1e-6)
    assert moved.extra["projected_ms"] >= 100          # 7 MB at 70 MB/s
