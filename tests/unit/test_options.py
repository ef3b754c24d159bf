"""Every numeric and name option is checked before any work: one `error:` line, exit 2, nothing made."""

from __future__ import annotations

import argparse

import pytest

from orchestrator import options
from orchestrator.cli import main
from orchestrator.settings import Placement


@pytest.fixture(autouse=True)
def no_placement_from_the_environment(monkeypatch):
    for variable in Placement.ENV.values():
        monkeypatch.delenv(variable, raising=False)


BAD = [
    # (the command line after the global options, what the message must say)
    (["--concurrency", "0", "augment", "--source", "raw", "--output", "augmented"], "--concurrency"),
    (["--concurrency", "-1", "augment", "--source", "raw", "--output", "augmented"], "--concurrency"),
    (["--concurrency", "100000", "augment", "--source", "raw", "--output", "augmented"], "between 1 and 1000"),
    (["augment", "--source", "raw", "--output", "augmented", "--batch-size", "0"], "--batch-size"),
    (["upload", ".", "--prefix", "raw", "--threads", "0"], "--threads"),
    (["upload", ".", "--prefix", "raw", "--threads", "-1"], "--threads"),
    (["train", "--dataset", "d", "--run", "r", "--rounds", "1", "--workers", "0"], "--workers"),
    (["train", "--dataset", "d", "--run", "r", "--rounds", "1", "--workers", "-1"], "--workers"),
    (["train", "--dataset", "d", "--run", "r", "--rounds", "0"], "--rounds"),
    (["train", "--dataset", "d", "--run", "r", "--rounds", "1", "--time-budget", "0"], "--time-budget"),
    (["train", "--dataset", "d", "--run", "r", "--rounds", "1", "--time-budget", "-5"], "--time-budget"),
    (["train", "--dataset", "d", "--run", "r", "--rounds", "1", "--time-budget", "nan"], "finite"),
    (["train", "--dataset", "d", "--run", "r", "--rounds", "1", "--local-epochs", "inf"], "finite"),
    (["train", "--dataset", "d", "--run", "r", "--rounds", "1", "--lr", "0"], "--lr"),
    (["train", "--dataset", "d", "--run", "r", "--rounds", "1", "--retries", "-1"], "--retries"),
    (["train", "--dataset", "d", "--run", "r", "--rounds", "1", "--init-from", ""], "--init-from"),
    (["train", "--dataset", "d", "--run", "../r", "--rounds", "1"], "--run"),
    (["prepare", "--source", "raw", "--dataset", "d", "--workers", "2", "--recipe-from", ""], "--recipe-from"),
    (["prepare", "--source", "raw", "--dataset", "d", "--workers", "0"], "--workers"),
    (["prepare", "--source", "raw", "--dataset", "d", "--workers", "1", "--recipe-from", "../x"], "invalid name"),
    (["prepare", "--source", "raw", "--dataset", "d", "--workers", "2", "--val-fraction", "1.5"], "--val-fraction"),
    (["predictions", "--limit", "100000000000000000000"], "--limit"),
    (["predictions", "--limit", "-1"], "--limit"),
    (["predict", "x.png", "--model", "../models/x"], "--model"),
    (["predict", "x.png", "--model", "/etc"], "--model"),
    (["predict", "x.png", "--version", "../../x"], "--version"),
    (["import-onnx", "x.onnx", "--labels", "l.txt", "--name", "../../x"], "--name"),
    (["export", "--run", "r", "--name", ""], "--name"),
    (["export", "--run", "r", "--round", "-1"], "--round"),
    (["upload", ".", "--prefix", "raw/../etc"], "'..' segment"),
    (["upload", ".", "--prefix", "raw/."], "'.' or '..' segment"),
    (["upload", ".", "--prefix", "raw/" + "s" * 300], "segment of 300 bytes"),
    (["augment", "--source", "", "--output", "augmented/t2"], "--source"),
    (["augment", "--source", "raw", "--output", "augmented/./t2"], "--output"),
    (["predict", "x.png", "--show", "{tmp}"], "is a folder"),
    (["predict", "x.png", "--show", "{tmp}/no/such/folder/out.png"], "no folder"),
    (["train", "--dataset", "d", "--run", "r", "--rounds", "1", "--output", "{tmp}/a-file"], "is a file"),
]


@pytest.mark.parametrize(("argv", "says"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_value_is_one_error_line_and_exit_2_before_any_work(tmp_path, capsys, argv, says):
    home = tmp_path / "home"
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(SystemExit) as stop:
        main(["--home", str(home), *[a.format(tmp=tmp_path) for a in argv]])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and says in errors[0], err
    assert "Traceback" not in err
    assert not home.exists()         # nothing created: no store, no run folder, no log


@pytest.mark.parametrize(("parse", "text", "value"), [
    (options.positive_int, "3", 3), (options.non_negative_int, "0", 0), (options.int_between(1, 8), "8", 8),
    (options.positive_float, "0.25", 0.25), (options.non_negative_float, "0", 0.0), (options.fraction, "0", 0.0),
    (options.named, "fm-1.a_b", "fm-1.a_b"), (options.model_ref, "squeezenet1.1:v2", "squeezenet1.1:v2"),
    (options.non_empty, "raw", "raw"),
    (options.key_prefix, "raw/cats/", "raw/cats"), (options.key_prefix, "", ""),
])
def test_good_values_pass_through(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize(("parse", "text"), [
    (options.positive_int, "0"), (options.positive_int, "1.5"), (options.int_between(1, 8), "9"),
    (options.positive_float, "-inf"), (options.non_negative_float, "-0.1"), (options.fraction, "1"),
    (options.named, ""), (options.named, "a/b"), (options.model_ref, "m:"), (options.model_ref, ":v1"),
    (options.non_empty, "  "), (options.key_prefix, "/etc"), (options.source_prefix, "/"),
])
def test_bad_values_are_refused(parse, text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)
