"""Planning a prepared dataset: class folders -> a stable split -> shards -> parts. Pure key arithmetic.

Images arrive in the data store as ``PREFIX/<class>/<file>`` (from `upload`, `augment` or the
`fashion-mnist` command). `plan_dataset` splits the keys into train/validation by a stable hash
of each key (adding or removing images never moves the others between splits), spreads the
train keys over the workers' shards and cuts each shard into parts of at most `part_size`,
which the train function's "pack" action then decodes (dlpipe.train.parts).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dlpipe.datasets.manifest import dataset_prefix
from dlpipe.shared.images import IMAGE_EXTENSIONS

Item = tuple[str, int]   # (data-store key, label)


def list_class_folders(store, prefix: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Classes (sorted folder names) and (key, class) pairs of the images under `prefix`.

    Files directly under `prefix` and files that are not images by extension are ignored;
    a prefix with no class folders is an error that says what layout is expected.
    """
    prefix = prefix.strip("/")
    base = prefix + "/" if prefix else ""
    items = []
    for key in store.list(base):
        rest = key[len(base):]
        if "/" not in rest or not rest.lower().endswith(IMAGE_EXTENSIONS):
            continue
        items.append((key, rest.split("/", 1)[0]))
    classes = sorted({c for _, c in items})
    if not items:
        raise ValueError(f"no images in class folders under {base or '(store root)'!r} in {store.url}: "
                         f"expected {base}<class>/<image>.png (e.g. from `orchestrator upload` or `fashion-mnist`)")
    return classes, items


def stable_fraction(text: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by `text`: the same on every machine and Python run."""
    digest = hashlib.sha256(f"{salt}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


@dataclass
class DatasetPlan:
    classes: list[str]
    shards: list[list[list[Item]]]     # shard -> part -> (key, label)
    val_parts: list[list[Item]]
    counts: dict = field(default_factory=dict)


def _chunks(items: Sequence, size: int) -> list[list]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _check_arguments(workers: int, val_fraction: float, part_size: int) -> None:
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if part_size < 1:
        raise ValueError(f"part_size must be >= 1, got {part_size}")


def _split(items: Iterable[tuple[str, str]], label_of: dict[str, int], val_fraction: float, rel,
           val_items: Iterable[tuple[str, str]] | None) -> tuple[list[Item], list[Item]]:
    """(train, val): by the hash of each key, or all of `items` for training when `val_items` is given."""
    train, val = [], []
    for key, cls in items:
        if cls not in label_of:
            raise ValueError(f"class {cls!r} of {key!r} is not one of the dataset's classes")
        if val_items is None and stable_fraction(rel(key), "split") < val_fraction:
            val.append((key, label_of[cls]))
        else:
            train.append((key, label_of[cls]))
    for key, cls in val_items or ():
        if cls not in label_of:
            raise ValueError(f"validation class folder {cls!r} ({key!r}) is not among the training classes "
                             f"{list(label_of)}")
        val.append((key, label_of[cls]))
    return train, val


def plan_dataset(items: Iterable[tuple[str, str]], classes: Sequence[str], workers: int,
                 val_fraction: float = 0.1, part_size: int = 5000, source_prefix: str = "",
                 val_items: Iterable[tuple[str, str]] | None = None, val_parts: int | None = None) -> DatasetPlan:
    """Split, shard and part a list of (key, class) pairs; pure and deterministic.

    The split hashes each key relative to `source_prefix` (so moving the whole dataset
    keeps it). Train keys are ordered by a second hash - a fixed shuffle that mixes the
    classes - and dealt round-robin to the `workers` shards, whose sizes then differ by at
    most one. With `val_items` (e.g. a separate test folder) no train key is held out.
    """
    _check_arguments(workers, val_fraction, part_size)
    base = source_prefix.strip("/") + "/" if source_prefix.strip("/") else ""

    def rel(key: str) -> str:
        return key.removeprefix(base)

    train, val = _split(items, {c: i for i, c in enumerate(classes)}, val_fraction, rel, val_items)
    if len(train) < workers:
        raise ValueError(f"{len(train)} training images cannot be spread over {workers} workers")
    train.sort(key=lambda item: (stable_fraction(rel(item[0]), "order"), item[0]))
    val.sort(key=lambda item: item[0])
    shards = [_chunks(train[w::workers], part_size) for w in range(workers)]
    # Validation parts: one per worker by default so evaluation fans out as wide as training.
    n_val_parts = max(1, min(val_parts or workers, len(val))) if val else 0
    val_size = -(-len(val) // n_val_parts) if val else 1
    per_class = dict.fromkeys(classes, 0)
    for _, label in train:
        per_class[classes[label]] += 1
    return DatasetPlan(classes=list(classes), shards=shards,
                       val_parts=_chunks(val, min(val_size, part_size)) if val else [],
                       counts={"train": len(train), "val": len(val), "train_per_class": per_class})


def part_prefix(dataset: str, split: str, shard: int | None, part: int) -> str:
    """Key stem of a part; packing appends '-<content hash>.npz'."""
    middle = f"shard-{shard:03d}/" if shard is not None else ""
    return f"{dataset_prefix(dataset)}{split}/{middle}part-{part:03d}"
