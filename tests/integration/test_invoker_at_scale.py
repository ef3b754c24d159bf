"""The lambda invoker at high concurrency, under throttles and client timeouts: every call accounted for once.

The Invoke API on 127.0.0.1 (lambda_api.py) throttles above the function's reserved
concurrency and on demand; some events outlive the client's read timeout. What the invoker
records must match what the server saw, call for call, and no event may be sent again
after a timeout (the function may still be running it).
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from lambda_api import LambdaAPI

from orchestrator.costs import bill
from orchestrator.invokers.aws import LambdaInvoker, lambda_client

EVENTS, CONCURRENCY, RESERVED, INJECTED, READ_TIMEOUT_S = 300, 64, 40, 30, 1.0
SLOW = set(range(5, EVENTS, 60))          # 5 events that run past the client's read timeout


def work(event, context):
    time.sleep(READ_TIMEOUT_S + 0.5 if event["id"] in SLOW else 0.02)
    return {"id": event["id"], "payload": "x" * 500}


@pytest.fixture
def env(monkeypatch):
    with LambdaAPI() as api:
        for key, value in {"AWS_ENDPOINT_URL_LAMBDA": api.url, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        api.add("work", work, reserved_concurrency=RESERVED)
        yield api


def test_every_call_is_accounted_for_once_under_throttles_and_timeouts(env):
    invoker = LambdaInvoker({"augment": "work"}, CONCURRENCY, backoff_s=0.02, max_backoff_s=0.5,
                            max_throttle_retries=20, client=lambda_client(READ_TIMEOUT_S, CONCURRENCY))
    env.throttle("work", INJECTED)
    try:
        records = list(invoker.map("augment", [{"id": i} for i in range(EVENTS)]))
    finally:
        invoker.close()
    deadline = time.monotonic() + 10
    while any(c.status == 0 for c in env.calls_of("work")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the timed-out calls finish on the server
    calls = env.calls_of("work")

    assert sorted(r.index for r in records) == list(range(EVENTS))              # one record per event
    ran = Counter(c.event["id"] for c in calls if c.status != 429)
    assert sorted(ran) == list(range(EVENTS)) and set(ran.values()) == {1}     # each ran once: none resent
    throttled = Counter(c.event["id"] for c in calls if c.status == 429)
    assert sum(throttled.values()) >= INJECTED
    for r in records:
        assert r.attempts == throttled[r.index] + 1                             # every 429 retried, and counted
    timed_out = {r.index for r in records if not r.ok}
    assert timed_out == SLOW
    assert all("ReadTimeout" in r.error and r.extra["ran"] for r in records if not r.ok)
    assert all(r.payload == {"id": r.index, "payload": "x" * 500} for r in records if r.ok)

    cost = bill(records)
    assert cost.lambda_.invocations == len(ran) and cost.lambda_.failures == len(SLOW)
    assert cost.bytes_up == sum(r.request_bytes for r in records) == sum(
        len(f'{{"id": {r.index}}}') * r.attempts for r in records)
    assert cost.bytes_down >= sum(len('{"id": 0, "payload": ""}') + 500 for r in records if r.ok)
