"""Merging LoRA files into a checkpoint's weights before export (the key layouts and the update
are runtime.lora's, which the run-time path shares)."""
from __future__ import annotations

from ..models.manifest import sha256_file
from ..runtime.errors import RequestError
from ..runtime.lora import LoraSpec, lora_updates, nothing_matched, pair_count, read_lora
from .source import ExportError

__all__ = ["LoraSpec", "merge_lora"]


def merge_lora(modules: dict, spec: LoraSpec) -> dict:
    """Add the LoRA in `spec` to `modules` ({"unet": ..., "text_encoder": ...} torch modules), in
    place; returns what was applied: {file, strength, matched: {network: modules}, ...}.
    A file none of whose keys names a module of these networks is refused, counting them."""
    import torch

    try:
        tensors = read_lora(spec.path)
        matched = {}
        for network, module in modules.items():
            layers = dict(module.named_modules())
            updates = lora_updates(tensors, network, layers, spec.path.name)
            for name, update in updates.items():
                weight = layers[name].weight
                if update.size != weight.numel():
                    raise ExportError(f"LoRA file {spec.path.name} changes {name} by {update.shape[0]}x"
                                      f"{update.shape[1]} values and the model's weight is "
                                      f"{'x'.join(map(str, weight.shape))}: it was made for another model.")
                with torch.no_grad():
                    weight += spec.strength * torch.from_numpy(update).reshape(weight.shape).to(weight.dtype)
            matched[network] = len(updates)
    except RequestError as error:
        raise ExportError(str(error)) from None
    pairs = pair_count(tensors)
    if not any(matched.values()):
        raise ExportError(nothing_matched(spec.path.name, pairs))
    return {"file": spec.path.name, "sha256": sha256_file(spec.path), "strength": spec.strength, "matched": matched,
            "pairs": pairs, "unmatched": pairs - sum(matched.values())}
