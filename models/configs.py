"""Checkpoint configs, keyed the way the diffusers folder layout keys them.

`sd15` holds the real Stable Diffusion 1.5 sizes (UNet 860M parameters); `tiny` holds the
sizes of diffusers' own test suite. The exporter's random-weight builder turns either into
a diffusers folder, so that tests and benchmarks exercise the real code paths offline.
"""
from __future__ import annotations

import copy

# Stable Diffusion 1.x ships PNDM (PLMS) as its default scheduler.
SD1_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "trained_betas": None,
}

# The real CLIP ids: <|startoftext|> 49406, <|endoftext|> 49407 (SD 1.x pads with it).
CLIP_TEXT_COMMON = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

_CONFIGS = {
    "sd15": {
        "text_encoder": {**CLIP_TEXT_COMMON, "hidden_size": 768, "intermediate_size": 3072,
                         "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768},
        "unet": {
            "sample_size": 64, "in_channels": 4, "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
            "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
            "scaling_factor": 0.18215,
        },
        "scheduler": SD1_SCHEDULER,
    },
    "tiny": {
        "text_encoder": {**CLIP_TEXT_COMMON, "hidden_size": 32, "intermediate_size": 37,
                         "num_attention_heads": 4, "num_hidden_layers": 5, "projection_dim": 32},
        "unet": {
            "sample_size": 32, "in_channels": 4, "out_channels": 4,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [32, 64], "layers_per_block": 2,
            "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 32,
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 64,
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
            "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 32,
            "scaling_factor": 0.18215,
        },
        "scheduler": SD1_SCHEDULER,
    },
}

# The embedded demo model (models/demo): 64x64 images, an f=4 VAE (16x16 latents), a small
# CLIP text encoder with the real tokenizer. Its scaling_factor is replaced by the measured
# latent spread when the VAE has been trained.
_CONFIGS["demo"] = {
    "text_encoder": {**CLIP_TEXT_COMMON, "hidden_size": 32, "intermediate_size": 128,
                     "num_attention_heads": 4, "num_hidden_layers": 4, "projection_dim": 32},
    "unet": {
        "sample_size": 16, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [64, 96], "layers_per_block": 1,
        "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 32,
    },
    "vae": {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 64,
        "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [32, 64, 64], "layers_per_block": 1, "norm_num_groups": 32,
        "scaling_factor": 1.0,
    },
    "scheduler": {**SD1_SCHEDULER, "_class_name": "DPMSolverMultistepScheduler", "timestep_spacing": "linspace",
                  "steps_offset": 0, "algorithm_type": "dpmsolver++", "solver_order": 2,
                  "prediction_type": "v_prediction"},
}

# The inpainting checkpoints (runwayml's SD 1.5 inpainting): a UNet that also takes the mask
# and the masked image's latents, 4 + 1 + 4 input channels.
for _name in ("sd15", "tiny"):
    _CONFIGS[f"{_name}-inpainting"] = {**_CONFIGS[_name], "unet": {**_CONFIGS[_name]["unet"], "in_channels": 9}}

KNOWN_CONFIGS = tuple(_CONFIGS)


def checkpoint_config(name: str) -> dict:
    """A deep copy of the named config (`sd15` or `tiny`)."""
    if name not in _CONFIGS:
        raise ValueError(f"Unknown model config {name!r}; known configs: {', '.join(KNOWN_CONFIGS)}.")
    return copy.deepcopy(_CONFIGS[name])
