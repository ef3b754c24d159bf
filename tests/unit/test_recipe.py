"""The preprocessing recipe: a validated, frozen model whose stored form round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from dlpipe.shared.recipe import MAX_SIZE, Recipe


def test_a_recipe_round_trips_through_json_and_is_frozen_and_hashable():
    recipe = Recipe(size=224, resize="center_crop", resize_shorter=256, mean=(0.485, 0.456, 0.406),
                    std=(0.229, 0.224, 0.225))
    stored = json.loads(json.dumps(recipe.to_dict()))
    assert stored["mean"] == [0.485, 0.456, 0.406] and set(stored) == set(Recipe.model_fields)
    assert Recipe.from_dict(stored) == recipe and hash(Recipe.from_dict(stored)) == hash(recipe)
    with pytest.raises(ValidationError, match="frozen"):
        recipe.size = 32


@pytest.mark.parametrize("fields, message", [
    ({"size": 0}, "size: Input should be greater than or equal to 1 (got 0)"),
    ({"size": MAX_SIZE + 1}, f"size: Input should be less than or equal to {MAX_SIZE} (got {MAX_SIZE + 1})"),
    ({"size": 32, "channels": 2}, "channels: Input should be 1 or 3 (got 2)"),
    ({"size": 32, "color_order": "RBG"}, "color_order: Input should be 'RGB' or 'BGR'"),
    ({"size": 32, "resize": "fit"}, "resize: Input should be 'stretch' or 'center_crop'"),
    ({"size": 32, "pad": 16}, "pad 16 leaves no image inside size 32"),
    ({"size": 32, "pad": -1}, "pad: Input should be greater than or equal to 0"),
    ({"size": 32, "scale": 0}, "scale: Input should be greater than 0"),
    ({"size": 32, "scale": float("nan")}, "scale: Input should be a finite number"),
    ({"size": 32, "std": [1.0, 0.0, 1.0]}, "std.1: Input should be greater than 0"),
    ({"size": 32, "mean": [0.5, 0.5]}, "mean needs one value for all channels or one per channel (3), got 2"),
    ({"size": 32, "channels": 1, "std": [1.0, 1.0, 1.0]},
     "std needs one value for all channels or one per channel (1), got 3"),
    ({"size": 224, "resize": "center_crop", "resize_shorter": 200}, "resize_shorter 200 is smaller than the crop"),
    ({"size": 32, "colour_order": "RGB"}, "colour_order: Extra inputs are not permitted"),
    ({}, "size: Field required"),
])
def test_bad_recipes_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match="^invalid recipe: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        Recipe.from_dict(fields)


def test_the_constructor_refuses_bad_values_too():
    with pytest.raises(ValidationError, match="channels"):
        Recipe(size=32, channels=4)


def test_decode_is_open_image_then_resize_image():
    import imagefiles as f

    from dlpipe.shared.images import ImageError, open_image

    recipe = Recipe(size=16, channels=1, pad=1)
    data = f.png16_gradient()
    assert np.array_equal(recipe.decode(data), recipe.resize_image(open_image(data)))
    with pytest.raises(ImageError, match="empty file"):
        recipe.decode(b"")
    grey = recipe.resize_image(Image.new("L", (10, 10), 77))
    assert grey.shape == (16, 16, 1) and grey[0, 0, 0] == 0 and grey[8, 8, 0] == 77
