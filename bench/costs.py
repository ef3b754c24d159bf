"""What each workload costs on AWS, the whole bill: Lambda, S3 requests, bytes through the orchestrator.

Runs each workload through the real commands with the local invoker (each function billed
at its template memory, by the millisecond, as Lambda bills) and prints, per unit of work at
list prices: GB-seconds and Lambda's dollars, S3 requests and their dollars, the bytes that
went through the orchestrator and their price as internet egress, and the total.

  augment   per 1,000 source photos of ~500 px (seven variants each, 224 px JPEG)
  train     per training round of Fashion-MNIST (60,000 images, default 2 local epochs),
            scaled from a measured smaller round (GB-s grow with image-epochs), aggregated
            in the cloud (--aggregate lambda: the aggregate action runs in the worker pool)
  predict   per 1,000 predictions (SqueezeNet at 32 px, warm functions), each also one
            write to the predictions table (DynamoDB on demand)

S3 requests: the orchestrator's are counted (orchestrator.traffic), and every function reports
its own in its reply (dlpipe.shared.counted), so the bill holds them all. Augment is run both
ways, a file per output and packed (`--pack`: a tar shard per batch), each followed by the
`prepare` that reads it back, and priced for a million photos.

Caveat, printed with the table: durations are this machine's. Lambda gives a function CPU
in proportion to its memory (one vCPU at 1,769 MB), so a single-threaded workload at
1,024 MB runs about 1.7 times longer there than on one core here, for the same GB-s per
unit of CPU time; the "Lambda estimate" column applies that factor.

Usage:  python bench/costs.py [--photos 256] [--train-images 8000] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from dlpipe.shared.store import DirStore
from orchestrator.cli import build_parser
from orchestrator.costs import PRICE_PER_GB_SECOND, PRICE_PER_REQUEST, bill, summarize
from orchestrator.functions import FUNCTIONS
from orchestrator.report import megabytes
from orchestrator.session import session_from_args

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tables import markdown_table as table  # bench/tables.py

ONE_VCPU_MB = 1769
# https://aws.amazon.com/dynamodb/pricing/on-demand/ (us-east-1, since November 2024): per write request unit.
DYNAMODB_PER_WRITE = 0.625 / 1_000_000


def _bench_augment_module():
    spec = importlib.util.spec_from_file_location("bench_augment", Path(__file__).with_name("augment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_step(parser, session, argv: list[str], quiet: bool = False) -> tuple[list, object]:
    """Run one command on the session; return the invocations it made and the orchestrator's store traffic."""
    first = len(session.invoker.records)
    args = parser.parse_args(argv)
    before = session.meter.snapshot()   # the command's own summary takes from the meter too
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        status = args.run(args, session)
    if status:
        raise SystemExit(f"`orchestrator {' '.join(argv)}` exited with status {status}")
    return session.invoker.records[first:], session.meter.snapshot() - before


def table_writes(records: list) -> int:
    """Predictions recorded in the table: one write each (the functions' S3 requests are in their replies)."""
    return sum(1 for r in records if r.ok and isinstance(r.payload, dict) and "top" in r.payload)


def cpu_factor(function: str) -> float:
    """How much longer a single-threaded call runs on Lambda than on one full core."""
    return max(1.0, ONE_VCPU_MB / FUNCTIONS[function].memory_mb)


def run_augment(parser, session, home: str, photos: int) -> list[tuple]:
    """Augment and prepare the same photos both ways; a row per step (as run_workloads')."""
    bench_augment = _bench_augment_module()
    bench_augment.make_sources(DirStore(Path(home) / "data"), photos)
    rows = []
    for layout, output, extra in (("files", "augmented/files", []), ("packed", "augmented/packed", ["--pack"])):
        records, traffic = run_step(parser, session, ["augment", "--source", "raw", "--output", output,
                                                      "--size", "224", *extra])
        rows.append(("augment", f"1,000 photos, {layout}", records, traffic, 1000 / photos))
        records, traffic = run_step(parser, session, ["prepare", "--source", output, "--dataset", f"costs-{layout}",
                                                      "--workers", "1", "--val-fraction", "0", "--recipe",
                                                      "small-rgb"])
        rows.append(("train", f"prepare them, {layout}", records, traffic, 1000 / photos))
    return rows


def run_workloads(opts, home: str) -> list[tuple]:
    """(function, unit, records, orchestrator traffic, units measured per unit of work) for each workload."""
    parser = build_parser()
    session = session_from_args(parser.parse_args(["--home", home, "--concurrency", "2", "models"]))
    try:
        rows = run_augment(parser, session, home, opts.photos)
        if opts.smoke:
            return rows
        run_step(parser, session, ["fashion-mnist", "--limit", str(opts.train_images), "--splits", "train", "test"])
        run_step(parser, session, ["prepare", "--source", "fashion-mnist/train", "--val-source", "fashion-mnist/test",
                                   "--dataset", "costs", "--workers", "2", "--recipe", "fashion-mnist"])
        records, traffic = run_step(parser, session, ["train", "--dataset", "costs", "--run", "costs", "--rounds",
                                                      "1", "--output", home, "--aggregate", "lambda"])
        round_records = [r for r in records if (r.payload or {}).get("action") not in ("init", "warm")] or records
        rows.append(("train", "round of 60,000 images", round_records, traffic, 60000 / opts.train_images))

        run_step(parser, session, ["export", "--run", "costs", "--name", "costs"])
        keys = list(DirStore(Path(home) / "data").list("fashion-mnist/test/"))[: opts.predictions]
        run_step(parser, session, ["predict", f"store:{keys[0]}", "--model", "costs"], quiet=True)  # warm the workers
        records, traffic = run_step(parser, session, ["predict", *[f"store:{k}" for k in keys], "--model", "costs"],
                                    quiet=True)
        rows.append(("predict", "1,000 predictions", records, traffic, 1000 / len(keys)))
    finally:
        session.close()
    return rows


def print_lambda_table(rows: list[tuple]) -> None:
    price = PRICE_PER_GB_SECOND["x86_64"]
    cells = []
    for function, unit, records, _, scale in rows:
        cost = summarize(records)
        gbs_unit = cost.gb_seconds * scale
        dollars = gbs_unit * price + cost.invocations * scale * PRICE_PER_REQUEST
        estimate = gbs_unit * cpu_factor(function) * price + cost.invocations * scale * PRICE_PER_REQUEST
        cells.append([function, unit, f"{FUNCTIONS[function].memory_mb} MB", cost.invocations,
                      f"{cost.gb_seconds:.2f}", f"{gbs_unit:.2f}", f"{dollars:.5f}", f"{estimate:.5f}"])
    table("Lambda cost per unit of work (x86_64 list price; local invoker, billed per ms at template memory)",
          ["function", "unit", "memory", "calls", "GB-s measured", "GB-s / unit", "$ / unit", "$ Lambda estimate"],
          cells)
    print(f"\nLambda estimate: GB-s x {ONE_VCPU_MB} MB / memory for functions under one vCPU (single-threaded "
          f"work runs that much longer there). Measured {time.strftime('%Y-%m-%d')} on {sys.platform}, load average "
          f"{os.getloadavg()[0]:.1f}.")


def whole_bill(records: list, traffic, scale: float) -> dict:
    """The bill of one step, scaled to the unit of work: Lambda, S3 (orchestrator + functions), egress, table."""
    cost = bill(records, traffic)
    table_dollars = table_writes(records) * DYNAMODB_PER_WRITE
    return {"lambda": cost.lambda_.dollars * scale, "requests": {k: n * scale for k, n in cost.requests.items()},
            "s3": cost.s3_dollars * scale, "bytes": (cost.bytes_down + cost.bytes_up) * scale,
            "egress": cost.transfer_dollars * scale, "table": table_dollars * scale,
            "total": (cost.total + table_dollars) * scale}


def print_bill_table(rows: list[tuple]) -> None:
    """The whole bill per unit of work: Lambda, S3 requests (orchestrator + functions), transfer, table writes."""
    cells = []
    for function, unit, records, traffic, scale in rows:
        b = whole_bill(records, traffic, scale)
        cells.append([function, unit, f"{b['lambda']:.5f}", f"{sum(b['requests'].values()):,.0f}", f"{b['s3']:.5f}",
                      megabytes(int(b["bytes"])), f"{b['egress']:.5f}", f"{b['table']:.5f}", f"{b['total']:.5f}",
                      f"{b['s3'] / b['total'] if b['total'] else 0:.1%}"])
    table("The whole bill per unit of work (list prices; transfer priced as internet egress: the orchestrator "
          "outside AWS)", ["function", "unit", "Lambda $", "S3 requests", "S3 $", "via orchestrator", "egress $",
                           "table $", "total $", "S3 share"], cells)


def print_million_photos(rows: list[tuple]) -> None:
    """Augmenting a million photos and preparing them for training, a file per output against packed shards."""
    cells = []
    for layout in ("files", "packed"):
        steps = [whole_bill(records, traffic, scale * 1000) for _, unit, records, traffic, scale in rows
                 if unit.endswith(f", {layout}")]
        requests = {k: sum(s["requests"][k] for s in steps) for k in ("put", "get", "list")}
        cells.append([{"files": "a file per output", "packed": "packed (--pack)"}[layout],
                      f"{requests['put']:,.0f}", f"{requests['get']:,.0f}", f"{requests['list']:,.0f}",
                      f"{sum(s['s3'] for s in steps):.2f}", f"{sum(s['lambda'] for s in steps):.2f}",
                      f"{sum(s['total'] for s in steps):.2f}"])
    table("A million photos, augmented (7 variants at 224 px) and prepared for training (64 px parts), list prices",
          ["layout", "PUT", "GET", "LIST", "S3 $", "Lambda $", "total $"], cells)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=256, help="source photos for augment (default: %(default)s)")
    ap.add_argument("--train-images", type=int, default=8000,
                    help="Fashion-MNIST images in the measured round (default: %(default)s)")
    ap.add_argument("--predictions", type=int, default=200, help="predictions to make (default: %(default)s)")
    ap.add_argument("--smoke", action="store_true",
                    help="a quick run (16 photos, augment and prepare only): does it still work")
    opts = ap.parse_args(argv)
    if opts.smoke:
        opts.photos = 16
    rows = run_workloads(opts, tempfile.mkdtemp(prefix="dlpipe-costs-"))
    print_lambda_table(rows)
    print_bill_table(rows)
    print_million_photos(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
