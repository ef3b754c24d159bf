"""Re-invoke the calls of a batch that failed: the round loop and `prepare` both need it."""

from __future__ import annotations

from typing import Callable

from orchestrator.invokers.base import Invocation


def invoke_with_retries(invoker, function: str, events: list[dict], retries: int,
                        on_result: Callable[[Invocation], None] = lambda inv: None,
                        retry_event: Callable[[dict, int], dict] | None = None,
                        check: Callable[[dict, object], str | None] | None = None,
                        ) -> tuple[dict[int, object], dict[int, tuple[int, str]]]:
    """Run `events` on `function`; re-invoke failed ones up to `retries` times.

    Returns ({index: payload} of successes, {index: (attempts, last error)} of failures).
    `retry_event(event, attempt)` may rewrite an event for its retry; `check(event, payload)`
    may turn a success into a failure (a bad response) by returning the reason.
    """
    done: dict[int, object] = {}
    errors: dict[int, tuple[int, str]] = {}
    pending = dict(enumerate(events))
    for attempt in range(retries + 1):
        if not pending:
            break
        order = list(pending)
        batch = [pending[i] if attempt == 0 or retry_event is None else retry_event(pending[i], attempt)
                 for i in order]
        pending = {}
        for inv in invoker.map(function, batch):
            index, event = order[inv.index], batch[inv.index]
            problem = inv.error if not inv.ok else (check(event, inv.payload) if check else None)
            on_result(inv)
            if problem:
                errors[index] = (attempt + 1, problem)
                pending[index] = event
            else:
                errors.pop(index, None)
                done[index] = inv.payload
    return done, errors
