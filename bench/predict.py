"""Predict latency: LiteRT (what the predict function serves with) against Keras, same model, one thread.

SqueezeNet 1.1 at 224 x 224 (the pretrained ONNX weights from ../shared/models when present,
random weights otherwise: the speed does not depend on them), measured in the same run:

  cold start   a new Python process, from its start to the first top-5 (imports, model load,
               first inference), best of --cold runs
  warm         milliseconds per image once loaded, median (and p90) of --warm inferences on a
               preprocessed 224 px input, batch 1, one thread
  handler path the predict core end to end while warm: read the JPEG from the store, decode,
               preprocess, infer, record in SQLite (LiteRT only)

Each engine runs in its own child process with one thread (LiteRT num_threads=1; TensorFlow
intra/inter-op threads 1). TensorFlow's own lines (the parent's conversion, the children's
start-up) only with --verbose, as in the commands. Usage:  python bench/predict.py [--cold 3] [--warm 50] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tables import markdown_table  # bench/tables.py

from orchestrator.quiet import native_output_captured

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "models"

CHILD = r"""
import json, sys, time
t_start = time.time()
mode, workdir, warm_n = sys.argv[1], sys.argv[2], int(sys.argv[3])
import numpy as np
x = np.load(f"{workdir}/input.npy")
result = {}
if mode == "litert":
    from dlpipe.predict.classifier import Classifier
    from dlpipe.predict.versions import load_version
    from dlpipe.shared.store import DirStore
    classifier = Classifier(load_version(DirStore(f"{workdir}/models"), "bench"), num_threads=1)
    infer = classifier.probabilities
    labels = classifier.version.labels
else:
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    model = keras.saving.load_model(f"{workdir}/model.keras", compile=False)
    infer = lambda x: model.predict(x[None], verbose=0)[0]
    labels = json.load(open(f"{workdir}/labels.json"))
probs = infer(x)
top5 = [labels[i] for i in np.argsort(-probs)[:5]]
result["first_top5_at"] = time.time()
result["in_process_s"] = result["first_top5_at"] - t_start
result["top5"] = top5
times = []
for _ in range(warm_n):
    t = time.perf_counter(); infer(x); times.append((time.perf_counter() - t) * 1000)
result["warm_ms"] = times
if mode == "litert" and warm_n:
    from dlpipe.shared.table import SqliteTable
    from dlpipe.predict.predictor import Predictor
    from dlpipe.wire import PredictRequest
    predictor = Predictor(DirStore(f"{workdir}/data"), DirStore(f"{workdir}/models"),
                          SqliteTable(f"{workdir}/p.sqlite"), num_threads=1)
    request = PredictRequest(model="bench", key="photo.jpg")
    predictor.predict(request, "warmup")
    path = []
    for i in range(warm_n):
        t = time.perf_counter(); predictor.predict(request, f"r{i}"); path.append((time.perf_counter() - t) * 1000)
    result["handler_ms"] = path
print(json.dumps(result))
"""


def prepare(workdir: Path) -> str:
    """Model files for both engines, a preprocessed input and a JPEG photo; returns the weights' source."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from dlpipe.publish.export import export_model
    from dlpipe.shared.store import DirStore

    photo = Image.fromarray(data.chelsea())
    if (SHARED / "squeezenet1.1.onnx").is_file():
        from dlpipe.publish.onnx_import import RECIPES, load, read_labels

        model, _ = load(SHARED / "squeezenet1.1.onnx")
        labels = read_labels((SHARED / "imagenet_synset_words.txt").read_text())
        recipe, source = RECIPES["1.1"], "pretrained (../shared)"
    else:
        from dlpipe.publish.onnx_import import RECIPES
        from dlpipe.train.model import squeezenet

        model = squeezenet("1.1", (224, 224, 3), 1000)
        labels, recipe, source = [f"class{i}" for i in range(1000)], RECIPES["1.1"], "random weights"
    export_model(model, DirStore(workdir / "models"), "bench", labels, recipe)
    model.save(workdir / "model.keras")
    (workdir / "labels.json").write_text(json.dumps(labels))
    np.save(workdir / "input.npy", recipe.apply(photo))
    (workdir / "data").mkdir()
    photo.save(workdir / "data" / "photo.jpg", quality=90)
    return source


def child(mode: str, workdir: Path, warm: int, verbose: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({} if verbose else {"TF_CPP_MIN_LOG_LEVEL": "3"})}
    spawned = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(workdir), str(warm)], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=None if verbose else subprocess.PIPE, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = result["first_top5_at"] - spawned
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", type=int, default=3,
                        help="cold starts per engine (best is reported; 0: the warm run's)")
    parser.add_argument("--warm", type=int, default=50, help="warm inferences per engine")
    parser.add_argument("--smoke", action="store_true",
                        help="one process per engine, 3 warm runs: does it still run (CI)")
    parser.add_argument("-v", "--verbose", action="store_true", help="TensorFlow's and LiteRT's own output too")
    args = parser.parse_args(argv)
    if args.smoke:
        args.cold, args.warm = 0, 3

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print("preparing SqueezeNet 1.1 (TensorFlow conversion)...", file=sys.stderr)
        with native_output_captured(args.verbose):
            source = prepare(workdir)
        runs = {}
        for mode in ("litert", "keras"):
            colds = [child(mode, workdir, 0, args.verbose) for _ in range(args.cold)]
            warm = child(mode, workdir, args.warm, args.verbose)
            colds = colds or [warm]   # --cold 0: the warm run's start is the cold start
            runs[mode] = {"process_s": min(c["process_s"] for c in colds),
                          "in_process_s": min(c["in_process_s"] for c in colds),
                          "warm_ms": warm["warm_ms"], "handler_ms": warm.get("handler_ms"), "top5": warm["top5"]}

    keras_run = runs["keras"]
    keras_warm = statistics.median(keras_run["warm_ms"])
    header = ["engine", "cold start (process)", "cold (in process)", "warm median", "warm p90",
              "cold vs Keras", "warm vs Keras"]
    rows = []
    for mode, name in (("litert", "LiteRT (ai-edge-litert)"), ("keras", "Keras model.predict")):
        r = runs[mode]
        warm_sorted = sorted(r["warm_ms"])
        median = statistics.median(warm_sorted)
        rows.append([name, f"{r['process_s']:.2f} s", f"{r['in_process_s']:.2f} s", f"{median:.1f} ms",
                     f"{warm_sorted[int(0.9 * (len(warm_sorted) - 1))]:.1f} ms",
                     f"{keras_run['process_s'] / r['process_s']:.1f}x faster" if mode != "keras" else "baseline",
                     f"{keras_warm / median:.1f}x faster" if mode != "keras" else "baseline"])
    handler = runs["litert"]["handler_ms"]
    rows.append(["LiteRT, handler path (JPEG->top-5->SQLite)", "", "", f"{statistics.median(handler):.1f} ms",
                 f"{sorted(handler)[int(0.9 * (len(handler) - 1))]:.1f} ms", "", ""])
    markdown_table(f"Predict latency: SqueezeNet 1.1, 224 px, batch 1, one thread ({source}); {args.cold} cold "
                   f"starts, {args.warm} warm runs; load average {load:.1f} at the start, "
                   f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores", header, rows)
    same = runs["litert"]["top5"] == runs["keras"]["top5"]
    print(f"\ntop-5 identical in both engines: {same}  ({', '.join(runs['litert']['top5'])})")
    print("targets: cold start < 0.5 s, warm < 10 ms, >= 5x faster than Keras on both")


if __name__ == "__main__":
    main()
