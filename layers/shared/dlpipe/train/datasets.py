"""Datasets for training: Fashion-MNIST, and packing class-folder images into shards.

Images arrive in the data store as ``PREFIX/<class>/<file>`` (from `upload`, `augment`
or the `fashion-mnist` command). `prepare` turns them into what training reads fast:

1. `plan_dataset` splits the keys into train/validation by a stable hash of each key
   (adding or removing images never moves the others between splits), spreads the train
   keys over the workers' shards and cuts each shard into parts of at most `part_size`.
2. `pack_part` (the train function's "pack" action, fanned out by the orchestrator)
   decodes a part's images with the recipe's `resize_image` - the same code serving uses -
   and stores them as one uint8 .npz whose key ends with its content hash.
3. The manifest (`manifest_key`) lists classes, recipe, counts and each shard's part keys.

Workers load their parts through `load_parts`, which keeps a copy in /tmp between warm
invocations; the content hash in the key makes the cache safe and catches corrupt objects.

No TensorFlow here: the orchestrator and the zip functions may import this module.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import struct
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from dlpipe.shared.names import validate_name
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import KeyNotFound, join_key

# --- Fashion-MNIST -------------------------------------------------------------------

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian: dataset-fashion-mnist
# (file name, md5) as published in the Fashion-MNIST README.
FASHION_MNIST_FILES = {
    ("train", "images"): ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    ("train", "labels"): ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    ("test", "images"): ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
}
# Folder names for labels 0..9 (T-shirt/top, Trouser, ... Ankle boot), safe as key segments.
FASHION_MNIST_CLASSES = ("tshirt-top", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle-boot")
FASHION_MNIST_RECIPE = Recipe(size=32, channels=1, pad=2, scale=1.0 / 255.0)

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(data: bytes) -> np.ndarray:
    """Parse an IDX file (the MNIST format: magic, dimension sizes, raw big-endian data)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in IDX_DTYPES:
        raise ValueError("not an IDX file: bad magic number")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"IDX file truncated or padded: {len(data) - header} data bytes, "
                         f"shape {shape} needs {expected}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def default_cache_dir() -> Path:
    return Path(os.environ.get("DLPIPE_CACHE", Path.home() / ".cache" / "dlpipe"))


def fashion_mnist_file(split: str, kind: str, directory: str | os.PathLike | None = None,
                       download: bool = True) -> Path:
    """Path of one Fashion-MNIST file: from `directory`, the Debian package, the download
    cache, or (if `download`) fetched from the official address into the cache."""
    try:
        name, md5 = FASHION_MNIST_FILES[(split, kind)]
    except KeyError:
        raise ValueError(f"Fashion-MNIST has splits 'train'/'test' and kinds 'images'/'labels', "
                         f"not {split!r}/{kind!r}") from None
    cache = default_cache_dir() / "fashion-mnist"
    candidates = [Path(directory)] if directory else [Path(d) for d in FASHION_MNIST_DIRS] + [cache]
    for folder in candidates:
        if (folder / name).is_file():
            return folder / name
    if directory:
        raise FileNotFoundError(f"{name} is not in {directory}")
    if not download:
        raise FileNotFoundError(f"{name} not found in {', '.join(map(str, candidates))}; install the Debian "
                                "package dataset-fashion-mnist or allow the download")
    cache.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(FASHION_MNIST_URL + name, timeout=120) as response:
        data = response.read()
    if hashlib.md5(data).hexdigest() != md5:
        raise ValueError(f"downloaded {name} has the wrong checksum; try again later")
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, cache / name)
    return cache / name


def load_fashion_mnist(split: str = "train", directory: str | os.PathLike | None = None,
                       download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 28 x 28, labels uint8 N) of the 'train' (60000) or 'test' (10000) split."""
    images = read_idx(fashion_mnist_file(split, "images", directory, download).read_bytes())
    labels = read_idx(fashion_mnist_file(split, "labels", directory, download).read_bytes())
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split} files disagree: images {images.shape}, labels {labels.shape}")
    return images, labels


def fashion_mnist_pngs(split: str, limit: int | None = None, directory: str | os.PathLike | None = None,
                       download: bool = True):
    """(relative key "<split>/<class>/<index>.png", PNG bytes) for the first `limit` images
    of a split: the dataset as a user's own class folders would arrive."""
    from PIL import Image

    images, labels = load_fashion_mnist(split, directory, download)
    count = len(images) if limit is None else min(int(limit), len(images))
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(images[index], "L").save(buffer, "PNG")
        yield f"{split}/{FASHION_MNIST_CLASSES[labels[index]]}/{index:05d}.png", buffer.getvalue()


# --- planning a prepared dataset -----------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
PREPARED_PREFIX = "datasets"


def validate_dataset(name: str) -> str:
    return validate_name(name, "dataset name")


def dataset_prefix(name: str) -> str:
    return f"{PREPARED_PREFIX}/{validate_dataset(name)}/"


def manifest_key(name: str) -> str:
    return f"{dataset_prefix(name)}manifest.json"


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
    shards: list[list[list[tuple[str, int]]]]     # shard -> part -> (key, label)
    val_parts: list[list[tuple[str, int]]]
    counts: dict = field(default_factory=dict)


def _chunks(items: Sequence, size: int) -> list[list]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def plan_dataset(items: Iterable[tuple[str, str]], classes: Sequence[str], workers: int,
                 val_fraction: float = 0.1, part_size: int = 5000, source_prefix: str = "",
                 val_items: Iterable[tuple[str, str]] | None = None, val_parts: int | None = None) -> DatasetPlan:
    """Split, shard and part a list of (key, class) pairs; pure and deterministic.

    The split hashes each key relative to `source_prefix` (so moving the whole dataset
    keeps it). Train keys are ordered by a second hash - a fixed shuffle that mixes the
    classes - and dealt round-robin to the `workers` shards, whose sizes then differ by at
    most one. With `val_items` (e.g. a separate test folder) no train key is held out.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if part_size < 1:
        raise ValueError(f"part_size must be >= 1, got {part_size}")
    label_of = {c: i for i, c in enumerate(classes)}
    base = source_prefix.strip("/") + "/" if source_prefix.strip("/") else ""

    def rel(key: str) -> str:
        return key[len(base):] if key.startswith(base) else key

    train, val = [], []
    for key, cls in items:
        if cls not in label_of:
            raise ValueError(f"class {cls!r} of {key!r} is not one of the dataset's classes")
        if val_items is None and stable_fraction(rel(key), "split") < val_fraction:
            val.append((key, label_of[cls]))
        else:
            train.append((key, label_of[cls]))
    if val_items is not None:
        for key, cls in val_items:
            if cls not in label_of:
                raise ValueError(f"validation class folder {cls!r} ({key!r}) is not among the training classes "
                                 f"{list(classes)}")
            val.append((key, label_of[cls]))
    if len(train) < workers:
        raise ValueError(f"{len(train)} training images cannot be spread over {workers} workers")
    train.sort(key=lambda item: (stable_fraction(rel(item[0]), "order"), item[0]))
    val.sort(key=lambda item: item[0])
    shards = [_chunks(train[w::workers], part_size) for w in range(workers)]
    # Validation parts: one per worker by default so evaluation fans out as wide as training.
    n_val_parts = max(1, min(val_parts or workers, len(val))) if val else 0
    val_size = -(-len(val) // n_val_parts) if val else 1
    per_class = {c: 0 for c in classes}
    for _, label in train:
        per_class[classes[label]] += 1
    return DatasetPlan(classes=list(classes), shards=shards,
                       val_parts=_chunks(val, min(val_size, part_size)) if val else [],
                       counts={"train": len(train), "val": len(val), "train_per_class": per_class})


def part_prefix(dataset: str, split: str, shard: int | None, part: int) -> str:
    """Key stem of a part; `pack_part` appends '-<content hash>.npz'."""
    middle = f"shard-{shard:03d}/" if shard is not None else ""
    return f"{dataset_prefix(dataset)}{split}/{middle}part-{part:03d}"


# --- packing and loading parts ---------------------------------------------------------

HASH_CHARS = 16
_HASHED_KEY = re.compile(rf"-([0-9a-f]{{{HASH_CHARS}}})\.npz$")


class CorruptPart(ValueError):
    """A packed part that is missing, unreadable or does not match the hash in its key."""


def arrays_to_npz(x: np.ndarray, y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return buffer.getvalue()


def npz_to_arrays(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return archive["x"], archive["y"]


def pack_part(store, items: Sequence[tuple[str, int]], recipe: Recipe, output_prefix: str) -> dict:
    """Decode `items` (key, label) with the recipe, store them as one .npz; never fails on
    a bad image: it is skipped and reported as {"key", "reason"}."""
    from PIL import Image, UnidentifiedImageError

    images, labels, skipped = [], [], []
    for key, label in items:
        try:
            with Image.open(io.BytesIO(store.get(key))) as image:
                image.load()
                images.append(recipe.resize_image(image))
            labels.append(int(label))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            skipped.append({"key": key, "reason": f"{type(err).__name__}: {err}"})
        except KeyError as err:  # the store's KeyNotFound: deleted since it was listed
            skipped.append({"key": key, "reason": f"missing: {err}"})
    shape = (recipe.size, recipe.size, recipe.channels)
    x = np.stack(images) if images else np.zeros((0, *shape), np.uint8)
    y = np.asarray(labels, np.int32)
    data = arrays_to_npz(x, y)
    key = f"{output_prefix}-{hashlib.sha256(data).hexdigest()[:HASH_CHARS]}.npz"
    join_key(key)  # validate
    store.put(key, data)
    return {"key": key, "count": int(len(y)), "bytes": len(data), "skipped": skipped}


def verify_part(key: str, data: bytes) -> None:
    match = _HASHED_KEY.search(key)
    if match and hashlib.sha256(data).hexdigest()[:HASH_CHARS] != match.group(1):
        raise CorruptPart(f"packed part {key!r} does not match its content hash (corrupt or overwritten); "
                          "run `orchestrator prepare` again")


def cache_dir() -> Path:
    return Path(os.environ.get("DLPIPE_SHARD_CACHE", Path(tempfile.gettempdir()) / "dlpipe-shards"))


def cache_limit_bytes() -> int:
    """Leave room in Lambda's /tmp (512 MB by default) for the weights: default 384 MB."""
    return int(float(os.environ.get("DLPIPE_SHARD_CACHE_MB", "384")) * 2 ** 20)


def _evict(folder: Path, need: int, limit: int) -> None:
    """Delete least recently used parts until `need` more bytes fit under `limit`."""
    files = []
    for path in folder.glob("*.npz"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # evicted by another process meanwhile
            continue
        files.append((stat.st_mtime, stat.st_size, path))
    files.sort()
    total = sum(size for _, size, _ in files)
    while files and total + need > limit:
        _, size, victim = files.pop(0)
        total -= size
        victim.unlink(missing_ok=True)


def fetch_part(store, key: str) -> bytes:
    """Bytes of a part, from the /tmp cache when a warm worker has it (remote stores only:
    a local one needs no cache)."""
    if store.is_local:
        data = store.get(key)
        verify_part(key, data)
        return data
    folder = cache_dir()
    name = hashlib.sha256(f"{store.url}\x00{key}".encode()).hexdigest()[:32] + ".npz"
    path = folder / name
    try:  # other processes on the same machine may evict it at any moment: just fetch again
        data = path.read_bytes()
        verify_part(key, data)
        os.utime(path)  # most recently used
        return data
    except FileNotFoundError:
        pass
    except CorruptPart:
        path.unlink(missing_ok=True)
    data = store.get(key)
    verify_part(key, data)
    limit = cache_limit_bytes()
    if _HASHED_KEY.search(key) and len(data) <= limit:
        folder.mkdir(parents=True, exist_ok=True)
        _evict(folder, len(data), limit)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return data


def load_parts(store, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the parts named by `keys`, in that order, as (x uint8, y int32)."""
    if not keys:
        raise ValueError("no parts to load: the shard is empty")
    xs, ys = [], []
    for key in keys:
        try:
            data = fetch_part(store, key)
        except KeyNotFound:
            raise CorruptPart(f"packed part {key!r} is missing from {store.url}; "
                              "run `orchestrator prepare` again") from None
        try:
            x, y = npz_to_arrays(data)
        except Exception as err:
            raise CorruptPart(f"packed part {key!r} is unreadable ({type(err).__name__}: {err}); "
                              "run `orchestrator prepare` again") from err
        if x.ndim != 4 or x.dtype != np.uint8 or len(x) != len(y):
            raise CorruptPart(f"packed part {key!r} holds x {x.shape} {x.dtype} and y {y.shape}: not a prepared part")
        xs.append(x)
        ys.append(y)
    return (np.concatenate(xs) if len(xs) > 1 else xs[0]), (np.concatenate(ys) if len(ys) > 1 else ys[0])


def manifest_summary(manifest: dict) -> str:
    return (f"{manifest['dataset']}: {len(manifest['classes'])} classes, {manifest['counts']['train']} train / "
            f"{manifest['counts']['val']} validation images in {len(manifest['shards'])} shards, "
            f"{manifest['recipe']['size']} px")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
