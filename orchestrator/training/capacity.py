"""Will a worker fit its function? Checked by `prepare` and `train` before any work.

Memory comes from dlpipe.runs.footprint (measured peaks) against the train function's
memory size (orchestrator.functions, as in template.yaml). A shard larger than the warm
workers' cache in /tmp does not fail, but every round downloads it again: that is a note,
not a refusal. Every message says what to change.
"""

from __future__ import annotations

from collections.abc import Sequence

from dlpipe.datasets.manifest import Manifest
from dlpipe.runs import footprint
from dlpipe.runs.run import Training
from dlpipe.shared.recipe import Recipe
from orchestrator.functions import function_spec
from orchestrator.training.hyperparams import worker_hyper

# template.yaml: TrainShardCacheMB (of TrainEphemeralStorage's /tmp), a unit test keeps them in step.
TRAIN_SHARD_CACHE_MB = 1536
TRAIN_EPHEMERAL_MB = 2048
EVALUATE_BATCH = 256    # evaluation's batch when memory allows: fewer, larger batches are faster
MEMORY_SETTING = "the train function's memory (TrainMemorySize in template.yaml, and orchestrator/functions.py)"


class DoesNotFit(ValueError):
    """A worker would run out of memory: the message names the need, the size and the way out."""


def input_shape(recipe: Recipe) -> tuple[int, int, int]:
    return recipe.size, recipe.size, recipe.channels


def worker_shard_sizes(manifest: Manifest, workers: int) -> list[int]:
    """Images per worker when `workers` share the manifest's shards (shard w, w + W, ...)."""
    counts = [s.count for s in manifest.shards]
    return [sum(counts[w::workers]) for w in range(workers)]


def val_part_images(manifest: Manifest) -> int:
    """Images in a validation part, on average (what one evaluate invocation loads)."""
    return -(-manifest.val.count // max(1, len(manifest.val.parts)))


def check_worker_memory(manifest: Manifest, training: Training, small_inputs: bool | None = None) -> int:
    """Refuse a run whose workers would need more than their function's memory allows (with headroom).

    Returns the batch size for evaluating: the largest that fits, at most EVALUATE_BATCH.
    """
    memory_mb = function_spec("train").memory_mb
    shape = input_shape(manifest.recipe)
    shard, val_part = max(worker_shard_sizes(manifest, training.workers)), val_part_images(manifest)
    batch = worker_hyper(training).batch_size
    need = footprint.train_peak_mb(shape, batch, shard, training.trainable, small_inputs, val_part)
    fits = footprint.largest_batch(shape, shard, memory_mb, training.trainable, small_inputs, val_part)
    if need <= memory_mb * (1 - footprint.HEADROOM):
        return max(batch, min(EVALUATE_BATCH, fits))
    what = (f"a worker would need about {need:,.0f} MB (batches of {batch} {'x'.join(map(str, shape))} images, "
            f"{training.trainable} layers training, {shard:,} images in its shard), more than "
            f"{1 - footprint.HEADROOM:.0%} of the train function's {memory_mb:,} MB")
    if fits < 1:
        raise DoesNotFit(f"{what}; even a batch of 1 does not fit: prepare the dataset with more --workers "
                         f"(smaller shards), or raise {MEMORY_SETTING}")
    across = f"--batch-size {fits * training.workers}" if training.batch_across_workers else f"--batch-size {fits}"
    raise DoesNotFit(f"{what}; use {across} or less, or more --workers (a run already started needs a new "
                     f"--run for either), or raise {MEMORY_SETTING}")


def check_shards_fit(shape: tuple[int, int, int], shard_images: Sequence[int]) -> None:
    """Refuse shards so large that a worker could not hold one even at batch 1 (`prepare`, before packing)."""
    memory_mb = function_spec("train").memory_mb
    largest = max(shard_images)
    need = footprint.train_peak_mb(shape, 1, largest, "classifier")
    if need > memory_mb * (1 - footprint.HEADROOM):
        per_image = footprint.shard_mb(shape, 1)
        room = memory_mb * (1 - footprint.HEADROOM) - footprint.train_peak_mb(shape, 1, 0, "classifier")
        most = max(1, int(room // per_image))
        workers = -(-sum(shard_images) // most)
        raise DoesNotFit(f"a shard of {largest:,} {'x'.join(map(str, shape))} images needs about {need:,.0f} MB "
                         f"in a worker, more than {1 - footprint.HEADROOM:.0%} of the train function's "
                         f"{memory_mb:,} MB: use --workers {workers} or more (at most {most:,} images a shard), "
                         f"or raise {MEMORY_SETTING}")


def cache_note(shape: tuple[int, int, int], shard_images: Sequence[int]) -> str | None:
    """A note when a shard is larger than the warm workers' /tmp cache on Lambda (None: it fits)."""
    largest = footprint.shard_mb(shape, max(shard_images))
    if largest <= TRAIN_SHARD_CACHE_MB:
        return None
    return (f"note: a shard holds {largest:,.0f} MB of pixels, more than the {TRAIN_SHARD_CACHE_MB:,} MB that "
            f"warm train workers keep in /tmp on Lambda (TrainShardCacheMB, of TrainEphemeralStorage "
            f"{TRAIN_EPHEMERAL_MB:,} MB): every round downloads it again. Use more --workers, or raise both "
            "in template.yaml")
