"""The aggregation tree: the same bytes whichever engine runs it, through the real train handler.

`local` runs each node in the orchestrator's process; `lambda` sends each node to the train
function's aggregate action (here the real handler file, run in this process); both pass
partial sums through the store. Their outputs must be the same bytes for every N, odd ones
included, and up to the fan-in the very bytes that plain worker-order averaging
(dlpipe.train.averaging) always gave.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from dlpipe.runs.run import TrainingRun
from dlpipe.shared.store import DirStore
from dlpipe.train.aggregate import (
    FAN_IN,
    best_fan_in,
    partial_from_bytes,
    partial_to_bytes,
    plan_tree,
    run_aggregate,
    tree_cost,
)
from dlpipe.train.averaging import AveragingError, weighted_average
from dlpipe.train.outer import OuterOptimizer, outer_step
from dlpipe.train.weights import load_weights, save_weights
from dlpipe.wire import AggregateRequest, AggregateSource, TrainResponse
from orchestrator.invokers.base import Invocation, Invoker
from orchestrator.invokers.local import LocalContext
from orchestrator.training.aggregation import AggregationFailed, aggregate_round, outer_request, resolve_engine

APP = Path(__file__).resolve().parents[2] / "functions" / "train" / "app.py"


class HandlerInvoker(Invoker):
    """Runs the real train handler in this process, one event after another.

    The first `fail` calls whose output key holds `target` time out instead.
    """

    name = "lambda"

    def __init__(self, handler, fail: int = 0, target: str = "") -> None:
        super().__init__()
        self.handler, self.fail, self.target, self.events = handler, fail, target, []

    def map(self, function, events, *, on_result=None):
        for index, event in enumerate(list(events)):
            self.events.append(event)
            inv = Invocation(function, index, str(uuid.uuid4()), ok=False, memory_mb=4096, billed_ms=1)
            if self.fail > 0 and self.target in event["weights_key"]:
                self.fail -= 1
                inv.error = "Sandbox.Timedout: Task timed out after 900.00 seconds"
            else:
                inv.payload = self.handler(event, LocalContext("train", 4096, 900, inv.request_id))
                inv.ok = True
            self._record(inv)
            if on_result:
                on_result(inv)
            yield inv


@pytest.fixture
def handler(tmp_path, monkeypatch):
    monkeypatch.setenv("DLPIPE_DATA_URL", str(tmp_path / "data"))
    monkeypatch.setenv("DLPIPE_MODEL_URL", str(tmp_path / "models"))
    spec = importlib.util.spec_from_file_location("train_app_aggregate", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


def worker_results(store, run: TrainingRun, count: int, seed: int = 0) -> dict[int, TrainResponse]:
    """`count` workers' weights (float32, magnitudes far apart) and Adam states (a float64 step, moments)."""
    rng = np.random.default_rng(seed)
    results = {}
    for w in range(count):
        weights = [(rng.normal(size=(5, 3)) * 10.0 ** rng.integers(-6, 4)).astype(np.float32),
                   rng.normal(size=7).astype(np.float32)]
        state = [np.asarray(float(rng.integers(1, 500)), np.float64), rng.random((5, 3)).astype(np.float32) * 1e-8]
        key, adam = run.worker_key(1, w), run.worker_optimizer_key(1, w)
        save_weights(store, key, weights)
        save_weights(store, adam, state)
        n = int(rng.integers(1, 5000))
        results[w] = TrainResponse(run=run.name, round=1, worker=w, attempt=0, weights_key=key, optimizer_key=adam,
                                   num_examples=n, shard_examples=n, epochs_done=1, steps=1, stopped_early=False,
                                   loss=None, accuracy=None, train_seconds=1, images_per_second=1, load_seconds=0,
                                   setup_seconds=0, upload_seconds=0, weights_bytes=1, max_rss_mb=None)
    return results


def test_the_tree_has_one_node_up_to_the_fan_in_and_log_levels_above():
    assert plan_tree(1) == [[range(1)]]
    assert plan_tree(FAN_IN) == [[range(FAN_IN)]]
    assert plan_tree(FAN_IN + 1) == [[range(FAN_IN), range(FAN_IN, FAN_IN + 1)], [range(2)]]
    assert [len(level) for level in plan_tree(256)] == [16, 1]
    assert [len(level) for level in plan_tree(257)] == [17, 2, 1]
    assert [len(level) for level in plan_tree(7, 3)] == [3, 1]
    leaves = plan_tree(64, 3)[0]
    assert [i for node in leaves for i in node] == list(range(64))   # every worker once, in worker order
    with pytest.raises(ValueError, match="at least one source"):
        plan_tree(0)


@pytest.mark.parametrize("count", [1, 2, 7, 64])
def test_in_the_cloud_and_here_give_the_same_bytes(tmp_path, handler, count):
    models = DirStore(tmp_path / "models")
    run = TrainingRun(models, "r")
    results = worker_results(models, run, count)
    shutil.copytree(tmp_path / "models", tmp_path / "here")
    here = TrainingRun(DirStore(tmp_path / "here"), "r")

    cloud = aggregate_round(run, 1, results, "lambda", HandlerInvoker(handler), retries=0)
    local = aggregate_round(here, 1, results, "local", HandlerInvoker(handler), retries=0)

    assert cloud.levels == local.levels == (1 if count <= FAN_IN else 2)
    # a tree for the weights and one beside it for the optimizer state
    assert cloud.calls == cloud.nodes == 2 * (1 if count <= FAN_IN else 5) and local.calls == 0
    for key in (run.global_key(1), run.optimizer_key(1)):
        assert run.store.get(key) == here.store.get(key)
    if count <= FAN_IN:  # one node: exactly the worker-order average every earlier round was made with
        pairs = [(load_weights(models, results[w].weights_key), results[w].num_examples) for w in range(count)]
        expected = weighted_average(pairs)
        got = load_weights(models, run.global_key(1))
        assert [a.tobytes() for a in got] == [a.tobytes() for a in expected]
        assert [a.dtype for a in got] == [np.float32, np.float32]


@pytest.mark.parametrize("count", [3, 20])
def test_the_outer_step_is_taken_once_at_the_root_and_gives_the_same_bytes_on_both_engines(tmp_path, handler, count):
    models = DirStore(tmp_path / "models")
    run = TrainingRun(models, "r")
    previous = [np.ones((5, 3), np.float32), np.zeros(7, np.float32)]
    save_weights(models, run.global_key(0), previous)
    results = worker_results(models, run, count)
    shutil.copytree(tmp_path / "models", tmp_path / "here")
    shutil.copytree(tmp_path / "models", tmp_path / "plain")
    here = TrainingRun(DirStore(tmp_path / "here"), "r")
    assert outer_request(run, 1, 1.0, 0.0) is None                     # FedAvg: no outer step at all
    outer = outer_request(run, 1, 0.7, 0.9)
    assert outer is not None and outer.momentum_key is None            # round 1: no momentum yet

    cloud_invoker = HandlerInvoker(handler)
    aggregate_round(run, 1, results, "lambda", cloud_invoker, retries=0, outer=outer)
    aggregate_round(here, 1, results, "local", HandlerInvoker(handler), retries=0, outer=outer_request(here, 1, 0.7,
                                                                                                        0.9))
    assert [e["weights_key"] for e in cloud_invoker.events if e.get("outer")] == [run.global_key(1)]  # the root
    for key in (run.global_key(1), run.optimizer_key(1), run.outer_key(1)):
        assert run.store.get(key) == here.store.get(key)
    aggregate_round(TrainingRun(DirStore(tmp_path / "plain"), "r"), 1, results, "local", HandlerInvoker(handler),
                    retries=0)
    if count <= FAN_IN:   # one node: the root's step, by hand, from the plain average
        average = load_weights(DirStore(tmp_path / "plain"), run.global_key(1))
        expected, momentum = outer_step(OuterOptimizer(0.7, 0.9), previous, average, None)
        assert [a.tobytes() for a in load_weights(models, run.global_key(1))] == [a.tobytes() for a in expected]
        assert momentum is not None
        assert [a.tobytes() for a in load_weights(models, run.outer_key(1))] == [a.tobytes() for a in momentum]
    second = outer_request(run, 2, 0.7, 0.9)
    assert second is not None and second.momentum_key == run.outer_key(1)


@pytest.mark.parametrize("count, fan_in", [(7, 2), (7, 3), (64, 3), (64, 5)])
def test_odd_trees_are_the_same_mean_on_both_engines_and_as_one_node(tmp_path, handler, count, fan_in):
    models = DirStore(tmp_path / "models")
    run = TrainingRun(models, "r")
    results = worker_results(models, run, count, seed=count + fan_in)
    shutil.copytree(tmp_path / "models", tmp_path / "here")
    here = TrainingRun(DirStore(tmp_path / "here"), "r")
    cloud = aggregate_round(run, 1, results, "lambda", HandlerInvoker(handler), retries=0, fan_in=fan_in)
    local = aggregate_round(here, 1, results, "local", HandlerInvoker(handler), retries=0, fan_in=fan_in)
    assert cloud.levels == local.levels == len(plan_tree(count, fan_in)) > 1 and local.lambda_seconds > 0
    assert cloud.calls == cloud.nodes == local.nodes == 2 * sum(len(level) for level in plan_tree(count, fan_in))
    for key in (run.global_key(1), run.optimizer_key(1)):
        assert run.store.get(key) == here.store.get(key)
    plain = weighted_average((load_weights(models, r.weights_key), r.num_examples) for r in results.values())
    for a, b in zip(load_weights(models, run.global_key(1)), plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)   # the same mean, summed in another order


def test_the_fan_in_with_the_least_serial_work():
    assert {n: best_fan_in(n) for n in (1, 2, 8, 12, 16, 32, 64, 256)} == {
        1: FAN_IN, 2: FAN_IN, 8: FAN_IN, 12: 4, 16: 4, 32: 8, 64: 4, 256: 4}
    # 16 workers: two levels of 4 (6 + 6 reads, writes and calls) instead of one node of 16 (18)
    assert tree_cost(plan_tree(16, 4)) == 12 < tree_cost(plan_tree(16, 16)) == 18
    for n in range(1, 70):
        best = tree_cost(plan_tree(n, best_fan_in(n)))
        assert all(best <= tree_cost(plan_tree(n, f)) for f in range(2, FAN_IN + 1))


def test_a_failed_node_is_retried_and_a_node_that_keeps_failing_stops_the_aggregation(tmp_path, handler):
    models = DirStore(tmp_path / "models")
    run = TrainingRun(models, "r")
    results = worker_results(models, run, 20)
    flaky = HandlerInvoker(handler, fail=1)
    done = aggregate_round(run, 1, results, "lambda", flaky, retries=1)
    # level 0: two nodes in each tree (weights, optimizer state); then node 0.0 again, the same event
    assert done.calls == done.nodes + 1 and flaky.events[4] == flaky.events[0]
    assert models.exists(run.global_key(1))

    models.delete(run.global_key(1))
    with pytest.raises(AggregationFailed, match=r"node 0\.0: Sandbox.Timedout.*\(after 2 attempts\)"):
        aggregate_round(run, 1, results, "lambda", HandlerInvoker(handler, fail=2, target="sum-0-0000.npz"), retries=1)
    assert not models.exists(run.global_key(1))


def test_a_stale_or_broken_partial_sum_is_refused_naming_it(tmp_path):
    store = DirStore(tmp_path)
    run = TrainingRun(store, "r")
    results = worker_results(store, run, 3)
    sources = [AggregateSource(name=f"worker {w}", weights_key=r.weights_key, examples=r.num_examples)
               for w, r in results.items()]
    reply = run_aggregate(AggregateRequest(action="aggregate", sources=sources, final=False, weights_key="s.npz"),
                          store)
    partial = partial_from_bytes(store.get("s.npz"), "s")
    assert partial.total_examples == reply.examples and [s.dtype for s in partial.sums] == [np.float64] * 2
    assert partial_to_bytes(partial) == store.get("s.npz")
    stale = AggregateSource(name="node 0.0", weights_key="s.npz", examples=reply.examples + 1)
    with pytest.raises(AveragingError, match=r"node 0\.0 \('s\.npz'\) holds \d+ examples, the call that wrote it "
                                             r"reported \d+"):
        run_aggregate(AggregateRequest(action="aggregate", sources=[stale], partial_sources=True,
                                       weights_key="g.npz"), store)
    worker = AggregateSource(name="worker 0", weights_key=results[0].weights_key, examples=5)
    with pytest.raises(Exception, match=r"worker 0.*not a readable partial sum"):
        run_aggregate(AggregateRequest(action="aggregate", sources=[worker], partial_sources=True,
                                       weights_key="g.npz"), store)


def test_the_handler_refuses_an_outer_step_off_the_root_or_in_bfloat16(handler):
    outer = {"learning_rate": 0.7, "momentum": 0.9, "previous_key": "p.npz", "output_momentum_key": "m.npz"}
    source = [{"name": "worker 0", "weights_key": "w.npz", "examples": 3}]
    context = LocalContext("train", 4096, 900, "x")
    for extra, problem in (({"final": False}, "only a final node"), ({"precision": "bfloat16"}, "float32")):
        reply = handler({"action": "aggregate", "weights_key": "g.npz", "sources": source, "outer": outer, **extra},
                        context)
        assert reply["statusCode"] == 400 and problem in reply["error"]


@pytest.mark.parametrize("count", [3, 20])
def test_a_bfloat16_optimizer_state_is_the_same_bytes_on_both_engines_and_the_weights_stay_float32(tmp_path, handler,
                                                                                                  count):
    models = DirStore(tmp_path / "models")
    run = TrainingRun(models, "r")
    results = worker_results(models, run, count)
    shutil.copytree(tmp_path / "models", tmp_path / "here")
    here = TrainingRun(DirStore(tmp_path / "here"), "r")
    invoker = HandlerInvoker(handler)
    aggregate_round(run, 1, results, "lambda", invoker, retries=0, precision="bfloat16")
    aggregate_round(here, 1, results, "local", HandlerInvoker(handler), retries=0, precision="bfloat16")
    for key in (run.global_key(1), run.optimizer_key(1)):
        assert run.store.get(key) == here.store.get(key)
    with np.load(io.BytesIO(models.get(run.optimizer_key(1)))) as archive:
        assert sorted(archive.files) == ["b0001", "w0000"]   # the moments in bfloat16, the step count as it was
    with np.load(io.BytesIO(models.get(run.global_key(1)))) as archive:
        assert sorted(archive.files) == ["w0000", "w0001"]
    assert [e["precision"] for e in invoker.events if e["final"]] == ["bfloat16", "float32"]
    full = TrainingRun(DirStore(tmp_path / "full"), "r")
    shutil.copytree(tmp_path / "here", tmp_path / "full", dirs_exist_ok=True)
    aggregate_round(full, 1, results, "local", HandlerInvoker(handler), retries=0)
    exact, rounded = load_weights(full.store, run.optimizer_key(1)), load_weights(models, run.optimizer_key(1))
    assert rounded[0] == exact[0] and rounded[1].dtype == np.float32
    # half a bfloat16 ulp where each level's output is stored: once for one node, twice for two levels
    np.testing.assert_allclose(rounded[1], exact[1], rtol=2 ** -8 * len(plan_tree(count)))
    assert not np.array_equal(rounded[1], exact[1])


def test_auto_aggregates_in_the_cloud_only_with_the_lambda_invoker(handler):
    lambda_invoker = HandlerInvoker(handler)
    assert resolve_engine("auto", lambda_invoker) == "lambda"
    lambda_invoker.name = "local"
    assert resolve_engine("auto", lambda_invoker) == "local" and resolve_engine("lambda", lambda_invoker) == "lambda"
    with pytest.raises(ValueError, match="--aggregate is one of auto, local, lambda"):
        resolve_engine("gpu", lambda_invoker)


def test_the_optimizer_state_has_a_tree_of_its_own_beside_the_weights_in_the_same_batches(tmp_path, handler):
    models = DirStore(tmp_path / "models")
    run = TrainingRun(models, "r")
    invoker = HandlerInvoker(handler)
    done = aggregate_round(run, 1, worker_results(models, run, 3), "lambda", invoker, retries=0)
    assert [e["weights_key"] for e in invoker.events] == [run.optimizer_key(1), run.global_key(1)]
    assert all(e.get("optimizer_key") is None for e in invoker.events)   # each tree carries one kind of array
    assert (done.levels, done.nodes, done.calls) == (1, 2, 2)


def difference_results(store, run: TrainingRun, count: int, base: list[np.ndarray]) -> tuple[dict, list]:
    """`count` workers' rounds stored as bfloat16 differences from `base` (as the train action stores them
    with update_precision bfloat16), and the float32 weights they stand for."""
    results, trained = worker_results(store, run, count), []
    for w, result in results.items():
        steps = [rng_step * 1e-2 for rng_step in load_weights(store, result.weights_key)]
        trained.append([b + s for b, s in zip(base, steps, strict=True)])
        save_weights(store, result.weights_key, steps, "bfloat16")
        results[w] = result.model_copy(update={"delta_from": run.global_key(0)})
    return results, trained


@pytest.mark.parametrize("count, outer", [(3, False), (3, True), (20, True)])
def test_bfloat16_differences_come_back_as_the_workers_average_on_both_engines(tmp_path, handler, count, outer):
    models = DirStore(tmp_path / "models")
    run = TrainingRun(models, "r")
    base = [np.full((5, 3), 3.0, np.float32), np.linspace(-1, 1, 7).astype(np.float32)]
    save_weights(models, run.global_key(0), base)
    results, trained = difference_results(models, run, count, base)
    shutil.copytree(tmp_path / "models", tmp_path / "here")
    here = TrainingRun(DirStore(tmp_path / "here"), "r")
    invoker = HandlerInvoker(handler)
    step = outer_request(run, 1, 0.7, 0.9) if outer else None
    aggregate_round(run, 1, results, "lambda", invoker, retries=0, outer=step)
    aggregate_round(here, 1, results, "local", HandlerInvoker(handler), retries=0,
                    outer=outer_request(here, 1, 0.7, 0.9) if outer else None)
    assert run.store.get(run.global_key(1)) == here.store.get(run.global_key(1))
    roots = [e for e in invoker.events if e["final"] and e["weights_key"] == run.global_key(1)]
    assert [e["base_key"] for e in roots] == [run.global_key(0)] and roots[0]["precision"] == "bfloat16"
    got = load_weights(models, run.global_key(1))
    assert [a.dtype for a in got] == [np.float32, np.float32]      # the global weights stay float32
    average = weighted_average((t, results[w].num_examples) for w, t in enumerate(trained))
    expected = outer_step(OuterOptimizer(0.7, 0.9), base, average, None)[0] if outer else average
    moved = [e - b for e, b in zip(expected, base, strict=True)]
    for g, e, m in zip(got, expected, moved, strict=True):
        # the step is kept to bfloat16's 8 bits (per level of the tree), the weights around it exactly
        np.testing.assert_allclose(g - e, 0, atol=float(np.abs(m).max()) * 2 ** -7 * len(plan_tree(count)))
    assert not all(np.array_equal(g, b) for g, b in zip(got, base, strict=True))


def test_differences_from_other_weights_than_the_rounds_are_refused(tmp_path, handler):
    models = DirStore(tmp_path / "models")
    run = TrainingRun(models, "r")
    base = [np.ones((5, 3), np.float32), np.zeros(7, np.float32)]
    save_weights(models, run.global_key(0), base)
    results, _ = difference_results(models, run, 3, base)
    results[1] = results[1].model_copy(update={"delta_from": "runs/other/rounds/0000/global.npz"})
    with pytest.raises(AggregationFailed, match=r"differences from 'runs/r/rounds/0000/global.npz'.*worker 1: "
                                                r"runs/other"):
        aggregate_round(run, 1, results, "local", HandlerInvoker(handler), retries=0)
    results[1] = results[1].model_copy(update={"delta_from": None})   # one worker's weights among differences
    with pytest.raises(AggregationFailed, match=r"worker 1: weights"):
        aggregate_round(run, 1, results, "local", HandlerInvoker(handler), retries=0)


def test_the_handler_adds_the_base_at_the_root_only_and_from_the_outer_steps_own_start(handler):
    outer = {"learning_rate": 0.7, "momentum": 0.9, "previous_key": "p.npz", "output_momentum_key": "m.npz"}
    source = [{"name": "worker 0", "weights_key": "w.npz", "examples": 3}]
    context = LocalContext("train", 4096, 900, "x")
    for extra, problem in (({"final": False, "base_key": "p.npz"}, "only a final node"),
                           ({"outer": outer, "base_key": "q.npz"}, "base_key == outer.previous_key")):
        reply = handler({"action": "aggregate", "weights_key": "g.npz", "sources": source, **extra}, context)
        assert reply["statusCode"] == 400 and problem in reply["error"]
