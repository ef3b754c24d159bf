"""Fuzzing store keys and the directory store: generated keys and sequences of operations.

The directory store must behave like S3 (modelled here as a dict) for every key, except for
the refusals it documents, always as the store's own errors; and nothing may appear outside
its root, even with a symlink in it leading out. Bounded and reproducible: a fixed number of
examples, derandomized, no example database.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dlpipe.shared.store import DirStore, InvalidKey, KeyNotFound, join_key, validate_key, validate_prefix

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

ODD = st.sampled_from(["", ".", "..", "...", ".tmp-1", ".tmp-", ".tmpx", "a.tmp-", "x" * 255, "x" * 256, "é" * 127,
                       "é" * 128, "back\\slash", "nul\x00", "caf\udce9", " ", "\n", "~", "-", "日本"])
ODD = ODD | st.text(max_size=5)
COMMON = st.sampled_from(["a", "b", "link", "é"])  # few names, so that keys collide and nest
KEYS = st.lists(COMMON | ODD, min_size=1, max_size=4).map("/".join) | st.text(max_size=12)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=4),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=6)


def s3_and_directory_take(key: str) -> bool:
    """The rule, written out from its documentation: what a key valid on both stores is."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    segments = key.split("/")
    return (0 < size <= 1024 and "\x00" not in key and "\\" not in key
            and all(s not in ("", ".", "..") and not s.startswith(".tmp-") for s in segments))


def directory_takes(key: str) -> bool:
    return s3_and_directory_take(key) and all(len(s.encode()) <= 255 for s in key.split("/"))


def listing_takes(prefix: str, takes=directory_takes) -> bool:
    """A listing prefix: empty, or a key, or one followed by '/', and then maybe '.' or '..'."""
    folders, slash, fragment = prefix.rpartition("/")
    start = folders + slash if fragment in (".", "..") else prefix
    return start == "" or takes(start.removesuffix("/"))


@FUZZ
@given(key=KEYS)
def test_validate_key_takes_exactly_the_documented_keys(key):
    try:
        assert validate_key(key) == key
    except InvalidKey as err:
        assert not s3_and_directory_take(key) and "key" in str(err)  # noqa: PT017 (a property: valid, or the documented error)
        return
    assert s3_and_directory_take(key)
    assert posixpath.normpath(key) == key and not posixpath.isabs(key) and ".." not in key.split("/")
    assert join_key(*key.split("/")) == key


@FUZZ
@given(prefix=KEYS)
def test_validate_prefix_takes_exactly_the_documented_prefixes(prefix):
    try:
        assert validate_prefix(prefix) == prefix
    except InvalidKey:
        assert not listing_takes(prefix, s3_and_directory_take)
        return
    assert listing_takes(prefix, s3_and_directory_take)


@settings(FUZZ, max_examples=100)
@given(value=JSON)
def test_validate_key_refuses_what_is_no_string(value):
    with pytest.raises(InvalidKey):
        validate_key(value)


@settings(FUZZ, max_examples=150)
@given(key=KEYS, data=st.binary(max_size=64))
def test_a_key_round_trips_or_is_refused_by_every_operation(key, data):
    with tempfile.TemporaryDirectory() as base:
        root = Path(base, "root")
        store = DirStore(root)
        if not directory_takes(key):
            for op in (lambda: store.put(key, data), lambda: store.get(key), lambda: store.exists(key),
                       lambda: store.delete(key)):
                with pytest.raises(InvalidKey):
                    op()
            if not listing_takes(key):
                with pytest.raises(InvalidKey):
                    list(store.list(key))
            assert not root.exists() or list(root.iterdir()) == []
            return
        store.put(key, data)
        assert store.get(key) == data and store.exists(key)
        assert list(store.list()) == [key] == list(store.list(key)) == list(store.list(key[:-1]))
        assert sorted(p.name for p in Path(base).iterdir()) == ["root"]
        store.delete(key)
        assert list(store.list()) == [] and not store.exists(key)
        with pytest.raises(KeyNotFound):
            store.get(key)


class DirStoreLikeS3(RuleBasedStateMachine):
    """Random puts, gets, deletes and listings against a dict, with a symlink `link` in the
    root leading out: the store must agree with the dict, or refuse as documented."""

    @initialize()
    def make_store(self) -> None:
        self.base = tempfile.TemporaryDirectory()
        self.root, self.outside = Path(self.base.name, "root"), Path(self.base.name, "outside")
        self.outside.mkdir()
        (self.outside / "secret").write_bytes(b"not yours")
        self.root.mkdir()
        (self.root / "link").symlink_to(self.outside, target_is_directory=True)
        self.store = DirStore(self.root)
        self.objects: dict[str, bytes] = {}
        self.link = True  # `link` is still the symlink (a put or delete of `link` replaces or removes it)

    def teardown(self) -> None:
        if hasattr(self, "base"):
            self.base.cleanup()

    def _refusal(self, key: str) -> bool:
        """Whether every operation on `key` must raise InvalidKey."""
        return not directory_takes(key) or (self.link and key.startswith("link/"))

    def _conflict(self, key: str) -> bool:
        """Whether a directory cannot hold `key` beside the objects stored."""
        segments = key.split("/")
        above = {"/".join(segments[:i]) for i in range(1, len(segments))}
        return bool(above & self.objects.keys()) or any(k.startswith(key + "/") for k in self.objects)

    @rule(key=KEYS, data=st.binary(max_size=16))
    def put(self, key: str, data: bytes) -> None:
        if self._refusal(key) or self._conflict(key):
            with pytest.raises(InvalidKey):
                self.store.put(key, data)
            return
        self.store.put(key, data)
        self.objects[key] = data
        self.link = self.link and key != "link"

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        if self._refusal(key) or (self.link and key == "link"):
            with pytest.raises(InvalidKey):
                self.store.get(key)
            with pytest.raises(InvalidKey):
                self.store.exists(key)
        elif key in self.objects:
            assert self.store.get(key) == self.objects[key] and self.store.exists(key)
        else:
            with pytest.raises(KeyNotFound):
                self.store.get(key)
            assert not self.store.exists(key)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        if self._refusal(key):
            with pytest.raises(InvalidKey):
                self.store.delete(key)
            return
        self.store.delete(key)
        self.objects.pop(key, None)
        self.link = self.link and key != "link"

    @rule(key=KEYS, cut=st.integers(0, 12))
    def list_prefix(self, key: str, cut: int) -> None:
        prefix = key[:max(0, len(key) - cut)]
        if not listing_takes(prefix) or (self.link and prefix.startswith("link/")):
            with pytest.raises(InvalidKey):
                list(self.store.list(prefix))
            return
        assert list(self.store.list(prefix)) == sorted(k for k in self.objects if k.startswith(prefix))

    @invariant()
    def nothing_outside_and_no_temporaries(self) -> None:
        if not hasattr(self, "base"):
            return
        assert sorted(p.name for p in self.outside.iterdir()) == ["secret"]
        assert sorted(os.listdir(self.base.name)) == ["outside", "root"]
        assert not list(self.root.rglob(".tmp-*"))
        assert list(self.store.list()) == sorted(self.objects)


DirStoreLikeS3.TestCase.settings = settings(FUZZ, max_examples=40, stateful_step_count=20)
test_dir_store_behaves_like_s3 = DirStoreLikeS3.TestCase
