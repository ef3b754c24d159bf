"""One run, one trainer: the run's lease refuses a second trainer, lapses for a dead one, works on S3 too."""

from __future__ import annotations

import json
import subprocess
import sys

import boto3
import pytest

from dlpipe.shared.store import DirStore, open_store
from orchestrator.cli import main
from orchestrator.lease import LeaseHeld, LeaseLost, RunLease
from orchestrator.settings import Placement


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_placement_from_the_environment(monkeypatch):
    for variable in Placement.ENV.values():
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def store(tmp_path):
    return DirStore(tmp_path / "models")


def test_a_second_trainer_is_refused_naming_the_holder_and_when_the_lease_ends(store):
    clock = Clock()
    with RunLease(store, "r1", term_s=120, clock=clock).acquire() as first:
        with pytest.raises(LeaseHeld) as refused:
            RunLease(store, "r1", term_s=120, clock=clock).acquire()
        message = str(refused.value)
        assert first.holder in message and "2027-01-15 08:02:00 UTC" in message   # now + 120 s
        assert "--resume" not in message
    # Released at the end of the block: the next trainer need not wait for the term.
    with RunLease(store, "r1", clock=clock).acquire() as second:
        assert second.generation == 2
        assert store.list("runs/r1/lease/") and list(store.list("runs/r1/lease/")) == ["runs/r1/lease/000002.json"]


def test_an_expired_lease_is_taken_over_and_its_old_holder_stops_before_committing(store):
    clock = Clock()
    stale = RunLease(store, "r1", term_s=60, clock=clock).acquire()
    stale._stop.set()                      # a trainer that hangs: no heartbeat
    clock.now += 61
    taker = RunLease(store, "r1", term_s=60, clock=clock).acquire()
    with pytest.raises(LeaseLost, match="another trainer took over"):
        stale.renew()
    taker.renew()                          # the new holder goes on
    stale.release()                        # a lost lease's release leaves the taker's alone
    with pytest.raises(LeaseHeld):
        RunLease(store, "r1", clock=clock).acquire()
    taker.release()


def test_a_lease_left_by_a_killed_process_of_this_machine_is_taken_at_once(store):
    clock = Clock()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    lease = RunLease(store, "r1", clock=clock).acquire()
    lease._stop.set()
    record = json.loads(store.get("runs/r1/lease/000001.json"))
    store.put("runs/r1/lease/000001.json", json.dumps({**record, "pid": pid}).encode())   # as if SIGKILLed
    with RunLease(store, "r1", clock=clock).acquire() as taker:
        assert taker.generation == 2


def test_a_damaged_lease_binds_no_one(store):
    store.put("runs/r1/lease/000001.json", b'{"holder": "x", "expi')
    with RunLease(store, "r1").acquire() as lease:
        assert lease.generation == 2


def test_racing_trainers_one_wins(store):
    from concurrent.futures import ThreadPoolExecutor

    def take(_: int) -> bool:
        try:
            RunLease(store, "r1").acquire()._stop.set()
            return True
        except LeaseHeld:
            return False

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(take, range(6))).count(True) == 1


def test_the_lease_works_on_s3(aws_env):
    boto3.client("s3").create_bucket(Bucket="dlpipe-lease")
    s3 = open_store("s3://dlpipe-lease")
    clock = Clock()
    with RunLease(s3, "r1", clock=clock).acquire(), pytest.raises(LeaseHeld):
        RunLease(open_store("s3://dlpipe-lease"), "r1", clock=clock).acquire()
    clock.now += 1
    with RunLease(s3, "r1", clock=clock).acquire() as again:
        assert again.generation == 2


def test_train_refuses_a_run_another_trainer_holds_before_any_work(tmp_path, capsys):
    home = tmp_path / "home"
    with RunLease(DirStore(home / "models"), "r1").acquire():
        code = main(["--home", str(home), "train", "--dataset", "nothing", "--run", "r1", "--rounds", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "being trained right now" in err and "--resume" not in err, err
    assert not (home / "models" / "runs" / "r1" / "config.json").exists()


def test_resume_of_a_run_that_does_not_exist_is_refused(tmp_path, capsys):
    home = tmp_path / "home"
    code = main(["--home", str(home), "train", "--dataset", "d", "--run", "fm1-typo", "--rounds", "2", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "no run 'fm1-typo'" in err and "Drop --resume" in err, err
    assert not (home / "models" / "runs" / "fm1-typo" / "config.json").exists()
