"""Fixtures: random-weight checkpoints built from sdrt's configs, exported once per session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_user_cache(tmp_path_factory):
    """Compiled engines and other cached files go to a temporary folder, not the user's cache."""
    import os

    previous = os.environ.get("SDRT_CACHE")
    os.environ["SDRT_CACHE"] = str(tmp_path_factory.mktemp("sdrt-cache"))
    yield
    if previous is None:
        os.environ.pop("SDRT_CACHE", None)
    else:
        os.environ["SDRT_CACHE"] = previous


def _random_checkpoint(config: str, tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    from sdrt.export.random_model import build_random_pipeline

    return build_random_pipeline(config, tmp_path_factory.mktemp(config) / "checkpoint")


def _exported(checkpoint: Path, tmp_path_factory, name: str) -> Path:
    from sdrt.export.exporter import export_checkpoint

    return export_checkpoint(checkpoint, tmp_path_factory.mktemp(name) / "artifact")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return _random_checkpoint("tiny", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    return _exported(tiny_checkpoint, tmp_path_factory, "tiny-artifact")


@pytest.fixture(scope="session")
def tiny_inpainting_checkpoint(tmp_path_factory) -> Path:
    """The tiny model with an inpainting UNet (9 input channels)."""
    return _random_checkpoint("tiny-inpainting", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_inpainting_artifact(tiny_inpainting_checkpoint, tmp_path_factory) -> Path:
    return _exported(tiny_inpainting_checkpoint, tmp_path_factory, "tiny-inpainting-artifact")


@pytest.fixture(scope="session")
def backends() -> list[str]:
    from sdrt.runtime.backends import available_backends

    names = available_backends()
    assert names, "no backend package is installed"
    return names


# The other families' tiny configs (models/configs.py), for the diffusers oracles of tests/test_families.py.
def _family_fixtures(config: str):
    def checkpoint(tmp_path_factory) -> Path:
        return _random_checkpoint(config, tmp_path_factory)

    def artifact(request, tmp_path_factory) -> Path:
        source = request.getfixturevalue(f"{config.replace('-', '_')}_checkpoint")  # (built once a session)
        return _exported(source, tmp_path_factory, f"{config}-artifact")

    prefix = config.replace("-", "_")
    return (pytest.fixture(scope="session", name=f"{prefix}_checkpoint")(checkpoint),
            pytest.fixture(scope="session", name=f"{prefix}_artifact")(artifact))


tiny_sd2_checkpoint, tiny_sd2_artifact = _family_fixtures("tiny-sd2")
tiny_sd_turbo_checkpoint, tiny_sd_turbo_artifact = _family_fixtures("tiny-sd-turbo")
tiny_sdxl_checkpoint, tiny_sdxl_artifact = _family_fixtures("tiny-sdxl")
tiny_sdxl_refiner_checkpoint, tiny_sdxl_refiner_artifact = _family_fixtures("tiny-sdxl-refiner")
tiny_lcm_checkpoint, tiny_lcm_artifact = _family_fixtures("tiny-lcm")


@pytest.fixture(scope="session")
def tiny_taesd_artifact(tiny_artifact, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model's artifact with a tiny TAESD added as "taesd" (through the CLI), and the TAESD's folder."""
    import shutil

    from sdrt.cli import main
    from sdrt.export.random_model import build_random_vae

    root = tmp_path_factory.mktemp("taesd")
    artifact = root / "artifact"
    shutil.copytree(tiny_artifact, artifact)
    vae = build_random_vae("tiny-taesd", root / "taesd")
    assert main(["add-vae", str(artifact), str(vae), "--name", "taesd"]) == 0
    return artifact, vae
