"""SqueezeNet 1.0 and 1.1 (Iandola et al., 2016) as Keras 3 builder functions.

The layer order follows the reference implementations (torchvision, the Caffe release)
so that pretrained weights can be mapped onto it by graph structure: conv1, then for each
fire module squeeze / expand1x1 / expand3x3 (concatenated in that order), then conv10.
Max pooling uses ceil mode like the originals, done as zero padding on the bottom/right
before a valid pool; after a ReLU every value is >= 0, so zero padding is exactly what
ceil mode's "ignore the missing cells" computes.

The classifier's ReLU (`classifier_relu`): the reference has one after conv10. A class whose
conv10 output is negative on every input then gets no gradient and is never predicted again;
training from scratch on Fashion-MNIST lost 1-3 classes that way (measured once: 55 % test
accuracy instead of 76 % after 3 epochs of 12,000 images), and averaging workers' weights
makes it likelier. Models trained here from scratch leave it out; imported pretrained
weights keep it.

TensorFlow/Keras is imported inside the functions: the zip functions import this package
but must never load TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dlpipe.shared.recipe import Recipe
from dlpipe.train.weights import CheckpointError
from dlpipe.wire import ModelConfig

# (squeeze, expand) filters of fire modules 2..9, the same in both versions.
FIRE_FILTERS = {2: (16, 64), 3: (16, 64), 4: (32, 128), 5: (32, 128),
                6: (48, 192), 7: (48, 192), 8: (64, 256), 9: (64, 256)}
# The fire modules after which each version max-pools (0 = after conv1).
POOL_AFTER = {"1.0": (0, 4, 8), "1.1": (0, 3, 5)}
VERSIONS = tuple(POOL_AFTER)
STEM = {"1.0": (96, 7, 2), "1.1": (64, 3, 2)}   # conv1: filters, kernel size, stride (ImageNet)
CONV_INIT = "he_uniform"


def ceil_pool_padding(size: int, pool: int = 3, stride: int = 2) -> int:
    """Cells to add at the end of an axis so a valid pool gives ceil mode's output size."""
    out = math.ceil((size - pool) / stride) + 1
    # PyTorch/Caffe rule: the last window must start inside the input.
    if (out - 1) * stride >= size:
        out -= 1
    return max(0, (out - 1) * stride + pool - size)


def squeezenet(version: str = "1.1", input_shape: tuple[int, int, int] = (224, 224, 3),
               classes: int = 1000, small_inputs: bool = False, dropout: float = 0.5,
               name: str | None = None, dropout_seed: int | None = None, classifier_relu: bool = True,
               weights: Sequence[np.ndarray] | None = None):
    """Build SqueezeNet `version` ("1.0" or "1.1") returning class probabilities.

    weights: arrays in `model.get_weights()` order to load (as Keras applications take
    `weights=`); a list that does not fit the network is refused, naming the first mismatch.

    small_inputs: replace the ImageNet stem (7x7 or 3x3 stride-2 conv1) with a 3x3
    stride-1 convolution. On 32 px inputs such as Fashion-MNIST the stride-2 stem throws
    away most of the resolution and accuracy plateaus about 6 points lower.
    dropout_seed: seed of the dropout masks, so that training is reproducible (the train
    function resets it every round; None draws one from Keras's global seed).
    classifier_relu: the reference's ReLU after conv10 (see the module docstring).
    """
    import keras
    from keras import layers

    if version not in POOL_AFTER:
        raise ValueError(f"unknown SqueezeNet version {version!r}; choose from {VERSIONS}")
    inputs = keras.Input(shape=input_shape, name="image")
    filters, size, stride = (64 if version == "1.1" else 96, 3, 1) if small_inputs else STEM[version]
    x = layers.Conv2D(filters, size, strides=stride, activation="relu", kernel_initializer=CONV_INIT,
                      name="conv1")(inputs)
    x = _pool(x, 1)
    for index in range(2, 10):
        x = _fire(x, index)
        if index in POOL_AFTER[version][1:]:
            x = _pool(x, index)
    x = layers.Dropout(dropout, seed=dropout_seed, name="dropout")(x)
    # As in the reference: the classifier is a 1x1 convolution initialised with small
    # weights, then ReLU and global average pooling instead of dense layers.
    x = layers.Conv2D(classes, 1, activation="relu" if classifier_relu else None,
                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.01), name="conv10")(x)
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    outputs = layers.Softmax(name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=name or f"squeezenet{version.replace('.', '_')}")
    if weights is not None:
        set_weights(model, weights)
    return model


def _pool(x, index: int):
    """A 3x3 stride-2 max pool in ceil mode (zero padding at the end: after a ReLU nothing is below 0)."""
    from keras import layers

    ph, pw = ceil_pool_padding(x.shape[1]), ceil_pool_padding(x.shape[2])
    if ph or pw:
        x = layers.ZeroPadding2D(((0, ph), (0, pw)), name=f"pool{index}_ceil_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name=f"pool{index}")(x)


def _fire(x, index: int):
    """Fire module `index`: a 1x1 squeeze, then 1x1 and 3x3 expands concatenated in that order."""
    from keras import layers

    squeeze, expand = FIRE_FILTERS[index]
    s = layers.Conv2D(squeeze, 1, activation="relu", kernel_initializer=CONV_INIT, name=f"fire{index}_squeeze")(x)
    e1 = layers.Conv2D(expand, 1, activation="relu", kernel_initializer=CONV_INIT, name=f"fire{index}_expand1x1")(s)
    e3 = layers.Conv2D(expand, 3, padding="same", activation="relu", kernel_initializer=CONV_INIT,
                       name=f"fire{index}_expand3x3")(s)
    return layers.Concatenate(name=f"fire{index}_concat")([e1, e3])


def set_weights(model, weights: Sequence[np.ndarray]) -> None:
    """`model.set_weights`, with a CheckpointError naming the first array that does not fit."""
    expected = [tuple(w.shape) for w in model.weights]
    got = [tuple(np.shape(w)) for w in weights]
    if expected != got:
        pairs = enumerate(zip(expected, got, strict=False))   # unequal lengths are a mismatch too
        first = next((i for i, (a, b) in pairs if a != b), min(len(got), len(expected)))
        raise CheckpointError(f"weights do not fit the model: {len(got)} arrays for {len(expected)}, "
                              f"first mismatch at array {first}; was the run started with another model?")
    model.set_weights(list(weights))


def build_model(config: ModelConfig, weights: Sequence[np.ndarray] | None = None,
                dropout_seed: int | None = None):
    """The Keras SqueezeNet a model config describes, with `weights` loaded if given."""
    return squeezenet(config.version, tuple(config.input_shape), config.classes, small_inputs=config.small_inputs,
                      dropout_seed=dropout_seed, classifier_relu=config.classifier_relu, weights=weights)


SMALL_INPUT_LIMIT = 64   # stem "auto": inputs up to this size get the stride-1 stem
STEMS = ("auto", "small", "imagenet")


def small_stem(side: int, stem: str = "auto") -> bool:
    """The stride-1 stem? "small" yes, "imagenet" no, "auto" for inputs up to SMALL_INPUT_LIMIT px a side."""
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(STEMS)}, not {stem!r}")
    return side <= SMALL_INPUT_LIMIT if stem == "auto" else stem == "small"


def model_config_for(recipe: Recipe, labels: Sequence[str], version: str = "1.1", stem: str = "auto",
                     classifier_relu: bool = False) -> ModelConfig:
    """The model a dataset prepared with `recipe` needs: its input size, one output per label, a stem.

    Stem "auto" picks the stride-1 stem up to SMALL_INPUT_LIMIT px: on 32 px inputs the
    ImageNet stride-2 stem throws most of the resolution away (about 6 points of accuracy).
    """
    size, channels = recipe.size, recipe.channels
    small = small_stem(size, stem)
    return ModelConfig(version=version, input_shape=(size, size, channels), classes=len(labels),
                       small_inputs=small, classifier_relu=classifier_relu, labels=list(labels),
                       recipe=recipe)
