"""Portable seeded Gaussian noise: Philox4x32-10 + Box-Muller, in numpy.

The same (seed, stream, shape) gives the same float32 values on every machine and in any
host that implements these few lines (the C++ host does):

* key = (seed mod 2^32, seed div 2^32 mod 2^32); block i of stream s is Philox4x32-10 of the
  counter (i mod 2^32, i div 2^32, s mod 2^32, s div 2^32) under that key (Salmon et al.,
  "Parallel random numbers: as easy as 1, 2, 3", SC'11; constants as in Random123).
* each block's four words (x0, x1, x2, x3) become four normals by Box-Muller in float64:
  u1 = (x0 + 1) / 2^32, u2 = x1 / 2^32, r = sqrt(-2 ln u1): r cos(2 pi u2), r sin(2 pi u2),
  then the same from (x2, x3); the values are cast to float32.
* a tensor of n elements takes the first n values of blocks 0, 1, 2, ... in C order.

Streams keep draws independent of each other: stream 0 is the initial latents, stream
1 + k the fresh noise of sampler step k, stream 2^32 the sample drawn from the VAE encoder's
distribution (image-to-image).
"""
from __future__ import annotations

import numpy as np

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)

INITIAL_LATENTS_STREAM = 0
VAE_SAMPLE_STREAM = 2**32


def step_noise_stream(step_index: int) -> int:
    return 1 + step_index


def philox4x32(counters: np.ndarray, key: tuple[int, int], rounds: int = 10) -> np.ndarray:
    """Philox4x32 over an (n, 4) array of 32-bit counter words; returns (n, 4) uint32."""
    c0, c1, c2, c3 = (counters[:, i].astype(np.uint64) for i in range(4))
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for r in range(rounds):
        p0 = _M0 * c0
        p1 = _M1 * c2
        hi0, lo0 = p0 >> _SHIFT32, p0 & _MASK32
        hi1, lo1 = p1 >> _SHIFT32, p1 & _MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if r < rounds - 1:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def gaussian_noise(seed: int, shape: tuple[int, ...], stream: int = INITIAL_LATENTS_STREAM) -> np.ndarray:
    """Standard-normal float32 noise of `shape` for (seed, stream); see the module docstring."""
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}.")
    n = int(np.prod(shape, dtype=np.int64))
    blocks = np.arange((n + 3) // 4, dtype=np.uint64)
    counters = np.empty((blocks.size, 4), dtype=np.uint64)
    counters[:, 0] = blocks & _MASK32
    counters[:, 1] = blocks >> _SHIFT32
    counters[:, 2] = stream & 0xFFFFFFFF
    counters[:, 3] = (stream >> 32) & 0xFFFFFFFF
    words = philox4x32(counters, (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)).astype(np.float64)
    u1 = (words[:, 0::2] + 1.0) * 2.0**-32
    u2 = words[:, 1::2] * 2.0**-32
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    normals = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=2).reshape(-1)
    return normals[:n].astype(np.float32).reshape(shape)
