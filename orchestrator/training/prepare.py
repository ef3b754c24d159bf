"""Preparing a dataset for training: class-folder images -> packed, sharded arrays + a manifest.

The orchestrator lists and plans (dlpipe.datasets.split: pure key arithmetic); the decoding fans
out over the train function's "pack" action, one part per invocation, and the manifest
(dlpipe.datasets.manifest) is written last. `prepare_dataset(session, ...)` is the whole job
without the CLI (orchestrator.commands.prepare is its command line).
"""

from __future__ import annotations

from dlpipe.datasets import manifest as manifests
from dlpipe.datasets import split as planning
from dlpipe.datasets.fashion_mnist import FASHION_MNIST_RECIPE
from dlpipe.datasets.manifest import Counts, Manifest, PartList
from dlpipe.shared import clock
from dlpipe.shared.recipe import Recipe
from dlpipe.train.parts import NothingPacked
from dlpipe.wire import PackRequest, PackResponse
from orchestrator.invokers.retry import invoke_for_replies
from orchestrator.packed import images_of, pack_request, plan_packed, read_packed
from orchestrator.report import progress_bar
from orchestrator.session import Session
from orchestrator.training import capacity

RECIPES = {
    "fashion-mnist": FASHION_MNIST_RECIPE,
    "small-rgb": Recipe(size=64, channels=3),
    "imagenet": Recipe(size=224, channels=3, resize="center_crop", resize_shorter=256,
                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}
# Parts of at most this many pixel bytes by default: a part of large photos then decodes in
# minutes, well inside the function's 15, and is a modest GET for the worker.
PART_TARGET_BYTES = 64 * 2 ** 20

Job = tuple[str, int | None, int, list]   # (split, shard, part, items)


def model_recipe(store, ref: str) -> tuple[Recipe, str]:
    """(the recipe of model version `ref`, "MODEL:VERSION"); ValueError naming what exists otherwise."""
    from dlpipe.predict.versions import latest_version, read_meta, read_recipe
    from dlpipe.runs.pretrained import parse_ref
    from dlpipe.shared.store import KeyNotFound
    from dlpipe.wire import NotFound

    try:
        name, version = parse_ref(ref)
        version = version or latest_version(store, name)
        read_meta(store, name, version)    # NotFound naming the model's versions
        recipe = read_recipe(store, name, version)
    except NotFound as err:
        raise ValueError(f"--recipe-from {ref}: {err}") from None
    except KeyNotFound:
        raise ValueError(f"--recipe-from {ref}: model {name} {version} has no recipe.json") from None
    except (ValueError, TypeError) as err:
        raise ValueError(f"--recipe-from {ref}: {err}") from None
    return recipe, f"{name}:{version}"


def part_size_for(recipe: Recipe, requested: int | None) -> int:
    """The images per part: `requested`, checked against what one pack may hold, or the default."""
    image_bytes = recipe.size ** 2 * recipe.channels
    most = min(PackRequest.MAX_ITEMS, PackRequest.MAX_PART_BYTES // image_bytes)
    if requested is None:
        return max(1, min(most, PART_TARGET_BYTES // image_bytes))
    if not 1 <= requested <= most:
        raise ValueError(f"--part-size must be 1 to {most} for {recipe.size}x{recipe.size}x{recipe.channels} images "
                         f"(a pack holds at most {PackRequest.MAX_ITEMS} images and "
                         f"{PackRequest.MAX_PART_BYTES >> 20} MB of pixels), got {requested}")
    return requested


def _list_sources(store, source: str, val_source: str | None):
    classes, items = planning.list_class_folders(store, source)
    if not val_source:
        return classes, items, None
    val_classes, val_items = planning.list_class_folders(store, val_source.strip("/"))
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise ValueError(f"validation classes {unknown} under {val_source!r} are not training classes {classes}")
    return classes, items, val_items


def _jobs(plan: planning.DatasetPlan) -> list[Job]:
    jobs: list[Job] = []
    for shard, parts in enumerate(plan.shards):
        jobs += [("train", shard, i, part) for i, part in enumerate(parts)]
    return jobs + [("val", None, i, part) for i, part in enumerate(plan.val_parts)]


def _check_reply(event: dict, reply: PackResponse) -> str | None:
    if not reply.key.startswith(event["output_prefix"] + "-"):
        return f"bad response: part stored at {reply.key!r}, not under {event['output_prefix']!r}"
    return None


def _pack(session: Session, events: list[dict], jobs: list[Job], retries: int, progress: bool,
          dataset: str, packed: bool) -> tuple[dict[int, PackResponse], list[PackResponse.Skipped]]:
    """Run the packs; ({job: reply}, images of parts where none decoded). RuntimeError for other failures."""
    bar = progress_bar(total=sum(images_of(job[3], packed) for job in jobs), unit="img", desc=f"prepare {dataset}",
                       enabled=progress)
    done, errors = invoke_for_replies(session.invoker, "train", events, retries, PackResponse,
                                      lambda inv: bar.update(images_of(jobs[inv.index][3], packed) if inv.ok else 0),
                                      accept=_check_reply)
    bar.close()
    unreadable = f"{NothingPacked.__name__}: "
    failed = {i: error for i, (_, error) in errors.items() if not error.startswith(unreadable)}
    if failed:
        reasons = "; ".join(f"{events[i]['output_prefix']}: {error}" for i, error in sorted(failed.items())[:5])
        raise RuntimeError(f"packing failed for {len(failed)} of {len(events)} parts ({reasons}); "
                           "nothing was published, run prepare again")
    lost = [PackResponse.Skipped(key=key, reason=error[:300]) for i, (_, error) in sorted(errors.items())
            for key, _ in jobs[i][3]]
    return done, lost


def _assemble(dataset: str, source: str, val_source: str | None, val_fraction: float, recipe: Recipe,
              plan: planning.DatasetPlan, jobs: list[Job], replies: dict[int, PackResponse],
              lost: list[PackResponse.Skipped]) -> Manifest:
    shards = [PartList() for _ in plan.shards]
    val = PartList()
    skipped = []
    for index, (_, shard, _, _) in enumerate(jobs):
        if index not in replies:
            continue
        reply = replies[index]
        skipped += reply.skipped
        target = val if shard is None else shards[shard]
        target.parts.append(reply.key)
        target.count += reply.count
    skipped += lost
    empty = [w for w, s in enumerate(shards) if not s.count]
    if empty:
        raise ValueError(f"shards {empty} have no readable images; use fewer --workers or fix the images")
    return Manifest(
        dataset=dataset, source=source, val_source=val_source, val_fraction=0.0 if val_source else val_fraction,
        classes=plan.classes, recipe=recipe, shards=shards, val=val, created=clock.now_iso(),
        id=manifests.dataset_id(plan.classes, recipe, shards, val),
        counts=Counts(train=sum(s.count for s in shards), val=val.count, skipped=len(skipped),
                      train_per_class=plan.counts["train_per_class"]),
        skipped=skipped[:manifests.MAX_SKIPPED_LISTED], bytes=sum(r.bytes for r in replies.values()))


def prepare_dataset(session: Session, source: str, dataset: str, workers: int, recipe: Recipe,
                    val_fraction: float = 0.1, val_source: str | None = None, part_size: int | None = None,
                    retries: int = 1, progress: bool = True) -> Manifest:
    """Plan, pack (fanned out over the train function) and write the manifest; returns it.

    Raises ValueError for bad input and RuntimeError if packing fails after retries.
    """
    store = session.data_store()
    manifests.validate_dataset(dataset)
    part_size = part_size_for(recipe, part_size)
    source = source.strip("/")
    packed = read_packed(store, source, val_source)   # augment --pack output: whole tar shards per part
    if packed:
        plan = plan_packed(packed[0], workers, val_fraction, part_size, val_shards=packed[1])
    else:
        classes, items, val_items = _list_sources(store, source, val_source)
        plan = planning.plan_dataset(items, classes, workers, val_fraction=val_fraction, part_size=part_size,
                                     source_prefix=source, val_items=val_items)
    capacity.check_shards_fit((recipe.size, recipe.size, recipe.channels),
                              [sum(images_of(p, bool(packed)) for p in s) for s in plan.shards])
    jobs = _jobs(plan)
    events = [pack_request(part, recipe, planning.part_prefix(dataset, split, shard, i), plan.classes, bool(packed))
              for split, shard, i, part in jobs]
    replies, lost = _pack(session, events, jobs, retries, progress, dataset, bool(packed))
    manifest = _assemble(dataset, source, val_source, val_fraction, recipe, plan, jobs, replies, lost)
    key = manifests.write_manifest(store, manifest)
    # Parts of an earlier prepare of this name are now unreferenced: remove them.
    keep = manifest.part_keys() | {key}
    for key in list(store.list(manifests.dataset_prefix(dataset))):
        if key not in keep:
            store.delete(key)
    return manifest
