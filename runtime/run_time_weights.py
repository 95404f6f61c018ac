"""Weights changed at run time: textual-inversion words and LoRA files, applied by reopening the
networks they change with their weights replaced in memory (the artifact's files stay as
exported). A mixin of StableDiffusionPipeline, which provides the sessions it reopens.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..models.components import TEXT_ENCODER
from .artifact import Component
from .backends import Session, SessionOptions
from .errors import RequestError
from .lora import PREFIXES, LoraSpec, lora_updates, nothing_matched, pair_count, read_lora
from .module_weights import ModuleWeights
from .textual_inversion import TOKEN_EMBEDDING, load_embedding
from .tokenizer import ClipTokenizer

# the networks a LoRA changes, by the name LoRA files give them -> their role in the pipeline
LORA_NETWORKS = {"text_encoder": "text_encoder", "unet": "denoiser"}


class RunTimeWeights:
    """LoRA and textual inversion for a pipeline; the pipeline's __init__ sets _token_embeddings
    (None), _loras ([]) and _module_weights ({})."""

    _token_embeddings: np.ndarray | None
    _loras: list[tuple[LoraSpec, dict[str, dict[str, np.ndarray]]]]
    _module_weights: dict[str, ModuleWeights]
    # the pipeline's
    tokenizer: ClipTokenizer
    sessions: dict[str, Session]
    options: SessionOptions
    _components: dict[str, Component]
    _computes: dict[str, str]
    _backend_module: Any

    def load_textual_inversion(self, path: str | os.PathLike, token: str | None = None) -> str:
        """Teach the pipeline a word from a textual-inversion embedding file (.safetensors: the
        diffusers layout, whose tensor is named after the word, or AUTOMATIC1111's, named by the
        file); `token` names the word instead. Returns the word, to use in prompts. The text
        encoder's session reopens with the new vectors appended to its token table; the
        artifact's files are not touched."""
        width = int(self._components["text_encoder"].spec.tensor(TEXT_ENCODER.hidden_states).shape[-1])
        word, vectors = load_embedding(path, width, token)
        if word.lower() in self.tokenizer.added:
            raise RequestError(f"An embedding for {word!r} is loaded already; name this one with token=...")
        if word.lower() + "</w>" in self.tokenizer.encoder:
            raise RequestError(f"{word!r} is a word CLIP knows already; name the embedding with token=... (e.g. "
                               f"'<{word}>').")
        first = len(self.tokenizer.encoder) + (0 if self._token_embeddings is None else len(self._token_embeddings))
        table = vectors if self._token_embeddings is None else np.concatenate([self._token_embeddings, vectors])
        previous, self._token_embeddings = self._token_embeddings, table
        try:
            self._reopen("text_encoder")
        except BaseException:
            self._token_embeddings = previous
            if "text_encoder" not in self.sessions:
                self._reopen("text_encoder")
            raise
        self.tokenizer.add_word(word, list(range(first, first + len(vectors))))
        return word

    def load_lora(self, path: str | os.PathLike, strength: float = 1.0) -> dict:
        """Apply a LoRA file (.safetensors, kohya/AUTOMATIC1111 or diffusers/PEFT keys) to the UNet
        and text encoder with `strength`, on top of LoRAs loaded before (diffusers'
        load_lora_weights + fuse_lora(lora_scale=strength)). The networks it changes reopen with
        their weights replaced in memory (seconds: a session load, not an export; the artifact's
        files are not touched); their fp32 or fp16 forms only. Returns what matched: {file,
        strength, matched: {network: modules}, pairs, unmatched}; pairs that name nothing in
        this model are left out with a warning. `unload_loras()` goes back to the exported
        weights."""
        return self.load_loras([(path, strength)])[0]

    def load_loras(self, loras: list[tuple[str | os.PathLike, float]]) -> list[dict]:
        """load_lora for several (file, strength) pairs, reopening each network once."""
        loaded = []
        for path, strength in loras:
            if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
                raise RequestError(f"A LoRA's strength is a finite number (1.0: as trained), got {strength!r}.")
            spec = LoraSpec(Path(path).expanduser(), float(strength))
            tensors = read_lora(spec.path)
            updates = {network: lora_updates(tensors, network, self._weights(role).modules, spec.path.name)
                       for network, role in LORA_NETWORKS.items()
                       if any(key.startswith(PREFIXES[network]) for key in tensors)}
            pairs = pair_count(tensors)
            matched = {network: len(updates.get(network, {})) for network in LORA_NETWORKS}
            if not any(matched.values()):
                raise RequestError(nothing_matched(spec.path.name, pairs))
            loaded.append(((spec, updates), {"file": spec.path.name, "strength": spec.strength, "matched": matched,
                                             "pairs": pairs, "unmatched": pairs - sum(matched.values())}))
        changed = [role for network, role in LORA_NETWORKS.items()
                   if any(summary["matched"][network] for _, summary in loaded)]
        before = list(self._loras)
        self._loras += [lora for lora, _ in loaded]
        try:
            for role in changed:
                self._reopen(role)
        except BaseException:
            self._loras = before  # back to the weights before them, in every network they changed
            for role in changed:
                self._reopen(role)
            raise
        for _, summary in loaded:
            if summary["unmatched"]:
                warnings.warn(f"LoRA file {summary['file']}: {summary['unmatched']} of its {summary['pairs']} weight "
                              "pairs name no weight of this artifact's UNet or text encoder and were left out "
                              "(artifacts exported before sdrt named the linear layers' weights match only "
                              "convolutions: re-export those).", stacklevel=2)
        return [summary for _, summary in loaded]

    @property
    def loras(self) -> list[tuple[str, float]]:
        """(file, strength) of each LoRA applied at run time, in the order loaded."""
        return [(str(spec.path), spec.strength) for spec, _ in self._loras]

    def unload_loras(self) -> None:
        """Back to the artifact's own weights (textual-inversion words stay)."""
        changed = {role for _, updates in self._loras for network, role in LORA_NETWORKS.items()
                   if updates.get(network)}
        self._loras = []
        for role in sorted(changed):
            self._reopen(role)

    def _weights(self, role: str) -> ModuleWeights:
        if role not in self._module_weights:
            self._module_weights[role] = ModuleWeights(self._components[role])
        return self._module_weights[role]

    def _reopen(self, role: str) -> None:
        """Open the network of `role` again with the run-time weights loaded so far: LoRA updates,
        and for the text encoder the token table extended by textual-inversion vectors."""
        network = next(network for network, owner in LORA_NETWORKS.items() if owner == role)
        weights = self._weights(role)
        updates = [(spec.strength, by_network[network]) for spec, by_network in self._loras
                   if by_network.get(network)]
        replaced = weights.with_updates(updates) if updates else {}
        if role == "text_encoder" and self._token_embeddings is not None:
            name = weights.ending_with(TOKEN_EMBEDDING)
            if name is None:
                raise RequestError(f"The {weights.component.spec.name}'s ONNX file has no token-embedding table "
                                   f"(*{TOKEN_EMBEDDING}) to extend; was it exported by sdrt?")
            table = replaced[name] if name in replaced else weights.read([name])[name]
            replaced[name] = np.concatenate([table, self._token_embeddings.astype(table.dtype)])
        # The old session goes first: two UNets side by side would double the peak memory.
        del self.sessions[role]
        self.sessions[role] = self._backend_module.open_session(self._components[role], replace(
            self.options, precision=self._computes[role], weights=replaced or None))
