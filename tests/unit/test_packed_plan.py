"""Planning prepare over packed augment output: whole shards, each in exactly one part."""

from __future__ import annotations

import pytest

from dlpipe.shared.recipe import Recipe
from orchestrator.packed import images_of, pack_request, plan_packed


def shards(n: int, images: int = 10) -> list[dict]:
    return [{"key": f"augmented/shard-{i:06d}.tar", "samples": images // 2, "images": images,
             "classes": {"cat": images // 2, "dog": images - images // 2}} for i in range(n)]


def test_every_shard_is_in_exactly_one_part_and_parts_hold_whole_shards():
    every = shards(40)
    plan = plan_packed(every, workers=3, val_fraction=0.2, part_size=25)
    parts = [p for s in plan.shards for p in s] + plan.val_parts
    assert sorted(k for p in parts for k, _ in p) == sorted(s["key"] for s in every)
    assert all(images_of(p, True) <= 25 for p in parts) and all(len(p) == 2 for p in parts[:3])
    assert 0 < plan.counts["val"] < 400 and plan.counts["train"] + plan.counts["val"] == 400
    per_worker = [sum(images_of(p, True) for p in s) for s in plan.shards]
    assert max(per_worker) - min(per_worker) <= 10 and sum(per_worker) == plan.counts["train"]   # a shard at most
    assert plan.classes == ["cat", "dog"] and plan.counts["train_per_class"]["cat"] == plan.counts["train"] // 2
    assert plan_packed(every, workers=3, val_fraction=0.2, part_size=25) == plan          # deterministic
    again = plan_packed(every + shards(41)[40:], workers=3, val_fraction=0.2, part_size=25)
    held = {k for p in plan.val_parts for k, _ in p}
    assert held <= {k for p in again.val_parts for k, _ in p}        # a new shard never moves old ones to train


def test_a_shard_larger_than_a_part_is_a_part_of_its_own_and_too_few_shards_fail():
    plan = plan_packed(shards(2, images=50), workers=1, val_fraction=0.0, part_size=20)
    assert [[n for _, n in p] for p in plan.shards[0]] == [[50], [50]]
    with pytest.raises(ValueError, match="2 training shards cannot be spread over 3 workers"):
        plan_packed(shards(2), workers=3, val_fraction=0.0)
    with pytest.raises(ValueError, match="no images in class folders"):
        plan_packed([{"key": "a.tar", "samples": 1, "images": 1, "classes": {"": 1}}], workers=1)


def test_a_packed_validation_source_holds_out_nothing_and_events_name_the_shards():
    plan = plan_packed(shards(4), workers=2, val_fraction=0.5, val_shards=shards(1, images=6))
    assert plan.counts == {"train": 40, "val": 6, "train_per_class": {"cat": 20, "dog": 20}}
    event = pack_request(plan.val_parts[0], Recipe(size=8), "datasets/d/val/part-000", plan.classes, packed=True)
    assert event["shards"] == [{"key": "augmented/shard-000000.tar", "images": 6}] and event["items"] == []
    assert event["classes"] == ["cat", "dog"]
