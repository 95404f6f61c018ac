"""LoRA files: which module each weight pair updates, and by how much, in numpy.

Shared by the exporter (the updates added to the torch weights before export) and the runtime
(added to the weights a backend session loads: StableDiffusionPipeline.load_lora). Two key
layouts are read, the two LoRA files are found in:
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

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RequestError
from .safetensors_reader import read_safetensors

PAIRS = ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight"),
         (".lora_down.weight", ".lora_up.weight"))
PREFIXES = {"unet": ("unet.", "lora_unet_"), "text_encoder": ("text_encoder.", "lora_te_")}


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


def read_lora(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a LoRA file, refusing what is not a .safetensors file."""
    if not path.is_file():
        raise RequestError(f"LoRA file {path} does not exist.")
    if path.suffix != ".safetensors":
        raise RequestError(f"LoRA files are read as .safetensors (pickle files can run code); got {path.name}.")
    return read_safetensors(path)


def pair_count(tensors: dict[str, np.ndarray]) -> int:
    return sum(1 for key in tensors for down_suffix, _ in PAIRS if key.endswith(down_suffix))


def lora_updates(tensors: dict[str, np.ndarray], network: str, modules: Iterable[str],
                 file_name: str) -> dict[str, np.ndarray]:
    """{module: update} for the pairs in `tensors` that name one of `modules` of `network`
    ("unet" or "text_encoder"): (alpha / rank) x up @ down as a 2-D (out, in x kernel) array,
    to be reshaped to the module's weight and scaled by the strength."""
    diffusers_prefix, kohya_prefix = PREFIXES[network]
    by_name = {name: name for name in modules}
    if network == "text_encoder":
        # LoRA files name CLIP's layers "text_model.encoder...", as checkpoints store them;
        # transformers 5 builds some CLIPTextModels without that level.
        by_name.update({f"text_model.{name}": name for name in list(by_name) if not name.startswith("text_model.")})
    by_kohya = {name.replace(".", "_"): module for name, module in by_name.items()}
    updates: dict[str, np.ndarray] = {}
    for key in tensors:
        for down_suffix, up_suffix in PAIRS:
            if not key.endswith(down_suffix):
                continue
            stem = key[:-len(down_suffix)]
            if stem.startswith(diffusers_prefix) and stem[len(diffusers_prefix):] in by_name:
                module = by_name[stem[len(diffusers_prefix):]]
            elif stem.startswith(kohya_prefix) and stem[len(kohya_prefix):] in by_kohya:
                module = by_kohya[stem[len(kohya_prefix):]]
            else:
                continue
            up_key = stem + up_suffix
            if up_key not in tensors:
                raise RequestError(f"LoRA file {file_name} has {key} without its {up_key}.")
            down, up = tensors[key], tensors[up_key]
            rank = down.shape[0]
            alpha = float(tensors[stem + ".alpha"]) if stem + ".alpha" in tensors else float(rank)
            update = (alpha / rank) * (up.reshape(up.shape[0], -1) @ down.reshape(rank, -1))
            updates[module] = updates[module] + update if module in updates else update
    return updates


def nothing_matched(file_name: str, pairs: int) -> str:
    return (f"LoRA file {file_name}: none of its {pairs} LoRA weight pairs names a module of this model's UNet or "
            "text encoder (0 matched); is it for another model family?")
