"""sdrt: Stable Diffusion RunTime.

    import sdrt
    pipe = sdrt.load("sd15-onnx", backend="openvino", device="cpu")
    result = pipe("a castle on a hill", num_inference_steps=20, seed=42)
    result.images[0].save("castle.png")

`sdrt.demo_artifact()` is the embedded demo model (64x64 coloured shapes), ready to load.

The exporter (`sdrt.export_checkpoint`) needs the `export` extra (torch, diffusers); loading
and generating need only numpy and one backend package.
"""
from __future__ import annotations

from importlib import metadata

from sdrt.models.demo import demo_artifact
from sdrt.runtime.artifact import Artifact, open_artifact
from sdrt.runtime.backends import available_backends
from sdrt.runtime.errors import ArtifactError, BackendUnavailableError, RequestError, SdrtError
from sdrt.runtime.pipeline import GenerationRequest, GenerationResult, StableDiffusionPipeline, load
from sdrt.runtime.samplers import SAMPLERS

try:
    __version__ = metadata.version("sdrt")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"


def export_checkpoint(source, output, **options):
    """Export a checkpoint to an artifact folder (needs the `export` extra); see sdrt.export."""
    from sdrt.export.exporter import export_checkpoint as _export

    return _export(source, output, **options)


__all__ = [
    "Artifact", "ArtifactError", "BackendUnavailableError", "GenerationRequest", "GenerationResult", "RequestError",
    "SAMPLERS",
    "SdrtError", "StableDiffusionPipeline", "available_backends", "demo_artifact", "export_checkpoint", "load",
    "open_artifact",
]
