"""A trainer killed with SIGKILL mid-round: its lease does not lock the run, and the resumed run ends with the
same weights as one never interrupted (the round loop with the fake train function of tests/unit/test_rounds)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from faultkit import linux_only, wait_for

from dlpipe.runs.run import TrainingRun
from dlpipe.shared.store import DirStore
from orchestrator.training.loop import TrainOptions, run_training
from tests.unit.test_rounds import FakeSession, FakeTrainFunction, session

REPO = Path(__file__).resolve().parents[2]

# Trains run "r" into a directory store, its round 2 workers slow enough to be killed in the middle.
TRAINER = textwrap.dedent("""
    import io, sys, time
    from dlpipe.shared.store import DirStore
    from orchestrator.training.loop import TrainOptions, run_training
    from tests.unit.test_rounds import FakeTrainFunction, session

    class Slow(FakeTrainFunction):
        def _train(self, event):
            if event["round"] == 2:
                open(sys.argv[2], "w").close()     # the test's cue: round 2 is under way
                time.sleep(120)
            return super()._train(event)

    s = session()
    s.models = DirStore(sys.argv[1])
    s.invoker = Slow(s.models)
    run_training(s, TrainOptions(dataset="d", run="r", rounds=3, output_dir=None), out=io.StringIO(), progress=False)
""")


def _in_directory(root: Path) -> FakeSession:
    s = session()
    s.models = DirStore(root)
    s.invoker = FakeTrainFunction(s.models)
    return s


@linux_only
def test_a_killed_trainer_is_resumed_at_once_to_the_same_weights(tmp_path):
    cue = tmp_path / "round-2-started"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", TRAINER, str(tmp_path / "killed"), str(cue)], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(cue.exists, timeout=120), proc.stderr.read() if proc.poll() is not None else "no cue"
        proc.kill()
        proc.wait(timeout=30)
    finally:
        proc.kill()
    killed = _in_directory(tmp_path / "killed")
    assert TrainingRun(killed.models, "r").latest_round() == 1
    assert list(killed.models.list("runs/r/lease/"))                    # the lease was left behind
    # The same data (the fake session is deterministic): resume at once, no waiting for the lease to lapse.
    run_training(killed, TrainOptions(dataset="d", run="r", rounds=3, resume=True, output_dir=None),
                 out=io.StringIO(), progress=False)
    straight = _in_directory(tmp_path / "straight")
    run_training(straight, TrainOptions(dataset="d", run="r", rounds=3, output_dir=None), out=io.StringIO(),
                 progress=False)
    for r in range(4):
        key = TrainingRun(None, "r").global_key(r)
        assert killed.models.get(key) == straight.models.get(key)


def test_two_resumes_at_once_one_trains_and_the_other_is_refused(tmp_path):
    import threading

    import pytest

    from orchestrator.training.loop import TrainingFailed

    in_round_2, refused = threading.Event(), threading.Event()

    class Held(FakeTrainFunction):
        def _train(self, event):
            if event["round"] == 2:
                in_round_2.set()
                assert refused.wait(60)
            return super()._train(event)

    first = _in_directory(tmp_path / "models")
    run_training(first, TrainOptions(dataset="d", run="r", rounds=1, output_dir=None), out=io.StringIO(),
                 progress=False)
    first.invoker = Held(first.models)
    second = _in_directory(tmp_path / "models")
    resume = TrainOptions(dataset="d", run="r", rounds=3, resume=True, output_dir=None)
    worker = threading.Thread(target=run_training, args=(first, resume), kwargs={"out": io.StringIO(),
                                                                                 "progress": False})
    worker.start()
    try:
        assert in_round_2.wait(60)
        with pytest.raises(TrainingFailed, match="being trained right now"):
            run_training(second, resume, out=io.StringIO(), progress=False)
    finally:
        refused.set()
        worker.join(60)
    assert TrainingRun(first.models, "r").latest_round() == 3
    assert not [e for e in second.invoker.events if e["action"] == "train"]     # nothing trained twice
