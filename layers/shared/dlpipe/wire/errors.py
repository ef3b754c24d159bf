"""The one error shape every handler answers with, and reading a reply that may be one."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError

from dlpipe.shared.problems import describe_errors

# --- errors: one shape for every handler --------------------------------------------

class ServingError(Exception):
    """A request that cannot be served; `status` is the response's statusCode, `kind` its ErrorResponse kind.

    What a message may reveal: the caller's own inputs (key, model, version, image name) and
    what the caller may choose from (the model names and versions in the model store), since
    that is what makes a message actionable; never where things live (bucket names, store
    URLs, paths, table names) nor the text of an infrastructure error, which may hold them.
    Those go to the function's log, which only the deployment's owner reads.
    """

    status = 500
    kind = "internal"


class BadRequest(ServingError, ValueError):
    status = 400
    kind = "bad_request"


class NotFound(ServingError, LookupError):
    status = 404
    kind = "not_found"


class ModelError(ServingError):
    """A model version whose files are missing or unusable (a deployment problem, not the caller's)."""

    status = 500
    kind = "model_error"


class Unavailable(ServingError):
    """The data store or the predictions table failed: the details are logged, not answered."""

    status = 503
    kind = "unavailable"


def validation_message(function: str, err: ValidationError) -> str:
    """Each field and its problem, from pydantic's errors without their input values, URLs or traceback."""
    return f"invalid {function} event: " + describe_errors(err, inputs=False, whole="event")


class ErrorResponse(BaseModel):
    """What every handler answers instead of raising: the warm container keeps serving, the caller reads why.

    `error` is the message for people (the field every client already reads), `kind` the
    class of problem for programs. Parsing is lenient (extra fields ignored, `kind` any
    string, empty from functions older than it), so that a function deployed from another
    version still gets its message through.
    """

    statusCode: int = Field(ge=400, le=599)
    error: str
    kind: str = Field(default="", description="invalid_event, bad_request, not_found, model_error, unavailable "
                                              "or internal")

    @classmethod
    def of(cls, err: ServingError) -> ErrorResponse:
        return cls(statusCode=err.status, error=str(err), kind=err.kind)

    @classmethod
    def invalid_event(cls, function: str, err: ValidationError) -> ErrorResponse:
        """The 400 for an event that does not parse: names each field and its problem."""
        return cls(statusCode=400, error=validation_message(function, err), kind="invalid_event")


Reply = TypeVar("Reply", bound=BaseModel)


def parse_reply(payload: object, model: type[Reply]) -> Reply | ErrorResponse:
    """A function's reply as `model`, or as the ErrorResponse it answered with; ValidationError if neither."""
    if isinstance(payload, dict) and payload.get("statusCode", 200) != 200:
        return ErrorResponse.model_validate(payload)
    return model.model_validate(payload)
