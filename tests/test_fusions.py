"""Graph fusion passes (export/fusions.py): the fused graph computes what the exported one does."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sdrt.export.fusions import fuse_attention  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo" / "artifact"


def _ops(model) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def _run(model, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("latent", [8, 12])
def test_fused_unet_attention_matches_the_exported_graph(latent):
    exported = onnx.load(str(DEMO / "unet" / "model.onnx"))
    fused = onnx.load(str(DEMO / "unet" / "model.onnx"))
    softmaxes = _ops(exported)["Softmax"]
    assert softmaxes > 0
    assert fuse_attention(fused) == softmaxes
    ops = _ops(fused)
    assert ops["MultiHeadAttention"] == softmaxes and ops["Softmax"] == 0
    assert ops["MatMul"] == _ops(exported)["MatMul"] - 2 * softmaxes  # Q.K^T and .V of each
    onnx.checker.check_model(fused)
    rng = np.random.default_rng(latent)
    width = exported.graph.input[2].type.tensor_type.shape.dim[2].dim_value
    feeds = {"sample": rng.standard_normal((2, 4, latent, latent)).astype(np.float32),
             "timestep": np.array([901.0, 901.0], np.float32),
             "encoder_hidden_states": rng.standard_normal((2, 77, width)).astype(np.float32)}
    expected, actual = _run(exported, feeds), _run(fused, feeds)
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()


def test_masked_attention_is_left_alone():
    """CLIP's causal attention adds a mask before the softmax, which MultiHeadAttention (without
    a mask input here) would drop: the text encoder stays as exported."""
    model = onnx.load(str(DEMO / "text_encoder" / "model.onnx"))
    before = model.SerializeToString()
    assert _ops(model)["Softmax"] > 0
    assert fuse_attention(model) == 0
    assert model.SerializeToString() == before


def test_attention_whose_head_split_differs_between_q_and_k_is_not_fused():
    """The pattern's checks hold: K split into 4 heads of 24 where Q has 8 of 12 is no attention
    MultiHeadAttention computes; that one stays as it is, the others fuse."""
    model = onnx.load(str(DEMO / "unet" / "model.onnx"))
    softmaxes = _ops(model)["Softmax"]
    producer = {out: node for node in model.graph.node for out in node.output}
    node = producer[producer[next(n for n in model.graph.node if n.op_type == "Softmax").input[0]].input[1]]
    while not (node.op_type == "Reshape" and len(producer[node.input[1]].input) == 4):
        node = producer[node.input[0]]  # from K's scale back to its head split
    shared = producer[node.input[1]]  # Concat(batch, -1, H, D), shared with Q and V
    for name, value in (("other_heads", 4), ("other_size", 24)):
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([value], np.int64), name))
    split = onnx.helper.make_node("Concat", [shared.input[0], shared.input[1], "other_heads", "other_size"],
                                  ["other_split"], axis=0)
    model.graph.node.insert(list(model.graph.node).index(shared) + 1, split)
    node.input[1] = "other_split"
    assert fuse_attention(model) == softmaxes - 1
    assert _ops(model)["Softmax"] == 1


def test_what_the_pattern_shares_with_the_rest_of_the_graph_stays():
    """A tensor inside an attention that something else also reads (here the first query's
    head split, made a graph output) keeps the nodes that compute it; the model still runs."""
    model = onnx.load(str(DEMO / "unet" / "model.onnx"))
    producer = {out: node for node in model.graph.node for out in node.output}
    softmax = next(node for node in model.graph.node if node.op_type == "Softmax")
    scaled = producer[producer[softmax.input[0]].input[0]]  # Mul(Transpose(Reshape(q)), scale)
    heads = next(name for name in scaled.input if name in producer and producer[name].op_type == "Transpose")
    model.graph.output.append(onnx.helper.make_tensor_value_info(heads, onnx.TensorProto.FLOAT, ["b", "h", "s", "d"]))
    softmaxes = _ops(model)["Softmax"]
    assert fuse_attention(model) == softmaxes
    onnx.checker.check_model(model)
    assert heads in {out for node in model.graph.node for out in node.output}
    width = model.graph.input[2].type.tensor_type.shape.dim[2].dim_value
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((1, 4, 8, 8)).astype(np.float32), "timestep": np.array([3.0], np.float32),
             "encoder_hidden_states": rng.standard_normal((1, 77, width)).astype(np.float32)}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, feeds)[1].shape[1] > 0
