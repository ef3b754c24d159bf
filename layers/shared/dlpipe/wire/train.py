"""The train function's actions: init, pack, train, evaluate and aggregate, each a request and a reply."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from dlpipe.shared.names import NAME_PATTERN
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import InvalidKey, validate_key
from dlpipe.wire.billing import StoreRequests

# --- train: init, pack, train, evaluate ---------------------------------------------

class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Bounds that keep one invocation inside Lambda's memory (10 GB at most), /tmp and 15 minutes.
MAX_CLASSES = 10_000
MAX_INPUT_SIDE = 1024
MAX_LOCAL_EPOCHS = 100
MAX_LOCAL_STEPS = 1_000_000
MAX_BATCH_SIZE = 4096
MAX_SHARD_KEYS = 10_000


def _store_key(value: str) -> str:
    try:
        return validate_key(value)
    except InvalidKey as err:
        raise ValueError(str(err)) from None


StoreKey = Annotated[str, AfterValidator(_store_key)]


class ModelConfig(_Event):
    """Everything needed to rebuild a model and feed it: the architecture, class names, preprocessing.

    The run config stores it as `model`, every train request carries it, and export and
    serving read it back: one type for all of them.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    version: Literal["1.0", "1.1"] = "1.1"
    input_shape: tuple[int, int, int]
    classes: int = Field(ge=2, le=MAX_CLASSES)
    small_inputs: bool = False
    # Configs written before this field existed meant the reference's ReLU after conv10.
    classifier_relu: bool = True
    labels: list[str] = Field(max_length=MAX_CLASSES)
    recipe: Recipe

    @field_validator("input_shape")
    @classmethod
    def _fits_a_function(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        height, width, channels = value
        if not (8 <= height <= MAX_INPUT_SIDE and 8 <= width <= MAX_INPUT_SIDE) or channels not in (1, 3):
            raise ValueError(f"input_shape {value} must be H x W x C with 8 <= H, W <= {MAX_INPUT_SIDE} and C 1 or 3")
        return value

    @model_validator(mode="after")
    def _one_label_per_class(self) -> ModelConfig:
        if len(self.labels) != self.classes:
            raise ValueError(f"{len(self.labels)} labels for {self.classes} classes")
        return self

    def architecture(self) -> tuple:
        """What the compiled network depends on (not its labels or preprocessing)."""
        return (self.version, tuple(self.input_shape), self.classes, self.small_inputs, self.classifier_relu)


TRAINABLE = ("all", "classifier")
Trainable = Literal["all", "classifier"]
# How a stored array file keeps float32 arrays (dlpipe.train.weights): as they are, or as bfloat16.
Precision = Literal["float32", "bfloat16"]


class Hyper(_Event):
    # "classifier": every layer but conv10 is frozen, and no gradients are computed for them.
    trainable: Trainable = "all"
    local_epochs: int = Field(1, ge=1, le=MAX_LOCAL_EPOCHS)
    # Rounds shorter than an epoch: this many batches of the worker's continuous stream over its
    # shard (dlpipe.train.batches). None: `local_epochs` whole epochs, as runs from before it did.
    local_steps: int | None = Field(None, ge=1, le=MAX_LOCAL_STEPS)
    batch_size: int = Field(128, ge=1, le=MAX_BATCH_SIZE)
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    seed: int = Field(0, ge=0, lt=2**31)
    warmup_epochs: float = Field(0.0, ge=0, le=MAX_LOCAL_EPOCHS,
                                 description="the learning rate rises linearly from 0 over this many "
                                             "epochs of the worker's shard (0: no warm-up)")
    optimizer_precision: Precision = Field("float32", description="how the worker stores its Adam state")
    update_precision: Precision = Field("float32", description="how the worker stores its round: float32 weights, "
                                                               "or bfloat16 differences from the global weights")


class InitFrom(_Event):
    """Round 0 from a servable version's Keras weights instead of from the seed alone."""

    weights_key: StoreKey
    # The same classes: keep the version's classifier (conv10). Otherwise a new one, from the seed.
    keep_classifier: bool


class Warmup(_Event):
    """What a function environment gets ready for: training the event's model, `trainable`, at `batch_size`."""

    trainable: Trainable = "all"
    batch_size: int = Field(ge=1, le=MAX_BATCH_SIZE)


class WarmRequest(_Event):
    """Import TensorFlow, compile the model and trace its training step, storing nothing: sent beside round 0, so
    that the first round's workers find warm environments instead of paying their cold starts one more time."""

    action: Literal["warm"]
    model: ModelConfig
    warmup: Warmup


class WarmResponse(_Event):
    action: Literal["warm"] = "warm"
    seconds: float
    was_warm: bool = Field(description="the environment had the model compiled already")


class InitRequest(_Event):
    action: Literal["init"]
    model: ModelConfig
    seed: int = Field(0, ge=0, lt=2**31)
    output_key: StoreKey
    init_from: InitFrom | None = None
    warmup: Warmup | None = Field(None, description="then get this environment ready to train, as `warm` does")


class InitResponse(_Event):
    action: Literal["init"] = "init"
    weights_key: str
    arrays: int
    parameters: int
    bytes: int
    requests: StoreRequests = Field(default_factory=StoreRequests)


class ShardRef(_Event):
    """A tar shard of packed augment output (dlpipe.shared.shards) and the images its index says it holds."""

    key: StoreKey
    images: int = Field(ge=0)


class PackRequest(_Event):
    """Decode `items` (data-store key, label), or every image of `shards` (labelled by class folder, in
    `classes`), with `recipe` into one part at `output_prefix`-<hash>.npz. A shard is read with one GET."""

    # 5000 keys of S3's maximum 1024 bytes still fit Lambda's 6 MB request.
    MAX_ITEMS: ClassVar[int] = 5000
    # The packed pixels exist twice at the peak (the array, then its .npz): 2 x 256 MB fits the
    # smallest train function (1024 MB) with a 40-megapixel source being decoded beside them.
    MAX_PART_BYTES: ClassVar[int] = 256 * 2 ** 20

    action: Literal["pack"]
    items: list[tuple[str, int]] = Field(default_factory=list, max_length=MAX_ITEMS)
    shards: list[ShardRef] = Field(default_factory=list, max_length=MAX_ITEMS)
    classes: list[str] = Field(default_factory=list, max_length=MAX_CLASSES,
                               description="with shards: a member in class folder classes[i] gets label i")
    recipe: Recipe
    output_prefix: str = Field(min_length=1, max_length=900)

    @field_validator("items")
    @classmethod
    def _valid_items(cls, items: list[tuple[str, int]]) -> list[tuple[str, int]]:
        for key, label in items:
            if not 0 <= label < 2 ** 31:
                raise ValueError(f"label {label} of {key!r} is not a class index (0 or more)")
            try:
                validate_key(key)
            except InvalidKey as err:
                raise ValueError(str(err)) from None
        return items

    @field_validator("output_prefix")
    @classmethod
    def _valid_prefix(cls, prefix: str) -> str:
        try:
            validate_key(prefix)
        except InvalidKey as err:
            raise ValueError(f"output_prefix is not a valid store key stem: {err}") from None
        return prefix

    @property
    def images(self) -> int:
        return len(self.items) + sum(shard.images for shard in self.shards)

    @model_validator(mode="after")
    def _fits_memory(self) -> PackRequest:
        if not self.items and not self.shards:
            raise ValueError("give the images to pack: items (key, label) or shards")
        if self.shards and not self.classes:
            raise ValueError("shards need classes: the class folder names, in label order")
        image_bytes = self.recipe.size ** 2 * self.recipe.channels
        if self.images * image_bytes > self.MAX_PART_BYTES:
            raise ValueError(f"{self.images} images of {self.recipe.size}x{self.recipe.size}x"
                             f"{self.recipe.channels} make {self.images * image_bytes / 2 ** 20:.0f} MB, more "
                             f"than a part may hold ({self.MAX_PART_BYTES // 2 ** 20} MB): at most "
                             f"{self.MAX_PART_BYTES // image_bytes} images per part (a shard of packed augment "
                             "output is never split: augment with a smaller --batch-size)")
        return self


class PackResponse(_Event):
    """A packed part: its key, how many images it holds, and the images skipped as undecodable."""

    class Skipped(BaseModel):
        key: str
        reason: str

    action: Literal["pack"] = "pack"
    key: str
    count: int = Field(ge=1)
    bytes: int = Field(ge=0)
    skipped: list[Skipped] = Field(default_factory=list)
    requests: StoreRequests = Field(default_factory=StoreRequests)


class TrainRequest(_Event):
    """One worker's share of one round."""

    action: Literal["train"]
    run: str = Field(pattern=NAME_PATTERN)
    round: int = Field(ge=1)
    worker: int = Field(ge=0)
    attempt: int = Field(0, ge=0)
    global_key: StoreKey                      # weights to start from (model store)
    global_optimizer_key: StoreKey | None = None   # Adam state to start from (None: a fresh optimizer)
    shard_keys: list[StoreKey] = Field(min_length=1, max_length=MAX_SHARD_KEYS)   # packed parts (data store)
    output_key: StoreKey                      # where to store this worker's weights (model store)
    output_optimizer_key: StoreKey | None = None   # where to store its Adam state (None: not stored)
    model: ModelConfig
    hyper: Hyper = Hyper()
    time_budget_s: float | None = Field(None, gt=0)  # also bounded by the function's own deadline


class TrainResponse(_Event):
    """What a worker did: the orchestrator averages by `num_examples` and records the rest."""

    action: Literal["train"] = "train"
    run: str
    round: int
    worker: int
    attempt: int
    weights_key: str
    optimizer_key: str | None
    # Set when weights_key holds the differences from these global weights (update_precision bfloat16).
    delta_from: str | None = None
    num_examples: int              # examples trained on this round (all epochs): the averaging weight
    shard_examples: int
    epochs_done: int
    steps: int
    stopped_early: bool
    loss: float | None
    accuracy: float | None
    train_seconds: float
    images_per_second: float
    load_seconds: float
    setup_seconds: float
    upload_seconds: float
    weights_bytes: int
    max_rss_mb: float | None
    requests: StoreRequests = Field(default_factory=StoreRequests)
    # CPU time of the process while it trained (all threads): Lambda's training time is projected from it
    train_cpu_seconds: float | None = None


class EvaluateRequest(_Event):
    action: Literal["evaluate"]
    weights_key: StoreKey
    shard_keys: list[StoreKey] = Field(min_length=1, max_length=MAX_SHARD_KEYS)
    model: ModelConfig
    batch_size: int = Field(256, ge=1, le=MAX_BATCH_SIZE)
    trainable: Trainable = "all"   # the run's, so that a warm worker keeps one compiled model
    # Score a fixed subset of at most `limit` images: every k-th of the parts, the same every round; None: all.
    limit: int | None = Field(None, ge=1)


class EvaluateResponse(_Event):
    action: Literal["evaluate"] = "evaluate"
    weights_key: str
    count: int
    loss: float
    accuracy: float
    seconds: float
    requests: StoreRequests = Field(default_factory=StoreRequests)


# --- aggregate: an action of the train function ------------------------------------
# One node of a round's aggregation tree (dlpipe.train.aggregate): the example-weighted sum
# of some workers' results (or of partial sums from the level below), written as a partial
# sum, or at the root as the round's global weights or its optimizer state (each has a tree of its own).

MAX_AGGREGATE_SOURCES = 64   # the tree's fan-in is at most 16; a node reads its sources one after another


class AggregateSource(_Event):
    """A worker's result (weights x examples) or a partial sum of the level below (already weighted)."""

    name: str = Field(min_length=1, max_length=100, description="how errors name it, e.g. 'worker 3'")
    weights_key: StoreKey
    examples: int = Field(ge=1, description="a worker's num_examples, or the total a partial sum holds")


class OuterStep(_Event):
    """The outer optimizer's step at the root (dlpipe.train.outer): from the previous global weights and momentum."""

    learning_rate: float = Field(gt=0, le=10.0)
    momentum: float = Field(ge=0, lt=1.0)
    previous_key: StoreKey                     # the previous round's global weights
    momentum_key: StoreKey | None = None       # its outer momentum (None: the first step)
    output_momentum_key: StoreKey              # where the new momentum goes


class AggregateRequest(_Event):
    action: Literal["aggregate"]
    sources: list[AggregateSource] = Field(min_length=1, max_length=MAX_AGGREGATE_SOURCES)
    partial_sources: bool = Field(False, description="the sources are partial sums written by aggregate calls")
    final: bool = Field(True, description="write the means (the round's global state); else a partial sum")
    weights_key: StoreKey                      # where to write (model store)
    outer: OuterStep | None = None             # at the root only: None is the plain average (FedAvg)
    base_key: StoreKey | None = Field(None, description="the sources are differences from these weights (the "
                                                        "round's global weights): the root adds their mean back")
    precision: Precision = Field("float32", description="how the node stores its partial sum or mean (bfloat16: "
                                                        "an optimizer state's tree, or the differences' tree, "
                                                        "whose root writes float32 weights)")

    @model_validator(mode="after")
    def _outer_at_the_root(self) -> AggregateRequest:
        if (self.outer is not None or self.base_key is not None) and not self.final:
            raise ValueError("the outer step and the base weights are taken once, at the root: only a final node "
                             "carries `outer` or `base_key`")
        if self.outer is not None and self.precision != "float32" and self.base_key is None:
            raise ValueError("the outer step makes the global weights, which are stored in float32")
        if self.outer is not None and self.base_key is not None and self.base_key != self.outer.previous_key:
            raise ValueError("the differences must be from the weights the outer step starts from "
                             "(base_key == outer.previous_key)")
        return self


class AggregateResponse(_Event):
    action: Literal["aggregate"] = "aggregate"
    weights_key: str
    final: bool
    examples: int = Field(ge=1)
    contributions: int = Field(ge=1, description="workers summed below this node")
    gets: int
    puts: int
    bytes_read: int
    bytes_written: int
    seconds: float
    requests: StoreRequests = Field(default_factory=StoreRequests)


TrainEvent = Annotated[InitRequest | WarmRequest | PackRequest | TrainRequest | EvaluateRequest | AggregateRequest,
                       Field(discriminator="action")]
