"""`orchestrator upload`: what it takes from a folder, what it leaves out, and that it says so."""

from __future__ import annotations

import os
import re
from pathlib import Path

import imagefiles as f
import pytest

from dlpipe.shared.store import DirStore
from orchestrator.cli import main


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / "cat" / "1.jpg").write_bytes(f.jpeg(16, 16, seed=1))
    (root / "dog" / "2.png").write_bytes(f.encode(f.photo(16, 16, seed=2), "PNG"))
    return root


def upload(tmp_path: Path, root: Path, *extra: str) -> int:
    return main(["--home", str(tmp_path / "home"), "--data", str(tmp_path / "store"),
                 "upload", str(root), "--prefix", "raw", *extra])


def stored(tmp_path: Path) -> dict[str, bytes]:
    store = DirStore(tmp_path / "store")
    return {key: store.get(key) for key in store.list("raw/")}


def row(out: str, label: str) -> str:
    """The value of a summary row, whatever the column width."""
    match = re.search(rf"^  {re.escape(label)}\s+(.*)$", out, re.MULTILINE)
    assert match, f"no row {label!r} in:\n{out}"
    return match[1]


def test_a_plain_folder_uploads_every_image(tmp_path, photos, capsys):
    assert upload(tmp_path, photos) == 0
    assert sorted(stored(tmp_path)) == ["raw/cat/1.jpg", "raw/dog/2.png"]
    out = capsys.readouterr().out
    assert row(out, "files uploaded").startswith("2 of 2") and row(out, "hidden, skipped") == "0"


def test_a_file_link_leading_outside_the_folder_is_refused_and_reported(tmp_path, photos, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the bucket")
    os.symlink(secret, photos / "cat" / "x.jpg")

    assert upload(tmp_path, photos) == 1
    keys = stored(tmp_path)
    assert "raw/cat/x.jpg" not in keys
    assert b"not for the bucket" not in b"".join(keys.values())
    out = capsys.readouterr().out
    assert row(out, "link outside the folder, skipped") == "1"
    assert f"cat/x.jpg: a link to {secret}, outside {photos}" in out


def test_a_folder_link_leading_outside_is_refused_and_counted(tmp_path, photos, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "3.jpg").write_bytes(f.jpeg(8, 8))
    os.symlink(elsewhere, photos / "bird")

    assert upload(tmp_path, photos) == 1
    assert sorted(stored(tmp_path)) == ["raw/cat/1.jpg", "raw/dog/2.png"]
    out = capsys.readouterr().out
    assert row(out, "link outside the folder, skipped") == "1" and f"bird: a link to {elsewhere}" in out


def test_links_inside_the_folder_are_followed_under_their_own_names(tmp_path, photos, capsys):
    os.symlink(photos / "cat" / "1.jpg", photos / "dog" / "cat-alike.jpg")
    os.symlink(photos / "cat", photos / "kitten")

    assert upload(tmp_path, photos) == 0
    keys = stored(tmp_path)
    assert sorted(keys) == ["raw/cat/1.jpg", "raw/dog/2.png", "raw/dog/cat-alike.jpg", "raw/kitten/1.jpg"]
    assert keys["raw/dog/cat-alike.jpg"] == keys["raw/kitten/1.jpg"] == (photos / "cat" / "1.jpg").read_bytes()
    assert row(capsys.readouterr().out, "files uploaded").startswith("4 of 4")


def test_a_link_back_up_the_tree_is_a_loop_not_followed(tmp_path, photos, capsys):
    os.symlink(photos, photos / "cat" / "again")

    assert upload(tmp_path, photos) == 0
    assert sorted(stored(tmp_path)) == ["raw/cat/1.jpg", "raw/dog/2.png"]
    assert row(capsys.readouterr().out, "link loop, skipped") == "1"


def test_everything_skipped_is_counted_by_reason(tmp_path, photos, capsys):
    (photos / "cat" / ".DS_Store").write_bytes(b"\x00")
    (photos / ".thumbs").mkdir()
    (photos / "cat" / "notes.txt").write_text("shot in May")
    (photos / "dog" / "labels.csv").write_text("a,b")
    os.symlink(tmp_path / "gone.jpg", photos / "dog" / "gone.jpg")
    os.symlink(photos / "dog" / "round", photos / "dog" / "about")
    os.symlink(photos / "dog" / "about", photos / "dog" / "round")
    os.mkfifo(photos / "dog" / "pipe.jpg")

    assert upload(tmp_path, photos) == 0
    assert sorted(stored(tmp_path)) == ["raw/cat/1.jpg", "raw/dog/2.png"]
    out = capsys.readouterr().out
    assert row(out, "hidden, skipped") == "2"
    assert row(out, "not an image, skipped") == "2"
    assert row(out, "broken link, skipped") == "3"
    assert row(out, "not a regular file, skipped") == "1"


def test_a_folder_with_nothing_to_upload_is_an_error_that_says_what_was_skipped(tmp_path, capsys):
    root = tmp_path / "empty"
    root.mkdir()
    (root / ".hidden.jpg").write_bytes(b"x")
    (root / "readme.txt").write_text("x")
    assert upload(tmp_path, root) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no images to upload under {root}") and "1 hidden, 1 not an image" in err
