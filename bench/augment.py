"""Augment throughput, in source images per second, on real photos of about 500 px.

Ways of doing the same job (decode, the default seven variants at 224 x 224, encode
JPEG quality 90, write to a directory store), measured in the same run:

  (a) a plain single-process Pillow loop: each transform on the decoded image, then fit
  (b) albumentations (OpenCV decode, transforms and encode), single process, 1 OpenCV thread,
      the base resized once and shared; (b2) a Compose per variant, as usually written;
      (b3) as (b) with INTER_AREA where it shrinks: like the handler, every source pixel counts
      (OpenCV's bilinear reads 2 x 2 pixels per output pixel however much it shrinks)
  (c) the augment handler through the LocalInvoker, 1 worker, a file per output
  (d) the same with one worker per core
  (e), (f) as (c), (d), packed: a tar shard per batch (`augment --pack`)

Every method is single-threaded per process and deterministic (albumentations is seeded at
the start of each pass; the bench checks that every pass rewrites byte-identical files).
Rounds interleave the methods; each row gives the best and the median of --repeat rounds
in wall-clock time, and the best in CPU time (all the CPU the method used: the main
process plus, for (c) and (d), the workers), which a busy machine disturbs far less.
Usage:  python bench/augment.py [--images 96] [--repeat 5] [--smoke]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from dlpipe.augment.transforms import (
    BLUR_RADIUS,
    COLOR_FACTOR,
    CONTRAST_FACTOR,
    CROP_ASPECT,
    CROP_SIDE,
    JPEG_QUALITY,
    ROTATE_DEGREES,
)
from dlpipe.shared.store import DirStore
from dlpipe.wire import DEFAULT_VARIANTS, AugmentRequest, AugmentSpec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tables import markdown_table as table  # bench/tables.py

SIZE = 224
BATCH = 8


# --- source photos -------------------------------------------------------------------

def base_photos() -> dict[str, np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(data, name)() for name in
              ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")}
    photos["motorcycle"] = data.stereo_motorcycle()[0]
    samples = load_sample_images()
    photos.update(zip(("china", "flower"), samples.images, strict=True))
    return photos


def make_sources(store: DirStore, count: int) -> list[str]:
    """`count` distinct JPEGs of ~500 px (random crops and mirrors of the photos), one class per photo."""
    rng = random.Random(0)
    photos = base_photos()
    names = sorted(photos)
    keys = []
    for i in range(count):
        name = names[i % len(names)]
        image = Image.fromarray(photos[name])
        w, h = image.size
        f = rng.uniform(0.85, 1.0)
        cw, ch = int(w * f), int(h * f)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = image.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        scale = rng.uniform(480, 520) / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        key = f"raw/{name}/{name}-{i:03d}.jpg"
        store.put(key, buf.getvalue())
        keys.append(key)
    return keys


# --- (a) plain Pillow ----------------------------------------------------------------

def plain_pillow(store: DirStore, keys: list[str], seed: int = 0) -> int:
    """The straightforward loop: decode fully, transform the full image, then fit to size."""
    rng = random.Random(seed)
    written = 0
    for key in keys:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(store.get(key)))).convert("RGB")
        outputs = {}
        for variant in DEFAULT_VARIANTS:
            if variant == "original":
                out = image
            elif variant == "flip":
                out = ImageOps.mirror(image)
            elif variant == "rotate":
                angle = rng.uniform(-ROTATE_DEGREES, ROTATE_DEGREES)
                rotated = image.rotate(angle, Image.Resampling.BILINEAR)
                w, h = image.size
                c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
                zoom = max((w * c + h * s) / w, (w * s + h * c) / h)
                iw, ih = w / zoom, h / zoom
                out = rotated.crop(((w - iw) / 2, (h - ih) / 2, (w + iw) / 2, (h + ih) / 2))
            elif variant == "crop":
                side = min(image.size) * rng.uniform(*CROP_SIDE)
                x = rng.uniform(0, image.width - side)
                y = rng.uniform(0, image.height - side)
                out = image.crop((x, y, x + side, y + side))
            elif variant == "blur":
                out = image.filter(ImageFilter.BoxBlur(rng.uniform(*BLUR_RADIUS) * min(image.size) / 256))
            elif variant == "color":
                out = ImageEnhance.Color(image).enhance(rng.uniform(*COLOR_FACTOR))
            else:
                out = ImageEnhance.Contrast(image).enhance(rng.uniform(*CONTRAST_FACTOR))
            outputs[variant] = ImageOps.fit(out, (SIZE, SIZE), Image.Resampling.BILINEAR)
        stem = key[len("raw/"):].rsplit(".", 1)[0]
        for variant, out in outputs.items():
            buf = io.BytesIO()
            out.save(buf, "JPEG", quality=JPEG_QUALITY)
            store.put(f"plain/{stem}__{variant}.jpg", buf.getvalue())
            written += 1
    return written


# --- (b) albumentations --------------------------------------------------------------

def albumentations_pipelines(shrink_interpolation: int | None = None) -> dict:
    """`shrink_interpolation`: OpenCV's flag for the steps that shrink (None: albumentations' default, bilinear)."""
    import albumentations as A

    shrink = {} if shrink_interpolation is None else {"interpolation": shrink_interpolation}
    square = A.Compose([A.SmallestMaxSize(max_size=SIZE, **shrink), A.CenterCrop(SIZE, SIZE)])
    zoom = math.cos(math.radians(ROTATE_DEGREES)) + math.sin(math.radians(ROTATE_DEGREES))
    return {
        "square": square,
        "flip": A.HorizontalFlip(p=1),
        "rotate": A.Affine(rotate=(-ROTATE_DEGREES, ROTATE_DEGREES), scale=(1.0, zoom), p=1),
        "crop": A.RandomResizedCrop(size=(SIZE, SIZE), scale=(CROP_SIDE[0] ** 2, CROP_SIDE[1] ** 2),
                                    ratio=CROP_ASPECT, p=1, **shrink),
        "blur": A.Blur(blur_limit=(3, 5), p=1),  # box blur, radius 1 to 2 as BLUR_RADIUS at 224 px
        "color": A.ColorJitter(brightness=0, contrast=0, saturation=COLOR_FACTOR, hue=0, p=1),
        "contrast": A.ColorJitter(brightness=0, contrast=CONTRAST_FACTOR, saturation=0, hue=0, p=1),
    }


def albumentations_composed() -> dict:
    """The usual way to write it: one A.Compose per variant, each from the decoded image."""
    import albumentations as A

    pipes = albumentations_pipelines()
    fit = [A.SmallestMaxSize(max_size=SIZE), A.CenterCrop(SIZE, SIZE)]
    composed = {"original": A.Compose(fit), "crop": A.Compose([pipes["crop"]])}
    for variant in ("flip", "rotate", "blur", "color", "contrast"):
        composed[variant] = A.Compose([*fit, pipes[variant]])
    return composed


def seed_all(pipelines: dict, seed: int = 0) -> None:
    """Seeded at the start of every pass, so that a pass rewrites the same files (as ours does)."""
    for pipeline in pipelines.values():
        pipeline.set_random_seed(seed)


def albumentations_composed_loop(store: DirStore, keys: list[str], composed: dict) -> int:
    import cv2

    seed_all(composed)
    written = 0
    for key in keys:
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(store.get(key), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        stem = key[len("raw/"):].rsplit(".", 1)[0]
        for variant in DEFAULT_VARIANTS:
            out = composed[variant](image=rgb)["image"]
            _ok, data = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            store.put(f"albu2/{stem}__{variant}.jpg", data.tobytes())
            written += 1
    return written


def albumentations_loop(store: DirStore, keys: list[str], pipes: dict, prefix: str = "albu") -> int:
    """Hand-tuned: resize once and apply each transform to the shared base, as the handler does."""
    import cv2

    seed_all(pipes)
    written = 0
    for key in keys:
        bgr = cv2.imdecode(np.frombuffer(store.get(key), np.uint8), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        base = pipes["square"](image=rgb)["image"]
        h, w = rgb.shape[:2]
        side = min(h, w)
        centre = rgb[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        outputs = {"original": base}
        for variant in DEFAULT_VARIANTS[1:]:
            source = centre if variant == "crop" else base
            outputs[variant] = pipes[variant](image=source)["image"]
        stem = key[len("raw/"):].rsplit(".", 1)[0]
        for variant, out in outputs.items():
            _ok, data = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            store.put(f"{prefix}/{stem}__{variant}.jpg", data.tobytes())
            written += 1
    return written


# --- (c), (d) the handler through the LocalInvoker -----------------------------------

def handler_events(keys: list[str], output: str, pack: bool = False) -> list[dict]:
    spec = AugmentSpec(size=SIZE)
    return [AugmentRequest(keys=keys[i:i + BATCH], source_prefix="raw", output_prefix=output, spec=spec,
                           shard=f"shard-{i // BATCH:06d}" if pack else None).model_dump(mode="json")
            for i in range(0, len(keys), BATCH)]


def through_invoker(invoker, keys: list[str], output: str, pack: bool = False) -> int:
    written = 0
    for inv in invoker.map("augment", handler_events(keys, output, pack)):
        if not inv.ok:
            raise RuntimeError(f"augment invocation failed: {inv.error}")
        written += inv.payload["images_out"]
        if inv.payload["failed"]:
            raise RuntimeError(f"augment reported failures: {inv.payload['results']}")
    return written


# --- the run -------------------------------------------------------------------------

def cpu_seconds(pids: list[int]) -> float:
    """CPU time of this process (all threads) plus that of the given workers (Linux /proc)."""
    total = time.process_time()
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
    return total


def digest(store: DirStore, prefix: str) -> str:
    h = hashlib.blake2b()
    for key in store.list(prefix):
        h.update(key.encode() + b"\0" + store.get(key))
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="a quick run (16 images, 1 round): does it still work")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="for (d): default one per core")
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="where the temporary store lives (default: /dev/shm, so that the disk is not measured)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.repeat = 2 * BATCH * args.workers, 1
    warnings.filterwarnings("ignore")

    import cv2

    from orchestrator.invokers.local import LocalInvoker

    cv2.setNumThreads(1)  # one core per process, like the other single-process rows
    with tempfile.TemporaryDirectory(prefix="bench-augment-", dir=args.dir) as tmp:
        store = DirStore(tmp)
        keys = make_sources(store, args.images)
        sizes = [Image.open(io.BytesIO(store.get(k))).size for k in keys]
        expected = len(keys) * len(DEFAULT_VARIANTS)
        print(f"{len(keys)} source JPEGs of {min(map(max, sizes))}-{max(map(max, sizes))} px, "
              f"{len(DEFAULT_VARIANTS)} variants each at {SIZE}x{SIZE} ({', '.join(DEFAULT_VARIANTS)}), "
              f"store in {tmp}, {os.cpu_count()} cores; {args.repeat} interleaved rounds", flush=True)

        pipes, composed = albumentations_pipelines(), albumentations_composed()
        pipes_area = albumentations_pipelines(cv2.INTER_AREA)
        env = {"DLPIPE_DATA_URL": str(store.root), "POWERTOOLS_LOG_LEVEL": "WARNING"}
        start = time.perf_counter()
        one = LocalInvoker(1, env=env)
        through_invoker(one, keys[:BATCH * 2], "augmented/warm1")  # warm the worker: imports, first store access
        cold_one = time.perf_counter() - start
        one_pids = [p.pid for p in multiprocessing.active_children()]
        start = time.perf_counter()
        many = LocalInvoker(args.workers, env=env)
        through_invoker(many, keys[:BATCH * 2 * args.workers], "augmented/warmN")
        cold_many = time.perf_counter() - start
        many_pids = [p.pid for p in multiprocessing.active_children() if p.pid not in one_pids]
        runs = {  # row: (run, output prefix, worker pids)
            "a": (lambda: plain_pillow(store, keys), "plain/", []),
            "b": (lambda: albumentations_loop(store, keys, pipes), "albu/", []),
            "b2": (lambda: albumentations_composed_loop(store, keys, composed), "albu2/", []),
            "b3": (lambda: albumentations_loop(store, keys, pipes_area, "albu3"), "albu3/", []),
            "c": (lambda: through_invoker(one, keys, "augmented/1"), "augmented/1/", one_pids),
            "d": (lambda: through_invoker(many, keys, "augmented/n"), "augmented/n/", many_pids),
            "e": (lambda: through_invoker(one, keys, "augmented/p1", pack=True), "augmented/p1/", one_pids),
            "f": (lambda: through_invoker(many, keys, "augmented/pn", pack=True), "augmented/pn/", many_pids),
        }
        try:
            wall, cpu, changed = measure(runs, args.repeat, store, expected)
        finally:
            one.close()
            many.close()
    print_results(len(keys), wall, cpu, args.workers, cold_one, cold_many)
    print("every pass rewrote byte-identical files" if not changed else f"NOT deterministic: {changed}")
    return 0 if not changed else 1


def measure(runs: dict, repeat: int, store, expected: int) -> tuple[dict, dict, list[str]]:
    """Wall and CPU seconds of every row's rounds, and the rows whose outputs changed between rounds."""
    wall: dict[str, list[float]] = {row: [] for row in runs}
    cpu: dict[str, list[float]] = {row: [] for row in runs}
    first: dict[str, str] = {}
    # Rounds interleave the methods, so that a burst of load from elsewhere on the
    # machine hits all of them alike.
    for _ in range(repeat):
        for row, (run, prefix, pids) in runs.items():
            cpu_start, start = cpu_seconds(pids), time.perf_counter()
            written = run()
            wall[row].append(time.perf_counter() - start)
            cpu[row].append(cpu_seconds(pids) - cpu_start)
            if written != expected:
                raise RuntimeError(f"({row}): expected {expected} outputs, got {written}")
            first.setdefault(row, digest(store, prefix))
    changed = [row for row, (_, prefix, _) in runs.items() if digest(store, prefix) != first[row]]
    return wall, cpu, changed


LABELS = {
    "a": "(a) plain Pillow loop, 1 process",
    "b": "(b) albumentations + OpenCV, shared resize, 1 process",
    "b2": "(b2) albumentations, a Compose per variant, 1 process",
    "b3": "(b3) as (b), INTER_AREA where it shrinks, 1 process",
    "c": "(c) augment handler, 1 worker, a file per output",
    "d": "(d) augment handler, {workers} workers, a file per output",
    "e": "(e) augment handler, 1 worker, packed (--pack)",
    "f": "(f) augment handler, {workers} workers, packed (--pack)",
}


def print_results(images: int, wall: dict, cpu: dict, workers: int, cold_one: float, cold_many: float) -> None:
    best = {row: images / min(seconds) for row, seconds in wall.items()}
    median = {row: images / statistics.median(seconds) for row, seconds in wall.items()}
    per_cpu = {row: images / min(seconds) for row, seconds in cpu.items()}
    rows = [[label.format(workers=workers), f"{best[row]:.1f}", f"{median[row]:.1f}", f"{per_cpu[row]:.1f}",
             f"{best[row] / best['b']:.2f}x", f"{per_cpu[row] / per_cpu['b']:.2f}x",
             f"{per_cpu[row] / per_cpu['b3']:.2f}x"]
            for row, label in LABELS.items()]
    table(f"source photos per second ({time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores)",
          ["method", "best/s", "median/s", "per CPU-s", "vs (b) wall", "vs (b) CPU", "vs (b3) CPU"], rows)
    rounds = [wb / wc for wb, wc in zip(wall["b"], wall["c"], strict=False)]
    print(f"\n(c) / (b): per CPU-second {per_cpu['c'] / per_cpu['b']:.2f}x (target >= 1.0), best wall "
          f"{best['c'] / best['b']:.2f}x, median of rounds {statistics.median(rounds):.2f}x; "
          f"packed (e) / (b): {per_cpu['e'] / per_cpu['b']:.2f}x per CPU-second")
    print(f"(d) / (c) = {best['d'] / best['c']:.2f}x, (f) / (e) = {best['f'] / best['e']:.2f}x with {workers} workers "
          "(target >= 1.8 on 2 cores)")
    print(f"pool start and warm-up: {cold_one:.2f} s (1 worker), {cold_many:.2f} s ({workers} workers)")


if __name__ == "__main__":
    sys.exit(main())
