"""Another VAE for an artifact: the tiny autoencoder (TAESD / TAESDXL, diffusers' AutoencoderTiny)
or a fine-tuned AutoencoderKL, stored beside the checkpoint's own under a name and chosen at load
(`sdrt.load(..., vae="taesd")`, `sdrt generate --vae taesd`).

Its networks are components like the others, with the roles vae_decoder and vae_encoder and
`vae: NAME` in their manifest entries (the checkpoint's own have no `vae` field); each decoder's
entry holds its scaling and shift factors. Written through a staging folder and a renamed
manifest, so an interrupted add leaves the artifact as it was.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..models import components as descriptors
from ..models.components import random_feeds
from ..models.manifest import sha256_file
from ..runtime.artifact import open_artifact
from .onnx_export import OPSET, export_component, vae_modules
from .source import EXPORT_PACKAGES, ExportError, require_packages
from .staging import staging_folder, write_manifest

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def add_vae(artifact_root: str | os.PathLike, source: str | os.PathLike, name: str = "taesd", *,
            overwrite: bool = False, verify: bool = True) -> dict:
    """Export the VAE in the diffusers folder `source` (an AutoencoderTiny or AutoencoderKL, with
    its config.json) into the artifact as `name`; return the manifest's entry names."""
    require_packages("Adding a VAE", EXPORT_PACKAGES)
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny

    root = Path(artifact_root)
    artifact = open_artifact(root)
    if not _NAME.fullmatch(name):
        raise ExportError(f"A VAE's name is lower-case letters, digits, - and _ (at most 32), starting with a letter; "
                          f"got {name!r}.")
    source = Path(source).expanduser()
    config_path = source / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{source} holds no config.json; give the folder of a diffusers AutoencoderTiny (TAESD) or "
                          "AutoencoderKL, as saved by save_pretrained.")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    kind = config.get("_class_name")
    classes = {"AutoencoderTiny": AutoencoderTiny, "AutoencoderKL": AutoencoderKL}
    if kind not in classes:
        raise ExportError(f"{source} holds a {kind}; sdrt adds AutoencoderTiny (TAESD) and AutoencoderKL VAEs.")
    channels = config.get("latent_channels", 4)
    pipeline = artifact.pipeline
    if channels != pipeline["latent_channels"]:
        raise ExportError(f"The VAE in {source} has {channels} latent channels and the artifact's UNet "
                          f"{pipeline['latent_channels']}; it belongs to another model family.")
    manifest = artifact.manifest
    names = {"vae_decoder": f"{name}_decoder", "vae_encoder": f"{name}_encoder"}
    taken = [entry for entry in names.values() if entry in manifest["components"]]
    if taken and not overwrite:
        raise ExportError(f"The artifact has a VAE named {name!r} already; choose another --name or pass --overwrite.")
    with torch.no_grad():
        vae = classes[kind].from_pretrained(source, torch_dtype=torch.float32).eval()
    scale = _scale_factor(config, kind)
    if scale != pipeline["vae_scale_factor"]:
        raise ExportError(f"The VAE in {source} scales images by {scale} and the artifact's by "
                          f"{pipeline['vae_scale_factor']}; it belongs to another model family.")
    deterministic = kind == "AutoencoderTiny"
    specs = {"vae_decoder": descriptors.vae_decoder_spec(channels, scale, names["vae_decoder"]),
             "vae_encoder": descriptors.vae_encoder_spec(channels, scale, names["vae_encoder"], deterministic)}
    latent = 16
    sizes = {"batch": 2, "latent_height": latent, "latent_width": latent + 8, "height": latent * scale,
             "width": (latent + 8) * scale}
    modules = vae_modules(vae)
    factors = {"scaling_factor": config.get("scaling_factor", 1.0), "shift_factor": config.get("shift_factor")}
    with staging_folder(root, name, "vae") as staging:
        entries, files = {}, {}
        for role, spec in specs.items():
            folder = staging / spec.name
            exported = export_component(spec, modules[role], random_feeds(spec, sizes), folder, verify=verify)
            entries[spec.name] = {
                **spec.to_json(), "path": f"{spec.name}/model.onnx",
                "files": [f"{spec.name}/{p.name}" for p in exported.files], "precision": "fp32", "opset": OPSET,
                "parameters": exported.parameters, "max_abs_diff_vs_torch": exported.max_abs_diff, "vae": name,
                "config": {k: v for k, v in config.items() if not k.startswith("_")}, "class": kind,
                **(factors if role == "vae_decoder" else {}),
            }
            files.update({f"{spec.name}/{p.name}": {"sha256": sha256_file(p), "size": p.stat().st_size}
                          for p in exported.files})
        for spec in specs.values():  # into place, then the manifest that lists them
            old = manifest["components"].pop(spec.name, None)
            for relative in (old or {}).get("files", []):
                manifest["files"].pop(relative, None)
            if (root / spec.name).exists():
                shutil.rmtree(root / spec.name)
            (staging / spec.name).rename(root / spec.name)
        manifest["components"].update(entries)
        manifest["files"].update(files)
        write_manifest(root, manifest)
    return {role: spec.name for role, spec in specs.items()}


def _scale_factor(config: dict, kind: str) -> int:
    """Image pixels per latent pixel: 2 ** (levels - 1) (AutoencoderTiny: its upsampling factor
    per level)."""
    if kind == "AutoencoderTiny":
        levels = len(config.get("encoder_block_out_channels", (64, 64, 64, 64)))
        return int(config.get("upsampling_scaling_factor", 2)) ** (levels - 1)
    return 2 ** (len(config["block_out_channels"]) - 1)
