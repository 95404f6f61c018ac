"""A request's memory, estimated before anything runs, from the manifest's network configs.

The exported networks compute attention as a matrix product and a softmax over every pair of
latent positions, so the score matrix of the highest-resolution attention grows with the
square of the pixel count (16 times the memory for twice the width and height). Checking it
first turns a request that cannot fit into a sentence instead of a machine that swaps or a
process the kernel kills.
"""
from __future__ import annotations

from dataclasses import dataclass

FLOAT_BYTES = 4
# tensors of a convolution level's width alive at once (input, output, residual, norm)
LIVE_FEATURE_MAPS = 4


@dataclass(frozen=True)
class MemoryEstimate:
    bytes: int
    network: str  # the network whose activations dominate
    part: str  # what in it: "attention" or "feature maps"


def available_memory() -> int | None:
    """Bytes the system can give this process now (Linux: MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _heads(config: dict, level: int) -> int:
    # diffusers' UNet2DConditionModel reads attention_head_dim as the head count when
    # num_attention_heads is unset (unet_2d_condition.py: "num_attention_heads or attention_head_dim").
    heads = config.get("num_attention_heads") or config.get("attention_head_dim") or 8
    return int(heads[level] if isinstance(heads, list) else heads)


def _unet(config: dict, batch: int, latent_h: int, latent_w: int) -> MemoryEstimate:
    best = MemoryEstimate(0, "unet", "feature maps")
    for level, (kind, channels) in enumerate(zip(config["down_block_types"], config["block_out_channels"])):
        tokens = (latent_h >> level) * (latent_w >> level)
        maps = batch * channels * tokens * FLOAT_BYTES * LIVE_FEATURE_MAPS
        scores = batch * _heads(config, level) * tokens * tokens * FLOAT_BYTES if "Attn" in kind else 0
        estimate = MemoryEstimate(maps + scores, "unet", "attention" if scores > maps else "feature maps")
        best = max(best, estimate, key=lambda e: e.bytes)
    return best


def _vae_decoder(config: dict, latent_h: int, latent_w: int, scale: int) -> MemoryEstimate:
    # One image at a time (the pipeline decodes the batch image by image); the mid block's
    # single-head attention runs at the latent size, the last up block at the full size.
    tokens = latent_h * latent_w
    scores = tokens * tokens * FLOAT_BYTES if config.get("mid_block_add_attention", True) else 0
    maps = config["block_out_channels"][0] * tokens * scale * scale * FLOAT_BYTES * LIVE_FEATURE_MAPS
    return MemoryEstimate(scores + maps, "vae_decoder", "attention" if scores > maps else "feature maps")


def estimate_request(configs: dict[str, dict], batch: int, height: int, width: int,
                     scale: int, decode_tile: int | None = None) -> MemoryEstimate | None:
    """The largest activation memory one network call of the request needs, by role:
    configs["denoiser"] (a UNet2DConditionModel config) at `batch` (guidance copies included),
    configs["vae_decoder"] (an AutoencoderKL config) one image at a time (one tile at a time, of
    `decode_tile` latent pixels a side, when the decoder tiles). None when a config lacks what the
    estimate reads."""
    latent_h, latent_w = height // scale, width // scale
    tile_h, tile_w = (latent_h, latent_w) if decode_tile is None else (min(latent_h, decode_tile),
                                                                       min(latent_w, decode_tile))
    try:
        estimates = [_unet(configs["denoiser"], batch, latent_h, latent_w),
                     _vae_decoder(configs["vae_decoder"], tile_h, tile_w, scale)]
    except (KeyError, TypeError, IndexError, ValueError):
        return None
    return max(estimates, key=lambda e: e.bytes)
