"""Damaged or inconsistent run files are reported naming the file and the way out, never as a traceback."""

from __future__ import annotations

import io

import pytest

from dlpipe.runs.run import TrainingRun
from dlpipe.shared.store import DirStore
from orchestrator.cli import main
from orchestrator.settings import Placement
from orchestrator.training.loop import TrainingFailed, TrainOptions, run_training
from tests.unit.test_rounds import FakeTrainFunction, session

DAMAGE = {
    "latest.json truncated": ("runs/r/latest.json", b'{"round": 2, "weig', "write {\"round\": 2}"),
    "latest.json not an object": ("runs/r/latest.json", b"[2]", "write {\"round\": 2}"),
    "latest.json names round 99": ("runs/r/latest.json", b'{"round": 99}', "rounds/0099/global.npz is missing"),
    "config.json truncated": ("runs/r/config.json", b'{"model": {', "start a new --run"),
    "config.json wrong shape": ("runs/r/config.json", b'{"model": 1}', "start a new --run"),
    "round record truncated": ("runs/r/rounds/0001/record.json", b'{"kind": "ro', 'writing {"round": 0}'),
    "round record not an object": ("runs/r/rounds/0001/record.json", b'[1, 2]', 'writing {"round": 0}'),
    "round record wrong shape": ("runs/r/rounds/0001/record.json", b'{"workers": "many"}', 'writing {"round": 0}'),
}


@pytest.fixture(autouse=True)
def no_placement_from_the_environment(monkeypatch):
    for variable in Placement.ENV.values():
        monkeypatch.delenv(variable, raising=False)


def _train(s, rounds: int, **options):
    return run_training(s, TrainOptions(dataset="d", run="r", rounds=rounds, output_dir=None, **options),
                        out=io.StringIO(), progress=False)


@pytest.mark.parametrize("case", DAMAGE)
def test_resume_of_a_damaged_run_names_the_file_and_the_way_out(case):
    s = session()
    _train(s, 2)
    key, data, way_out = DAMAGE[case]
    s.models.put(key, data)
    with pytest.raises(TrainingFailed) as failed:
        _train(s, 3, resume=True)
    message = str(failed.value)
    assert key in message and way_out in message, message
    assert not s.models.exists("runs/r/rounds/0003/global.npz")     # refused before any work


def test_the_way_out_given_for_a_damaged_pointer_works():
    s = session()
    _train(s, 2)
    s.models.put("runs/r/latest.json", b"\x00garbage")
    with pytest.raises(TrainingFailed, match=r'write \{"round": 2\}'):
        _train(s, 3, resume=True)
    s.models.put("runs/r/latest.json", b'{"round": 2}')
    assert _train(s, 3, resume=True).final.round == 3


def test_a_failed_first_round_leaves_the_run_name_free():
    s = session()

    class NoInit(FakeTrainFunction):
        def _init(self, event):
            raise RuntimeError("the starting model does not fit")

    s.invoker = NoInit(s.models)
    with pytest.raises(TrainingFailed, match="initial weights failed"):
        _train(s, 1)
    s.invoker = FakeTrainFunction(s.models)
    assert _train(s, 1).final.round == 1          # no --resume needed, no "already exists"


@pytest.mark.parametrize("case", ["latest.json truncated", "latest.json names round 99", "config.json truncated"])
def test_export_of_a_damaged_run_names_the_file(case, tmp_path, capsys):
    s = session()
    s.models = DirStore(tmp_path / "models")
    s.invoker = FakeTrainFunction(s.models)
    _train(s, 2)
    key, data, way_out = DAMAGE[case]
    s.models.put(key, data)
    code = main(["--home", str(tmp_path / "home"), "--models", str(tmp_path / "models"), "export", "--run", "r"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and key in err and way_out in err, err
    assert "Traceback" not in err and err.count("\n") == 1     # no TensorFlow start-up lines without --verbose
    assert TrainingRun(s.models, "r").store.exists("runs/r/rounds/0002/global.npz")   # nothing was changed
