"""The fused step (kernels.sampler_step.fused_step) as a tiny ONNX graph, for loops whose
tensors stay on a device that ONNX Runtime drives (IOBinding: the UNet's output feeds this
graph, whose next_sample feeds the UNet, without a trip through the host).

The graph ships with sdrt as sampler_step.onnx (no weights, any latent shape); this module
writes it with the `onnx` package:

    python -m sdrt.kernels.step_graph      # rewrites kernels/sampler_step.onnx

Inputs: model_output [N, C, H, W] (N = copies x B: the unconditional half first), latents_0 ...
latents_4 [B, C, H, W] (x[i], x[i-1], ...), outputs_1 ... outputs_4 [B, C, H, W] (earlier guided
outputs), coefficients [13] (one row of kernels.sampler_step.step_coefficients), noise
[B, C, H, W], next_timestep [N]. Outputs: next_latents, guided_output [B, C, H, W],
next_sample [N, C, H, W], timestep [N] (next_timestep copied: into the UNet's own timestep
buffer, so that the UNet reads every step from the same addresses, as a CUDA graph needs).
"""
from __future__ import annotations

import sys
from pathlib import Path

from .sampler_step import (
    COEFFICIENTS,
    GUIDANCE,
    LATENT_WEIGHTS,
    MAX_HISTORY,
    NEXT_INPUT_SCALE,
    NOISE_WEIGHT,
    OUTPUT_WEIGHTS,
)

STEP_GRAPH = Path(__file__).with_name("sampler_step.onnx")
OPSET = 18
LATENT_INPUTS = [f"latents_{k}" for k in range(MAX_HISTORY)]
OUTPUT_INPUTS = [f"outputs_{k}" for k in range(1, MAX_HISTORY)]


def step_shape_profile(sample: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
                       ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes of the graph's inputs (a TensorRT engine of it) for a UNet whose
    sample input [N, C, H, W] has the (min, opt, max) shapes `sample`: model_output as the
    sample; the latent-sized inputs [B, C, H, W] with B from 1 to N (N = B with guidance off,
    2B with it on: opt taken as on); coefficients fixed; next_timestep [N]."""
    least, best, most = sample
    latent = ((1, *least[1:]), (max(1, best[0] // 2), *best[1:]), (most[0], *most[1:]))
    return {"model_output": tuple(sample), **dict.fromkeys([*LATENT_INPUTS, *OUTPUT_INPUTS, "noise"], latent),
            "coefficients": ((COEFFICIENTS,),) * 3, "next_timestep": ((least[0],), (best[0],), (most[0],))}


def build_step_graph():
    """The fused step as an onnx.ModelProto."""
    from onnx import TensorProto, helper

    latent = ["batch", "channels", "height", "width"]
    inputs = [helper.make_tensor_value_info("model_output", TensorProto.FLOAT, ["unet_batch", *latent[1:]])]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, latent) for name in LATENT_INPUTS + OUTPUT_INPUTS]
    inputs += [helper.make_tensor_value_info("coefficients", TensorProto.FLOAT, [COEFFICIENTS]),
               helper.make_tensor_value_info("noise", TensorProto.FLOAT, latent),
               helper.make_tensor_value_info("next_timestep", TensorProto.FLOAT, ["unet_batch"])]
    outputs = [helper.make_tensor_value_info("next_latents", TensorProto.FLOAT, latent),
               helper.make_tensor_value_info("guided_output", TensorProto.FLOAT, latent),
               helper.make_tensor_value_info("next_sample", TensorProto.FLOAT, ["unet_batch", *latent[1:]]),
               helper.make_tensor_value_info("timestep", TensorProto.FLOAT, ["unet_batch"])]
    constants = {"minus_one": [-1], "zero": 0, "three_ones": [1, 1, 1], "first": [0], "one": [1]}
    nodes = [helper.make_node("Constant", [], [name], value=helper.make_tensor(
        name, TensorProto.INT64, [len(value)] if isinstance(value, list) else [], value
        if isinstance(value, list) else [value])) for name, value in constants.items()]

    def coefficient(index: int) -> str:
        name = f"c{index}"
        nodes.append(helper.make_node("Constant", [], [f"i{index}"], value=helper.make_tensor(
            f"i{index}", TensorProto.INT64, [], [index])))
        nodes.append(helper.make_node("Gather", ["coefficients", f"i{index}"], [name], axis=0))
        return name

    # model_output viewed as [copies, B, C, H, W]: the unconditional half first, the conditional last
    nodes += [helper.make_node("Shape", ["latents_0"], ["latent_shape"]),
              helper.make_node("Concat", ["minus_one", "latent_shape"], ["halves_shape"], axis=0),
              helper.make_node("Reshape", ["model_output", "halves_shape"], ["halves"]),
              helper.make_node("Gather", ["halves", "zero"], ["uncond"], axis=0),
              helper.make_node("Gather", ["halves", "minus_one"], ["cond_1"], axis=0),
              helper.make_node("Squeeze", ["cond_1", "first"], ["cond"]),
              helper.make_node("Sub", ["cond", "uncond"], ["difference"]),
              helper.make_node("Mul", [coefficient(GUIDANCE), "difference"], ["scaled_difference"]),
              helper.make_node("Add", ["uncond", "scaled_difference"], ["guided_output"])]
    terms = []
    weighted = list(zip(LATENT_INPUTS, range(LATENT_WEIGHTS.start, LATENT_WEIGHTS.stop)))
    weighted += list(zip(["guided_output", *OUTPUT_INPUTS], range(OUTPUT_WEIGHTS.start, OUTPUT_WEIGHTS.stop)))
    weighted.append(("noise", NOISE_WEIGHT))
    for value, index in weighted:
        nodes.append(helper.make_node("Mul", [coefficient(index), value], [f"term_{value}"]))
        terms.append(f"term_{value}")
    nodes.append(helper.make_node("Sum", terms, ["next_latents"]))
    # next_sample: the next latents scaled for the next UNet call, once per copy of the batch
    nodes += [helper.make_node("Mul", [coefficient(NEXT_INPUT_SCALE), "next_latents"], ["next_scaled"]),
              helper.make_node("Shape", ["model_output"], ["output_shape"]),
              helper.make_node("Gather", ["output_shape", "first"], ["unet_batch"], axis=0),
              helper.make_node("Gather", ["latent_shape", "first"], ["batch"], axis=0),
              helper.make_node("Div", ["unet_batch", "batch"], ["copies"]),
              helper.make_node("Concat", ["copies", "three_ones"], ["repeats"], axis=0),
              helper.make_node("Tile", ["next_scaled", "repeats"], ["next_sample"]),
              helper.make_node("Identity", ["next_timestep"], ["timestep"])]
    graph = helper.make_graph(nodes, "sdrt_sampler_step", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sdrt")
    model.ir_version = 8
    return model


def main() -> int:
    import onnx

    model = build_step_graph()
    onnx.checker.check_model(model, full_check=True)
    STEP_GRAPH.write_bytes(model.SerializeToString())
    sys.stdout.write(f"wrote {STEP_GRAPH}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
