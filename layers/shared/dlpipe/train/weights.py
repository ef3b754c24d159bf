"""Model weights as bytes: a list of arrays in `model.get_weights()` order, stored as .npz.

No pickle, so the orchestrator and any other tool read them with numpy alone.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np


class CheckpointError(RuntimeError):
    """A run, round or weights file that is missing or unreadable; the message says what to do."""


def weights_to_bytes(weights: Sequence[np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{f"w{i:04d}": np.asarray(w) for i, w in enumerate(weights)})
    return buffer.getvalue()


def weights_from_bytes(data: bytes, what: str = "weights") -> list[np.ndarray]:
    """The inverse of `weights_to_bytes`; a CheckpointError naming `what` if the bytes are not such a file."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = sorted(archive.files)
            if not names or any(not re.fullmatch(r"w\d{4}", n) for n in names):
                raise ValueError(f"unexpected arrays {names[:5]}")
            return [archive[name] for name in names]
    except Exception as err:
        raise CheckpointError(f"{what} is not a readable weights file ({type(err).__name__}: {err})") from err


def save_weights(store, key: str, weights: Sequence[np.ndarray]) -> int:
    """Store `weights` at `key`; returns the bytes written."""
    data = weights_to_bytes(weights)
    store.put(key, data)
    return len(data)


def load_weights(store, key: str) -> list[np.ndarray]:
    return weights_from_bytes(store.get(key), what=f"{key!r} in {store.url}")
