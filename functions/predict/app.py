"""The predict function: one image in, its top-k classes out, the prediction recorded.

Thin on purpose: parse the event with the model the orchestrator builds it from, call the
core, answer with a wire model. Every failure is answered, never raised, as an
ErrorResponse (4xx for the caller's mistakes, 5xx for the deployment's), so the warm
container keeps its loaded model and keeps serving. What the answer may reveal is decided
in `dlpipe.wire.ServingError`: the details (store URLs, paths, tracebacks) go to the log
only. No TensorFlow here: LiteRT only.
"""

from __future__ import annotations

# First, before anything imports pydantic or numpy: a layer built for another Python or CPU stops here,
# saying so, instead of failing on a compiled module.
import dlpipe  # noqa: F401

# isort: split


from aws_lambda_powertools import Logger

from dlpipe.predict.predictor import Predictor
from dlpipe.shared.config import ServingSettings, Settings
from dlpipe.shared.table import open_table
from dlpipe.wire import ErrorResponse, PredictRequest, ServingError
from dlpipe.wire.events import parsed_event

logger = Logger(service="predict")
_predictor: Predictor | None = None


def predictor() -> Predictor:
    """Created on the first request and kept while the container is warm (models stay loaded)."""
    global _predictor
    if _predictor is None:
        settings, serving = Settings.from_env(), ServingSettings.from_env()
        _predictor = Predictor(settings.data_store(), settings.model_store(), open_table(settings.table_url),
                               num_threads=serving.predict_threads, latest_ttl_s=serving.latest_ttl_s)
    return _predictor


@logger.inject_lambda_context
@parsed_event(PredictRequest, "predict", logger)
def handler(request, context) -> dict:
    try:
        response = predictor().predict(request, context.aws_request_id)
    except ServingError as err:
        cause = repr(err.__cause__) if err.__cause__ else None
        logger.warning("request refused", extra={"status": err.status, "reason": str(err), "model": request.model,
                                                 "cause": cause})
        return ErrorResponse.of(err).model_dump()
    except Exception:
        logger.exception("request failed", extra={"model": request.model})
        return ErrorResponse(statusCode=500, kind="internal",
                             error=f"internal error; the function's log has the details "
                                   f"(request id {context.aws_request_id})").model_dump()
    logger.info("predicted", extra={"id": response.id, "model": response.model.model_dump(),
                                    "top1": response.top[0].label, "latency_ms": response.latency_ms})
    return response.model_dump()
