"""augment --pack, then prepare straight from the shards: the same pixels as the per-image layout, one GET a shard."""

from __future__ import annotations

import imagefiles as f
import pytest

from dlpipe.shared.recipe import Recipe
from dlpipe.shared.shards import read_index
from dlpipe.shared.store import DirStore
from dlpipe.train import parts
from orchestrator.cli import build_parser, main
from orchestrator.commands.prepare import prepare_dataset
from orchestrator.session import session_from_args

RECIPE = Recipe(size=16, channels=3)


@pytest.fixture
def home(tmp_path):
    photos = tmp_path / "photos"
    for cls, seed in (("cat", 0), ("dog", 100)):
        (photos / cls).mkdir(parents=True)
        for i in range(6):
            (photos / cls / f"{cls}.{i}.jpg").write_bytes(f.jpeg(40 + 4 * i, 36, seed=seed + i))  # dots in names
    (photos / "dog" / "broken.jpg").write_bytes(f.truncated_jpeg())
    home = tmp_path / "home"
    assert main(["--home", str(home), "upload", str(photos), "--prefix", "raw"]) == 0
    return home


def cli(home, *args: str) -> int:
    return main(["--home", str(home), "--concurrency", "2", *args])


def everything(store, manifest) -> list[tuple[int, bytes]]:
    """Every (label, pixels) the prepared dataset holds, train and validation, in a fixed order."""
    keys = [k for s in manifest.shards for k in s.parts] + manifest.val.parts
    x, y = parts.load_parts(store, keys)
    return sorted((int(label), image.tobytes()) for image, label in zip(x, y, strict=True))


class Bar:
    """progress_bar's stand-in: what prepare says it will do and what it reports done."""

    def __init__(self, total: int, **_) -> None:
        self.total, self.done = total, 0
        BARS.append(self)

    def update(self, n: int) -> None:
        self.done += n

    def close(self) -> None:
        pass


BARS: list[Bar] = []


def test_packed_output_prepares_to_the_same_pixels_with_one_get_per_shard(home, capsys, monkeypatch):
    monkeypatch.setattr("orchestrator.training.prepare.progress_bar", Bar)
    augment = ("augment", "--source", "raw", "--size", "24", "--variants", "original", "flip", "rotate")
    assert cli(home, *augment, "--output", "augmented/files") == 1
    assert cli(home, *augment, "--output", "augmented/packed", "--pack", "--batch-size", "2") == 1
    out = capsys.readouterr().out
    assert "raw/dog/broken.jpg: corrupt or truncated" in out           # a bad image in a packed batch, by name
    store = DirStore(home / "data")
    shards = read_index(store, "augmented/packed")
    assert len(shards) == 6 and sum(s["images"] for s in shards) == 12 * 3

    session = session_from_args(build_parser().parse_args(["--home", str(home), "--concurrency", "2", "models"]))
    try:
        files = prepare_dataset(session, "augmented/files", "files", 2, RECIPE, val_fraction=0.3, progress=False)
        first = len(session.invoker.records)
        packed = prepare_dataset(session, "augmented/packed", "packed", 2, RECIPE, val_fraction=0.3,
                                 progress=False)
        records = session.invoker.records[first:]
    finally:
        session.close()
    assert packed.classes == files.classes == ["cat", "dog"]
    assert packed.counts.train + packed.counts.val == files.counts.train + files.counts.val == 36
    assert packed.counts.val > 0 and packed.counts.skipped == 0
    assert everything(store, packed) == everything(store, files)        # the very same pixels and labels
    assert [(b.total, b.done) for b in BARS[-2:]] == [(36, 36)] * 2     # the bars count images, not shards

    # The pack actions' own count: one GET a shard (every shard is packed), and no per-image GET.
    assert sum(r.payload["requests"]["get"] for r in records) == len(shards)
    assert sum(r.payload["requests"]["put"] for r in records) == len(records)     # a part each


def test_prepare_says_what_to_do_when_a_packed_source_has_too_few_shards(home, capsys):
    assert cli(home, "augment", "--source", "raw", "--output", "augmented", "--size", "16", "--pack",
               "--batch-size", "100", "--variants", "original") == 1
    assert cli(home, "prepare", "--source", "augmented", "--dataset", "d", "--workers", "2",
               "--val-fraction", "0") == 2
    err = capsys.readouterr().err
    assert "1 training shards cannot be spread over 2 workers" in err and "smaller --batch-size" in err


def test_the_index_of_a_packed_source_is_checked(home, capsys):
    DirStore(home / "data").put("augmented/index.json", b'{"__kind__": "something else"}')
    assert cli(home, "prepare", "--source", "augmented", "--dataset", "d", "--workers", "1") == 2
    assert "augmented/index.json is not a shard index" in capsys.readouterr().err


def test_shards_and_files_never_mix_as_train_and_validation_sources(home, capsys):
    assert cli(home, "augment", "--source", "raw", "--output", "augmented/p", "--size", "16", "--pack",
               "--batch-size", "3", "--variants", "original") == 1
    assert cli(home, "prepare", "--source", "augmented/p", "--val-source", "raw", "--dataset", "d",
               "--workers", "1") == 2
    assert "is packed (augment --pack) but --val-source raw is not" in capsys.readouterr().err
