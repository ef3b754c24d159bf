"""The embedded engine: the very same handlers, in a pool of worker processes.

Each function gets its own pool, like Lambda gives each function its own execution
environments: workers stay warm between invocations (module-level state such as a loaded
model is reused), the JSON event is serialised and parsed as Lambda would, and the
handler gets a Lambda-like context. A call that overruns the function's timeout has its
worker killed and replaced, as Lambda does, and is reported as "Task timed out".
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import math
import multiprocessing
import os
import sys
import time
import traceback
import uuid
from typing import Callable, Iterable, Iterator

from pebble import ProcessExpired, ProcessPool

from orchestrator.functions import FunctionSpec, function_spec
from orchestrator.invokers.base import Invocation, Invoker


class LocalContext:
    """The attributes and method of Lambda's context object that handlers use."""

    def __init__(self, function_name: str, memory_mb: int, timeout_s: float, request_id: str) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"local/{os.getpid()}"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


# --- worker side -------------------------------------------------------------------

_HANDLERS: dict[str, Callable] = {}
_INVOCATIONS = 0


def _init_worker(env: dict[str, str]) -> None:
    os.environ.update(env)
    # Function logs are not the CLI's output (on Lambda they go to CloudWatch): send the
    # worker's stdout to stderr so that e.g. `orchestrator predict --json | jq` stays clean.
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


def _load_handler(path: str, name: str) -> Callable:
    key = f"{path}:{name}"
    if key not in _HANDLERS:
        module_name = "handler_" + os.path.basename(os.path.dirname(path))
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        _HANDLERS[key] = getattr(module, name)
    return _HANDLERS[key]


def _run(path: str, name: str, event_json: str, function: str, memory_mb: int,
         timeout_s: float, request_id: str) -> dict:
    """Run one invocation in a worker; never raises (errors are part of the result)."""
    global _INVOCATIONS
    _INVOCATIONS += 1
    cold = _INVOCATIONS == 1
    start = time.perf_counter()
    try:
        handler = _load_handler(path, name)
        context = LocalContext(function, memory_mb, timeout_s, request_id)
        response = handler(json.loads(event_json), context)
        body = json.dumps(response)  # Lambda refuses responses that are not JSON
        return {"ok": True, "body": body, "ms": (time.perf_counter() - start) * 1000, "cold": cold}
    except Exception as err:  # the handler's failure is the function's error response
        error = {"errorType": type(err).__name__, "errorMessage": str(err),
                 "stackTrace": traceback.format_exc().splitlines()[-12:]}
        return {"ok": False, "error": error, "ms": (time.perf_counter() - start) * 1000, "cold": cold}


# --- orchestrator side -------------------------------------------------------------

class LocalInvoker(Invoker):
    """Runs handlers in per-function process pools of `concurrency` workers."""

    name = "local"

    def __init__(self, concurrency: int | None = None, env: dict[str, str] | None = None,
                 timeouts: dict[str, float] | None = None, start_method: str = "spawn") -> None:
        super().__init__()
        self.concurrency = concurrency or os.cpu_count() or 1
        self.env = dict(env or {})
        self.timeouts = dict(timeouts or {})  # per-function override of the template's timeout
        self.start_method = start_method
        self._pools: dict[str, ProcessPool] = {}

    def _pool(self, spec: FunctionSpec) -> ProcessPool:
        if spec.name not in self._pools:
            self._pools[spec.name] = ProcessPool(
                max_workers=self.concurrency,
                initializer=_init_worker,
                initargs=(self.env,),
                context=multiprocessing.get_context(self.start_method),
            )
        return self._pools[spec.name]

    def timeout_for(self, spec: FunctionSpec) -> float:
        return float(self.timeouts.get(spec.name, spec.timeout_s))

    def map(self, function: str, events: Iterable[dict], *,
            on_result: Callable[[Invocation], None] | None = None) -> Iterator[Invocation]:
        spec = function_spec(function)
        pool = self._pool(spec)
        timeout = self.timeout_for(spec)
        futures = {}
        for index, event in enumerate(events):
            request_id = str(uuid.uuid4())
            future = pool.schedule(
                _run,
                args=(str(spec.handler_path), spec.handler_name, json.dumps(event), spec.name,
                      spec.memory_mb, timeout, request_id),
                timeout=timeout,
            )
            futures[future] = (index, request_id, time.perf_counter())
        return self._collect(spec, futures, timeout, on_result)

    def _collect(self, spec, futures, timeout, on_result) -> Iterator[Invocation]:
        for future in concurrent.futures.as_completed(futures):
            index, request_id, submitted = futures[future]
            inv = Invocation(function=spec.name, index=index, request_id=request_id, ok=False,
                             memory_mb=spec.memory_mb)
            try:
                result = future.result()
            except concurrent.futures.TimeoutError:
                inv.error = f"Sandbox.Timedout: Task timed out after {timeout:.2f} seconds"
                inv.duration_ms = timeout * 1000
            except ProcessExpired as err:
                inv.error = f"Runtime.ExitError: worker exited with code {err.exitcode} (out of memory or crashed)"
            except Exception as err:  # e.g. the event could not be pickled
                inv.error = f"{type(err).__name__}: {err}"
            else:
                inv.duration_ms = result["ms"]
                inv.extra["cold"] = result["cold"]
                if result["ok"]:
                    inv.ok = True
                    inv.payload = json.loads(result["body"])
                else:
                    inv.error = f"{result['error']['errorType']}: {result['error']['errorMessage']}"
                    inv.payload = result["error"]
            inv.billed_ms = max(1, math.ceil(inv.duration_ms))
            inv.wall_ms = (time.perf_counter() - submitted) * 1000
            self._record(inv)
            if on_result:
                on_result(inv)
            yield inv

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
            pool.join()
        self._pools.clear()
