"""Names and labels reach the terminal with their control characters escaped: no screen clearing, no retitling."""

from __future__ import annotations

import io
import sys

import pytest

from dlpipe.wire import ModelInfo, PredictResponse, TopClass
from orchestrator.cli import main
from orchestrator.commands.predict import Item, format_table, summary_rows
from orchestrator.report import print_failures, print_summary, printable
from orchestrator.settings import Placement

CLEAR_AND_RETITLE = "evil\x1b[2J\x1b]0;pwned\x07"


@pytest.fixture(autouse=True)
def no_placement_from_the_environment(monkeypatch):
    for variable in Placement.ENV.values():
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize(("text", "shown"), [
    ("cat", "cat"), ("café 猫", "café 猫"), ("a b", "a b"),
    (CLEAR_AND_RETITLE, "evil\\x1b[2J\\x1b]0;pwned\\x07"),
    ("right\u202eto-left", "right\\u202eto-left"), ("line\nbreak\r", "line\\nbreak\\r"),
    ("bad\udcffbyte", "bad\\udcffbyte"),
])
def test_printable_escapes_control_characters_only(text, shown):
    assert printable(text) == shown


def test_summaries_and_failure_lists_escape_what_they_print():
    out = io.StringIO()
    print_summary("prepare", [("classes", f"2: {CLEAR_AND_RETITLE} (3), dog (4)")], out=out, traffic=_no_traffic())
    print_failures([(f"raw/{CLEAR_AND_RETITLE}/1.jpg", "bad\x07 image")], out=out)
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "evil\\x1b[2J" in text and "bad\\x07 image" in text


def _no_traffic():
    from orchestrator.traffic import Traffic

    return Traffic()


def test_the_predict_table_escapes_labels_and_names():
    response = PredictResponse(id="x", model=ModelInfo(name="m", version="v1"), image="a.png", latency_ms=1.0,
                               model_load_ms=0.0, duplicate=False,
                               top=[TopClass(label=CLEAR_AND_RETITLE, index=0, probability=0.9),
                                    TopClass(label="dog", index=1, probability=0.1)])
    out = io.StringIO()
    format_table(Item(arg="a\x1b.png", response=response), out=out)
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue() and "evil\\x1b[2J" in out.getvalue()


def test_the_predict_summary_says_how_many_failures_it_left_out():
    items = [Item(arg=f"{i}.png", error="no such file") for i in range(47)]
    rows = summary_rows(items, "m", 1.0, None)
    failed = [value for label, value in rows if label == "failed"]
    assert len(failed) == 20 and any("27 more failed" in str(value) for _, value in rows)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses some bytes in file names")
def test_upload_summary_escapes_a_class_folder_named_with_escape_sequences(tmp_path, capsys):
    folder = tmp_path / "photos" / CLEAR_AND_RETITLE
    folder.mkdir(parents=True)
    (folder / "1.jpg").write_bytes(b"uploaded as it is")
    code = main(["--home", str(tmp_path / "home"), "upload", str(tmp_path / "photos"), "--prefix", "raw"])
    out = capsys.readouterr().out
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "evil\\x1b[2J" in out
