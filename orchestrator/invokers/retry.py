"""Re-invoking the events that failed, for any function: the commands' one retry loop.

The invokers retry only what the service asks them to (throttles); a function error or a
bad response is the caller's to judge, and this is where it is judged again and again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dlpipe.wire import ErrorResponse, parse_reply
from orchestrator.invokers.base import Invocation, Invoker

Reply = TypeVar("Reply", bound=BaseModel)
Judged = TypeVar("Judged")


def invoke_for_replies(invoker: Invoker, function: str, events: list[dict], retries: int, reply: type[Reply],
                       on_result: Callable[[Invocation], None] | None = None,
                       retry_event: Callable[[dict, int], dict] | None = None,
                       accept: Callable[[dict, Reply], str | None] | None = None,
                       ) -> tuple[dict[int, Reply], dict[int, tuple[int, str]]]:
    """`invoke_with_retries` whose successes are replies parsed once into `reply`, the wire model.

    An error answer fails with its message, a payload that is not `reply` as a bad response;
    `accept(event, parsed)` may refuse a well-formed reply (its message is the failure).
    """
    def judge(event: dict, payload: object) -> tuple[Reply | None, str | None]:
        parsed, problem = judged_reply(payload, reply)
        if parsed is None:
            return None, problem
        return parsed, accept(event, parsed) if accept else None

    return _retried(invoker, function, events, retries, judge, on_result, retry_event)


def judged_reply(payload: object, reply: type[Reply]) -> tuple[Reply | None, str | None]:
    """A successful invocation's payload as `reply`, or why it is not one: the function's error answer, or a
    bad response."""
    try:
        parsed = parse_reply(payload, reply)
    except ValidationError as err:
        return None, f"bad response ({err.error_count()} problems): {str(payload)[:200]}"
    if isinstance(parsed, ErrorResponse):
        return None, parsed.error
    return parsed, None


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
    def judge(event: dict, payload: dict) -> tuple[dict, str | None]:
        return payload, check(event, payload) if check else None

    return _retried(invoker, function, events, retries, judge, on_result, retry_event)


def _retried(invoker: Invoker, function: str, events: list[dict], retries: int,
             judge: Callable[[dict, Any], tuple[Judged | None, str | None]],
             on_result: Callable[[Invocation], None] | None,
             retry_event: Callable[[dict, int], dict] | None) -> tuple[dict[int, Judged], dict[int, tuple[int, str]]]:
    done: dict[int, Judged] = {}
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
            value, problem = (None, inv.error) if not inv.ok else judge(event, inv.payload)
            if on_result is not None:
                on_result(inv)
            if problem:
                errors[index] = (attempt + 1, problem)
                pending[index] = event
            else:
                errors.pop(index, None)
                done[index] = value  # type: ignore[assignment]  # no problem: judged a value
    return done, errors
