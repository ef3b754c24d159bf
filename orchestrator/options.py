"""argparse types for the commands' numeric and name options: the one place each kind is checked.

A bad value stops the command before any work (no folder created, no worker started, no
TensorFlow loaded) with argparse's one `error:` line and exit status 2. Floats must be
finite: `nan` and `inf` parse as floats but mean nothing as a budget or an epoch count.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

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


def model_ref(text: str) -> str:
    """MODEL[:VERSION], both parts names."""
    model, sep, version = text.partition(":")
    named(model)
    if sep:
        named(version)
    return text
