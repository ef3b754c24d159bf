"""The train function (container image): init, warm, pack, train, evaluate and aggregate actions.

Thin on purpose: parse the event into the core's pydantic models, call the core
(dlpipe.train.worker), log and return its JSON-safe result. A malformed event is answered
with a 400 ErrorResponse naming each field and its problem, before any work; a missing or
corrupt shard fails the invocation with a message naming the problem; the orchestrator
retries or reports it. TensorFlow is loaded only by the actions that need it.
"""

from __future__ import annotations

import os
from functools import lru_cache

# TensorFlow's C++ start-up chatter (CPU features, oneDNN) is noise in function logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from aws_lambda_powertools import Logger

from dlpipe import wire
from dlpipe.shared.config import Settings
from dlpipe.shared.store import ObjectStore
from dlpipe.train import aggregate
from dlpipe.train import worker as training
from dlpipe.wire.events import parsed_event

logger = Logger(service="train")


@lru_cache(maxsize=4)
def _stores(settings: Settings) -> tuple[ObjectStore, ObjectStore]:
    # Kept across warm invocations: boto3 clients are slow to create.
    return settings.data_store(), settings.model_store()


@logger.inject_lambda_context
@parsed_event(wire.TrainEvent, "train", logger)
def handler(request, context) -> dict:
    data_store, model_store = _stores(Settings.from_env())
    if isinstance(request, wire.TrainRequest):
        logger.append_keys(run=request.run, round=request.round, worker=request.worker, attempt=request.attempt)
        result = training.run_train(request, data_store, model_store,
                                    remaining_ms=context.get_remaining_time_in_millis)
    elif isinstance(request, wire.EvaluateRequest):
        result = training.run_evaluate(request, data_store, model_store)
    elif isinstance(request, wire.WarmRequest):
        result = training.run_warm(request)
    elif isinstance(request, wire.AggregateRequest):
        result = aggregate.run_aggregate(request, model_store)
    elif isinstance(request, wire.PackRequest):
        result = training.run_pack(request, data_store, remaining_ms=context.get_remaining_time_in_millis)
        for skipped in result["skipped"]:
            logger.warning("image skipped", extra=skipped)
    else:
        result = training.run_init(request, model_store)
    if not isinstance(result, dict):
        result = result.model_dump(mode="json")
    logger.info(f"{result['action']} done", extra={k: v for k, v in result.items() if k != "skipped"})
    return result
