"""`orchestrator fashion-mnist`: Fashion-MNIST into the data store as PNGs in class folders.

The dataset then arrives exactly as a user's own images would, so `prepare`, `augment` and
`predict` treat it like any other data.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

from dlpipe.datasets import fashion_mnist as fm
from dlpipe.shared.store import InvalidKey, join_key, validate_prefix
from orchestrator.commands import add_command
from orchestrator.errors import CommandError
from orchestrator.report import add_json_argument, human_out, print_json, print_summary, progress_bar
from orchestrator.session import Session
from orchestrator.settings import ENV_CACHE, download_cache_dir

EXAMPLES = f"""\
examples:
  orchestrator fashion-mnist                         # all 70000 images under fashion-mnist/
  orchestrator fashion-mnist --limit 2000            # the first 2000 of each split
  orchestrator fashion-mnist --prefix fm --splits test --limit 500
then:
  orchestrator prepare --source fashion-mnist/train --val-source fashion-mnist/test \\
      --dataset fmnist --workers 2 --recipe fashion-mnist

Writes PREFIX/train/<class>/<index>.png and PREFIX/test/<class>/<index>.png; classes:
{', '.join(fm.FASHION_MNIST_CLASSES)}.
The IDX files come from --idx-dir, the Debian package {fm.DEBIAN_PACKAGE}
({fm.FASHION_MNIST_DIRS[0]}), the download cache (${ENV_CACHE}/fashion-mnist, default
~/.cache/dlpipe/fashion-mnist) or a download from the official address into that cache."""


def register(subparsers) -> None:
    p = add_command(
        subparsers, "fashion-mnist", help="write Fashion-MNIST into the data store as PNG images in class folders",
        description="Decode the Fashion-MNIST IDX files and store each image as a PNG under "
                    "PREFIX/<split>/<class>/, as a user's own dataset would arrive.",
        examples=EXAMPLES, run=run)
    p.add_argument("--prefix", default="fashion-mnist", metavar="P", help="key prefix (default: %(default)s)")
    p.add_argument("--limit", type=int, metavar="N", help="first N images of each split (default: all)")
    p.add_argument("--splits", nargs="+", choices=("train", "test"), default=["train", "test"],
                   help="splits to write (default: train test)")
    p.add_argument("--idx-dir", metavar="DIR", help="folder with the four *-ubyte.gz files")
    p.add_argument("--threads", type=int, default=8, metavar="N", help="parallel writes (default: %(default)s)")
    add_json_argument(p)


def write_fashion_mnist(store, prefix: str = "fashion-mnist", limit: int | None = None,
                        splits=("train", "test"), idx_dir: str | None = None, threads: int = 8,
                        progress: bool = True) -> dict[str, int]:
    """Store the images; returns {split: count}. Callable without the CLI (the demo uses it)."""
    prefix = prefix.strip("/")
    validate_prefix(prefix)
    cache = download_cache_dir()
    counts = {}
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for split in splits:
            total = fm.SPLIT_SIZES[split] if limit is None else min(fm.SPLIT_SIZES[split], limit)
            futures = []
            pngs = fm.fashion_mnist_pngs(split, limit, idx_dir, cache=cache)
            with progress_bar(total=total, unit="img", desc=f"fashion-mnist {split}", enabled=progress) as bar:
                for key, data in pngs:
                    future = pool.submit(store.put, join_key(prefix, key), data)
                    future.add_done_callback(lambda _: bar.update(1))
                    futures.append(future)
                for future in futures:
                    future.result()
            counts[split] = len(futures)
    return counts


def unavailable_message(err: fm.DownloadFailed) -> str:
    """What failed, and the ways to run without the network."""
    names = ", ".join(name for name, _ in fm.FASHION_MNIST_FILES.values())
    return (f"Fashion-MNIST is not on this machine: {err}. Either install the Debian package {fm.DEBIAN_PACKAGE} "
            f"(apt-get install {fm.DEBIAN_PACKAGE}), or give --idx-dir DIR, a folder with the four IDX files "
            f"({names}), or copy those files into {err.cache}, where this command and `make demo` look too")


def run(args: argparse.Namespace, session: Session, out: TextIO | None = None) -> int:
    out = human_out(args, out)  # resolved per call, so redirected output is honoured
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit must be at least 1")
    store = session.data_store()
    start = time.perf_counter()
    try:
        counts = write_fashion_mnist(store, args.prefix, args.limit, args.splits, args.idx_dir, args.threads)
    except fm.DownloadFailed as err:
        raise CommandError(unavailable_message(err)) from None
    except (OSError, ValueError, InvalidKey) as err:
        raise CommandError(str(err)) from None
    wall = time.perf_counter() - start
    images = sum(counts.values())
    traffic = session.meter.take()
    print_summary("fashion-mnist", [
        ("store", store.url),
        ("written", ", ".join(f"{args.prefix.strip('/')}/{s}/<class>/: {n} images" for s, n in counts.items())),
        ("wall time", f"{wall:.2f} s"),
        ("throughput", f"{images / wall:,.0f} images/s" if wall > 0 else "-"),
    ], out=out, traffic=traffic)
    if args.json:
        print_json("fashion-mnist", {"store": store.url, "prefix": args.prefix.strip("/"), "written": counts,
                                     "images": images, "wall_seconds": wall}, traffic=traffic)
    print(f"\nnext: orchestrator prepare --source {args.prefix.strip('/')}/train --val-source "
          f"{args.prefix.strip('/')}/test --dataset fmnist --workers 2 --recipe fashion-mnist", file=out)
    return 0
