"""Input images and masks for image-to-image and inpainting: PIL images or arrays -> NCHW arrays.

As diffusers' VaeImageProcessor: without a requested size the image keeps its own, rounded
down to the model's size step; a PIL image of another size is resized (Lanczos); pixels go
from [0, 1] (or 0-255) to [-1, 1]; masks become grayscale, then 1 (repaint) where >= 0.5.
"""
from __future__ import annotations

import numpy as np

from .errors import RequestError


def _is_pil(image) -> bool:
    return hasattr(image, "size") and hasattr(image, "convert")


def image_size(image) -> tuple[int, int]:
    """(height, width) of a PIL image or an HWC array."""
    if _is_pil(image):
        width, height = image.size
        return height, width
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise RequestError(f"image must be a PIL image or an HWC array with 3 (RGB) or 4 (RGBA) channels, got "
                           f"an array of shape {array.shape}.")
    return array.shape[0], array.shape[1]


def _from_pil(image, mode: str, height: int, width: int) -> np.ndarray:
    """A PIL image in `mode` ("RGB", "L"), resized (Lanczos) where it is not height x width, in [0, 1]."""
    from PIL import Image

    image = image.convert(mode)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32) / np.float32(255)


def to_pixels(image, height: int, width: int) -> np.ndarray:
    """The image as (1, 3, height, width) float32 in [-1, 1]."""
    if _is_pil(image):
        array = _from_pil(image, "RGB", height, width)
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


def to_mask(mask, height: int, width: int, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The mask as (1, 1, height, width) float32: 1 where it is white (>= 0.5), to repaint.
    `image_shape` (height, width) is the input image's: a mask must have the same."""
    if _is_pil(mask):
        if image_shape is not None and mask.size[::-1] != tuple(image_shape):
            raise RequestError(f"mask_image is {mask.size[0]}x{mask.size[1]} (width x height) and the image "
                               f"{image_shape[1]}x{image_shape[0]}: give a mask of the image's size.")
        if mask.mode not in ("1", "L", "LA", "I", "F"):
            channels = np.asarray(mask.convert("RGB"), dtype=np.int16)
            if np.abs(channels - channels[..., :1]).max() > 8:
                raise RequestError("mask_image has colour: a mask is one channel (or grey RGB), white where to "
                                   "repaint and black elsewhere.")
        array = _from_pil(mask, "L", height, width)
    else:
        array = np.asarray(mask)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.ndim != 2:
            raise RequestError(f"mask_image must be a PIL image or an HW array (one channel), got an array of shape "
                               f"{array.shape}.")
        if array.shape != (height, width):
            raise RequestError(f"The mask array is {array.shape[0]}x{array.shape[1]} (height x width), the request "
                               f"{height}x{width}: pass a PIL image to have it resized, or an array of that size.")
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / np.float32(255)
        elif array.dtype == np.bool_ or np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32)
        else:
            raise RequestError(f"A mask array must be bool, uint8 (0-255) or float (0-1), got {array.dtype}.")
    # A mask is black and white, with soft edges at most; mostly mid-grey is an image passed by mistake.
    grey = float(np.mean((array > 0.1) & (array < 0.9)))
    if grey > 0.25:
        raise RequestError(f"mask_image does not look like a mask: {grey:.0%} of its pixels are mid-grey; give white "
                           "where to repaint and black elsewhere.")
    return (array >= 0.5).astype(np.float32)[np.newaxis, np.newaxis]


def nearest_resize(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, height, width) by nearest neighbour, as torch's interpolate
    (mode "nearest": source index floor(i * H / height)), which diffusers uses for the latent mask."""
    rows = np.floor(np.arange(height) * (mask.shape[2] / height)).astype(np.int64)
    columns = np.floor(np.arange(width) * (mask.shape[3] / width)).astype(np.int64)
    return mask[:, :, rows][:, :, :, columns]


def soft_mask(mask: np.ndarray, sigma: float) -> np.ndarray:
    """A (H, W) mask blurred by a Gaussian of `sigma` pixels (mirrored edges), for a soft seam."""
    if sigma <= 0:
        return mask
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(mask, radius, mode="symmetric")
    # (sum() starts from 0, so its type is int | array: np.asarray says it is an array, as taps is never empty)
    rows = np.asarray(sum(w * padded[i:i + mask.shape[0]] for i, w in enumerate(taps)))
    return np.asarray(sum(w * rows[:, i:i + mask.shape[1]] for i, w in enumerate(taps))).astype(np.float32)


def outpaint_canvas(image, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0, multiple: int = 8):
    """(canvas, mask) PIL images for outpainting: the image padded by the given pixels (edge pixels
    repeated outwards, a start the sampler then repaints), the mask white on the padding. A padded
    side grows further, to a whole number of `multiple` (right or bottom first)."""
    from PIL import Image

    sides = {"left": left, "right": right, "top": top, "bottom": bottom}
    for name, value in sides.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RequestError(f"outpaint {name} must be a whole number of pixels >= 0, got {value!r}.")
    if not any(sides.values()):
        raise RequestError("Outpainting needs at least one side to extend (left, right, top or bottom).")
    if _is_pil(image):
        pixels = np.asarray(image.convert("RGB"))
    else:
        pixels = np.asarray(image)
        image_size(pixels)  # refuses arrays that are not HWC images
        pixels = pixels[..., :3] if pixels.dtype == np.uint8 else (np.clip(pixels[..., :3], 0, 1) * 255).round()
    height, width = pixels.shape[:2]
    for low, high, size in (("left", "right", width), ("top", "bottom", height)):
        short = -(size + sides[low] + sides[high]) % multiple
        if short and (sides[low] or sides[high]):
            sides[high if sides[high] else low] += short
    padding = ((sides["top"], sides["bottom"]), (sides["left"], sides["right"]), (0, 0))
    canvas = np.pad(pixels.astype(np.uint8), padding, mode="edge")
    mask = np.full(canvas.shape[:2], 255, np.uint8)
    mask[sides["top"]:sides["top"] + height, sides["left"]:sides["left"] + width] = 0
    return Image.fromarray(canvas), Image.fromarray(mask)
