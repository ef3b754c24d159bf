"""Peak memory of a train worker against input size, batch size, shard size and what trains.

Each configuration runs in a fresh worker process of the local invoker (its memory limit
raised so that nothing is killed): round 0 (init), then one training round of a few batches
on a synthetic shard, then an evaluation; the peak is the invocation's VmHWM, Lambda's "Max
Memory Used". The figures behind dlpipe.runs.footprint, which `train` and `prepare` check
before any work.

    .venv/bin/python bench/worker_memory.py            # ~10 minutes on 2 cores
    .venv/bin/python bench/worker_memory.py --only 224  # one input size
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np
from tables import markdown_table as table  # bench/tables.py

from dlpipe.runs import footprint
from dlpipe.shared.config import Settings
from dlpipe.shared.recipe import Recipe
from dlpipe.train import parts
from dlpipe.train.model import model_config_for
from dlpipe.wire import EvaluateRequest, Hyper, InitRequest, TrainRequest
from orchestrator import functions
from orchestrator.session import Session

CLASSES = 10
# (input px, channels, trainable, batch, shard images)
CONFIGS = [
    (32, 1, "all", 32, 1024), (32, 1, "all", 128, 1024), (32, 1, "all", 512, 1024), (32, 1, "all", 128, 8192),
    (96, 3, "all", 32, 1024), (96, 3, "all", 128, 1024),
    (224, 3, "all", 16, 512), (224, 3, "all", 64, 512), (224, 3, "all", 128, 512), (224, 3, "all", 16, 2048),
    (224, 3, "classifier", 32, 512), (224, 3, "classifier", 128, 512),
]


def measure(settings: Settings, size: int, channels: int, trainable: str, batch: int, shard: int) -> dict:
    """Peak MB of init, a train round of 3 batches and an evaluation at `batch`, in a fresh worker."""
    recipe = Recipe(size=size, channels=channels)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (shard, size, size, channels), dtype=np.uint8)
    y = rng.integers(0, CLASSES, shard).astype(np.int32)
    key = f"datasets/mem/train/{size}-{shard}.npz"
    settings.data_store().put(key, parts.arrays_to_npz(x, y))
    del x
    model = model_config_for(recipe, [f"c{i}" for i in range(CLASSES)])
    run = f"mem-{size}-{trainable}-{batch}-{shard}"
    session = Session(settings, "local", concurrency=1)
    try:
        peaks = {}
        init = InitRequest(action="init", model=model, seed=0, output_key=f"runs/{run}/rounds/0000/global.npz")
        events = {
            "init": init.model_dump(mode="json"),
            "train": TrainRequest(action="train", run=run, round=1, worker=0, global_key=init.output_key,
                                  shard_keys=[key], output_key=f"runs/{run}/rounds/0001/workers/000-a0.npz",
                                  model=model, hyper=Hyper(batch_size=batch, local_steps=3, trainable=trainable)
                                  ).model_dump(mode="json"),
            "evaluate": EvaluateRequest(action="evaluate", weights_key=init.output_key, shard_keys=[key], model=model,
                                        batch_size=batch, trainable=trainable).model_dump(mode="json"),
        }
        for name, event in events.items():
            inv = session.invoker.invoke("train", event)
            if not inv.ok:
                raise RuntimeError(f"{run} {name}: {inv.error}")
            peaks[name] = inv.extra["max_memory_mb"]
        return peaks
    finally:
        session.close()
        settings.data_store().delete(key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=int, nargs="*", help="input sizes to measure (default: all)")
    args = parser.parse_args(argv)
    limit = 10240
    spec = functions.FUNCTIONS["train"]
    functions.FUNCTIONS["train"] = functions.FunctionSpec(spec.name, spec.handler, limit, spec.timeout_s, spec.output)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        settings = Settings(data_url=f"{tmp}/data", model_url=f"{tmp}/models", table_url=f"sqlite:///{tmp}/t.db")
        for size, channels, trainable, batch, shard in CONFIGS:
            if args.only and size not in args.only:
                continue
            peaks = measure(settings, size, channels, trainable, batch, shard)
            estimate = footprint.train_peak_mb((size, size, channels), batch, shard, trainable)
            rows.append([f"{size}x{size}x{channels}", trainable, batch, shard,
                         f"{footprint.shard_mb((size, size, channels), shard):,.0f}",
                         f"{peaks['init']:,}", f"{peaks['train']:,}", f"{estimate:,.0f}", f"{peaks['evaluate']:,}"])
            print(rows[-1], flush=True)
    table(f"peak worker memory, MB (VmHWM of a fresh local worker; limit raised to {limit} MB)",
          ["input", "trains", "batch", "shard images", "shard MB", "init", "train round", "footprint estimate",
           "evaluate (same batch)"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
