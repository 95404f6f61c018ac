"""Conversions between decoded VAE samples ([-1, 1], NCHW float) and 8-bit images (NHWC)."""
from __future__ import annotations

import numpy as np


def to_unit_range(decoded: np.ndarray) -> np.ndarray:
    """VAE output in [-1, 1] (NCHW) -> float images in [0, 1] (NHWC), as diffusers' postprocess."""
    return np.clip(decoded / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8 with rounding, as diffusers' numpy_to_pil."""
    return (images * 255).round().astype(np.uint8)
