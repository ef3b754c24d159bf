"""Will a worker fit its function: the memory estimate, the largest batch, the /tmp cache note."""

from __future__ import annotations

import pytest
from cfnlint.decode.decode import decode_str

from dlpipe.runs import footprint
from orchestrator.functions import FUNCTIONS, REPO_ROOT
from orchestrator.training import capacity


@pytest.mark.parametrize("shape, trainable, shard", [((32, 32, 1), "all", 15000), ((96, 96, 3), "all", 4000),
                                                      ((224, 224, 3), "all", 650), ((224, 224, 3), "classifier", 650)])
def test_the_largest_batch_is_where_the_estimate_crosses_the_headroom(shape, trainable, shard):
    memory = FUNCTIONS["train"].memory_mb
    batch = footprint.largest_batch(shape, shard, memory, trainable)
    limit = memory * (1 - footprint.HEADROOM)
    assert batch >= 1
    assert footprint.train_peak_mb(shape, batch, shard, trainable) <= limit
    assert footprint.train_peak_mb(shape, batch + 1, shard, trainable) > limit


def test_activations_follow_the_pixels_after_the_stem():
    assert footprint.stem_pixels((32, 32, 1)) == 32 * 32              # stride 1 up to 64 px
    assert footprint.stem_pixels((224, 224, 3)) == 112 * 112          # ImageNet's stride 2
    assert footprint.stem_pixels((32, 32, 1), small_inputs=False) == 16 * 16
    # Training only the classifier needs less per example than training every layer.
    assert footprint.train_peak_mb((224, 224, 3), 64, 500, "classifier") < footprint.train_peak_mb(
        (224, 224, 3), 64, 500, "all")
    # A validation part is held twice while it is read; the larger need counts.
    assert footprint.train_peak_mb((224, 224, 3), 8, 10, val_part_images=2000) > footprint.train_peak_mb(
        (224, 224, 3), 8, 10)


def test_shards_larger_than_the_warm_cache_get_a_note():
    assert capacity.cache_note((32, 32, 1), [15000, 15000]) is None
    note = capacity.cache_note((224, 224, 3), [12000, 11000])
    assert note and "1,723 MB of pixels" in note and "every round downloads it again" in note
    assert "more --workers" in note


def test_shards_no_worker_could_hold_are_refused_with_the_workers_that_would_do():
    capacity.check_shards_fit((224, 224, 3), [5000, 5000])
    with pytest.raises(capacity.DoesNotFit, match=r"a shard of 40,000 224x224x3 images .* use --workers (\d+) or"):
        capacity.check_shards_fit((224, 224, 3), [40000])
    try:
        capacity.check_shards_fit((224, 224, 3), [40000])
    except capacity.DoesNotFit as err:
        workers = int(str(err).split("use --workers ")[1].split()[0])
    capacity.check_shards_fit((224, 224, 3), [-(-40000 // workers)] * workers)   # the advice fits


def test_the_cache_sizes_are_the_templates():
    template, problems = decode_str((REPO_ROOT / "template.yaml").read_text())
    assert not problems
    parameters = template["Parameters"]
    assert parameters["TrainShardCacheMB"]["Default"] == capacity.TRAIN_SHARD_CACHE_MB
    assert parameters["TrainEphemeralStorage"]["Default"] == capacity.TRAIN_EPHEMERAL_MB
