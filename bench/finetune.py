"""Fine-tuning on your own photos: flowers12 from scratch against a pretrained ImageNet SqueezeNet 1.1.

    python bench/finetune.py [--rounds 3] [--workers 1 2] [--photos ../shared/photos/flowers12]
    python bench/finetune.py --smoke      # 4 photos a class, 1 round, classifier only, 1 worker: for CI

Each configuration is a real run of the pipeline on the embedded default (prepare with the
model's recipe, then `run_training` on the local invoker, 1 local epoch per round, the test
set as validation): from scratch, fine-tuning the new classifier only, and fine-tuning all
layers, for each worker count. Plain single-process Keras doing the same classifier-only
fine-tuning is the baseline, measured in the same run. Prints one table per configuration
and a summary; every ratio compares figures of this run.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "layers" / "shared"), str(REPO)]

from tables import table  # noqa: E402  (bench/tables.py)

from dlpipe.shared.config import Settings  # noqa: E402
from dlpipe.shared.recipe import Recipe  # noqa: E402
from dlpipe.shared.store import DirStore  # noqa: E402
from orchestrator.costs import summarize  # noqa: E402
from orchestrator.quiet import native_output_captured  # noqa: E402
from orchestrator.session import Session  # noqa: E402
from orchestrator.training.loop import TrainOptions, run_training  # noqa: E402
from orchestrator.training.prepare import prepare_dataset  # noqa: E402

CONFIGS = [  # (label, init_from, trainable, learning rate)
    ("from scratch", None, "all", 1e-3),
    ("fine-tuned, classifier only", "squeezenet1.1", "classifier", 1e-3),
    ("fine-tuned, all layers", "squeezenet1.1", "all", 1e-4),
]


def setup(home: Path, photos: Path, onnx: Path, labels: Path, workers: int,
          per_class: int | None = None) -> tuple[Session, Recipe]:
    from dlpipe.publish.onnx_import import import_onnx, read_labels

    settings = Settings(str(home / "data"), str(home / "models"), f"sqlite:///{home}/p.sqlite")
    import_onnx(onnx, read_labels(labels.read_text()), settings.model_store(), "squeezenet1.1")
    data = DirStore(home / "data")
    for folder in sorted({path.parent for path in photos.rglob("*.jpg")}):
        for path in sorted(folder.glob("*.jpg"))[:per_class]:   # per_class photos of each class (None: all)
            data.put(f"flowers/{path.relative_to(photos).as_posix()}", path.read_bytes())
    recipe = Recipe.from_dict(json.loads(settings.model_store().get("models/squeezenet1.1/v1/recipe.json")))
    session = Session(settings, "local", concurrency=workers)
    prepare_dataset(session, "flowers/train", "flowers", workers, recipe, val_source="flowers/test", progress=False)
    return session, recipe


def run_config(session: Session, label: str, init_from, trainable: str, lr: float, workers: int,
               rounds: int) -> list[list]:
    run = f"{label.split(',')[0].replace(' ', '-')}-{trainable}-{workers}w"
    options = TrainOptions(dataset="flowers", run=run, rounds=rounds, workers=workers, local_epochs=1,
                           batch_size=32, learning_rate=lr, init_from=init_from, trainable=trainable,
                           batch_across_workers=True, outer_learning_rate=1.0, outer_momentum=0.0, eval_images=None,
                           output_dir=None)
    started = time.perf_counter()
    result = run_training(session, options, out=io.StringIO(), progress=False)
    rows = []
    for record in result.records[1:]:
        rate = sum(r["images_per_second"] for r in record.worker_results)
        rows.append([record.round, f"{record.val.accuracy:.1%}", f"{record.wall_seconds:.1f} s",
                     f"{rate:.0f}", f"{record.gb_seconds:.1f}", f"{record.gb_seconds * 0.0000166667:.5f}"])
    cost = summarize(result.invocations)
    rows.append(["all", "", f"{time.perf_counter() - started:.1f} s", "", f"{cost.gb_seconds:.1f}",
                 f"{cost.dollars:.5f}"])
    table(f"{label}, {workers} worker(s)", ["round", "test acc", "wall", "train img/s", "GB-s", "$"], rows)
    return rows


def plain_keras(session: Session, rounds: int, seed: int = 0) -> tuple[list[float], list[float]]:
    """The same classifier-only fine-tuning in this process: model.fit, batch 32, Adam 1e-3.

    Returns the test accuracy and training images/s of each epoch."""
    import keras

    from dlpipe.train import parts, worker
    from dlpipe.train.model import build_model
    from dlpipe.train.weights import load_weights
    from dlpipe.wire import ModelConfig

    data, models = session.data_store(), session.model_store()
    manifest = json.loads(data.get("datasets/flowers/manifest.json"))
    source = ModelConfig.model_validate_json(models.get("models/squeezenet1.1/v1/model.json"))
    config = ModelConfig(**{**source.model_dump(), "labels": manifest["classes"],
                            "classes": len(manifest["classes"]), "classifier_relu": False})
    start = load_weights(models, "models/squeezenet1.1/v1/weights.npz")
    model = build_model(config, worker.init_weights(config, seed, start, keep_classifier=False))
    for layer in model.layers:
        layer.trainable = layer.name == "conv10"
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    recipe = Recipe.from_dict(manifest["recipe"])
    x, y = parts.load_parts(data, [k for s in manifest["shards"] for k in s["parts"]])
    xv, yv = parts.load_parts(data, manifest["val"]["parts"])
    accuracies, rates = [], []
    for epoch in range(rounds):
        order = np.random.default_rng([seed, epoch]).permutation(len(y))
        started = time.perf_counter()
        model.fit(recipe.normalize(x[order]), y[order], batch_size=32, epochs=1, shuffle=False, verbose=0)
        rates.append(len(y) / (time.perf_counter() - started))
        accuracies.append(float(model.evaluate(recipe.normalize(xv), yv, batch_size=64, verbose=0)[1]))
    return accuracies, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "photos" / "flowers12")
    parser.add_argument("--models", type=Path, default=REPO.parent / "shared" / "models")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", choices=[c[0] for c in CONFIGS], nargs="+")
    parser.add_argument("--smoke", action="store_true", help="4 photos a class, 1 round, classifier only, 1 worker")
    parser.add_argument("-v", "--verbose", action="store_true", help="TensorFlow's and LiteRT's own output too")
    args = parser.parse_args()
    per_class = None
    if args.smoke:
        args.rounds, args.workers, args.only, per_class = 1, [1], [CONFIGS[1][0]], 4
    if not args.photos.is_dir():
        sys.exit(f"no photos at {args.photos}: pass --photos DIR (class folders under train/ and test/)")
    with tempfile.TemporaryDirectory() as tmp:
        with native_output_captured(args.verbose):   # TensorFlow's start-up and the converter's passes
            session, _ = setup(Path(tmp), args.photos, args.models / "squeezenet1.1.onnx",
                               args.models / "imagenet_synset_words.txt", max(args.workers), per_class)
        try:
            with native_output_captured(args.verbose):
                baseline, rates = plain_keras(session, args.rounds)
            table("plain Keras, one process, classifier only", ["epoch", "test acc", "train img/s"],
                  [[e + 1, f"{a:.1%}", f"{r:.0f}"] for e, (a, r) in enumerate(zip(baseline, rates, strict=True))])
            summary = []
            for label, init_from, trainable, lr in CONFIGS:
                if args.only and label not in args.only:
                    continue
                for workers in args.workers:
                    rows = run_config(session, label, init_from, trainable, lr, workers, args.rounds)
                    summary.append([f"{label}, {workers}w", *[r[1] for r in rows[:-1]], rows[-1][2], rows[-1][4]])
            table("summary: test accuracy after each round of 1 local epoch",
                  ["configuration", *[f"round {r + 1}" for r in range(args.rounds)], "wall", "GB-s"],
                  summary + [["plain Keras (classifier)", *[f"{a:.1%}" for a in baseline], "", ""]])
        finally:
            session.close()


if __name__ == "__main__":
    main()
