"""LoRA files: which module each weight pair updates, and by how much, in numpy.

Shared by the exporter (the updates added to the torch weights before export) and the runtime
(added to the weights a backend session loads: StableDiffusionPipeline.load_lora). Two key
layouts are read, the two LoRA files are found in:
* diffusers / PEFT: "unet.<module>.lora_A.weight" and ".lora_B.weight" (older diffusers files:
  ".lora.down.weight" / ".lora.up.weight"; the text encoders' under "text_encoder." and "text_encoder_2."), with
  an optional "<module>.alpha";
* kohya / AUTOMATIC1111: "lora_unet_<module with _ for .>.lora_down.weight", ".lora_up.weight"
  and ".alpha"; the text encoder's under "lora_te_" (SDXL's two: "lora_te1_", "lora_te2_").
  The UNet's modules go by diffusers' names or by the original (LDM / SGM) checkpoints' names
  that kohya's SDXL files use ("input_blocks.4.1..." for "down_blocks.1.attentions.0...").
Each pair adds strength x (alpha / rank) x up @ down to the module's weight (Hu et al. 2021,
"LoRA", eq. 3; alpha defaults to the rank), convolution kernels flattened and reshaped as
kohya's trainer and diffusers' fuse_lora do.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RequestError
from .safetensors_reader import read_safetensors

PAIRS = ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight"),
         (".lora_down.weight", ".lora_up.weight"))
# each network's keys: (diffusers / PEFT prefix, kohya prefixes)
PREFIXES = {"unet": ("unet.", ("lora_unet_",)), "text_encoder": ("text_encoder.", ("lora_te_", "lora_te1_")),
            "text_encoder_2": ("text_encoder_2.", ("lora_te2_",))}
# a diffusers UNet resnet's modules by their names in the original checkpoints
LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
LDM_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
           "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


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


def names_network(tensors: dict[str, np.ndarray], network: str) -> bool:
    """Whether any key of the LoRA file is in `network`'s layout."""
    diffusers_prefix, kohya_prefixes = PREFIXES[network]
    return any(key.startswith((diffusers_prefix, *kohya_prefixes)) for key in tensors)


def ldm_unet_names(modules: Iterable[str]) -> dict[str, str]:
    """{name in the original (LDM / SGM) checkpoint layout: diffusers name} for a diffusers
    UNet's modules, the block layout read from the names themselves (how many resnets a level
    has, which levels have attention), as diffusers' own conversion of such checkpoints lays
    them out."""
    modules = list(modules)
    blocks = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)")
    layers = {}  # (down|up, block) -> resnets
    attention = set()
    for name in modules:
        found = blocks.fullmatch(name)
        if found and found[3] == "resnets":
            key = (found[1], int(found[2]))
            layers[key] = max(layers.get(key, 0), int(found[4]) + 1)
        elif found and found[3] == "attentions":
            attention.add((found[1], int(found[2])))
    if not layers:
        return {}
    down_starts, index = {}, 1
    for block in sorted(b for kind, b in layers if kind == "down"):
        down_starts[block] = index
        index += layers["down", block] + 1  # its resnets and the downsampler after them
    up_starts, index = {}, 0
    for block in sorted(b for kind, b in layers if kind == "up"):
        up_starts[block] = index
        index += layers["up", block]  # (the upsampler shares the last resnet's index)

    def resnet(rest: str) -> str:
        head, _, tail = rest.partition(".")
        return f"{LDM_RESNET.get(head, head)}.{tail}" if tail else LDM_RESNET.get(head, head)

    aliases = {}
    for name in modules:
        top = next((key for key in LDM_TOP if name == key or name.startswith(key + ".")), None)
        if top is not None:
            aliases[LDM_TOP[top] + name[len(top):]] = name
            continue
        middle = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name)
        if middle:
            kind, number, rest = middle[1], int(middle[2]), middle[3]
            ldm = f"middle_block.{2 * number}.{resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
            aliases[ldm] = name
            continue
        found = blocks.fullmatch(name)
        if not found or (found[1], int(found[2])) not in layers:
            continue
        side, block, kind, number, rest = found[1], int(found[2]), found[3], int(found[4]), found[5]
        if side == "down":
            start = down_starts[block]
            where = {"resnets": f"input_blocks.{start + number}.0.{resnet(rest)}",
                     "attentions": f"input_blocks.{start + number}.1.{rest}",
                     "downsamplers": f"input_blocks.{start + layers[side, block]}.0.{rest.replace('conv', 'op', 1)}"}
        else:
            start, last = up_starts[block], up_starts[block] + layers[side, block] - 1
            where = {"resnets": f"output_blocks.{start + number}.0.{resnet(rest)}",
                     "attentions": f"output_blocks.{start + number}.1.{rest}",
                     "upsamplers": f"output_blocks.{last}.{2 if (side, block) in attention else 1}.{rest}"}
        aliases[where[kind]] = name
    return aliases


def lora_updates(tensors: dict[str, np.ndarray], network: str, modules: Iterable[str],
                 file_name: str) -> dict[str, np.ndarray]:
    """{module: update} for the pairs in `tensors` that name one of `modules` of `network`
    ("unet", "text_encoder" or "text_encoder_2"): (alpha / rank) x up @ down as a 2-D (out, in x
    kernel) array, to be reshaped to the module's weight and scaled by the strength."""
    diffusers_prefix, kohya_prefixes = PREFIXES[network]
    by_name = {name: name for name in modules}
    if network == "unet":
        by_name.update(ldm_unet_names(by_name))
    else:
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
            else:
                kohya = next((stem[len(p):] for p in kohya_prefixes if stem.startswith(p)), None)
                if kohya not in by_kohya:
                    continue
                module = by_kohya[kohya]
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
            "text encoders (0 matched); is it for another model family?")
