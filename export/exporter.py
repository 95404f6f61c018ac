"""Checkpoint -> artifact folder: ONNX components, tokenizer files and the manifest.

The artifact is assembled in a hidden staging folder next to the output (export.staging) and
renamed into place only once its manifest is written, so an interrupted export leaves nothing
that `sdrt.load` would accept.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from ..models import components as descriptors
from ..models.components import random_feeds
from ..models.manifest import FORMAT, SCHEMA_VERSION, sha256_file
from ..runtime.plan_file import PLAN_FILE, write_plan_file
from .family import read_family
from .lora import LoraSpec, merge_lora
from .onnx_export import OPSET, component_modules, export_component
from .openvino_tokenizer import write_openvino_tokenizer
from .source import EXPORT_PACKAGES, ExportError, require_packages, resolve_checkpoint
from .staging import staging_folder, write_manifest

# progress(done, total, what is being done now)
Progress = Callable[[int, int, str], None]
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def export_checkpoint(source: str | os.PathLike, output: str | os.PathLike, *, allow_pickle: bool = False,
                      overwrite: bool = False, verify: bool = True, single_file_config: str = "sd15",
                      loras: Sequence[LoraSpec | str] = (), progress: Progress | None = None) -> Path:
    """Export a Stable Diffusion checkpoint to an sdrt artifact folder and return its path.

    `source` is a local diffusers folder, a hub id, or a single .safetensors file, whose
    architecture `single_file_config` names (a models.configs name or a folder of configs).
    `loras` ("file.safetensors:0.8" or LoraSpec) are merged into the UNet and text encoder
    weights first, in order (export.lora); the manifest records them.
    """
    require_packages("Exporting", EXPORT_PACKAGES)
    loras = [spec if isinstance(spec, LoraSpec) else LoraSpec.parse(spec) for spec in loras]
    for spec in loras:
        if not spec.path.is_file():
            raise ExportError(f"LoRA file {spec.path} does not exist.")
    output = Path(output).expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise ExportError(f"Output {output} exists and is not a folder; choose another path.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"Output folder {output} is not empty; choose another path or pass --overwrite.")
    output.parent.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda done, total, what: None)
    with (staging_folder(output.parent, output.name) as staging,
          staging_folder(output.parent, output.name, "scratch") as scratch):  # scratch: single-file conversion
        staging.mkdir()
        scratch.mkdir()
        checkpoint = resolve_checkpoint(str(source), allow_pickle=allow_pickle, work_dir=scratch,
                                        single_file_config=single_file_config)
        _export_into(checkpoint.folder, checkpoint.description, staging, verify, report, loras)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    return output


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _export_into(folder: Path, description: str, target: Path, verify: bool, report: Progress,
                 loras: Sequence[LoraSpec] = ()) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    family = read_family(folder)
    unet_config = _read_json(folder / "unet" / "config.json")
    vae_config = _read_json(folder / "vae" / "config.json")
    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    # first: they check the files
    tokenizers = [_copy_tokenizer(folder, part.name, target, part.config.get("max_position_embeddings", 77))
                  for part in family.text_encoders]
    max_length = tokenizers[0]["max_length"]

    vae_scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    latent_multiple = 2 ** (len(unet_config["block_out_channels"]) - 1)
    latent_channels = vae_config.get("latent_channels", 4)
    specs = {part.name: descriptors.text_encoder_spec(
        part.config["hidden_size"], max_length, part.config["num_hidden_layers"],
        part.config["projection_dim"] if part.projection else None, part.name) for part in family.text_encoders}
    specs.update({
        "unet": descriptors.unet_spec(unet_config.get("in_channels", 4), unet_config.get("out_channels", 4),
                                      unet_config["cross_attention_dim"], latent_multiple, family.pooled_size,
                                      family.time_id_count or None, family.guidance_embedding),
        "vae_decoder": descriptors.vae_decoder_spec(latent_channels, vae_scale),
        "vae_encoder": descriptors.vae_encoder_spec(latent_channels, vae_scale),
    })
    latent_h = max(16, 2 * latent_multiple)
    latent_w = latent_h + latent_multiple  # not square, so a swapped axis shows
    sizes = {"batch": 2, "sequence": max_length, "latent_height": latent_h, "latent_width": latent_w,
             "height": latent_h * vae_scale, "width": latent_w * vae_scale}

    total = len(specs) + 2
    report(0, total, "loading the checkpoint")
    with torch.no_grad():
        text_encoders = {part.name: (CLIPTextModelWithProjection if part.projection else CLIPTextModel).from_pretrained(
            folder / part.name, torch_dtype=torch.float32) for part in family.text_encoders}
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32)
    merged = [merge_lora({"unet": unet, **text_encoders}, spec) for spec in loras]
    modules = component_modules({part.name: (text_encoders[part.name], part.final_layer_norm)
                                 for part in family.text_encoders}, unet, vae, added_conditions=bool(family.time_ids),
                                guidance_embedding=family.guidance_embedding is not None)
    # `modules` holds the only references from here on: each network's torch weights are freed
    # once it is exported (export_component), so that exporting SDXL's 10 GB UNet never holds
    # the text encoders or a second copy of it (its peak: docs/families.md).
    del text_encoders, unet, vae
    configs = {**{part.name: part.config for part in family.text_encoders}, "unet": unet_config,
               "vae_decoder": vae_config, "vae_encoder": vae_config}

    entries = {}
    for done, (name, spec) in enumerate(specs.items(), start=1):
        report(done, total, f"exporting {name}")
        exported = export_component(spec, modules.pop(name), random_feeds(spec, sizes), target / name, verify=verify)
        entries[name] = {
            **spec.to_json(),
            "path": f"{name}/model.onnx",
            "files": [f"{name}/{p.name}" for p in exported.files],
            "precision": "fp32",
            "opset": OPSET,
            "parameters": exported.parameters,
            "max_abs_diff_vs_torch": exported.max_abs_diff,
            "config": {k: v for k, v in configs[name].items() if not k.startswith("_")},
        }
    del modules

    report(total - 1, total, "copying and converting the tokenizers, compiling sampler plans")
    for tokenizer in tokenizers:
        tokenizer["files"].update(write_openvino_tokenizer(target / tokenizer["name"], tokenizer["max_length"]))
    write_plan_file(target, scheduler_config, handoffs=bool(family.time_ids))  # SDXL: a refiner stage

    report(total, total, "writing the manifest")
    prediction = scheduler_config.get("prediction_type", "epsilon")
    manifest = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "family": family.name,
        "pipeline": {
            "prediction_type": prediction,
            "latent_channels": latent_channels,
            "vae_scale_factor": vae_scale,
            "vae_scaling_factor": vae_config.get("scaling_factor", 0.18215),
            "vae_shift_factor": vae_config.get("shift_factor"),
            "default_size": [unet_config["sample_size"] * vae_scale] * 2,
            "size_multiple": vae_scale * latent_multiple,
            "scheduler": scheduler_config,
            **family.pipeline_entries(),
        },
        "tokenizers": tokenizers,
        "sampler_plans": PLAN_FILE,
        "components": entries,
        "files": _checksums(target),
        "exporter": {
            "source": description,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            **({"loras": merged} if merged else {}),
        },
    }
    write_manifest(target, manifest)


def _copy_tokenizer(checkpoint: Path, component: str, artifact: Path, max_length: int) -> dict:
    """The tokenizer of text encoder `component` into the artifact (tokenizer/ for text_encoder,
    tokenizer_2/ for text_encoder_2, as diffusers names them); its manifest entry."""
    name = component.replace("text_encoder", "tokenizer")
    source, target = checkpoint / name, artifact / name
    target.mkdir(parents=True)
    files = {}
    for filename in TOKENIZER_FILES:
        if (source / filename).is_file():
            shutil.copyfile(source / filename, target / filename)
            files[filename.split(".")[0]] = f"{name}/{filename}"
    if "vocab" not in files or "merges" not in files:
        # transformers 5 saves tokenizer.json alone; the artifact keeps CLIP's two BPE files,
        # which the Python tokenizer and C++ hosts read.
        _write_bpe_files(source, target)
        files.update(vocab=f"{name}/vocab.json", merges=f"{name}/merges.txt")
    vocab = _read_json(target / "vocab.json")
    settings = {}
    for filename in ("tokenizer_config.json", "special_tokens_map.json"):
        if (source / filename).is_file():
            settings.update(_read_json(source / filename))

    def token_id(key: str, default: str) -> int:
        token = settings.get(key) or default
        token = token["content"] if isinstance(token, dict) else token
        if token not in vocab:
            raise ExportError(f"The tokenizer's {key} {token!r} is not in its vocab.json.")
        return vocab[token]

    return {
        "name": name,
        "kind": "clip_bpe",
        "files": files,
        "max_length": int(min(settings.get("model_max_length", max_length), max_length)),
        "bos_id": token_id("bos_token", "<|startoftext|>"),
        "eos_id": token_id("eos_token", "<|endoftext|>"),
        "pad_id": token_id("pad_token", "<|endoftext|>"),
        "lowercase": True,
        "for_component": component,
    }


def _write_bpe_files(source: Path, target: Path) -> None:
    """vocab.json and merges.txt from the BPE model in source/tokenizer.json (the tokenizers
    library's file: model.vocab, model.merges as "a b" strings or [a, b] pairs)."""
    if not (source / "tokenizer.json").is_file():
        raise ExportError(f"{source} holds neither CLIP's BPE files (vocab.json, merges.txt) nor a tokenizer.json; "
                          "save the tokenizer with transformers' save_pretrained into that folder.")
    model = _read_json(source / "tokenizer.json").get("model", {})
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict) or not model.get("merges"):
        raise ExportError(f"{source / 'tokenizer.json'} does not hold a BPE tokenizer with a vocabulary and merges "
                          f"(model type {model.get('type')!r}); sdrt exports CLIP's BPE tokenizer.")
    merges = [pair if isinstance(pair, str) else " ".join(pair) for pair in model["merges"]]
    (target / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _checksums(root: Path) -> dict:
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return files


def _versions() -> dict:
    versions = {}
    for package in ("sdrt", "torch", "diffusers", "transformers", "onnx", "onnxscript", "onnxruntime", "openvino",
                    "openvino-tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions
