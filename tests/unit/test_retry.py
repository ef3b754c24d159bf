"""invoke_with_retries on a scripted invoker: what is retried, how often, with which event."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from pydantic import BaseModel

from orchestrator.invokers.base import Invocation, Invoker
from orchestrator.invokers.retry import invoke_for_replies, invoke_with_retries


class ScriptedInvoker(Invoker):
    """Answers each event with `answer(event)`: a payload, or an Exception that becomes a failed call.

    Results come back in reverse order, as a concurrent engine may return them.
    """

    name = "scripted"

    def __init__(self, answer: Callable[[dict], object]) -> None:
        super().__init__()
        self.answer = answer
        self.batches: list[tuple[str, list[dict]]] = []

    def map(self, function: str, events: Iterable[dict], *,
            on_result: Callable[[Invocation], None] | None = None) -> Iterator[Invocation]:
        events = list(events)
        self.batches.append((function, events))
        results = []
        for index, event in enumerate(events):
            outcome = self.answer(event)
            failed = isinstance(outcome, Exception)
            results.append(self._record(Invocation(
                function=function, index=index, request_id=f"r{len(self.records)}", ok=not failed,
                payload=None if failed else outcome, error=f"{type(outcome).__name__}: {outcome}" if failed else None)))
        return iter(reversed(results))


def fails_first(times: dict[int, int]) -> Callable[[dict], object]:
    """Event {"n": n} fails its first times[n] calls, then answers {"n": n, "call": k}."""
    calls: dict[int, int] = {}

    def answer(event: dict) -> object:
        n = event["n"]
        calls[n] = calls.get(n, 0) + 1
        if calls[n] <= times.get(n, 0):
            return RuntimeError(f"event {n} failed on call {calls[n]}")
        return {"n": n, "call": calls[n]}

    return answer


def test_everything_succeeding_is_one_batch_on_the_named_function():
    invoker = ScriptedInvoker(fails_first({}))
    seen = []
    done, errors = invoke_with_retries(invoker, "augment", [{"n": 0}, {"n": 1}, {"n": 2}], 3, seen.append)
    assert done == {0: {"n": 0, "call": 1}, 1: {"n": 1, "call": 1}, 2: {"n": 2, "call": 1}}
    assert errors == {}
    assert invoker.batches == [("augment", [{"n": 0}, {"n": 1}, {"n": 2}])]
    assert len(seen) == 3


def test_failed_events_are_retried_alone_and_indexed_by_their_first_position():
    invoker = ScriptedInvoker(fails_first({1: 2, 3: 1}))
    seen = []
    events = [{"n": n} for n in range(4)]
    done, errors = invoke_with_retries(invoker, "pack", events, 2, seen.append)
    assert errors == {}
    assert {i: p["call"] for i, p in done.items()} == {0: 1, 1: 3, 2: 1, 3: 2}
    retried = [sorted(e["n"] for e in batch) for _, batch in invoker.batches[1:]]  # in the order they came back
    assert invoker.batches[0][1] == events and retried == [[1, 3], [1]]
    assert {f for f, _ in invoker.batches} == {"pack"}
    assert len(seen) == 4 + 2 + 1                     # on_result sees the retries too
    assert [inv.ok for inv in seen].count(False) == 3


def test_an_event_that_keeps_failing_reports_its_attempts_and_last_error():
    invoker = ScriptedInvoker(fails_first({0: 99}))
    done, errors = invoke_with_retries(invoker, "train", [{"n": 0}, {"n": 1}], 2, lambda inv: None)
    assert done == {1: {"n": 1, "call": 1}}
    assert errors == {0: (3, "RuntimeError: event 0 failed on call 3")}
    assert len(invoker.batches) == 3


def test_no_retries_means_one_attempt():
    invoker = ScriptedInvoker(fails_first({0: 1}))
    done, errors = invoke_with_retries(invoker, "train", [{"n": 0}], 0, lambda inv: None)
    assert done == {} and errors == {0: (1, "RuntimeError: event 0 failed on call 1")}
    assert len(invoker.batches) == 1


def test_a_check_turns_a_bad_response_into_a_failure_that_is_retried():
    invoker = ScriptedInvoker(fails_first({}))

    def check(event: dict, payload: dict) -> str | None:
        return "empty on the first call" if payload["call"] == 1 and event["n"] == 0 else None

    done, errors = invoke_with_retries(invoker, "train", [{"n": 0}, {"n": 1}], 1, lambda inv: None, check=check)
    assert errors == {}
    assert done == {0: {"n": 0, "call": 2}, 1: {"n": 1, "call": 1}}
    assert [batch for _, batch in invoker.batches] == [[{"n": 0}, {"n": 1}], [{"n": 0}]]


def test_a_check_that_never_passes_leaves_its_message_as_the_error():
    invoker = ScriptedInvoker(fails_first({}))
    done, errors = invoke_with_retries(invoker, "train", [{"n": 0}], 1, lambda inv: None,
                                       check=lambda event, payload: f"bad response {payload}")
    assert done == {}
    assert errors == {0: (2, "bad response {'n': 0, 'call': 2}")}


def test_retry_event_rewrites_each_retry_with_its_attempt_number():
    invoker = ScriptedInvoker(fails_first({0: 2}))

    def retry_event(event: dict, attempt: int) -> dict:
        return {**event, "output": f"w0-attempt{attempt}", "attempt": attempt}

    done, errors = invoke_with_retries(invoker, "train", [{"n": 0, "output": "w0"}, {"n": 1, "output": "w1"}], 2,
                                       lambda inv: None, retry_event=retry_event)
    assert errors == {}
    assert [batch for _, batch in invoker.batches] == [
        [{"n": 0, "output": "w0"}, {"n": 1, "output": "w1"}],
        [{"n": 0, "output": "w0-attempt1", "attempt": 1}],
        [{"n": 0, "output": "w0-attempt2", "attempt": 2}],
    ]
    assert done[0] == {"n": 0, "call": 3}


def test_the_check_sees_the_rewritten_event():
    invoker = ScriptedInvoker(lambda event: {"written": event["output"]})
    checked = []

    def check(event: dict, payload: dict) -> str | None:
        checked.append((event["output"], payload["written"]))
        return None if event.get("attempt") else "first try refused"

    done, errors = invoke_with_retries(invoker, "train", [{"output": "a"}], 1, lambda inv: None,
                                       retry_event=lambda event, attempt: {**event, "output": "b", "attempt": attempt},
                                       check=check)
    assert checked == [("a", "a"), ("b", "b")]
    assert done == {0: {"written": "b"}} and errors == {}


class Counted(BaseModel):
    n: int
    call: int


def test_replies_are_parsed_once_into_their_model_and_bad_ones_are_retried_with_the_reason():
    """An error answer fails with its message, a reply that is not the model as a bad response, `accept` too."""
    answers = {0: [{"statusCode": 500, "error": "out of memory"}, {"n": 0, "call": 2}],
               1: [{"unexpected": True}, {"unexpected": True}],
               2: [{"n": 2, "call": 1}],
               3: [{"n": 3, "call": 0}, {"n": 3, "call": 0}]}
    calls: dict[int, int] = {}

    def answer(event: dict) -> object:
        calls[event["n"]] = calls.get(event["n"], 0) + 1
        return answers[event["n"]][calls[event["n"]] - 1]

    invoker = ScriptedInvoker(answer)
    done, errors = invoke_for_replies(invoker, "train", [{"n": n} for n in range(4)], 1, Counted,
                                      accept=lambda event, reply: "call 0" if reply.call == 0 else None)
    assert done == {0: Counted(n=0, call=2), 2: Counted(n=2, call=1)}
    assert all(isinstance(reply, Counted) for reply in done.values())
    assert errors[1][0] == 2 and errors[1][1].startswith("bad response (")
    assert errors[3] == (2, "call 0")


def test_an_error_answer_that_keeps_coming_is_the_failure_message():
    invoker = ScriptedInvoker(lambda event: {"statusCode": 400, "error": "no such run", "kind": "not_found"})
    done, errors = invoke_for_replies(invoker, "train", [{"n": 0}], 0, Counted)
    assert done == {} and errors == {0: (1, "no such run")}
