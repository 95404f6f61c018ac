"""Random-weight Stable Diffusion pipelines built from models.configs, saved as diffusers folders.

Latency does not depend on weight values, so these stand in for real checkpoints in tests and
benchmarks on machines that cannot download weights.
"""
from __future__ import annotations

from pathlib import Path

from ..models.configs import checkpoint_config
from .source import EXPORT_PACKAGES, require_packages, write_config_folder


def build_random_pipeline(config_name: str, folder: Path, seed: int = 0) -> Path:
    """Write a random-weight SD pipeline of the named config (`tiny`, `sd15`, their `-inpainting` forms) to `folder`."""
    require_packages("Building a random-weight model", EXPORT_PACKAGES)
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config = checkpoint_config(config_name)
    folder = Path(folder)
    write_config_folder(folder, config)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global generator untouched
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
        unet = UNet2DConditionModel(**config["unet"])
        vae = AutoencoderKL(**config["vae"])
    text_encoder.save_pretrained(folder / "text_encoder")
    _prefix_text_encoder_file(folder / "text_encoder" / "model.safetensors")
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    return folder


def standard_text_encoder_keys(tensors: dict) -> dict:
    """CLIPTextModel weights under the key names real checkpoints use ("text_model.*").

    transformers 5 saves a CLIPTextModel built from a config without the "text_model." prefix;
    transformers 4.x (what diffusers-based tools such as optimum pin) then loads none of those
    weights and silently starts from random ones. transformers 5 reads both layouts.
    """
    return {key if key.startswith("text_model.") else f"text_model.{key}": value for key, value in tensors.items()}


def _prefix_text_encoder_file(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_file(standard_text_encoder_keys(load_file(path)), path, metadata={"format": "pt"})
