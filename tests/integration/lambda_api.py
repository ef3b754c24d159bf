"""A small Lambda Invoke API on 127.0.0.1, for testing the `lambda` invoker over real HTTP.

moto's Lambda runs functions in Docker, which CI does not have. This server answers
`POST /2015-03-31/functions/{name}/invocations` the way Lambda does, for what the
orchestrator relies on: the X-Amz-Function-Error header and error payload of a failed
handler, the X-Amz-Log-Result tail with its REPORT line, 429 TooManyRequestsException when
a function's concurrency is used up (or on demand), the function's own timeout, the 6 MB
payload limits, and 404 for an unknown function. Handlers run in-process, one thread per
call, with a Lambda-like context; they can be any callable or a real handler file.

    with LambdaAPI() as api:
        api.add("echo", lambda event, context: event)
        boto3.client("lambda", endpoint_url=api.url).invoke(FunctionName="echo", Payload=b"{}")
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

from orchestrator.invokers.local import LocalContext

PAYLOAD_LIMIT = 6 * 1024 * 1024       # synchronous request and response, bytes
LOG_TAIL_LIMIT = 4096                 # LogType=Tail returns the last 4 KB
ACCOUNT = "123456789012"
REGION = "us-east-1"


@dataclass
class Function:
    name: str
    handler: Callable[[Any, Any], Any]
    memory_mb: int = 1024
    timeout_s: float = 30.0
    reserved_concurrency: int | None = None  # None: unlimited
    in_flight: int = 0
    peak_in_flight: int = 0
    throttle_next: int = 0                   # answer the next N calls with 429


@dataclass
class Call:
    """One request the server answered (throttled ones included)."""

    function: str
    status: int
    request_id: str
    event: Any = None
    error_type: str | None = None
    duration_ms: float = 0.0
    billed_ms: int = 0
    received: float = field(default_factory=time.monotonic)


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops connections when a hundred clients connect at
    # once (the client sees "connection closed before a valid response"); Lambda's does not.
    request_queue_size = 1024


class LambdaAPI:
    """Threaded HTTP server implementing Lambda's synchronous Invoke call."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.functions: dict[str, Function] = {}
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        api = self

        class Handler(_InvokeHandler):
            server_api = api

        self.server = _Server((host, port), Handler)
        self.server.daemon_threads = True  # a slow handler never holds up shutdown
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="lambda-api", daemon=True)

    # --- set-up ------------------------------------------------------------------------

    def add(self, name: str, handler: Callable[[Any, Any], Any], *, memory_mb: int = 1024,
            timeout_s: float = 30.0, reserved_concurrency: int | None = None) -> Function:
        function = Function(name, handler, memory_mb, timeout_s, reserved_concurrency)
        self.functions[name] = function
        return function

    def add_handler_file(self, name: str, path: str, attribute: str = "handler", **kwargs) -> Function:
        """Serve a real handler file (e.g. functions/augment/app.py) under `name`."""
        module_name = f"lambda_api_{name.replace('-', '_')}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return self.add(name, getattr(module, attribute), **kwargs)

    def throttle(self, name: str, times: int) -> None:
        """Answer the next `times` calls of `name` with 429 TooManyRequestsException."""
        with self.lock:
            self.functions[name].throttle_next += times

    def calls_of(self, name: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.function == name]

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> LambdaAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LambdaAPI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _InvokeHandler(BaseHTTPRequestHandler):
    server_api: LambdaAPI
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    # Headers and body go out as two writes; with Nagle's algorithm the body then waits ~40 ms
    # for the client's delayed ACK, a delay that Lambda's own endpoint does not add.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass

    # --- responses ---------------------------------------------------------------------

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (read timeout): Lambda finishes the call regardless

    def _service_error(self, status: int, error_type: str, message: str, request_id: str, **extra) -> None:
        body = json.dumps({"Type": "User", "message": message, **extra}).encode()
        self._send(status, body, {"x-amzn-RequestId": request_id, "x-amzn-ErrorType": error_type})

    # --- the Invoke call ---------------------------------------------------------------

    def do_POST(self) -> None:
        api = self.server_api
        request_id = str(uuid.uuid4())
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = urlparse(self.path).path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "2015-03-31" or parts[1] != "functions" or parts[3] != "invocations":
            return self._service_error(404, "UnknownOperationException", f"no such operation: {self.path}",
                                       request_id)
        name = unquote(parts[2]).split(":function:")[-1].split(":")[0]  # a name, or an ARN
        function = api.functions.get(name)
        if function is None:
            with api.lock:
                api.calls.append(Call(name, 404, request_id, error_type="ResourceNotFoundException"))
            return self._service_error(
                404, "ResourceNotFoundException",
                f"Function not found: arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}", request_id)
        invocation_type = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type != "RequestResponse":
            return self._service_error(400, "InvalidParameterValueException",
                                       f"this test server only implements RequestResponse, not {invocation_type}",
                                       request_id)
        if len(body) > PAYLOAD_LIMIT:
            with api.lock:
                api.calls.append(Call(name, 413, request_id, error_type="RequestTooLargeException"))
            return self._service_error(413, "RequestTooLargeException",
                                       f"Request must be smaller than {PAYLOAD_LIMIT} bytes for the InvokeFunction "
                                       "operation", request_id)
        try:
            event = json.loads(body) if body else {}
        except ValueError as err:
            with api.lock:
                api.calls.append(Call(name, 400, request_id, error_type="InvalidRequestContentException"))
            return self._service_error(400, "InvalidRequestContentException",
                                       f"Could not parse request body into json: {err}", request_id)

        with api.lock:
            throttled = function.throttle_next > 0 or (
                function.reserved_concurrency is not None and function.in_flight >= function.reserved_concurrency)
            if throttled:
                function.throttle_next = max(0, function.throttle_next - 1)
                api.calls.append(Call(name, 429, request_id, event, error_type="TooManyRequestsException"))
            else:
                function.in_flight += 1
                function.peak_in_flight = max(function.peak_in_flight, function.in_flight)
                call = Call(name, 0, request_id, event)  # status 0: still running
                api.calls.append(call)
        if throttled:
            return self._service_error(429, "TooManyRequestsException", "Rate Exceeded.", request_id,
                                       Reason="ReservedFunctionConcurrentInvocationLimitExceeded")
        try:
            self._run(function, event, call)
        finally:
            with api.lock:
                function.in_flight -= 1

    def _run(self, function: Function, event: Any, call: Call) -> None:
        """Run the handler with the function's timeout; answer as Lambda does."""
        request_id = call.request_id
        outcome: dict[str, Any] = {}
        context = LocalContext(function.name, function.memory_mb, function.timeout_s, request_id)
        context.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function.name}"

        def target() -> None:
            try:
                outcome["result"] = function.handler(event, context)
            except Exception as err:  # the handler's failure is the function's error response
                outcome["error"] = {"errorMessage": str(err), "errorType": type(err).__name__,
                                    "requestId": request_id,
                                    "stackTrace": traceback.format_exc().splitlines()[-12:]}

        start = time.perf_counter()
        worker = threading.Thread(target=target, name=f"fn-{function.name}", daemon=True)
        worker.start()
        worker.join(function.timeout_s)
        duration_ms = (time.perf_counter() - start) * 1000
        status_note = ""
        if worker.is_alive():  # Lambda stops the environment; a thread cannot be, so it is abandoned
            duration_ms = function.timeout_s * 1000
            status_note = "\tStatus: timeout"
            error = {"errorType": "Sandbox.Timedout",
                     "errorMessage": f"RequestId: {request_id} Error: Task timed out after "
                                     f"{function.timeout_s:.2f} seconds"}
        else:
            error = outcome.get("error")
        if error is None:
            try:
                payload = json.dumps(outcome.get("result")).encode()
            except (TypeError, ValueError) as err:
                error = {"errorType": "Runtime.MarshalError", "errorMessage": f"Unable to marshal response: {err}",
                         "requestId": request_id}
            else:
                if len(payload) > PAYLOAD_LIMIT:
                    error = {"errorType": "Function.ResponseSizeTooLarge",
                             "errorMessage": f"Response payload size ({len(payload)} bytes) exceeded maximum "
                                             f"allowed payload size ({PAYLOAD_LIMIT} bytes)."}
        billed_ms = max(1, math.ceil(duration_ms))
        lines = [f"START RequestId: {request_id} Version: $LATEST"]
        if error is not None:
            lines.append(f"[ERROR] {error['errorType']}: {error['errorMessage']}")
            lines += error.get("stackTrace", [])
        lines += [f"END RequestId: {request_id}",
                  f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\tBilled Duration: {billed_ms} ms"
                  f"\tMemory Size: {function.memory_mb} MB\tMax Memory Used: {min(function.memory_mb, 64)} MB"
                  f"{status_note}\t", ""]
        log_tail = "\n".join(lines).encode()[-LOG_TAIL_LIMIT:]
        headers = {"x-amzn-RequestId": request_id, "X-Amz-Executed-Version": "$LATEST"}
        if self.headers.get("X-Amz-Log-Type") == "Tail":
            headers["X-Amz-Log-Result"] = base64.b64encode(log_tail).decode()
        if error is not None:
            headers["X-Amz-Function-Error"] = "Unhandled"
            payload = json.dumps(error).encode()
        with self.server_api.lock:
            call.status, call.duration_ms, call.billed_ms = 200, duration_ms, billed_ms
            call.error_type = error and error["errorType"]
        self._send(200, payload, headers)
