"""The `lambda` invoker over real HTTP: boto3 talks to a Lambda Invoke API on 127.0.0.1.

The API (lambda_api.py) answers as Lambda does; boto3 is pointed at it the way a user points
it at LocalStack (AWS_ENDPOINT_URL_LAMBDA), and stack discovery reads a CloudFormation stack
created in the moto server.
"""

from __future__ import annotations

import argparse
import io
import json
import threading
import time

import boto3
import pytest
from lambda_api import PAYLOAD_LIMIT, LambdaAPI

from orchestrator.errors import CommandError
from orchestrator.functions import FUNCTIONS
from orchestrator.invokers.aws import LambdaInvoker, StackNotFound, lambda_client, parse_report, stack_outputs
from orchestrator.session import add_arguments, session_from_args

AUGMENT = "dlpipe-AugmentFunction-Ab12Cd34"
PREDICT = "dlpipe-PredictFunction-Ef56Gh78"


@pytest.fixture
def api():
    with LambdaAPI() as server:
        yield server


@pytest.fixture
def lambda_env(api, monkeypatch):
    """boto3 in this process sends Lambda calls to the test API, and nothing to real AWS."""
    env = {"AWS_ENDPOINT_URL_LAMBDA": api.url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


@pytest.fixture
def invoker(lambda_env):
    inv = LambdaInvoker({"augment": AUGMENT, "predict": PREDICT}, concurrency=4, backoff_s=0.01, max_backoff_s=0.1)
    yield inv
    inv.close()


def echo(event, context):
    return {"event": event, "request_id": context.aws_request_id,
            "function": context.function_name, "time_left": context.get_remaining_time_in_millis() > 0}


def test_a_success_returns_the_payload_and_bills_from_the_report_line(api, invoker):
    api.add(AUGMENT, echo, memory_mb=1536)
    event = {"keys": ["raw/cat/1.jpg"], "output": "augmented"}

    inv = invoker.invoke("augment", event)

    call, = api.calls_of(AUGMENT)
    assert inv.ok and inv.error is None and inv.attempts == 1
    assert inv.payload == {"event": event, "request_id": call.request_id, "function": AUGMENT, "time_left": True}
    assert inv.request_id == call.request_id  # from the x-amzn-RequestId header
    # Duration, billed time and memory come from the REPORT line, not from our own records:
    # the server's function has 1536 MB where orchestrator/functions.py says 1024.
    assert inv.memory_mb == 1536
    assert inv.billed_ms == call.billed_ms
    assert inv.duration_ms == pytest.approx(call.duration_ms, abs=0.01)
    assert invoker.records == [inv]


def test_a_function_error_surfaces_the_functions_own_message(api, invoker):
    def broken(event, context):
        raise ValueError(f"image {event['key']!r} is truncated")

    api.add(AUGMENT, broken)
    inv = invoker.invoke("augment", {"key": "raw/cat/3.jpg"})

    assert not inv.ok
    assert inv.error == "ValueError: image 'raw/cat/3.jpg' is truncated"
    assert inv.payload["errorType"] == "ValueError" and any("broken" in line for line in inv.payload["stackTrace"])
    assert inv.attempts == 1 and len(api.calls_of(AUGMENT)) == 1  # a function error is not retried
    assert inv.billed_ms == api.calls_of(AUGMENT)[0].billed_ms > 0


def test_a_throttled_call_is_retried_with_backoff_then_succeeds(api, invoker):
    api.add(AUGMENT, echo)
    api.throttle(AUGMENT, 2)

    inv = invoker.invoke("augment", {"n": 1})

    assert inv.ok and inv.payload["event"] == {"n": 1}
    assert inv.attempts == 3
    assert [c.status for c in api.calls_of(AUGMENT)] == [429, 429, 200]


def test_throttles_beyond_the_retry_budget_fail_with_the_service_error(api, lambda_env):
    api.add(AUGMENT, echo)
    api.throttle(AUGMENT, 10)
    with LambdaInvoker({"augment": AUGMENT}, max_throttle_retries=2, backoff_s=0.01) as invoker:
        inv = invoker.invoke("augment", {})
    assert not inv.ok
    assert inv.error == "TooManyRequestsException: Rate Exceeded."
    assert inv.attempts == 3 and len(api.calls_of(AUGMENT)) == 3
    assert inv.billed_ms == 0  # a throttled call never ran


def test_reserved_concurrency_throttles_a_batch_and_every_call_still_completes(api, lambda_env):
    def hold_until_someone_is_throttled(event, context):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(c.status == 429 for c in api.calls_of(AUGMENT)):
            time.sleep(0.005)
        return event["i"]

    fn = api.add(AUGMENT, hold_until_someone_is_throttled, reserved_concurrency=1)
    with LambdaInvoker({"augment": AUGMENT}, concurrency=4, max_throttle_retries=60,
                       backoff_s=0.01, max_backoff_s=0.05) as invoker:
        results = list(invoker.map("augment", [{"i": i} for i in range(4)]))

    assert sorted(r.payload for r in results) == [0, 1, 2, 3]
    assert all(r.ok for r in results)
    assert fn.peak_in_flight == 1
    statuses = [c.status for c in api.calls_of(AUGMENT)]
    assert statuses.count(200) == 4 and statuses.count(429) >= 1
    assert sum(r.attempts for r in results) == len(statuses)


def test_a_client_read_timeout_is_reported_and_not_retried(api, lambda_env):
    release = threading.Event()
    api.add(AUGMENT, lambda event, context: release.wait(10) and "late")
    invoker = LambdaInvoker({"augment": AUGMENT}, client=lambda_client(read_timeout_s=0.5, max_connections=2))
    try:
        inv = invoker.invoke("augment", {"slow": True})
    finally:
        release.set()
        invoker.close()

    assert not inv.ok
    assert inv.error.startswith("ReadTimeoutError: Read timeout on endpoint URL")
    assert inv.attempts == 1
    assert len(api.calls_of(AUGMENT)) == 1, "a timed-out call may still be running: it must not be sent again"
    assert inv.billed_ms >= 500  # it ran at least as long as we waited


def test_the_functions_own_timeout_is_a_function_error(api, invoker):
    release = threading.Event()
    api.add(AUGMENT, lambda event, context: release.wait(10), timeout_s=0.3)
    try:
        inv = invoker.invoke("augment", {})
    finally:
        release.set()
    assert not inv.ok
    assert inv.error.startswith("Sandbox.Timedout: RequestId: ")
    assert inv.error.endswith("Error: Task timed out after 0.30 seconds")
    assert inv.billed_ms == 300 and inv.attempts == 1


def test_a_function_that_is_not_deployed_is_a_clear_error(api, lambda_env):
    with LambdaInvoker({"augment": "dlpipe-Gone-1"}) as invoker:
        missing = invoker.invoke("augment", {})
        unmapped = invoker.invoke("train", {})
    assert missing.error.startswith("ResourceNotFoundException: Function not found: ")
    assert missing.error.endswith(":function:dlpipe-Gone-1") and missing.attempts == 1
    assert unmapped.error == "RuntimeError: no deployed function for 'train'; known: ['augment']"
    assert len(api.calls) == 1  # the unmapped one never left this machine


def test_an_oversized_event_is_refused_by_the_service_not_retried(api, invoker):
    api.add(PREDICT, echo)
    inv = invoker.invoke("predict", {"image_b64": "A" * (PAYLOAD_LIMIT + 1024)})
    assert inv.error.startswith("RequestTooLargeException: Request must be smaller than 6291456 bytes")
    assert inv.attempts == 1 and inv.billed_ms == 0


def test_map_runs_a_batch_concurrently_and_reports_each_call(api, invoker):
    together = threading.Barrier(3, timeout=5)  # fails the calls unless three run at once

    def square(event, context):
        together.wait()
        return event["i"] ** 2

    api.add(AUGMENT, square)
    seen = []
    with LambdaInvoker({"augment": AUGMENT}, concurrency=3) as batch:
        results = list(batch.map("augment", [{"i": i} for i in range(6)], on_result=seen.append))
    assert all(r.ok for r in results), [r.error for r in results]
    assert sorted((r.index, r.payload) for r in results) == [(i, i * i) for i in range(6)]
    assert seen == results and len(batch.records) == 6


def test_parse_report_reads_the_servers_tail(api, lambda_env):
    """The test server's log tail is the real format: the same parser reads it via boto3."""
    api.add(AUGMENT, echo, memory_mb=2048)
    response = boto3.client("lambda").invoke(FunctionName=AUGMENT, LogType="Tail", Payload=b"{}")
    import base64

    report = parse_report(base64.b64decode(response["LogResult"]).decode())
    assert report["memory_mb"] == 2048
    assert report["request_id"] == response["ResponseMetadata"]["RequestId"]


def test_the_real_augment_handler_behind_the_api_reads_and_writes_s3(api, aws_env, lambda_env, monkeypatch):
    """The handler file as deployed, its event built from the core's model, S3 on moto."""
    from PIL import Image

    from dlpipe.wire import AugmentRequest, AugmentSpec

    s3 = boto3.client("s3")
    bucket = f"data-{time.monotonic_ns()}"
    s3.create_bucket(Bucket=bucket)
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(jpeg, "JPEG")
    s3.put_object(Bucket=bucket, Key="raw/cat/a.jpg", Body=jpeg.getvalue())
    s3.put_object(Bucket=bucket, Key="raw/cat/broken.jpg", Body=b"not a jpeg")
    monkeypatch.setenv("DLPIPE_DATA_URL", f"s3://{bucket}")
    spec = FUNCTIONS["augment"]
    api.add_handler_file(AUGMENT, str(spec.handler_path), spec.handler_name, memory_mb=spec.memory_mb,
                         timeout_s=spec.timeout_s)
    event = AugmentRequest(keys=["raw/cat/a.jpg", "raw/cat/broken.jpg"], source_prefix="raw",
                           output_prefix="augmented", spec=AugmentSpec(variants=["original", "flip"]))

    with LambdaInvoker({"augment": AUGMENT}) as invoker:
        inv = invoker.invoke("augment", event.model_dump(mode="json"))

    assert inv.ok, inv.error
    assert (inv.payload["images_in"], inv.payload["images_out"], inv.payload["failed"]) == (2, 2, 1)
    written = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="augmented/")["Contents"])
    assert written == sorted(k for r in inv.payload["results"] for k in r["outputs"])
    assert all(k.startswith("augmented/cat/a") for k in written)


# --- finding the functions from a deployed stack ------------------------------------------

STACK = {
    "Resources": {
        "DataBucket": {"Type": "AWS::S3::Bucket"},
        "ModelBucket": {"Type": "AWS::S3::Bucket"},
        "PredictionsTable": {"Type": "AWS::DynamoDB::Table", "Properties": {
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}]}},
    },
    "Outputs": {
        "DataBucketName": {"Value": {"Ref": "DataBucket"}},
        "ModelBucketName": {"Value": {"Ref": "ModelBucket"}},
        "PredictionsTableName": {"Value": {"Ref": "PredictionsTable"}},
        "AugmentFunctionName": {"Value": AUGMENT},
        "PredictFunctionName": {"Value": PREDICT},
        "Architecture": {"Value": "arm64"},
    },
}


@pytest.fixture
def stack(aws_env, lambda_env):
    """A stack in the moto server, as `sam deploy` leaves one: buckets, table, outputs."""
    cfn = boto3.client("cloudformation")
    name = f"dlpipe-{time.monotonic_ns()}"
    cfn.create_stack(StackName=name, TemplateBody=json.dumps(STACK))
    outputs = {o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName=name)["Stacks"][0]["Outputs"]}
    yield name, outputs
    cfn.delete_stack(StackName=name)


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_session_for_a_stack_uses_its_buckets_table_and_functions(api, stack):
    name, outputs = stack
    assert boto3.client("s3").head_bucket(Bucket=outputs["DataBucketName"])  # moto made them
    api.add(PREDICT, echo)
    api.add(AUGMENT, echo)
    session = session_from_args(args("--stack-name", name, "--concurrency", "3"))
    try:
        assert session.invoker_kind == "lambda" and session.architecture == "arm64"
        assert session.settings.data_url == f"s3://{outputs['DataBucketName']}"
        assert session.settings.model_url == f"s3://{outputs['ModelBucketName']}"
        assert session.settings.table_url == f"dynamodb://{outputs['PredictionsTableName']}"
        assert session.function_names == {"augment": AUGMENT, "predict": PREDICT}
        assert session.invoker.concurrency == 3
        assert session.invoker.function_names == {"augment": AUGMENT, "predict": PREDICT}
        predicted = session.invoker.invoke("predict", {"image": "x.png"})
        assert predicted.ok and predicted.payload["function"] == PREDICT
        assert session.invoker.invoke("augment", {"k": 1}).payload["function"] == AUGMENT
        assert session.invoker.architecture == "arm64"
        assert [r.architecture for r in session.invoker.records] == ["arm64", "arm64"]  # priced as the stack runs
    finally:
        session.close()


def test_a_stack_that_does_not_exist_is_a_clear_error(aws_env):
    with pytest.raises(StackNotFound, match=r"cannot read stack 'nope' in region us-east-1: .*sam deploy --guided"):
        stack_outputs("nope")
    with pytest.raises(CommandError, match=r"^cannot read stack 'nope' in region us-east-1: .*sam deploy --guided"):
        session_from_args(args("--stack-name", "nope"))


def test_a_stack_without_the_templates_outputs_is_a_clear_error(aws_env):
    cfn = boto3.client("cloudformation")
    name = f"other-{time.monotonic_ns()}"
    cfn.create_stack(StackName=name, TemplateBody=json.dumps(
        {"Resources": {"B": {"Type": "AWS::S3::Bucket"}}, "Outputs": {"B": {"Value": {"Ref": "B"}}}}))
    try:
        with pytest.raises(CommandError, match=r"no output.*DataBucketName"):
            session_from_args(args("--stack-name", name))
    finally:
        cfn.delete_stack(StackName=name)


def test_a_stack_without_function_outputs_is_a_clear_error(aws_env):
    """Its buckets and table would do for --invoker local, but Lambda needs the functions' names."""
    cfn = boto3.client("cloudformation")
    name = f"nofunctions-{time.monotonic_ns()}"
    template = {**STACK, "Outputs": {k: v for k, v in STACK["Outputs"].items() if "Function" not in k}}
    cfn.create_stack(StackName=name, TemplateBody=json.dumps(template))
    try:
        with pytest.raises(CommandError, match=r"has no function outputs .*was it deployed from this repository's"):
            session_from_args(args("--stack-name", name))
        local = session_from_args(args("--stack-name", name, "--invoker", "local"))
        assert local.invoker_kind == "local" and local.settings.data_url.startswith("s3://")
    finally:
        cfn.delete_stack(StackName=name)
