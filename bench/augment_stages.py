"""Where an augmented photo's time goes, stage by stage: the augment handler's core against albumentations + OpenCV.

The same work as bench/augment.py's rows (b) and (c), on the same photos (about 500 px, the
seven default variants at 224 x 224, JPEG quality 90, a directory store in /dev/shm), timed
per stage in this thread's CPU time (time.thread_time: other load on the machine disturbs it
least): decode, the shared resized base, each variant, the seven encodes, and the writes (a
file per output, or one tar shard per batch as `augment --pack` writes). Each figure is the
best of --repeat passes, in milliseconds per source photo.
Usage:  python bench/augment_stages.py [--images 48] [--repeat 3] [--smoke]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from dlpipe.augment import transforms
from dlpipe.augment.naming import output_names, variant_seed
from dlpipe.shared.images import open_image
from dlpipe.shared.shards import ShardWriter
from dlpipe.shared.store import DirStore
from dlpipe.wire import DEFAULT_VARIANTS, AugmentSpec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tables import markdown_table as table  # bench/tables.py

BATCH = 8   # photos per packed shard, as bench/augment.py's batches


def _bench_augment():
    spec = importlib.util.spec_from_file_location("bench_augment", Path(__file__).with_name("augment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def __call__(self, stage: str, fn, *args, **kwargs):
        start = time.thread_time()
        result = fn(*args, **kwargs)
        self.seconds[stage] += time.thread_time() - start
        return result


def handler_pass(store: DirStore, sources: list[tuple[str, bytes]], clock: Stopwatch) -> None:
    """dlpipe.augment.transforms.augment_image and the batch's writes, one stage at a time."""
    spec = AugmentSpec(size=224)
    writer = ShardWriter()
    for n, (relative, data) in enumerate(sources):
        image = clock("decode", open_image, data, max_pixels=spec.max_pixels, min_size=transforms.decode_size(spec))
        frame = transforms.make_frame(image, spec.size)
        clock("base (resize)", getattr, frame, "base")
        outputs = []
        for variant, copy, suffix in output_names(spec):
            rng = random.Random(variant_seed(spec.seed, relative, variant, copy))
            out = clock(variant, transforms.TRANSFORMS[variant], frame, rng)
            outputs.append((suffix, clock("encode (7)", transforms.encode, out, spec.format)))
        stem = relative.rsplit(".", 1)[0]
        for suffix, out in outputs:
            clock("write: a file per output", store.put, f"augmented/h/{stem}{suffix}", out)
        for suffix, out in outputs:
            clock("write: packed", writer.add, f"{stem}.{suffix[2:]}", out)
        if (n + 1) % BATCH == 0 or n + 1 == len(sources):
            key = f"augmented/p/shard-{n // BATCH:06d}.tar"
            clock("write: packed", lambda w=writer, k=key: store.put(k, w.finish()))
            writer = ShardWriter()


def albumentations_pass(store: DirStore, sources: list[tuple[str, bytes]], pipes: dict, clock: Stopwatch) -> None:
    """bench/augment.py's row (b), one stage at a time."""
    import cv2

    for pipe in pipes.values():
        pipe.set_random_seed(0)
    for relative, data in sources:
        rgb = clock("decode", lambda d=data: cv2.cvtColor(cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR),
                                                          cv2.COLOR_BGR2RGB))
        base = clock("base (resize)", lambda image=rgb: pipes["square"](image=image)["image"])
        h, w = rgb.shape[:2]
        side = min(h, w)
        centre = rgb[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        outputs = {"original": base}
        for variant in DEFAULT_VARIANTS[1:]:
            source = centre if variant == "crop" else base
            outputs[variant] = clock(variant, lambda s=source, v=variant: pipes[v](image=s)["image"])
        stem = relative.rsplit(".", 1)[0]
        for variant, out in outputs.items():
            _ok, encoded = clock("encode (7)", lambda out=out: cv2.imencode(
                ".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]))
            clock("write: a file per output", store.put, f"augmented/a/{stem}__{variant}.jpg", encoded.tobytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a quick run (8 images, 1 pass): does it still work")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.repeat = 8, 1
    warnings.filterwarnings("ignore")
    import cv2

    cv2.setNumThreads(1)
    bench = _bench_augment()
    where = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="bench-stages-", dir=where) as tmp:
        store = DirStore(tmp)
        sources = [(key.removeprefix("raw/"), store.get(key)) for key in bench.make_sources(store, args.images)]
        pipes = bench.albumentations_pipelines()
        best: dict[str, dict[str, float]] = {"ours": {}, "albu": {}}
        for _ in range(args.repeat):
            for name, run in (("ours", lambda c: handler_pass(store, sources, c)),
                              ("albu", lambda c: albumentations_pass(store, sources, pipes, c))):
                clock = Stopwatch()
                run(clock)
                for stage, seconds in clock.seconds.items():
                    best[name][stage] = min(best[name].get(stage, seconds), seconds)
    print_table(best, len(sources))
    return 0


def print_table(best: dict[str, dict[str, float]], images: int) -> None:
    ours, albu = best["ours"], best["albu"]
    stages = ["decode", "base (resize)", *DEFAULT_VARIANTS, "encode (7)", "write: a file per output", "write: packed"]
    rows = []
    for stage in stages:
        mine, theirs = ours.get(stage), albu.get(stage)
        rows.append([stage, f"{mine / images * 1000:.3f}" if mine is not None else "-",
                     f"{theirs / images * 1000:.3f}" if theirs is not None else "-",
                     f"{mine / theirs:.2f}x" if mine and theirs else "-"])
    for layout in ("a file per output", "packed"):
        mine = sum(v for k, v in ours.items() if not k.startswith("write") or k == f"write: {layout}")
        theirs = sum(v for k, v in albu.items() if not k.startswith("write") or k == "write: a file per output")
        rows.append([f"total, {layout}", f"{mine / images * 1000:.3f}", f"{theirs / images * 1000:.3f}",
                     f"{mine / theirs:.2f}x"])
    table(f"CPU milliseconds per source photo, by stage ({images} photos, best of the passes; "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
          ["stage", "augment handler (Pillow)", "albumentations + OpenCV", "handler / OpenCV"], rows)


if __name__ == "__main__":
    sys.exit(main())
