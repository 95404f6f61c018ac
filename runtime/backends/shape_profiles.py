"""(min, opt, max) shapes for engines built for a range of them: TensorRT, natively
(backends/tensorrt.py) or as ONNX Runtime's TensorRT provider (backends/onnxruntime.py)."""
from __future__ import annotations

from ..artifact import Component

# (min, opt, max) of each symbolic axis that TensorRT engines are built for, unless the
# caller gives its own: batch 2 (guidance) at the artifact's default size, up to batch 16,
# 256..1024 pixels (latents 32..128), prompts up to 8 chunks of 77 tokens.
PROFILE_BATCH = (1, 2, 16)
PROFILE_LATENT = (32, 128)
PROFILE_SEQUENCE = (77, 77 * 8)

# axis -> (min, opt, max)
Profile = dict[str, tuple[int, int, int]]


def default_profile(default_size: tuple[int, int], vae_scale_factor: int) -> Profile:
    """(min, opt, max) per axis for TensorRT engines of an artifact whose images default to
    `default_size` (height, width)."""
    profile = {"batch": PROFILE_BATCH, "sequence": (PROFILE_SEQUENCE[0], PROFILE_SEQUENCE[0], PROFILE_SEQUENCE[1])}
    for axis, pixels in zip(("height", "width"), default_size):
        latent = pixels // vae_scale_factor
        low, high = min(PROFILE_LATENT[0], latent), max(PROFILE_LATENT[1], latent)
        profile[f"latent_{axis}"] = (low, latent, high)
        profile[axis] = (low * vae_scale_factor, pixels, high * vae_scale_factor)
    return profile


def input_shapes(component: Component,
                 profile: Profile) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Each input's (min, opt, max) shape for `profile`, within what the component's descriptor
    allows (ComponentSpec.shape_profile)."""
    return component.spec.shape_profile({axis: bounds[1] for axis, bounds in profile.items()},
                                        {axis: (bounds[0], bounds[2]) for axis, bounds in profile.items()})
