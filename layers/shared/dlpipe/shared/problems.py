"""One way to say what is wrong with input that a pydantic model refused: each field and its problem."""

from __future__ import annotations

from pydantic import ValidationError


def describe_errors(err: ValidationError, inputs: bool = True, whole: str = "") -> str:
    """pydantic's errors on one line, each naming its field (`whole` for the input as a whole).

    inputs: add the value given for each field. Off for what reaches callers we do not trust
    with it (an event's values may be large or private).
    """
    problems = []
    for e in err.errors(include_url=False, include_context=False):
        field = ".".join(str(p) for p in e.get("loc", ())) or whole
        message = e.get("msg", "invalid").removeprefix("Value error, ")
        problem = f"{field}: {message}" if field else message
        problems.append(f"{problem} (got {e.get('input')!r})" if inputs and field else problem)
    return "; ".join(problems)
