"""Input images for image-to-image: PIL images or HWC arrays -> the VAE encoder's NCHW pixels.

As diffusers' VaeImageProcessor: without a requested size the image keeps its own, rounded
down to the model's size step; a PIL image of another size is resized (Lanczos); pixels go
from [0, 1] (or 0-255) to [-1, 1].
"""
from __future__ import annotations

import numpy as np

from .errors import RequestError


def image_size(image) -> tuple[int, int]:
    """(height, width) of a PIL image or an HWC array."""
    if hasattr(image, "size") and hasattr(image, "convert"):
        width, height = image.size
        return height, width
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise RequestError(f"image must be a PIL image or an HWC array with 3 (RGB) or 4 (RGBA) channels, got "
                           f"an array of shape {array.shape}.")
    return array.shape[0], array.shape[1]


def to_pixels(image, height: int, width: int) -> np.ndarray:
    """The image as (1, 3, height, width) float32 in [-1, 1]."""
    if hasattr(image, "size") and hasattr(image, "convert"):
        from PIL import Image

        image = image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.LANCZOS)
        array = np.asarray(image, dtype=np.float32) / np.float32(255)
    else:
        array = np.asarray(image)
        if image_size(array) != (height, width):
            raise RequestError(f"The image array is {array.shape[0]}x{array.shape[1]} (height x width), the request "
                               f"{height}x{width}: pass a PIL image to have it resized, or an array of that size.")
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / np.float32(255)
        elif np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32)
            if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
                raise RequestError("A float image array must hold values in [0, 1] (uint8 arrays hold 0-255).")
        else:
            raise RequestError(f"An image array must be uint8 (0-255) or float (0-1), got {array.dtype}.")
        array = array[..., :3]
    return (array * 2 - 1).transpose(2, 0, 1)[np.newaxis].astype(np.float32)
