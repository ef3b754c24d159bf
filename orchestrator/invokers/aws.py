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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

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


class StackNotFound(RuntimeError):
    """The stack named on the command line cannot be read: missing, or no AWS configuration."""


def stack_outputs(stack_name: str, client=None) -> dict[str, str]:
    """The Outputs of a deployed CloudFormation stack, as {OutputKey: OutputValue}.

    Failures become StackNotFound with what to do about them, since this is the first AWS
    call a user's command makes and the place where a wrong region or profile shows up.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        client = client or boto3.client("cloudformation")
        stacks = client.describe_stacks(StackName=stack_name)["Stacks"]
    except NoRegionError:
        raise StackNotFound("no AWS region configured: set AWS_REGION (or a profile's region) to where "
                            f"stack {stack_name!r} was deployed") from None
    except NoCredentialsError:
        raise StackNotFound("no AWS credentials found: configure them (aws configure, AWS_PROFILE or "
                            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)") from None
    except ClientError as err:
        message = err.response.get("Error", {}).get("Message", str(err))
        region = client.meta.region_name if client is not None else "?"
        raise StackNotFound(f"cannot read stack {stack_name!r} in region {region}: {message}. Deploy it with "
                            "`sam build && sam deploy --guided`, or check --stack-name and AWS_REGION") from None
    except BotoCoreError as err:
        raise StackNotFound(f"cannot reach CloudFormation for stack {stack_name!r}: {err}") from None
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def deployed_function_names(outputs: dict[str, str]) -> dict[str, str]:
    """{logical function name: deployed name} from a stack's outputs (see FunctionSpec.output)."""
    return {spec.name: outputs[spec.output] for spec in FUNCTIONS.values() if spec.output in outputs}


def stack_architecture(outputs: dict[str, str]) -> str:
    """The functions' instruction set (template output `Architecture`): Lambda's price depends on it."""
    return outputs.get("Architecture", "x86_64")


def lambda_client(read_timeout_s: float, max_connections: int):
    import boto3
    from botocore.config import Config

    config = Config(read_timeout=read_timeout_s, connect_timeout=10,
                    retries={"total_max_attempts": 1}, max_pool_connections=max_connections)
    return boto3.client("lambda", config=config)


def _read_response(inv: Invocation, resp: dict) -> None:
    """Fill `inv` from an Invoke response: billing from the tail log's REPORT line, payload, error."""
    inv.request_id = resp.get("ResponseMetadata", {}).get("RequestId", "") or str(uuid.uuid4())
    tail = resp.get("LogResult", "") or ""
    log = base64.b64decode(tail).decode("utf-8", "replace")
    report = parse_report(log)
    inv.duration_ms = report.get("duration_ms", 0.0)
    inv.billed_ms = report.get("billed_ms", 0)
    inv.memory_mb = report.get("memory_mb", inv.memory_mb)
    raw = resp["Payload"].read()
    inv.response_bytes += len(raw) + len(tail)
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


class LambdaInvoker(Invoker):
    """Calls deployed functions (RequestResponse) with bounded concurrency."""

    name = "lambda"

    def __init__(self, function_names: dict[str, str], concurrency: int = 16, client=None,
                 max_throttle_retries: int = 8, backoff_s: float = 0.5, max_backoff_s: float = 20.0,
                 architecture: str = "x86_64") -> None:
        super().__init__()
        self.function_names = function_names
        self.architecture = architecture  # the stack's: every record is priced for it
        self.concurrency = concurrency
        longest = max(spec.timeout_s for spec in FUNCTIONS.values())
        self.client = client or lambda_client(longest + 60, concurrency)
        self.max_throttle_retries = max_throttle_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s  # cap: without it the 8th retry could wait minutes
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="invoke")

    def _deployed_name(self, function: str) -> str:
        try:
            return self.function_names[function]
        except KeyError:
            raise RuntimeError(f"no deployed function for {function!r}; known: {sorted(self.function_names)}") from None

    def _invoke_one(self, function: str, index: int, event: dict) -> Invocation:
        from botocore.exceptions import ClientError, ReadTimeoutError

        spec = function_spec(function)
        inv = Invocation(function=function, index=index, request_id="", ok=False, memory_mb=spec.memory_mb,
                         architecture=self.architecture)
        start = time.perf_counter()
        body = json.dumps(event).encode()
        for attempt in range(self.max_throttle_retries + 1):
            inv.attempts = attempt + 1
            inv.request_bytes += len(body)
            try:
                resp = self.client.invoke(FunctionName=self._deployed_name(function),
                                          InvocationType="RequestResponse", LogType="Tail", Payload=body)
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                if code in THROTTLE_CODES and attempt < self.max_throttle_retries:
                    # Full jitter: spread retries so that throttled calls do not return in step.
                    time.sleep(random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt)))
                    continue
                inv.error = f"{code or type(err).__name__}: {err.response.get('Error', {}).get('Message', err)}"
                break
            except Exception as err:  # connection or read timeout: not retried, may have run
                inv.error = f"{type(err).__name__}: {err}"
                # A read timeout means the request reached Lambda: the function ran (and is billed)
                # at least as long as we waited. A connection failure never reached it.
                inv.extra["ran"] = isinstance(err, ReadTimeoutError)
                break
            _read_response(inv, resp)
            break
        inv.wall_ms = (time.perf_counter() - start) * 1000
        if not inv.billed_ms:  # no tail log: bill the round trip if the function ran, else nothing
            inv.duration_ms = inv.duration_ms or inv.wall_ms
            inv.billed_ms = int(inv.duration_ms) + 1 if inv.request_id or inv.extra.get("ran") else 0
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

    def close(self, abort: bool = False) -> None:
        """Calls not yet sent are cancelled; those under way run to their end on Lambda either way."""
        self._executor.shutdown(wait=not abort, cancel_futures=True)
