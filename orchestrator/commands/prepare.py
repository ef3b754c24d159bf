"""`orchestrator prepare`: class-folder images -> packed, sharded arrays + a manifest.

The orchestrator lists and plans (dlpipe.train.datasets.plan_dataset: pure key arithmetic); the
decoding fans out over the train function's "pack" action, one part per invocation.
`prepare_dataset(session, ...)` is the whole job without the CLI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from typing import TextIO

from tqdm import tqdm

from dlpipe.shared.recipe import RESIZE_MODES, Recipe
from dlpipe.train import datasets
from dlpipe.wire import PackRequest
from orchestrator.commands import add_command
from orchestrator.commands.upload import print_failures
from orchestrator.invokers.retry import invoke_with_retries
from orchestrator.report import print_summary

RECIPES = {
    "fashion-mnist": datasets.FASHION_MNIST_RECIPE,
    "small-rgb": Recipe(size=64, channels=3),
    "imagenet": Recipe(size=224, channels=3, resize="center_crop", resize_shorter=256,
                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}

EXAMPLES = """\
examples:
  orchestrator prepare --source fashion-mnist/train --val-source fashion-mnist/test \\
      --dataset fmnist --workers 4 --recipe fashion-mnist
  orchestrator prepare --source augmented --dataset pets --workers 2 --val-fraction 0.2 --size 64
  orchestrator prepare --source raw --dataset pets224 --workers 8 --recipe imagenet

The split is a stable hash of each image's key (below --source), so re-running prepare on
the same images gives the same split, and new images never move old ones between splits.
Images that cannot be decoded are skipped and listed (exit status 1); the rest is packed.
Recipes: fashion-mnist (32 px grey, 2 px padding), small-rgb (64 px), imagenet (224 px
centre crop, ImageNet mean/std); --size/--channels/... override a recipe's fields."""


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
    p.add_argument("--size", type=int, metavar="PX", help="model input is PX x PX")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 = greyscale, 3 = colour")
    p.add_argument("--pad", type=int, metavar="PX", help="stretch: resize to size - 2*PX, then zero-pad")
    p.add_argument("--resize", choices=RESIZE_MODES, help="stretch to the size, or shorter side then centre crop")
    p.add_argument("--resize-shorter", type=int, metavar="PX", help="center_crop: shorter side before the crop")
    p.add_argument("--mean", type=float, nargs="+", metavar="M", help="per-channel mean after scaling")
    p.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel std after scaling")
    p.add_argument("--part-size", type=int, default=5000, metavar="N",
                   help="images per packed object (default: %(default)s)")
    p.add_argument("--retries", type=int, default=1, metavar="K", help="re-invocations of a failed pack (default: 1)")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    base = RECIPES[args.recipe].to_dict() if args.recipe else Recipe(size=32, channels=3).to_dict()
    for name in ("size", "channels", "pad", "resize", "resize_shorter", "mean", "std"):
        value = getattr(args, name, None)
        if value is not None:
            base[name] = value
    return Recipe.from_dict(base)


def prepare_dataset(session, source: str, dataset: str, workers: int, recipe: Recipe, val_fraction: float = 0.1,
                    val_source: str | None = None, part_size: int = 5000, retries: int = 1,
                    progress: bool = True) -> dict:
    """Plan, pack (fanned out over the train function) and write the manifest; returns it.

    Raises ValueError for bad input and RuntimeError if packing fails after retries.
    """
    store = session.data_store()
    datasets.validate_dataset(dataset)
    source = source.strip("/")
    classes, items = datasets.list_class_folders(store, source)
    val_items = None
    if val_source:
        val_classes, val_items = datasets.list_class_folders(store, val_source.strip("/"))
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise ValueError(f"validation classes {unknown} under {val_source!r} are not training classes {classes}")
    plan = datasets.plan_dataset(items, classes, workers, val_fraction=val_fraction, part_size=part_size,
                                 source_prefix=source, val_items=val_items)
    recipe_dict = recipe.to_dict()
    jobs: list[tuple[str, int | None, int, list]] = []    # (split, shard, part, items)
    for shard, parts in enumerate(plan.shards):
        jobs += [("train", shard, i, part) for i, part in enumerate(parts)]
    jobs += [("val", None, i, part) for i, part in enumerate(plan.val_parts)]
    events = [PackRequest(action="pack", items=part, recipe=recipe_dict,
                          output_prefix=datasets.part_prefix(dataset, split, shard, i)).model_dump(mode="json")
              for split, shard, i, part in jobs]

    bar = tqdm(total=sum(len(job[3]) for job in jobs), unit="img", desc=f"prepare {dataset}", disable=not progress)
    done, errors = invoke_with_retries(session.invoker, "train", events, retries,
                                       lambda inv: bar.update(len(jobs[inv.index][3]) if inv.ok else 0))
    bar.close()
    if errors:
        reasons = "; ".join(f"{events[i]['output_prefix']}: {error}" for i, (_, error) in sorted(errors.items())[:5])
        raise RuntimeError(f"packing failed for {len(errors)} of {len(events)} parts ({reasons}); "
                           "nothing was published, run prepare again")

    shards = [{"parts": [], "count": 0} for _ in plan.shards]
    val = {"parts": [], "count": 0}
    skipped = []
    for index, (split, shard, _, _) in enumerate(jobs):
        result = done[index]
        skipped += result["skipped"]
        if result["count"] == 0:
            continue
        target = shards[shard] if split == "train" else val
        target["parts"].append(result["key"])
        target["count"] += result["count"]
    empty = [w for w, s in enumerate(shards) if not s["count"]]
    if empty:
        raise ValueError(f"shards {empty} have no readable images; use fewer --workers or fix the images")
    manifest = {
        "format": 1, "dataset": dataset, "source": source, "val_source": val_source,
        "val_fraction": 0.0 if val_source else val_fraction, "classes": classes, "recipe": recipe_dict,
        "shards": shards, "val": val, "created": datasets.now_iso(),
        # Same images, split and recipe -> same id: a run may resume on a dataset prepared again
        # identically (the part keys are content hashes), never on one that changed.
        "id": hashlib.sha256(json.dumps([classes, recipe_dict, shards, val], sort_keys=True).encode()).hexdigest()[:16],
        "counts": {"train": sum(s["count"] for s in shards), "val": val["count"], "skipped": len(skipped),
                   "train_per_class": plan.counts["train_per_class"]},
        "skipped": skipped[:1000],
        "bytes": sum(r["bytes"] for r in done.values()),
    }
    store.put(datasets.manifest_key(dataset), json.dumps(manifest, indent=1).encode())
    # Parts of an earlier prepare of this name are now unreferenced: remove them.
    keep = {k for s in shards for k in s["parts"]} | set(val["parts"]) | {datasets.manifest_key(dataset)}
    for key in list(store.list(datasets.dataset_prefix(dataset))):
        if key not in keep:
            store.delete(key)
    return manifest


def run(args: argparse.Namespace, session, out: TextIO | None = None) -> int:
    out = out or sys.stdout  # resolved per call, so redirected output is honoured
    try:
        recipe = recipe_from_args(args)
        if args.workers < 1:
            raise ValueError("--workers must be at least 1")
        invoker = session.invoker
        first = len(invoker.records)
        start = time.perf_counter()
        manifest = prepare_dataset(session, args.source, args.dataset, args.workers, recipe,
                                   val_fraction=args.val_fraction, val_source=args.val_source,
                                   part_size=args.part_size, retries=args.retries)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - start
    counts = manifest["counts"]
    images = counts["train"] + counts["val"] + counts["skipped"]
    shard_sizes = [s["count"] for s in manifest["shards"]]
    print_summary(f"prepare {args.dataset}", [
        ("store", f"{session.data_store().url}/{datasets.manifest_key(args.dataset)}"),
        ("classes", f"{len(manifest['classes'])}: {', '.join(manifest['classes'][:10])}"
                    + (" ..." if len(manifest["classes"]) > 10 else "")),
        ("train", f"{counts['train']} images in {len(shard_sizes)} shards "
                  f"({min(shard_sizes)}-{max(shard_sizes)} each)"),
        ("validation", f"{counts['val']} images" + (f" from {manifest['val_source']}" if manifest["val_source"]
                                                    else f" ({manifest['val_fraction']:.0%} held out)")),
        ("skipped", f"{counts['skipped']} unreadable images"),
        ("recipe", f"{recipe.size} px, {recipe.channels} channel(s), {recipe.resize}"
                   + (f", pad {recipe.pad}" if recipe.pad else "")),
        ("packed", f"{manifest['bytes'] / 1e6:,.1f} MB"),
        ("wall time", f"{wall:.2f} s"),
        ("throughput", f"{images / wall:,.0f} images/s" if wall > 0 else "-"),
    ], invocations=session.invoker.records[first:], out=out)
    print_failures([(s["key"], s["reason"]) for s in manifest["skipped"]], out=out)
    print(f"\nnext: orchestrator train --dataset {args.dataset} --run RUN --rounds 5", file=out)
    return 1 if counts["skipped"] else 0
