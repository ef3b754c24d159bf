"""Tar shards in the WebDataset layout: thousands of small files in one object, read in one request.

Why: S3 bills every request, and a PUT costs as much as 12 GETs; a million photos augmented into
seven files each are seven million PUTs, then seven million GETs again when they are packed for
training. One shard per batch makes that a few tens of thousands of each.

The layout is WebDataset's: a plain POSIX tar whose members are the files of one sample after
another, grouped by base name (the member's path up to the first '.' of its file name; the rest
names the field): ``cat/x.original.jpg``, ``cat/x.flip.jpg``, ... A sample's own name keeps its
class folder; a '.' in it is escaped as ``%2E`` (and '%' as ``%25``) so that it cannot cut the key.
The index beside the shards is a WIDS shard index (``wids-shard-index-v1``: each shard's URL,
relative to the index, and its sample count) with what each shard holds per class.

Every member has fixed metadata (mtime 0, owner 0, no owner names, mode 0644) and members are
written in the order given, so the same files always make byte-identical shards.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Iterator

SHARD_SUFFIX = ".tar"
INDEX_NAME = "index.json"
INDEX_KIND = "wids-shard-index-v1"   # https://github.com/webdataset/webdataset (wids): shardlist of url, nsamples


def sample_key(stem: str) -> str:
    """`cat/IMG.1` -> `cat/IMG%2E1`: a sample key WebDataset does not cut at a dot."""
    folder, name = posixpath.split(stem)
    name = name.replace("%", "%25").replace(".", "%2E")
    return posixpath.join(folder, name) if folder else name


def member_class(name: str) -> str | None:
    """The class folder of a member (`cat/x.flip.jpg` -> `cat`); None for a member at the top."""
    return name.split("/", 1)[0] if "/" in name else None


class ShardWriter:
    """A tar shard built in memory, one file at a time; `finish()` returns its bytes."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buffer, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (finish)
        self.members = 0

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))
        self.members += 1

    @property
    def size(self) -> int:
        """Bytes so far (before the end-of-archive padding)."""
        return self._buffer.tell()

    def finish(self) -> bytes:
        self._tar.close()
        return self._buffer.getvalue()


class BadShard(ValueError):
    """An object that is not a readable tar shard."""


def read_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every regular file in the shard, in order; BadShard if it is not a tar.

    Members are read from memory and never extracted, so their names lead nowhere on disk.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.isreg():
                    file = tar.extractfile(member)
                    yield member.name, file.read() if file else b""
    except tarfile.TarError as err:
        raise BadShard(f"not a readable tar shard ({err})") from None


# --- the index: which shards a packed prefix holds, and what is in each --------------------

def index_key(prefix: str) -> str:
    return f"{prefix}/{INDEX_NAME}" if prefix else INDEX_NAME


def make_index(prefix: str, shards: list[dict], **about: object) -> dict:
    """A WIDS shard index of `shards` ({key, bytes, samples, images, classes}) under `prefix`, in key order."""
    base = prefix + "/" if prefix else ""
    shardlist = [{"url": s["key"].removeprefix(base), "nsamples": s["samples"], "filesize": s["bytes"],
                  "images": s["images"], "classes": dict(sorted(s["classes"].items()))}
                 for s in sorted(shards, key=lambda s: s["key"])]
    return {"__kind__": INDEX_KIND, "wids_version": 1, **about, "shardlist": shardlist}


def read_index(store, prefix: str) -> list[dict] | None:
    """The shards of a packed prefix ({key, samples, images, classes}, key: the store key), None if not packed.

    ValueError if the index is there but unreadable.
    """
    from dlpipe.shared.store import KeyNotFound

    key = index_key(prefix)
    try:
        document = json.loads(store.get(key))
    except KeyNotFound:
        return None
    except ValueError as err:
        raise ValueError(f"{key} is not a JSON shard index ({err}); augment with --pack again") from None
    if not isinstance(document, dict) or document.get("__kind__") != INDEX_KIND:
        raise ValueError(f"{key} is not a shard index (no \"__kind__\": \"{INDEX_KIND}\"); augment with --pack again")
    base = prefix + "/" if prefix else ""
    try:
        return [{"key": base + s["url"], "samples": int(s["nsamples"]), "images": int(s["images"]),
                 "classes": {str(c): int(n) for c, n in s["classes"].items()}} for s in document["shardlist"]]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{key} has a malformed shardlist ({type(err).__name__}: {err}); "
                         "augment with --pack again") from None
