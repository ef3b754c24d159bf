"""The predictions table: SQLite and DynamoDB behave the same (put-if-absent, newest first)."""

from __future__ import annotations

import json
import multiprocessing

import boto3
import pytest
from moto import mock_aws

from dlpipe.shared.table import DynamoTable, PredictionRecord, SqliteTable, TableError, open_table


def record(i: int, created: str | None = None, **fields) -> PredictionRecord:
    fields = {"model": "m", **fields}
    return PredictionRecord(
        id=f"id-{i:04d}", created=created or f"2026-01-01T00:00:{i % 60:02d}.000+00:00", version="v1",
        top=[{"label": "cat", "index": 3, "probability": 0.812345}, {"label": "dog", "index": 1, "probability": 0.1}],
        latency_ms=7.25, image_sha256="ab" * 32, **fields)


@pytest.fixture(params=["sqlite", "dynamodb"])
def table(request, tmp_path, monkeypatch):
    if request.param == "sqlite":
        t = open_table(f"sqlite:///{tmp_path}/p.sqlite")
        yield t
        t.close()
        return
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield DynamoTable.create("predictions")


def test_put_get_roundtrip_keeps_types(table):
    r = record(1, image_key="raw/cat/1.jpg", request_id="req")
    assert table.put(r) is True
    got = table.get("id-0001")
    assert got == r
    assert isinstance(got.latency_ms, float) and isinstance(got.top[0]["index"], int)
    assert table.get("missing") is None


def test_put_is_put_if_absent(table):
    assert table.put(record(1)) is True
    changed = record(1)
    changed.model = "other"
    assert table.put(changed) is False
    assert table.get("id-0001").model == "m"
    assert table.count() == 1


def test_list_is_newest_first_with_limit(table):
    for i in (3, 1, 2, 5, 4):
        table.put(record(i))
    assert [r.id for r in table.list(3)] == ["id-0005", "id-0004", "id-0003"]
    assert [r.id for r in table.list(None)] == [f"id-000{i}" for i in (5, 4, 3, 2, 1)]
    assert table.count() == 5


def test_list_one_model_newest_first(table):
    for i in (3, 1, 2, 5, 4, 6):
        table.put(record(i, model="even" if i % 2 == 0 else "odd"))
    assert [r.id for r in table.list(None, model="even")] == ["id-0006", "id-0004", "id-0002"]
    assert [r.id for r in table.list(2, model="odd")] == ["id-0005", "id-0003"]
    assert table.list(5, model="none") == []
    assert len(table.list(None)) == 6


def test_open_table_urls(tmp_path):
    assert isinstance(open_table(f"sqlite:///{tmp_path}/x.sqlite"), SqliteTable)
    assert open_table("dynamodb://preds").url == "dynamodb://preds"
    with pytest.raises(TableError, match="sqlite:///PATH or dynamodb://TABLE"):
        open_table("postgres://db/preds")


def test_missing_dynamodb_table_says_what_to_do(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        boto3.client("dynamodb")   # the mock is up, the table is not
        with pytest.raises(TableError, match="does not exist"):
            DynamoTable("nope").put(record(1))


def test_sqlite_uses_wal(tmp_path):
    t = SqliteTable(tmp_path / "p.sqlite")
    assert t._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _writer(path: str, start: int, count: int) -> None:
    table = SqliteTable(path)
    for i in range(start, start + count):
        table.put(record(i, created=f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.000+00:00"))


def test_sqlite_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "p.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, n * 100, 100)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert SqliteTable(path).count() == 400


def _first_writer(path: str, start, i: int) -> None:
    table = SqliteTable(path)
    start.wait()                      # every process opens the fresh file at once
    table.put(record(i))


def test_cold_functions_opening_a_fresh_table_at_once_all_write(tmp_path):
    """Two cold predict functions once lost a prediction: switching a new file to WAL took a lock the busy
    timeout does not wait for ("database is locked", 9 trials in 40 of this test's shape)."""
    ctx = multiprocessing.get_context("spawn")
    for trial in range(12):
        path, start = str(tmp_path / f"fresh-{trial}.sqlite"), ctx.Barrier(4)
        procs = [ctx.Process(target=_first_writer, args=(path, start, i)) for i in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0], f"trial {trial}"
        assert SqliteTable(path).count() == 4


# --- `orchestrator predictions`: the table as the CLI shows it -------------------------------

def predictions_cli(tmp_path, *argv: str) -> int:
    from orchestrator.cli import main

    return main(["--home", str(tmp_path / "home"), "--table", f"sqlite:///{tmp_path}/p.sqlite", "predictions", *argv])


def test_the_predictions_command_lists_the_sessions_table_newest_first(tmp_path, capsys):
    table = open_table(f"sqlite:///{tmp_path}/p.sqlite")
    for i in (1, 3, 2):
        table.put(record(i, model="fm" if i != 2 else "other", image_key=f"raw/cat/{i}.jpg"))
    table.close()

    assert predictions_cli(tmp_path) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["created", "(UTC)", "model", "image", "top-1", "ms", "id"]
    assert [line.split()[4] for line in lines[1:4]] == ["raw/cat/3.jpg", "raw/cat/2.jpg", "raw/cat/1.jpg"]
    assert "cat 0.812" in lines[1] and lines[-1] == f"3 shown from sqlite:///{tmp_path}/p.sqlite (--limit 20)"

    assert predictions_cli(tmp_path, "--model", "fm", "--json", "--limit", "0") == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in records] == ["id-0003", "id-0001"]


def test_the_predictions_command_on_an_empty_table_says_what_to_run(tmp_path, capsys):
    assert predictions_cli(tmp_path, "--model", "fm") == 0
    out = capsys.readouterr().out
    assert "no predictions recorded for model 'fm' in sqlite:///" in out and "orchestrator predict IMAGE" in out
