"""What a checkpoint folder is: its family and how its networks condition the UNet, read from
the diffusers configs and written into the manifest as data (docs/artifact.md), so that the
runtime and C++ hosts build the UNet's inputs without knowing families by name.

- SD 1.x / 2.x: one CLIP text encoder; the UNet reads its last layer, final layer norm applied.
- SDXL base: CLIP ViT-L and OpenCLIP ViT-bigG with projection; the UNet reads both penultimate
  layers side by side (no final layer norm), the second's pooled projection and six size
  conditions (original size, crop top-left, target size).
- SDXL refiner: the second encoder alone; an aesthetic score in place of the target size.
- Latent consistency models (either family): guidance w is a UNet input (its embedding), one
  UNet call per step with no unconditional half.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..runtime.conditioning import TIME_ID_FIELDS
from .source import ExportError

SDXL_TIME_IDS = ("original_size", "crops_coords_top_left", "target_size")
REFINER_TIME_IDS = ("original_size", "crops_coords_top_left", "aesthetic_score")


@dataclass(frozen=True)
class TextEncoderPart:
    name: str  # the folder and component name: text_encoder | text_encoder_2
    config: dict
    projection: bool  # a CLIPTextModelWithProjection (its pooled output projected)
    layer: int  # which of the stacked hidden states the UNet reads at CLIP skip 0
    final_layer_norm: bool  # whether the stacked states have the final layer norm applied
    pooled: bool  # whether the UNet also takes this encoder's pooled projection

    def to_json(self) -> dict:
        return {"component": self.name, "layer": self.layer, "final_layer_norm": self.final_layer_norm,
                "pooled": self.pooled}


@dataclass(frozen=True)
class Family:
    name: str  # sd1 | sd2 | sdxl
    text_encoders: tuple[TextEncoderPart, ...]  # in the order their states are concatenated
    time_ids: tuple[str, ...] = ()  # the UNet's added size conditions, in its order (SDXL)
    force_zeros_for_empty_prompt: bool = False  # SDXL base: no negative prompt -> zero embeddings
    guidance_embedding: int | None = None  # a latent consistency model's guidance input width

    @property
    def pooled_size(self) -> int | None:
        for part in self.text_encoders:
            if part.pooled:
                return part.config["projection_dim"]
        return None

    @property
    def time_id_count(self) -> int:
        return sum(TIME_ID_FIELDS[name] for name in self.time_ids)

    def pipeline_entries(self) -> dict:
        """The manifest's pipeline fields that say how the UNet is conditioned."""
        entries: dict = {"text_encoders": [part.to_json() for part in self.text_encoders]}
        if self.time_ids:
            entries.update(time_ids=list(self.time_ids), force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt)
        if self.guidance_embedding:
            entries["guidance"] = "embedded"
        return entries


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_family(folder: Path) -> Family:
    """The family of the diffusers folder `folder`; refuses what sdrt cannot run, saying why.
    A UNet with a guidance embedding (time_cond_proj_dim: a latent consistency model) is noted
    in either family."""
    family = _read_family(folder)
    guidance = _read_json(folder / "unet" / "config.json").get("time_cond_proj_dim")
    return replace(family, guidance_embedding=int(guidance)) if guidance else family


def _read_family(folder: Path) -> Family:
    index = _read_json(folder / "model_index.json")
    unet = _read_json(folder / "unet" / "config.json")
    present = [name for name in ("text_encoder", "text_encoder_2")
               if (folder / name / "config.json").is_file() and index.get(name, ["", ""])[0] is not None]
    configs = {name: _read_json(folder / name / "config.json") for name in present}
    added = unet.get("addition_embed_type")
    if added is None:
        if present != ["text_encoder"]:
            raise ExportError(f"{folder} has {', '.join(present) or 'no text encoder'}; an SD 1.x / 2.x checkpoint has "
                              "one text_encoder.")
        config = configs["text_encoder"]
        part = TextEncoderPart("text_encoder", config, False, -1, True, False)
        # SD 2.x: OpenCLIP's text tower (GELU; OpenAI's CLIP of SD 1.x uses quick GELU)
        sd2 = config.get("hidden_act") == "gelu" or unet["cross_attention_dim"] == 1024
        return Family("sd2" if sd2 else "sd1", (part,))
    if added != "text_time":
        raise ExportError(f"The UNet's addition_embed_type {added!r} is not supported; sdrt runs SD 1.x, 2.x and SDXL "
                          "(text_time) UNets.")
    if "text_encoder_2" not in present:
        raise ExportError(f"{folder} is an SDXL checkpoint without text_encoder_2; SDXL needs its second (OpenCLIP "
                          "bigG) text encoder.")
    # diffusers' SDXL pipelines read hidden_states[-2] of each encoder without the final layer norm
    parts = tuple(TextEncoderPart(name, configs[name], name == "text_encoder_2", -2, False, name == "text_encoder_2")
                  for name in present)
    aesthetic = bool(index.get("requires_aesthetics_score", False))
    family = Family("sdxl", parts, REFINER_TIME_IDS if aesthetic else SDXL_TIME_IDS,
                    bool(index.get("force_zeros_for_empty_prompt", True)))
    width = sum(part.config["hidden_size"] for part in parts)
    if unet["cross_attention_dim"] != width:
        raise ExportError(f"The UNet's cross_attention_dim is {unet['cross_attention_dim']}, but its text encoders "
                          f"give {width} features; the checkpoint's configs do not belong together.")
    expected = family.pooled_size + family.time_id_count * unet["addition_time_embed_dim"]
    if unet.get("projection_class_embeddings_input_dim") != expected:
        raise ExportError(f"The UNet's projection_class_embeddings_input_dim is "
                          f"{unet.get('projection_class_embeddings_input_dim')}, but the pooled text "
                          f"({family.pooled_size}) and {family.time_id_count} time ids give {expected}; check "
                          "model_index.json's requires_aesthetics_score.")
    return family
