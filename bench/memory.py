"""Memory is speed on Lambda: training images/s against threads, the memory-size table, one GPU beside it.

Lambda gives a function one vCPU per 1,769 MB of memory, up to 6 at 10,240 MB, so the
train function's memory size sets the threads it trains with. This measures the train
action's own model.fit (dlpipe.train.worker.compiled_model, random inputs of the right
shape: speed does not depend on the pixels) pinned to 1 and then 2 of this machine's
cores, with TensorFlow's thread pools sized to match, for three workloads:

  fmnist     Fashion-MNIST from scratch: 32 px grey, all layers, batch 128
  finetune   fine-tuning on photos: 224 px RGB, classifier only (the --init-from default), batch 32
  full224    SqueezeNet 1.1 trained whole at 224 px, batch 32: what the GPU anchor measures

From the two rates it fits Amdahl's law (the parallel share p from the 2-thread speed-up)
and prints, per memory size: vCPUs, expected images/s, GB-seconds and dollars per epoch,
then one H100 at on-demand prices beside N Lambda workers. Assumptions: a Lambda vCPU
trains as fast as one core here; below one vCPU a function gets that share of one; the
1-vCPU rate is images per CPU-second and the 2-vCPU speed-up from CPU time unless
--speedup wall (see `rates`); beyond 2 vCPUs Amdahl's law is an extrapolation.

Usage:  python bench/memory.py [--workloads fmnist finetune full224]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from orchestrator.costs import PRICE_PER_GB_SECOND

ONE_VCPU_MB = 1769
REPEAT = 3           # timed passes per measurement: the best is the least disturbed
MEMORY_SIZES = (1024, 1769, 3008, 3538, 4096, 5307, 7076, 8845, 10240)
WORKLOADS = {  # recipe size, channels, classes, trainable, batch, images per timed pass, images per epoch
    "fmnist": (32, 1, 10, "all", 128, 1024, 60_000),
    "finetune": (224, 3, 12, "classifier", 32, 256, 10_000),
    "full224": (224, 3, 1000, "all", 32, 96, 1_281_167),
}
EPOCH_NAMES = {"fmnist": "Fashion-MNIST (60,000)", "finetune": "10,000 photos", "full224": "ImageNet-1k (1.28 M)"}
# One H100 training SqueezeNet 1.1 at 224 px (measured anchor, issue 13).
H100_IMAGES_PER_S = {"bf16": 15_400, "fp32": 11_000}
# On-demand $ per GPU-hour (2025-26 list prices; they move: check before quoting): AWS p5.48xlarge
# (8 x H100) at $55.04/h after the June 2025 cut, and a GPU cloud's single H100.
GPU_HOUR = {"AWS p5 (1/8)": 55.04 / 8, "GPU cloud": 2.99}


def measure(workload: str, threads: int) -> dict:
    """In this process: pin to `threads` cores, size TensorFlow's pools, time the second pass of model.fit."""
    os.sched_setaffinity(0, set(range(threads)))
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from dlpipe.shared.recipe import Recipe
    from dlpipe.train.model import model_config_for
    from dlpipe.train.worker import compiled_model

    size, channels, classes, trainable, batch, images, _ = WORKLOADS[workload]
    spec = model_config_for(Recipe(size=size, channels=channels), [f"c{i}" for i in range(classes)])
    model = compiled_model(spec, trainable)
    rng = np.random.default_rng(0)
    x = rng.random((images, size, size, channels), np.float32)
    y = rng.integers(0, classes, images)
    model.fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, epochs=1, verbose=0)   # tracing
    walls, cpus = [], []
    for _ in range(REPEAT):
        start, cpu = time.perf_counter(), time.process_time()
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    import resource

    return {"workload": workload, "threads": threads, "images": images, "wall_s": min(walls), "cpu_s": min(cpus),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def rates(one: dict, two: dict, speedup: str = "cpu") -> tuple[float, float]:
    """images/s on one and on two dedicated vCPUs.

    One vCPU: images per CPU-second (jobs sharing the machine lengthen the wall time, not the
    CPU time). Two: from CPU time, 2 x images per CPU-second, which assumes both threads busy
    all along and charges their synchronisation (so on a shared machine it is the usable
    reading); or, on a quiet machine, the wall-clock speed-up of the best passes. At most 2.
    """
    rate1 = one["images"] / one["cpu_s"]
    by_wall = (one["wall_s"] / one["images"]) / (two["wall_s"] / two["images"])
    by_cpu = 2 * (one["cpu_s"] / one["images"]) / (two["cpu_s"] / two["images"])
    return rate1, rate1 * max(1.0, min(2.0, by_cpu if speedup == "cpu" else by_wall))


def measured(workload: str, threads: int) -> dict:
    """`measure` in a fresh process (thread pools are fixed at TensorFlow's start)."""
    out = subprocess.run([sys.executable, __file__, "--measure", workload, str(threads)], check=True,
                         capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout
    return json.loads(out.strip().splitlines()[-1])


def amdahl(rate1: float, rate2: float):
    """images/s at `vcpus` from the 1- and 2-thread rates: p = 2 (1 - 1/s2), s(n) = 1 / (1 - p + p/n)."""
    p = min(1.0, max(0.0, 2.0 * (1.0 - rate1 / rate2)))

    def rate(vcpus: float) -> float:
        return rate1 * vcpus if vcpus <= 1 else rate1 / (1.0 - p + p / vcpus)

    return rate, p


def memory_table(workload: str, rate1: float, rate2: float) -> list[list[str]]:
    rate, _ = amdahl(rate1, rate2)
    epoch = WORKLOADS[workload][6]
    rows = []
    for memory in MEMORY_SIZES:
        vcpus = min(6.0, memory / ONE_VCPU_MB)
        speed = rate(vcpus)
        gbs = epoch / speed * memory / 1024
        rows.append([f"{memory:,}", f"{vcpus:.2f}", f"{speed:,.1f}", f"{epoch / speed / 60:,.1f}", f"{gbs:,.0f}",
                     f"{gbs * PRICE_PER_GB_SECOND['x86_64']:,.4f}"])
    return rows


def gpu_table(rate1: float, rate2: float, memory: int, workers: tuple[int, ...]) -> list[list[str]]:
    """One ImageNet-1k epoch at 224 px: N Lambda workers of `memory` MB against one H100."""
    rate, _ = amdahl(rate1, rate2)
    epoch = WORKLOADS["full224"][6]
    per_worker = rate(min(6.0, memory / ONE_VCPU_MB))
    lambda_dollars = epoch / per_worker * memory / 1024 * PRICE_PER_GB_SECOND["x86_64"]
    rows = [[f"Lambda x {n} ({memory:,} MB)", f"{per_worker * n:,.0f}", f"{epoch / (per_worker * n) / 60:,.1f}",
             f"{lambda_dollars:,.2f}"] for n in workers]
    for precision, speed in H100_IMAGES_PER_S.items():
        for where, hourly in GPU_HOUR.items():
            rows.append([f"1 H100 {precision}, {where} ${hourly:.2f}/h", f"{speed:,}", f"{epoch / speed / 60:,.1f}",
                         f"{epoch / speed / 3600 * hourly:,.2f}"])
    return rows


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--memory", type=int, default=4096, help="train function memory for the GPU table (MB)")
    ap.add_argument("--speedup", choices=("cpu", "wall"), default="cpu",
                    help="2-vCPU speed-up from CPU time (default; a shared machine) or wall clock (a quiet one)")
    ap.add_argument("--measure", nargs=2, metavar=("WORKLOAD", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]))))
        return 0
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other jobs share them)")
    found = {}
    for workload in args.workloads:
        one, two = measured(workload, 1), measured(workload, 2)
        found[workload] = rates(one, two, args.speedup)
        _, p = amdahl(*found[workload])
        print(f"\n{workload}: {found[workload][0]:,.1f} images/s on 1 vCPU, {found[workload][1]:,.1f} on 2 "
              f"(x{found[workload][1] / found[workload][0]:.2f}, parallel share p = {p:.2f}; wall clock here "
              f"x{one['wall_s'] / two['wall_s']:.2f}, CPU x{2 * one['cpu_s'] / two['cpu_s']:.2f}); peak memory "
              f"{max(one['max_rss_mb'], two['max_rss_mb']):,.0f} MB")
        print_table(f"{workload}: one epoch of {EPOCH_NAMES[workload]} on one train function, by memory size",
                    ["memory MB", "vCPUs", "images/s", "minutes", "GB-s", "$ x86"], memory_table(workload,
                                                                                                 *found[workload]))
    if "full224" in found:
        print_table("one ImageNet-1k epoch at 224 px, SqueezeNet 1.1 trained whole: Lambda workers beside one H100",
                    ["engine", "images/s", "minutes", "$ per epoch"], gpu_table(*found["full224"], args.memory,
                                                                                (16, 64, 256)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
