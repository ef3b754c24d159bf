"""The predict function: one image in, its top-k classes out, the prediction recorded.

Thin on purpose: parse the event with the model the orchestrator builds it from, call the
core, shape an API-like response. Bad requests (invalid event, not an image, unknown key
or model) are answered with a 4xx statusCode and a message, never raised, so the warm
container keeps its loaded model and keeps serving. No TensorFlow here: LiteRT only.
"""

from __future__ import annotations

import dlpipe  # noqa: F401  first: a layer built for another Python or CPU stops here, saying so

# isort: split

import os

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import ValidationError, parse

from dlpipe.predict.serving import Predictor, error_response
from dlpipe.shared.config import Settings
from dlpipe.shared.table import open_table
from dlpipe.wire import PredictRequest, ServingError

logger = Logger(service="predict")
_predictor: Predictor | None = None


def predictor() -> Predictor:
    """Created on the first request and kept while the container is warm (models stay loaded)."""
    global _predictor
    if _predictor is None:
        settings = Settings.from_env()
        _predictor = Predictor(settings.data_store(), settings.model_store(), open_table(settings.table_url),
                               num_threads=int(os.environ.get("DLPIPE_PREDICT_THREADS", "1")),
                               latest_ttl_s=float(os.environ.get("DLPIPE_LATEST_TTL_S", "10")))
    return _predictor


def _validation_message(err: ValidationError) -> str:
    problems = []
    for e in err.errors():
        where = ".".join(str(p) for p in e.get("loc", ())) or "event"
        problems.append(f"{where}: {e.get('msg', 'invalid').removeprefix('Value error, ')}")
    return "invalid predict event: " + "; ".join(problems)


@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    try:
        request = parse(event=event, model=PredictRequest)
    except ValidationError as err:
        logger.warning("invalid event", extra={"problems": err.errors(include_url=False, include_input=False)})
        return error_response(400, _validation_message(err))
    except Exception as err:  # not even a JSON object
        return error_response(400, f"invalid predict event: {err}")
    try:
        response = predictor().predict(request, context.aws_request_id)
    except ServingError as err:
        logger.warning("request refused", extra={"status": err.status, "reason": str(err), "model": request.model})
        return error_response(err.status, str(err))
    logger.info("predicted", extra={"id": response["id"], "model": response["model"],
                                    "top1": response["top"][0]["label"], "latency_ms": response["latency_ms"]})
    return response
