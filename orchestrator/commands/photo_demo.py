"""`orchestrator demo --photos DIR`: fine-tune the pretrained ImageNet SqueezeNet on your own photos.

    1 the pretrained model: `import-onnx FILE` (or `fetch-model`), once per file
    2 upload DIR into photos/RUN/train and photos/RUN/test (replacing an earlier run's copies):
      DIR/train and DIR/test as they are, or a share of each class of DIR/<class>/ held out (by a
      stable hash of the file name), before any augmentation, so that no mirror image of a
      validation photo is trained on
    3 augment photos/RUN/train -> augmented/RUN (original + mirror image; the deployed augment
      function may write only under augmented/)
    4 prepare --recipe-from the pretrained model, 5 train --init-from it, 6 export,
    7 predict one held-out photo per class, drawn in a figure.
Steps 3-7 are the real sub-commands (orchestrator.chain).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import time
from collections import defaultdict
from pathlib import Path

from dlpipe.datasets.split import stable_fraction
from dlpipe.shared.names import validate_name
from dlpipe.wire import AUGMENTED_PREFIX
from orchestrator import chain
from orchestrator.commands import augment, export, fetch_model, import_onnx, predict, prepare, train, upload
from orchestrator.errors import CommandError
from orchestrator.session import Session

STEP_COMMANDS = (augment, prepare, train, export, predict)
DEFAULTS = {"rounds": 3, "run_name": "the photo folder's name"}
FETCHED = "squeezenet1.1"       # the pretrained model without --pretrained

Files = list[tuple[str, Path]]  # (name below the split's prefix, the file)


def split_photos(root: Path, val_fraction: float) -> dict[str, Files]:
    """{"train": files, "test": files}: DIR/train and DIR/test, or a held-out share of each class."""
    found = upload.scan(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        splits: dict[str, Files] = {"train": [], "test": []}
        for name, path in found.files:
            split, _, rest = name.partition("/")
            if split in splits and "/" in rest:
                splits[split].append((rest, path))
        return splits
    by_class: dict[str, Files] = defaultdict(list)
    for name, path in found.files:
        if "/" in name:
            by_class[name.split("/", 1)[0]].append((name, path))
    splits = {"train": [], "test": []}
    for cls, files in sorted(by_class.items()):
        if len(files) < 2:
            raise CommandError(f"class {cls!r} has {len(files)} photo under {root}: give at least 2 a class "
                               "(a share of each is held out for validation)")
        files.sort(key=lambda item: (stable_fraction(item[0], "holdout"), item[0]))
        held = min(len(files) - 1, max(1, round(len(files) * val_fraction)))
        splits["test"] += files[:held]
        splits["train"] += files[held:]
    return splits


def upload_photos(session: Session, root: Path, prefix: str, val_fraction: float, augmented: str) -> None:
    """The split into PREFIX/train and PREFIX/test, replacing what an earlier run left there and under
    `augmented`: a photo held out now must not still be trained on from then."""
    if not root.is_dir():
        raise CommandError(f"--photos {root} is not a directory; give a folder with one sub-folder per class")
    splits = split_photos(root, val_fraction)
    classes = {name.split("/", 1)[0] for name, _ in splits["train"]}
    if len(classes) < 2:
        raise CommandError(f"found {len(classes)} class folder(s) with photos under {root}: fine-tuning needs at "
                           "least two, as DIR/<class>/*.jpg (or DIR/train/<class>/ and DIR/test/<class>/)")
    print(f"\n=== 2/7 upload {len(splits['train'])} training and {len(splits['test'])} held-out photos of "
          f"{len(classes)} classes to {prefix}/train and {prefix}/test", flush=True)
    store = session.data_store()
    for stale in [*store.list(f"{prefix}/"), *store.list(f"{augmented}/")]:
        store.delete(stale)
    for split, files in splits.items():
        _, failures = upload.upload_all(store, f"{prefix}/{split}", files, threads=8)
        if failures:
            raise CommandError(f"demo stopped: {len(failures)} photos could not be uploaded, e.g. "
                               f"{failures[0][0]}: {failures[0][1]}")


def _placeholder_labels(path: Path, out_dir: Path) -> Path:
    """One name per output of the ONNX model: the import needs them; fine-tuning replaces them."""
    import onnx

    from dlpipe.publish.onnx_import import OnnxImportError, analyse

    try:
        proto = onnx.load(str(path))
    except Exception as err:  # a DecodeError or an OSError: not an ONNX file
        raise CommandError(f"--pretrained {path}: cannot read it as an ONNX model: {err}") from None
    try:
        classes = analyse(proto).classes
    except OnnxImportError as err:
        raise CommandError(f"--pretrained {path}: {err}") from None
    labels = out_dir / f"{path.stem}-labels.txt"
    out_dir.mkdir(parents=True, exist_ok=True)
    labels.write_text("".join(f"imagenet class {i}\n" for i in range(classes)))
    return labels


def pretrained_model(session: Session, args: argparse.Namespace, out_dir: Path) -> str:
    """MODEL:VERSION of the pretrained model in the model store, imported (once) if need be."""
    if not args.pretrained:
        print(f"\n=== 1/7 pretrained model: orchestrator fetch-model {FETCHED}", flush=True)
        try:
            name, version = fetch_model.fetch_and_import(session, FETCHED)
        except CommandError as err:
            raise CommandError(f"{err}; or run the demo with --pretrained FILE.onnx [--labels FILE]") from None
        return f"{name}:{version}"
    path = Path(args.pretrained)
    if not path.is_file():
        raise CommandError(f"--pretrained {path}: no such file")
    name = re.sub(r"[^A-Za-z0-9._-]", "-", path.name.removesuffix(".onnx"))
    labels = Path(args.labels) if args.labels else None
    print(f"\n=== 1/7 pretrained model: orchestrator import-onnx {path} --labels {labels or 'PLACEHOLDERS'} "
          f"--name {name}", flush=True)
    imported = fetch_model.imported_version(session.model_store(), name, hashlib.sha256(path.read_bytes()).hexdigest())
    if imported is not None:
        print(f"already imported as {name} {imported}")
        return f"{name}:{imported}"
    start = time.perf_counter()
    names = import_onnx.read_labels_file(labels or _placeholder_labels(path, out_dir))
    exported, found = import_onnx.import_file(session, path, names, name)
    import_onnx.print_import(session, exported, found, len(names), start)
    return f"{exported.name}:{exported.version}"


def default_name(folder: Path) -> str:
    """The run and model name: the photo folder's name where it makes one (flowers/ -> flowers)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", folder.expanduser().resolve().name).strip("-.")
    try:
        return validate_name(name, "run name")
    except ValueError:
        return "photos"


def run(args: argparse.Namespace, session: Session) -> int:
    if not 0 < args.val_fraction < 1:
        raise CommandError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    name = args.run_name or default_name(Path(args.photos))
    rounds = str(args.rounds or DEFAULTS["rounds"])
    workers = str(args.workers)
    prefix, out_dir = f"photos/{name}", chain.output_dir(session)
    figure = out_dir / f"{name}-predictions.png"
    start, traffic_at_start = time.perf_counter(), session.meter.snapshot()   # the bill covers every step
    parser = chain.step_parser(STEP_COMMANDS)
    model = pretrained_model(session, args, out_dir)
    augmented = f"{AUGMENTED_PREFIX}/{name}"
    upload_photos(session, Path(args.photos).expanduser(), prefix, args.val_fraction, augmented)
    chain.run_step(parser, session, "3/7 augment the training photos",
                   ["augment", "--source", f"{prefix}/train", "--output", augmented,
                    "--variants", "original", "flip"])
    chain.run_step(parser, session, f"4/7 pack shards with {model}'s preprocessing",
                   ["prepare", "--source", augmented, "--val-source", f"{prefix}/test",
                    "--dataset", name, "--workers", workers, "--recipe-from", model])
    epochs = ["--local-epochs", str(args.local_epochs)] if args.local_epochs else []
    chain.run_step(parser, session, f"5/7 fine-tune {model} data-parallel",
                   ["train", "--dataset", name, "--run", name, "--workers", workers, "--rounds", rounds,
                    "--init-from", model, *epochs, "--resume", "--output", str(out_dir)])
    chain.run_step(parser, session, "6/7 export for LiteRT serving", ["export", "--run", name, "--name", name])
    sample = chain.held_out_sample(session.data_store(), f"{prefix}/test")
    chain.run_step(parser, session, "7/7 predict on held-out photos",
                   ["predict", *[f"store:{key}" for key in sample], "--model", name, "--top-k", "3",
                    "--show", str(figure)])
    chain.print_demo_summary(session, "demo --photos", name, out_dir, figure, args.workers, start,
                             json_out=getattr(args, "json_out", None), traffic_at_start=traffic_at_start)
    print(f"\nnext: orchestrator predict YOUR_PHOTO.jpg --model {name}")
    return 0
