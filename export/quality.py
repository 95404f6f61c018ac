"""Quality reports of precision variants: the same prompts, seeds and sampler run through the
fp32 pipeline and the variant's, whole images compared (PSNR, SSIM: export.metrics) and each
variant network's output compared with its fp32 network's on the very inputs the fp32 images
gave it; optionally the demo model's prompt fidelity of both.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..runtime.artifact import Artifact, open_artifact
from .calibration import Recorder
from .metrics import psnr, ssim
from .staging import write_manifest

REPORT_PROMPTS = ("a photograph of a castle on a hill at sunset", "a red circle on a blue background")
REPORT_SEEDS = (0, 1)
REPORT_STEPS = 10
ROLES = ("text_encoder", "denoiser", "vae_decoder")  # the networks a report runs, and variants are made of

# progress(what is being done now)
Progress = Callable[[str], None]


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
    # On the host loop: the recorders wrap the sessions' calls, which a device-resident loop bypasses.
    reference = StableDiffusionPipeline(artifact, backend, SessionOptions(device=device, device_loop=False), exported)
    height, width = reference.default_size
    sampler = reference.default_sampler
    recorders = {role: Recorder(session) for role, session in reference.sessions.items()}
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
        key = name if name in variant.sessions else role  # (text encoders go by name: SDXL has two)
        session = variant.sessions[key]  # the variant pipeline runs every network made here in `precision`
        differences = []
        for feeds, outputs in recorders[key].calls:
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


def report_bf16(root: Path, prompts: tuple[str, ...], seeds: tuple[int, ...], steps: int, fidelity_prompts: int,
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
    write_manifest(root, manifest)
    return quality


def missing_device(backend: str, device: str) -> str | None:
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
