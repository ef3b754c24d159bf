"""Walking an ONNX graph by structure: who produces and who consumes each tensor, and the checks on the way.

Needs `onnx`: an orchestrator-side module, never imported by a function.
"""

from __future__ import annotations

import numpy as np

PASS_THROUGH = {"Dropout", "Identity"}      # inference no-ops some exporters leave in


class OnnxImportError(ValueError):
    """The file is not a SqueezeNet graph this importer understands; the message says where."""


class _Graph:
    """Producer/consumer maps over an ONNX graph, with the walking helpers."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        graph = model.graph
        self.inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:  # Constant nodes hold parameters too in some exporters
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.inits[node.output[0]] = numpy_helper.to_array(attr.t)
        self.nodes = [n for n in graph.node if n.op_type != "Constant"]
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        inputs = [i for i in graph.input if i.name not in self.inits]
        if len(inputs) != 1:
            raise OnnxImportError(f"expected one image input, the graph has {len(inputs)}: "
                                  f"{[i.name for i in inputs]}")
        self.input = inputs[0]

    @staticmethod
    def attrs(node) -> dict:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def next_nodes(self, tensor: str) -> list:
        """Consumers of `tensor`, looking through pass-through nodes."""
        found = []
        for node in self.consumers.get(tensor, []):
            if node.op_type in PASS_THROUGH:
                found += self.next_nodes(node.output[0])
            else:
                found.append(node)
        return found

    def only_next(self, tensor: str, where: str):
        nodes = self.next_nodes(tensor)
        if len(nodes) != 1:
            raise OnnxImportError(f"{where}: expected one operation to follow, found "
                                  f"{[n.op_type for n in nodes] or 'none'}")
        return nodes[0]

    def relu_after(self, conv, where: str) -> str:
        node = self.only_next(conv.output[0], where)
        if node.op_type != "Relu":
            raise OnnxImportError(f"{where}: expected Relu after the convolution, found {node.op_type}")
        return node.output[0]

    def conv(self, node, where: str, kernel: int, stride: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
        """(OIHW weights, bias) of a Conv node, after checking the geometry SqueezeNet uses."""
        a = self.attrs(node)
        if node.input[1] not in self.inits:
            raise OnnxImportError(f"{where}: the convolution weights are not constants")
        w = self.inits[node.input[1]].astype(np.float32)
        b = (self.inits[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2]
             else np.zeros(w.shape[0], np.float32))
        ks = list(a.get("kernel_shape", w.shape[2:]))
        problems = []
        if ks != [kernel, kernel]:
            problems.append(f"kernel {ks} (expected {kernel}x{kernel})")
        if list(a.get("strides", [1, 1])) != [stride, stride]:
            problems.append(f"strides {a.get('strides')} (expected {stride})")
        if a.get("group", 1) != 1 or set(a.get("dilations", [1, 1])) != {1}:
            problems.append("grouped or dilated")
        pads = a.get("pads", [0, 0, 0, 0])
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER") and stride == 1:
            pads = [kernel // 2] * 4
        if list(pads) != [pad] * 4:
            problems.append(f"pads {list(pads)} (expected {pad} on every side)")
        if problems:
            raise OnnxImportError(f"{where}: unexpected convolution: {', '.join(problems)}")
        return w, b
