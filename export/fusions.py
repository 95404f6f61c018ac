"""Graph fusion passes over exported ONNX models (run at export or quantize time, with `onnx`).

fuse_attention replaces each scaled dot-product attention the exporter decomposed (head split,
Q.K^T with the scale split between Q and K, softmax, .V, head merge) by one
com.microsoft.MultiHeadAttention node, the fused attention ONNX Runtime runs with flash and
memory-efficient kernels on CUDA (and its own on the CPU). ONNX Runtime's UNet optimizer
(onnxruntime.transformers.optimizer, model_type "unet") knows the TorchScript exporter's
attention pattern only; this is the torch dynamo exporter's:

    q: MatMul -> Reshape [B, -1, H, D] -> Transpose (0,2,1,3) -> Mul s
    k: MatMul -> Reshape [B, -1, H, D] -> Transpose (0,2,1,3) -> Reshape -> Transpose (0,2,1)
       -> Reshape (K^T as [B, H, D, L]) -> Mul s           (or Transpose (0,2,3,1) directly)
    v: MatMul -> Reshape [B, -1, H, D] -> Transpose (0,2,1,3)
    MatMul(q, k) -> Softmax(-1) -> MatMul(., v) -> Transpose (0,2,1,3) -> Reshape [B, -1, H*D]

Each match's output Reshape becomes the fused node; the pattern's other nodes, and the shape
arithmetic that fed them, go when nothing else reads them.
"""
from __future__ import annotations

from collections import defaultdict

import onnx
from onnx import helper, numpy_helper

MICROSOFT = "com.microsoft"
SMALL = 64  # constants read for matching have at most this many elements


class _Graph:
    """Producers, consumers and small constants of one ONNX graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer
                          if _elements(init.dims) <= SMALL and init.data_location != onnx.TensorProto.EXTERNAL}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def node(self, name: str, op_type: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def scalar(self, name: str) -> float | None:
        value = self.constants.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def ints(self, name: str) -> list[int] | None:
        value = self.constants.get(name)
        return [int(v) for v in value.reshape(-1)] if value is not None and value.dtype.kind in "iu" else None


def _elements(dims) -> int:
    count = 1
    for dim in dims:
        count *= dim
    return count


def _attribute(node, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _transpose(g: _Graph, name: str, perm: list[int]):
    node = g.node(name, "Transpose")
    return node if node is not None and list(_attribute(node, "perm", [])) == perm else None


def _scaled(g: _Graph, name: str) -> tuple[str, float]:
    """(input, scale) when `name` is a Mul by a scalar constant, else (name, 1)."""
    node = g.node(name, "Mul")
    if node is not None:
        for data, factor in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            scale = g.scalar(factor)
            if scale is not None:
                return data, scale
    return name, 1.0


def _heads_split(g: _Graph, name: str) -> tuple[str, int, int] | None:
    """(projection, heads, head size) when `name` is a Reshape to [B, -1, H, D]."""
    node = g.node(name, "Reshape")
    if node is None:
        return None
    shape = g.ints(node.input[1])
    if shape is None:  # [B, -1, H, D] built at run time: Concat(batch, -1, H, D)
        concat = g.node(node.input[1], "Concat")
        if concat is None or len(concat.input) != 4:
            return None
        parts = [g.ints(part) for part in concat.input[1:]]
        if any(part is None or len(part) != 1 for part in parts):
            return None
        shape = [0] + [part[0] for part in parts]
    if len(shape) != 4 or shape[1] != -1 or shape[2] <= 0 or shape[3] <= 0:
        return None
    return node.input[0], shape[2], shape[3]


def _query(g: _Graph, name: str):
    data, scale = _scaled(g, name)
    transpose = _transpose(g, data, [0, 2, 1, 3])
    split = transpose and _heads_split(g, transpose.input[0])
    return split and (*split, scale)


def _key(g: _Graph, name: str):
    """K^T as [B, H, D, L]: a direct Transpose (0,2,3,1), or the dynamo exporter's
    (0,2,1,3) -> Reshape [B*H, L, D] -> Transpose (0,2,1) -> Reshape [B, H, D, L]."""
    data, scale = _scaled(g, name)
    heads = _transpose(g, data, [0, 2, 3, 1])
    if heads is None:
        outer = g.node(data, "Reshape")
        swap = outer and _transpose(g, outer.input[0], [0, 2, 1])
        inner = swap and g.node(swap.input[0], "Reshape")
        heads = inner and _transpose(g, inner.input[0], [0, 2, 1, 3])
        if not heads:
            return None
    split = _heads_split(g, heads.input[0])
    return split and (*split, scale)


def _value(g: _Graph, name: str):
    transpose = _transpose(g, name, [0, 2, 1, 3])
    split = transpose and _heads_split(g, transpose.input[0])
    return split and (*split, 1.0)


def _only_consumer(g: _Graph, name: str, op_type: str):
    users = g.consumers.get(name, [])
    return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def fuse_attention(model: onnx.ModelProto) -> int:
    """Replace, in place, every attention of the pattern above by MultiHeadAttention; return
    how many were fused. Graphs without the pattern are left as they are."""
    g = _Graph(model.graph)
    fused, replaced = [], {}
    for softmax in [node for node in model.graph.node if node.op_type == "Softmax"]:
        if _attribute(softmax, "axis", -1) not in (-1, 3):
            continue
        scores = g.node(softmax.input[0], "MatMul")
        weighted = _only_consumer(g, softmax.output[0], "MatMul")
        merge = weighted and _only_consumer(g, weighted.output[0], "Transpose")
        if merge is not None and list(_attribute(merge, "perm", [])) != [0, 2, 1, 3]:
            merge = None
        output = merge and _only_consumer(g, merge.output[0], "Reshape")
        if scores is None or output is None or weighted.input[0] != softmax.output[0] or \
                len(g.consumers[scores.output[0]]) != 1:
            continue
        query, key, value = _query(g, scores.input[0]), _key(g, scores.input[1]), _value(g, weighted.input[1])
        if not (query and key and value) or len({part[1:3] for part in (query, key, value)}) != 1:
            continue
        heads, size = query[1], query[2]
        merged = g.ints(output.input[1])
        if merged is not None and (len(merged) != 3 or merged[2] not in (-1, heads * size)):
            continue
        fused.append(helper.make_node(
            "MultiHeadAttention", [query[0], key[0], value[0]], [output.output[0]],
            name=f"{softmax.name}/MultiHeadAttention", domain=MICROSOFT, num_heads=heads,
            scale=query[3] * key[3]))
        replaced[id(output)] = fused[-1]
    if not fused:
        return 0
    # The fused node takes the place of its output Reshape (where all three inputs exist); the
    # rest of each pattern goes only if nothing else reads it.
    nodes = [replaced.get(id(node), node) for node in model.graph.node]
    _replace_nodes(model.graph, _live(model.graph, nodes))
    if not any(opset.domain == MICROSOFT for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MICROSOFT, 1))
    return len(fused)


def _live(graph: onnx.GraphProto, nodes: list) -> list:
    """`nodes` less those whose outputs nothing reads (repeatedly: the shape arithmetic that
    fed only removed nodes goes too)."""
    outputs = {output.name for output in graph.output}
    while True:
        read = {name for node in nodes for name in node.input} | outputs
        alive = [node for node in nodes if any(out in read for out in node.output)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive


def _replace_nodes(graph: onnx.GraphProto, nodes: list) -> None:
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
    read = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in read]
    for init in unused:
        graph.initializer.remove(init)
