"""The embedded engine: the very same handlers, in a pool of worker processes.

Each function gets its own pool, like Lambda gives each function its own execution
environments: workers stay warm between invocations (module-level state such as a loaded
model is reused), the JSON event is serialised and parsed as Lambda would, and the
handler gets a Lambda-like context. A call that overruns the function's timeout has its
worker killed and replaced, as Lambda does, and is reported as "Task timed out"; a worker
whose memory goes over the function's memory size is killed and replaced too, and the call
fails with Lambda's "Runtime.OutOfMemory". Each record carries the invocation's peak memory
(extra["max_memory_mb"], Lambda's "Max Memory Used").

Time and bill: this machine may have fewer cores than there are workers, so an invocation's
wall time here is not Lambda's. Each record carries the CPU time the worker process spent
on it (all threads, extra["cpu_ms"]) and the bytes it moved to and from the stores
(extra["store_bytes"]); its Lambda duration is projected from them
(orchestrator.invokers.projection, extra["projected_ms"]), and that is what is billed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import json
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator

from pebble import ProcessExpired, ProcessPool

from dlpipe.shared.memory import peak_rss_mb, reset_peak
from dlpipe.shared.store import STORE_BYTES
from orchestrator.functions import FunctionSpec, function_spec
from orchestrator.invokers.base import Invocation, Invoker
from orchestrator.invokers.projection import projected_ms
from orchestrator.settings import ENV_WORKER_LOG


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
WATCH_INTERVAL_S = 0.05    # how often a worker checks its memory while a handler runs
PR_SET_PDEATHSIG = 1       # prctl(2)


def _peak_rss_mb() -> float:
    """This process's peak resident memory in MB, since the last `reset_peak` (dlpipe.shared.memory).

    Where there is no VmHWM, ru_maxrss (the whole life of the process).
    """
    peak = peak_rss_mb()
    if peak is not None:
        return peak
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class MemoryGuard:
    """Holds a worker to its function's memory size, as Lambda does.

    A watchdog thread checks the peak every WATCH_INTERVAL_S while a handler runs, and the
    invocation checks it once more at its end (code that holds the GIL delays the watchdog,
    but its peak is kept). Over the size, the worker leaves a note with the peak for the
    invoker and kills itself with SIGKILL, as Lambda's out-of-memory kill does. Only while a
    handler runs: then the process holds none of the pool's locks.
    """

    def __init__(self, limit_mb: int, notes_dir: str) -> None:
        self.limit_mb = limit_mb
        self.notes_dir = notes_dir
        self._lock = threading.Lock()
        self._busy = threading.Event()
        self._started: float | None = None   # perf_counter() at the running invocation's start
        threading.Thread(target=self._watch, name="memory-guard", daemon=True).start()

    def begin(self) -> None:
        reset_peak()
        with self._lock:
            self._started = time.perf_counter()
        self._busy.set()

    def end(self) -> float:
        """The invocation's peak in MB; over the size, the worker dies here instead."""
        self._busy.clear()
        with self._lock:
            peak = self._check()
            self._started = None
        return peak

    def _watch(self) -> None:
        while self._busy.wait():
            time.sleep(WATCH_INTERVAL_S)
            with self._lock:
                if self._started is not None:
                    self._check()

    def _check(self) -> float:
        peak = _peak_rss_mb()
        if peak > self.limit_mb:
            note = {"max_memory_mb": math.ceil(peak), "ms": (time.perf_counter() - self._started) * 1000}
            try:
                with open(os.path.join(self.notes_dir, f"{os.getpid()}.json"), "w") as out:
                    json.dump(note, out)
            except OSError:
                pass  # the invoker then reports an exit without the peak
            os.kill(os.getpid(), signal.SIGKILL)
        return peak


_GUARD: MemoryGuard | None = None


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel kill this worker when the orchestrator dies, even by SIGKILL, so that no
    orphaned worker goes on running (and billing) its handler. Elsewhere the pool's own shutdown does it."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:   # the parent died before the request took effect
        os._exit(1)


def _init_worker(env: dict[str, str], memory_mb: int, notes_dir: str, parent: int | None = None) -> None:
    global _GUARD
    if parent is not None:
        _die_with_parent(parent)
    os.environ.update(env)
    # Function logs are not the CLI's output (on Lambda they go to CloudWatch): send the
    # worker's stdout to stderr so that e.g. `orchestrator predict --json | jq` stays clean.
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _output_to_log(os.environ.get(ENV_WORKER_LOG))
    _GUARD = MemoryGuard(memory_mb, notes_dir)


def _output_to_log(path: str | None) -> None:
    """Without --verbose: the worker's fds 1 and 2 into the log file, where TensorFlow's C++ logging
    (absl, oneDNN), which no environment variable fully silences, cannot reach the progress bars."""
    if not path:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


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
    _GUARD.begin()
    start, cpu_start, moved_before = time.perf_counter(), time.process_time(), STORE_BYTES.total
    try:
        handler = _load_handler(path, name)
        context = LocalContext(function, memory_mb, timeout_s, request_id)
        response = handler(json.loads(event_json), context)
        body = json.dumps(response)  # Lambda refuses responses that are not JSON
        result = {"ok": True, "body": body, "ms": (time.perf_counter() - start) * 1000, "cold": cold}
    except Exception as err:  # the handler's failure is the function's error response
        error = {"errorType": type(err).__name__, "errorMessage": str(err),
                 "stackTrace": traceback.format_exc().splitlines()[-12:]}
        result = {"ok": False, "error": error, "ms": (time.perf_counter() - start) * 1000, "cold": cold}
    result["max_memory_mb"] = math.ceil(_GUARD.end())
    result["cpu_ms"] = (time.process_time() - cpu_start) * 1000   # the whole process: TensorFlow's threads too
    result["store_bytes"] = STORE_BYTES.total - moved_before
    return result


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
        self._sizes: dict[str, int] = {}     # workers of each pool
        self._notes: tempfile.TemporaryDirectory | None = None  # out-of-memory workers' last words
        # Batches may come from two threads (a round's evaluation beside the next round's workers): a pool is
        # replaced, and calls scheduled on it, under this lock.
        self._lock = threading.Lock()

    def _pool(self, spec: FunctionSpec, calls: int) -> ProcessPool:
        """The function's pool, of as many workers as `calls` needs (never more than the concurrency).

        A pool smaller than a later batch needs is replaced by a larger one (its warm workers go):
        a pool sized to the concurrency alone would start --concurrency processes for 16 calls.
        """
        size = max(1, min(self.concurrency, calls))
        pool = self._pools.get(spec.name)
        if pool is not None and self._sizes[spec.name] < size:
            pool.close()
            pool.join()
            pool = None
        if pool is None:
            if self._notes is None:
                self._notes = tempfile.TemporaryDirectory(prefix="dlpipe-workers-")
            pool = self._pools[spec.name] = ProcessPool(
                max_workers=size,
                initializer=_init_worker,
                initargs=(self.env, spec.memory_mb, self._notes.name, os.getpid()),
                context=multiprocessing.get_context(self.start_method),
            )
            self._sizes[spec.name] = size
        return pool

    def _expired(self, inv: Invocation, err: ProcessExpired) -> None:
        """A worker that died during the call: killed for its memory (as Lambda reports it), or crashed."""
        note = self._out_of_memory_note(err.pid)
        if not note:
            inv.error = f"Runtime.ExitError: worker exited with code {err.exitcode} (crashed or killed)"
            return
        message = (f"Runtime exited with error: signal: killed (Max Memory Used: {note['max_memory_mb']} MB, "
                   f"over the function's Memory Size of {inv.memory_mb} MB)")
        inv.error = f"Runtime.OutOfMemory: {message}"
        inv.payload = {"errorType": "Runtime.OutOfMemory", "errorMessage": message}
        inv.duration_ms = note["ms"]
        inv.extra["max_memory_mb"] = note["max_memory_mb"]

    def _out_of_memory_note(self, pid: int | None) -> dict | None:
        """What a worker killed for its memory left behind (MemoryGuard), if it was that."""
        if self._notes is None or pid is None:
            return None
        path = os.path.join(self._notes.name, f"{pid}.json")
        try:
            with open(path) as note:
                return json.load(note)
        except (OSError, ValueError):
            return None
        finally:
            with contextlib.suppress(OSError):
                os.remove(path)

    def timeout_for(self, spec: FunctionSpec) -> float:
        return float(self.timeouts.get(spec.name, spec.timeout_s))

    def map(self, function: str, events: Iterable[dict], *,
            on_result: Callable[[Invocation], None] | None = None) -> Iterator[Invocation]:
        spec = function_spec(function)
        events = list(events)
        timeout = self.timeout_for(spec)
        futures = {}
        with self._lock:
            pool = self._pool(spec, len(events))
            for index, event in enumerate(events):
                request_id, body = str(uuid.uuid4()), json.dumps(event)
                future = pool.schedule(
                    _run,
                    args=(str(spec.handler_path), spec.handler_name, body, spec.name,
                          spec.memory_mb, timeout, request_id),
                    timeout=timeout,
                )
                futures[future] = (index, request_id, time.perf_counter(), len(body.encode()))
        return self._collect(spec, futures, timeout, on_result)

    def _collect(self, spec, futures, timeout, on_result) -> Iterator[Invocation]:
        for future in concurrent.futures.as_completed(futures):
            index, request_id, submitted, sent = futures[future]
            inv = Invocation(function=spec.name, index=index, request_id=request_id, ok=False,
                             memory_mb=spec.memory_mb, request_bytes=sent)
            try:
                result = future.result()
            except concurrent.futures.TimeoutError:
                inv.error = f"Sandbox.Timedout: Task timed out after {timeout:.2f} seconds"
                inv.duration_ms = timeout * 1000
            except ProcessExpired as err:
                self._expired(inv, err)
            except Exception as err:  # e.g. the event could not be pickled
                inv.error = f"{type(err).__name__}: {err}"
            else:
                inv.duration_ms = result["ms"]
                inv.extra["cold"] = result["cold"]
                inv.extra["max_memory_mb"] = result["max_memory_mb"]
                inv.extra["cpu_ms"] = round(result["cpu_ms"], 3)
                inv.extra["store_bytes"] = result["store_bytes"]
                inv.extra["projected_ms"] = round(projected_ms(spec.name, result["cpu_ms"], spec.memory_mb,
                                                               result["store_bytes"]), 3)
                if result["ok"]:
                    inv.ok = True
                    inv.payload = json.loads(result["body"])
                    inv.response_bytes = len(result["body"].encode())
                else:
                    inv.error = f"{result['error']['errorType']}: {result['error']['errorMessage']}"
                    inv.payload = result["error"]
            # Lambda's duration projected from what was measured; a killed call (timeout, memory) is billed as it ran
            inv.billed_ms = max(1, math.ceil(inv.extra.get("projected_ms", inv.duration_ms)))
            inv.wall_ms = (time.perf_counter() - submitted) * 1000
            self._record(inv)
            if on_result:
                on_result(inv)
            yield inv

    def close(self, abort: bool = False) -> None:
        """Let the workers finish their calls and exit; with `abort` (an interrupt), stop them at once."""
        for pool in self._pools.values():
            if abort:
                pool.stop()
            else:
                pool.close()
            pool.join()
        self._pools.clear()
        if self._notes is not None:
            self._notes.cleanup()
            self._notes = None
