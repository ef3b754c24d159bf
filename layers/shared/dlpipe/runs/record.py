"""What happened in one round of a run: runs/<run>/rounds/<r>/record.json, as one typed model.

The round loop writes it (orchestrator.training.loop) and everything else reads it through
`TrainingRun.records()`. Records are never rewritten, so fields added since a run started are
optional: a run recorded by an earlier version still reads, resumes and reports.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")   # what a later version adds is kept, not refused


class TrainScore(_Part):
    """The workers' training loss and accuracy, per-example means."""

    examples: int
    loss: float | None = None
    accuracy: float | None = None


class ValScore(_Part):
    """The global weights' validation loss and accuracy."""

    count: int
    loss: float | None = None
    accuracy: float | None = None
    seconds: float | None = None
    subset: bool = False                    # a fixed subset of the validation set (train --eval-images)
    lambda_seconds: float | None = None     # the slowest evaluate call on Lambda (projected on the local invoker)


class FailedWorker(_Part):
    worker: int
    attempts: int
    error: str


class PhaseSeconds(_Part):
    workers: float
    average: float
    evaluate: float


class AggregationRecord(_Part):
    """How the round was aggregated (orchestrator.training.aggregation)."""

    engine: str
    levels: int
    nodes: int
    calls: int
    seconds: float
    lambda_seconds: float | None = None     # on Lambda: the slowest node of each level, added up


class TransferRecord(_Part):
    """What went through the orchestrator in the round: bytes each way, store requests by kind."""

    bytes_down: int
    bytes_up: int
    store_requests: dict[str, int]


class LambdaPhases(_Part):
    """A round's time on Lambda by phase: its slowest worker, then aggregation, then evaluation."""

    workers: float
    aggregate: float
    evaluate: float


class RoundRecord(_Part):
    """One round's record; round 0 (kind "init") has only the first fields."""

    round: int = 0
    kind: Literal["init", "round"] = "round"
    workers: int
    workers_ok: int
    train: TrainScore | None = None
    val: ValScore | None = None
    wall_seconds: float
    gb_seconds: float
    completed_at: str | None = None
    parameters: int | None = None                       # round 0: the model's parameter count
    worker_results: list[dict] | None = None            # each a TrainResponse of its day: kept as sent
    failed_workers: list[FailedWorker] | None = None
    phase_seconds: PhaseSeconds | None = None
    train_share: float | None = None
    aggregation: AggregationRecord | None = None
    transfer: TransferRecord | None = None              # rounds recorded before it existed have none
    epochs: float | None = None                         # epochs of data done by the end of this round
    lambda_seconds: float | None = None                 # the round's time on Lambda (slowest worker + serial work)
    lambda_phase_seconds: LambdaPhases | None = None
    lambda_train_share: float | None = None             # the slowest worker's training in lambda_seconds

    def to_json(self) -> dict:
        """The stored form: the fields this record was given (so an old record reads back as it was)."""
        return self.model_dump(mode="json", exclude_unset=True)
