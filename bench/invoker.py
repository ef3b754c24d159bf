"""The local invoker's own overhead: N invocations of a handler that sleeps, on W workers.

The work is nothing but sleeping, so the ideal wall time is N x sleep / W and everything
above it is the engine: dispatch, JSON events, result collection. Compared in the same run
with multiprocessing.Pool and Lithops' localhost executor doing the same. Each engine is
started and warmed first (a warm Lambda is what a long job sees); the start-up is shown
separately. Usage:  python bench/invoker.py [--calls 64] [--workers 2] [--sleep 0.05] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sleep_handler, for the engines' workers

from sleep_handler import sleep
from tables import markdown_table  # bench/tables.py

from orchestrator import functions
from orchestrator.functions import FunctionSpec
from orchestrator.invokers.local import LocalInvoker


def local_invoker(calls: int, workers: int, seconds: float) -> tuple[float, float]:
    functions.FUNCTIONS["sleep"] = FunctionSpec("sleep", "bench/sleep_handler.py:handler", 128, 60, "SleepFunctionName")
    start = time.perf_counter()
    with LocalInvoker(workers) as invoker:
        list(invoker.map("sleep", [{"seconds": 0.0}] * (2 * workers)))
        ready = time.perf_counter()
        results = list(invoker.map("sleep", [{"seconds": seconds}] * calls))
        elapsed = time.perf_counter() - ready
    assert len(results) == calls and all(r.ok for r in results), [r.error for r in results if not r.ok]
    return ready - start, elapsed


def process_pool(calls: int, workers: int, seconds: float) -> tuple[float, float]:
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        list(pool.imap_unordered(sleep, [0.0] * (2 * workers), chunksize=1))
        ready = time.perf_counter()
        results = list(pool.imap_unordered(sleep, [seconds] * calls, chunksize=1))
        elapsed = time.perf_counter() - ready
    assert len(results) == calls
    return ready - start, elapsed


def _sleep_by_value(seconds: float) -> float:
    # Defined in this script (__main__), so it is pickled by value: given a function from
    # a local module, Lithops ships the module and its workers race to import it.
    import time

    time.sleep(seconds)
    return seconds


def lithops_localhost(calls: int, workers: int, seconds: float) -> tuple[float, float]:
    import lithops

    logging.getLogger("lithops").setLevel(logging.WARNING)
    config = {"lithops": {"backend": "localhost", "storage": "localhost", "log_level": "WARNING"},
              "localhost": {"worker_processes": workers, "runtime": sys.executable}}
    with contextlib.redirect_stdout(io.StringIO()):  # Lithops prints progress lines
        start = time.perf_counter()
        executor = lithops.FunctionExecutor(config=config)
        executor.map(_sleep_by_value, [0.0] * (2 * workers), include_modules=[])
        executor.get_result()
        ready = time.perf_counter()
        executor.map(_sleep_by_value, [seconds] * calls, include_modules=[])
        results = executor.get_result()
        elapsed = time.perf_counter() - ready
        executor.clean()
    assert len(results) == calls
    return ready - start, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds each call sleeps")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs per engine")
    parser.add_argument("--lithops-repeat", type=int, default=1,
                        help="runs of Lithops, which is much slower (0 to skip; default: 1)")
    parser.add_argument("--smoke", action="store_true", help="8 calls of 10 ms, once each: does it still run (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.calls, args.sleep, args.repeat, args.lithops_repeat = 8, 0.01, 1, 1

    engines = {"LocalInvoker (pebble pool)": local_invoker, "multiprocessing.Pool": process_pool}
    if args.lithops_repeat:
        engines["Lithops localhost"] = lithops_localhost
    ideal = args.calls * args.sleep / args.workers
    print(f"{args.calls} calls sleeping {args.sleep * 1000:.0f} ms on {args.workers} workers: "
          f"ideal {ideal:.2f} s; best of {args.repeat} interleaved rounds "
          f"({args.lithops_repeat} for Lithops)", flush=True)
    best = {name: (float("inf"), float("inf")) for name in engines}
    for round_ in range(max(args.repeat, args.lithops_repeat)):
        for name, run in engines.items():
            if round_ >= (args.lithops_repeat if name == "Lithops localhost" else args.repeat):
                continue
            startup, elapsed = run(args.calls, args.workers, args.sleep)
            best[name] = (min(best[name][0], startup), min(best[name][1], elapsed))

    pool = best["multiprocessing.Pool"][1]
    markdown_table(f"invoker overhead (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
                   ["engine", "start-up", f"{args.calls} calls", "vs ideal", "vs Pool"],
                   [[name, f"{startup:.2f} s", f"{elapsed:.2f} s", f"{elapsed / ideal:.2f}x", f"{elapsed / pool:.2f}x"]
                    for name, (startup, elapsed) in best.items()])
    local = best["LocalInvoker (pebble pool)"][1]
    print(f"\nLocalInvoker / Pool = {local / pool:.2f}x (target <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
