"""A prepared dataset's manifest: where it lives in the data store and what it holds.

`prepare` writes ``datasets/<name>/manifest.json`` last, after every part is packed; training
reads it with `read_manifest`, the one place a manifest is parsed. The JSON keeps the field
names of the first manifests (format 1), so datasets prepared before this schema still load.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dlpipe.shared.names import validate_name
from dlpipe.shared.problems import describe_errors
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import KeyNotFound
from dlpipe.wire import PackResponse

PREPARED_PREFIX = "datasets"
MAX_SKIPPED_LISTED = 1000   # the manifest lists this many skipped images; `counts.skipped` has them all


class ManifestError(ValueError):
    """A dataset that is not prepared, or whose manifest cannot be read; the message says what to run."""


def validate_dataset(name: str) -> str:
    return validate_name(name, "dataset name")


def dataset_prefix(name: str) -> str:
    return f"{PREPARED_PREFIX}/{validate_dataset(name)}/"


def manifest_key(name: str) -> str:
    return f"{dataset_prefix(name)}manifest.json"


class PartList(BaseModel):
    """Packed parts (data-store keys, in training order) and the images they hold."""

    parts: list[str] = Field(default_factory=list)
    count: int = Field(default=0, ge=0)


class Counts(BaseModel):
    train: int = Field(ge=0)
    val: int = Field(ge=0)
    skipped: int = Field(default=0, ge=0)
    train_per_class: dict[str, int] = Field(default_factory=dict)


class Manifest(BaseModel):
    """What `prepare` made: classes (label i = classes[i]), the recipe, one PartList per shard."""

    model_config = ConfigDict(extra="ignore")   # fields a later version adds do not stop this one

    format: int = Field(default=1, ge=1, le=1)
    dataset: str
    source: str
    val_source: str | None = None
    val_fraction: float = Field(ge=0.0, lt=1.0)
    classes: list[str] = Field(min_length=1)
    recipe: Recipe
    shards: list[PartList] = Field(min_length=1)
    val: PartList = Field(default_factory=PartList)
    created: str
    id: str
    counts: Counts
    skipped: list[PackResponse.Skipped] = Field(default_factory=list)
    bytes: int = Field(default=0, ge=0)

    def part_keys(self) -> set[str]:
        """Every part the dataset references (train and validation)."""
        return {key for shard in self.shards for key in shard.parts} | set(self.val.parts)


def dataset_id(classes: list[str], recipe: Recipe, shards: list[PartList], val: PartList) -> str:
    """Same images, split and recipe -> same id (the part keys are content hashes): a run may
    resume on a dataset prepared again identically, never on one that changed."""
    content = [classes, recipe.to_dict(), [s.model_dump() for s in shards], val.model_dump()]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _prepare_hint(name: str) -> str:
    return (f"prepare it with e.g. `orchestrator prepare --source fashion-mnist/train --dataset {name} "
            "--workers 2`")


def write_manifest(store, manifest: Manifest) -> str:
    """Store the manifest (the last step of `prepare`: it publishes the dataset); returns its key."""
    key = manifest_key(manifest.dataset)
    store.put(key, manifest.model_dump_json(indent=1).encode())
    return key


def read_manifest(store, name: str) -> Manifest:
    """The manifest of dataset `name`; ManifestError naming the dataset and what to run if there is none."""
    key = manifest_key(name)
    try:
        data = store.get(key)
    except KeyNotFound:
        raise ManifestError(f"no prepared dataset {name!r} in {store.url}; {_prepare_hint(name)}") from None
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as err:
        raise ManifestError(f"the manifest of dataset {name!r} ({store.url}/{key}) is unreadable "
                            f"({describe_errors(err)[:500]}); {_prepare_hint(name)} again") from None
