"""`orchestrator prepare`: class-folder images -> packed, sharded arrays + a manifest.

The orchestrator lists and plans (dlpipe.train.plan: pure key arithmetic); the decoding fans
out over the train function's "pack" action, one part per invocation, and the manifest
(dlpipe.train.manifest) is written last. `prepare_dataset(session, ...)` is the whole job
without the CLI.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TextIO

from dlpipe.shared import clock
from dlpipe.shared.recipe import RESIZE_MODES, Recipe
from dlpipe.train import manifest as manifests
from dlpipe.train import plan as planning
from dlpipe.train.fashion_mnist import FASHION_MNIST_RECIPE
from dlpipe.train.manifest import Counts, Manifest, PartList
from dlpipe.train.parts import NothingPacked
from dlpipe.wire import PackRequest, PackResponse
from orchestrator import capacity
from orchestrator.commands import add_command
from orchestrator.errors import CommandError
from orchestrator.invokers.retry import invoke_with_retries, reply_check
from orchestrator.packed import images_of, pack_request, plan_packed, read_packed
from orchestrator.report import add_json_argument, human_out, print_failures, print_json, print_summary, progress_bar

RECIPES = {
    "fashion-mnist": FASHION_MNIST_RECIPE,
    "small-rgb": Recipe(size=64, channels=3),
    "imagenet": Recipe(size=224, channels=3, resize="center_crop", resize_shorter=256,
                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}
# Parts of at most this many pixel bytes by default: a part of large photos then decodes in
# minutes, well inside the function's 15, and is a modest GET for the worker.
PART_TARGET_BYTES = 64 * 2 ** 20

EXAMPLES = """\
examples:
  orchestrator prepare --source fashion-mnist/train --val-source fashion-mnist/test \\
      --dataset fmnist --workers 4 --recipe fashion-mnist
  orchestrator prepare --source augmented --dataset pets --workers 2 --val-fraction 0.2 --size 64
  orchestrator prepare --source raw --dataset pets224 --workers 8 --recipe imagenet
  orchestrator prepare --source augmented/flowers --dataset flowers --workers 2 --recipe-from squeezenet1.1
      the preprocessing of a model to fine-tune (`train --init-from squeezenet1.1`)

The split is a stable hash of each image's key (below --source), so re-running prepare on
the same images gives the same split, and new images never move old ones between splits.
Images that cannot be decoded are skipped and listed (exit status 1); the rest is packed.
Recipes: fashion-mnist (32 px grey, 2 px padding), small-rgb (64 px), imagenet (224 px
centre crop, ImageNet mean/std); --size/--channels/... override a recipe's fields."""

Job = tuple[str, int | None, int, list]   # (split, shard, part, items)


def register(subparsers) -> None:
    p = add_command(
        subparsers, "prepare", help="pack class-folder images into sharded arrays for training",
        description="Split the images under --source into train and validation sets, give each of --workers "
                    "training workers its own shard, and pack every shard into a few uint8 .npz objects "
                    "(decoded and resized by the train function with the preprocessing recipe that serving "
                    "will use). Writes datasets/<dataset>/manifest.json in the data store.",
        examples=EXAMPLES, run=run)
    p.add_argument("--source", required=True, metavar="PREFIX", help="images as PREFIX/<class>/<image>")
    p.add_argument("--dataset", required=True, metavar="NAME", help="name of the prepared dataset")
    p.add_argument("--workers", type=int, required=True, metavar="N", help="training workers (= shards)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share of --source held out for validation (default: %(default)s)")
    p.add_argument("--val-source", metavar="PREFIX",
                   help="validation images from another prefix (e.g. a test split); then nothing is held out")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="preprocessing preset (default: 32 px RGB, stretch)")
    p.add_argument("--recipe-from", metavar="MODEL[:VERSION]",
                   help="the preprocessing of a servable model version (its recipe.json; default version: its "
                        "latest), as `train --init-from MODEL` needs; not with --recipe or the options below")
    p.add_argument("--size", type=int, metavar="PX", help="model input is PX x PX")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 = greyscale, 3 = colour")
    p.add_argument("--pad", type=int, metavar="PX", help="stretch: resize to size - 2*PX, then zero-pad")
    p.add_argument("--resize", choices=RESIZE_MODES, help="stretch to the size, or shorter side then centre crop")
    p.add_argument("--resize-shorter", type=int, metavar="PX", help="center_crop: shorter side before the crop")
    p.add_argument("--mean", type=float, nargs="+", metavar="M", help="per-channel mean after scaling")
    p.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel std after scaling")
    p.add_argument("--part-size", type=int, metavar="N",
                   help=f"images per packed object (default: as many as make {PART_TARGET_BYTES >> 20} MB of "
                        f"pixels, at most {PackRequest.MAX_ITEMS})")
    p.add_argument("--retries", type=int, default=1, metavar="K", help="re-invocations of a failed pack (default: 1)")
    add_json_argument(p)


RECIPE_OPTIONS = ("size", "channels", "pad", "resize", "resize_shorter", "mean", "std")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    base = RECIPES[args.recipe].to_dict() if args.recipe else Recipe(size=32, channels=3).to_dict()
    for name in RECIPE_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            base[name] = value
    return Recipe.from_dict(base)


def model_recipe(store, ref: str) -> tuple[Recipe, str]:
    """(the recipe of model version `ref`, "MODEL:VERSION"); ValueError naming what exists otherwise."""
    from dlpipe.predict.versions import latest_version, read_meta, version_key
    from dlpipe.shared.store import KeyNotFound
    from dlpipe.train.pretrained import parse_ref
    from dlpipe.wire import NotFound

    try:
        name, version = parse_ref(ref)
        version = version or latest_version(store, name)
        read_meta(store, name, version)    # NotFound naming the model's versions
        recipe = Recipe.from_dict(json.loads(store.get(version_key(name, version, "recipe.json"))))
    except NotFound as err:
        raise ValueError(f"--recipe-from {ref}: {err}") from None
    except KeyNotFound:
        raise ValueError(f"--recipe-from {ref}: model {name} {version} has no recipe.json") from None
    except (ValueError, TypeError) as err:
        raise ValueError(f"--recipe-from {ref}: {err}") from None
    return recipe, f"{name}:{version}"


def recipe_for(args: argparse.Namespace, session) -> tuple[Recipe, str | None]:
    """The recipe asked for, and the model version it came from (with --recipe-from)."""
    if not getattr(args, "recipe_from", None):
        return recipe_from_args(args), None
    given = [f"--{name.replace('_', '-')}" for name in ("recipe", *RECIPE_OPTIONS) if getattr(args, name) is not None]
    if given:
        raise ValueError(f"--recipe-from takes the whole recipe from the model; drop {', '.join(given)}")
    return model_recipe(session.model_store(), args.recipe_from)


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


def _check_reply(event: dict, payload: dict) -> str | None:
    problem = reply_check(PackResponse)(event, payload)
    if problem:
        return problem
    reply = PackResponse.model_validate(payload)
    if not reply.key.startswith(event["output_prefix"] + "-"):
        return f"bad response: part stored at {reply.key!r}, not under {event['output_prefix']!r}"
    return None


def _pack(session, events: list[dict], jobs: list[Job], retries: int, progress: bool,
          dataset: str) -> tuple[dict[int, PackResponse], list[PackResponse.Skipped]]:
    """Run the packs; ({job: reply}, images of parts where none decoded). RuntimeError for other failures."""
    bar = progress_bar(total=sum(len(job[3]) for job in jobs), unit="img", desc=f"prepare {dataset}", enabled=progress)
    done, errors = invoke_with_retries(session.invoker, "train", events, retries,
                                       lambda inv: bar.update(len(jobs[inv.index][3]) if inv.ok else 0),
                                       check=_check_reply)
    bar.close()
    unreadable = f"{NothingPacked.__name__}: "
    failed = {i: error for i, (_, error) in errors.items() if not error.startswith(unreadable)}
    if failed:
        reasons = "; ".join(f"{events[i]['output_prefix']}: {error}" for i, error in sorted(failed.items())[:5])
        raise RuntimeError(f"packing failed for {len(failed)} of {len(events)} parts ({reasons}); "
                           "nothing was published, run prepare again")
    lost = [PackResponse.Skipped(key=key, reason=error[:300]) for i, (_, error) in sorted(errors.items())
            for key, _ in jobs[i][3]]
    return {i: PackResponse.model_validate(payload) for i, payload in done.items()}, lost


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


def prepare_dataset(session, source: str, dataset: str, workers: int, recipe: Recipe, val_fraction: float = 0.1,
                    val_source: str | None = None, part_size: int | None = None, retries: int = 1,
                    progress: bool = True) -> Manifest:
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
    replies, lost = _pack(session, events, jobs, retries, progress, dataset)
    manifest = _assemble(dataset, source, val_source, val_fraction, recipe, plan, jobs, replies, lost)
    key = manifests.write_manifest(store, manifest)
    # Parts of an earlier prepare of this name are now unreferenced: remove them.
    keep = manifest.part_keys() | {key}
    for key in list(store.list(manifests.dataset_prefix(dataset))):
        if key not in keep:
            store.delete(key)
    return manifest


def _print_report(args: argparse.Namespace, session, manifest: Manifest, wall: float, first: int,
                  out: TextIO) -> None:
    counts, recipe = manifest.counts, manifest.recipe
    images = counts.train + counts.val + counts.skipped
    shard_sizes = [s.count for s in manifest.shards]
    print_summary(f"prepare {args.dataset}", [
        ("store", f"{session.data_store().url}/{manifests.manifest_key(args.dataset)}"),
        ("classes", f"{len(manifest.classes)}: {', '.join(manifest.classes[:10])}"
                    + (" ..." if len(manifest.classes) > 10 else "")),
        ("train", f"{counts.train} images in {len(shard_sizes)} shards ({min(shard_sizes)}-{max(shard_sizes)} each)"),
        ("validation", f"{counts.val} images" + (f" from {manifest.val_source}" if manifest.val_source
                                                 else f" ({manifest.val_fraction:.0%} held out)")),
        ("skipped", f"{counts.skipped} unreadable images"),
        ("recipe", f"{recipe.size} px, {recipe.channels} channel(s), {recipe.resize}"
                   + (f", pad {recipe.pad}" if recipe.pad else "")
                   + (f" (model {args.recipe_from}'s)" if getattr(args, "recipe_from", None) else "")),
        ("packed", f"{manifest.bytes / 1e6:,.1f} MB"),
        ("wall time", f"{wall:.2f} s"),
        ("throughput", f"{images / wall:,.0f} images/s" if wall > 0 else "-"),
    ], invocations=session.invoker.records[first:], out=out)
    print_failures([(s.key, s.reason) for s in manifest.skipped], out=out)
    note = capacity.cache_note((recipe.size, recipe.size, recipe.channels), shard_sizes)
    if note and not session.data_store().is_local:
        print(note, file=out)
    if args.json:
        print_json("prepare", {
            "dataset": args.dataset, "manifest": f"{session.data_store().url}/{manifests.manifest_key(args.dataset)}",
            "id": manifest.id, "classes": manifest.classes, "train": counts.train, "shards": shard_sizes,
            "validation": counts.val, "val_source": manifest.val_source, "val_fraction": manifest.val_fraction,
            "skipped": counts.skipped, "recipe": recipe.to_dict(), "bytes": manifest.bytes, "wall_seconds": wall,
        }, [(s.key, s.reason) for s in manifest.skipped], session.invoker.records[first:])


def run(args: argparse.Namespace, session, out: TextIO | None = None) -> int:
    out = human_out(args, out)  # resolved per call, so redirected output is honoured
    try:
        recipe, source_model = recipe_for(args, session)
        if args.workers < 1:
            raise ValueError("--workers must be at least 1")
        if args.retries < 0:
            raise ValueError("--retries must be 0 or more")
        first = len(session.invoker.records)
        start = time.perf_counter()
        manifest = prepare_dataset(session, args.source, args.dataset, args.workers, recipe,
                                   val_fraction=args.val_fraction, val_source=args.val_source,
                                   part_size=args.part_size, retries=args.retries)
    except (ValueError, RuntimeError) as err:
        raise CommandError(str(err)) from None
    _print_report(args, session, manifest, time.perf_counter() - start, first, out)
    init = f" --init-from {source_model}" if source_model else ""
    print(f"\nnext: orchestrator train --dataset {args.dataset} --run RUN --rounds {3 if init else 5}{init}", file=out)
    return 1 if manifest.counts.skipped else 0
