"""TensorBoard event files of a training run, read back with TensorBoard's own reader."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from unit.test_rounds import session, train  # the round loop with a fake train function (tests/ on sys.path)

from orchestrator.costs import PRICE_PER_GB_SECOND
from orchestrator.training import tensorboard
from orchestrator.training.loop import TrainingFailed


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_resumed_run_has_each_round_once_with_the_records_figures(tmp_path):
    s = session()
    s.home = str(tmp_path / "home")
    first = train(s, "r", 2)
    assert first.outputs["tensorboard"].startswith(str(tmp_path / "home" / "tensorboard" / "r"))
    result = train(s, "r", 3, resume=True)
    records = tensorboard.as_dicts(result.records)
    run = tmp_path / "home" / "tensorboard" / "r"
    assert sorted(p.name for p in run.iterdir()) == ["round", "train", "validation",
                                                     "worker-00", "worker-01", "worker-02"]
    train_, val, round_ = scalars(run / "train"), scalars(run / "validation"), scalars(run / "round")
    assert train_["loss"] == [(r["round"], pytest.approx(r["train"]["loss"])) for r in records[1:]]
    assert train_["accuracy"] == [(r["round"], pytest.approx(r["train"]["accuracy"])) for r in records[1:]]
    assert val["loss"] == [(r["round"], pytest.approx(r["val"]["loss"])) for r in records[1:]]
    assert val["accuracy"] == [(r["round"], pytest.approx(0.25)) for r in records[1:]]
    assert round_["round/wall_seconds"] == [(r["round"], pytest.approx(r["wall_seconds"])) for r in records[1:]]
    assert round_["round/gb_seconds"] == [(r["round"], pytest.approx(r["gb_seconds"])) for r in records[1:]]
    price = PRICE_PER_GB_SECOND["x86_64"]
    assert round_["cost/lambda_dollars"] == [(r["round"], pytest.approx(r["gb_seconds"] * price, rel=1e-5))
                                             for r in records[1:]]
    total = sum(r["gb_seconds"] for r in records)         # round 0's initial weights are billed too
    assert round_["cost/gb_seconds_to_date"][-1] == (3, pytest.approx(total))
    assert round_["round/transfer/store_requests/get"][0][0] == 1            # nested numbers, flattened
    worker = scalars(run / "worker-01")
    assert worker["worker/images_per_second"] == [(1, 10.0), (2, 10.0), (3, 10.0)]
    assert "worker/peak_memory_mb" not in worker     # the fake worker reports none: no made-up zeros


def test_fields_added_to_the_record_later_are_written_and_unknown_ones_are_not_required():
    record = {"round": 1, "train": {"loss": 0.5}, "val": None, "wall_seconds": 2.0, "gb_seconds": 8.0,
              "epochs": 1.5, "projected": {"lambda_seconds": 30.0, "note": "text"}, "ok": True,
              "worker_results": [{"worker": 0, "images_per_second": 100.0, "max_rss_mb": 900.0}]}
    got = {(folder, tag): (value, step) for folder, tag, value, step in tensorboard.round_scalars([record])}
    assert got[("round", "round/epochs")] == (1.5, 1)
    assert got[("round", "round/projected/lambda_seconds")] == (30.0, 1)
    assert got[("worker-00", "worker/peak_memory_mb")] == (900.0, 1)
    assert ("train", "loss") in got and ("validation", "loss") not in got and ("round", "round/ok") not in got


def test_no_home_no_files_and_writing_imports_neither_tensorflow_nor_torch(tmp_path):
    assert tensorboard.write_run(None, "r", []) == {}
    code = ("import sys; from orchestrator.training import tensorboard; "
            f"tensorboard.write_run({str(tmp_path)!r}, 'r', [{{'round': 0}}, {{'round': 1, 'wall_seconds': 1.0}}]); "
            "print(sorted(m for m in ('tensorflow', 'torch', 'keras') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    assert (tmp_path / "tensorboard" / "r" / "round").is_dir()


def test_each_round_is_in_the_event_files_as_soon_as_it_commits_even_if_a_later_round_fails(tmp_path):
    s = session(failures={(3, 0): 5})                  # worker 0 fails round 3 past its retries
    s.home = str(tmp_path / "home")
    with pytest.raises(TrainingFailed):
        train(s, "r", 3)
    run = tmp_path / "home" / "tensorboard" / "r"
    assert [step for step, _ in scalars(run / "validation")["accuracy"]] == [1, 2]
    assert [step for step, _ in scalars(run / "round")["cost/gb_seconds_to_date"]] == [1, 2]


def test_a_board_appends_each_round_once_with_its_totals_to_date(tmp_path):
    records = [{"round": 0, "gb_seconds": 1.0, "wall_seconds": 1.0},
               {"round": 1, "train": {"loss": 0.9, "accuracy": 0.5}, "gb_seconds": 2.0, "wall_seconds": 3.0},
               {"round": 2, "train": {"loss": 0.7, "accuracy": 0.6}, "gb_seconds": 4.0, "wall_seconds": 5.0}]
    board = tensorboard.RunBoard(tmp_path, "r", records[:2])
    board.add(records[2])
    assert board.close() == {"tensorboard": str(tmp_path / "tensorboard" / "r")}
    assert scalars(tmp_path / "tensorboard" / "r" / "train")["loss"] == [(1, pytest.approx(0.9)),
                                                                          (2, pytest.approx(0.7))]
    assert scalars(tmp_path / "tensorboard" / "r" / "round")["cost/gb_seconds_to_date"] == [(1, 3.0), (2, 7.0)]
