"""The batch the augment handler runs: store reads ahead, writes on threads, the time limit.

The pixels are `dlpipe.augment.transforms`' business and the names `dlpipe.augment.naming`'s;
this module moves bytes between them and the store, and reports one result per key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from dlpipe.augment.naming import output_stem, relative_key
from dlpipe.augment.transforms import augment_image
from dlpipe.shared.images import ImageError
from dlpipe.shared.shards import SHARD_SUFFIX, ShardWriter, member_class, sample_key
from dlpipe.shared.store import KeyNotFound, ObjectStore, StoreError, join_key
from dlpipe.wire import AugmentRequest, AugmentResponse, ImageResult, ShardInfo

IO_THREADS = 8             # store requests in flight: they wait on the network, not the CPU
PREFETCH = 2               # sources read ahead of the one being augmented
WRITE_BACKLOG = 4          # images whose outputs may still be uploading (bounds memory)
NOT_PROCESSED = "not processed: the function's time limit was near; use a smaller --batch-size"
SHARD_MAX_BYTES = 128 * 2 ** 20   # a shard this large is stored and the next begun: bounds the function's memory


def _reason(err: Exception) -> str:
    if isinstance(err, KeyNotFound):
        return "not found in the data store"
    if isinstance(err, (ImageError, StoreError)):
        return str(err)
    return f"{type(err).__name__}: {err}"  # a store or Pillow failure we did not foresee


def _settle(pending: list, keep: int) -> int:
    """Wait for the writes of all but the last `keep` images; record each image's outcome."""
    written = 0
    while len(pending) > keep:
        result, writes = pending.pop(0)
        for out_key, future, size in writes:
            try:
                future.result()
            except Exception as err:
                result.error = result.error or _reason(err)
            else:
                result.outputs.append(out_key)
                written += size
    return written


class _Inline:
    """The executor interface, run in the caller's thread: for stores that never wait."""

    def __init__(self, **_) -> None:
        pass

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as err:
            future.set_exception(err)
        return future

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc) -> None:
        pass


class _Deadline:
    """When to stop starting images, so the batch returns before the function's time limit.

    Keeps back enough time to return: 5 s of a long budget (a tenth of a short one), and
    never less than three times the slowest image so far.
    """

    def __init__(self, time_left_ms: Callable[[], int] | None) -> None:
        self._time_left_ms = time_left_ms
        self._reserve_ms = min(5000.0, 0.1 * time_left_ms()) if time_left_ms is not None else 0.0
        self._slowest_ms = 0.0

    def near(self) -> bool:
        return self._time_left_ms is not None and self._time_left_ms() < max(self._reserve_ms, 3 * self._slowest_ms)

    @contextmanager
    def timing(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._slowest_ms = max(self._slowest_ms, (time.perf_counter() - start) * 1000)


Encoded = tuple[str, list[tuple[str, bytes]]]   # (output stem, [(file-name suffix, bytes)])


def _encoded(request: AugmentRequest, read: Future, result: ImageResult) -> Encoded | None:
    """The output stem and every encoded output of one source; None, with result.error set, if it failed."""
    try:
        relative, data = read.result()
        return output_stem(relative), augment_image(data, relative, request.spec)
    except Exception as err:
        result.error = _reason(err)
        return None


class _Files:
    """A file per output, written on the pool while the next image is augmented."""

    def __init__(self, request: AugmentRequest, store: ObjectStore, pool) -> None:
        self.request, self.store, self.pool = request, store, pool
        self.pending: list = []
        self.bytes_out = 0

    def add(self, result: ImageResult, encoded: Encoded) -> None:
        stem, outputs = encoded
        try:
            keys = [(join_key(self.request.output_prefix, stem + suffix), out) for suffix, out in outputs]
        except StoreError as err:   # a key S3 cannot hold (too long)
            result.error = _reason(err)
            return
        self.pending.append((result, [(key, self.pool.submit(self.store.put, key, out), len(out))
                                      for key, out in keys]))
        self.bytes_out += _settle(self.pending, keep=WRITE_BACKLOG)

    def finish(self) -> list[ShardInfo]:
        self.bytes_out += _settle(self.pending, keep=0)
        return []


class _Shards:
    """The outputs packed into tar shards (dlpipe.shared.shards), each stored once it is full or the batch ends."""

    def __init__(self, request: AugmentRequest, store: ObjectStore, pool=None) -> None:
        self.base, self.store = join_key(request.output_prefix, request.shard or "shard"), store
        self.writer = ShardWriter()
        self.held: list[tuple[ImageResult, list[str]]] = []   # the samples of the shard being written
        self.shards: list[ShardInfo] = []
        self.bytes_out = 0

    def add(self, result: ImageResult, encoded: Encoded) -> None:
        stem, outputs = encoded
        key = sample_key(stem)
        names = [f"{key}.{suffix.removeprefix('__')}" for suffix, _ in outputs]
        for name, (_, out) in zip(names, outputs, strict=True):
            self.writer.add(name, out)
        self.held.append((result, names))
        if self.writer.size >= SHARD_MAX_BYTES:
            self._store()

    def _store(self) -> None:
        data = self.writer.finish()
        key = f"{self.base}{f'-{len(self.shards)}' if self.shards else ''}{SHARD_SUFFIX}"
        held, self.writer, self.held = self.held, ShardWriter(), []
        try:
            self.store.put(key, data)
        except Exception as err:
            for result, _ in held:
                result.error = _reason(err)
            return
        classes: dict[str, int] = {}
        for result, names in held:
            result.outputs, result.shard = names, key
            for name in names:
                cls = member_class(name) or ""
                classes[cls] = classes.get(cls, 0) + 1
        self.shards.append(ShardInfo(key=key, bytes=len(data), samples=len(held),
                                     images=sum(len(n) for _, n in held), classes=classes))
        self.bytes_out += len(data)

    def finish(self) -> list[ShardInfo]:
        if self.held:
            self._store()
        return self.shards


def _run(request: AugmentRequest, store: ObjectStore, pool, results: list[ImageResult], deadline: _Deadline,
         sink: _Files | _Shards) -> None:
    """Augment the keys in order, reads PREFETCH ahead, handing each image's outputs to `sink`."""
    keys = request.keys

    def fetch(i: int) -> tuple[str, bytes]:
        return relative_key(keys[i], request.source_prefix), store.get(keys[i])

    reads = {i: pool.submit(fetch, i) for i in range(min(PREFETCH, len(keys)))}
    for i, result in enumerate(results):
        if deadline.near():
            for rest in results[i:]:
                rest.error = NOT_PROCESSED
            for future in reads.values():
                future.cancel()
            break
        with deadline.timing():
            if i + PREFETCH < len(keys):
                reads[i + PREFETCH] = pool.submit(fetch, i + PREFETCH)
            encoded = _encoded(request, reads.pop(i), result)
        if encoded is not None:
            sink.add(result, encoded)


def augment_batch(request: AugmentRequest, store: ObjectStore,
                  time_left_ms: Callable[[], int] | None = None) -> AugmentResponse:
    """Augment every key of the batch; one bad image is reported, never fatal.

    Reads and writes of a remote store (S3) run on a few threads while the CPU augments:
    each request waits tens of milliseconds on the network, longer than an image takes to
    augment. Reads run PREFETCH images ahead; writes of at most WRITE_BACKLOG images are in
    flight. A local directory never waits (the page cache absorbs writes), so there they
    run inline and leave the other cores to the other workers.
    An image's outputs are all encoded before any is written, so a bad image never
    touches the store. With `request.shard` the outputs go into tar shards instead
    (WebDataset's layout): one PUT per shard rather than one per output. If the
    function's time limit comes near (`time_left_ms`, Lambda's context method), the
    remaining keys are reported as not processed, rather than lost to a
    timeout that would discard the results of the whole batch.
    """
    results = [ImageResult(key=key) for key in request.keys]
    executor = _Inline if store.is_local else ThreadPoolExecutor
    with executor(max_workers=IO_THREADS, thread_name_prefix="store") as pool:
        sink = (_Shards if request.shard else _Files)(request, store, pool)
        _run(request, store, pool, results, _Deadline(time_left_ms), sink)
        shards = sink.finish()
    return AugmentResponse(results=results, images_in=len(results), images_out=sum(len(r.outputs) for r in results),
                           failed=sum(1 for r in results if r.error), bytes_out=sink.bytes_out, shards=shards)
