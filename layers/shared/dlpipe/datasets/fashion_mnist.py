"""Fashion-MNIST: reading the IDX files, finding or downloading them, and turning them into PNGs.

The `fashion-mnist` command stores the PNGs in class folders, so the dataset then arrives
exactly as a user's own images would. No TensorFlow here: the orchestrator imports this.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dlpipe.shared.recipe import Recipe

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian: dataset-fashion-mnist
DEBIAN_PACKAGE = "dataset-fashion-mnist"
# (file name, md5) as published in the Fashion-MNIST README.
FASHION_MNIST_FILES = {
    ("train", "images"): ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    ("train", "labels"): ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    ("test", "images"): ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
}
# Folder names for labels 0..9 (T-shirt/top, Trouser, ... Ankle boot), safe as key segments.
FASHION_MNIST_CLASSES = ("tshirt-top", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle-boot")
FASHION_MNIST_RECIPE = Recipe(size=32, channels=1, pad=2, scale=1.0 / 255.0)
SPLIT_SIZES = {"train": 60000, "test": 10000}

IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DownloadFailed(OSError):
    """The files are not on this machine and could not be downloaded; `name` and `cache` say which and where."""

    def __init__(self, message: str, name: str, cache: Path) -> None:
        super().__init__(message)
        self.name = name
        self.cache = cache


def read_idx(data: bytes) -> np.ndarray:
    """Parse an IDX file (the MNIST format: magic, dimension sizes, raw big-endian data)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in IDX_DTYPES:
        raise ValueError("not an IDX file: bad magic number")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"IDX file truncated or padded: {len(data) - header} data bytes, "
                         f"shape {shape} needs {expected}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _download(name: str, md5: str, cache: Path, searched: list[Path]) -> Path:
    url = FASHION_MNIST_URL + name   # read at call time, so a mirror (or a test) may replace it
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise DownloadFailed(f"{name} is not in {', '.join(map(str, searched))} and downloading it from {url} "
                             f"failed ({reason})", name, cache) from None
    if hashlib.md5(data).hexdigest() != md5:
        raise ValueError(f"downloaded {name} has the wrong checksum; try again later")
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, cache / name)
    return cache / name


def fashion_mnist_file(split: str, kind: str, directory: str | os.PathLike | None = None,
                       download: bool = True, cache: Path | None = None) -> Path:
    """Path of one Fashion-MNIST file: from `directory`, the Debian package, the download
    `cache` folder (the orchestrator's: orchestrator.settings.download_cache_dir), or (if
    `download` and a cache is given) fetched into the cache."""
    try:
        name, md5 = FASHION_MNIST_FILES[(split, kind)]
    except KeyError:
        raise ValueError(f"Fashion-MNIST has splits 'train'/'test' and kinds 'images'/'labels', "
                         f"not {split!r}/{kind!r}") from None
    cache = cache / "fashion-mnist" if cache is not None else None
    candidates = [Path(directory)] if directory else [Path(d) for d in FASHION_MNIST_DIRS] + ([cache] if cache else [])
    for folder in candidates:
        if (folder / name).is_file():
            return folder / name
    if directory:
        raise FileNotFoundError(f"{name} is not in {directory}")
    if not download or cache is None:
        raise FileNotFoundError(f"{name} not found in {', '.join(map(str, candidates))}; install the Debian "
                                f"package {DEBIAN_PACKAGE} or allow the download")
    return _download(name, md5, cache, candidates)


def load_fashion_mnist(split: str = "train", directory: str | os.PathLike | None = None,
                       download: bool = True, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 28 x 28, labels uint8 N) of the 'train' (60000) or 'test' (10000) split."""
    images = read_idx(fashion_mnist_file(split, "images", directory, download, cache).read_bytes())
    labels = read_idx(fashion_mnist_file(split, "labels", directory, download, cache).read_bytes())
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split} files disagree: images {images.shape}, labels {labels.shape}")
    return images, labels


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def fashion_mnist_pngs(split: str, limit: int | None = None, directory: str | os.PathLike | None = None,
                       download: bool = True, cache: Path | None = None) -> Iterator[tuple[str, bytes]]:
    """(relative key "<split>/<class>/<index>.png", PNG bytes) for the first `limit` images
    of a split: the dataset as a user's own class folders would arrive. The files are read
    here, before the first image is asked for, so a missing file fails at once."""
    images, labels = load_fashion_mnist(split, directory, download, cache)
    count = len(images) if limit is None else min(int(limit), len(images))
    return ((f"{split}/{FASHION_MNIST_CLASSES[labels[i]]}/{i:05d}.png", _png(images[i])) for i in range(count))
