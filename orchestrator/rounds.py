"""The round loop of data-parallel training: orchestration only, no ML.

Each round: every worker (a train function invocation) starts from the global weights and
trains on its shard; failed workers are retried; the new global weights (and Adam
state) are the example-weighted mean of the workers' (dlpipe.train.averaging, in worker order,
one worker in memory at a time); the evaluate action scores them on the validation parts;
then the round is committed (dlpipe.train.checkpoints: optimizer state, weights, record, latest
pointer, in that order). Everything a worker does is a function of (seed, round, worker), so a resumed
run ends with the same weights as an uninterrupted one.

`run_training(session, options)` is the whole job, callable without the CLI (the demo
chains it after `prepare`).
"""

from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from tqdm import tqdm

from dlpipe.shared import clock
from dlpipe.shared.store import StoreError
from dlpipe.train import checkpoints as ck
from dlpipe.train import manifest as manifests
from dlpipe.train.averaging import AveragingError, WeightedAverage
from dlpipe.wire import EvaluateRequest, Hyper, InitRequest, ModelSpec, TrainRequest
from orchestrator.costs import summarize
from orchestrator.invokers.base import Invocation

DEFAULTS = {"local_epochs": 2, "batch_size": 128, "learning_rate": 1e-3, "seed": 0, "warmup_epochs": 0.0}
SMALL_INPUT_LIMIT = 64   # --stem auto: inputs up to this size get the stride-1 stem


class TrainingFailed(RuntimeError):
    """The run cannot go on; the message says why and what to do. Committed rounds are intact."""


@dataclass
class TrainOptions:
    dataset: str
    run: str
    rounds: int
    workers: int | None = None           # default: the dataset's shard count
    local_epochs: int | None = None      # None: DEFAULTS, or the run's own values on --resume
    batch_size: int | None = None
    learning_rate: float | None = None
    seed: int | None = None
    warmup_epochs: float | None = None   # learning-rate warm-up, in epochs of a worker's shard
    min_workers: int | None = None       # default: all workers must succeed
    retries: int = 1
    resume: bool = False
    time_budget_s: float | None = None
    version: str = "1.1"
    stem: str = "auto"                   # auto | small | imagenet
    classifier_relu: bool = False        # the reference's ReLU after conv10 (see dlpipe.train.model)
    output_dir: Path | None = Path(".")  # local copies of metrics.json and the plot
    keep_worker_weights: bool = False


@dataclass
class TrainResult:
    run: str
    records: list[dict]
    rounds_run: int
    wall_seconds: float
    invocations: list[Invocation] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def final(self) -> dict:
        return self.records[-1] if self.records else {}


# --- planning --------------------------------------------------------------------------

def read_manifest(data_store, dataset: str) -> dict:
    key = manifests.manifest_key(dataset)
    if not data_store.exists(key):
        raise TrainingFailed(f"no prepared dataset {dataset!r} in {data_store.url}; prepare it first, e.g. "
                             f"`orchestrator prepare --source fashion-mnist/train --dataset {dataset} --workers 2`")
    return json.loads(data_store.get(key))


def assign_shards(manifest: dict, workers: int | None) -> list[list[str]]:
    """Part keys for each worker: shard w, w+W, ... (all of them when W = shard count)."""
    shards = manifest["shards"]
    workers = workers or len(shards)
    if not 1 <= workers <= len(shards):
        raise TrainingFailed(f"dataset {manifest['dataset']!r} was prepared in {len(shards)} shards, so it can feed "
                             f"1 to {len(shards)} workers, not {workers}; run `orchestrator prepare` again with "
                             f"--workers {workers}")
    assigned = [[key for s in shards[w::workers] for key in s["parts"]] for w in range(workers)]
    empty = [w for w, parts in enumerate(assigned) if not parts]
    if empty:
        raise TrainingFailed(f"workers {empty} would get no data; prepare with more images or fewer workers")
    return assigned


def model_config_for(manifest: dict, version: str, stem: str, classifier_relu: bool = False) -> dict:
    recipe = manifest["recipe"]
    size, channels = int(recipe["size"]), int(recipe["channels"])
    if stem not in ("auto", "small", "imagenet"):
        raise TrainingFailed(f"--stem must be auto, small or imagenet, not {stem!r}")
    small = size <= SMALL_INPUT_LIMIT if stem == "auto" else stem == "small"
    return ck.model_config(version, (size, size, channels), len(manifest["classes"]), small,
                           manifest["classes"], recipe, classifier_relu=classifier_relu)


def resolve_hyper(options: TrainOptions, stored: dict | None) -> Hyper:
    """Hyper-parameters: explicit options, else the run's stored ones (resume), else defaults."""
    values = {}
    for name in DEFAULTS:
        given = getattr(options, name)
        previous = stored.get(name) if stored else None
        if given is not None and previous is not None and given != previous:
            raise TrainingFailed(f"run {options.run!r} was trained with {name.replace('_', '-')} {previous}; "
                                 f"resuming with {given} would not continue the same run. Drop the option "
                                 "or start a new --run")
        values[name] = given if given is not None else previous if previous is not None else DEFAULTS[name]
    return Hyper(**values)


# --- invoking with retries ---------------------------------------------------------------

def invoke_with_retries(invoker, events: list[dict], retries: int, on_result: Callable[[Invocation], None],
                        retry_event: Callable[[dict, int], dict] | None = None,
                        check: Callable[[dict, dict], str | None] | None = None,
                        ) -> tuple[dict[int, dict], dict[int, tuple[int, str]]]:
    """Run `events` on the train function; re-invoke failed ones up to `retries` times.

    Returns ({index: payload} of successes, {index: (attempts, last error)} of failures).
    `check(event, payload)` may turn a success into a failure (a bad response).
    """
    done: dict[int, dict] = {}
    errors: dict[int, tuple[int, str]] = {}
    pending = {i: e for i, e in enumerate(events)}
    for attempt in range(retries + 1):
        if not pending:
            break
        order = list(pending)
        batch = [pending[i] if attempt == 0 or retry_event is None else retry_event(pending[i], attempt)
                 for i in order]
        pending = {}
        for inv in invoker.map("train", batch):
            index, event = order[inv.index], batch[inv.index]
            problem = inv.error if not inv.ok else (check(event, inv.payload) if check else None)
            on_result(inv)
            if problem:
                errors[index] = (attempt + 1, problem)
                pending[index] = event
            else:
                errors.pop(index, None)
                done[index] = inv.payload
    return done, errors


def check_train_payload(event: dict, payload: dict) -> str | None:
    if not isinstance(payload, dict) or payload.get("weights_key") != event["output_key"] \
            or payload.get("optimizer_key") != event["output_optimizer_key"]:
        return f"bad response: expected weights at {event['output_key']!r}, got {str(payload)[:200]}"
    if int(payload.get("num_examples", 0)) <= 0:
        return "trained on no examples (time budget too small?)"
    return None


# --- the loop ---------------------------------------------------------------------------

def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def round_line(record: dict) -> str:
    train, val = record.get("train") or {}, record.get("val") or {}
    return (f"round {record['round']:>3}  workers {record['workers_ok']}/{record['workers']}  "
            f"train loss {_fmt(train.get('loss'))} acc {_fmt(train.get('accuracy'), '.3f')}  "
            f"val loss {_fmt(val.get('loss'))} acc {_fmt(val.get('accuracy'), '.3f')}  "
            f"{record['wall_seconds']:.1f} s  {record['gb_seconds']:.1f} GB-s")


def evaluate(invoker, model_spec: ModelSpec, recipe: dict, weights_key: str, val_parts: list[str],
             retries: int, on_result: Callable[[Invocation], None]) -> dict | None:
    """Validation loss/accuracy of stored weights, one invocation per validation part."""
    if not val_parts:
        return None
    events = [EvaluateRequest(action="evaluate", weights_key=weights_key, shard_keys=[part], model=model_spec,
                              recipe=recipe).model_dump(mode="json") for part in val_parts]
    done, errors = invoke_with_retries(invoker, events, retries, on_result)
    if errors:
        reasons = "; ".join(f"part {i}: {err}" for i, (_, err) in sorted(errors.items()))
        raise TrainingFailed(f"evaluating {weights_key} failed: {reasons}")
    count = sum(p["count"] for p in done.values())
    return {"count": count,
            "loss": sum(p["loss"] * p["count"] for p in done.values()) / count,
            "accuracy": sum(p["accuracy"] * p["count"] for p in done.values()) / count,
            "seconds": max(p["seconds"] for p in done.values())}


def metrics_from_records(run: str, config: dict, records: list[dict]) -> dict:
    rounds = [r for r in records if r["round"] > 0]
    return {"run": run, "dataset": config.get("dataset"), "training": config.get("training"),
            "rounds": [{"round": r["round"], "workers_ok": r["workers_ok"], "train": r["train"], "val": r["val"],
                        "wall_seconds": r["wall_seconds"], "gb_seconds": r["gb_seconds"],
                        "train_share": r.get("train_share")} for r in rounds]}


def plot_metrics(metrics: dict) -> bytes:
    """PNG of loss and accuracy per round (train and validation)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rounds = metrics["rounds"]
    xs = [r["round"] for r in rounds]
    figure = Figure(figsize=(9, 3.6), dpi=100)
    for position, (name, label) in enumerate((("loss", "loss"), ("accuracy", "accuracy")), start=1):
        axes = figure.add_subplot(1, 2, position)
        for split, style in (("train", "o-"), ("val", "s-")):
            ys = [(r[split] or {}).get(name) for r in rounds]
            points = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if points:
                axes.plot(*zip(*points), style, label="validation" if split == "val" else "train (workers)")
        axes.set_xlabel("round")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"run {metrics['run']} on {metrics['dataset']}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_outputs(model_store, run: str, config: dict, records: list[dict], output_dir: Path | None) -> dict:
    metrics = metrics_from_records(run, config, records)
    metrics_bytes = json.dumps(metrics, indent=1).encode()
    png = plot_metrics(metrics)
    model_store.put(ck.metrics_key(run), metrics_bytes)
    model_store.put(ck.plot_key(run), png)
    outputs = {"metrics": f"{model_store.url}/{ck.metrics_key(run)}", "plot": f"{model_store.url}/{ck.plot_key(run)}"}
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / f"{run}-metrics.json").write_bytes(metrics_bytes)
        (output_dir / f"{run}-metrics.png").write_bytes(png)
        outputs["local metrics"] = str(output_dir / f"{run}-metrics.json")
        outputs["local plot"] = str(output_dir / f"{run}-metrics.png")
    return outputs


def run_training(session, options: TrainOptions, out: TextIO | None = None, progress: bool = True) -> TrainResult:
    """Train `options.run` up to `options.rounds` rounds; raises TrainingFailed on a round that cannot close."""
    out = out or sys.stdout  # resolved per call, so redirected output is honoured
    start = time.perf_counter()
    data_store, model_store = session.data_store(), session.model_store()
    try:
        ck.validate_run(options.run)
        manifests.validate_dataset(options.dataset)
    except ValueError as err:
        raise TrainingFailed(str(err)) from None
    if options.rounds < 1:
        raise TrainingFailed("--rounds must be at least 1")
    if options.retries < 0:
        raise TrainingFailed("--retries must be >= 0")

    manifest = read_manifest(data_store, options.dataset)
    config = ck.read_run_config(model_store, options.run)
    if config is not None and not options.resume:
        done = ck.latest_round(model_store, options.run)
        state = "no round completed yet" if done is None else f"last completed round: {done}"
        raise TrainingFailed(f"run {options.run!r} already exists in {model_store.url} ({state}); "
                             "continue it with --resume or choose another --run")
    stored_training = (config or {}).get("training") or {}
    hyper = resolve_hyper(options, stored_training)
    workers = options.workers or stored_training.get("workers") or len(manifest["shards"])
    if stored_training.get("workers") not in (None, workers):
        raise TrainingFailed(f"run {options.run!r} was trained with {stored_training['workers']} workers; "
                             "resume it with the same --workers (or start a new --run)")
    shard_parts = assign_shards(manifest, workers)
    min_workers = options.min_workers if options.min_workers is not None else workers
    if not 1 <= min_workers <= workers:
        raise TrainingFailed(f"--min-workers must be between 1 and {workers}, not {min_workers}")

    if config is None:
        config = {"model": model_config_for(manifest, options.version, options.stem, options.classifier_relu),
                  "dataset": options.dataset, "manifest_id": manifest.get("id"),
                  "training": {**hyper.model_dump(), "workers": workers}, "created": clock.now_iso()}
        ck.write_run_config(model_store, options.run, config)
    elif config.get("dataset") != options.dataset:
        raise TrainingFailed(f"run {options.run!r} trains on dataset {config.get('dataset')!r}, not "
                             f"{options.dataset!r}; resume with --dataset {config.get('dataset')}")
    elif config.get("manifest_id") != manifest.get("id"):
        raise TrainingFailed(f"dataset {options.dataset!r} was prepared differently after run {options.run!r} started, "
                             "so resuming would train on different shards; start a new --run")
    model_spec = ModelSpec.from_config(config["model"])
    recipe = config["model"]["recipe"]
    val_parts = manifest.get("val", {}).get("parts", [])

    invoker = session.invoker
    first_record = len(invoker.records)
    failures: list[tuple[str, str]] = []
    last = ck.latest_round(model_store, options.run)
    todo = max(0, options.rounds - (last or 0))
    bar = tqdm(total=todo * workers + (1 if last is None else 0), unit="worker", desc=f"train {options.run}",
               disable=not progress)

    def tick(inv: Invocation) -> None:
        bar.update(1 if inv.ok else 0)

    try:
        if last is None:
            round_start = time.perf_counter()
            n_before = len(invoker.records)
            event = InitRequest(action="init", model=model_spec, seed=hyper.seed,
                                output_key=ck.global_key(options.run, 0)).model_dump(mode="json")
            done, errors = invoke_with_retries(invoker, [event], options.retries, tick)
            if errors:
                raise TrainingFailed(f"creating the initial weights failed: {errors[0][1]}")
            ck.commit_round(model_store, options.run, 0, {
                "kind": "init", "workers": 0, "workers_ok": 0, "train": None, "val": None,
                "parameters": done[0]["parameters"], "wall_seconds": round(time.perf_counter() - round_start, 3),
                "gb_seconds": summarize(invoker.records[n_before:]).gb_seconds, "completed_at": clock.now_iso()})
            last = 0
        elif last >= options.rounds:
            print(f"run {options.run!r} already has {last} completed rounds (asked for {options.rounds}); "
                  "nothing to train", file=out)

        for round_ in range(last + 1, options.rounds + 1):
            record = _train_round(session, options, round_, hyper, model_spec, recipe, shard_parts, val_parts,
                                  min_workers, tick, failures)
            bar.write(round_line(record), file=out)
            last = round_
    finally:
        bar.close()

    records = ck.read_records(model_store, options.run)
    outputs = write_outputs(model_store, options.run, config, records, options.output_dir)
    return TrainResult(run=options.run, records=records, rounds_run=todo, wall_seconds=time.perf_counter() - start,
                       invocations=invoker.records[first_record:], failures=failures, outputs=outputs)


def _train_round(session, options: TrainOptions, round_: int, hyper: Hyper, model_spec: ModelSpec, recipe: dict,
                 shard_parts: list[list[str]], val_parts: list[str], min_workers: int,
                 tick: Callable[[Invocation], None], failures: list[tuple[str, str]]) -> dict:
    invoker, model_store = session.invoker, session.model_store()
    run = options.run
    round_start = time.perf_counter()
    n_before = len(invoker.records)
    events = [TrainRequest(action="train", run=run, round=round_, worker=w, attempt=0,
                           global_key=ck.global_key(run, round_ - 1),
                           global_optimizer_key=ck.optimizer_key(run, round_ - 1) if round_ > 1 else None,
                           shard_keys=parts, output_key=ck.worker_key(run, round_, w, 0),
                           output_optimizer_key=ck.worker_optimizer_key(run, round_, w, 0), model=model_spec,
                           recipe=recipe,
                           hyper=hyper, time_budget_s=options.time_budget_s).model_dump(mode="json")
              for w, parts in enumerate(shard_parts)]

    def retry_event(event: dict, attempt: int) -> dict:
        return {**event, "attempt": attempt, "output_key": ck.worker_key(run, round_, event["worker"], attempt),
                "output_optimizer_key": ck.worker_optimizer_key(run, round_, event["worker"], attempt)}

    done, errors = invoke_with_retries(invoker, events, options.retries, tick, retry_event, check_train_payload)
    for w, (attempts, error) in sorted(errors.items()):
        failures.append((f"round {round_} worker {w}", f"{error} (after {attempts} attempts)"))
    if len(done) < min_workers:
        reasons = "; ".join(f"worker {w}: {error}" for w, (_, error) in sorted(errors.items()))
        previous = round_ - 1
        raise TrainingFailed(
            f"round {round_}: only {len(done)} of {len(events)} workers succeeded (need {min_workers}) after "
            f"{options.retries} retries: {reasons}. The last completed round is {previous} "
            f"({model_store.url}/{ck.global_key(run, previous)}). Fix the cause and continue with --resume, or "
            "let a round close on fewer workers with --min-workers.")
    trained_at = time.perf_counter()

    # Average in worker order (not completion order) so the sum, and so the result, is
    # reproducible; the optimizer states are averaged the same way, and stored first.
    targets = (("optimizer_key", ck.optimizer_key(run, round_)), ("weights_key", ck.global_key(run, round_)))
    for field_name, key in targets:
        average = WeightedAverage()
        try:
            for w in sorted(done):
                average.add(ck.load_weights(model_store, done[w][field_name]), int(done[w]["num_examples"]),
                            source=f"worker {w}")
        except (AveragingError, ck.CheckpointError, StoreError) as err:
            raise TrainingFailed(f"round {round_}: cannot average the workers' results: {err}. The last completed "
                                 f"round is {round_ - 1}; if a worker diverged, start a new --run with a lower "
                                 "--lr") from err
        ck.save_weights(model_store, key, average.result())
    averaged_at = time.perf_counter()

    val = evaluate(invoker, model_spec, recipe, ck.global_key(run, round_), val_parts, options.retries,
                   lambda inv: None)
    examples = sum(int(p["num_examples"]) for p in done.values())
    wall = time.perf_counter() - round_start
    train_max = max(float(p["train_seconds"]) for p in done.values())
    record = {
        "kind": "round", "workers": len(events), "workers_ok": len(done),
        "worker_results": [{k: done[w][k] for k in ("worker", "attempt", "num_examples", "epochs_done", "steps",
                                                     "stopped_early", "loss", "accuracy", "train_seconds",
                                                     "images_per_second", "load_seconds", "setup_seconds",
                                                     "upload_seconds", "max_rss_mb")} for w in sorted(done)],
        "failed_workers": [{"worker": w, "attempts": a, "error": e} for w, (a, e) in sorted(errors.items())],
        "train": {"examples": examples,
                  "loss": sum(p["loss"] * p["num_examples"] for p in done.values()) / examples,
                  "accuracy": sum(p["accuracy"] * p["num_examples"] for p in done.values()) / examples},
        "val": val,
        "wall_seconds": round(wall, 3),
        "phase_seconds": {"workers": round(trained_at - round_start, 3), "average": round(averaged_at - trained_at, 3),
                          "evaluate": round(time.perf_counter() - averaged_at, 3)},
        "train_share": round(train_max / wall, 4) if wall > 0 else None,
        "gb_seconds": round(summarize(invoker.records[n_before:]).gb_seconds, 3),
        "completed_at": clock.now_iso(),
    }
    ck.commit_round(model_store, run, round_, record)
    if not options.keep_worker_weights:
        for key in list(model_store.list(ck.round_prefix(run, round_) + "workers/")):
            model_store.delete(key)
    return {**record, "round": round_}

