"""Sampler plans stored in the artifact, for hosts that do not compile schedulers (the C++ host).

`sampler_plans.json`, named by the manifest's `sampler_plans` key and checksummed like every
other file, holds the plans sdrt compiles (runtime.samplers) for the checkpoint's scheduler
config, keyed by sampler name and step count:

    {"format": "sdrt-sampler-plans", "version": 1, "default_sampler": "dpmpp_2m",
     "plans": {"euler": {"20": {"sampler": "euler", "init_noise_sigma": 14.6, "steps": [
         {"timestep": 999.0, "input_scale": 0.068, "latent_weights": [1.0],
          "output_weights": [-0.9], "noise_weight": 0.0}, ...]}}}}

`sdrt export` writes every sampler at DEFAULT_STEP_COUNTS; `sdrt plan` adds other counts.

Models with a refiner stage (SDXL) also get `handoffs`: the plans that finish another model's
latents stopped at `denoising_start` (diffusers' ensemble of experts), keyed by sampler, step
count and the index of their first step in the full schedule (runtime.samplers.handoff_start):

    "handoffs": {"euler": {"20": {"16": {"sampler": "euler", "init_noise_sigma": 0.0,
                                         "init_image_weight": 1.0, "steps": [...]}}}}

`sdrt export` writes them at DEFAULT_HANDOFF, `sdrt plan --denoising-start` at others.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from ..models.manifest import MANIFEST_NAME, sha256_file
from .errors import ArtifactError, RequestError
from .samplers import SAMPLERS, compile_handoff_plan_from, compile_plan, default_sampler, handoff_start

PLAN_FILE = "sampler_plans.json"
PLAN_FORMAT = "sdrt-sampler-plans"
PLAN_VERSION = 1
# Few-step counts for LCM / distilled models, then what the web UIs and diffusers users pick.
DEFAULT_STEP_COUNTS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 25, 30, 40, 50)
# Where diffusers' docs (high_noise_frac) and the web UIs ("switch at") hand SDXL over to the refiner.
DEFAULT_HANDOFF = 0.8


def compile_plans(scheduler_config: dict, samplers: Iterable[str] = SAMPLERS,
                  step_counts: Iterable[int] = DEFAULT_STEP_COUNTS, *, strict: bool = False) -> dict:
    """{sampler: {str(steps): plan JSON}} for every sampler and step count the config allows.

    A pair the config cannot run (lcm beyond its original step count, pndm on a zero-SNR
    schedule) is left out, or raised as RequestError when `strict`.
    """
    plans: dict[str, dict[str, dict]] = {}
    for sampler in samplers:
        for steps in step_counts:
            try:
                plan = compile_plan(sampler, scheduler_config, steps)
            except RequestError:
                if strict:
                    raise
                continue
            plans.setdefault(sampler, {})[str(steps)] = plan.to_json()
    return plans


def compile_handoffs(scheduler_config: dict, samplers: Iterable[str] = SAMPLERS,
                     step_counts: Iterable[int] = DEFAULT_STEP_COUNTS, fractions: Iterable[float] = (DEFAULT_HANDOFF,),
                     *, strict: bool = False) -> dict:
    """{sampler: {str(steps): {str(first step): plan JSON}}}: the hand-off plans for each
    `denoising_start` fraction; one the config cannot run is left out (raised when `strict`), as
    is a hand-off that leaves the refiner no step."""
    handoffs: dict[str, dict[str, dict[str, dict]]] = {}
    for sampler in samplers:
        for steps in step_counts:
            for fraction in fractions:
                try:
                    start = handoff_start(sampler, scheduler_config, steps, fraction)
                    plan = compile_handoff_plan_from(sampler, scheduler_config, steps, start)
                except RequestError:
                    if strict:
                        raise
                    continue
                if plan.steps:
                    handoffs.setdefault(sampler, {}).setdefault(str(steps), {})[str(start)] = plan.to_json()
    return handoffs


def _by_number(mapping: dict) -> dict:
    return dict(sorted(mapping.items(), key=lambda item: int(item[0])))


def plan_document(scheduler_config: dict, plans: dict, handoffs: dict | None = None) -> dict:
    document = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "default_sampler": default_sampler(scheduler_config),
                "plans": {sampler: _by_number(by_steps) for sampler, by_steps in sorted(plans.items())}}
    if handoffs:
        document["handoffs"] = {sampler: {steps: _by_number(by_start)
                                          for steps, by_start in _by_number(by_steps).items()}
                                for sampler, by_steps in sorted(handoffs.items())}
    return document


def write_plan_file(folder: Path, scheduler_config: dict, *, handoffs: bool = False) -> Path:
    """Write PLAN_FILE with the default plans into an artifact folder being assembled (and the
    default hand-off plans for models with a refiner stage)."""
    path = Path(folder) / PLAN_FILE
    document = plan_document(scheduler_config, compile_plans(scheduler_config),
                             compile_handoffs(scheduler_config) if handoffs else None)
    path.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
    return path


def add_plans(artifact_root: str | os.PathLike, samplers: Iterable[str], step_counts: Iterable[int],
              denoising_starts: Iterable[float] = ()) -> list[str]:
    """Compile plans (and, for each of `denoising_starts`, the hand-off plans that finish from
    there) into an artifact's plan file and update its manifest; return what was added.

    Both files are replaced by renames, so an interruption leaves the old pair.
    """
    root = Path(artifact_root)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST_NAME}; point at an sdrt artifact folder.")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    scheduler_config = manifest["pipeline"]["scheduler"]
    relative = manifest.get("sampler_plans", PLAN_FILE)
    plan_path = root / relative
    old = json.loads(plan_path.read_text(encoding="utf-8")) if plan_path.is_file() else {}
    existing, existing_handoffs = old.get("plans", {}), old.get("handoffs", {})
    samplers, step_counts, denoising_starts = list(samplers), list(step_counts), list(denoising_starts)
    added = compile_plans(scheduler_config, samplers, step_counts, strict=True)
    names = [f"{sampler} {steps}" for sampler, by_steps in added.items() for steps in by_steps]
    for sampler, by_steps in added.items():
        existing.setdefault(sampler, {}).update(by_steps)
    handoffs = compile_handoffs(scheduler_config, samplers, step_counts, denoising_starts, strict=True)
    for sampler, by_steps in handoffs.items():
        for steps, by_start in by_steps.items():
            existing_handoffs.setdefault(sampler, {}).setdefault(steps, {}).update(by_start)
            names += [f"{sampler} {steps} from step {start}" for start in by_start]
    document = plan_document(scheduler_config, existing, existing_handoffs)
    token = uuid.uuid4().hex[:8]
    plan_tmp = plan_path.with_name(f".{plan_path.name}.{token}")
    manifest_tmp = manifest_path.with_name(f".{manifest_path.name}.{token}")
    try:
        plan_tmp.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
        manifest["sampler_plans"] = relative
        manifest["files"][relative] = {"sha256": sha256_file(plan_tmp), "size": plan_tmp.stat().st_size}
        manifest_tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        plan_tmp.replace(plan_path)
        manifest_tmp.replace(manifest_path)
    finally:
        plan_tmp.unlink(missing_ok=True)
        manifest_tmp.unlink(missing_ok=True)
    return names
