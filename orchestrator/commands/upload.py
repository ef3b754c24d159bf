"""`orchestrator upload DIR --prefix P`: a local folder of class sub-folders into the data store.

What is taken is decided before anything is sent (`scan`): images by extension, hidden
entries left out, and symbolic links followed only while they stay inside DIR, so that a
link cannot smuggle a file from elsewhere on the machine into a bucket. Everything left
out is counted by reason, and links leading out are listed by name.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from dlpipe.shared.images import IMAGE_EXTENSIONS
from dlpipe.shared.store import InvalidKey, join_key, validate_prefix
from orchestrator.commands import add_command
from orchestrator.errors import CommandError
from orchestrator.report import add_json_argument, human_out, print_failures, print_json, print_summary, progress_bar
from orchestrator.session import Session

EXAMPLES = """\
examples:
  orchestrator upload photos/ --prefix raw
      photos/cat/1.jpg -> raw/cat/1.jpg, photos/dog/7.png -> raw/dog/7.png, ...
  orchestrator --data s3://my-bucket/datasets upload photos/ --prefix raw
      the same, into S3 (credentials and region from the usual AWS settings)

Images are taken by extension (.jpg, .png, ...) and uploaded as they are: bad images are
reported later, by `augment`, one by one. Hidden files and folders (names starting with '.')
and other files are skipped and counted. Symbolic links are followed while they lead to a
place inside DIR; a link leading out of it is refused and listed (exit status 1)."""

HIDDEN, NOT_IMAGE, OUTSIDE = "hidden", "not an image", "link outside the folder"
BROKEN, LOOP, SPECIAL = "broken link", "link loop", "not a regular file"


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
    add_json_argument(parser)


@dataclass
class Scan:
    """What a folder holds for the store, decided before anything is sent."""

    root: Path
    files: list[tuple[str, Path]] = field(default_factory=list)     # (relative name, the real file read)
    skipped: Counter = field(default_factory=Counter)                # reason -> count
    refused: list[tuple[str, str]] = field(default_factory=list)     # (relative name, why): links leading out
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # folders that could not be listed


def scan(root: Path) -> Scan:
    """Images under `root`, sorted; links followed while they lead inside it, and not round in circles."""
    result = Scan(root)
    _scan_folder(result, root.resolve(), "", (root.resolve(),))
    return result


def _scan_folder(result: Scan, folder: Path, relative: str, chain: tuple[Path, ...]) -> None:
    """`chain`: the real folders from the root down to this one, where a link back would loop."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        result.unreadable.append((relative or ".", f"{type(err).__name__}: {err.strerror}"))
        return
    for entry in entries:
        name = f"{relative}{entry.name}"
        if entry.name.startswith("."):
            result.skipped[HIDDEN] += 1
            continue
        real = Path(entry.path)
        if entry.is_symlink():
            try:
                real = real.resolve(strict=True)
            except (OSError, RuntimeError):  # missing target, or links round in a circle (RuntimeError in 3.11)
                result.skipped[BROKEN] += 1
                continue
            if not real.is_relative_to(chain[0]):
                result.skipped[OUTSIDE] += 1
                result.refused.append((name, f"a link to {real}, outside {result.root}: copy it in to upload it"))
                continue
        if real.is_dir():
            if real in chain:
                result.skipped[LOOP] += 1
            else:
                _scan_folder(result, real, f"{name}/", (*chain, real))
        elif not real.is_file():
            result.skipped[SPECIAL] += 1
        elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            result.skipped[NOT_IMAGE] += 1
        else:
            result.files.append((name, real))


def _skipped_text(skipped: Counter) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in skipped.items()) or "nothing"


def upload_all(store, prefix: str, files: list[tuple[str, Path]], threads: int
                ) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """(relative name, bytes) uploaded, and (relative name, error) failed: one failure never stops the rest."""
    def upload(relative: str, path: Path) -> tuple[str, int]:
        store.upload_file(path, join_key(prefix, relative))
        return relative, path.stat().st_size

    uploaded, failures = [], []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, \
            progress_bar(total=len(files), unit="file", desc="upload") as bar:
        futures = {pool.submit(upload, relative, path): relative for relative, path in files}
        for future in as_completed(futures):
            try:
                uploaded.append(future.result())
            except Exception as err:  # an unreadable file or a refused key
                failures.append((futures[future], f"{type(err).__name__}: {err}"))
            bar.update(1)
    return uploaded, failures


def _summary_rows(store, prefix: str, found: Scan, uploaded: list[tuple[str, int]], failed: int,
                  wall: float) -> list[tuple[str, object]]:
    classes = Counter(relative.split("/")[0] for relative, _ in uploaded if "/" in relative)
    loose = sum(1 for relative, _ in uploaded if "/" not in relative)
    total_bytes = sum(size for _, size in uploaded)
    listed = [f"{name} ({n})" for name, n in sorted(classes.items())]
    if len(listed) > 12:
        listed = listed[:12] + [f"... {len(listed) - 12} more"]
    rows: list[tuple[str, object]] = [
        ("store", f"{store.url} under {prefix + '/' if prefix else 'the root'}"),
        ("files uploaded", f"{len(uploaded)} of {len(found.files)} ({total_bytes / 1e6:,.1f} MB)"),
        ("classes", f"{len(classes)}: " + ", ".join(listed) if classes else "none"),
    ]
    if loose:
        rows.append(("not in a class folder", f"{loose} (uploaded, but they belong to no class)"))
    rows.append((f"{HIDDEN}, skipped", found.skipped[HIDDEN]))
    rows += [(f"{reason}, skipped", n) for reason, n in found.skipped.items() if reason != HIDDEN]
    rows += [("failed", failed), ("wall time", f"{wall:.2f} s"),
             ("throughput", f"{len(uploaded) / wall:,.1f} files/s, {total_bytes / 1e6 / wall:,.1f} MB/s")]
    return rows


def _figures(store, prefix: str, found: Scan, uploaded: list[tuple[str, int]], failed: int, wall: float) -> dict:
    """The summary's figures for --json."""
    return {"store": store.url, "prefix": prefix, "files": len(found.files), "uploaded": len(uploaded),
            "bytes": sum(size for _, size in uploaded),
            "classes": dict(sorted(Counter(r.split("/")[0] for r, _ in uploaded if "/" in r).items())),
            "not_in_a_class_folder": sum(1 for r, _ in uploaded if "/" not in r), "skipped": dict(found.skipped),
            "refused": len(found.refused), "failed": failed, "wall_seconds": wall}


def run(args: argparse.Namespace, session: Session) -> int:
    root = Path(args.directory).expanduser()
    if not root.is_dir():
        raise CommandError(f"{root} is not a directory; give a folder with one sub-folder per class")
    prefix = args.prefix.strip("/")
    try:
        validate_prefix(prefix)
    except InvalidKey as err:
        raise CommandError(f"bad --prefix: {err}") from None
    found = scan(root)
    if not found.files:
        raise CommandError(f"no images to upload under {root} (skipped: {_skipped_text(found.skipped)}); "
                           f"expected {root}/<class>/<image>.jpg")
    store = session.data_store()
    start = time.perf_counter()
    uploaded, failures = upload_all(store, prefix, found.files, args.threads)
    failures += found.unreadable
    wall = max(time.perf_counter() - start, 1e-9)
    out = human_out(args)
    traffic = session.meter.take()
    print_summary("upload", _summary_rows(store, prefix, found, uploaded, len(failures), wall), out=out,
                  traffic=traffic)
    print_failures(found.refused, title="refused", out=out)
    print_failures(sorted(failures), out=out)
    if args.json:
        print_json("upload", _figures(store, prefix, found, uploaded, len(failures), wall),
                   sorted(failures) + found.refused, traffic=traffic)
    return 1 if failures or found.refused else 0
