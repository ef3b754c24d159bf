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

S3 requests: the orchestrator's are counted (orchestrator.traffic), the aggregate action
reports its own, and the other functions' come from their replies at what each does per
item (augment: a GET per source and a PUT per output; a train worker: its part, the global
weights and Adam state read, its own two written; evaluate: a part and the weights; predict:
the image; model files are read once per warm container and left out).

Caveat, printed with the table: durations are this machine's. Lambda gives a function CPU
in proportion to its memory (one vCPU at 1,769 MB), so a single-threaded workload at
1,024 MB runs about 1.7 times longer there than on one core here, for the same GB-s per
unit of CPU time; the "Lambda estimate" column applies that factor.

Usage:  python bench/costs.py [--photos 64] [--train-images 8000]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
import tempfile
import time
from pathlib import Path

from dlpipe.shared.store import DirStore
from orchestrator.cli import build_parser
from orchestrator.costs import PRICE_PER_GB_SECOND, PRICE_PER_REQUEST, bill, s3_request_dollars, summarize
from orchestrator.functions import FUNCTIONS
from orchestrator.report import megabytes
from orchestrator.session import session_from_args
from orchestrator.traffic import REQUEST_KINDS

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


def replied_requests(records: list) -> tuple[dict[str, int], int]:
    """S3 requests the functions made, from their replies (see the module docstring); and table writes."""
    counts, writes = dict.fromkeys(REQUEST_KINDS, 0), 0
    for r in records:
        reply = r.payload if r.ok and isinstance(r.payload, dict) else {}
        action = reply.get("action")
        if "images_in" in reply:
            counts["get"] += reply["images_in"]
            counts["put"] += reply["images_out"]
        elif action == "train":
            counts["get"] += 3
            counts["put"] += 2
        elif action == "evaluate":
            counts["get"] += 2
        elif action == "init":
            counts["put"] += 1
        elif "top" in reply:
            counts["get"] += 1
            writes += 1
    return counts, writes


def cpu_factor(function: str) -> float:
    """How much longer a single-threaded call runs on Lambda than on one full core."""
    return max(1.0, ONE_VCPU_MB / FUNCTIONS[function].memory_mb)


def run_workloads(opts, home: str) -> list[tuple]:
    """(function, unit, records, orchestrator traffic, units measured per unit of work) for each workload."""
    parser = build_parser()
    session = session_from_args(parser.parse_args(["--home", home, "--concurrency", "2", "models"]))
    rows = []
    try:
        bench_augment = _bench_augment_module()
        bench_augment.make_sources(DirStore(Path(home) / "data"), opts.photos)
        records, traffic = run_step(parser, session, ["augment", "--source", "raw", "--output", "augmented",
                                                      "--size", "224"])
        rows.append(("augment", "1,000 photos", records, traffic, 1000 / opts.photos))

        run_step(parser, session, ["fashion-mnist", "--limit", str(opts.train_images), "--splits", "train", "test"])
        run_step(parser, session, ["prepare", "--source", "fashion-mnist/train", "--val-source", "fashion-mnist/test",
                                   "--dataset", "costs", "--workers", "2", "--recipe", "fashion-mnist"])
        records, traffic = run_step(parser, session, ["train", "--dataset", "costs", "--run", "costs", "--rounds",
                                                      "1", "--output", home, "--aggregate", "lambda"])
        round_records = [r for r in records if (r.payload or {}).get("action") != "init"] or records
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
    print("\nLambda cost per unit of work (x86_64 list price; local invoker, billed per ms at template memory)")
    print(f"{'workload':<9} {'unit':<24} {'memory':>7} {'calls':>6} {'GB-s measured':>14} "
          f"{'GB-s / unit':>12} {'$ / unit':>10} {'$ Lambda estimate':>18}")
    for function, unit, records, _, scale in rows:
        cost = summarize(records)
        gbs_unit = cost.gb_seconds * scale
        dollars = gbs_unit * price + cost.invocations * scale * PRICE_PER_REQUEST
        estimate = gbs_unit * cpu_factor(function) * price + cost.invocations * scale * PRICE_PER_REQUEST
        print(f"{function:<9} {unit:<24} {FUNCTIONS[function].memory_mb:>5}MB {cost.invocations:>6} "
              f"{cost.gb_seconds:>14.2f} {gbs_unit:>12.2f} {dollars:>10.5f} {estimate:>18.5f}")
    print(f"\nLambda estimate: GB-s x {ONE_VCPU_MB} MB / memory for functions under one vCPU (single-threaded "
          f"work runs that much longer there). Measured {time.strftime('%Y-%m-%d')} on {sys.platform}.")


def print_bill_table(rows: list[tuple]) -> None:
    """The whole bill per unit of work: Lambda, S3 requests (orchestrator + functions), transfer, table writes."""
    print("\nThe whole bill per unit of work (list prices; transfer priced as internet egress: the orchestrator "
          "outside AWS)")
    print(f"{'workload':<9} {'Lambda $':>9} {'S3 requests':>12} {'S3 $':>9} {'via orchestrator':>17} "
          f"{'egress $':>9} {'table $':>8} {'total $':>9} {'S3 share':>9}")
    for function, _, records, traffic, scale in rows:
        cost = bill(records, traffic)
        theirs, writes = replied_requests(records)
        requests = sum(cost.requests.values()) + sum(theirs.values())
        s3 = cost.s3_dollars + s3_request_dollars(theirs)
        table = writes * DYNAMODB_PER_WRITE
        total = cost.lambda_.dollars + s3 + cost.transfer_dollars + table
        print(f"{function:<9} {cost.lambda_.dollars * scale:>9.5f} {requests * scale:>12,.0f} {s3 * scale:>9.5f} "
              f"{megabytes(int((cost.bytes_down + cost.bytes_up) * scale)):>17} "
              f"{cost.transfer_dollars * scale:>9.5f} {table * scale:>8.5f} {total * scale:>9.5f} "
              f"{s3 / total if total else 0:>9.1%}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=256, help="source photos for augment (default: %(default)s)")
    ap.add_argument("--train-images", type=int, default=8000,
                    help="Fashion-MNIST images in the measured round (default: %(default)s)")
    ap.add_argument("--predictions", type=int, default=200, help="predictions to make (default: %(default)s)")
    opts = ap.parse_args(argv)
    rows = run_workloads(opts, tempfile.mkdtemp(prefix="dlpipe-costs-"))
    print_lambda_table(rows)
    print_bill_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
