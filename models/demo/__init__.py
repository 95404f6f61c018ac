"""The embedded demo model: captioned coloured shapes, the checker that reads them back, and
the trained weights shipped as a diffusers folder (`checkpoint/`) and an sdrt artifact
(`artifact/`).

Everything here is numpy only: the data generator feeds the training recipe, and the checker
is the end-to-end quality oracle (prompt fidelity) for every backend and precision.
"""
from __future__ import annotations

from pathlib import Path

CHECKPOINT = Path(__file__).parent / "checkpoint"
ARTIFACT = Path(__file__).parent / "artifact"


def demo_artifact() -> Path:
    """The folder of the shipped demo artifact (what `sdrt generate` uses without --artifact)."""
    return _shipped(ARTIFACT / "sdrt.json")


def demo_checkpoint() -> Path:
    """The folder of the shipped demo model in the diffusers layout (fp16 safetensors)."""
    return _shipped(CHECKPOINT / "model_index.json")


def _shipped(marker: Path) -> Path:
    if not marker.is_file():
        raise FileNotFoundError(
            f"The demo model is missing from {marker.parent}; reinstall sdrt, or rebuild it with "
            "`python -m sdrt.models.demo.publish TRAINED_FOLDER` (see models/README.md).")
    return marker.parent
