"""The Lambda invoker's pure parts: REPORT lines, stack outputs, throttle backoff.

No network: boto3 clients here are stubbed with botocore's Stubber, which checks every
request against the real service model.
"""

from __future__ import annotations

import base64
import io
import json

import boto3
import pytest
from botocore.exceptions import NoRegionError
from botocore.stub import Stubber

from orchestrator.invokers import aws
from orchestrator.invokers.aws import LambdaInvoker, StackNotFound, parse_report, stack_outputs

RID = "3604209a-e9a3-11e6-939a-754dd98c7be3"


@pytest.mark.parametrize("tail, expected", [
    # python3.12 runtime, warm
    (f"START RequestId: {RID} Version: $LATEST\nEND RequestId: {RID}\n"
     f"REPORT RequestId: {RID}\tDuration: 12.34 ms\tBilled Duration: 13 ms\tMemory Size: 1024 MB\t"
     "Max Memory Used: 81 MB\t\n",
     {"request_id": RID, "duration_ms": 12.34, "billed_ms": 13, "memory_mb": 1024}),
    # cold start: Init Duration follows; X-Ray adds a line after REPORT
    (f"REPORT RequestId: {RID}\tDuration: 1500.00 ms\tBilled Duration: 1500 ms\tMemory Size: 4096 MB\t"
     "Max Memory Used: 900 MB\tInit Duration: 2345.67 ms\t\nXRAY TraceId: 1-5e1b4151-43a9 SegmentId: 7 Sampled: true\n",
     {"request_id": RID, "duration_ms": 1500.0, "billed_ms": 1500, "memory_mb": 4096}),
    # a function timeout: Status: timeout after the usual fields
    (f"REPORT RequestId: {RID}\tDuration: 30000.00 ms\tBilled Duration: 30000 ms\tMemory Size: 1024 MB\t"
     "Max Memory Used: 120 MB\tStatus: timeout\n",
     {"request_id": RID, "duration_ms": 30000.0, "billed_ms": 30000, "memory_mb": 1024}),
    # the 4 KB tail cut the START line and the logs in half: REPORT is last, still whole
    (f"ge': 'augmented'}}\nEND RequestId: {RID}\nREPORT RequestId: {RID}  Duration: 2.00 ms  "
     "Billed Duration: 2 ms  Memory Size: 128 MB  Max Memory Used: 40 MB",
     {"request_id": RID, "duration_ms": 2.0, "billed_ms": 2, "memory_mb": 128}),
])
def test_parse_report_reads_lambdas_report_line(tail, expected):
    assert parse_report(tail) == expected


@pytest.mark.parametrize("tail", ["", None, "START RequestId: x Version: $LATEST\n",
                                  "a log line that says REPORT RequestId: but is not one\n"])
def test_parse_report_without_a_report_line_is_empty(tail):
    assert parse_report(tail) == {}


def cfn_client():
    return boto3.client("cloudformation", region_name="eu-west-1", aws_access_key_id="x",
                        aws_secret_access_key="x")


def test_stack_outputs_maps_output_keys_to_values():
    client = cfn_client()
    with Stubber(client) as stub:
        stub.add_response("describe_stacks", {"Stacks": [{
            "StackName": "dlpipe", "CreationTime": "2026-01-01T00:00:00Z", "StackStatus": "CREATE_COMPLETE",
            "Outputs": [{"OutputKey": "DataBucketName", "OutputValue": "dlpipe-databucket-1"},
                        {"OutputKey": "AugmentFunctionName", "OutputValue": "dlpipe-AugmentFunction-2"}]}]},
            {"StackName": "dlpipe"})
        assert stack_outputs("dlpipe", client) == {"DataBucketName": "dlpipe-databucket-1",
                                                   "AugmentFunctionName": "dlpipe-AugmentFunction-2"}


def test_a_missing_stack_says_where_it_looked_and_what_to_do():
    client = cfn_client()
    with Stubber(client) as stub:
        stub.add_client_error("describe_stacks", "ValidationError", "Stack with id dlpipe does not exist",
                              http_status_code=400)
        with pytest.raises(StackNotFound) as err:
            stack_outputs("dlpipe", client)
    message = str(err.value)
    assert "'dlpipe'" in message and "eu-west-1" in message and "does not exist" in message
    assert "sam deploy --guided" in message


def test_no_region_is_a_clear_error(monkeypatch):
    def no_region(*args, **kwargs):
        raise NoRegionError()

    monkeypatch.setattr(boto3, "client", no_region)
    with pytest.raises(StackNotFound, match="no AWS region configured: set AWS_REGION"):
        stack_outputs("dlpipe")


def lambda_stub_client():
    return boto3.client("lambda", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def test_throttle_backoff_is_jittered_exponential_and_capped(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(aws.time, "sleep", sleeps.append)
    monkeypatch.setattr(aws.random, "uniform", lambda low, high: high)  # the worst case of the jitter
    client = lambda_stub_client()
    log = base64.b64encode(f"REPORT RequestId: {RID}\tDuration: 5.00 ms\tBilled Duration: 5 ms\t"
                           "Memory Size: 1024 MB\tMax Memory Used: 50 MB".encode()).decode()
    with Stubber(client) as stub:
        for _ in range(6):
            stub.add_client_error("invoke", "TooManyRequestsException", "Rate Exceeded.", http_status_code=429)
        stub.add_response("invoke", {"StatusCode": 200, "LogResult": log,
                                     "Payload": io.BytesIO(json.dumps({"ok": 1}).encode())})
        invoker = LambdaInvoker({"augment": "fn"}, client=client, max_throttle_retries=6,
                                backoff_s=0.5, max_backoff_s=4.0)
        try:
            inv = invoker.invoke("augment", {})
        finally:
            invoker.close()
    assert inv.ok and inv.payload == {"ok": 1} and inv.attempts == 7
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert (inv.billed_ms, inv.duration_ms, inv.memory_mb) == (5, 5.0, 1024)


def test_a_response_without_a_log_tail_bills_the_round_trip(monkeypatch):
    client = lambda_stub_client()
    with Stubber(client) as stub:
        stub.add_response("invoke", {"StatusCode": 200, "FunctionError": "Unhandled",
                                     "Payload": io.BytesIO(b'{"errorType": "KeyError", "errorMessage": "\'x\'"}'),
                                     "ResponseMetadata": {"RequestId": RID}})
        with LambdaInvoker({"augment": "fn"}, client=client) as invoker:
            inv = invoker.invoke("augment", {})
    assert inv.error == "KeyError: 'x'" and inv.request_id == RID
    assert inv.billed_ms == int(inv.wall_ms) + 1  # an upper bound, since it ran and we cannot know
