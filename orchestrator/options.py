"""argparse types for the commands' numeric and name options: the one place each kind is checked.

A bad value stops the command before any work (no folder created, no worker started, no
TensorFlow loaded) with argparse's one `error:` line and exit status 2. Floats must be
finite: `nan` and `inf` parse as floats but mean nothing as a budget or an epoch count.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from dlpipe.shared.keys import InvalidKey, check_name_lengths, validate_key
from dlpipe.shared.names import validate_name

# Lambda's default concurrency per account and region: more invocations at once are throttled anyway,
# and locally each one is a process.
MAX_CONCURRENCY = 1000
MAX_THREADS = 256          # parallel uploads/writes from this one process
MAX_RETRIES = 10           # re-invocations of one failed item: more only multiplies the bill of a real bug


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def int_between(low: int, high: int | None = None) -> Callable[[str], int]:
    """A whole number in [low, high] (no upper bound when `high` is None)."""
    def parse(text: str) -> int:
        value = _int(text)
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a whole number {span}")
        return value
    parse.__name__ = "int"   # argparse names the type in its messages
    return parse


positive_int = int_between(1)
non_negative_int = int_between(0)
worker_count = int_between(1, MAX_CONCURRENCY)   # workers, shards, concurrent invocations
retry_count = int_between(0, MAX_RETRIES)


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (seconds, epochs, a learning rate)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give a number above 0")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give a number of 0 or more")
    return value


def fraction(text: str) -> float:
    """A finite number in [0, 1)."""
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give a fraction from 0 up to (not including) 1")
    return value


def non_empty(text: str) -> str:
    """Any text but the empty one: '' must not silently mean "the default"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value: give one, or leave the option out")
    return text


def named(text: str) -> str:
    """A model, run, dataset or version name (dlpipe.shared.names rules)."""
    try:
        return validate_name(text, "name")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def key_prefix(text: str) -> str:
    """A folder of keys in a store ('' for its root), held to the keys' own rules now rather than failing
    file by file: no '.', '..' or empty segment, no segment longer than a file name can be."""
    prefix = text.rstrip("/")
    if prefix:
        try:
            check_name_lengths(validate_key(prefix))
        except InvalidKey as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return prefix


def source_prefix(text: str) -> str:
    """The folder of keys a job reads: not the whole store, which holds the job's own outputs too."""
    if not text.rstrip("/"):
        raise argparse.ArgumentTypeError("give the folder of the source images, e.g. raw: the store's root holds "
                                         "the outputs too, which would be read again on the next run")
    return key_prefix(text)


def png_file(text: str) -> str:
    """A .png to write (the suffix added if missing), in a folder that exists: refused now, not after the work."""
    path = Path(non_empty(text)).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: give a file in it, e.g. {path / 'predictions.png'}")
    if path.suffix.lower() != ".png":
        path = path.with_name(path.name + ".png")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no folder {path.parent} to write {path.name} in: create it first")
    return str(path)


def output_folder(text: str) -> Path:
    """A folder to write into: an existing one, or one to create; not a file."""
    path = Path(non_empty(text)).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder: give a folder to write into")
    return path


def model_ref(text: str) -> str:
    """MODEL[:VERSION], both parts names."""
    model, sep, version = text.partition(":")
    named(model)
    if sep:
        named(version)
    return text
