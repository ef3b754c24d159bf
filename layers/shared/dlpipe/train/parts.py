"""Packed parts: decoding images into one uint8 .npz, and loading parts back for training.

`pack_part` (the train function's "pack" action, fanned out by `orchestrator prepare`)
decodes a part's images (files, or whole tar shards of packed augment output, each read
once) with the recipe's `decode` - the very code serving uses, so training sees the pixels
serving will see - and stores them as one .npz whose key ends with its
content hash. Workers load their parts through `load_parts`, which keeps a copy in /tmp
between warm invocations; the hash in the key makes that cache safe and catches corrupt objects.

No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from dlpipe.shared.config import ShardCache
from dlpipe.shared.images import IMAGE_EXTENSIONS, ImageError
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.shards import BadShard, member_class, read_members
from dlpipe.shared.store import STORE_BYTES, KeyNotFound, join_key
from dlpipe.wire import PackResponse

HASH_CHARS = 16
_HASHED_KEY = re.compile(rf"-([0-9a-f]{{{HASH_CHARS}}})\.npz$")
# Stop packing this long before the function's deadline, leaving time to store the part.
PACK_MARGIN_S = 30.0


class CorruptPart(ValueError):
    """A packed part that is missing, unreadable or does not match the hash in its key."""


class NothingPacked(ValueError):
    """No image of a part could be decoded: no part is written, and the invocation fails."""


def arrays_to_npz(x: np.ndarray, y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return buffer.getvalue()


def npz_to_arrays(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return archive["x"], archive["y"]


def _out_of_time(remaining_ms: Callable[[], int] | None) -> bool:
    return remaining_ms is not None and remaining_ms() / 1000.0 < PACK_MARGIN_S


Source = tuple[str, int | None, bytes | Exception]   # (name, label or None, the file or why there is none)


def _sources(store, items: Sequence[tuple[str, int]], shards: Sequence = (),
             classes: Sequence[str] = ()) -> Iterator[Source]:
    """Every image to pack, in order: the items' keys, then the members of each shard (one GET a shard).

    A shard's members are named `<shard key>:<member>` and labelled by their class folder.
    """
    for key, label in items:
        try:
            yield key, label, store.get(key)
        except KeyNotFound as err:
            yield key, label, err
    label_of = {name: i for i, name in enumerate(classes)}
    for shard in shards:
        try:
            data = store.get(shard.key)
            for name, member in read_members(data):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    cls = member_class(name)
                    yield f"{shard.key}:{name}", label_of.get(cls or ""), member
        except (KeyNotFound, BadShard) as err:
            yield shard.key, None, err


def _skip_reason(problem: Exception | None, name: str) -> str:
    if isinstance(problem, KeyNotFound):
        return f"missing: {problem}"
    if isinstance(problem, (ImageError, BadShard)):
        return f"{type(problem).__name__}: {problem}"
    return f"its class folder {member_class(name.rsplit(':', 1)[-1])!r} is not one of the dataset's classes"


def pack_part(store, items: Sequence[tuple[str, int]], recipe: Recipe, output_prefix: str,
              remaining_ms: Callable[[], int] | None = None, shards: Sequence = (),
              classes: Sequence[str] = ()) -> PackResponse:
    """Decode `items` (key, label), then the images of `shards` (wire.ShardRef), with the recipe into one .npz.

    A bad image (undecodable, refused by the decoder's limits, deleted since it was listed) is
    skipped and reported; a part none of whose images decode raises NothingPacked rather than
    storing an empty part. `remaining_ms` (the function's clock) stops a part that would not
    finish in time with a TimeoutError naming the way out, instead of being killed mid-way.
    """
    expected = len(items) + sum(shard.images for shard in shards)
    x = np.empty((expected, recipe.size, recipe.size, recipe.channels), np.uint8)
    labels: list[int] = []
    skipped: list[PackResponse.Skipped] = []
    for index, (name, label, data) in enumerate(_sources(store, items, shards, classes)):
        if index % 64 == 0 and _out_of_time(remaining_ms):
            raise TimeoutError(f"packing {output_prefix} ran out of time after {index} of {expected} images; "
                               "prepare again with a smaller --part-size")
        if len(labels) == expected:
            raise ValueError(f"the shards of {output_prefix} hold more images than their index says ({expected}); "
                             "augment with --pack again")
        try:
            if isinstance(data, Exception) or label is None:
                raise data if isinstance(data, Exception) else LookupError(name)
            x[len(labels)] = recipe.decode(data)
            labels.append(int(label))
        except (ImageError, KeyNotFound, BadShard, LookupError) as err:
            skipped.append(PackResponse.Skipped(key=name, reason=_skip_reason(err, name)))
    return _store_part(store, x, labels, skipped, output_prefix, expected)


def _store_part(store, x: np.ndarray, labels: list[int], skipped: list[PackResponse.Skipped], output_prefix: str,
                expected: int) -> PackResponse:
    if not labels:
        reasons = "; ".join(f"{s.key}: {s.reason}" for s in skipped[:5])
        raise NothingPacked(f"none of the {expected} images for {output_prefix} could be decoded ({reasons}"
                            + (" ..." if len(skipped) > 5 else "") + ")")
    buffer = io.BytesIO()
    np.savez(buffer, x=x[:len(labels)], y=np.asarray(labels, np.int32))
    del x   # at most two copies of the pixels at a time: the array and the .npz, then the .npz and its bytes
    data = buffer.getvalue()
    del buffer
    key = join_key(f"{output_prefix}-{hashlib.sha256(data).hexdigest()[:HASH_CHARS]}.npz")
    store.put(key, data)
    return PackResponse(key=key, count=len(labels), bytes=len(data), skipped=skipped)


def verify_part(key: str, data: bytes) -> None:
    match = _HASHED_KEY.search(key)
    if match and hashlib.sha256(data).hexdigest()[:HASH_CHARS] != match.group(1):
        raise CorruptPart(f"packed part {key!r} does not match its content hash (corrupt or overwritten); "
                          "run `orchestrator prepare` again")


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


def _touch(path: Path) -> None:
    """Mark as most recently used, to the nanosecond: the kernel's own timestamps are coarser (a few
    ms), so parts written or read in quick succession would tie and evict in no particular order."""
    now = time.time_ns()
    with contextlib.suppress(FileNotFoundError):  # evicted by another process meanwhile
        os.utime(path, ns=(now, now))


def _read_cached(path: Path, key: str) -> bytes | None:
    try:  # other processes on the same machine may evict it at any moment: just fetch again
        data = path.read_bytes()
        verify_part(key, data)
        _touch(path)
        return data
    except FileNotFoundError:
        return None
    except CorruptPart:
        path.unlink(missing_ok=True)
        return None


# Parts a local store served this process: on Lambda a warm worker would read them from /tmp.
_SERVED_LOCALLY: set[tuple[str, str]] = set()


def _as_if_cached(store, key: str, size: int, cache: ShardCache) -> None:
    """Count a local store's repeated read of a part as Lambda's /tmp cache would serve it: no S3 bytes.

    Why: the local invoker projects each invocation's Lambda time from the bytes it moved
    (orchestrator.invokers.projection); a warm worker's shard comes from /tmp, not from S3.
    """
    if not _HASHED_KEY.search(key) or size > cache.limit_bytes:
        return
    if (store.url, key) in _SERVED_LOCALLY:
        STORE_BYTES.add(read=-size)
    else:
        _SERVED_LOCALLY.add((store.url, key))


def fetch_part(store, key: str, cache: ShardCache) -> bytes:
    """Bytes of a part, from the /tmp cache when a warm worker has it (remote stores only:
    a local one needs no cache)."""
    if store.is_local:
        data = store.get(key)
        verify_part(key, data)
        _as_if_cached(store, key, len(data), cache)
        return data
    path = cache.folder / (hashlib.sha256(f"{store.url}\x00{key}".encode()).hexdigest()[:32] + ".npz")
    data = _read_cached(path, key)
    if data is not None:
        return data
    data = store.get(key)
    verify_part(key, data)
    if _HASHED_KEY.search(key) and len(data) <= cache.limit_bytes:
        cache.folder.mkdir(parents=True, exist_ok=True)
        _evict(cache.folder, len(data), cache.limit_bytes)
        fd, tmp = tempfile.mkstemp(dir=cache.folder, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        _touch(path)
    return data


def _load_part(store, key: str, cache: ShardCache) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = fetch_part(store, key, cache)
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
    return x, y


def load_parts(store, keys: Sequence[str], cache: ShardCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the parts named by `keys`, in that order, as (x uint8, y int32).

    `cache`: where warm workers keep parts (default: ShardCache.from_env()).
    """
    if not keys:
        raise ValueError("no parts to load: the shard is empty")
    cache = cache or ShardCache.from_env()
    xs, ys = zip(*(_load_part(store, key, cache) for key in keys), strict=True)
    return (np.concatenate(xs) if len(xs) > 1 else xs[0]), (np.concatenate(ys) if len(ys) > 1 else ys[0])
