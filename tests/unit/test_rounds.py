"""The round loop on its own: an in-memory store and a fake train function (numpy, no TensorFlow).

The fake function does what the real one promises: a worker's weights depend only on
(global weights, round, worker), it reports how many examples it trained on, and evaluate
scores stored weights. So the loop's own duties can be checked exactly: retries,
--min-workers, averaging in worker order whatever the completion order, commit order, resume.
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from dataclasses import dataclass, field

import numpy as np
import pytest

from dlpipe.datasets.manifest import Counts, Manifest, PartList, write_manifest
from dlpipe.runs.run import TrainingRun
from dlpipe.shared.recipe import Recipe
from dlpipe.train.weights import load_weights, save_weights
from dlpipe.wire import EvaluateResponse, InitResponse, TrainResponse, WarmResponse
from orchestrator import functions
from orchestrator.invokers.base import Invocation, Invoker
from orchestrator.traffic import Meter
from orchestrator.training.hyperparams import new_run_defaults
from orchestrator.training.loop import TrainingFailed, TrainOptions, run_training
from orchestrator.training.report import metrics_from_records, round_line
from tests.memory_store import MemoryStore

SHARD_SIZES = [30, 10, 20]          # examples per worker: unequal, so the average must weight them


class FakeTrainFunction(Invoker):
    """Runs init/train/evaluate events in-process; `failures[(round, worker)]` attempts fail first."""

    def __init__(self, store: MemoryStore, failures: dict | None = None, reverse: bool = True) -> None:
        super().__init__()
        self.store, self.failures, self.reverse = store, dict(failures or {}), reverse
        self.events: list[dict] = []

    def map(self, function, events, *, on_result=None):
        assert function == "train"
        results = [self._run(i, e) for i, e in enumerate(events)]
        for inv in reversed(results) if self.reverse else results:  # completion order != worker order
            yield self._record(inv)

    def _run(self, index: int, event: dict) -> Invocation:
        self.events.append(event)
        try:
            payload = getattr(self, f"_{event['action']}")(event)
        except RuntimeError as err:
            return Invocation("train", index, str(uuid.uuid4()), ok=False, error=f"RuntimeError: {err}",
                              memory_mb=4096, duration_ms=10)
        return Invocation("train", index, str(uuid.uuid4()), ok=True, payload=payload, memory_mb=4096,
                          duration_ms=10, billed_ms=10)

    def _init(self, event):
        weights = [np.full(3, float(event["seed"]), np.float32), np.zeros((2, 2), np.float32)]
        save_weights(self.store, event["output_key"], weights)
        return InitResponse(weights_key=event["output_key"], arrays=2, parameters=7, bytes=1).model_dump()

    def _warm(self, event):
        return WarmResponse(seconds=0.0, was_warm=False).model_dump()

    def _train(self, event):
        key = (event["round"], event["worker"])
        if self.failures.get(key, 0) > 0:
            self.failures[key] -= 1
            raise RuntimeError(f"worker {key[1]} crashed")
        w, r = event["worker"], event["round"]
        start = load_weights(self.store, event["global_key"])
        save_weights(self.store, event["output_key"], [a + np.float32(w + 1) / r for a in start])
        save_weights(self.store, event["output_optimizer_key"], [np.asarray(float(r * 10 + w)), np.ones(3)])
        n = SHARD_SIZES[w]
        return TrainResponse(run=event["run"], round=r, worker=w, attempt=event["attempt"],
                             weights_key=event["output_key"], optimizer_key=event["output_optimizer_key"],
                             num_examples=n, shard_examples=n, epochs_done=1, steps=1, stopped_early=False,
                             loss=1.0 / r + w, accuracy=0.5, train_seconds=1.0, images_per_second=n,
                             load_seconds=0, setup_seconds=0, upload_seconds=0, weights_bytes=1,
                             max_rss_mb=None).model_dump()

    def _evaluate(self, event):
        weights = load_weights(self.store, event["weights_key"])
        return EvaluateResponse(weights_key=event["weights_key"], count=5, loss=float(weights[0][0]),
                                accuracy=0.25, seconds=0.1).model_dump()


@dataclass
class FakeSession:
    data: MemoryStore = field(default_factory=MemoryStore)
    models: MemoryStore = field(default_factory=MemoryStore)
    invoker: Invoker | None = None
    meter: Meter = field(default_factory=Meter)

    def data_store(self):
        return self.data

    def model_store(self):
        return self.models


def session(failures=None, workers: int = 3) -> FakeSession:
    s = FakeSession()
    s.invoker = FakeTrainFunction(s.models, failures)
    shards = [PartList(parts=[f"datasets/d/train/shard-{w:03d}/part-000.npz"], count=SHARD_SIZES[w])
              for w in range(workers)]
    write_manifest(s.data, Manifest(dataset="d", source="raw", val_fraction=0.0, classes=["a", "b"],
                                    recipe=Recipe(size=32, channels=1), shards=shards,
                                    val=PartList(parts=["datasets/d/val/part-000.npz"], count=5), created="now",
                                    id="m1", counts=Counts(train=sum(SHARD_SIZES[:workers]), val=5)))
    s.data.put("datasets/d/val/part-000.npz", b"the fake function does not read it")   # but train checks it is there
    return s


def train(s: FakeSession, run: str, rounds: int | None, **options):
    return run_training(s, TrainOptions(dataset="d", run=run, rounds=rounds, output_dir=None, **options),
                        out=io.StringIO(), progress=False)


def test_the_global_weights_are_the_example_weighted_mean_in_worker_order():
    s = session()
    result = train(s, "r", 1, outer_learning_rate=1.0, outer_momentum=0.0,    # FedAvg: the average itself
                   worker_optimizer="averaged")
    run = TrainingRun(s.models, "r")
    expected = sum(n * (0 + (w + 1) / 1) for w, n in enumerate(SHARD_SIZES)) / sum(SHARD_SIZES)
    assert np.allclose(load_weights(s.models, run.global_key(1))[0], expected)
    state = load_weights(s.models, run.optimizer_key(1))
    assert float(state[0]) == pytest.approx(sum(n * (10 + w) for w, n in enumerate(SHARD_SIZES)) / sum(SHARD_SIZES))
    record = result.final
    assert record.train.examples == sum(SHARD_SIZES)
    assert record.train.loss == pytest.approx(sum(n * (1 + w) for w, n in enumerate(SHARD_SIZES)) / 60)
    assert [r["worker"] for r in record.worker_results] == [0, 1, 2]
    assert record.val.loss == pytest.approx(expected) and record.val.count == 5
    assert not list(s.models.list(run.round_prefix(1) + "workers/"))  # worker weights deleted once averaged


def test_a_failed_worker_is_retried_under_a_new_key_and_the_round_closes():
    s = session(failures={(1, 1): 1})
    record = train(s, "r", 1).final
    assert record.workers_ok == 3 and record.failed_workers == []
    assert [r["attempt"] for r in record.worker_results] == [0, 1, 0]
    retried = [e for e in s.invoker.events if e["action"] == "train" and e["worker"] == 1]
    assert [e["output_key"] for e in retried] == ["runs/r/rounds/0001/workers/001-a0.npz",
                                                  "runs/r/rounds/0001/workers/001-a1.npz"]


def test_too_few_workers_stop_the_run_and_leave_the_last_round_intact():
    s = session(failures={(2, 0): 5})
    with pytest.raises(TrainingFailed, match=r"round 2: only 2 of 3 workers succeeded \(need 3\).*worker 0: "
                                             r"RuntimeError: worker 0 crashed.*--resume"):
        train(s, "r", 2)
    run = TrainingRun(s.models, "r")
    assert run.latest_round() == 1 and not s.models.exists(run.global_key(2))
    # --min-workers lets the round close on the two that succeeded, and records the failure.
    s.invoker.failures[(2, 0)] = 5
    result = train(s, "r", 2, resume=True, min_workers=2)
    assert result.final.workers_ok == 2 and result.final.failed_workers[0].worker == 0
    assert result.failures and "worker 0 crashed (after 2 attempts)" in result.failures[0][1]


@pytest.mark.parametrize("worker_optimizer", ["own", "averaged"])
def test_a_round_is_committed_in_order_weights_record_then_latest(worker_optimizer):
    s = session()
    order = []
    put = s.models.put

    def recording_put(key, data):
        order.append(key)
        put(key, data)

    s.models.put = recording_put
    train(s, "r", 1, worker_optimizer=worker_optimizer)
    run = TrainingRun(s.models, "r")
    written_by_workers = ("/workers/", "/states/")
    tail = [k for k in order if (k.startswith(run.round_prefix(1)) and not any(w in k for w in written_by_workers))
            or k == run.latest_key]
    averaged = [run.optimizer_key(1)] if worker_optimizer == "averaged" else []
    expected = [*averaged, run.outer_key(1), run.global_key(1), run.record_key(1), run.latest_key]
    assert tail[-len(expected):] == expected      # (round 0 wrote latest.json before)


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run():
    straight = session()
    train(straight, "r", 3)
    bumpy = session(failures={(3, 2): 2})  # both attempts of the first try
    with pytest.raises(TrainingFailed):
        train(bumpy, "r", 3)
    assert TrainingRun(bumpy.models, "r").latest_round() == 2
    train(bumpy, "r", 3, resume=True)
    for r in range(4):
        key = TrainingRun(None, "r").global_key(r)
        assert straight.models.get(key) == bumpy.models.get(key)


def test_resume_keeps_the_runs_own_settings_and_refuses_others():
    s = session()
    train(s, "r", 1, batch_size=32)
    with pytest.raises(TrainingFailed, match="already exists"):
        train(s, "r", 2)
    with pytest.raises(TrainingFailed, match="trained with batch-size 32"):
        train(s, "r", 2, resume=True, batch_size=64)
    train(s, "r", 2, resume=True)
    # --batch-size is the batch across the 3 workers: 10 each, in both rounds.
    assert all(e["hyper"]["batch_size"] == 10 for e in s.invoker.events if e["action"] == "train")
    assert TrainingRun(s.models, "r").config().training.batch_size == 32
    with pytest.raises(TrainingFailed, match="trained with 3 workers"):
        train(s, "r", 3, resume=True, workers=2)


def test_bad_options_are_refused_before_any_invocation():
    s = session()
    for options, message in [({"rounds": 0}, "--rounds must be at least 1"), ({"retries": -1}, "--retries"),
                             ({"min_workers": 4}, "--min-workers must be between 1 and 3"),
                             ({"workers": 4}, "prepared in 3 shards"), ({"run": "../x"}, "invalid run name")]:
        kwargs = {"run": "r", "rounds": 1, **options}
        with pytest.raises(TrainingFailed, match=message):
            train(s, kwargs.pop("run"), kwargs.pop("rounds"), **kwargs)
    assert s.invoker.records == []


def train_hypers(s: FakeSession) -> list[dict]:
    return [e["hyper"] for e in s.invoker.events if e["action"] == "train"]


def test_new_runs_take_the_training_models_defaults():
    """The batch across workers, a warm-up, rounds of a quarter epoch, the outer Nesterov step."""
    s = session()
    train(s, "r", 1)
    defaults = new_run_defaults()
    assert [h["batch_size"] for h in train_hypers(s)] == [defaults["batch_size"] // 3] * 3
    assert all(h["learning_rate"] == defaults["learning_rate"] for h in train_hypers(s))
    assert all(h["warmup_epochs"] == defaults["warmup_epochs"] > 0 for h in train_hypers(s))
    # Rounds of a quarter of an epoch of the largest shard (30 examples, 1 batch of 42): 1 batch.
    assert defaults["local_epochs"] == 0.25 and all(h["local_steps"] == 1 for h in train_hypers(s))
    training = TrainingRun(s.models, "r").config().training
    assert training.batch_size == defaults["batch_size"] and training.batch_across_workers
    assert (training.outer_learning_rate, training.outer_momentum) == (0.7, 0.9)
    assert s.models.exists(TrainingRun(None, "r").outer_key(1))
    tuned = new_run_defaults(fine_tune=True)
    assert (tuned["trainable"], tuned["local_epochs"], tuned["outer_momentum"]) == ("classifier", 1, 0.0)


def test_a_run_from_before_the_new_defaults_resumes_with_its_own_values():
    """A config written before batches were shared and rounds could be steps: every worker keeps
    the whole --batch-size, whole epochs, no warm-up, exactly as when it started."""
    s = session()
    train(s, "old", 1)
    run = TrainingRun(s.models, "old")
    config = json.loads(s.models.get(run.config_key))
    config["training"] = {"local_epochs": 2, "batch_size": 128, "learning_rate": 0.001, "seed": 0,
                          "warmup_epochs": 0.0, "trainable": "all", "workers": 3}
    s.models.put(run.config_key, json.dumps(config).encode())
    s.invoker.events.clear()
    train(s, "old", 2, resume=True)
    assert train_hypers(s) == [{"trainable": "all", "local_epochs": 2, "local_steps": None, "batch_size": 128,
                                "learning_rate": 0.001, "seed": 0, "warmup_epochs": 0.0,
                                "optimizer_precision": "float32", "update_precision": "float32"}] * 3
    # Adam's state and the workers' weights as they were stored
    assert not s.models.exists(run.outer_key(2))          # FedAvg, as runs were before the outer step
    with pytest.raises(TrainingFailed, match=r"trained with warmup-epochs 0.0"):
        train(s, "old", 3, resume=True, warmup_epochs=1.0)
    with pytest.raises(TrainingFailed, match=r"trained with outer-momentum 0.0"):
        train(s, "old", 3, resume=True, outer_momentum=0.9)
    with pytest.raises(TrainingFailed, match="trained with local-steps None"):
        train(s, "old", 3, resume=True, local_steps=10)


def test_round_length_options():
    s = session()
    train(s, "epochs", 1, local_epochs=2)
    assert all(h["local_steps"] is None and h["local_epochs"] == 2 for h in train_hypers(s))
    s.invoker.events.clear()
    train(s, "steps", 1, local_steps=7)
    assert all(h["local_steps"] == 7 for h in train_hypers(s))
    with pytest.raises(TrainingFailed, match="trained with local-steps 7; resuming with --local-epochs 1 would"):
        train(s, "steps", 2, resume=True, local_epochs=1)
    # A fraction of an epoch: batches of 30 // 3 = 10, the largest shard (30) is 3 of them, half is 2 (rounded).
    s.invoker.events.clear()
    train(s, "half", 1, local_epochs=0.5, batch_size=30, batch_across_workers=True)
    assert all(h["local_steps"] == 2 and h["batch_size"] == 10 for h in train_hypers(s))
    train(s, "half", 2, resume=True, local_epochs=0.5)
    with pytest.raises(TrainingFailed, match=r"trained with local-steps 2; resuming with --local-epochs 0.9"):
        train(s, "half", 3, resume=True, local_epochs=0.9)
    with pytest.raises(TrainingFailed, match=r"trained with local-epochs 2; resuming with --local-epochs 0.5"):
        train(s, "epochs", 2, resume=True, local_epochs=0.5)
    for options, message in [({"local_epochs": 1, "local_steps": 5}, "not both"),
                             ({"local_epochs": -1}, "--local-epochs must be more than 0"),
                             ({"batch_size": 2, "batch_across_workers": True},
                              "batch across workers: it must be at least --workers \\(3\\)"),
                             ({"local_steps": 0}, "local_steps")]:
        with pytest.raises(TrainingFailed, match=message):
            train(s, "bad", 1, **options)
    assert TrainingRun(s.models, "bad").config() is None


def large_image_session(per_shard: int) -> FakeSession:
    s = session()
    manifest = json.loads(s.data.get("datasets/d/manifest.json"))
    manifest["recipe"] = Recipe(size=224, channels=3).to_dict()
    for shard in manifest["shards"]:
        shard["count"] = per_shard
    s.data.put("datasets/d/manifest.json", json.dumps(manifest).encode())
    return s


def test_a_batch_that_cannot_fit_the_function_is_refused_before_any_work():
    s = large_image_session(500)
    # 3 x 128 = 128 224-px images a worker, every layer training: more than 90% of 4096 MB.
    with pytest.raises(TrainingFailed, match=r"a worker would need about [\d,]+ MB \(batches of 128 224x224x3 "
                                             r"images, all layers training, 500 images in its shard\).*4,096 MB; "
                                             r"use --batch-size \d+ or less"):
        train(s, "big", 1, batch_size=3 * 128, batch_across_workers=True)
    assert s.invoker.records == [] and TrainingRun(s.models, "big").config() is None
    message = ""
    try:
        train(s, "big", 1, batch_size=3 * 128, batch_across_workers=True)
    except TrainingFailed as err:
        message = str(err)
    suggested = int(message.split("use --batch-size ")[1].split()[0])
    train(s, "big", 1, batch_size=suggested, batch_across_workers=True)          # the suggestion fits
    assert TrainingRun(s.models, "big").latest_round() == 1
    # Evaluation's batch is what fits too: not the usual 256 at 224 px.
    assert {e["batch_size"] for e in s.invoker.events if e["action"] == "evaluate"} == {suggested // 3}
    # Only the classifier training needs far less: the same batch fits.
    train(s, "head", 1, batch_size=3 * 128, trainable="classifier", batch_across_workers=True)


def test_a_shard_too_large_for_the_function_is_refused_even_at_batch_one(monkeypatch):
    s = large_image_session(30000)
    with pytest.raises(TrainingFailed, match="even a batch of 1 does not fit: prepare the dataset with more "
                                             "--workers"):
        train(s, "huge", 1)
    monkeypatch.setitem(functions.FUNCTIONS, "train",
                        functions.FunctionSpec("train", "functions/train/app.py:handler", 10240, 900, "Train"))
    train(s, "huge", 1, batch_size=3)                  # more memory: it fits
    assert s.invoker.records


def test_the_outer_step_commits_its_momentum_before_the_weights_and_resumes_bit_identically():
    outer = {"outer_learning_rate": 0.7, "outer_momentum": 0.9, "worker_optimizer": "averaged"}
    straight = session()
    order: list[str] = []
    put = straight.models.put

    def recording_put(key, data):
        order.append(key)
        put(key, data)

    straight.models.put = recording_put
    train(straight, "r", 3, **outer)
    run = TrainingRun(straight.models, "r")
    tail = [k for k in order if k.startswith(run.round_prefix(2)) and "/workers/" not in k]
    assert tail == [run.optimizer_key(2), run.outer_key(2), run.global_key(2), run.record_key(2)]
    # Not the plain average: round 1 moved further than the workers did (Nesterov: 0.7 x 1.9 of the way).
    average = sum(n * (w + 1) for w, n in enumerate(SHARD_SIZES)) / sum(SHARD_SIZES)
    assert np.allclose(load_weights(straight.models, run.global_key(1))[0], 0.7 * 1.9 * average)
    bumpy = session(failures={(3, 2): 2})
    with pytest.raises(TrainingFailed):
        train(bumpy, "r", 3, **outer)
    train(bumpy, "r", 3, resume=True)
    for r in range(1, 4):
        for key in (run.global_key(r), run.outer_key(r)):
            assert straight.models.get(key) == bumpy.models.get(key)
    with pytest.raises(TrainingFailed, match=r"trained with outer-momentum 0\.9"):
        train(bumpy, "r", 4, resume=True, outer_momentum=0.5)


def test_fedavg_runs_keep_no_outer_state():
    s = session()
    train(s, "r", 2, outer_learning_rate=1.0, outer_momentum=0.0)
    run = TrainingRun(s.models, "r")
    assert not s.models.exists(run.outer_key(1)) and not s.models.exists(run.outer_key(2))


def test_a_batch_per_worker_scales_the_learning_rate():
    s = session()
    train(s, "r", 1, batch_across_workers=False, batch_size=8, learning_rate=0.001, lr_scaling="sqrt")
    assert all(h["batch_size"] == 8 and h["learning_rate"] == pytest.approx(0.001 * 3 ** 0.5)
               for h in train_hypers(s))
    training = TrainingRun(s.models, "r").config().training
    assert not training.batch_across_workers and training.lr_scaling == "sqrt" and training.learning_rate == 0.001
    s.invoker.events.clear()
    train(s, "lin", 1, batch_across_workers=False, batch_size=8, learning_rate=0.001, lr_scaling="linear")
    assert all(h["learning_rate"] == pytest.approx(0.003) for h in train_hypers(s))


def test_epochs_count_rounds_and_every_round_shows_its_epochs_and_lambda_time():
    s = session()
    # Batches of 8 per worker, rounds of 2 batches; the largest shard (30) is 4 batches: a round is half an epoch.
    result = train(s, "r", None, epochs=1.2, batch_across_workers=False, batch_size=8, local_steps=2)
    assert [r.round for r in result.records] == [0, 1, 2, 3]          # ceil(1.2 / 0.5)
    assert [r.epochs for r in result.records] == [0.0, 1.0, 2.0, 3.0]  # the fake trains its whole shard
    assert all(r.lambda_seconds > 0 for r in result.records)
    phases = result.final.lambda_phase_seconds
    assert result.final.lambda_seconds == pytest.approx(phases.workers + phases.aggregate + phases.evaluate)
    assert phases.workers == pytest.approx(0.01)                        # the fake's 10 ms
    assert "epoch 3.00" in round_line(result.final) and "Lambda 0.0 s" in round_line(result.final)
    train(s, "r", None, epochs=2.5, resume=True)
    assert TrainingRun(s.models, "r").latest_round() == 5
    with pytest.raises(TrainingFailed, match=r"--rounds R .* or --epochs E"):
        train(s, "x", 2, epochs=1)


def test_rounds_score_a_fixed_subset_and_the_whole_set_every_k_rounds_and_at_the_end():
    s = session()
    train(s, "r", 5, eval_images=3, full_eval_every=2)
    limits = [e["limit"] for e in s.invoker.events if e["action"] == "evaluate"]
    assert limits == [3, None, 3, None, None]
    records = TrainingRun(s.models, "r").records()
    assert [r.val.subset for r in records[1:]] == [True, False, True, False, False]
    assert "val* loss" in round_line(records[1]) and "val loss" in round_line(records[2])


def test_a_subset_as_large_as_the_validation_set_is_the_whole_set_and_not_marked_as_a_subset():
    s = session()                                      # 5 validation images
    train(s, "r", 2, eval_images=5, full_eval_every=10)
    assert [e["limit"] for e in s.invoker.events if e["action"] == "evaluate"] == [None, None]
    records = TrainingRun(s.models, "r").records()
    assert [r.val.subset for r in records[1:]] == [False, False]
    assert "val loss" in round_line(records[1])


def test_workers_that_keep_their_own_adam_state_read_it_back_and_resume_bit_identically():
    straight = session(failures={(2, 1): 1})          # worker 1's second round succeeds at its retry
    train(straight, "r", 3, worker_optimizer="own")
    run = TrainingRun(straight.models, "r")
    events = [e for e in straight.invoker.events if e["action"] == "train"]
    assert [e["global_optimizer_key"] for e in events if e["round"] == 1] == [None] * 3
    # Round 3 reads the state of the attempt that round 2's record names: worker 1's retry, not its failed first try.
    assert [e["global_optimizer_key"] for e in events if e["round"] == 3] == [
        run.worker_state_key(2, 0), run.worker_state_key(2, 1, attempt=1), run.worker_state_key(2, 2)]
    assert not straight.models.exists(run.optimizer_key(3))            # nothing averaged but the weights
    assert [k for k in straight.models.list(run.prefix) if "/states/" in k] == [run.worker_state_key(3, w)
                                                                                 for w in range(3)]
    bumpy = session(failures={(2, 1): 1, (3, 1): 2})
    with pytest.raises(TrainingFailed):
        train(bumpy, "r", 3, worker_optimizer="own")
    train(bumpy, "r", 3, resume=True)
    for r in range(1, 4):
        assert straight.models.get(run.global_key(r)) == bumpy.models.get(run.global_key(r))


# Round records as an earlier version wrote them (before kind, phases, train share, aggregation and transfer).
OLD_RECORDS = [
    {"round": 0, "workers": 0, "workers_ok": 0, "train": None, "val": None, "wall_seconds": 1.5, "gb_seconds": 2.0},
    {"round": 1, "workers": 3, "workers_ok": 3, "train": {"examples": 60, "loss": 2.5, "accuracy": 0.4},
     "val": {"count": 5, "loss": 0.5, "accuracy": 0.25}, "wall_seconds": 3.25, "gb_seconds": 7.5,
     "worker_results": [], "failed_workers": []},
]
RECORD_FIELDS = {"round", "kind", "workers", "workers_ok", "worker_results", "failed_workers", "train", "val",
                 "wall_seconds", "phase_seconds", "train_share", "completed_at", "gb_seconds", "aggregation",
                 "transfer", "epochs", "lambda_seconds", "lambda_phase_seconds", "lambda_train_share"}


def test_a_run_recorded_by_an_earlier_version_reads_resumes_and_reports():
    s = session()
    train(s, "r", 1)
    run = TrainingRun(s.models, "r")
    for record in OLD_RECORDS:
        s.models.put(run.record_key(record["round"]), json.dumps(record).encode())
    old = run.records()
    assert [r.round for r in old] == [0, 1] and old[1].transfer is None and old[1].val.accuracy == 0.25
    assert "round   1  workers 3/3" in round_line(old[1]) and "via orchestrator" not in round_line(old[1])

    result = train(s, "r", 2, resume=True)
    assert [r.round for r in result.records] == [0, 1, 2] and result.rounds_run == 1
    assert result.records[1].train.loss == 2.5 and result.records[2].transfer is not None
    # The old record was not rewritten; the new one has the fields records have always had, and this version's.
    assert json.loads(s.models.get(run.record_key(1))) == OLD_RECORDS[1]
    assert set(json.loads(s.models.get(run.record_key(2)))) == RECORD_FIELDS
    metrics = metrics_from_records("r", "d", {}, result.records)
    assert metrics["rounds"][0]["val"] == OLD_RECORDS[1]["val"] and metrics["rounds"][0]["train_share"] is None


def test_one_worker_takes_no_outer_step():
    s = session(workers=1)
    train(s, "r", 2)
    run = TrainingRun(s.models, "r")
    assert run.config().training.outer_momentum == 0.9 and not s.models.exists(run.outer_key(2))
    expected = np.float32(0.0) + np.float32(1.0) + np.float32(1.0) / np.float32(2.0)   # worker 0's steps, as they are
    assert load_weights(s.models, run.global_key(2))[0][0] == expected


class BesideTheNextRound(FakeTrainFunction):
    """Workers take 100 ms on Lambda, evaluations `evaluate_ms`. An evaluation of a round before the last waits
    (up to 20 s) until the next round's workers have started: it gets through at once only if it is sent
    beside them, not before them."""

    def __init__(self, store: MemoryStore, rounds: int, evaluate_ms: int) -> None:
        super().__init__(store)
        self.rounds, self.evaluate_ms = rounds, evaluate_ms
        self.started = {r: threading.Event() for r in range(1, rounds + 2)}
        self.waited_out: list[int] = []

    def _run(self, index: int, event: dict) -> Invocation:
        if event["action"] == "train":
            self.started[event["round"]].set()
        inv = super()._run(index, event)
        inv.duration_ms = inv.billed_ms = self.evaluate_ms if event["action"] == "evaluate" else 100
        return inv

    def _evaluate(self, event):
        round_ = int(event["weights_key"].split("/")[-2])
        if round_ < self.rounds and not self.started[round_ + 1].wait(20):
            self.waited_out.append(round_)
        return super()._evaluate(event)


def test_a_rounds_evaluation_runs_beside_the_next_rounds_workers_and_only_the_last_one_counts():
    s = session()
    s.invoker = BesideTheNextRound(s.models, 3, 250)
    result = train(s, "r", 3)
    assert s.invoker.waited_out == []                      # each evaluation overlapped the next round's workers
    records = result.records[1:]
    assert [r.val.lambda_seconds for r in records] == [0.25] * 3
    assert [r.lambda_phase_seconds.evaluate for r in records] == [0.0, 0.0, 0.25]
    # workers 0.1 s, the aggregation (here) a few ms, and the last evaluation
    assert [r.lambda_seconds for r in records] == pytest.approx([0.1, 0.1, 0.35], abs=0.02)
    # each round pays for its own evaluation, whenever it ran: three workers and one evaluation each
    assert [r.gb_seconds for r in records] == pytest.approx([(3 * 0.1 + 0.25) * 4.0] * 3)
    assert TrainingRun(s.models, "r").latest_round() == 3 and all(r.val.count == 5 for r in records)


def test_a_round_is_committed_with_its_score_before_the_next_rounds_failed_workers_stop_the_run():
    s = session(failures={(2, 0): 5, (2, 1): 5, (2, 2): 5})
    with pytest.raises(TrainingFailed, match=r"round 2: only 0 of 3 workers .* last completed round is 1"):
        train(s, "r", 3, retries=0)
    run = TrainingRun(s.models, "r")
    assert run.latest_round() == 1 and run.record(1).val is not None and run.record(1).val.count == 5


class Timed(FakeTrainFunction):
    """init takes 2 s on Lambda and fails its first `init_failures` attempts, a warm-up 5 s; the warm-ups of
    `broken_warmups` fail."""

    def __init__(self, store: MemoryStore, init_failures: int = 0, broken_warmups: bool = False) -> None:
        super().__init__(store, reverse=False)
        self.init_failures, self.broken_warmups = init_failures, broken_warmups

    def _run(self, index: int, event: dict) -> Invocation:
        inv = super()._run(index, event)
        inv.duration_ms = inv.billed_ms = {"init": 2000, "warm": 5000}.get(event["action"], 10)
        return inv

    def _init(self, event):
        if self.init_failures > 0:
            self.init_failures -= 1
            raise RuntimeError("the store hiccuped")
        return super()._init(event)

    def _warm(self, event):
        if self.broken_warmups:
            raise RuntimeError("an old train image: no warm action")
        return super()._warm(event)


def test_round_0_gets_as_many_environments_ready_to_train_as_there_are_workers_at_once():
    s = session()
    s.invoker = Timed(s.models)
    result = train(s, "r", 1)
    first_batch = s.invoker.events[:3]
    assert [e["action"] for e in first_batch] == ["init", "warm", "warm"]     # one batch: the init warms too
    assert all(e["warmup"] == {"trainable": "all", "batch_size": new_run_defaults()["batch_size"] // 3}
               for e in first_batch)
    round0 = result.records[0]
    assert round0.lambda_seconds == pytest.approx(5.0)                       # at once: the slowest of them
    assert round0.gb_seconds == pytest.approx((2 + 5 + 5) * 4.0)             # each one billed


@pytest.mark.parametrize("init_failures, broken_warmups", [(1, False), (0, True)])
def test_a_retried_init_or_failed_warm_ups_do_not_stop_the_run(init_failures, broken_warmups):
    s = session()
    s.invoker = Timed(s.models, init_failures, broken_warmups)
    result = train(s, "r", 2)
    assert result.final.round == 2 and TrainingRun(s.models, "r").latest_round() == 2
    assert [e["action"] for e in s.invoker.events].count("init") == 1 + init_failures
    # round 0 takes the init's attempts one after another, beside the warm-ups
    assert result.records[0].lambda_seconds == pytest.approx(max(2.0 * (1 + init_failures), 5.0))


def test_epochs_count_the_rounds_that_train_them_to_within_a_hundredth():
    from orchestrator.training.plan import rounds_for_epochs

    quarter = 117 / 469                     # a quarter epoch of 469 batches, in whole batches
    assert rounds_for_epochs(3, quarter) == 12                  # 2.995 epochs: not a 13th round for 0.005
    assert rounds_for_epochs(3, 0.25) == 12 and rounds_for_epochs(1.2, 0.5) == 3
    assert rounds_for_epochs(3.1, 0.25) == 13 and rounds_for_epochs(0.01, 0.25) == 1
    assert rounds_for_epochs(3, 3 * 0.995 / 14) == 14          # 14 rounds leave 0.5 % out: done
    assert rounds_for_epochs(3, 3 * 0.985 / 14) == 15          # they would leave 1.5 % out: one more round
