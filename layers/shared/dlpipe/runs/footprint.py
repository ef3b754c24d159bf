"""How much memory a train worker needs, from measurements (bench/worker_memory.py).

A worker's peak is TensorFlow and the model (a constant), plus the activations of one batch
(per example, in proportion to the pixels after SqueezeNet's first convolution: a stride-1
stem keeps all of them, ImageNet's stride 2 a quarter; about 40 % of that when only the
classifier trains), plus its uint8 shard, or twice a validation part while it evaluates.
Evaluating at the training batch in the same warm worker peaks up to 10 % above the
training round, so the figures below fit the higher of the two. Measured peaks (MB, VmHWM of
a fresh local worker) against this estimate:

    input       trains       batch   shard MB   measured   estimate
    32x32x1     all             32        1        802       913
    32x32x1     all            512        1      1,534     1,847
    96x96x3     all            128       27      1,400     1,437
    224x224x3   all             16       74      1,291     1,305
    224x224x3   all             64       74      2,431     2,449
    224x224x3   all            128       74      3,865     3,975
    224x224x3   classifier      32       74      1,174     1,245
    224x224x3   classifier     128       74      2,127     2,209

The orchestrator checks a run against the train function's memory before any work, with
HEADROOM to spare. Pure arithmetic: no TensorFlow.
"""

from __future__ import annotations

import math

from dlpipe.train.model import small_stem

BASE_MB = 850.0                                              # TensorFlow, the model, the optimizer
MB_PER_STEM_PIXEL = {"all": 0.0019, "classifier": 0.0008}    # per example of a batch
VAL_PART_COPIES = 2.0                                        # a part being read, and its arrays
# Keep this share of the function's memory free: the fit's error, and what the allocator keeps.
HEADROOM = 0.1


def stem_pixels(input_shape: tuple[int, int, int], small_inputs: bool | None = None) -> int:
    """Pixels of one feature map after the first convolution (stride 1 for small inputs, else 2)."""
    height, width, _ = input_shape
    small = small_stem(max(height, width)) if small_inputs is None else small_inputs
    return height * width if small else math.ceil(height / 2) * math.ceil(width / 2)


def shard_mb(input_shape: tuple[int, int, int], images: int) -> float:
    """MB of `images` uint8 examples."""
    height, width, channels = input_shape
    return images * height * width * channels / 2 ** 20


def train_peak_mb(input_shape: tuple[int, int, int], batch_size: int, shard_images: int, trainable: str = "all",
                  small_inputs: bool | None = None, val_part_images: int = 0) -> float:
    """Estimated peak MB of a worker training (and evaluating) `batch_size` batches on a shard of `shard_images`."""
    data = max(shard_mb(input_shape, shard_images), VAL_PART_COPIES * shard_mb(input_shape, val_part_images))
    return BASE_MB + batch_size * MB_PER_STEM_PIXEL[trainable] * stem_pixels(input_shape, small_inputs) + data


def largest_batch(input_shape: tuple[int, int, int], shard_images: int, memory_mb: int, trainable: str = "all",
                  small_inputs: bool | None = None, val_part_images: int = 0) -> int:
    """The largest batch whose estimated peak leaves HEADROOM of `memory_mb` free (0: none does)."""
    room = memory_mb * (1 - HEADROOM) - train_peak_mb(input_shape, 0, shard_images, trainable, small_inputs,
                                                      val_part_images)
    return max(0, int(room // (MB_PER_STEM_PIXEL[trainable] * stem_pixels(input_shape, small_inputs))))
