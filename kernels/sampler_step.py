"""The one update every sampler plan uses, and classifier-free guidance (numpy, float32)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def guide(uncond: np.ndarray, cond: np.ndarray, guidance_scale: float) -> np.ndarray:
    """Classifier-free guidance (Ho & Salimans 2022): uncond + g * (cond - uncond)."""
    return uncond + np.float32(guidance_scale) * (cond - uncond)


def sampler_update(latents: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                   latent_weights: Sequence[float], output_weights: Sequence[float],
                   noise_weight: float = 0.0, noise: np.ndarray | None = None) -> np.ndarray:
    """sum_k latent_weights[k] * latents[k] + sum_k output_weights[k] * outputs[k] + noise_weight * noise.

    latents[0] / outputs[0] are the current step's; latents[k] the one k steps earlier.
    A zero weight skips its term, so histories may be shorter than the weights at the start.
    """
    result = np.zeros_like(latents[0], dtype=np.float32)
    for weight, value in zip(latent_weights, latents):
        if weight != 0.0:
            result += np.float32(weight) * value
    for weight, value in zip(output_weights, outputs):
        if weight != 0.0:
            result += np.float32(weight) * value
    if noise_weight != 0.0:
        if noise is None:
            raise ValueError("This plan step adds noise; pass the step's noise.")
        result += np.float32(noise_weight) * noise
    return result
