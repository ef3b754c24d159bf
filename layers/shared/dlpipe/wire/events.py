"""The one way every handler reads its event: as its wire model, or a 400 that names each problem.

A malformed event is the caller's mistake, not the function's: answering it (rather than
raising) keeps a stack trace out of the orchestrator, a FunctionError off Lambda's metrics,
and a warm container serving.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.parser import ValidationError, parse

from dlpipe.wire import ErrorResponse


def parsed_event(model: Any, function: str, logger) -> Callable:
    """Decorate `handler(request, context)` into `handler(event, context)` that parses the event first."""
    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def wrapper(event: dict, context) -> dict:
            try:
                request = parse(event=event, model=model)
            except ValidationError as err:
                logger.warning("invalid event", extra={"problems": err.errors(include_url=False, include_input=False)})
                return ErrorResponse.invalid_event(function, err).model_dump()
            return handler(request, context)
        return wrapper
    return decorate
