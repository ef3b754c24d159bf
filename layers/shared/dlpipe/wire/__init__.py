"""The wire contract: every request and response of the three functions, on both sides.

The orchestrator builds events from these models and parses replies with them; the
handlers parse events with them and build replies with them. One namespace (`from dlpipe
import wire`), a module per function: errors (the one error shape), augment, train (its
actions, aggregation included) and predict. pydantic only: this package is in the shared
layer and the train image, and must never import TensorFlow or LiteRT.
"""

from dlpipe.wire.augment import (  # noqa: F401
    AUGMENTED_PREFIX,
    DEFAULT_VARIANTS,
    DETERMINISTIC_VARIANTS,
    MAX_BATCH,
    RANDOM_VARIANTS,
    VARIANTS,
    AugmentRequest,
    AugmentResponse,
    AugmentSpec,
    ImageResult,
    ShardInfo,
    check_augment_output,
)
from dlpipe.wire.billing import StoreRequests  # noqa: F401
from dlpipe.wire.errors import (  # noqa: F401
    BadRequest,
    ErrorResponse,
    ModelError,
    NotFound,
    Reply,
    ServingError,
    Unavailable,
    parse_reply,
    validation_message,
)
from dlpipe.wire.predict import (  # noqa: F401
    MAX_IMAGE_B64_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_TOP_K,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    TopClass,
)
from dlpipe.wire.train import (  # noqa: F401
    MAX_AGGREGATE_SOURCES,
    MAX_BATCH_SIZE,
    MAX_CLASSES,
    MAX_INPUT_SIDE,
    MAX_LOCAL_EPOCHS,
    MAX_LOCAL_STEPS,
    MAX_SHARD_KEYS,
    TRAINABLE,
    AggregateRequest,
    AggregateResponse,
    AggregateSource,
    EvaluateRequest,
    EvaluateResponse,
    Hyper,
    InitFrom,
    InitRequest,
    InitResponse,
    ModelConfig,
    OuterStep,
    PackRequest,
    PackResponse,
    Precision,
    ShardRef,
    StoreKey,
    Trainable,
    TrainEvent,
    TrainRequest,
    TrainResponse,
    WarmRequest,
    WarmResponse,
    Warmup,
)
