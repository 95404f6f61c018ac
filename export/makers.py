"""The functions that write one precision variant of one network: each reads the fp32
network's model.onnx, writes the variant's files into a new folder, and returns how it was made
(the tool, its version and settings: the manifest's `made_by`). export.variants lists them,
with the components each makes by default, in its MAKERS table.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from .calibration import Calibration

EXTERNAL_DATA_BYTES = 3 << 29  # 1.5 GiB, as the exporter: larger models keep weights beside the graph


def make_fp16(source: Path, folder: Path, calibration: Calibration | None = None) -> dict:
    """fp16 for every backend: ONNX Runtime's float16 conversion (the operators on its default
    block list stay float32), inputs and outputs kept float32."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # The converter needs every tensor's type: shapes are inferred on the graph without its
    # external weights, since protobuf cannot serialize a model past 2 GiB (the SD 1.5 UNet) whole.
    model = onnx.shape_inference.infer_shapes(onnx.load(str(source), load_external_data=False))
    onnx.load_external_data_for_model(model, str(source.parent))
    # keep_io_types: inputs and outputs stay float32, so the manifest's I/O holds for every variant.
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    _save(model, folder)
    return {"tool": "onnxruntime.transformers.float16.convert_float_to_float16",
            "version": metadata.version("onnxruntime"),
            "settings": {"keep_io_types": True, "op_block_list": "default", "blocked_ops": list(DEFAULT_OP_BLOCK_LIST)}}


def make_fp32_fused(source: Path, folder: Path, calibration: Calibration | None = None) -> dict:
    """ONNX Runtime's form of the fp32 UNet: each attention fused into MultiHeadAttention
    (export.fusions), which ONNX Runtime computes without materializing the attention matrix
    (on the CPU too); everything else, weights included, as exported."""
    import onnx

    from .fusions import fuse_attention

    model = onnx.load(str(source))
    attention = fuse_attention(model)
    _save(model, folder)
    return {"tool": "sdrt.export.fusions.fuse_attention", "version": metadata.version("sdrt"),
            "settings": {"attention_fused": attention, "runs_on": "onnxruntime"}}


def make_fp16_cuda(source: Path, folder: Path, calibration: Calibration | None = None) -> dict:
    """ONNX Runtime's CUDA form of fp16, the way its Stable Diffusion demo optimizes a UNet: the
    attention fused into MultiHeadAttention (export.fusions: ONNX Runtime's optimizer knows the
    TorchScript exporter's attention, not the dynamo exporter's), then its UNet optimizer
    (GroupNorm, SkipGroupNorm, NHWC convolutions, bias fusions: contrib operators only its CUDA
    provider has) and the fp16 conversion, inputs and outputs kept float32."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from .fusions import fuse_attention

    model = onnx.load(str(source))
    attention = fuse_attention(model)
    # opt_level 0: graph fusions in Python only; ONNX Runtime's own run when the session opens on the GPU
    optimized = optimize_model(model, model_type="unet", num_heads=0, hidden_size=0, opt_level=0,
                               optimization_options=FusionOptions("unet"), use_gpu=True)
    optimized.convert_float_to_float16(keep_io_types=True)
    optimized.topological_sort()  # the conversion appends its input casts last
    fused = {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}
    _save(optimized.model, folder)
    return {"tool": "sdrt.export.fusions.fuse_attention + onnxruntime.transformers.optimizer (model_type unet, "
                    "use_gpu) + float16", "version": metadata.version("onnxruntime"),
            "settings": {"attention_fused": attention, "fused_operators": fused, "keep_io_types": True,
                         "runs_on": "onnxruntime cuda"}}


def weight_compressor(mode: str, **settings) -> Callable[[Path, Path, Calibration | None], dict]:
    """NNCF weight compression of the OpenVINO model read from the ONNX file: weights stored in
    int8 (per output channel, asymmetric) or int4 (groups of 128 weights, symmetric; the
    embedding and last layers int8, NNCF's default), decompressed inside OpenVINO's kernels;
    activations stay floating point. Returns the maker for `mode` and `settings`."""

    def make(source: Path, folder: Path, calibration: Calibration | None = None) -> dict:
        import nncf
        import openvino as ov

        options = dict(settings)
        if "group_size" in options:  # layers whose width the group does not divide get a smaller group
            options["advanced_parameters"] = nncf.AdvancedCompressionParameters(
                group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST)
        model = nncf.compress_weights(ov.Core().read_model(str(source)), mode=nncf.CompressWeightsMode[mode],
                                      **options)
        folder.mkdir(parents=True)
        ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
        recorded = {k: v for k, v in settings.items()}
        if "group_size" in settings:
            recorded["group_size_fallback_mode"] = "adjust"
        return {"tool": "nncf.compress_weights", "version": metadata.version("nncf"),
                "settings": {"mode": mode.lower(), **recorded}, "openvino": metadata.version("openvino")}

    return make


def make_int8(source: Path, folder: Path, calibration: Calibration | None) -> dict:
    """int8 for OpenVINO: NNCF's post-training quantization of the denoiser, weights (per channel)
    and activations int8, activation ranges from the calibration inputs (transformer preset:
    SmoothQuant on the matmuls, softmax and the attention's second product left float, fast bias
    correction); networks without calibration get int8 weights only, as optimum-intel does for
    the other networks of a diffusion pipeline. What stays float computes in bf16 where the CPU
    has it (the variant's `compute`)."""
    import nncf
    import openvino as ov

    if calibration is None:
        return weight_compressor("INT8_ASYM")(source, folder, None)
    model = nncf.quantize(ov.Core().read_model(str(source)), nncf.Dataset(calibration.feeds),
                          subset_size=len(calibration.feeds), preset=nncf.QuantizationPreset.MIXED,
                          model_type=nncf.ModelType.TRANSFORMER, fast_bias_correction=True)
    folder.mkdir(parents=True)
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
    return {"tool": "nncf.quantize", "version": metadata.version("nncf"), "openvino": metadata.version("openvino"),
            "settings": {"weights": "int8 symmetric per channel", "activations": "int8, preset mixed",
                         "model_type": "transformer", "smooth_quant": "nncf default", "fast_bias_correction": True,
                         "subset_size": len(calibration.feeds)},
            "calibration": calibration.settings}


def make_qdq_int8(source: Path, folder: Path, calibration: Calibration | None) -> dict:
    """int8 for ONNX Runtime: onnxruntime.quantization's static QDQ model (uint8 activations with
    min/max ranges from the calibration inputs, int8 weights per channel: the u8s8 pairing its
    x86 kernels run fastest, VNNI and AMX) for the denoiser's convolutions and matmuls; networks
    without calibration get int8 weights with activations quantized as they arrive (dynamic)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    external = source.stat().st_size + sum(p.stat().st_size for p in source.parent.glob("*.data")) \
        > EXTERNAL_DATA_BYTES
    folder.mkdir(parents=True)
    target = folder / "model.onnx"
    with tempfile.TemporaryDirectory(prefix=".sdrt-qdq-", dir=folder.parent) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # shape inference and graph optimization first, as onnxruntime.quantization recommends;
        # a model with its weights beside it skips the optimization, which holds more copies of
        # the weights than fit beside quantize_static's in 24 GiB at SD 1.5 sizes
        quant_pre_process(str(source), str(prepared), skip_optimization=external, skip_symbolic_shape=True,
                          save_as_external_data=external, all_tensors_to_one_file=True,
                          external_data_location="prepared.onnx.data")
        if calibration is None:
            quantize_dynamic(str(prepared), str(target), per_channel=True, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"], use_external_data_format=external)
            settings = {"mode": "dynamic", "weights": "int8 per channel", "op_types": ["MatMul", "Gemm"]}
            tool = "onnxruntime.quantization.quantize_dynamic"
        else:
            feeds = iter(calibration.feeds)

            class Reader(CalibrationDataReader):
                def get_next(self):
                    return next(feeds, None)

            op_types = ["Conv", "MatMul", "Gemm"]
            quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=op_types, calibrate_method=CalibrationMethod.MinMax,
                            use_external_data_format=external,
                            extra_options={"WeightSymmetric": True})
            settings = {"mode": "static", "format": "qdq", "activations": "uint8 min/max", "weights":
                        "int8 symmetric per channel", "op_types": op_types}
            tool = "onnxruntime.quantization.quantize_static"
    if external:  # quantize_static names its weights file itself: store the model as the exporter does
        model = onnx.load(str(target))
        shutil.rmtree(folder)
        _save(model, folder)
    return {"tool": tool, "version": metadata.version("onnxruntime"), "settings": settings,
            **({"calibration": calibration.settings} if calibration is not None else {})}


def _save(model, folder: Path) -> None:
    import onnx

    folder.mkdir(parents=True)
    # (weights counted one by one: protobuf cannot measure a model past 2 GiB whole)
    external = sum(tensor.ByteSize() for tensor in model.graph.initializer) > EXTERNAL_DATA_BYTES
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=external,
                    all_tensors_to_one_file=True, location="model.onnx.data")
