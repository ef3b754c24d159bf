"""The predictions table: every served prediction, one record each.

Two implementations behind one interface, chosen by URL in `open_table`:
``sqlite:///path`` (the embedded default) and ``dynamodb://TABLE`` (boto3; honours
AWS_ENDPOINT_URL like the stores do). Writes are put-if-absent on a deterministic id, so
a retried invocation never records the same prediction twice.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path


class TableError(Exception):
    """The predictions table URL or the table itself is unusable."""


@dataclass
class PredictionRecord:
    id: str
    created: str                      # ISO 8601, UTC
    model: str
    version: str
    top: list[dict]                   # [{"label", "index", "probability"}], most probable first
    latency_ms: float
    image_sha256: str
    image_key: str | None = None      # the data-store key, when the image came from the store
    image_name: str | None = None     # the client's name for an inline image (e.g. its file name)
    request_id: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PredictionRecord:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class PredictionsTable(ABC):
    url: str

    @abstractmethod
    def put(self, record: PredictionRecord) -> bool:
        """Store `record` unless its id exists; True if it was new."""

    @abstractmethod
    def get(self, record_id: str) -> PredictionRecord | None:
        """The record with this id, or None."""

    @abstractmethod
    def list(self, limit: int | None = 20, model: str | None = None) -> list[PredictionRecord]:
        """Records, newest first; all of them when limit is None; only `model`'s if given."""

    def count(self) -> int:
        return len(self.list(None))

    def close(self) -> None:  # noqa: B027  (optional for a backend: most hold nothing to release)
        """Release connections."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class SqliteTable(PredictionsTable):
    """SQLite in WAL mode: many warm worker processes write concurrently, readers never block.

    One connection per process and thread (sqlite3 connections are not shareable across
    processes); the busy timeout makes concurrent writers wait for the lock instead of
    failing with "database is locked".
    """

    SCHEMA = """CREATE TABLE IF NOT EXISTS predictions (
        id TEXT PRIMARY KEY, created TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL,
        body TEXT NOT NULL)"""

    def __init__(self, path: str | os.PathLike, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser().resolve()
        self.url = f"sqlite:///{self.path}"
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = self._open()
            except (sqlite3.Error, OSError) as err:  # OSError: its folder cannot be created
                raise TableError(f"cannot open the predictions table {self.url}: {err}") from None
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _open(self) -> sqlite3.Connection:
        """A connection in WAL mode with the table made, retried while another process sets the file up.

        Switching a new file to WAL takes a lock that SQLite's busy timeout does not wait for: two cold
        functions opening a fresh table at once had one fail with "database is locked" (a test).
        """
        deadline, pause = time.monotonic() + self.busy_timeout_s, 0.005
        while True:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
                conn.execute(self.SCHEMA)
                conn.execute("CREATE INDEX IF NOT EXISTS predictions_created ON predictions (created)")
                conn.execute("CREATE INDEX IF NOT EXISTS predictions_model ON predictions (model, created)")
                return conn
            except sqlite3.OperationalError as err:
                conn.close()
                if "locked" not in str(err) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(0.2, pause * 2)

    def put(self, record: PredictionRecord) -> bool:
        cur = self._conn().execute(
            "INSERT OR IGNORE INTO predictions (id, created, model, version, body) VALUES (?, ?, ?, ?, ?)",
            (record.id, record.created, record.model, record.version, json.dumps(record.to_dict())))
        return cur.rowcount == 1

    def get(self, record_id: str) -> PredictionRecord | None:
        row = self._conn().execute("SELECT body FROM predictions WHERE id = ?", (record_id,)).fetchone()
        return PredictionRecord.from_dict(json.loads(row[0])) if row else None

    def list(self, limit: int | None = 20, model: str | None = None) -> list[PredictionRecord]:
        sql, params = "SELECT body FROM predictions", []
        if model is not None:
            sql, params = sql + " WHERE model = ?", [model]
        sql += " ORDER BY created DESC, id"
        if limit is not None:
            sql, params = sql + " LIMIT ?", [*params, limit]
        rows = self._conn().execute(sql, params).fetchall()
        return [PredictionRecord.from_dict(json.loads(body)) for (body,) in rows]

    def count(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM predictions").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "url": self.url, "busy_timeout_s": self.busy_timeout_s}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


def _to_dynamo(value):
    """DynamoDB numbers are Decimals, and it refuses floats."""
    return json.loads(json.dumps(value), parse_float=Decimal)


def _from_dynamo(value):
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class DynamoTable(PredictionsTable):
    """A DynamoDB table keyed by `id` (string), as template.yaml creates it.

    A model's records come newest first from the `by-model` index (partition `model`, sort
    `created`), reading only as many as asked for. Listing across all models scans and
    sorts: DynamoDB has no global order without a single hot partition key, and a scan is
    fine for an occasional look at a table of thousands.
    """

    KEY = "id"
    MODEL_INDEX = "by-model"

    def __init__(self, name: str, resource=None) -> None:
        if not name:
            raise TableError("DynamoDB URL needs a table name: dynamodb://TABLE")
        self.name = name
        self.url = f"dynamodb://{name}"
        self._table = resource.Table(name) if resource is not None else None

    @property
    def table(self):
        if self._table is None:  # created lazily so the object pickles into worker processes
            import boto3

            self._table = boto3.session.Session().resource("dynamodb").Table(self.name)
        return self._table

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_table": None}

    def _call(self, fn, *args, **kwargs):
        from botocore.exceptions import ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                raise TableError(f"DynamoDB table {self.name!r} does not exist (deploy the stack, or "
                                 "create it with a string partition key 'id')") from None
            raise

    def put(self, record: PredictionRecord) -> bool:
        from botocore.exceptions import ClientError

        item = {k: v for k, v in _to_dynamo(record.to_dict()).items() if v is not None}
        try:
            self._call(self.table.put_item, Item=item, ConditionExpression="attribute_not_exists(#id)",
                       ExpressionAttributeNames={"#id": self.KEY})
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def get(self, record_id: str) -> PredictionRecord | None:
        item = self._call(self.table.get_item, Key={self.KEY: record_id}, ConsistentRead=True).get("Item")
        return PredictionRecord.from_dict(_from_dynamo(item)) if item else None

    def _pages(self, fn, **kwargs) -> Iterator[dict]:
        while True:
            page = self._call(fn, **kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def list(self, limit: int | None = 20, model: str | None = None) -> list[PredictionRecord]:
        if model is None:
            items = sorted(self._pages(self.table.scan), key=lambda item: (item.get("created", ""), item[self.KEY]),
                           reverse=True)[:limit]
        else:
            from boto3.dynamodb.conditions import Key

            query = {"IndexName": self.MODEL_INDEX, "KeyConditionExpression": Key("model").eq(model),
                     "ScanIndexForward": False}
            if limit is not None:
                query["Limit"] = limit
            items = []
            for item in self._pages(self.table.query, **query):
                items.append(item)
                if limit is not None and len(items) >= limit:
                    break
        return [PredictionRecord.from_dict(_from_dynamo(item)) for item in items]

    @staticmethod
    def create(name: str, client=None) -> DynamoTable:
        """Create an on-demand table with the stack's key schema (for tests and local DynamoDB)."""
        import boto3

        client = client or boto3.client("dynamodb")
        client.create_table(
            TableName=name, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": attr, "AttributeType": "S"}
                                  for attr in (DynamoTable.KEY, "model", "created")],
            KeySchema=[{"AttributeName": DynamoTable.KEY, "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[{"IndexName": DynamoTable.MODEL_INDEX, "Projection": {"ProjectionType": "ALL"},
                                     "KeySchema": [{"AttributeName": "model", "KeyType": "HASH"},
                                                   {"AttributeName": "created", "KeyType": "RANGE"}]}])
        client.get_waiter("table_exists").wait(TableName=name)
        return DynamoTable(name)


def open_table(url: str) -> PredictionsTable:
    """Open the table named by `url`: ``sqlite:///PATH`` or ``dynamodb://TABLE``."""
    if url.startswith("sqlite:///"):
        return SqliteTable(url[len("sqlite:///"):])
    if url.startswith("dynamodb://"):
        return DynamoTable(url[len("dynamodb://"):].strip("/"))
    raise TableError(f"unsupported predictions table URL {url!r}: use sqlite:///PATH or dynamodb://TABLE")
