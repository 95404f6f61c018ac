"""Built-in benchmark models: random weights at a named family's real sizes, built and exported
once into a cache folder, so that anyone can benchmark without downloading weights (latency
does not depend on weight values), with a random tiny autoencoder added as `taesd` where the
family has one. `demo` is the shipped demo model and needs no building."""
from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..runtime.artifact import open_artifact
from .harness import BenchmarkError

# name -> the tiny autoencoder added to it as "taesd" (models/configs.py: random weights of
# TAESD's sizes, for `--vae taesd`), or None
BUILTIN_MODELS = {"sd15": "taesd", "sd2": "taesd", "sd-turbo": "taesd", "sdxl": "taesdxl", "sdxl-turbo": "taesdxl",
                  "lcm": "taesd", "tiny": None, "tiny-sdxl": None, "demo": None}


@dataclass(frozen=True)
class BenchModel:
    name: str
    checkpoint: Path  # the diffusers folder (what the peers load)
    artifact: Path  # the sdrt artifact exported from it


def builtin_model(name: str, cache: Path, progress=None) -> BenchModel:
    """The named model, built (random weights, seed 0) and exported into `cache`/bench/<name>
    the first time; later calls reuse the folders."""
    if name not in BUILTIN_MODELS:
        raise BenchmarkError(f"Unknown built-in model {name!r}; choose one of: {', '.join(BUILTIN_MODELS)}, "
                             "or pass --artifact.")
    if name == "demo":
        from ..models.demo import demo_artifact, demo_checkpoint

        return BenchModel("demo", Path(demo_checkpoint()), Path(demo_artifact()))
    root = Path(cache) / "bench" / name
    checkpoint, artifact = root / "checkpoint", root / "artifact"
    tiny_vae = BUILTIN_MODELS[name]
    # each step is written whole or not at all (staging folders; the manifest last), so a run
    # cut short goes on from the first step not done
    if (checkpoint / "model_index.json").is_file() and (artifact / "sdrt.json").is_file() \
            and (tiny_vae is None or "taesd" in open_artifact(artifact, verify_checksums=False).vaes):
        return BenchModel(name, checkpoint, artifact)
    try:
        from ..export.exporter import export_checkpoint
        from ..export.random_model import build_random_pipeline, build_random_vae
        from ..export.vae import add_vae
    except ImportError as error:
        raise BenchmarkError(f"Building the {name} benchmark model needs the export extra once "
                             f"(pip install 'sdrt[export]'); it is then cached in {root}.") from error
    root.mkdir(parents=True, exist_ok=True)
    if not (checkpoint / "model_index.json").is_file():
        staging = root / f".checkpoint.partial-{uuid.uuid4().hex[:8]}"
        try:
            build_random_pipeline(name, staging, seed=0)
            if checkpoint.exists():
                shutil.rmtree(checkpoint)
            staging.rename(checkpoint)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not (artifact / "sdrt.json").is_file():
        export_checkpoint(checkpoint, artifact, overwrite=True, progress=progress)
    if tiny_vae is not None:
        if progress is not None:
            progress(0, 1, f"adding a random {tiny_vae} as taesd")
        vae = build_random_vae(tiny_vae, root / f".taesd.partial-{uuid.uuid4().hex[:8]}", seed=0)
        try:
            add_vae(artifact, vae, "taesd", overwrite=True)
        finally:
            shutil.rmtree(vae, ignore_errors=True)
    return BenchModel(name, checkpoint, artifact)
