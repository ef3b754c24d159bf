"""`orchestrator prepare`: the command line of orchestrator.training.prepare (options, report)."""

from __future__ import annotations

import argparse
import time
from typing import TextIO

from dlpipe.datasets import manifest as manifests
from dlpipe.datasets.manifest import Manifest
from dlpipe.shared.recipe import RESIZE_MODES, Recipe
from dlpipe.wire import PackRequest
from orchestrator.commands import add_command
from orchestrator.errors import CommandError
from orchestrator.report import add_json_argument, human_out, print_failures, print_json, print_summary
from orchestrator.session import Session
from orchestrator.training import capacity
from orchestrator.training.prepare import PART_TARGET_BYTES, RECIPES, model_recipe, prepare_dataset

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


def recipe_for(args: argparse.Namespace, session: Session) -> tuple[Recipe, str | None]:
    """The recipe asked for, and the model version it came from (with --recipe-from)."""
    if not getattr(args, "recipe_from", None):
        return recipe_from_args(args), None
    given = [f"--{name.replace('_', '-')}" for name in ("recipe", *RECIPE_OPTIONS) if getattr(args, name) is not None]
    if given:
        raise ValueError(f"--recipe-from takes the whole recipe from the model; drop {', '.join(given)}")
    return model_recipe(session.model_store(), args.recipe_from)


def _print_report(args: argparse.Namespace, session: Session, manifest: Manifest, wall: float, first: int,
                  out: TextIO) -> None:
    counts, recipe = manifest.counts, manifest.recipe
    images = counts.train + counts.val + counts.skipped
    shard_sizes = [s.count for s in manifest.shards]
    traffic = session.meter.take()
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
    ], invocations=session.invoker.records[first:], out=out, traffic=traffic)
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
        }, [(s.key, s.reason) for s in manifest.skipped], session.invoker.records[first:], traffic=traffic)


def run(args: argparse.Namespace, session: Session, out: TextIO | None = None) -> int:
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
