"""Messages that used to mislead (issue 22, group 11) and datasets that cannot train (group 8)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest

from dlpipe.datasets.split import plan_dataset
from dlpipe.predict.versions import latest_version
from dlpipe.shared.store import DirStore
from dlpipe.train.model import weights_misfit
from dlpipe.wire import ModelError, NotFound
from orchestrator.training.loop import TrainingFailed, TrainOptions, run_training
from tests.unit.test_rounds import session


def _model(*shapes):
    return SimpleNamespace(weights=[np.zeros(s) for s in shapes])


def test_weights_that_do_not_fit_name_the_first_array_and_both_shapes():
    model = _model((3, 3), (512, 10), (10,))
    message = str(weights_misfit(model, [np.zeros((3, 3)), np.zeros((512, 5)), np.zeros((5,))], "global weights"))
    assert "array 1 of 3 is (512, 5), the model's is (512, 10)" in message
    assert "(3 arrays) do not fit the model (3 arrays)" not in message
    assert "2 arrays for the model's 3" in str(weights_misfit(model, [np.zeros((3, 3)), np.zeros((512, 10))]))
    assert weights_misfit(model, [np.zeros((3, 3)), np.zeros((512, 10)), np.zeros((10,))]) is None


def test_a_latest_pointer_that_is_not_a_file_is_not_called_an_unknown_model(tmp_path):
    store = DirStore(tmp_path)
    store.put("models/squeezenet1.1/v1/meta.json", b"{}")
    (tmp_path / "models" / "squeezenet1.1" / "latest").mkdir()
    with pytest.raises(ModelError) as err:
        latest_version(store, "squeezenet1.1")
    assert "has versions v1 but no readable latest pointer" in str(err.value) and "unknown" not in str(err.value)
    with pytest.raises(NotFound, match=r"unknown model 'other'; known models: squeezenet1.1"):
        latest_version(store, "other")


def _items(per_class: dict[str, int]) -> list[tuple[str, str]]:
    return [(f"raw/{c}/{i}.jpg", c) for c, n in per_class.items() for i in range(n)]


def test_a_single_class_is_refused_by_prepare():
    with pytest.raises(ValueError, match="only one class \\('cat'\\): a classifier needs at least two"):
        plan_dataset(_items({"cat": 20}), ["cat"], 2, val_fraction=0.1, source_prefix="raw")


def test_a_class_whose_only_image_went_to_validation_is_refused_by_prepare():
    items = _items({"cat": 20, "dog": 20}) + [("raw/iris/only.jpg", "iris")]
    with pytest.raises(ValueError, match=r"no training image: 'iris'; .*--val-fraction 0.99"):
        plan_dataset(items, ["cat", "dog", "iris"], 1, val_fraction=0.99, source_prefix="raw")


def test_a_class_with_images_only_in_the_validation_folder_is_refused():
    with pytest.raises(ValueError, match=r"no training image: 'iris'"):
        plan_dataset(_items({"cat": 5, "dog": 5}), ["cat", "dog", "iris"], 1, source_prefix="raw",
                     val_items=_items({"iris": 3}))


def test_missing_validation_parts_are_noticed_before_training():
    s = session()
    s.data.delete("datasets/d/val/part-000.npz")
    with pytest.raises(TrainingFailed, match=r"lacks 1 of its validation parts .*part-000.npz"):
        run_training(s, TrainOptions(dataset="d", run="r", rounds=1, output_dir=None), out=io.StringIO(),
                     progress=False)
    assert not s.invoker.events                        # no worker ran
    assert not s.models.exists("runs/r/config.json")   # and the name is free


def test_the_recipe_mismatch_fix_is_a_complete_command():
    from dlpipe.shared.recipe import Recipe
    from dlpipe.train.model import model_config_for

    s = session()
    other = model_config_for(Recipe(size=64, channels=3), ["x", "y"], "1.1", "auto", False)
    s.models.put("models/base/v1/meta.json", b"{}")
    s.models.put("models/base/latest", b"v1")
    s.models.put("models/base/v1/model.json", other.model_dump_json().encode())
    s.models.put("models/base/v1/weights.npz", b"not read before the check")
    with pytest.raises(TrainingFailed) as err:
        run_training(s, TrainOptions(dataset="d", run="ft", rounds=1, init_from="base", output_dir=None),
                     out=io.StringIO(), progress=False)
    assert "`orchestrator prepare --source raw --dataset d --workers 3 --recipe-from base:v1`" in str(err.value)
