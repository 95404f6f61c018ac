"""The invisible watermark Stable Diffusion's own scripts put on their images, in numpy.

The `invisible-watermark` package's "dwtDct" method (the one Stable Diffusion's txt2img used,
with the payload b"StableDiffusionV1"): the image goes to YUV (BT.601, as OpenCV's 8-bit
conversion), the U channel through one level of the Haar wavelet transform, and each 4x4 block
of the approximation band carries one bit of the payload, in turn: the block's largest
coefficient apart from the first is moved to (floor(|c| / 36) + 0.25 + 0.5 bit) x 36, keeping
its sign. Reading takes, per bit, the mean over its blocks of (|c| mod 36 > 18). Images
need at least 256 x 256 pixels (the package refuses smaller ones). This is the same scheme,
written here without OpenCV or torch (which the package imports); the tests check that each
reads what the other wrote.
"""
from __future__ import annotations

import numpy as np

from .errors import RequestError

STABLE_DIFFUSION_MARK = b"StableDiffusionV1"
SCALE = 36.0
BLOCK = 4
MIN_PIXELS = 256 * 256


def _to_yuv(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return np.stack([y, 0.492 * (b - y) + 128.0, 0.877 * (r - y) + 128.0], axis=-1)


def _to_rgb(yuv: np.ndarray) -> np.ndarray:
    y, u, v = yuv[..., 0], yuv[..., 1] - 128.0, yuv[..., 2] - 128.0
    rgb = np.stack([y + 1.140 * v, y - 0.395 * u - 0.581 * v, y + 2.032 * u], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _haar(channel: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One level of the 2-D Haar transform (PyWavelets' dwt2(..., "haar") on even sizes)."""
    a, b = channel[0::2, 0::2], channel[0::2, 1::2]
    c, d = channel[1::2, 0::2], channel[1::2, 1::2]
    return (a + b + c + d) / 2, ((a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2)


def _inverse_haar(approximation, details) -> np.ndarray:
    horizontal, vertical, diagonal = details
    out = np.empty((approximation.shape[0] * 2, approximation.shape[1] * 2))
    out[0::2, 0::2] = (approximation + horizontal + vertical + diagonal) / 2
    out[0::2, 1::2] = (approximation + horizontal - vertical - diagonal) / 2
    out[1::2, 0::2] = (approximation - horizontal + vertical - diagonal) / 2
    out[1::2, 1::2] = (approximation - horizontal - vertical + diagonal) / 2
    return out


def _blocks(band: np.ndarray) -> np.ndarray:
    """The band's whole 4x4 blocks, row by row, as (count, 16) views' copies."""
    rows, columns = band.shape[0] // BLOCK, band.shape[1] // BLOCK
    cut = band[:rows * BLOCK, :columns * BLOCK]
    return cut.reshape(rows, BLOCK, columns, BLOCK).transpose(0, 2, 1, 3).reshape(-1, BLOCK * BLOCK)


def _check_size(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
        raise RequestError(f"A watermark goes on an 8-bit RGB image (HWC uint8), got {image.dtype} {image.shape}.")
    if image.shape[0] * image.shape[1] < MIN_PIXELS:
        raise RequestError(f"The invisible watermark needs images of at least 256x256 pixels (as the "
                           f"invisible-watermark package); this one is {image.shape[1]}x{image.shape[0]}.")


def embed(image: np.ndarray, payload: bytes = STABLE_DIFFUSION_MARK) -> np.ndarray:
    """`image` (HWC uint8 RGB) carrying `payload` invisibly."""
    image = np.asarray(image)
    _check_size(image)
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8)).astype(np.float64)
    height, width = image.shape[0] // BLOCK * BLOCK, image.shape[1] // BLOCK * BLOCK
    yuv = np.round(_to_yuv(image[..., :3]))  # OpenCV's 8-bit YUV, rounded
    approximation, details = _haar(yuv[:height, :width, 1])
    rows, columns = approximation.shape[0] // BLOCK, approximation.shape[1] // BLOCK
    blocks = _blocks(approximation)
    largest = np.argmax(np.abs(blocks[:, 1:]), axis=1) + 1
    values = blocks[np.arange(len(blocks)), largest]
    bit = bits[np.arange(len(blocks)) % len(bits)]
    marked = np.sign(values) * ((np.abs(values) // SCALE + 0.25 + 0.5 * bit) * SCALE)
    marked[values == 0] = (0.25 + 0.5 * bit[values == 0]) * SCALE  # a zero coefficient counts as positive
    blocks[np.arange(len(blocks)), largest] = marked
    approximation[:rows * BLOCK, :columns * BLOCK] = (
        blocks.reshape(rows, columns, BLOCK, BLOCK).transpose(0, 2, 1, 3).reshape(rows * BLOCK, columns * BLOCK))
    yuv[:height, :width, 1] = _inverse_haar(approximation, details)
    out = image[..., :3].copy()
    out[:height, :width] = _to_rgb(yuv[:height, :width])
    return out


def read(image: np.ndarray, length: int = len(STABLE_DIFFUSION_MARK)) -> bytes:
    """The `length`-byte payload an image carries (noise, for an unmarked image)."""
    image = np.asarray(image)
    _check_size(image)
    height, width = image.shape[0] // BLOCK * BLOCK, image.shape[1] // BLOCK * BLOCK
    yuv = np.round(_to_yuv(image[:height, :width, :3]))
    blocks = _blocks(_haar(yuv[..., 1])[0])
    largest = np.argmax(np.abs(blocks[:, 1:]), axis=1) + 1
    values = np.abs(blocks[np.arange(len(blocks)), largest])
    scores = (values % SCALE > 0.5 * SCALE).astype(np.float64)
    count = length * 8
    means = np.array([scores[i::count].mean() for i in range(count)])
    return np.packbits(means * 255 > 127).tobytes()


def is_marked(image: np.ndarray, payload: bytes = STABLE_DIFFUSION_MARK) -> bool:
    return read(image, len(payload)) == payload
