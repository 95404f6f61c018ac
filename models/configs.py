"""Checkpoint configs, keyed the way the diffusers folder layout keys them.

The real sizes of each family: `sd15` (UNet 860M parameters), `sd2` (SD 2.1 768-v: OpenCLIP
ViT-H text encoder, v-prediction), `sd-turbo` (SD 2.1 sizes at 512x512, trailing Euler),
`sdxl` (two text encoders, a 2.6B UNet with added conditions), `sdxl-refiner`, `lcm` (an
SD 1.5 UNet with a guidance embedding); `tiny` holds the sizes of diffusers' own test suite and
`tiny-<family>` small configs of each family that differ from those of diffusers' tests (other
level counts, heads per level, transformer depths, cross-attention widths). The exporter's
random-weight builder turns any of them into a diffusers folder, so that tests and benchmarks
exercise the real code paths offline. A config may also hold `text_encoder_2` (a CLIP text
model with projection), `tokenizer` / `tokenizer_2` settings (the pad token) and `pipeline`
(what model_index.json says beyond the component classes).
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

# Stable Diffusion 2.1 (768-v): OpenCLIP ViT-H/14's text tower as a CLIP text model (23 of its 24
# layers: SD 2 conditions on the penultimate one, and diffusers' checkpoints drop the last),
# linear projections in the transformer blocks, heads per level, attention upcast to fp32.
SD2_TEXT_ENCODER = {**CLIP_TEXT_COMMON, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                    "num_hidden_layers": 23, "projection_dim": 512, "hidden_act": "gelu"}
SD2_UNET = {**_CONFIGS["sd15"]["unet"], "sample_size": 96, "cross_attention_dim": 1024,
            "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True, "upcast_attention": True}
# SD 2's tokenizer pads with "!" (id 0), not with the end token
OPEN_CLIP_TOKENIZER = {"pad_token": "!"}
_CONFIGS["sd2"] = {
    "text_encoder": SD2_TEXT_ENCODER, "tokenizer": OPEN_CLIP_TOKENIZER, "unet": SD2_UNET,
    "vae": {**_CONFIGS["sd15"]["vae"], "sample_size": 768},
    "scheduler": {**SD1_SCHEDULER, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"},
}
# SD-Turbo (adversarial diffusion distillation of SD 2.1): 512x512, 1-4 steps without guidance.
TURBO_SCHEDULER = {**SD1_SCHEDULER, "_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing",
                   "interpolation_type": "linear", "use_karras_sigmas": False}
_CONFIGS["sd-turbo"] = {**_CONFIGS["sd2"], "unet": {**SD2_UNET, "sample_size": 64, "upcast_attention": False},
                        "vae": _CONFIGS["sd15"]["vae"], "scheduler": TURBO_SCHEDULER}
# An SD 2-style tiny model: three levels, heads per level, v-prediction, linear projections.
_CONFIGS["tiny-sd2"] = {
    "text_encoder": {**CLIP_TEXT_COMMON, "hidden_size": 48, "intermediate_size": 64, "num_attention_heads": 6,
                     "num_hidden_layers": 4, "projection_dim": 24, "hidden_act": "gelu"},
    "tokenizer": OPEN_CLIP_TOKENIZER,
    "unet": {
        "sample_size": 32, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [32, 64, 64], "layers_per_block": 1, "cross_attention_dim": 48,
        "attention_head_dim": [2, 4, 4], "use_linear_projection": True, "upcast_attention": True, "norm_num_groups": 32,
    },
    "vae": _CONFIGS["tiny"]["vae"],
    "scheduler": {**SD1_SCHEDULER, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"},
}
_CONFIGS["tiny-sd-turbo"] = {**_CONFIGS["tiny-sd2"], "scheduler": TURBO_SCHEDULER}

# SDXL 1.0 base: CLIP ViT-L (text_encoder) and OpenCLIP ViT-bigG with its projection
# (text_encoder_2); the UNet reads both encoders' penultimate states side by side (768 + 1280)
# and adds the second's pooled projection and six size conditions ("time ids", each embedded
# in 256 sinusoidal features: 1280 + 6 * 256 = 2816).
SDXL_SCHEDULER = {**SD1_SCHEDULER, "_class_name": "EulerDiscreteScheduler", "interpolation_type": "linear",
                  "use_karras_sigmas": False}
BIG_G_TEXT_ENCODER = {**CLIP_TEXT_COMMON, "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
                      "num_hidden_layers": 32, "projection_dim": 1280, "hidden_act": "gelu"}
SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048, "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}
SDXL_VAE = {**_CONFIGS["sd15"]["vae"], "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
_CONFIGS["sdxl"] = {
    "text_encoder": _CONFIGS["sd15"]["text_encoder"], "text_encoder_2": BIG_G_TEXT_ENCODER,
    "tokenizer_2": OPEN_CLIP_TOKENIZER, "unet": SDXL_UNET, "vae": SDXL_VAE, "scheduler": SDXL_SCHEDULER,
    "pipeline": {"force_zeros_for_empty_prompt": True},
}
# SDXL-Turbo: the base's networks at 512x512, trailing Euler, 1-4 steps without guidance.
_CONFIGS["sdxl-turbo"] = {**_CONFIGS["sdxl"], "unet": {**SDXL_UNET, "sample_size": 64},
                          "vae": {**SDXL_VAE, "sample_size": 512}, "scheduler": TURBO_SCHEDULER}
# The SDXL 1.0 refiner: text_encoder_2 alone; the aesthetic score replaces the target size in
# the time ids (1280 + 5 * 256 = 2560).
_CONFIGS["sdxl-refiner"] = {
    "text_encoder_2": BIG_G_TEXT_ENCODER, "tokenizer_2": OPEN_CLIP_TOKENIZER,
    "unet": {**SDXL_UNET, "block_out_channels": [384, 768, 1536, 1536], "attention_head_dim": [6, 12, 24, 24],
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "transformer_layers_per_block": 4, "cross_attention_dim": 1280,
             "projection_class_embeddings_input_dim": 2560},
    "vae": SDXL_VAE, "scheduler": SDXL_SCHEDULER,
    "pipeline": {"force_zeros_for_empty_prompt": False, "requires_aesthetics_score": True},
}
# Tiny SDXL-style models: encoders of different widths (32 + 48 = 80 wide states, pooled 40),
# three UNet levels with transformer depths 1 and 2, time ids embedded in 8 features.
TINY_TEXT_ENCODER_2 = {**CLIP_TEXT_COMMON, "hidden_size": 48, "intermediate_size": 64, "num_attention_heads": 4,
                       "num_hidden_layers": 3, "projection_dim": 40, "hidden_act": "gelu"}
TINY_SDXL_UNET = {
    **SDXL_UNET, "sample_size": 32, "block_out_channels": [32, 64, 64], "layers_per_block": 1,
    "transformer_layers_per_block": [1, 1, 2], "attention_head_dim": [2, 4, 8], "cross_attention_dim": 80,
    "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 40 + 6 * 8,
}
TINY_SDXL_VAE = {**_CONFIGS["tiny"]["vae"], "scaling_factor": 0.13025}
_CONFIGS["tiny-sdxl"] = {
    "text_encoder": _CONFIGS["tiny"]["text_encoder"], "text_encoder_2": TINY_TEXT_ENCODER_2,
    "tokenizer_2": OPEN_CLIP_TOKENIZER, "unet": TINY_SDXL_UNET, "vae": TINY_SDXL_VAE, "scheduler": SDXL_SCHEDULER,
    "pipeline": {"force_zeros_for_empty_prompt": True},
}
_CONFIGS["tiny-sdxl-turbo"] = {**_CONFIGS["tiny-sdxl"], "scheduler": TURBO_SCHEDULER}
_CONFIGS["tiny-sdxl-refiner"] = {
    "text_encoder_2": TINY_TEXT_ENCODER_2, "tokenizer_2": OPEN_CLIP_TOKENIZER,
    "unet": {**TINY_SDXL_UNET, "cross_attention_dim": 48, "transformer_layers_per_block": 1,
             "projection_class_embeddings_input_dim": 40 + 5 * 8},
    "vae": TINY_SDXL_VAE, "scheduler": SDXL_SCHEDULER,
    "pipeline": {"force_zeros_for_empty_prompt": False, "requires_aesthetics_score": True},
}

# Latent consistency models distilled into their UNet's weights (LCM Dreamshaper v7): the SD 1.5
# UNet plus a guidance embedding (time_cond_proj_dim), sampled by LCMScheduler in 1-8 steps with
# no unconditional half.
LCM_SCHEDULER = {**SD1_SCHEDULER, "_class_name": "LCMScheduler", "set_alpha_to_one": True,
                 "original_inference_steps": 50, "timestep_scaling": 10.0, "rescale_betas_zero_snr": False,
                 "thresholding": False}
_CONFIGS["lcm"] = {**_CONFIGS["sd15"], "unet": {**_CONFIGS["sd15"]["unet"], "time_cond_proj_dim": 256},
                   "scheduler": LCM_SCHEDULER}
_CONFIGS["tiny-lcm"] = {**_CONFIGS["tiny-sd2"], "unet": {**_CONFIGS["tiny-sd2"]["unet"], "time_cond_proj_dim": 24},
                        "scheduler": {**LCM_SCHEDULER, "prediction_type": "epsilon"}}

# The inpainting checkpoints (runwayml's SD 1.5 inpainting): a UNet that also takes the mask
# and the masked image's latents, 4 + 1 + 4 input channels.
for _name in ("sd15", "tiny", "sd2", "tiny-sd2"):
    _CONFIGS[f"{_name}-inpainting"] = {**_CONFIGS[_name], "unet": {**_CONFIGS[_name]["unet"], "in_channels": 9}}
# SD 2's inpainting checkpoint is a 512x512 epsilon model
_CONFIGS["sd2-inpainting"]["unet"] = {**_CONFIGS["sd2-inpainting"]["unet"], "sample_size": 64}
_CONFIGS["sd2-inpainting"]["scheduler"] = {**_CONFIGS["sd2"]["scheduler"], "prediction_type": "epsilon"}

KNOWN_CONFIGS = tuple(_CONFIGS)

# The tiny autoencoder (TAESD, madebyollin; diffusers' AutoencoderTiny): a small decoder and encoder
# for SD 1.x/2.x latents (taesdxl: the same shapes, for SDXL's). `tiny-taesd` is f=2, for the tiny
# models' VAE scale.
_AUTOENCODERS = {
    "taesd": {"_class_name": "AutoencoderTiny", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
              "encoder_block_out_channels": [64, 64, 64, 64], "decoder_block_out_channels": [64, 64, 64, 64],
              "num_encoder_blocks": [1, 3, 3, 3], "num_decoder_blocks": [3, 3, 3, 1], "act_fn": "relu",
              "upsampling_scaling_factor": 2, "latent_magnitude": 3, "latent_shift": 0.5, "scaling_factor": 1.0,
              "force_upcast": False},
}
_AUTOENCODERS["taesdxl"] = _AUTOENCODERS["taesd"]
_AUTOENCODERS["tiny-taesd"] = {**_AUTOENCODERS["taesd"], "encoder_block_out_channels": [32, 32],
                               "decoder_block_out_channels": [32, 32], "num_encoder_blocks": [1, 2],
                               "num_decoder_blocks": [2, 1]}
KNOWN_AUTOENCODERS = tuple(_AUTOENCODERS)


def autoencoder_config(name: str) -> dict:
    """A deep copy of the named autoencoder config (KNOWN_AUTOENCODERS)."""
    if name not in _AUTOENCODERS:
        raise ValueError(f"Unknown autoencoder config {name!r}; known configs: {', '.join(KNOWN_AUTOENCODERS)}.")
    return copy.deepcopy(_AUTOENCODERS[name])


def checkpoint_config(name: str) -> dict:
    """A deep copy of the named config (KNOWN_CONFIGS)."""
    if name not in _CONFIGS:
        raise ValueError(f"Unknown model config {name!r}; known configs: {', '.join(KNOWN_CONFIGS)}.")
    return copy.deepcopy(_CONFIGS[name])
