"""ONNX SqueezeNet import: structure-mapped weights reproduce onnxruntime through the exported .tflite.

Synthetic graphs (random weights, meaningless names, odd sizes where ceil-mode pooling
matters, a swapped Concat, a Dropout, SqueezeNet 1.0's Pad) run everywhere; the pretrained
files in ../shared/models add the reference photos when they are present.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlpipe.predict.classifier import Classifier
from dlpipe.predict.versions import load_version
from dlpipe.publish.onnx_import import OnnxImportError, analyse, import_onnx, load, read_labels
from dlpipe.shared.store import DirStore
from dlpipe.train.model import FIRE_FILTERS, POOL_AFTER


def make_squeezenet_onnx(version: str = "1.1", size: int = 50, classes: int = 10, seed: int = 0,
                         swap_concat: tuple = (), dropout: bool = False, pool_after: tuple | None = None,
                         final_pad: int = 0, ceil_mode: int = 1, conv1_filters: int | None = None):
    """A SqueezeNet-shaped ONNX graph with random weights and names no exporter would use."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    names = (f"x{i}" for i in itertools.count())

    def conv(x, cin, cout, k, stride=1, pad=0):
        w = rng.normal(0, np.sqrt(2 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
        b = rng.normal(0.02, 0.05, cout).astype(np.float32)
        wn, bn, out, act = next(names), next(names), next(names), next(names)
        inits.extend([numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)])
        nodes.append(helper.make_node("Conv", [x, wn, bn], [out], kernel_shape=[k, k], strides=[stride] * 2,
                                      pads=[pad] * 4))
        nodes.append(helper.make_node("Relu", [out], [act]))
        return act

    def pool(x):
        out = next(names)
        nodes.append(helper.make_node("MaxPool", [x], [out], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=ceil_mode))
        return out

    pools = POOL_AFTER[version] if pool_after is None else pool_after
    filters, kernel = (96, 7) if version == "1.0" else (64, 3)
    filters = conv1_filters or filters
    x = conv("image", 3, filters, kernel, stride=2)
    channels = filters
    if 0 in pools:
        x = pool(x)
    for i in range(2, 10):
        s, e = FIRE_FILTERS[i]
        squeeze = conv(x, channels, s, 1)
        e1, e3 = conv(squeeze, s, e, 1), conv(squeeze, s, e, 3, pad=1)
        x = next(names)
        nodes.append(helper.make_node("Concat", [e3, e1] if i in swap_concat else [e1, e3], [x], axis=1))
        channels = 2 * e
        if i in pools:
            x = pool(x)
    if dropout:
        out = next(names)
        nodes.append(helper.make_node("Dropout", [x], [out]))
        x = out
    if final_pad:
        pads, out = next(names), next(names)
        inits.append(numpy_helper.from_array(np.array([0, 0, final_pad, final_pad] * 2, np.int64), pads))
        nodes.append(helper.make_node("Pad", [x, pads], [out], mode="constant"))
        x = out
    x = conv(x, channels, classes, 1)
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["logits"], axis=1),
              helper.make_node("Softmax", ["logits"], ["prob"], axis=1)]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                           [1, 3, size, size])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def onnxruntime_probs(model_or_path, x_hwc: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = [o.name for o in session.get_outputs() if o.name == "prob"] or [session.get_outputs()[-1].name]
    return session.run(out, {name: x_hwc.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]


def test_read_labels_keeps_the_first_wordnet_name():
    text = "n01440764 tench, Tinca tinca\n\nn01443537 goldfish, Carassius auratus\nn02123045 tabby, tabby cat\n"
    assert read_labels(text) == ["tench", "goldfish", "tabby"]
    assert read_labels("cat\ndog, the barking kind\n") == ["cat", "dog, the barking kind"]


# --- synthetic graphs ---------------------------------------------------------------------------

@pytest.mark.parametrize("version, size, kwargs", [
    ("1.1", 50, {"swap_concat": (3, 7), "dropout": True}),   # 50 px: ceil mode pads all three pools
    ("1.0", 53, {"final_pad": 1}),                           # 1.0's explicit Pad before conv10
])
def test_synthetic_graph_served_through_litert_matches_onnxruntime(tmp_path, version, size, kwargs):
    model = make_squeezenet_onnx(version, size, **kwargs)
    path = tmp_path / "net.onnx"
    onnx.save(model, path)
    store = DirStore(tmp_path / "models")
    _exported, found = import_onnx(path, [f"class{i}" for i in range(10)], store, "net")
    assert (found.version, found.input_shape, found.classes) == (version, (size, size, 3), 10)
    assert (found.final_pad is not None) == bool(kwargs.get("final_pad"))
    classifier = Classifier(load_version(store, "net"))
    for seed in range(3):
        x = np.random.default_rng(seed).normal(0, 1, (size, size, 3)).astype(np.float32)
        expected = onnxruntime_probs(model, x)
        assert expected.max() - expected.min() > 1e-3          # a test that could tell classes apart
        np.testing.assert_allclose(classifier.probabilities(x), expected, atol=1e-4)


def test_floor_mode_pooling_is_caught_by_the_feature_map_check(tmp_path):
    path = tmp_path / "floor.onnx"
    onnx.save(make_squeezenet_onnx("1.1", 50, ceil_mode=0), path)
    floor_sizes = r"feature map after pool1 is \(12, 12\) in Keras but \(11, 11\) in the ONNX"
    with pytest.raises(OnnxImportError, match=floor_sizes):
        load(path)


@pytest.mark.parametrize("kwargs, message", [
    ({"pool_after": (0, 4, 5)}, r"max pools after stages \[0, 4, 5\].*SqueezeNet 1.1 pools after \[0, 3, 5\]"),
    ({"conv1_filters": 32}, "32 filters of 3x3: neither SqueezeNet 1.0"),
    ({"final_pad": 1}, "Pad before the classifier is only known in SqueezeNet 1.0"),
])
def test_graphs_that_are_not_squeezenet_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(OnnxImportError, match=message):
        analyse(make_squeezenet_onnx("1.1", 50, **kwargs))


def test_other_networks_and_files_are_refused(tmp_path):
    nodes = [helper.make_node("Relu", ["image"], ["y"])]
    graph = helper.make_graph(nodes, "not-squeezenet",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    with pytest.raises(OnnxImportError, match="should feed a Conv"):
        analyse(helper.make_model(graph))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not protobuf at all" * 3)
    with pytest.raises(OnnxImportError, match="cannot read"):
        load(junk)


def test_label_count_must_match_the_classes(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(make_squeezenet_onnx("1.1", 50), path)
    with pytest.raises(OnnxImportError, match="3 names but the model has 10 classes"):
        import_onnx(path, ["a", "b", "c"], DirStore(tmp_path / "m"), "net")


# --- the pretrained files in ../shared ------------------------------------------------------------

REFERENCE_TOP3 = {  # from ../shared/models/README.md
    ("1.1", "chelsea"): ["Egyptian cat", "tabby", "tiger cat"],
    ("1.0", "chelsea"): ["Egyptian cat", "tiger cat", "tabby"],
    ("1.1", "coffee"): ["espresso", "consomme", "cup"],
    ("1.0", "coffee"): ["espresso", "cup", "soup bowl"],
}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from conftest import SHARED

    models = SHARED / "models"
    if not models.is_dir():
        pytest.skip(f"{models} is absent: the pretrained ONNX test material lives in ../shared beside the repo")
    store = DirStore(tmp_path_factory.mktemp("models"))
    labels = read_labels((models / "imagenet_synset_words.txt").read_text())
    for version in ("1.0", "1.1"):
        import_onnx(models / f"squeezenet{version}.onnx", labels, store, f"squeezenet{version}")
    return models, store


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_pretrained_squeezenet_reproduces_onnxruntime_and_the_reference(shared_models, pretrained, version):
    from PIL import Image
    from skimage import data

    models, store = pretrained
    classifier = Classifier(load_version(store, f"squeezenet{version}"))
    assert len(classifier.version.labels) == 1000 and classifier.version.labels[285] == "Egyptian cat"
    for photo in ("chelsea", "coffee"):
        image = Image.fromarray(getattr(data, photo)())
        x = classifier.version.recipe.apply(image)
        expected = onnxruntime_probs(models / f"squeezenet{version}.onnx", x)
        np.testing.assert_allclose(classifier.probabilities(x), expected, atol=1e-4)
        top = classifier.classify(image, k=3)
        assert [t.label for t in top] == REFERENCE_TOP3[(version, photo)], (version, photo, top)


REFERENCE_PROBABILITIES = {  # ../shared/models/README.md: onnxruntime with OpenCV 4 preprocessing
    ("1.1", "chelsea"): [0.491, 0.278, 0.228], ("1.0", "chelsea"): [0.789, 0.107, 0.090],
    ("1.1", "coffee"): [0.934, 0.038, 0.008], ("1.0", "coffee"): [0.993, 0.002, 0.001],
}


def opencv_resize(pixels: np.ndarray, recipe) -> np.ndarray:
    """The recipe's geometry with OpenCV's bilinear resize, which (unlike Pillow's) does not antialias."""
    import cv2

    h, w = pixels.shape[:2]
    if recipe.resize == "center_crop":
        ratio = recipe.resize_shorter / min(h, w)
        pixels = cv2.resize(pixels, (round(w * ratio), round(h * ratio)), interpolation=cv2.INTER_LINEAR)
        h, w = pixels.shape[:2]
        top, left = (h - recipe.size) // 2, (w - recipe.size) // 2
        pixels = pixels[top:top + recipe.size, left:left + recipe.size]
    else:
        pixels = cv2.resize(pixels, (recipe.size, recipe.size), interpolation=cv2.INTER_LINEAR)
    return pixels[:, :, ::-1] if recipe.color_order == "BGR" else pixels


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_pretrained_squeezenet_gives_the_reference_probabilities_with_the_references_resize(
        shared_models, pretrained, version):
    """The reference numbers came from OpenCV's resize; fed the same pixels, the import gives them to 0.001.

    Serving resizes with Pillow's antialiased bilinear (as torchvision does on PIL images),
    which moves these probabilities by up to 0.06 but not the ranking (test above).
    """
    from skimage import data

    _, store = pretrained
    classifier = Classifier(load_version(store, f"squeezenet{version}"))
    recipe = classifier.version.recipe
    for photo in ("chelsea", "coffee"):
        probs = classifier.probabilities(recipe.normalize(opencv_resize(getattr(data, photo)(), recipe)))
        top = np.argsort(-probs)[:3]
        assert [classifier.version.labels[i] for i in top] == REFERENCE_TOP3[(version, photo)]
        np.testing.assert_allclose(probs[top], REFERENCE_PROBABILITIES[(version, photo)], atol=0.0015)
