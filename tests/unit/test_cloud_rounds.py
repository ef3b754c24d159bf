"""The round loop with aggregation in the cloud: same weights as local, retries, uncommitted rounds, traffic.

The fake train function of test_rounds gains the real aggregate action (dlpipe.train.aggregate
on its store). The orchestrator sees the store through a MeteredStore, as a session gives it,
so each round's record shows exactly what crossed the orchestrator.
"""

from __future__ import annotations

import io

import pytest

from dlpipe.runs.run import TrainingRun
from dlpipe.train.aggregate import run_aggregate
from dlpipe.wire import AggregateRequest
from orchestrator.traffic import MeteredStore
from orchestrator.training.loop import TrainingFailed, TrainOptions, run_training
from tests.unit.test_rounds import SHARD_SIZES, FakeSession, FakeTrainFunction
from tests.unit.test_rounds import session as plain_session


class CloudTrainFunction(FakeTrainFunction):
    name = "lambda"

    def __init__(self, store, aggregate_failures: int = 0) -> None:
        super().__init__(store)
        self.aggregate_failures = aggregate_failures

    def _aggregate(self, event):
        if self.aggregate_failures > 0 and event["weights_key"].endswith("/global.npz"):   # the weights' root
            self.aggregate_failures -= 1
            raise RuntimeError("aggregate crashed")
        return run_aggregate(AggregateRequest.model_validate(event), self.store).model_dump(mode="json")


def cloud_session(aggregate_failures: int = 0) -> FakeSession:
    """The fake session's stores, metered into its meter as a real session's are; the function
    writes to them unmetered."""
    base = plain_session()
    s = FakeSession(data=base.data, models=base.models)
    s.invoker = CloudTrainFunction(base.models, aggregate_failures)
    s.data_store = lambda: MeteredStore(base.data, s.meter)
    s.model_store = lambda: MeteredStore(base.models, s.meter)
    return s


def train(s, run: str, rounds: int, out: io.StringIO | None = None, **options):
    return run_training(s, TrainOptions(dataset="d", run=run, rounds=rounds, output_dir=None, **options),
                        out=out or io.StringIO(), progress=False)


def global_bytes(s, run: str, rounds: int) -> list[bytes]:
    names = TrainingRun(None, run)
    return [s.models.get(key) for r in range(rounds + 1) for key in (names.global_key(r), names.optimizer_key(r))
            if s.models.exists(key)]


def test_lambda_and_local_aggregation_train_the_same_run_and_only_local_downloads_the_weights():
    cloud = cloud_session()
    here = cloud_session()
    out = io.StringIO()
    cloud_result = train(cloud, "r", 3, out=out, aggregate="auto")       # auto: the invoker is "lambda"
    here_result = train(here, "r", 3, aggregate="local")
    assert global_bytes(cloud, "r", 3) == global_bytes(here, "r", 3)
    assert [r.aggregation.engine for r in cloud_result.records[1:]] == ["lambda"] * 3
    assert [r.aggregation.engine for r in here_result.records[1:]] == ["local"] * 3

    local, remote = here_result.records[2].transfer.model_dump(), cloud_result.records[2].transfer.model_dump()
    # every worker's weights and Adam state, and for the outer step the previous global weights and momentum
    assert local["store_requests"]["get"] == 2 * len(SHARD_SIZES) + 2
    assert remote["store_requests"]["get"] == 0 and remote["bytes_down"] == 0
    assert local["bytes_down"] > 0
    assert "via orchestrator" in out.getvalue()


def test_the_transfer_of_a_local_round_is_the_worker_files_it_read():
    s = cloud_session()
    before = s.meter.snapshot()
    train(s, "r", 1, aggregate="local", keep_worker_weights=True, outer_learning_rate=1.0, outer_momentum=0.0,
          worker_optimizer="averaged")
    run = TrainingRun(s.models, "r")
    files = list(s.models.list(run.round_prefix(1) + "workers/"))
    record = run.records()[1]
    assert len(files) == 2 * len(SHARD_SIZES)
    assert record.transfer.bytes_down == sum(len(s.models.get(k)) for k in files)
    assert record.transfer.bytes_up == len(s.models.get(run.global_key(1))) + len(
        s.models.get(run.optimizer_key(1)))
    assert (s.meter.snapshot() - before).bytes_up > record.transfer.bytes_up   # the commit came after it


def test_a_failed_aggregation_is_retried_and_one_that_keeps_failing_leaves_the_round_uncommitted():
    straight = cloud_session()
    train(straight, "r", 2)
    flaky = cloud_session(aggregate_failures=1)
    train(flaky, "r", 2, retries=1)
    assert global_bytes(flaky, "r", 2) == global_bytes(straight, "r", 2)
    assert flaky.invoker.aggregate_failures == 0

    broken = cloud_session()
    train(broken, "r", 1)
    broken.invoker.aggregate_failures = 2
    with pytest.raises(TrainingFailed, match=r"round 2: cannot average.*node 0\.0: RuntimeError: aggregate crashed "
                                             r"\(after 2 attempts\).*last completed round is 1.*--resume"):
        train(broken, "r", 2, resume=True, retries=1)
    run = TrainingRun(broken.models, "r")
    assert run.latest_round() == 1 and not broken.models.exists(run.record_key(2))
    train(broken, "r", 2, resume=True)
    assert global_bytes(broken, "r", 2) == global_bytes(straight, "r", 2)


def test_a_run_resumed_on_the_other_engine_stays_bit_identical():
    straight = cloud_session()
    train(straight, "r", 3, aggregate="local")
    switched = cloud_session()
    train(switched, "r", 1, aggregate="lambda")
    train(switched, "r", 2, resume=True, aggregate="local")
    train(switched, "r", 3, resume=True, aggregate="lambda")
    assert global_bytes(switched, "r", 3) == global_bytes(straight, "r", 3)
