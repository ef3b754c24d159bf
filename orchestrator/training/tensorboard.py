"""A training run's rounds as TensorBoard event files, so that runs compare side by side.

Written from the committed round records (the run's truth, as metrics.json is), by
tensorboardX: a light writer that needs neither TensorFlow nor PyTorch. When a run starts, its
folder is written afresh from the rounds committed so far, so a resumed run (--resume) has each
round once, never duplicated; then each round is appended as it commits (RunBoard).

Layout under <home>/tensorboard/<run>/, as Keras's TensorBoard callback lays out a run:
  train/, validation/   loss and accuracy per round (one chart each, train and validation overlaid)
  round/                times, epochs, GB-s, dollars, bytes and store requests: every number in the
                        round record (fields added to the record later appear without a change here)
  worker-NN/            each worker's images/s, peak memory and training seconds
Steps are round numbers; wall times are the rounds' completion times.
"""

from __future__ import annotations

import calendar
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from orchestrator.costs import PRICE_PER_GB_SECOND

FOLDER = "tensorboard"   # below --home
# Not flattened into round/: written as their own charts, or not numbers of the round.
SEPARATE = {"round", "train", "val", "worker_results", "failed_workers", "parameters"}
WORKER_SCALARS = {"images_per_second": "worker/images_per_second", "max_rss_mb": "worker/peak_memory_mb",
                  "train_seconds": "worker/train_seconds"}


def run_dir(home: str | Path, run: str) -> Path:
    return Path(home) / FOLDER / run


def numbers(record: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) of every number in a record's nested dicts (not lists, not booleans)."""
    for key, value in record.items():
        if prefix == "" and key in SEPARATE:
            continue
        if isinstance(value, dict):
            yield from numbers(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield f"{prefix}{key}", float(value)


def as_dicts(records: Iterable) -> list[dict]:
    """The records as JSON-like dicts, whether read as dicts or as a typed model."""
    return [r.model_dump(mode="json") if hasattr(r, "model_dump") else dict(r) for r in records]


def round_scalars(records: Iterable, architecture: str = "x86_64") -> Iterator[tuple[str, str, float, int]]:
    """(folder, tag, value, round) of every scalar, round 0's cost counted in the totals."""
    price = PRICE_PER_GB_SECOND.get(architecture, PRICE_PER_GB_SECOND["x86_64"])
    gb_total = wall_total = 0.0
    for record in sorted(as_dicts(records), key=lambda r: r["round"]):
        step = record["round"]
        gb_total += record.get("gb_seconds") or 0.0
        wall_total += record.get("wall_seconds") or 0.0
        if step == 0:
            continue
        for folder, split in (("train", "train"), ("validation", "val")):
            for name in ("loss", "accuracy"):
                value = (record.get(split) or {}).get(name)
                if value is not None:
                    yield folder, name, float(value), step
        for tag, value in numbers(record):
            yield "round", f"round/{tag}", value, step
        yield "round", "cost/lambda_dollars", (record.get("gb_seconds") or 0.0) * price, step
        yield "round", "cost/gb_seconds_to_date", gb_total, step
        yield "round", "cost/lambda_dollars_to_date", gb_total * price, step
        yield "round", "time/wall_seconds_to_date", wall_total, step
        for worker in record.get("worker_results") or []:
            for field, tag in WORKER_SCALARS.items():
                if worker.get(field) is not None:
                    yield f"worker-{worker['worker']:02d}", tag, float(worker[field]), step


def _walltime(record: dict) -> float | None:
    stamp = record.get("completed_at")
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))) if stamp else None
    except ValueError:
        return None


def write_run(home: str | Path | None, run: str, records: Iterable, architecture: str = "x86_64") -> dict[str, str]:
    """Write the run's event files afresh under <home>/tensorboard/<run>/; {"tensorboard": that folder}."""
    if home is None:
        return {}
    from tensorboardX import SummaryWriter

    target = run_dir(home, run)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix=f".{run}-", dir=target.parent))
    except OSError as err:   # the run itself is committed: say so, do not fail it
        return {"tensorboard": f"not written ({err})"}
    records = as_dicts(records)
    walltimes = {r["round"]: _walltime(r) for r in records}
    writers: dict[str, SummaryWriter] = {}
    try:
        for folder, tag, value, step in round_scalars(records, architecture):
            if folder not in writers:
                writers[folder] = SummaryWriter(str(fresh / folder), flush_secs=3600)
            writers[folder].add_scalar(tag, value, step, walltime=walltimes.get(step))
        for writer in writers.values():
            writer.close()
        shutil.rmtree(target, ignore_errors=True)
        fresh.rename(target)
    except OSError as err:
        shutil.rmtree(fresh, ignore_errors=True)
        return {"tensorboard": f"not written ({err})"}
    return {"tensorboard": str(target)}


class RunBoard:
    """A training run's event files kept current while it trains, so `tensorboard` follows it live.

    Opened with the rounds committed so far (written afresh: a resumed run has each round once),
    then each round appended as it commits. Writing never fails the run: a failure is reported
    in the outputs instead.
    """

    def __init__(self, home: str | Path | None, run: str, records: Iterable, architecture: str = "x86_64") -> None:
        self.records, self.architecture = as_dicts(records), architecture
        self.outputs = write_run(home, run, self.records, architecture)
        self._writers: dict[str, Any] = {}

    @classmethod
    def for_session(cls, session, run: str, records: Iterable) -> RunBoard:
        """Under the session's home (none for a session without one: a benchmark's, a test's)."""
        return cls(getattr(session, "home", None), run, records, getattr(session, "architecture", "x86_64"))

    @property
    def folder(self) -> Path | None:
        written = self.outputs.get("tensorboard")
        return Path(written) if written and not written.startswith("not written") else None

    def add(self, record: Any) -> None:
        """Append a committed round's scalars (its totals to date counted over every round so far)."""
        if self.folder is None:
            return
        from tensorboardX import SummaryWriter

        self.records.append(as_dicts([record])[0])
        step, walltime = self.records[-1]["round"], _walltime(self.records[-1])
        try:
            for folder, tag, value, at in round_scalars(self.records, self.architecture):
                if at == step:
                    if folder not in self._writers:   # a file of its own (names are to the second)
                        self._writers[folder] = SummaryWriter(str(self.folder / folder), flush_secs=3600,
                                                              filename_suffix=f".from-round-{step:06d}")
                    self._writers[folder].add_scalar(tag, value, step, walltime=walltime)
            for writer in self._writers.values():
                writer.flush()
        except OSError as err:
            self.close()
            self.outputs = {"tensorboard": f"not written ({err})"}

    def close(self) -> dict[str, str]:
        """{"tensorboard": the run's folder}, or why it was not written; {} without a home."""
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
        return self.outputs
