"""`orchestrator upload DIR --prefix P`: a local folder of class sub-folders into the data store."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from dlpipe.shared.store import InvalidKey, join_key, validate_prefix
from orchestrator.commands import add_command
from orchestrator.report import print_summary

EXAMPLES = """\
examples:
  orchestrator upload photos/ --prefix raw
      photos/cat/1.jpg -> raw/cat/1.jpg, photos/dog/7.png -> raw/dog/7.png, ...
  orchestrator --data s3://my-bucket/datasets upload photos/ --prefix raw
      the same, into S3 (credentials and region from the usual AWS settings)

Hidden files and folders (names starting with '.') are skipped; everything else is
uploaded as it is: bad images are reported later, by `augment`, one by one."""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "upload", help="copy a local folder of class sub-folders into the data store",
        description="Copy DIR into the data store under PREFIX, keeping the relative paths, "
                    "so that each sub-folder of DIR becomes a class.",
        examples=EXAMPLES, run=run)
    parser.add_argument("directory", metavar="DIR", help="local folder with one sub-folder per class")
    parser.add_argument("--prefix", required=True, metavar="P",
                        help="key prefix in the data store, e.g. raw ('' for the store's root)")
    parser.add_argument("--threads", type=int, default=8, metavar="N",
                        help="parallel uploads (default: %(default)s)")


def local_files(root: Path) -> tuple[list[Path], int]:
    """Non-hidden files under `root`, sorted, and how many hidden entries were skipped."""
    files, hidden = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        hidden += sum(1 for d in dirnames if d.startswith("."))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                hidden += 1
            elif os.path.isfile(os.path.join(dirpath, name)):
                files.append(Path(dirpath, name))
    return files, hidden


def print_failures(failures: list[tuple[str, str]], out: TextIO | None = None, limit: int = 50) -> None:
    """Each failure by name with its reason; past `limit`, a count by reason instead."""
    out = out or sys.stdout
    if not failures:
        return
    print(f"\nfailed ({len(failures)}):", file=out)
    for name, reason in failures[:limit]:
        print(f"  {name}: {reason}", file=out)
    if len(failures) > limit:
        print(f"  ... and {len(failures) - limit} more; all failures by reason:", file=out)
        for reason, count in Counter(r for _, r in failures).most_common(10):
            print(f"  {count:>6} x {reason}", file=out)


def run(args: argparse.Namespace, session) -> int:
    root = Path(args.directory).expanduser()
    if not root.is_dir():
        print(f"error: {root} is not a directory; give a folder with one sub-folder per class", file=sys.stderr)
        return 2
    prefix = args.prefix.strip("/")
    try:
        validate_prefix(prefix)
    except InvalidKey as err:
        print(f"error: bad --prefix: {err}", file=sys.stderr)
        return 2
    files, hidden = local_files(root)
    if not files:
        print(f"error: no files under {root} (hidden files are skipped)", file=sys.stderr)
        return 2

    store = session.data_store()
    failures: list[tuple[str, str]] = []
    uploaded: list[tuple[str, int]] = []

    def upload(path: Path) -> tuple[str, int]:
        relative = path.relative_to(root).as_posix()
        store.upload_file(path, join_key(prefix, relative))
        return relative, path.stat().st_size

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.threads)) as pool, \
            tqdm(total=len(files), unit="file", desc="upload") as bar:
        futures = {pool.submit(upload, path): path for path in files}
        for future in as_completed(futures):
            path = futures[future]
            try:
                uploaded.append(future.result())
            except Exception as err:  # one unreadable file or refused key never stops the rest
                failures.append((str(path.relative_to(root)), f"{type(err).__name__}: {err}"))
            bar.update(1)
    wall = time.perf_counter() - start

    classes = Counter(relative.split("/")[0] for relative, _ in uploaded if "/" in relative)
    loose = sum(1 for relative, _ in uploaded if "/" not in relative)
    total_bytes = sum(size for _, size in uploaded)
    listed = [f"{name} ({n})" for name, n in sorted(classes.items())]
    if len(listed) > 12:
        listed = listed[:12] + [f"... {len(listed) - 12} more"]
    rows = [
        ("store", f"{store.url} under {prefix + '/' if prefix else 'the root'}"),
        ("files uploaded", f"{len(uploaded)} of {len(files)} ({total_bytes / 1e6:,.1f} MB)"),
        ("classes", f"{len(classes)}: " + ", ".join(listed) if classes else "none"),
    ]
    if loose:
        rows.append(("not in a class folder", f"{loose} (uploaded, but they belong to no class)"))
    rows += [("hidden, skipped", hidden), ("failed", len(failures)), ("wall time", f"{wall:.2f} s"),
             ("throughput", f"{len(uploaded) / wall:,.1f} files/s, {total_bytes / 1e6 / wall:,.1f} MB/s")]
    print_summary("upload", rows)
    print_failures(sorted(failures))
    return 1 if failures else 0
