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

This module holds the precisions' table and the run that makes one; export.makers writes each
variant's files, export.calibration records the int8 makers' inputs, export.quality measures the
variants, export.staging holds the staging folder and manifest write the exporter shares.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..models.manifest import sha256_file
from ..runtime.artifact import Artifact, open_artifact
from .calibration import CALIBRATION_PROMPTS, CALIBRATION_ROLES, CALIBRATION_STEPS, Calibration, calibrate
from .makers import make_fp16, make_fp16_cuda, make_fp32_fused, make_int8, make_qdq_int8, weight_compressor
from .quality import REPORT_PROMPTS, REPORT_SEEDS, REPORT_STEPS, ROLES, Progress, measure, missing_device, report_bf16
from .source import ExportError, require_packages
from .staging import staging_folder, write_manifest


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
    "int8": Maker(("text_encoder", "unet", "vae_decoder"), "openvino", make_int8, "openvino", "model.xml",
                  calibrated=True, compute="bf16", packages=NNCF_PACKAGES),
    "fp16": Maker(("text_encoder", "unet"), "onnxruntime", make_fp16),
    "fp32-fused": Maker(("unet",), "onnxruntime", make_fp32_fused, "onnxruntime"),
    "fp16-cuda": Maker(("unet",), "onnxruntime", make_fp16_cuda, "onnxruntime-cuda", report_device="cuda"),
    "int8-qdq": Maker(("text_encoder", "unet"), "onnxruntime", make_qdq_int8, calibrated=True),
    "int8-weights": Maker(("text_encoder", "unet", "vae_decoder"), "openvino", weight_compressor("INT8_ASYM"),
                          "openvino", "model.xml", packages=NNCF_PACKAGES),
    "int4-weights": Maker(("text_encoder", "unet"), "openvino",
                          weight_compressor("INT4_SYM", group_size=128, ratio=1.0), "openvino", "model.xml",
                          packages=NNCF_PACKAGES),
}


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
        return report_bf16(Path(artifact_root), tuple(prompts), tuple(seeds), steps, fidelity_prompts, report)
    if precision not in MAKERS:
        raise ExportError(f"sdrt makes these precision variants: bf16 (a report only), {', '.join(MAKERS)}; got "
                          f"{precision!r}.")
    maker = MAKERS[precision]
    require_packages(f"Making {precision} variants", maker.packages)
    root = Path(artifact_root)
    artifact = open_artifact(root)
    known = [n for n, e in artifact.manifest["components"].items() if e["role"] in ROLES]
    if components is None:  # the precision's usual networks; "text_encoder" stands for every text encoder (SDXL's two)
        text = "text_encoder" in maker.components
        names = [n for n in known if n in maker.components or text and
                 artifact.manifest["components"][n]["role"] == "text_encoder"]
    else:
        names = list(components)
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

    # one run per artifact: a staging folder here is a killed run's
    with staging_folder(root / "variants", remove_leftovers=True) as staging:
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
        missing = missing_device(backend, maker.report_device)
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
        write_manifest(root, manifest)
    return quality
