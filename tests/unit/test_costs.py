from types import SimpleNamespace

import pytest

from orchestrator.costs import PRICE_PER_GB_SECOND, gb_seconds, summarize


def test_gb_seconds_is_billed_time_times_memory():
    assert gb_seconds(1000, 1024) == 1.0
    assert gb_seconds(250, 4096) == 1.0
    assert gb_seconds(0, 1024) == 0.0


def test_summary_prices_by_architecture():
    records = [SimpleNamespace(billed_ms=2000, memory_mb=2048, ok=True, architecture="x86_64"),
               SimpleNamespace(billed_ms=1000, memory_mb=1024, ok=False, architecture="x86_64")]
    x86 = summarize(records)
    arm = summarize([SimpleNamespace(**{**vars(r), "architecture": "arm64"}) for r in records])
    assert x86.gb_seconds == 5.0 and x86.failures == 1 and x86.billed_ms == 3000
    assert x86.dollars == pytest.approx(5 * PRICE_PER_GB_SECOND["x86_64"] + 2 * 0.2e-6)
    assert arm.dollars < x86.dollars


def test_a_mixed_set_prices_each_record_for_its_own_architecture():
    x86 = SimpleNamespace(billed_ms=1000, memory_mb=1024, ok=True, architecture="x86_64")
    arm = SimpleNamespace(billed_ms=1000, memory_mb=1024, ok=True, architecture="arm64")
    assert summarize([x86, arm]).dollars == pytest.approx(
        PRICE_PER_GB_SECOND["x86_64"] + PRICE_PER_GB_SECOND["arm64"] + 2 * 0.2e-6)


# --- the whole bill: S3 requests and the bytes through the orchestrator ---------------------

def _invocation(payload: dict, sent: int, received: int, ok: bool = True):
    return SimpleNamespace(billed_ms=1000, memory_mb=1024, ok=ok, architecture="x86_64", payload=payload,
                           request_bytes=sent, response_bytes=received)


def test_the_bills_request_and_transfer_lines_add_up_from_the_records():
    from orchestrator.costs import EGRESS_PER_GB, S3_PRICE_PER_REQUEST, bill
    from orchestrator.traffic import Traffic

    records = [_invocation({"action": "train"}, 2_000, 600),
               _invocation({"action": "aggregate", "gets": 32, "puts": 2}, 5_000, 400),
               _invocation({"action": "aggregate", "gets": 4, "puts": 2}, 1_000, 400),
               _invocation({"action": "aggregate", "gets": 9, "puts": 9}, 1_000, 100, ok=False)]  # no reply: none
    traffic = Traffic({"put": 3, "get": 10, "list": 2, "head": 4, "delete": 6}, bytes_down=2_000_000_000,
                      bytes_up=7_000)
    cost = bill(records, traffic)
    assert cost.function_requests == {"put": 4, "get": 36, "list": 0, "head": 0, "delete": 0}
    assert cost.requests == {"put": 7, "get": 46, "list": 2, "head": 4, "delete": 6}
    assert cost.s3_dollars == pytest.approx(7 * 0.005e-3 + 46 * 0.0004e-3 + 2 * 0.005e-3 + 4 * 0.0004e-3)
    assert cost.s3_dollars == pytest.approx(sum(n * S3_PRICE_PER_REQUEST[k] for k, n in cost.requests.items()))
    assert (cost.bytes_down, cost.bytes_up) == (2_000_000_000 + 1_500, 7_000 + 9_000)
    assert cost.transfer_dollars == pytest.approx((2_000_000_000 + 1_500) / 1e9 * EGRESS_PER_GB)
    assert cost.total == pytest.approx(summarize(records).dollars + cost.s3_dollars + cost.transfer_dollars)
    inside = bill(records, traffic, outside_aws=False)
    assert inside.transfer_dollars == 0 and inside.total == pytest.approx(cost.total - cost.transfer_dollars)


def test_the_summary_prints_each_line_of_the_bill_and_its_total():
    import io
    import re

    from orchestrator.report import print_summary
    from orchestrator.traffic import Traffic

    out = io.StringIO()
    traffic = Traffic({"put": 1000, "get": 0, "list": 0, "head": 0, "delete": 0}, bytes_down=10**9, bytes_up=0)
    print_summary("job", [("done", "yes")], [_invocation({}, 100, 100)], out=out, traffic=traffic)
    text = out.getvalue()
    assert "1,000 PUT  ($0.00500)" in text and "1,000.0 MB down" in text and "($0.09000 as internet egress)" in text
    lines = [float(x) for x in re.findall(r"\(\$([\d.]+)", text)]
    total = float(re.search(r"total\s+\$([\d.]+)", text)[1])
    assert total == pytest.approx(sum(lines), abs=2e-5)   # Lambda + S3 + transfer, each rounded to 5 places


def test_the_metered_store_counts_requests_as_s3_bills_them(tmp_path):
    from dlpipe.shared.store import DirStore, KeyNotFound
    from orchestrator.traffic import Meter, MeteredStore

    meter = Meter()
    store = MeteredStore(DirStore(tmp_path), meter)
    for i in range(1001):
        store.put(f"k/{i:04d}", b"x" * 10)
    assert len(list(store.list("k/"))) == 1001
    assert store.get("k/0001") == b"x" * 10 and store.exists("k/0002")
    with pytest.raises(KeyNotFound):
        store.get("missing")
    store.delete("k/0003")
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (20 * 2 ** 20))
    store.upload_file(big, "big")                        # 3 parts of 8 MB, plus create and complete
    assert len(store.get("big")) == 20 * 2 ** 20         # one GET
    taken = meter.take()
    assert taken.requests == {"put": 1001 + 5, "get": 2 + 1, "list": 2, "head": 1, "delete": 1}
    assert taken.bytes_up == 10_010 + 20 * 2 ** 20 and taken.bytes_down == 10 + 20 * 2 ** 20
    assert meter.take().request_count == 0               # take: since the previous take


def test_every_replys_store_requests_are_billed_and_an_older_aggregate_still_counts():
    from orchestrator.costs import bill, reported_requests

    made = {"put": 7, "get": 1, "list": 0, "head": 0, "delete": 0}
    records = [_invocation({"images_in": 1, "requests": made}, 100, 100),                 # augment
               _invocation({"action": "pack", "requests": {**made, "put": 1, "get": 50}}, 100, 100),
               _invocation({"statusCode": 200, "top": [], "requests": {**made, "put": 0}}, 100, 100),   # predict
               _invocation({"action": "aggregate", "gets": 32, "puts": 2,                  # reports both: once
                            "requests": {**made, "put": 2, "get": 32}}, 100, 100),
               _invocation({"action": "aggregate", "gets": 4, "puts": 2}, 100, 100),       # a function of before
               _invocation({"requests": made}, 100, 100, ok=False)]                        # failed: no reply
    assert reported_requests(records) == {"put": 7 + 1 + 0 + 2 + 2, "get": 1 + 50 + 1 + 32 + 4, "list": 0,
                                          "head": 0, "delete": 0}
    assert bill(records).function_requests == reported_requests(records)
