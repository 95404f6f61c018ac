"""Test helper: write a diffusers SD or SDXL pipeline as an original-layout (LDM / SGM) single-file
checkpoint.

The inverse of diffusers' single_file_utils converters (convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint, convert_open_clip_checkpoint), so
that `from_single_file` can be exercised on random weights of any size. SDXL's second text
encoder goes in OpenCLIP's layout (one in_proj for q, k and v; the projection transposed).
"""
from __future__ import annotations

import json
from pathlib import Path

from sdrt.runtime.lora import ldm_unet_names

VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_key(key: str, blocks: int) -> str:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    direct = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in direct:
        return direct[key]
    coder, kind, *rest = key.split(".")
    if kind == "down_blocks":
        block, what = rest[0], rest[1]
        if what == "downsamplers":
            return f"{coder}.down.{block}.downsample.conv.{rest[-1]}"
        tail = ".".join(rest[3:]).replace("conv_shortcut", "nin_shortcut")
        return f"{coder}.down.{block}.block.{rest[2]}.{tail}"
    if kind == "up_blocks":
        block, what = blocks - 1 - int(rest[0]), rest[1]
        if what == "upsamplers":
            return f"{coder}.up.{block}.upsample.conv.{rest[-1]}"
        tail = ".".join(rest[3:]).replace("conv_shortcut", "nin_shortcut")
        return f"{coder}.up.{block}.block.{rest[2]}.{tail}"
    if kind == "mid_block":
        if rest[0] == "resnets":
            tail = ".".join(rest[2:]).replace("conv_shortcut", "nin_shortcut")
            return f"{coder}.mid.block_{int(rest[1]) + 1}.{tail}"
        name = ".".join(rest[2:-1])
        return f"{coder}.mid.attn_1.{VAE_ATTENTION[name]}.{rest[-1]}"
    raise KeyError(key)


def write_ldm_checkpoint(diffusers_folder: Path, target: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    folder = Path(diffusers_folder)
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    state: dict[str, torch.Tensor] = {}
    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    # the UNet's modules by their original names: sdrt's own mapping (runtime/lora.py, which
    # kohya's SDXL LoRA keys go through), checked here by diffusers' reading of the file back
    ldm = {module: name for name, module in ldm_unet_names({key.rsplit(".", 1)[0] for key in unet}).items()}
    for key, value in unet.items():
        module, parameter = key.rsplit(".", 1)
        state[f"model.diffusion_model.{ldm[module]}.{parameter}"] = value
    for key, value in load_file(folder / "vae" / "diffusion_pytorch_model.safetensors").items():
        ldm = _vae_key(key, len(vae_config["up_block_types"]))
        if ".mid.attn_1." in ldm and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        state["first_stage_model." + ldm] = value
    sdxl = (folder / "text_encoder_2").is_dir()
    embedders = 0
    if (folder / "text_encoder").is_dir():
        prefix = "conditioner.embedders.0.transformer." if sdxl else "cond_stage_model.transformer."
        for key, value in _clip_keys(load_file(folder / "text_encoder" / "model.safetensors")).items():
            state[prefix + key] = value
        embedders = 1
    if sdxl:
        prefix = f"conditioner.embedders.{embedders}.model."
        for key, value in _open_clip(_clip_keys(load_file(folder / "text_encoder_2" / "model.safetensors"))).items():
            state[prefix + key] = value
    save_file({k: v.contiguous() for k, v in state.items()}, target)
    return target


def _clip_keys(tensors: dict) -> dict:
    """transformers 5 saves CLIP text models without their `text_model.` prefix; LDM files have it."""
    return {key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key: value
            for key, value in tensors.items()}


OPEN_CLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}


def _open_clip(tensors: dict) -> dict:
    import torch

    state = {"positional_embedding": tensors.pop("text_model.embeddings.position_embedding.weight"),
             "token_embedding.weight": tensors.pop("text_model.embeddings.token_embedding.weight"),
             "ln_final.weight": tensors.pop("text_model.final_layer_norm.weight"),
             "ln_final.bias": tensors.pop("text_model.final_layer_norm.bias"),
             "text_projection": tensors.pop("text_projection.weight").T}
    layers = {int(key.split(".")[3]) for key in tensors if key.startswith("text_model.encoder.layers.")}
    for layer in sorted(layers):
        source, target = f"text_model.encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            state[f"{target}attn.in_proj_{kind}"] = torch.cat(
                [tensors.pop(f"{source}self_attn.{q}_proj.{kind}") for q in "qkv"])
        for key in [k for k in tensors if k.startswith(source)]:
            rest = key[len(source):]
            for theirs, ours in OPEN_CLIP.items():
                rest = rest.replace(theirs, ours)
            state[target + rest] = tensors.pop(key)
    assert not tensors, sorted(tensors)  # every weight placed
    return state
