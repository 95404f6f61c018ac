"""Decoding large images in tiles, so that the VAE decoder's activations stay those of one tile
(diffusers' AutoencoderKL.enable_tiling / tiled_decode, reproduced around the decoder network).

The latents are cut into tiles of the VAE's own training size (config sample_size, in latent
pixels) that overlap by a quarter; each tile is decoded alone, and each is blended linearly into
the tile above and to its left over the overlap before the kept parts are put together.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

OVERLAP = 0.25  # diffusers' tile_overlap_factor


def tile_sizes(config: dict, scale: int) -> tuple[int, int] | None:
    """(tile size in latent pixels, in image pixels) of an AutoencoderKL config; None for a VAE
    without tiling (an AutoencoderTiny: no sample_size and block_out_channels)."""
    sample = config.get("sample_size")
    if sample is None or "block_out_channels" not in config:
        return None
    sample = int(sample[0] if isinstance(sample, (list, tuple)) else sample)
    return int(sample / 2 ** (len(config["block_out_channels"]) - 1)), sample


def tiled_decode(decode: Callable[[np.ndarray], np.ndarray], latents: np.ndarray, tile_latent: int,
                 tile_sample: int) -> np.ndarray:
    """decode(latents) tile by tile, as diffusers' tiled_decode (the blends update the tiles in
    place, in its order, so that each tile is blended with its neighbours as already blended)."""
    step = int(tile_latent * (1 - OVERLAP))
    blend = int(tile_sample * OVERLAP)
    keep = tile_sample - blend
    height, width = latents.shape[2:]
    rows = [[decode(np.ascontiguousarray(latents[:, :, i:i + tile_latent, j:j + tile_latent]))
             for j in range(0, width, step)] for i in range(0, height, step)]
    joined = []
    for i, row in enumerate(rows):
        kept = []
        for j, tile in enumerate(row):
            if i > 0:
                _blend(rows[i - 1][j], tile, blend, axis=2)
            if j > 0:
                _blend(row[j - 1], tile, blend, axis=3)
            kept.append(tile[:, :, :keep, :keep])
        joined.append(np.concatenate(kept, axis=3))
    return np.concatenate(joined, axis=2)


def _blend(before: np.ndarray, tile: np.ndarray, extent: int, axis: int) -> None:
    """Fade `tile`'s first `extent` rows (axis 2) or columns (axis 3) in from the end of `before`."""
    extent = min(before.shape[axis], tile.shape[axis], extent)
    for y in range(extent):
        weight = np.float32(y / extent)
        index = (slice(None), slice(None), y) if axis == 2 else (slice(None), slice(None), slice(None), y)
        source = (slice(None), slice(None), y - extent) if axis == 2 else (slice(None),) * 3 + (y - extent,)
        tile[index] = before[source] * (np.float32(1) - weight) + tile[index] * weight
