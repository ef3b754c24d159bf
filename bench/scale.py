"""The fan-out at scale: the lambda invoker against a local Invoke API and moto_server S3.

Three processes, so that the orchestrator's own CPU is measured apart from the "cloud":
moto_server (S3), an Invoke API on 127.0.0.1 (tests/integration/lambda_api.py) whose
functions are simulated (they sleep and move realistic payloads) but run the real train
handler's aggregate action, and this one, the orchestrator, with the real LambdaInvoker.

1. invoker: --batches augment-like batches at --concurrency, with a reserved concurrency
   below it (throttles, 429) plus injected throttles, and some batches outliving the
   client's read timeout. Checked: every batch accounted for exactly once, none resent
   after a client timeout, the invoker's counts equal the server's. Measured: the invoker's
   overhead per call (round trip minus the function's duration) and orchestrator CPU per call.
2. aggregation: one training round (the real round loop, `run_training`) at N simulated
   workers with small weight files, aggregated here (local) and in the cloud (lambda):
   bytes through the orchestrator, aggregation time, and that both give the same bytes.

Usage:  python bench/scale.py [--batches 1000] [--concurrency 100] [--workers 4 16 64 256] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dlpipe.runs.record import RoundRecord

REPO = Path(__file__).resolve().parent.parent
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "POWERTOOLS_LOG_LEVEL": "WARNING",
            "DLPIPE_DATA_URL": "s3://bench-data", "DLPIPE_MODEL_URL": "s3://bench-models"}
VARIANTS = ("original", "flip", "rotate", "crop", "blur", "color", "contrast")
SQUEEZENET_PARAMETERS = 1_235_496


# --- the simulated functions (run in the server process) -----------------------------

def simulated_augment(event: dict, context) -> dict:
    """An augment batch's reply for its keys, after the time the batch takes."""
    time.sleep(float(event["sleep_s"]))
    results = [{"key": k, "outputs": [f"{event['output_prefix']}/{k[:-4]}_{v}.jpg" for v in VARIANTS]}
               for k in event["keys"]]
    return {"statusCode": 200, "results": results, "images_in": len(results),
            "images_out": len(results) * len(VARIANTS), "failed": 0, "bytes_out": 15_000 * len(results) * 7}


def simulated_train(params: int, sleep_s: float):
    """init and train as the real actions behave (weights from (global, round, worker)); aggregate is real."""
    import importlib.util

    from dlpipe.shared.config import Settings
    from dlpipe.train.weights import load_weights, save_weights
    from dlpipe.wire import InitResponse, TrainResponse, WarmResponse

    spec = importlib.util.spec_from_file_location("train_app", REPO / "functions" / "train" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = module.handler
    store = Settings.from_env().model_store()
    shapes = [(params // 2,), (params // 4,), (params - params // 2 - params // 4 - 10,), (10,)]

    def handler(event: dict, context) -> dict:
        if event["action"] == "aggregate":
            return real(event, context)
        if event["action"] == "warm":
            return WarmResponse(seconds=0.0, was_warm=True).model_dump()
        if event["action"] == "init":
            rng = np.random.default_rng(event["seed"])
            weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
            size = save_weights(store, event["output_key"], weights)
            return InitResponse(weights_key=event["output_key"], arrays=4, parameters=params, bytes=size).model_dump()
        start = load_weights(store, event["global_key"])
        state = load_weights(store, event["global_optimizer_key"]) if event["global_optimizer_key"] else \
            [np.zeros((), np.float64)] + [np.zeros(s, np.float32) for s in shapes * 2]
        time.sleep(sleep_s)
        rng = np.random.default_rng([event["round"], event["worker"]])
        steps = [rng.normal(scale=1e-2, size=w.shape).astype(np.float32) for w in start]
        moments = [m + rng.random(m.shape).astype(np.float32) * 1e-4 for m in state[1:]]
        differences = event["hyper"].get("update_precision") == "bfloat16"   # as the real worker stores its round
        size = save_weights(store, event["output_key"], steps if differences else
                            [w + s for w, s in zip(start, steps, strict=True)],
                            "bfloat16" if differences else "float32")
        size += save_weights(store, event["output_optimizer_key"], [state[0] + 10.0, *moments],
                             event["hyper"].get("optimizer_precision", "float32"))
        n = 100 + event["worker"] * 37 % 50
        return TrainResponse(run=event["run"], round=event["round"], worker=event["worker"],
                             attempt=event["attempt"], weights_key=event["output_key"],
                             optimizer_key=event["output_optimizer_key"],
                             delta_from=event["global_key"] if differences else None, num_examples=n, shard_examples=n,
                             epochs_done=1, steps=1, stopped_early=False, loss=1.0, accuracy=0.5,
                             train_seconds=sleep_s, images_per_second=n / sleep_s, load_seconds=0.01,
                             setup_seconds=0.0, upload_seconds=0.01, weights_bytes=size, max_rss_mb=None).model_dump()

    return handler


def control(api):
    """The server's own function: reset its call log, inject throttles, report what it saw."""
    def handler(event: dict, context) -> dict:
        with api.lock:
            calls = [c for c in api.calls if c.function != "control"]
            if event["op"] == "reset":
                api.calls.clear()
            elif event["op"] == "throttle":
                api.functions[event["function"]].throttle_next += event["times"]
        ran = Counter(c.event.get("batch") for c in calls if c.status != 429 and isinstance(c.event, dict))
        return {"calls": len(calls), "status": Counter(str(c.status) for c in calls),
                "errors": Counter(str(c.error_type) for c in calls if c.status == 200 and c.error_type),
                "ran_once": sum(1 for n in ran.values() if n == 1), "ran_twice_or_more": sum(1 for n in ran.values()
                                                                                          if n > 1)}
    return handler


def serve(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    from lambda_api import LambdaAPI

    api = LambdaAPI()
    api.add("augment-sim", simulated_augment, memory_mb=1024, timeout_s=300, reserved_concurrency=args.reserved)
    api.add("train-sim", simulated_train(args.params, args.train_sleep), memory_mb=4096, timeout_s=900)
    api.add("control", control(api), memory_mb=128)
    with api:
        print(api.url, flush=True)
        sys.stdin.read()  # until the orchestrator closes our stdin


# --- the orchestrator side -------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cloud(args: argparse.Namespace) -> tuple[list[subprocess.Popen], str]:
    """moto_server and the Invoke API; this process's boto3 pointed at both. Returns the processes, the API URL."""
    port = _free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, **FAKE_AWS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--reserved", str(args.reserved),
                               "--params", str(args.params), "--train-sleep", str(args.train_sleep)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    url = server.stdout.readline().strip()
    os.environ.update({**FAKE_AWS, "AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"], "AWS_ENDPOINT_URL_LAMBDA": url})
    import boto3

    for bucket in ("bench-data", "bench-models"):
        boto3.client("s3").create_bucket(Bucket=bucket)
    return [server, moto], url


def stop_cloud(processes: list[subprocess.Popen]) -> None:
    server, moto = processes
    server.stdin.close()
    server.wait(timeout=30)
    moto.terminate()
    moto.wait(timeout=30)


def call_control(op: str, **fields) -> dict:
    from orchestrator.invokers.aws import lambda_client

    reply = lambda_client(30, 1).invoke(FunctionName="control", Payload=json.dumps({"op": op, **fields}).encode())
    return json.loads(reply["Payload"].read())


def augment_events(count: int, sleep_s: float, slow: set[int], slow_s: float) -> list[dict]:
    return [{"batch": i, "keys": [f"raw/class{i % 10}/photo{i:05d}_{j}.jpg" for j in range(8)],
             "source_prefix": "raw", "output_prefix": "augmented",
             "spec": {"variants": list(VARIANTS), "size": 224}, "sleep_s": slow_s if i in slow else sleep_s}
            for i in range(count)]


def bench_invoker(args: argparse.Namespace) -> dict:
    from orchestrator.costs import summarize
    from orchestrator.invokers.aws import LambdaInvoker, lambda_client

    slow = set(range(7, args.batches, max(1, args.batches // args.timeouts))) if args.timeouts else set()
    events = augment_events(args.batches, args.sleep, slow, args.read_timeout + 1.0)
    invoker = LambdaInvoker({"augment": "augment-sim"}, args.concurrency, backoff_s=0.1, max_backoff_s=2.0,
                            client=lambda_client(args.read_timeout, args.concurrency))
    list(invoker.map("augment", augment_events(args.concurrency, 0.0, set(), 0.0)))   # warm the connections
    serial = sorted(r.wall_ms - r.duration_ms for r in (invoker.invoke("augment", e)
                                                         for e in augment_events(50, 0.0, set(), 0.0)))
    invoker.records.clear()
    call_control("reset")
    call_control("throttle", function="augment-sim", times=args.throttles)
    cpu, start = time.process_time(), time.perf_counter()
    records = list(invoker.map("augment", events))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    invoker.close()
    time.sleep(args.read_timeout + 2.0)  # the timed-out batches finish on the server
    seen = call_control("stats")
    clean = [r for r in records if r.ok and r.attempts == 1]
    overhead = sorted(r.wall_ms - r.duration_ms for r in clean)
    timed_out = [r for r in records if not r.ok and "Timeout" in (r.error or "")]
    attempts = sum(r.attempts for r in records)
    return {"batches": len(records), "indices once": sorted(r.index for r in records) == list(range(args.batches)),
            "ok": sum(r.ok for r in records), "timed out": len(timed_out), "slow batches": len(slow),
            "throttled (client)": attempts - len(records), "throttled (server)": seen["status"].get("429", 0),
            "calls (client)": attempts, "calls (server)": seen["calls"], "ran once (server)": seen["ran_once"],
            "ran more than once (server)": seen["ran_twice_or_more"],
            "invocations billed (summary)": summarize(records).invocations,
            "other errors": dict(Counter((r.error or "")[:80] for r in records if not r.ok and r not in timed_out)),
            "wall s": round(wall, 2), "ideal wall s": round(args.batches * args.sleep / args.concurrency, 2),
            "overhead ms, one call at a time (median)": round(statistics.median(serial), 2),
            "overhead ms median": round(statistics.median(overhead), 2),
            "overhead ms p95": round(overhead[int(0.95 * (len(overhead) - 1))], 2),
            "orchestrator CPU ms per call": round(cpu * 1000 / attempts, 2)}


def write_dataset(data_store, name: str, workers: int) -> None:
    from dlpipe.datasets.manifest import Counts, Manifest, PartList, write_manifest
    from dlpipe.shared.recipe import Recipe

    shards = [PartList(parts=[f"datasets/{name}/train/shard-{w:03d}/part-000.npz"], count=120)
              for w in range(workers)]
    write_manifest(data_store, Manifest(dataset=name, source="raw", val_fraction=0.0, classes=[str(c) for c in
                                                                                                 range(10)],
                                        recipe=Recipe.from_dict({"size": 28, "channels": 1}), shards=shards,
                                        created="now", id=f"sim-{workers}", counts=Counts(train=120 * workers, val=0)))


def one_round(session, dataset: str, run: str, workers: int, engine: str) -> dict:
    """Round 0 and round 1 of a run; round 1's record, the bytes of its whole commit, its global weights."""
    import io

    from dlpipe.runs.run import TrainingRun
    from orchestrator.training.loop import TrainOptions, run_training

    # the default batch of 128 across workers, or one example a worker above 128 workers
    options = TrainOptions(dataset=dataset, run=run, rounds=1, workers=workers, aggregate=engine, retries=1,
                           output_dir=None, keep_worker_weights=True, hyper={"batch_size": max(128, workers)})
    before, first = session.meter.snapshot(), len(session.invoker.records)
    result = run_training(session, options, out=io.StringIO(), progress=False)
    record = result.records[1]
    training = TrainingRun(session.model_store(), run)
    return {"record": record, "record_bytes": len(training.store.get(training.record_key(1))),
            "global": training.store.get(training.global_key(1)),
            "job_traffic": session.meter.snapshot() - before, "job_records": session.invoker.records[first:]}


def critical_path(session, run: str, record: RoundRecord, expected: bytes) -> float:
    """The round's aggregation again, one node at a time: the sum over levels of the slowest node's round trip.

    What the tree takes when every node has a vCPU of its own, as on Lambda; here the nodes of
    a level otherwise share two cores, one Invoke API process and one moto_server.
    """
    from dlpipe.runs.run import TrainingRun
    from dlpipe.train.aggregate import plan_tree
    from dlpipe.wire import TrainResponse
    from orchestrator.invokers.aws import LambdaInvoker
    from orchestrator.training.aggregation import aggregate_round, outer_request

    results = {r["worker"]: TrainResponse.model_validate(r) for r in record.worker_results}
    training = TrainingRun(session.model_store(), run)
    hyper = training.config().training   # the run's own outer step, as the training loop applied it
    outer = outer_request(training, 1, hyper.outer_learning_rate, hyper.outer_momentum) if len(results) > 1 else None
    runs = []
    for _ in range(3):  # each node's best of three: other jobs on the machine only ever lengthen it
        with LambdaInvoker({"train": "train-sim"}, 1) as invoker:
            aggregate_round(training, 1, results, "lambda", invoker, retries=0, outer=outer,
                            average_optimizer=hyper.worker_optimizer == "averaged",
                            precision=hyper.optimizer_precision, fan_in=hyper.tree_fan_in)
            runs.append([r.wall_ms for r in invoker.records])   # one at a time: in the order submitted
        assert training.store.get(training.global_key(1)) == expected
    walls = [min(node) for node in zip(*runs, strict=True)]
    trees = 2 if hyper.worker_optimizer == "averaged" else 1   # the optimizer state's tree beside the weights'
    total, first = 0.0, 0
    for level in plan_tree(len(results), hyper.tree_fan_in):
        total += max(walls[first:first + trees * len(level)])
        first += trees * len(level)
    return total / 1000


def bench_aggregation(args: argparse.Namespace) -> list[dict]:
    from dlpipe.shared.config import Settings
    from orchestrator.session import Session

    session = Session(Settings.from_env(), "lambda", max(args.workers), {"train": "train-sim"})
    rows = []
    try:
        write_dataset(session.data_store(), "warm", 2)  # warm containers and connections, as in a long job
        for engine in ("local", "lambda"):
            one_round(session, "warm", f"warm-{engine}", 2, engine)
        for n in args.workers:
            write_dataset(session.data_store(), f"sim{n}", n)
            local = one_round(session, f"sim{n}", f"local-{n}", n, "local")
            cloud = one_round(session, f"sim{n}", f"cloud-{n}", n, "lambda")
            for engine, result in (("local", local), ("lambda", cloud)):
                record = result["record"]
                transfer = record.transfer.model_dump()
                path = critical_path(session, f"cloud-{n}", record, cloud["global"]) if engine == "lambda" else \
                    record.aggregation.seconds
                rows.append({"workers": n, "engine": engine, "levels": record.aggregation.levels,
                             "calls": record.aggregation.calls,
                             "aggregate s": record.aggregation.seconds, "critical path s": path,
                             "round s": record.wall_seconds,
                             "down kB": transfer["bytes_down"] / 1e3, "up kB": transfer["bytes_up"] / 1e3,
                             "record kB": result["record_bytes"] / 1e3,
                             "store GETs": transfer["store_requests"]["get"],
                             "same bytes": local["global"] == cloud["global"]})
    finally:
        session.close()
    return rows


def print_rows(title: str, rows: list[dict]) -> None:
    from tables import table  # bench/tables.py

    table(title, list(rows[0]), [[(f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}") if isinstance(v, float) else v
                                  for v in row.values()] for row in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--reserved", type=int, default=90, help="the function's reserved concurrency (throttles above)")
    ap.add_argument("--throttles", type=int, default=50, help="429s injected at the start")
    ap.add_argument("--timeouts", type=int, default=10, help="batches that outlive the client's read timeout")
    ap.add_argument("--read-timeout", type=float, default=2.0, help="the client's read timeout in seconds")
    ap.add_argument("--sleep", type=float, default=0.3, help="seconds an augment batch takes")
    ap.add_argument("--workers", type=int, nargs="+", default=[4, 16, 64, 256])
    ap.add_argument("--params", type=int, default=20_000, help="parameters of the simulated model")
    ap.add_argument("--train-sleep", type=float, default=0.2, help="seconds a simulated worker trains")
    ap.add_argument("--smoke", action="store_true",
                    help="40 batches at concurrency 4, rounds of 2 and 4 workers: does it still run (CI)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.batches, args.concurrency, args.reserved, args.throttles, args.timeouts = 40, 4, 3, 4, 1
        args.read_timeout, args.sleep, args.workers, args.params, args.train_sleep = 1.0, 0.02, [2, 4], 2000, 0.02
    if args.serve:
        serve(args)
        return 0
    processes, _ = start_cloud(args)
    try:
        invoker = bench_invoker(args)
        print_rows(f"1. invoker: {args.batches} batches at concurrency {args.concurrency}, reserved "
                   f"{args.reserved}, {args.throttles} injected 429s, read timeout {args.read_timeout} s; load "
                   f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
                   [{"measure": k, "value": v} for k, v in invoker.items()])
        rows = bench_aggregation(args)
        print_rows(f"2. aggregation: one round of N simulated workers, {args.params:,} parameters "
                   f"({args.params * 12 / 1e3:,.0f} kB of weights and Adam state per worker); load average "
                   f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", rows)
        scale = SQUEEZENET_PARAMETERS / args.params
        print(f"\nAt SqueezeNet 1.1's {SQUEEZENET_PARAMETERS:,} parameters the weight files are {scale:,.0f} times "
              "larger: local aggregation's download grows by that factor, the in-cloud records do not.")
    finally:
        stop_cloud(processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
