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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    from sdrt.export.random_model import build_random_pipeline

    return build_random_pipeline("tiny", tmp_path_factory.mktemp("tiny") / "checkpoint")


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    from sdrt.export.exporter import export_checkpoint

    return export_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("tiny-artifact") / "artifact")


@pytest.fixture(scope="session")
def tiny_inpainting_checkpoint(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    from sdrt.export.random_model import build_random_pipeline

    return build_random_pipeline("tiny-inpainting", tmp_path_factory.mktemp("tiny-inpainting") / "checkpoint")


@pytest.fixture(scope="session")
def tiny_inpainting_artifact(tiny_inpainting_checkpoint, tmp_path_factory) -> Path:
    from sdrt.export.exporter import export_checkpoint

    folder = tmp_path_factory.mktemp("tiny-inpainting-artifact")
    return export_checkpoint(tiny_inpainting_checkpoint, folder / "artifact")


@pytest.fixture(scope="session")
def backends() -> list[str]:
    from sdrt.runtime.backends import available_backends

    names = available_backends()
    assert names, "no backend package is installed"
    return names
