"""AWS Lambda itself as the engine: synchronous Invoke calls with boto3.

Two boto3 defaults are wrong for long synchronous calls (boto3 issues #883, #1104): the
60 s read timeout and the automatic retries, which together re-invoke a function that is
still running. The client here reads for longer than the function may run and does not
retry; this class retries throttles itself, with backoff, and nothing else.
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Iterable, Iterator

from orchestrator.functions import FUNCTIONS, function_spec
from orchestrator.invokers.base import Invocation, Invoker

_REPORT = re.compile(
    r"REPORT RequestId: (?P<rid>\S+)\s+Duration: (?P<dur>[\d.]+) ms\s+"
    r"Billed Duration: (?P<billed>\d+) ms\s+Memory Size: (?P<mem>\d+) MB"
)
THROTTLE_CODES = {"TooManyRequestsException", "ThrottlingException", "EC2ThrottledException"}


def parse_report(log_tail: str) -> dict:
    """Duration, billed duration and memory from the REPORT line of a tail log."""
    match = _REPORT.search(log_tail or "")
    if not match:
        return {}
    return {"request_id": match["rid"], "duration_ms": float(match["dur"]),
            "billed_ms": int(match["billed"]), "memory_mb": int(match["mem"])}


def stack_outputs(stack_name: str, client=None) -> dict[str, str]:
    """The Outputs of a deployed CloudFormation stack, as {OutputKey: OutputValue}."""
    import boto3

    client = client or boto3.client("cloudformation")
    stacks = client.describe_stacks(StackName=stack_name)["Stacks"]
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def lambda_client(read_timeout_s: float, max_connections: int):
    import boto3
    from botocore.config import Config

    config = Config(read_timeout=read_timeout_s, connect_timeout=10,
                    retries={"total_max_attempts": 1}, max_pool_connections=max_connections)
    return boto3.client("lambda", config=config)


class LambdaInvoker(Invoker):
    """Calls deployed functions (RequestResponse) with bounded concurrency."""

    name = "lambda"

    def __init__(self, function_names: dict[str, str], concurrency: int = 16, client=None,
                 max_throttle_retries: int = 8, backoff_s: float = 0.5) -> None:
        super().__init__()
        self.function_names = function_names
        self.concurrency = concurrency
        longest = max(spec.timeout_s for spec in FUNCTIONS.values())
        self.client = client or lambda_client(longest + 60, concurrency)
        self.max_throttle_retries = max_throttle_retries
        self.backoff_s = backoff_s
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="invoke")

    @classmethod
    def from_stack(cls, stack_name: str, concurrency: int = 16, cfn_client=None) -> "LambdaInvoker":
        outputs = stack_outputs(stack_name, cfn_client)
        names = {spec.name: outputs[spec.output] for spec in FUNCTIONS.values() if spec.output in outputs}
        if not names:
            raise RuntimeError(f"stack {stack_name!r} has no function outputs; was it deployed from template.yaml?")
        return cls(names, concurrency)

    def _deployed_name(self, function: str) -> str:
        try:
            return self.function_names[function]
        except KeyError:
            raise RuntimeError(f"no deployed function for {function!r}; known: {sorted(self.function_names)}") from None

    def _invoke_one(self, function: str, index: int, event: dict) -> Invocation:
        from botocore.exceptions import ClientError

        spec = function_spec(function)
        inv = Invocation(function=function, index=index, request_id="", ok=False, memory_mb=spec.memory_mb)
        start = time.perf_counter()
        body = json.dumps(event).encode()
        for attempt in range(self.max_throttle_retries + 1):
            inv.attempts = attempt + 1
            try:
                resp = self.client.invoke(FunctionName=self._deployed_name(function),
                                          InvocationType="RequestResponse", LogType="Tail", Payload=body)
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                if code in THROTTLE_CODES and attempt < self.max_throttle_retries:
                    # Full jitter: spread retries so that throttled calls do not return in step.
                    time.sleep(random.uniform(0, self.backoff_s * 2 ** attempt))
                    continue
                inv.error = f"{code or type(err).__name__}: {err.response.get('Error', {}).get('Message', err)}"
                break
            except Exception as err:  # connection or read timeout: not retried, may have run
                inv.error = f"{type(err).__name__}: {err}"
                break
            inv.request_id = resp.get("ResponseMetadata", {}).get("RequestId", "") or str(uuid.uuid4())
            log = base64.b64decode(resp.get("LogResult", "") or b"").decode("utf-8", "replace")
            report = parse_report(log)
            inv.duration_ms = report.get("duration_ms", 0.0)
            inv.billed_ms = report.get("billed_ms", 0)
            inv.memory_mb = report.get("memory_mb", spec.memory_mb)
            raw = resp["Payload"].read()
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                payload = raw.decode("utf-8", "replace")
            inv.payload = payload
            if resp.get("FunctionError"):
                if isinstance(payload, dict):
                    inv.error = f"{payload.get('errorType', resp['FunctionError'])}: {payload.get('errorMessage', '')}"
                else:
                    inv.error = f"{resp['FunctionError']}: {payload}"
            else:
                inv.ok = True
            break
        inv.wall_ms = (time.perf_counter() - start) * 1000
        if not inv.billed_ms:  # no tail log (e.g. a client error): bill what we saw, as an upper bound
            inv.duration_ms = inv.duration_ms or inv.wall_ms
            inv.billed_ms = int(inv.duration_ms) + 1 if inv.request_id else 0
        return inv

    def map(self, function: str, events: Iterable[dict], *,
            on_result: Callable[[Invocation], None] | None = None) -> Iterator[Invocation]:
        futures = [self._executor.submit(self._invoke_one, function, i, e) for i, e in enumerate(events)]

        def results() -> Iterator[Invocation]:
            for future in as_completed(futures):
                inv = self._record(future.result())
                if on_result:
                    on_result(inv)
                yield inv

        return results()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
