"""What `demo --photos` takes: which photos train and which are held out (decided before anything is augmented),
and the options it refuses before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.commands.photo_demo import default_name, split_photos
from orchestrator.errors import CommandError


def folder(root: Path, counts: dict[str, int], sub: str = "") -> Path:
    for cls, n in counts.items():
        (root / sub / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / sub / cls / f"img{i:03d}.jpg").write_bytes(b"jpeg")
    return root


def test_a_share_of_each_class_is_held_out_stably_and_disjointly(tmp_path):
    root = folder(tmp_path / "photos", {"daisy": 10, "iris": 2, "rose": 7})
    (root / "notes.txt").write_text("not a photo")
    splits = split_photos(root, 0.2)
    by_class = {split: {} for split in splits}
    for split, files in splits.items():
        for name, path in files:
            assert path == root / name
            by_class[split].setdefault(name.split("/")[0], []).append(name)
    assert {c: len(v) for c, v in by_class["test"].items()} == {"daisy": 2, "iris": 1, "rose": 1}
    assert {c: len(v) for c, v in by_class["train"].items()} == {"daisy": 8, "iris": 1, "rose": 6}
    assert not {n for n, _ in splits["train"]} & {n for n, _ in splits["test"]}
    assert split_photos(root, 0.2) == splits                       # the same photos every run


def test_train_and_test_folders_are_kept_as_they_are(tmp_path):
    root = folder(tmp_path / "photos", {"a": 3, "b": 3}, "train")
    folder(root, {"a": 1, "b": 2}, "test")
    splits = split_photos(root, 0.5)
    assert sorted(n for n, _ in splits["test"]) == ["a/img000.jpg", "b/img000.jpg", "b/img001.jpg"]
    assert len(splits["train"]) == 6 and all(p.parent.parent.name == "train" for _, p in splits["train"])


def test_a_class_of_one_photo_is_refused(tmp_path):
    root = folder(tmp_path / "photos", {"a": 4, "b": 1})
    with pytest.raises(CommandError, match=r"class 'b' has 1 photo .* give at least 2 a class"):
        split_photos(root, 0.2)


def test_the_default_name_is_the_folders(tmp_path):
    assert default_name(tmp_path / "flowers12") == "flowers12"
    assert default_name(tmp_path / "my photos") == "my-photos"
    assert default_name(Path("/")) == "photos"


REFUSED = {
    "--pretrained without --photos": (["demo", "--pretrained", "x.onnx"], "--pretrained only go with --photos DIR"),
    "--images with --photos": (["demo", "--photos", "{photos}", "--images", "10"], "--images is for the Fashion"),
    "a share of nothing": (["demo", "--photos", "{photos}", "--val-fraction", "1"],
                           "argument --val-fraction: 1 is out of range"),
    "no such model file": (["demo", "--photos", "{photos}", "--pretrained", "{tmp}/none.onnx"], "no such file"),
    "not an ONNX file": (["demo", "--photos", "{photos}", "--pretrained", "{junk}"],
                         "cannot read it as an ONNX model"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_bad_options_exit_2_before_any_work(tmp_path, capsys, case):
    photos = folder(tmp_path / "photos", {"a": 3, "b": 3})
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not protobuf" * 10)
    argv = [a.format(photos=photos, tmp=tmp_path, junk=junk) for a in REFUSED[case][0]]
    try:
        code = main(["--home", str(tmp_path / "home"), *argv])
    except SystemExit as exit_:    # argparse refuses an option value itself
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]    # ours: one line; argparse's refusals follow its usage lines
    assert last.startswith(("error: ", "orchestrator demo: error: ")) and REFUSED[case][1] in last, err
    assert not (tmp_path / "home" / "data").exists()              # nothing uploaded
