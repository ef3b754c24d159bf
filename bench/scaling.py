"""Does data parallelism pay? N workers against one, at equal epochs, in projected Lambda time and GB-s.

Every configuration is a real run of the pipeline (prepare, then `run_training` on the local
invoker, the defaults unless given) over the same prepared data and the same number of epochs.
For each worker count it reports the final test accuracy, the epochs and the Lambda seconds
it took to reach the accuracy one worker ends with (the target), the speed-up against one
worker, the GB-s and dollars spent up to then, and the share of warm rounds spent outside
training. Times and GB-s are projected for Lambda from each invocation's CPU time and transfers
(orchestrator.invokers.projection), so they mean the same on a loaded 2-core machine as on a
quiet one; a round's time is its slowest worker plus its aggregation and evaluation. Workers
train on one thread here (their CPU time is then one vCPU's work), at most 4 processes at once.

    python bench/scaling.py --smoke                  # a tiny size, for CI: well under a minute
    python bench/scaling.py --quick                  # 6,000 / 1,000 images, 4 epochs, 1 2 4 8 16 workers
    python bench/scaling.py                          # all of Fashion-MNIST (60,000 / 10,000), 10 epochs
    python bench/scaling.py --finetune               # flowers12 fine-tuning, 3 epochs, 1 4 8 workers
    python bench/scaling.py --quick --json bench/results/scaling-quick.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tables import markdown_table  # bench/tables.py

from dlpipe.datasets import fashion_mnist
from dlpipe.shared.config import Settings
from orchestrator.commands.fashion_mnist import write_fashion_mnist
from orchestrator.costs import PRICE_PER_GB_SECOND, PRICE_PER_REQUEST, summarize
from orchestrator.session import Session
from orchestrator.training.loop import TrainOptions, run_training
from orchestrator.training.prepare import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}
MAX_PROCESSES = 4      # each worker is a TensorFlow process of about 1 GB
SIZES = {  # train images, test images, epochs, worker counts
    "smoke": (512, 256, 1.0, [1, 2]),
    "quick": (6000, 1000, 4.0, [1, 2, 4, 8, 16]),
    "full": (60000, 10000, 10.0, [1, 8, 16, 2, 4]),
    "finetune": (None, None, 3.0, [1, 4, 8]),
}


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """Set variables that spawned workers inherit; restore them afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def session_for(settings: Settings, workers: int) -> Session:
    """A local session whose workers log to a file under the settings' home (the bench's output stays a table)."""
    home = str(Path(settings.model_url).parent)
    return Session(settings, "local", concurrency=min(MAX_PROCESSES, workers), home=home)


def prepare_fashion_mnist(session: Session, train: int, test: int, shards: int, idx_dir: str | None) -> str:
    data = session.data_store()
    write_fashion_mnist(data, "fm", limit=train, splits=("train",), idx_dir=idx_dir, progress=False)
    write_fashion_mnist(data, "fm", limit=test, splits=("test",), idx_dir=idx_dir, progress=False)
    prepare_dataset(session, "fm/train", "fm", shards, fashion_mnist.FASHION_MNIST_RECIPE, val_source="fm/test",
                    progress=False)
    return "fm"


def prepare_flowers(settings: Settings, home: Path, photos: Path, models: Path, shards: int) -> str:
    from finetune import setup  # bench/finetune.py: imports the ONNX model, prepares with its recipe

    session, _ = setup(home, photos, models / "squeezenet1.1.onnx", models / "imagenet_synset_words.txt", shards)
    session.close()
    return "flowers"


def train(settings: Settings, dataset: str, workers: int, epochs: float, overrides: dict, verbose: bool,
          shared: Session | None = None):
    """One configuration in a pool of its own: its workers start cold, as a new run's do on Lambda
    (`shared`: in that session's warm pool instead, for --smoke)."""
    session = shared or session_for(settings, workers)
    try:
        options = TrainOptions(dataset=dataset, run=f"w{workers}", epochs=epochs, workers=workers, output_dir=None,
                               **overrides)
        started = time.perf_counter()
        result = run_training(session, options, out=sys.stdout if verbose else io.StringIO(), progress=False)
        return result, time.perf_counter() - started
    finally:
        if shared is None:
            session.close()


def to_target(records: list[dict], target: float) -> dict | None:
    """Epochs, Lambda seconds and GB-s from the start until a round's validation accuracy reaches `target`.

    The time includes that round's evaluation: the score says the target is reached (a round's evaluation
    runs beside the next round's workers, so its record counts it only in the last round)."""
    seconds = gbs = 0.0
    for record in records:
        seconds += record.get("lambda_seconds") or 0.0
        gbs += record["gb_seconds"]
        val = record["val"] or {}
        if record["round"] > 0 and val.get("accuracy", 0.0) >= target - 1e-9:
            counted = (record.get("lambda_phase_seconds") or {}).get("evaluate", 0.0)
            seconds += max(0.0, (val.get("lambda_seconds") or 0.0) - counted)
            return {"round": record["round"], "epochs": record["epochs"], "lambda_seconds": seconds, "gb_seconds": gbs}
    return None


def outside_training(records: list[dict]) -> float | None:
    """Median share of a warm round's Lambda time outside the slowest worker's training (round 1 is cold)."""
    shares = [1 - r["lambda_train_share"] for r in records[2:] if r.get("lambda_train_share") is not None]
    return statistics.median(shares) if shares else None


def summary(workers: int, result, wall: float) -> dict:
    keep = ("round", "epochs", "val", "train", "lambda_seconds", "lambda_phase_seconds", "lambda_train_share",
            "gb_seconds", "wall_seconds")
    records = [{k: v for k, v in (r.to_json() | {"round": r.round}).items() if k in keep} for r in result.records]
    final, cost = records[-1], summarize(result.invocations)
    return {"workers": workers, "rounds": final["round"],
            "epochs": final["epochs"], "final_accuracy": final["val"]["accuracy"], "records": records,
            "lambda_seconds": sum(r.get("lambda_seconds") or 0.0 for r in records), "gb_seconds": cost.gb_seconds,
            "dollars": cost.dollars, "invocations": cost.invocations, "outside_training": outside_training(records),
            "local_wall_seconds": wall}


def rows_for(runs: list[dict]) -> list[list]:
    one = runs[0]   # the first configuration run: one worker, unless --workers says otherwise
    target = one["final_accuracy"]
    base = to_target(one["records"], target)
    rows = []
    for run in sorted(runs, key=lambda r: r["workers"]):
        reached = to_target(run["records"], target)
        run["to_target"] = reached
        speedup = base["lambda_seconds"] / reached["lambda_seconds"] if reached and base else None
        dollars = (reached["gb_seconds"] * PRICE_PER_GB_SECOND["x86_64"] + run["invocations"] * PRICE_PER_REQUEST
                   * reached["round"] / run["rounds"]) if reached else None
        outside = run["outside_training"]
        rows.append([run["workers"], run["rounds"], f"{run['final_accuracy']:.1%}",
                     f"{(run['final_accuracy'] - target) * 100:+.1f}" if run is not one else "",
                     f"{reached['epochs']:.2f}" if reached else "not reached",
                     f"{reached['lambda_seconds']:,.0f}" if reached else "-",
                     f"{speedup:.1f}x" if speedup else "-",
                     f"{reached['gb_seconds']:,.0f}" if reached else "-",
                     f"{reached['gb_seconds'] / base['gb_seconds']:.2f}" if reached and base else "-",
                     f"{dollars:.4f}" if dollars is not None else "-",
                     f"{run['lambda_seconds']:,.0f}", f"{outside:.1%}" if outside is not None else "-",
                     f"{run['local_wall_seconds']:,.0f}"])
    return rows


HEADER = ["workers", "rounds", "final test acc", "vs 1 worker (points)", "epochs to target", "Lambda s to target",
          "speed-up", "GB-s to target", "GB-s vs 1", "$ to target", "Lambda s in all", "warm rounds outside training",
          "local wall s"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="512 / 256 images, 1 epoch, 1 and 2 workers (CI)")
    size.add_argument("--quick", action="store_true", help="6,000 / 1,000 images, 4 epochs, 1 2 4 8 16 workers")
    size.add_argument("--finetune", action="store_true", help="flowers12 from the ImageNet SqueezeNet, 3 epochs")
    parser.add_argument("--train-images", type=int, help="Fashion-MNIST training images (default by size)")
    parser.add_argument("--test-images", type=int)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--workers", type=int, nargs="+")
    parser.add_argument("--idx-dir", help="Fashion-MNIST's IDX files (default: the Debian package's, else download)")
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "photos" / "flowers12")
    parser.add_argument("--models", type=Path, default=REPO.parent / "shared" / "models")
    parser.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE",
                        help="train options other than the defaults, e.g. outer_momentum=0 lr_scaling=sqrt")
    parser.add_argument("--json", type=Path, help="also write the results (every round of every run) here")
    parser.add_argument("--verbose", action="store_true", help="print every round line")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="print the table of earlier --json results (runs of the same size merged, one worker "
                             "first; for a worker count in two files, the later file's) instead of running anything")
    return parser.parse_args(argv)


def overrides(pairs: list[str]) -> dict:
    values = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        try:
            values[name] = json.loads(text)
        except json.JSONDecodeError:
            values[name] = text
    return values


def report(paths: list[Path]) -> int:
    """The table of runs measured earlier (e.g. one worker and the rest in two processes), as one."""
    results = [json.loads(path.read_text()) for path in paths]
    latest = {run["workers"]: run for result in results for run in result["runs"]}   # a later file's run wins
    runs = [latest[workers] for workers in sorted(latest)]
    first = results[0]
    markdown_table(f"{first['what']}, {first['epochs']:g} epochs at every worker count; target: {runs[0]['workers']} "
                   f"worker(s)' final accuracy ({runs[0]['final_accuracy']:.1%}); projected Lambda time and GB-s",
                   HEADER, rows_for(runs))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.report:
        return report(args.report)
    size = "smoke" if args.smoke else "quick" if args.quick else "finetune" if args.finetune else "full"
    train_images, test_images, epochs, workers = SIZES[size]
    train_images, test_images = args.train_images or train_images, args.test_images or test_images
    epochs, workers = args.epochs or epochs, args.workers or workers
    if size == "finetune" and not args.photos.is_dir():
        print(f"no photos at {args.photos}: pass --photos DIR (class folders under train/ and test/)")
        return 2
    extra = overrides(args.set)
    if size == "finetune":
        extra.setdefault("init_from", "squeezenet1.1")   # imported by bench/finetune.py's setup
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp, environment(ONE_THREAD), \
            contextlib.ExitStack() as stack:
        settings = Settings(data_url=f"{tmp}/data", model_url=f"{tmp}/models", table_url=f"sqlite:///{tmp}/t.db")
        # --smoke: one warm pool for everything (CI time); otherwise each configuration starts cold
        shared = stack.enter_context(contextlib.closing(session_for(settings, max(workers)))) if args.smoke else None
        started = time.perf_counter()
        if size == "finetune":
            dataset, what = prepare_flowers(settings, Path(tmp), args.photos, args.models, max(workers)), \
                "flowers12 (720 / 240 photos at 224 px) fine-tuned from the ImageNet SqueezeNet 1.1"
        else:
            with contextlib.ExitStack() as own:
                session = shared or own.enter_context(contextlib.closing(session_for(settings, MAX_PROCESSES)))
                dataset = prepare_fashion_mnist(session, train_images, test_images, max(workers), args.idx_dir)
            what = f"Fashion-MNIST ({train_images:,} / {test_images:,} images)"
        print(f"{what}: prepared in {time.perf_counter() - started:.0f} s; load {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores; options: the defaults{''.join(f', {k}={v}' for k, v in extra.items())}",
              flush=True)
        for count in workers:
            result, wall = train(settings, dataset, count, epochs, extra, args.verbose, shared)
            runs.append(summary(count, result, wall))
            print(f"  {count} workers: {runs[-1]['final_accuracy']:.1%} after {runs[-1]['epochs']:.2f} epochs, "
                  f"{runs[-1]['lambda_seconds']:,.0f} Lambda s, {runs[-1]['gb_seconds']:,.0f} GB-s, "
                  f"{wall:,.0f} s here", flush=True)
            if args.json:   # after every configuration: a long run that is stopped keeps what it measured
                write_json(args.json, size, what, epochs, extra, runs)
    markdown_table(f"{what}, {epochs:g} epochs at every worker count; target: {runs[0]['workers']} worker(s)' final "
                   f"accuracy ({runs[0]['final_accuracy']:.1%}); projected Lambda time and GB-s", HEADER,
                   rows_for(runs))
    return 0


def write_json(path: Path, size: str, what: str, epochs: float, options: dict, runs: list[dict]) -> None:
    rows = rows_for(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"size": size, "what": what, "epochs": epochs, "options": options, "header": HEADER,
                                "rows": rows, "runs": runs}, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
