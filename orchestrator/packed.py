"""`prepare` over packed augment output (`augment --pack`): whole tar shards per part, each read with one GET.

A packed prefix holds tar shards and their index (dlpipe.shared.shards). The plan works at the
shard's granularity, as WebDataset does (shards, not samples, are what is split between nodes
and workers): a shard goes to validation by a stable hash of its name, the others are dealt to
the training workers in a fixed shuffled order, and each part is a run of whole shards, so that
no shard is read twice. `augment --pack` shuffles the sources across its batches, so every
shard mixes the classes. With `--val-source` (packed too), no training shard is held out.
"""

from __future__ import annotations

from dlpipe.datasets.split import DatasetPlan, Item, stable_fraction
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.shards import read_index
from dlpipe.wire import PackRequest


def read_packed(store, source: str, val_source: str | None) -> tuple[list[dict], list[dict] | None] | None:
    """(shards of `source`, shards of `val_source`) from their indexes; None if `source` is not packed."""
    shards = read_index(store, source.strip("/"))
    if shards is None:
        return None
    if not val_source:
        return shards, None
    val = read_index(store, val_source.strip("/"))
    if val is None:
        raise ValueError(f"--source {source} is packed (augment --pack) but --val-source {val_source} is not: "
                         "give a packed validation source, or --val-fraction")
    return shards, val


def _parts(shards: list[dict], part_size: int) -> list[list[Item]]:
    """Runs of whole shards of at most `part_size` images (a larger shard is a part of its own)."""
    parts: list[list[Item]] = []
    size = part_size
    for shard in shards:
        if size + shard["images"] > part_size:
            parts.append([])
            size = 0
        parts[-1].append((shard["key"], shard["images"]))
        size += shard["images"]
    return parts


def plan_packed(shards: list[dict], workers: int, val_fraction: float = 0.1, part_size: int = 5000,
                val_shards: list[dict] | None = None) -> DatasetPlan:
    """The plan of a packed source; its items are (shard key, images in it). Pure and deterministic."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    every = shards + (val_shards or [])
    classes = sorted({c for s in every for c, n in s["classes"].items() if c and n})
    if not classes:
        raise ValueError("the packed source holds no images in class folders")
    if val_shards is None:
        val = [s for s in shards if stable_fraction(s["key"].rsplit("/", 1)[-1], "split") < val_fraction]
    else:
        val = list(val_shards)
    held = {s["key"] for s in val} if val_shards is None else set()
    train = sorted((s for s in shards if s["key"] not in held and s["images"]),
                   key=lambda s: (stable_fraction(s["key"].rsplit("/", 1)[-1], "order"), s["key"]))
    if len(train) < workers:
        raise ValueError(f"{len(train)} training shards cannot be spread over {workers} workers (a worker takes "
                         "whole shards): use fewer --workers, or augment --pack with a smaller --batch-size")
    per_class = dict.fromkeys(classes, 0)
    for s in train:
        for c, n in s["classes"].items():
            if c in per_class:
                per_class[c] += n
    return DatasetPlan(classes=classes, shards=[_parts(train[w::workers], part_size) for w in range(workers)],
                       val_parts=_parts(sorted(val, key=lambda s: s["key"]), part_size),
                       counts={"train": sum(s["images"] for s in train), "val": sum(s["images"] for s in val),
                               "train_per_class": per_class})


def pack_request(items: list[Item], recipe: Recipe, output_prefix: str, classes: list[str], packed: bool) -> dict:
    """The pack event of a part: its image keys, or (packed) its shards."""
    if packed:
        return PackRequest(action="pack", shards=[{"key": k, "images": n} for k, n in items], classes=classes,
                           recipe=recipe, output_prefix=output_prefix).model_dump(mode="json")
    return PackRequest(action="pack", items=items, recipe=recipe, output_prefix=output_prefix).model_dump(mode="json")


def images_of(part: list[Item], packed: bool) -> int:
    return sum(n for _, n in part) if packed else len(part)
