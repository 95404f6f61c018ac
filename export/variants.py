"""Precision variants of an artifact's networks, stored in the artifact with how each was made
and a quality report measured against the fp32 networks on the same inputs.

    variants/<precision>/<component>/model.onnx (+ model.onnx.data), or model.xml + model.bin
    (OpenVINO models: the variants NNCF makes)

Each variant's manifest entry (components.<name>.variants.<precision>) holds its files, the
tool, version and settings that made it, and its output difference from the fp32 network on
recorded pipeline inputs; the manifest's `quality_reports.<precision>` compares whole images
(PSNR, SSIM) made with and without the variants, same prompts, seeds and sampler.

The files are written to a hidden staging folder, measured from there, and moved into place
only with the manifest that lists them, so an interruption leaves the artifact as it was (a
process killed outright leaves its staging folder, which the next run removes).
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from ..kernels.image import psnr, ssim
from ..models.manifest import MANIFEST_NAME, sha256_file
from ..runtime.artifact import Artifact, open_artifact
from .source import ExportError, require_packages

EXTERNAL_DATA_BYTES = 3 << 29  # 1.5 GiB, as the exporter: larger models keep weights beside the graph
REPORT_PROMPTS = ("a photograph of a castle on a hill at sunset", "a red circle on a blue background")
REPORT_SEEDS = (0, 1)
REPORT_STEPS = 10
ROLES = ("text_encoder", "denoiser", "vae_decoder")

# progress(what is being done now)
Progress = Callable[[str], None]


# Calibration prompts when the user gives none: the demo model's world and ordinary SD subjects,
# so that the denoiser sees both kinds of conditioning (a file of the user's own prompts is better).
CALIBRATION_PROMPTS = (
    "a red circle on a blue background", "a small green triangle in the top left on a white background",
    "a large yellow square in the center on a black background", "a purple circle at the bottom right on gray",
    "a photograph of a castle on a hill at sunset", "portrait of an old fisherman, oil painting, detailed",
    "a bowl of fruit on a wooden table, soft light", "a city street at night in the rain, neon signs",
)
CALIBRATION_STEPS = 10
CALIBRATION_ROLES = ("denoiser",)  # the networks whose activations a calibrated maker quantizes


@dataclass(frozen=True)
class Calibration:
    """Inputs the denoiser received while the fp32 pipeline made images for calibration prompts
    (classifier-free guidance batches, every step), and how they were made."""

    feeds: list[dict[str, np.ndarray]]
    settings: dict


@dataclass(frozen=True)
class Maker:
    """How one precision is made: default components, and a function that writes one variant."""

    components: tuple[str, ...]  # made when the user names none
    report_backend: str  # the backend whose arithmetic the report measures
    # (fp32 model.onnx, output folder, calibration or None) -> made_by; calibration is given for
    # CALIBRATION_ROLES when `calibrated`
    make: Callable[[Path, Path, Calibration | None], dict]
    format: str = "onnx"  # "onnx": every backend; "openvino": an OpenVINO IR model (.xml + .bin)
    model_file: str = "model.onnx"
    calibrated: bool = False
    # what the backend computes the variant's float operations in: "bf16" asks OpenVINO for bf16,
    # which it takes on CPUs with AMX or AVX512-BF16 (fp32 elsewhere)
    compute: str = "fp32"
    report_device: str = "cpu"  # the device the report runs on (a variant of GPU-only operators: the GPU)
    packages: tuple[str, ...] = ("onnx", "onnxruntime")  # what `make` imports


def _fp16(source: Path, folder: Path, calibration: Calibration | None = None) -> dict:
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


def _fp32_fused(source: Path, folder: Path, calibration: Calibration | None = None) -> dict:
    """ONNX Runtime's form of the fp32 UNet: each attention fused into MultiHeadAttention
    (kernels.fusions), which ONNX Runtime computes without materializing the attention matrix
    (on the CPU too); everything else, weights included, as exported."""
    import onnx

    from ..kernels.fusions import fuse_attention

    model = onnx.load(str(source))
    attention = fuse_attention(model)
    _save(model, folder)
    return {"tool": "sdrt.kernels.fusions.fuse_attention", "version": metadata.version("sdrt"),
            "settings": {"attention_fused": attention, "runs_on": "onnxruntime"}}


def _fp16_cuda(source: Path, folder: Path, calibration: Calibration | None = None) -> dict:
    """ONNX Runtime's CUDA form of fp16, the way its Stable Diffusion demo optimizes a UNet: the
    attention fused into MultiHeadAttention (kernels.fusions: ONNX Runtime's optimizer knows the
    TorchScript exporter's attention, not the dynamo exporter's), then its UNet optimizer
    (GroupNorm, SkipGroupNorm, NHWC convolutions, bias fusions: contrib operators only its CUDA
    provider has) and the fp16 conversion, inputs and outputs kept float32."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from ..kernels.fusions import fuse_attention

    model = onnx.load(str(source))
    attention = fuse_attention(model)
    # opt_level 0: graph fusions in Python only; ONNX Runtime's own run when the session opens on the GPU
    optimized = optimize_model(model, model_type="unet", num_heads=0, hidden_size=0, opt_level=0,
                               optimization_options=FusionOptions("unet"), use_gpu=True)
    optimized.convert_float_to_float16(keep_io_types=True)
    optimized.topological_sort()  # the conversion appends its input casts last
    fused = {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}
    _save(optimized.model, folder)
    return {"tool": "sdrt.kernels.fusions.fuse_attention + onnxruntime.transformers.optimizer (model_type unet, "
                    "use_gpu) + float16", "version": metadata.version("onnxruntime"),
            "settings": {"attention_fused": attention, "fused_operators": fused, "keep_io_types": True,
                         "runs_on": "onnxruntime cuda"}}


def _weight_compression(mode: str, **settings) -> Callable[[Path, Path], dict]:
    """NNCF weight compression of the OpenVINO model read from the ONNX file: weights stored in
    int8 (per output channel, asymmetric) or int4 (groups of 128 weights, symmetric; the
    embedding and last layers int8, NNCF's default), decompressed inside OpenVINO's kernels;
    activations stay floating point."""

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


def _int8(source: Path, folder: Path, calibration: Calibration | None) -> dict:
    """int8 for OpenVINO: NNCF's post-training quantization of the denoiser, weights (per channel)
    and activations int8, activation ranges from the calibration inputs (transformer preset:
    SmoothQuant on the matmuls, softmax and the attention's second product left float, fast bias
    correction); networks without calibration get int8 weights only, as optimum-intel does for
    the other networks of a diffusion pipeline. What stays float computes in bf16 where the CPU
    has it (the variant's `compute`)."""
    import nncf
    import openvino as ov

    if calibration is None:
        return _weight_compression("INT8_ASYM")(source, folder)
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


def _qdq_int8(source: Path, folder: Path, calibration: Calibration | None) -> dict:
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


# The SD VAE decoder is known to overflow fp16 activations at full size, so fp16 leaves it fp32
# unless named (--components vae_decoder); ONNX Runtime computes fp16 models in fp16 on the CPU
# where it has kernels, so fp16's report is measured without a GPU. fp16-cuda is ONNX Runtime's
# CUDA form of the fp16 UNet (its contrib operators run on CUDA only: the report needs that
# GPU). fp32-fused is ONNX Runtime's form of the fp32 UNet (fused attention, on every provider
# it has). Weight-only variants are OpenVINO models (NNCF's ONNX output does not load in ONNX Runtime
# or OpenVINO at opset 18). int8 is calibrated: the denoiser's activations too (the other
# networks' weights only); int8-qdq is ONNX Runtime's form of it.
NNCF_PACKAGES = ("onnx", "nncf", "openvino")  # OpenVINO's compression of ONNX networks
MAKERS = {
    "int8": Maker(("text_encoder", "unet", "vae_decoder"), "openvino", _int8, "openvino", "model.xml",
                  calibrated=True, compute="bf16", packages=NNCF_PACKAGES),
    "fp16": Maker(("text_encoder", "unet"), "onnxruntime", _fp16),
    "fp32-fused": Maker(("unet",), "onnxruntime", _fp32_fused, "onnxruntime"),
    "fp16-cuda": Maker(("unet",), "onnxruntime", _fp16_cuda, "onnxruntime-cuda", report_device="cuda"),
    "int8-qdq": Maker(("text_encoder", "unet"), "onnxruntime", _qdq_int8, calibrated=True),
    "int8-weights": Maker(("text_encoder", "unet", "vae_decoder"), "openvino", _weight_compression("INT8_ASYM"),
                          "openvino", "model.xml", packages=NNCF_PACKAGES),
    "int4-weights": Maker(("text_encoder", "unet"), "openvino",
                          _weight_compression("INT4_SYM", group_size=128, ratio=1.0), "openvino", "model.xml",
                          packages=NNCF_PACKAGES),
}


def _save(model, folder: Path) -> None:
    import onnx

    folder.mkdir(parents=True)
    # (weights counted one by one: protobuf cannot measure a model past 2 GiB whole)
    external = sum(tensor.ByteSize() for tensor in model.graph.initializer) > EXTERNAL_DATA_BYTES
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=external,
                    all_tensors_to_one_file=True, location="model.onnx.data")


def make_variants(artifact_root: str | Path, precision: str, components: Iterable[str] | None = None, *,
                  report_backend: str | None = None, prompts: Iterable[str] = REPORT_PROMPTS,
                  seeds: Iterable[int] = REPORT_SEEDS, steps: int = REPORT_STEPS, fidelity_prompts: int = 0,
                  calibration_prompts: Iterable[str] | None = None, calibration_steps: int = CALIBRATION_STEPS,
                  calibration_size: tuple[int, int] | None = None, progress: Progress | None = None) -> dict:
    """Make `precision` variants of `components` (default: the precision's usual ones), measure
    them, and add them to the artifact's manifest; return the pipeline-level quality report.

    fidelity_prompts > 0 (artifacts of the demo model): also score prompt fidelity with the
    demo model's checker on that many evaluation prompts (seed 1), fp32 and variant.
    Calibrated precisions (int8) run the fp32 pipeline on `calibration_prompts` (default
    CALIBRATION_PROMPTS) for `calibration_steps` steps at `calibration_size` (default: the
    model's size) and quantize the denoiser's activations for the inputs it received."""
    report = progress or (lambda what: None)
    if precision == "bf16":
        return _report_bf16(Path(artifact_root), tuple(prompts), tuple(seeds), steps, fidelity_prompts, report)
    if precision not in MAKERS:
        raise ExportError(f"sdrt makes these precision variants: bf16 (a report only), {', '.join(MAKERS)}; got "
                          f"{precision!r}.")
    maker = MAKERS[precision]
    require_packages(f"Making {precision} variants", maker.packages)
    root = Path(artifact_root)
    artifact = open_artifact(root)
    names = list(components) if components is not None else list(maker.components)
    known = [n for n, e in artifact.manifest["components"].items() if e["role"] in ROLES]
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise ExportError(f"Choose components among {', '.join(known)}; got {', '.join(unknown) or 'none'}.")

    calibration = None
    roles = {name: artifact.manifest["components"][name]["role"] for name in names}
    if maker.calibrated and any(role in CALIBRATION_ROLES for role in roles.values()):
        prompts_list = list(CALIBRATION_PROMPTS if calibration_prompts is None else calibration_prompts)
        if not prompts_list or not all(isinstance(p, str) and p.strip() for p in prompts_list):
            raise ExportError("Calibration needs at least one prompt, and no empty ones.")
        if calibration_steps < 1:
            raise ExportError(f"Calibration needs at least one step; got {calibration_steps}.")
        report(f"running the fp32 pipeline on {len(prompts_list)} calibration prompts")
        calibration = calibrate(artifact, maker.report_backend, prompts_list, calibration_steps, calibration_size)

    for leftover in (root / "variants").glob(".partial-*"):  # a killed run's staging (one run per artifact)
        shutil.rmtree(leftover, ignore_errors=True)
    token = uuid.uuid4().hex[:8]
    staging = root / "variants" / f".partial-{token}"
    try:
        staged_manifest = json.loads(json.dumps(artifact.manifest))
        entries, records = {}, {}
        for name in names:
            report(f"making the {precision} {name}")
            folder = staging / name
            started = time.perf_counter()
            made_by = maker.make(artifact.component(name).path, folder,
                                 calibration if roles[name] in CALIBRATION_ROLES else None)
            made_by["seconds"] = round(time.perf_counter() - started, 2)
            files = sorted(p.name for p in folder.iterdir())
            entries[name] = {"precision": precision, "format": maker.format, "made_by": made_by,
                             "size": sum((folder / f).stat().st_size for f in files),
                             **({"compute": maker.compute} if maker.compute != "fp32" else {})}
            staged = f"{staging.relative_to(root).as_posix()}/{name}"
            records[name] = {f: {"sha256": sha256_file(folder / f), "size": (folder / f).stat().st_size} for f in files}
            staged_manifest["files"].update({f"{staged}/{f}": record for f, record in records[name].items()})
            staged_manifest["components"][name].setdefault("variants", {})[precision] = {
                **entries[name], "path": f"{staged}/{maker.model_file}", "files": [f"{staged}/{f}" for f in files]}
        backend = report_backend or maker.report_backend
        missing = _missing_device(backend, maker.report_device)
        if missing is None:
            quality, component_quality = measure(Artifact(root, staged_manifest), precision, names, backend,
                                                 tuple(prompts), tuple(seeds), steps, fidelity_prompts, report,
                                                 maker.report_device)
        else:  # stored unmeasured, saying so; `sdrt quantize` again where the device is measures it
            report(f"not measuring: {missing}")
            quality = {"measured": False, "backend": backend, "device": maker.report_device, "reason": missing}
            component_quality = {name: dict(quality) for name in names}
        final = root / "variants" / precision
        manifest = artifact.manifest
        for name in names:
            target = final / name
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            (staging / name).rename(target)
            old = manifest["components"][name].get("variants", {}).get(precision)
            for relative in (old or {}).get("files", []):
                manifest["files"].pop(relative, None)
            folder = target.relative_to(root).as_posix()
            files = [f"{folder}/{f}" for f in records[name]]
            manifest["files"].update({f"{folder}/{f}": record for f, record in records[name].items()})
            manifest["components"][name].setdefault("variants", {})[precision] = {
                **entries[name], "path": f"{folder}/{maker.model_file}", "files": files,
                "quality": component_quality[name]}
        manifest.setdefault("quality_reports", {})[precision] = quality
        _replace_manifest(root, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return quality


def _missing_device(backend: str, device: str) -> str | None:
    """Why `backend` cannot run on `device` here, or None when it can."""
    if device == "cpu":
        return None
    import onnxruntime as ort

    from ..runtime.backends.onnxruntime_devices import PACKAGES, PROVIDERS, parse_device

    kind, _ = parse_device(device)
    if PROVIDERS[kind] in ort.get_available_providers():
        return None
    return (f"the report runs on {backend} {device}, and this ONNX Runtime has no {PROVIDERS[kind]} "
            f"({PACKAGES[kind]} has)")


def _report_bf16(root: Path, prompts: tuple[str, ...], seeds: tuple[int, ...], steps: int, fidelity_prompts: int,
                 report: Progress) -> dict:
    """bf16 is OpenVINO computing the fp32 files in bf16 (no files to make): measure it as a
    variant and store the report, with each network's output difference, under
    quality_reports.bf16."""
    artifact = open_artifact(root)
    names = [n for n, e in artifact.manifest["components"].items() if e["role"] in ROLES]
    quality, networks = measure(artifact, "bf16", names, "openvino", prompts, seeds, steps, fidelity_prompts, report)
    quality["networks"] = networks
    manifest = artifact.manifest
    manifest.setdefault("quality_reports", {})["bf16"] = quality
    _replace_manifest(root, manifest)
    return quality


def _replace_manifest(root: Path, manifest: dict) -> None:
    """Write the manifest beside the old one and rename it over: readers see one or the other."""
    partial = root / f".{MANIFEST_NAME}.{uuid.uuid4().hex[:8]}"
    partial.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    partial.replace(root / MANIFEST_NAME)


class _Recorder:
    """A session that keeps a copy of every call's inputs and outputs (the pipeline reuses its
    input buffers, so they are copied)."""

    def __init__(self, session):
        self.session, self.calls = session, []

    def run(self, feeds):
        outputs = self.session.run(feeds)
        self.calls.append(({k: np.array(v) for k, v in feeds.items()}, outputs))
        return outputs


def calibrate(artifact: Artifact, backend: str, prompts: list[str], steps: int,
              size: tuple[int, int] | None) -> Calibration:
    """Record the denoiser's inputs while the fp32 pipeline makes one image per prompt (seed =
    the prompt's index, guidance 7.5, the model's default sampler), on the backend the int8
    form runs on."""
    from ..runtime.backends import SessionOptions
    from ..runtime.pipeline import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(artifact, backend, SessionOptions())
    height, width = size or pipe.default_size
    recorder = _Recorder(pipe.sessions["denoiser"])
    pipe.sessions["denoiser"] = recorder
    for seed, prompt in enumerate(prompts):
        pipe(prompt, seed=seed, num_inference_steps=steps, guidance_scale=7.5, height=height, width=width,
             output_type="latent")
    feeds = [feeds for feeds, _ in recorder.calls]
    recorder.calls.clear()
    return Calibration(feeds, {"prompts": prompts, "seeds": list(range(len(prompts))), "steps": steps,
                               "guidance_scale": 7.5, "sampler": pipe.default_sampler, "size": [height, width],
                               "samples": len(feeds), "backend": backend, "precision": "fp32"})


def measure(artifact: Artifact, precision: str, names: list[str], backend: str, prompts: tuple[str, ...],
            seeds: tuple[int, ...], steps: int, fidelity_prompts: int, report: Progress,
            device: str = "cpu") -> tuple[dict, dict]:
    """(pipeline report, {component: report}) of `precision` against fp32 on `backend`."""
    from ..runtime.backends import SessionOptions
    from ..runtime.pipeline import StableDiffusionPipeline

    report(f"measuring against fp32 on {backend}")
    exported = {name: "fp32" for name, entry in artifact.manifest["components"].items() if entry["role"] in ROLES}
    settings = dict(num_inference_steps=steps, guidance_scale=7.5, output_type="np")
    requests = [(prompt, seed) for prompt in prompts for seed in seeds]
    subset = []
    if fidelity_prompts > 0:
        from ..models.demo.evaluation import evaluate, load_evaluation_prompts

        subset = load_evaluation_prompts()[:fidelity_prompts]
    images, seconds, fidelity = {}, {}, {}

    def run(label, pipe):
        started = time.perf_counter()
        images[label] = [(pipe(prompt, seed=seed, **settings).images[0] * 255).round().astype(np.uint8)
                         for prompt, seed in requests]
        seconds[label] = (time.perf_counter() - started) / len(requests)

    def score(label, pipe):
        if subset:
            report(f"scoring prompt fidelity of {label} on {fidelity_prompts} prompts")
            fidelity[label] = evaluate(pipe, subset, seeds=(1,))["overall"]

    # One pipeline at a time: at SD 1.5 sizes two of them would not fit beside each other in
    # 24 GiB. The fp32 one records its networks' calls, which the variant's networks rerun.
    reference = StableDiffusionPipeline(artifact, backend, SessionOptions(device=device), exported)
    height, width = reference.default_size
    sampler = reference.default_sampler
    recorders = {role: _Recorder(session) for role, session in reference.sessions.items()}
    reference.sessions.update(recorders)
    run("fp32", reference)
    reference.sessions.update({role: recorder.session for role, recorder in recorders.items()})  # stop recording
    score("fp32", reference)
    for recorder in recorders.values():
        recorder.session = None  # the recorded calls are all the comparison needs
    del reference
    variant = StableDiffusionPipeline(artifact, backend, SessionOptions(device=device), precision)
    run(precision, variant)
    score(precision, variant)
    psnrs = [psnr(a, b) for a, b in zip(images["fp32"], images[precision])]
    ssims = [ssim(a, b) for a, b in zip(images["fp32"], images[precision])]
    pipeline_report = {
        "precisions": variant.precisions, "reference": "fp32", "backend": backend, "device": device,
        "prompts": list(prompts), "seeds": list(seeds), "steps": steps, "guidance_scale": 7.5,
        "sampler": sampler, "size": [height, width], "images": len(psnrs),
        "psnr_db_mean": _finite(np.mean(psnrs)), "psnr_db_min": _finite(min(psnrs)),
        "ssim_mean": float(np.mean(ssims)), "ssim_min": float(min(ssims)),
        "seconds_per_image": seconds,
    }
    if subset:
        pipeline_report["fidelity"] = {"prompts": fidelity_prompts, "seeds": [1], **fidelity}
    component_reports = {}
    for name in names:
        role = artifact.manifest["components"][name]["role"]
        session = variant.sessions[role]  # the variant pipeline runs every network made here in `precision`
        differences = []
        for feeds, outputs in recorders[role].calls:
            first = next(iter(outputs))
            differences.append(np.abs(session.run(feeds)[first] - outputs[first]).astype(np.float64))
        flat = np.concatenate([d.ravel() for d in differences])
        component_reports[name] = {
            "reference": "fp32", "backend": backend, "device": device,
            "inputs": f"the {len(differences)} {role} calls of the report's fp32 images",
            "output_max_abs_diff": float(flat.max()), "output_mean_abs_diff": float(flat.mean()),
        }
    return pipeline_report, component_reports


def _finite(value: float) -> float | None:
    """JSON has no infinity: identical images (infinite PSNR) are stored as null."""
    value = float(value)
    return value if np.isfinite(value) else None
