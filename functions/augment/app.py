"""The augment function: a batch of source images in, their variants written to the store.

Thin on purpose: parse the event with the model the orchestrator builds it from, call the
core, return per-image results. A bad image is a result, not an error; a malformed event is
answered with a 400 ErrorResponse naming each field and its problem, and nothing is written.
"""

from __future__ import annotations

# First, before anything imports pydantic or numpy: a layer built for another Python or CPU stops here,
# saying so, instead of failing on a compiled module.
import dlpipe  # noqa: F401

# isort: split

from functools import lru_cache

from aws_lambda_powertools import Logger

from dlpipe.augment.batch import augment_batch
from dlpipe.shared.config import Settings
from dlpipe.shared.store import ObjectStore
from dlpipe.wire import AugmentRequest
from dlpipe.wire.events import parsed_event

logger = Logger(service="augment")


@lru_cache(maxsize=4)
def _data_store(settings: Settings) -> ObjectStore:
    # Kept across warm invocations: creating a boto3 client costs more than a small image.
    return settings.data_store()


@logger.inject_lambda_context
@parsed_event(AugmentRequest, "augment", logger)
def handler(request, context) -> dict:
    store = _data_store(Settings.from_env())
    response = augment_batch(request, store, time_left_ms=context.get_remaining_time_in_millis)
    logger.info("augmented batch", extra={"images_in": response.images_in, "images_out": response.images_out,
                                          "failed": response.failed, "bytes_out": response.bytes_out})
    for result in response.results:
        if result.error:
            logger.warning("image failed", extra={"key": result.key, "reason": result.error})
    return response.model_dump()
