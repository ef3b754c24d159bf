"""The invoker interface: run a function on a batch of JSON events, record each call."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Invocation:
    """One call of a function, whichever engine ran it."""

    function: str
    index: int                      # position of the event in the submitted batch
    request_id: str
    ok: bool
    payload: Any = None             # the handler's JSON response, parsed
    error: str | None = None        # "ErrorType: message" as the function reported it
    duration_ms: float = 0.0        # handler time as measured by the engine
    billed_ms: int = 0
    memory_mb: int = 0
    architecture: str = "x86_64"    # Lambda prices arm64 lower; local runs are priced as x86_64
    attempts: int = 1
    wall_ms: float = 0.0            # client-side round trip, including queueing
    request_bytes: int = 0          # sent by the orchestrator: the event, once per attempt
    response_bytes: int = 0         # received: the reply and its log tail (what a link to AWS carries)
    extra: dict = field(default_factory=dict)

    @property
    def lambda_seconds(self) -> float:
        """Its duration on Lambda: projected from CPU time and transfers (local invoker), else as measured."""
        return float(self.extra.get("projected_ms", self.duration_ms)) / 1000.0


class Invoker(ABC):
    """Runs handlers on JSON events: locally in processes, or on AWS Lambda."""

    name = "invoker"

    def __init__(self) -> None:
        self.records: list[Invocation] = []
        self._lock = threading.Lock()

    def _record(self, inv: Invocation) -> Invocation:
        with self._lock:
            self.records.append(inv)
        return inv

    @abstractmethod
    def map(self, function: str, events: Iterable[dict], *,
            on_result: Callable[[Invocation], None] | None = None) -> Iterator[Invocation]:
        """Invoke `function` once per event, concurrently; yield results as they complete.

        A failed invocation is yielded with ok=False, never raised: the caller decides
        whether a failure sinks the job.
        """

    def invoke(self, function: str, event: dict) -> Invocation:
        return next(iter(self.map(function, [event])))

    def close(self, abort: bool = False) -> None:  # noqa: B027 - a hook: an invoker that holds nothing need not override it
        """Release workers and connections; `abort` (an interrupt): without waiting for calls under way."""

    def __enter__(self) -> Invoker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
