"""Re-invoking the events that failed, for any function: the commands' one retry loop.

The invokers retry only what the service asks them to (throttles); a function error or a
bad response is the caller's to judge, and this is where it is judged again and again.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ValidationError

from dlpipe.wire import ErrorResponse, parse_reply
from orchestrator.invokers.base import Invocation, Invoker


def reply_check(model: type[BaseModel]) -> Callable[[dict, object], str | None]:
    """A `check` for `invoke_with_retries`: an error answer fails with its message, a reply that is not `model` too."""
    def check(event: dict, payload: object) -> str | None:
        try:
            reply = parse_reply(payload, model)
        except ValidationError as err:
            return f"bad response ({err.error_count()} problems): {str(payload)[:200]}"
        return reply.error if isinstance(reply, ErrorResponse) else None
    return check


def invoke_with_retries(invoker: Invoker, function: str, events: list[dict], retries: int,
                        on_result: Callable[[Invocation], None] | None = None,
                        retry_event: Callable[[dict, int], dict] | None = None,
                        check: Callable[[dict, dict], str | None] | None = None,
                        ) -> tuple[dict[int, dict], dict[int, tuple[int, str]]]:
    """Run `events` on `function`; re-invoke the failed ones up to `retries` times.

    Returns ({index: payload} of successes, {index: (attempts, last error)} of failures),
    indexed by position in `events`. `check(event, payload)` may turn a success into a
    failure (a bad response); `retry_event(event, attempt)` rewrites an event before its
    attempt number `attempt` (1 for the first retry), e.g. to give it a new output key.
    `on_result` sees every invocation, retries included; each carries its event's position in
    `events` as extra["event"].
    """
    done: dict[int, dict] = {}
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
            inv.extra["event"] = index
            problem = inv.error if not inv.ok else (check(event, inv.payload) if check else None)
            if on_result is not None:
                on_result(inv)
            if problem:
                errors[index] = (attempt + 1, problem)
                pending[index] = event
            else:
                errors.pop(index, None)
                done[index] = inv.payload
    return done, errors
