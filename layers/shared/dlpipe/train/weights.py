"""Model weights as bytes: a list of arrays in `model.get_weights()` order, stored as .npz.

No pickle, so the orchestrator and any other tool read them with numpy alone. Array i is
``w{i:04d}`` as it is, or ``b{i:04d}``: a float32 array stored as bfloat16 (its top 16 bits,
rounded to nearest even, as uint16), read back as float32. bfloat16 keeps float32's range
with 8 bits of mantissa: enough for Adam's moments (8-bit Adam states train as well as
32-bit ones, Dettmers et al. 2022), at half the bytes every round moves through the store.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np

from dlpipe.wire import Precision


class CheckpointError(RuntimeError):
    """A run, round or weights file that is missing or unreadable; the message says what to do."""


def to_bfloat16(array: np.ndarray) -> np.ndarray:
    """A float32 array's bfloat16 bit patterns (uint16), rounded to nearest even."""
    bits = np.ascontiguousarray(array, np.float32).view(np.uint32)
    return ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)


def from_bfloat16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def stored_arrays(arrays: Sequence[np.ndarray], prefix: str, precision: Precision) -> dict[str, np.ndarray]:
    """The .npz members of `arrays`, array i as `{prefix}{i:04d}`; with precision "bfloat16", every float32
    array that is not a scalar as `b{i:04d}` in bfloat16 instead."""
    members = {}
    for i, array in enumerate(arrays):
        if precision == "bfloat16" and array.dtype == np.float32 and array.ndim:
            members[f"b{i:04d}"] = to_bfloat16(array)
        else:
            members[f"{prefix}{i:04d}"] = array
    return members


def loaded_array(name: str, array: np.ndarray) -> np.ndarray:
    """A member of `stored_arrays` as it was given (a bfloat16 one as float32)."""
    if name[0] != "b":
        return array
    if array.dtype != np.uint16:
        raise ValueError(f"bfloat16 array {name} is {array.dtype}, not uint16")
    return from_bfloat16(array)


def weights_to_bytes(weights: Sequence[np.ndarray], precision: Precision = "float32") -> bytes:
    """.npz of the arrays (in bfloat16 where `stored_arrays` puts them so)."""
    buffer = io.BytesIO()
    np.savez(buffer, **stored_arrays([np.asarray(w) for w in weights], "w", precision))
    return buffer.getvalue()


def weights_from_bytes(data: bytes, what: str = "weights") -> list[np.ndarray]:
    """The inverse of `weights_to_bytes`; a CheckpointError naming `what` if the bytes are not such a file."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = sorted(archive.files, key=lambda n: n[1:])
            if (not names or any(not re.fullmatch(r"[wb]\d{4}", n) for n in names)
                    or [int(n[1:]) for n in names] != list(range(len(names)))):
                raise ValueError(f"unexpected arrays {names[:5]}")
            return [loaded_array(name, archive[name]) for name in names]
    except Exception as err:
        raise CheckpointError(f"{what} is not a readable weights file ({type(err).__name__}: {err})") from err


def save_weights(store, key: str, weights: Sequence[np.ndarray], precision: Precision = "float32") -> int:
    """Store `weights` at `key`; returns the bytes written."""
    data = weights_to_bytes(weights, precision)
    store.put(key, data)
    return len(data)


def load_weights(store, key: str) -> list[np.ndarray]:
    return weights_from_bytes(store.get(key), what=f"{key!r} in {store.url}")
