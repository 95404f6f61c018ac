"""Sampler plans stored in the artifact, for hosts that do not compile schedulers (the C++ host).

`sampler_plans.json`, named by the manifest's `sampler_plans` key and checksummed like every
other file, holds the plans sdrt compiles (runtime.samplers) for the checkpoint's scheduler
config, keyed by sampler name and step count:

    {"format": "sdrt-sampler-plans", "version": 1, "default_sampler": "dpmpp_2m",
     "plans": {"euler": {"20": {"sampler": "euler", "init_noise_sigma": 14.6, "steps": [
         {"timestep": 999.0, "input_scale": 0.068, "latent_weights": [1.0],
          "output_weights": [-0.9], "noise_weight": 0.0}, ...]}}}}

`sdrt export` writes every sampler at DEFAULT_STEP_COUNTS; `sdrt plan` adds other counts.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from ..models.manifest import MANIFEST_NAME, sha256_file
from .errors import ArtifactError, RequestError
from .samplers import SAMPLERS, compile_plan, default_sampler

PLAN_FILE = "sampler_plans.json"
PLAN_FORMAT = "sdrt-sampler-plans"
PLAN_VERSION = 1
# Few-step counts for LCM / distilled models, then what the web UIs and diffusers users pick.
DEFAULT_STEP_COUNTS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 25, 30, 40, 50)


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


def plan_document(scheduler_config: dict, plans: dict) -> dict:
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "default_sampler": default_sampler(scheduler_config),
            "plans": {sampler: dict(sorted(by_steps.items(), key=lambda item: int(item[0])))
                      for sampler, by_steps in sorted(plans.items())}}


def write_plan_file(folder: Path, scheduler_config: dict) -> Path:
    """Write PLAN_FILE with the default plans into an artifact folder being assembled."""
    path = Path(folder) / PLAN_FILE
    path.write_text(json.dumps(plan_document(scheduler_config, compile_plans(scheduler_config)),
                               separators=(",", ":")), encoding="utf-8")
    return path


def add_plans(artifact_root: str | os.PathLike, samplers: Iterable[str], step_counts: Iterable[int]) -> list[str]:
    """Compile plans into an artifact's plan file and update its manifest; return what was added.

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
    existing = json.loads(plan_path.read_text(encoding="utf-8"))["plans"] if plan_path.is_file() else {}
    added = compile_plans(scheduler_config, samplers, step_counts, strict=True)
    names = [f"{sampler} {steps}" for sampler, by_steps in added.items() for steps in by_steps]
    for sampler, by_steps in added.items():
        existing.setdefault(sampler, {}).update(by_steps)
    document = plan_document(scheduler_config, existing)
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
