"""Pretrained SqueezeNet 1.0 / 1.1 from an ONNX file, as a servable model version.

Layer names differ between exporters (the ONNX zoo says `squeezenet0_conv0`, Caffe
conversions say `fire2/squeeze1x1`), so nothing here reads a name: the importer walks the
graph from its input and recognises SqueezeNet by structure (conv1, then fire modules -
a squeeze convolution feeding two expand convolutions joined by a Concat - with max
pools between them, an optional Pad, the classifier convolution, global average pooling).
The weights go onto the Keras model `dlpipe.train.model.squeezenet` builds, converted from
NCHW/OIHW to NHWC/HWIO and with the expand channels in whatever order the Concat used;
the feature-map sizes are checked against ONNX shape inference, so a ceil/floor pooling
mismatch fails loudly instead of serving wrong answers. Then `dlpipe.publish.export` writes it.

Needs `onnx` and TensorFlow: an orchestrator-side module, never imported by a function.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlpipe.publish.onnx_graph import PASS_THROUGH, OnnxImportError, _Graph
from dlpipe.shared.recipe import Recipe
from dlpipe.train.model import FIRE_FILTERS, POOL_AFTER
from dlpipe.wire import ModelConfig

# The preprocessing the reference releases were trained with (see the project README).
RECIPES = {
    "1.1": Recipe(size=224, color_order="RGB", resize="center_crop", resize_shorter=256, scale=1 / 255,
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "1.0": Recipe(size=227, color_order="BGR", resize="stretch", scale=1.0,
                  mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0)),
}
DEFAULT_SIZE = {"1.1": 224, "1.0": 227}


@dataclass
class ConvWeights:
    name: str                 # the Keras layer these weights go to
    kernel: np.ndarray        # HWIO, input channels already in Keras order
    bias: np.ndarray


@dataclass
class SqueezeNetGraph:
    """What the walk found: enough to build the Keras model and load its weights."""

    version: str
    input_shape: tuple[int, int, int]                 # H, W, C
    classes: int
    input_name: str = ""
    convs: list[ConvWeights] = field(default_factory=list)
    final_pad: tuple[tuple[int, int], tuple[int, int]] | None = None   # ((top, bottom), (left, right))
    pool_kernel: tuple[int, ...] | None = None   # an AveragePool for the global pool (the ONNX zoo's 1.1: 13x13)
    # ONNX tensor name -> Keras layer name, for the feature-map size check
    checkpoints: dict[str, str] = field(default_factory=dict)


def read_labels(text: str) -> list[str]:
    """Class names from `wnid name, synonyms` lines (imagenet_synset_words.txt) or one name a line.

    With a WordNet id the first name is kept ("n01440764 tench, Tinca tinca" -> "tench").
    """
    labels = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        match = re.match(r"^n\d{8}\s+(.*)$", line)
        labels.append(match.group(1).split(",")[0].strip() if match else line)
        if not labels[-1]:
            raise OnnxImportError(f"labels line {number} has no class name: {line!r}")
    return labels


def _hwio(w: np.ndarray, in_perm: np.ndarray | None) -> np.ndarray:
    """OIHW -> HWIO, picking input channels in Keras order (in_perm[k] = ONNX channel of Keras channel k)."""
    if in_perm is not None:
        w = w[:, in_perm]
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def analyse(model, input_size: int | None = None) -> SqueezeNetGraph:
    """Walk an ONNX SqueezeNet graph from its input; OnnxImportError if it is not one."""
    g = _Graph(model)
    found, first = _conv1(g, input_size)
    tensor = g.relu_after(first, "conv1")
    perm: np.ndarray | None = None     # channel order of `tensor`: Keras channel k = ONNX channel perm[k]
    pools_after: list[int] = []
    stage = 0                          # 0 after conv1, then the fire module index
    fire = 1
    while True:
        where = f"after {'conv1' if stage == 0 else f'fire{stage}'}"
        node = g.only_next(tensor, where)
        if node.op_type == "MaxPool":
            a = g.attrs(node)
            if list(a.get("kernel_shape", [])) != [3, 3] or list(a.get("strides", [1, 1])) != [2, 2] \
                    or any(a.get("pads", [0])):
                raise OnnxImportError(f"{where}: expected a 3x3 stride-2 max pool without padding, got {a}")
            pools_after.append(stage)
            found.checkpoints[node.output[0]] = f"pool{1 if stage == 0 else stage}"
            tensor = node.output[0]
        elif node.op_type == "Pad":
            found.final_pad = _spatial_pad(g, node, where)
            tensor = node.output[0]
        elif node.op_type == "Conv" and _is_fire(g, node):
            fire += 1
            if fire not in FIRE_FILTERS:
                raise OnnxImportError(f"more fire modules than SqueezeNet's eight (fire{fire})")
            tensor, perm = _fire(g, node, fire, perm, found)
            stage = fire
        elif node.op_type == "Conv":
            _classifier(g, node, fire, perm, found)
            break
        else:
            raise OnnxImportError(f"{where}: unexpected {node.op_type} node ({node.name or node.output[0]})")
    if tuple(pools_after) != POOL_AFTER[found.version]:
        raise OnnxImportError(f"max pools after stages {pools_after} (0 = conv1), but SqueezeNet {found.version} "
                              f"pools after {list(POOL_AFTER[found.version])}")
    if found.final_pad is not None and found.version != "1.0":
        raise OnnxImportError("a Pad before the classifier is only known in SqueezeNet 1.0")
    return found


def _conv1(g: _Graph, input_size: int | None):
    """(what was found so far, the conv1 node): conv1's size tells the version, the input the size."""
    dims = [d.dim_value if d.HasField("dim_value") else None for d in g.input.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (None, 3):
        raise OnnxImportError(f"expected an NCHW image input with 3 channels, got dims {dims}")
    first = g.only_next(g.input.name, "the input")
    if first.op_type != "Conv":
        raise OnnxImportError(f"the input should feed a Conv (conv1), it feeds {first.op_type}")
    w = g.inits.get(first.input[1])
    if w is None:
        raise OnnxImportError("conv1's weights are not constants")
    version = {(96, 7): "1.0", (64, 3): "1.1"}.get((w.shape[0], w.shape[2]))
    if version is None:
        raise OnnxImportError(f"conv1 has {w.shape[0]} filters of {w.shape[2]}x{w.shape[3]}: neither "
                              "SqueezeNet 1.0 (96 of 7x7) nor 1.1 (64 of 3x3)")
    w, b = g.conv(first, "conv1", w.shape[2], 2, 0)
    size = input_size or (dims[2] if dims[2] == dims[3] and dims[2] else DEFAULT_SIZE[version])
    if dims[2] and dims[3] and (dims[2], dims[3]) != (size, size):
        raise OnnxImportError(f"the graph's input is fixed at {dims[2]}x{dims[3]}, not {size}x{size}")
    found = SqueezeNetGraph(version, (size, size, 3), classes=0, input_name=g.input.name)
    found.convs.append(ConvWeights("conv1", _hwio(w, None), b))
    return found, first


def _classifier(g: _Graph, node, fire: int, perm, found: SqueezeNetGraph) -> None:
    """conv10 and the global average pool after it (an AveragePool over the whole map counts as one)."""
    if fire != 9:
        raise OnnxImportError(f"the classifier convolution comes after fire{fire}, SqueezeNet has fire9")
    w, b = g.conv(node, "the classifier conv10", 1, 1, 0)
    found.classes = int(w.shape[0])
    found.convs.append(ConvWeights("conv10", _hwio(w, perm), b))
    found.checkpoints[node.output[0]] = "conv10"
    out = g.only_next(g.relu_after(node, "conv10"), "after conv10")
    if out.op_type == "AveragePool" and not any(g.attrs(out).get("pads", [0])):
        found.pool_kernel = tuple(int(k) for k in g.attrs(out).get("kernel_shape", []))
    elif out.op_type != "GlobalAveragePool":
        raise OnnxImportError(f"expected a global average pool after conv10, found {out.op_type}")


def _spatial_pad(g: _Graph, node, where: str) -> tuple[tuple[int, int], tuple[int, int]]:
    a = g.attrs(node)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = list(g.inits[node.input[1]]) if len(node.input) > 1 and node.input[1] in g.inits else list(a.get("pads", []))
    value = float(g.inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in g.inits else 0.0
    if mode != "constant" or value != 0.0 or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) \
            or min(pads) < 0:
        raise OnnxImportError(f"{where}: only spatial zero padding is supported, got mode={mode} "
                              f"value={value} pads={pads}")
    return (int(pads[2]), int(pads[6])), (int(pads[3]), int(pads[7]))


def _is_fire(g: _Graph, squeeze) -> bool:
    nodes = g.next_nodes(squeeze.output[0])
    if len(nodes) != 1 or nodes[0].op_type != "Relu":
        return False
    expands = g.next_nodes(nodes[0].output[0])
    return len(expands) == 2 and all(n.op_type == "Conv" for n in expands)


def _fire(g: _Graph, squeeze, index: int, perm, found: SqueezeNetGraph):
    """Read fire module `index`; returns (its output tensor, its channel order)."""
    where = f"fire{index}"
    s_filters, e_filters = FIRE_FILTERS[index]
    w, b = g.conv(squeeze, f"{where} squeeze", 1, 1, 0)
    if w.shape[0] != s_filters:
        raise OnnxImportError(f"{where}: squeeze has {w.shape[0]} filters, SqueezeNet has {s_filters}")
    found.convs.append(ConvWeights(f"fire{index}_squeeze", _hwio(w, perm), b))
    expands = g.next_nodes(g.relu_after(squeeze, f"{where} squeeze"))
    by_kernel = {}
    for node in expands:
        k = int(g.inits[node.input[1]].shape[2])
        if k not in (1, 3) or k in by_kernel:
            raise OnnxImportError(f"{where}: expected one 1x1 and one 3x3 expand convolution")
        w, b = g.conv(node, f"{where} expand{k}x{k}", k, 1, k // 2)
        if w.shape[0] != e_filters:
            raise OnnxImportError(f"{where}: expand{k}x{k} has {w.shape[0]} filters, SqueezeNet has {e_filters}")
        found.convs.append(ConvWeights(f"fire{index}_expand{k}x{k}", _hwio(w, None), b))
        by_kernel[k] = g.relu_after(node, f"{where} expand{k}x{k}")
    concats = [g.only_next(t, f"{where} expand") for t in by_kernel.values()]
    if concats[0] is not concats[1] or concats[0].op_type != "Concat" or g.attrs(concats[0]).get("axis") != 1:
        raise OnnxImportError(f"{where}: the expand outputs should meet in one channel Concat")
    concat = concats[0]
    inputs = [_through(g, t) for t in concat.input]
    order = {tensor: position for position, tensor in enumerate(inputs)}
    # Keras concatenates [expand1x1, expand3x3]; map each Keras channel to its ONNX channel.
    offsets = {k: order[by_kernel[k]] * e_filters for k in (1, 3)}
    new_perm = np.concatenate([offsets[1] + np.arange(e_filters), offsets[3] + np.arange(e_filters)])
    found.checkpoints[concat.output[0]] = f"fire{index}_concat"
    identity = np.array_equal(new_perm, np.arange(2 * e_filters))
    return concat.output[0], None if identity else new_perm


def _through(g: _Graph, tensor: str) -> str:
    """The tensor before any pass-through nodes that produced `tensor`."""
    for node in g.nodes:
        if tensor in node.output and node.op_type in PASS_THROUGH:
            return _through(g, node.input[0])
    return tensor


def build_keras(found: SqueezeNetGraph):
    """(Keras model for `found` with its weights loaded, {layer name: output H x W} in that model)."""
    import keras
    from keras import layers

    from dlpipe.train.model import squeezenet

    base = squeezenet(found.version, found.input_shape, found.classes,
                      name=f"squeezenet{found.version.replace('.', '_')}_imported")
    sizes = {layer.name: tuple(layer.output.shape[1:3]) for layer in base.layers if len(layer.output.shape) == 4}
    model = base
    if found.final_pad is not None:
        # SqueezeNet 1.0's explicit Pad before conv10: zero cells that conv10 turns into relu(bias).
        x = layers.ZeroPadding2D(found.final_pad, name="conv10_pad")(base.get_layer("dropout").output)
        for name in ("conv10", "avgpool", "probabilities"):
            x = base.get_layer(name)(x)
            if len(x.shape) == 4:
                sizes[name] = tuple(x.shape[1:3])
        model = keras.Model(base.input, x, name=base.name)
    for conv in found.convs:
        layer = model.get_layer(conv.name)
        kernel, bias = layer.get_weights()
        if kernel.shape != conv.kernel.shape or bias.shape != conv.bias.shape:
            raise OnnxImportError(f"{conv.name}: ONNX weights {conv.kernel.shape} do not fit the Keras layer's "
                                  f"{kernel.shape}")
        layer.set_weights([conv.kernel, conv.bias])
    return model, sizes


def check_feature_maps(model_proto, found: SqueezeNetGraph, keras_sizes: dict) -> None:
    """Compare every pool, fire and conv10 output size with ONNX shape inference."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model_proto)
    dims = next(i for i in fixed.graph.input if i.name == found.input_name).type.tensor_type.shape.dim
    for d, value in zip(dims, (1, 3, found.input_shape[0], found.input_shape[1]), strict=True):
        d.dim_value = value
    if found.pool_kernel is not None and found.pool_kernel != keras_sizes.get("conv10"):
        raise OnnxImportError(f"the average pool after conv10 is {found.pool_kernel}, but conv10's map is "
                              f"{keras_sizes.get('conv10')}: not a global pool, so not SqueezeNet's classifier")
    inferred = onnx.shape_inference.infer_shapes(fixed)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    for tensor, layer_name in found.checkpoints.items():
        onnx_hw = tuple(shapes.get(tensor, [0, 0, 0, 0])[2:4])
        keras_hw = keras_sizes.get(layer_name)
        if 0 in onnx_hw:
            continue  # shape inference gave no size for this tensor
        if onnx_hw != keras_hw:
            raise OnnxImportError(f"feature map after {layer_name} is {keras_hw} in Keras but {onnx_hw} in the ONNX "
                                  "graph (ceil/floor pooling or padding differ)")


def load(path: str | Path, input_size: int | None = None):
    """(Keras model with the ONNX weights, what the walk found)."""
    import onnx

    try:
        proto = onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError, OSError...: all mean "not an ONNX file here"
        raise OnnxImportError(f"cannot read {path} as an ONNX model: {err}") from None
    found = analyse(proto, input_size)
    model, sizes = build_keras(found)
    check_feature_maps(proto, found, sizes)
    return model, found


def import_onnx(path: str | Path, labels: list[str], store, name: str, version: str | None = None,
                recipe: Recipe | None = None, input_size: int | None = None):
    """Import an ONNX SqueezeNet into the model store as a servable version: (ExportedVersion, what was found)."""
    from dlpipe.publish.export import export_model

    model, found = load(path, input_size)
    if recipe is None:
        recipe = RECIPES[found.version]
        if recipe.size != found.input_shape[0]:
            size = found.input_shape[0]
            shorter = round(size * recipe.resize_shorter / recipe.size) if recipe.resize_shorter else None
            recipe = Recipe.from_dict({**recipe.to_dict(), "size": size, "resize_shorter": shorter})
    if len(labels) != found.classes:
        raise OnnxImportError(f"the labels file has {len(labels)} names but the model has {found.classes} classes")
    source = {"kind": "onnx", "file": Path(path).name,
              "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
              "architecture": f"SqueezeNet {found.version}"}
    config = ModelConfig(version=found.version, input_shape=found.input_shape, classes=found.classes,
                         small_inputs=False, classifier_relu=True, labels=list(labels),
                         recipe=recipe)
    return export_model(model, store, name, labels, recipe, source=source, version=version, config=config), found
