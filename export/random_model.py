"""Random-weight Stable Diffusion pipelines built from models.configs, saved as diffusers folders.

Latency does not depend on weight values, so these stand in for real checkpoints in tests and
benchmarks on machines that cannot download weights.
"""
from __future__ import annotations

from pathlib import Path

from ..models.configs import autoencoder_config, checkpoint_config
from .source import EXPORT_PACKAGES, ExportError, require_packages, write_config_folder


def build_random_pipeline(config_name: str, folder: Path, seed: int = 0) -> Path:
    """Write a random-weight pipeline of the named config (models.configs.KNOWN_CONFIGS: `tiny`,
    `sd15`, `sd2`, `sdxl`, ...) to `folder`, in the diffusers layout."""
    require_packages("Building a random-weight model", EXPORT_PACKAGES)
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    try:
        config = checkpoint_config(config_name)
    except ValueError as error:  # (an unknown name: the message lists the known ones)
        raise ExportError(str(error)) from None
    folder = Path(folder)
    write_config_folder(folder, config)
    encoders = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
    with torch.random.fork_rng(devices=[]):  # leave the caller's global generator untouched
        torch.manual_seed(seed)
        # one network at a time: the real SDXL sizes hold 10 GiB of fp32 UNet weights
        for name, cls in encoders.items():
            if name in config:
                cls(CLIPTextConfig(**config[name])).save_pretrained(folder / name)
                _prefix_text_encoder_file(folder / name / "model.safetensors")
        UNet2DConditionModel(**config["unet"]).save_pretrained(folder / "unet")
        AutoencoderKL(**config["vae"]).save_pretrained(folder / "vae")
    return folder


def build_random_vae(config_name: str, folder: Path, seed: int = 0) -> Path:
    """Write a random-weight VAE of the named config (models.configs.KNOWN_AUTOENCODERS: taesd,
    tiny-taesd) to `folder`, as diffusers' save_pretrained does."""
    require_packages("Building a random-weight VAE", EXPORT_PACKAGES)
    import torch
    from diffusers import AutoencoderTiny

    try:
        config = autoencoder_config(config_name)
    except ValueError as error:
        raise ExportError(str(error)) from None
    config.pop("_class_name")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        AutoencoderTiny(**config).save_pretrained(folder)
    return Path(folder)


def standard_text_encoder_keys(tensors: dict) -> dict:
    """CLIPTextModel weights under the key names real checkpoints use ("text_model.*").

    transformers 5 saves a CLIPTextModel built from a config without the "text_model." prefix;
    transformers 4.x (what diffusers-based tools such as optimum pin) then loads none of those
    weights and silently starts from random ones. transformers 5 reads both layouts.
    """
    standard = ("text_model.", "text_projection.")  # (the projection of CLIPTextModelWithProjection stays)
    return {key if key.startswith(standard) else f"text_model.{key}": value for key, value in tensors.items()}


def _prefix_text_encoder_file(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_file(standard_text_encoder_keys(load_file(path)), path, metadata={"format": "pt"})
