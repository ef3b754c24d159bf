"""Where an augmented image goes and which seed makes it: pure functions of names.

Layout: with source prefix ``raw`` and output prefix ``augmented``, ``raw/cat/x.jpg``
becomes ``augmented/cat/x__flip.jpg``, ``augmented/cat/x__rotate.jpg``, ... (with
``copies`` > 1: ``x__rotate-0.jpg``, ``x__rotate-1.jpg``, ...).

Every random parameter comes from a seed derived with BLAKE2 from (spec seed, the source's
path inside the source prefix, variant, copy), never from Python's salted hash() or a
shared RNG, so an image's outputs do not depend on which batch, worker or order it ran in,
and re-running a job rewrites byte-identical files.
"""

from __future__ import annotations

import hashlib
import posixpath

from dlpipe.shared.images import ImageError
from dlpipe.shared.store import validate_key
from dlpipe.wire import DETERMINISTIC_VARIANTS, AugmentSpec

EXTENSIONS = {"jpeg": "jpg", "png": "png"}


def relative_key(key: str, source_prefix: str) -> str:
    """The path of `key` inside the source prefix: what the outputs keep."""
    validate_key(key)
    if not source_prefix:
        return key
    if not key.startswith(source_prefix + "/"):
        raise ImageError(f"key is not under the source prefix {source_prefix + '/'!r}")
    return key[len(source_prefix) + 1:]


def output_stem(relative: str) -> str:
    """`cat/x.jpg` -> `cat/x`: two sources with the same stem would write the same outputs."""
    folder, name = posixpath.split(relative)
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return posixpath.join(folder, stem) if folder else stem


def output_names(spec: AugmentSpec) -> list[tuple[str, int, str]]:
    """(variant, copy, file-name suffix) for every output a source gets under `spec`."""
    ext = EXTENSIONS[spec.format]
    names = []
    for variant in spec.variants:
        copies = 1 if variant in DETERMINISTIC_VARIANTS else spec.copies
        for copy in range(copies):
            tag = variant if copies == 1 else f"{variant}-{copy}"
            names.append((variant, copy, f"__{tag}.{ext}"))
    return names


def variant_seed(seed: int, relative: str, variant: str, copy: int) -> int:
    """A stable 64-bit seed: the same on every machine, process and Python version."""
    digest = hashlib.blake2b(f"{seed}\x00{relative}\x00{variant}\x00{copy}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
