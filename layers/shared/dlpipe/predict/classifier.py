"""The LiteRT classifier: a model version's network, image in, top-k classes out.

This module runs inside the predict zip function, so it must never import TensorFlow or
Keras: models are served with LiteRT (`ai_edge_litert`), whose interpreter starts in a
fraction of a second and runs SqueezeNet several times faster than Keras on one core.
`LiteRTNetwork` is the one place that sets up an interpreter; export checks its
conversions with it too, so serving and that check run the very same code.
"""

from __future__ import annotations

import threading

import numpy as np

from dlpipe.predict.versions import ModelVersion
from dlpipe.shared.recipe import Recipe
from dlpipe.wire import ModelError, TopClass


class LiteRTNetwork:
    """A LiteRT interpreter for one flatbuffer: one float32 input in, one output out.

    An interpreter is not safe to share between threads, so calls are serialised by a lock
    (Lambda sends one request at a time anyway). ValueError or RuntimeError if LiteRT
    cannot load the flatbuffer.
    """

    def __init__(self, tflite: bytes, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=tflite, num_threads=max(1, num_threads))
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"][1:])
        self.outputs = int(self._output["shape"][-1])
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        """The output for one input without its batch axis (H x W x C in, one row out)."""
        batch = np.ascontiguousarray(x, dtype=np.float32)[None]
        with self._lock:
            self._interpreter.set_tensor(self._input["index"], batch)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output["index"])[0].copy()


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[TopClass]:
    """The k most probable classes, most probable first (ties: lower index first)."""
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    k = max(1, min(int(k), probabilities.size))
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [TopClass(label=labels[i] if i < len(labels) else str(i), index=int(i),
                     probability=round(float(probabilities[i]), 6)) for i in order]


class Classifier:
    """A model version ready to serve: its network checked against its labels and recipe.

    Built once per warm container and reused.
    """

    def __init__(self, version: ModelVersion, num_threads: int = 1) -> None:
        self.version = version
        where = f"model {version.name!r} version {version.version!r}"
        try:
            self._network = LiteRTNetwork(version.tflite, num_threads)
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"{where}: LiteRT cannot load model.tflite: {err}") from None
        self.input_shape = self._network.input_shape
        self.classes = self._network.outputs
        recipe = version.recipe
        if self.input_shape != (recipe.size, recipe.size, recipe.channels):
            raise ModelError(f"{where}: the network takes {self.input_shape} but the recipe makes "
                             f"{(recipe.size, recipe.size, recipe.channels)}")
        if len(version.labels) != self.classes:
            raise ModelError(f"{where}: {len(version.labels)} labels for {self.classes} outputs")

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for one preprocessed H x W x C float32 input."""
        return self._network.run(x)

    def classify(self, image, k: int = 5) -> list[TopClass]:
        """Top-k of a PIL image, preprocessed with the version's recipe."""
        return top_k(self.probabilities(self.version.recipe.apply(image)), self.version.labels, k)


def needed_size(recipe: Recipe) -> int:
    """The shorter side an image needs before the recipe resizes it: what decoding may scale down to."""
    if recipe.resize == "center_crop":
        return recipe.resize_shorter or recipe.size
    return recipe.size
