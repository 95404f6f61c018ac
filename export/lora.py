"""Merging LoRA files into a checkpoint's weights before export.

Two key layouts are read, the two LoRA files are found in:
* diffusers / PEFT: "unet.<module>.lora_A.weight" and ".lora_B.weight" (older diffusers files:
  ".lora.down.weight" / ".lora.up.weight"; the text encoder's under "text_encoder."), with
  an optional "<module>.alpha";
* kohya / AUTOMATIC1111: "lora_unet_<module with _ for .>.lora_down.weight", ".lora_up.weight"
  and ".alpha"; the text encoder's under "lora_te_".
Each pair adds strength x (alpha / rank) x up @ down to the module's weight (Hu et al. 2021,
"LoRA", eq. 3; alpha defaults to the rank), convolution kernels flattened and reshaped as
kohya's trainer and diffusers' fuse_lora do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..models.manifest import sha256_file
from .source import ExportError

_PAIRS = ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight"),
          (".lora_down.weight", ".lora_up.weight"))
_PREFIXES = {"unet": ("unet.", "lora_unet_"), "text_encoder": ("text_encoder.", "lora_te_")}


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    strength: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """"file.safetensors" or "file.safetensors:0.8"."""
        path, colon, strength = text.rpartition(":")
        try:
            return cls(Path(path).expanduser(), float(strength)) if colon else cls(Path(text).expanduser())
        except ValueError:  # a colon that is part of the path
            return cls(Path(text).expanduser())


def merge_lora(modules: dict, spec: LoraSpec) -> dict:
    """Add the LoRA in `spec` to `modules` ({"unet": ..., "text_encoder": ...} torch modules), in
    place; returns what was applied: {file, strength, matched: {network: modules}, ...}.
    A file none of whose keys names a module of these networks is refused, counting them."""
    import torch
    from safetensors.torch import load_file

    if not spec.path.is_file():
        raise ExportError(f"LoRA file {spec.path} does not exist.")
    if spec.path.suffix != ".safetensors":
        raise ExportError(f"LoRA files are read as .safetensors (pickle files can run code); got {spec.path.name}.")
    tensors = load_file(str(spec.path))
    used: set[str] = set()
    matched = {}
    for network, module in modules.items():
        diffusers_prefix, kohya_prefix = _PREFIXES[network]
        by_name = dict(module.named_modules())
        if network == "text_encoder":
            # LoRA files name CLIP's layers "text_model.encoder...", as checkpoints store them;
            # transformers 5 builds some CLIPTextModels without that level.
            by_name.update({f"text_model.{name}": layer for name, layer in list(by_name.items())
                            if not name.startswith("text_model.")})
        by_kohya = {name.replace(".", "_"): name for name in by_name}
        count = 0
        for key in tensors:
            for down_suffix, up_suffix in _PAIRS:
                if not key.endswith(down_suffix):
                    continue
                stem = key[:-len(down_suffix)]
                if stem.startswith(diffusers_prefix) and stem[len(diffusers_prefix):] in by_name:
                    name = stem[len(diffusers_prefix):]
                elif stem.startswith(kohya_prefix) and stem[len(kohya_prefix):] in by_kohya:
                    name = by_kohya[stem[len(kohya_prefix):]]
                else:
                    continue
                up_key = stem + up_suffix
                if up_key not in tensors:
                    raise ExportError(f"LoRA file {spec.path.name} has {key} without its {up_key}.")
                down, up = tensors[key].float(), tensors[up_key].float()
                rank = down.shape[0]
                alpha = float(tensors[stem + ".alpha"]) if stem + ".alpha" in tensors else float(rank)
                target = by_name[name].weight
                delta = (up.flatten(1) @ down.flatten(1)).reshape(target.shape)
                with torch.no_grad():
                    target += (spec.strength * alpha / rank) * delta.to(target.dtype)
                used.update({key, up_key, stem + ".alpha"})
                count += 1
        matched[network] = count
    pairs = sum(1 for key in tensors for down_suffix, _ in _PAIRS if key.endswith(down_suffix))
    if not any(matched.values()):
        raise ExportError(f"LoRA file {spec.path.name}: none of its {pairs} LoRA weight pairs names a module of this "
                          f"checkpoint's UNet or text encoder (0 matched); is it for another model family?")
    return {"file": spec.path.name, "sha256": sha256_file(spec.path), "strength": spec.strength, "matched": matched,
            "pairs": pairs, "unmatched": pairs - sum(matched.values())}
