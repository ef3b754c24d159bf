"""`orchestrator upload` then `orchestrator augment`, end to end through the CLI.

Real files, real worker processes (the local invoker), and a real store: a directory, or
S3 as served by the moto server.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import imagefiles as f
import pytest

from dlpipe.shared.s3_store import S3Store
from dlpipe.shared.shards import read_members
from dlpipe.shared.store import DirStore
from dlpipe.wire import DEFAULT_VARIANTS
from orchestrator import functions
from orchestrator.cli import main
from orchestrator.functions import FunctionSpec

FLAKY = Path(__file__).parent / "handlers" / "flaky_augment.py"
SKEWED = Path(__file__).parent / "handlers" / "skewed_augment.py"
BAD = {"empty.jpg", "truncated.jpg", "text.jpg", "bomb.png"}


@pytest.fixture
def photos(tmp_path) -> Path:
    """photos/{cat,dog,odd}/..., with every kind of bad and awkward file, and hidden clutter."""
    root = tmp_path / "photos"
    for i in range(5):
        (root / "cat").mkdir(parents=True, exist_ok=True)
        (root / "cat" / f"c{i}.jpg").write_bytes(f.jpeg(72, 48, seed=i))
    for i in range(3):
        (root / "dog").mkdir(exist_ok=True)
        (root / "dog" / f"d{i}.png").write_bytes(f.encode(f.photo(40, 56, seed=10 + i), "PNG"))
    (root / "odd").mkdir()
    for name, make in {**f.BAD_FILES, **f.GOOD_ODD_FILES}.items():
        (root / "odd" / name).write_bytes(make())
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / ".cache").mkdir()
    (root / ".cache" / "thumb.jpg").write_bytes(f.jpeg(8, 8))
    return root


def cli(tmp_path: Path, data: str, *args: str) -> int:
    return main(["--home", str(tmp_path / "home"), "--data", str(data), "--concurrency", "2", *map(str, args)])


def expected_sources(photos: Path, prefix: str = "raw") -> list[str]:
    return sorted(f"{prefix}/{p.relative_to(photos).as_posix()}" for p in photos.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(photos).parts))


def expected_outputs(photos: Path, prefix: str = "augmented") -> list[str]:
    good = [k for k in expected_sources(photos) if k.rsplit("/", 1)[1] not in BAD]
    return sorted(f"{prefix}/{k[4:].rsplit('.', 1)[0]}__{v}.jpg" for k in good for v in DEFAULT_VARIANTS)


def assert_bad_files_reported(out: str) -> None:
    assert "failed (4):" in out
    assert "raw/odd/empty.jpg: empty file" in out
    assert "raw/odd/truncated.jpg: corrupt or truncated" in out
    assert "raw/odd/text.jpg: not a recognised image" in out
    assert "raw/odd/bomb.png: decompression bomb" in out


def test_upload_and_augment_on_a_directory_store(tmp_path, photos, capsys):
    data = tmp_path / "store"
    assert cli(tmp_path, data, "upload", photos, "--prefix", "raw") == 0
    out = capsys.readouterr().out
    store = DirStore(data)
    assert sorted(store.list("raw/")) == expected_sources(photos)
    assert "classes          3: cat (5), dog (3), odd (11)" in out and "hidden, skipped  2" in out

    assert cli(tmp_path, data, "augment", "--source", "raw", "--output", "augmented", "--size", "32",
               "--batch-size", "4") == 1
    out = capsys.readouterr().out
    assert_bad_files_reported(out)
    assert "15 augmented, 4 failed" in out and f"images out   {15 * len(DEFAULT_VARIANTS)} " in out
    assert "invocations  5 (0 failed)" in out
    assert f"({19 + 15 * len(DEFAULT_VARIANTS)} by functions)" in out   # a GET per source, a PUT per output
    assert sorted(store.list("augmented/")) == expected_outputs(photos)
    first = {k: store.get(k) for k in store.list("augmented/")}

    # Again, in other batches: every file is rewritten with identical bytes.
    for key in first:
        store.delete(key)
    assert cli(tmp_path, data, "augment", "--source", "raw", "--output", "augmented", "--size", "32",
               "--batch-size", "7") == 1
    assert {k: store.get(k) for k in store.list("augmented/")} == first


def test_failed_invocations_are_reported_with_their_keys(tmp_path, photos, capsys, monkeypatch):
    monkeypatch.setitem(functions.FUNCTIONS, "augment",
                        FunctionSpec("augment", f"{FLAKY}:handler", 1024, 3, "AugmentFunctionName"))
    for name in ("crash", "hang", "raise"):
        (photos / "dog" / f"{name}.jpg").write_bytes(f.jpeg(32, 32))
    data = tmp_path / "store"
    assert cli(tmp_path, data, "upload", photos / "dog", "--prefix", "raw/dog") == 0
    assert cli(tmp_path, data, "augment", "--source", "raw", "--output", "augmented", "--batch-size", "1") == 1
    out = capsys.readouterr().out
    assert "raw/dog/crash.jpg: invocation failed: Runtime.ExitError" in out
    assert "raw/dog/hang.jpg: invocation failed: Sandbox.Timedout: Task timed out after 3.00 seconds" in out
    assert "raw/dog/raise.jpg: invocation failed: RuntimeError: the function failed for this batch" in out
    assert "3 augmented, 3 failed" in out and "invocations  6 (3 failed)" in out
    assert len(list(DirStore(data).list("augmented/dog/"))) == 3 * len(DEFAULT_VARIANTS)


def test_the_functions_400_is_shown_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(functions.FUNCTIONS, "augment",
                        FunctionSpec("augment", f"{SKEWED}:handler", 1024, 30, "AugmentFunctionName"))
    photos = tmp_path / "photos"
    (photos / "cat").mkdir(parents=True)
    for name in ("old-1.jpg", "old-2.jpg", "new.jpg"):
        (photos / "cat" / name).write_bytes(f.jpeg(32, 32))
    data = tmp_path / "store"
    assert cli(tmp_path, data, "upload", photos, "--prefix", "raw") == 0
    capsys.readouterr()
    refusal = "invalid augment event: spec.sise: Extra inputs are not permitted"

    assert cli(tmp_path, data, "augment", "--source", "raw", "--output", "augmented", "--batch-size", "1") == 1
    out = capsys.readouterr().out
    assert f"raw/cat/old-1.jpg: refused by the function (400): {refusal}" in out
    assert "1 augmented, 2 failed" in out and "invocations  3 (0 failed)" in out
    assert {k.split("__")[0] for k in DirStore(data).list("augmented/")} == {"augmented/cat/new"}

    DirStore(data).delete("raw/cat/new.jpg")
    assert cli(tmp_path, data, "augment", "--source", "raw", "--output", "augmented/second", "--batch-size", "1") == 2
    err = capsys.readouterr().err
    assert f"error: the augment function refused every batch: {refusal}" in err and "Traceback" not in err
    assert list(DirStore(data).list("augmented/second/")) == []


def test_upload_and_augment_on_s3(tmp_path, photos, capsys, aws_env):
    boto3.client("s3").create_bucket(Bucket="dlpipe-cli-test")
    data = "s3://dlpipe-cli-test/project"
    assert cli(tmp_path, data, "upload", photos, "--prefix", "raw") == 0
    store = S3Store("dlpipe-cli-test", "project")
    assert sorted(store.list("raw/")) == expected_sources(photos)
    capsys.readouterr()
    assert cli(tmp_path, data, "augment", "--source", "raw", "--output", "augmented", "--size", "32",
               "--batch-size", "8") == 1
    assert_bad_files_reported(capsys.readouterr().out)
    assert sorted(store.list("augmented/")) == expected_outputs(photos)
    local = tmp_path / "local"
    assert cli(tmp_path, local, "upload", photos, "--prefix", "raw") == 0
    assert cli(tmp_path, local, "augment", "--source", "raw", "--output", "augmented", "--size", "32") == 1
    sample = expected_outputs(photos)[::9]
    assert [store.get(k) for k in sample] == [DirStore(local).get(k) for k in sample]  # S3 or disk: same bytes
    for where in (data, local):   # packed: the same shards on S3 as on disk
        assert cli(tmp_path, where, "augment", "--source", "raw", "--output", "augmented/p", "--size", "32",
                   "--batch-size", "8", "--pack") == 1
    shards = [k for k in store.list("augmented/p/") if k.endswith(".tar")]
    assert len(shards) == 3 and [store.get(k) for k in shards] == [DirStore(local).get(k) for k in shards]


@pytest.mark.parametrize("args, message", [
    (["augment", "--source", "raw", "--output", "augmented"], "no images under 'raw/'"),
    (["augment", "--source", "augmented/raw", "--output", "augmented"], "overlap"),
    (["augment", "--source", "raw", "--output", "raw-augmented"], "augment writes only under 'augmented/'"),
    (["augment", "--source", "raw", "--output", "augmented", "--variants", "flip,sepia"], "unknown variant"),
    (["augment", "--source", "raw", "--output", "augmented", "--size", "3"], "size"),
    (["augment", "--source", "raw", "--output", "/tmp/evil"], "'/tmp/evil' is absolute"),
    (["augment", "--source", "raw", "--output", "augmented/../../evil"], "'..' segment"),
    (["upload", "/nonexistent/photos", "--prefix", "raw"], "is not a directory"),
])
def test_usage_errors_say_what_to_do(tmp_path, capsys, args, message):
    try:
        code = cli(tmp_path, tmp_path / "store", *args)
    except SystemExit as stop:   # refused by the option's own type (orchestrator.options), before any work
        code = stop.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_augment_pack_writes_shards_and_an_index_and_reruns_identically(tmp_path, photos, capsys):
    data = tmp_path / "store"
    assert cli(tmp_path, data, "upload", photos, "--prefix", "raw") == 0
    args = ("augment", "--source", "raw", "--output", "augmented/packed", "--size", "32", "--pack")
    assert cli(tmp_path, data, *args, "--batch-size", "4") == 1
    out = capsys.readouterr().out
    assert_bad_files_reported(out)
    assert "15 augmented, 4 failed" in out and "5 shards, WebDataset layout" in out
    assert "(24 by functions)" in out          # the bill: a GET per source and a PUT per shard, from the replies
    store = DirStore(data)
    shards = [f"augmented/packed/shard-{i:06d}.tar" for i in range(5)]
    assert sorted(store.list("augmented/")) == ["augmented/packed/index.json", *shards]
    index = json.loads(store.get("augmented/packed/index.json"))
    assert index["__kind__"] == "wids-shard-index-v1" and index["source"] == "raw"
    assert [s["url"] for s in index["shardlist"]] == [s.removeprefix("augmented/packed/") for s in shards]
    assert sum(s["nsamples"] for s in index["shardlist"]) == 15
    assert sum(s["images"] for s in index["shardlist"]) == 15 * len(DEFAULT_VARIANTS)
    totals: dict[str, int] = {}
    for s in index["shardlist"]:
        for cls, n in s["classes"].items():
            totals[cls] = totals.get(cls, 0) + n
    assert totals == {"cat": 5 * 7, "dog": 3 * 7, "odd": 7 * 7}
    members = sorted(name for s in shards for name, _ in read_members(store.get(s)))
    assert members == sorted(k.removeprefix("augmented/").replace("__", ".") for k in expected_outputs(photos))
    first = {k: store.get(k) for k in store.list("augmented/")}

    assert cli(tmp_path, data, *args, "--batch-size", "4") == 1     # the same batches: byte-identical shards
    assert {k: store.get(k) for k in store.list("augmented/")} == first
    assert cli(tmp_path, data, *args, "--batch-size", "8") == 1     # fewer batches: the extra old shards go
    assert sorted(store.list("augmented/")) == ["augmented/packed/index.json", *shards[:3]]
    assert cli(tmp_path, data, *args[:-1]) == 1                      # files here now: the index goes
    assert not store.exists("augmented/packed/index.json")
