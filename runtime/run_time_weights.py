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
from .conditioning import TextEncoderUse
from .errors import RequestError
from .lora import LoraSpec, lora_updates, names_network, nothing_matched, pair_count, read_lora
from .module_weights import ModuleWeights
from .textual_inversion import TOKEN_EMBEDDING, load_embedding
from .tokenizer import ClipTokenizer

# the networks a LoRA changes, by the name LoRA files give them -> their key in the pipeline's
# sessions (the text encoders' component names, the UNet's role); a model has some of them
LORA_NETWORKS = {"text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2", "unet": "denoiser"}


class RunTimeWeights:
    """LoRA and textual inversion for a pipeline; the pipeline's __init__ sets _token_embeddings
    ({}), _loras ([]) and _module_weights ({})."""

    _token_embeddings: dict[str, np.ndarray]  # text encoder -> the vectors appended to its token table
    _loras: list[tuple[LoraSpec, dict[str, dict[str, np.ndarray]]]]
    _module_weights: dict[str, ModuleWeights]
    # the pipeline's
    tokenizer: ClipTokenizer
    text_encoders: list[TextEncoderUse]
    sessions: dict[str, Session]
    options: SessionOptions
    _components: dict[str, Component]
    _computes: dict[str, str]
    _backend_module: Any

    def load_textual_inversion(self, path: str | os.PathLike, token: str | None = None) -> str:
        """Teach the pipeline a word from a textual-inversion embedding file (.safetensors: the
        diffusers layout, whose tensor is named after the word, AUTOMATIC1111's, named by the
        file, or SDXL's clip_l / clip_g vectors, one set per text encoder); `token` names the
        word instead. Returns the word, to use in prompts. Each text encoder's session reopens
        with the new vectors appended to its token table; the artifact's files are not touched."""
        widths = {use.component: int(self._components[use.component].spec.tensor(TEXT_ENCODER.hidden_states).shape[-1])
                  for use in self.text_encoders}
        word, vectors = load_embedding(path, widths, token)
        for use in self.text_encoders:
            if word.lower() in use.tokenizer.added:
                raise RequestError(f"An embedding for {word!r} is loaded already; name this one with token=...")
            if word.lower() + "</w>" in use.tokenizer.encoder:
                raise RequestError(f"{word!r} is a word CLIP knows already; name the embedding with token=... (e.g. "
                                   f"'<{word}>').")
        previous = dict(self._token_embeddings)
        firsts = {}
        for name, new in vectors.items():
            held = self._token_embeddings.get(name)
            firsts[name] = len(next(u for u in self.text_encoders if u.component == name).tokenizer.encoder) + \
                (0 if held is None else len(held))
            self._token_embeddings[name] = new if held is None else np.concatenate([held, new])
        try:
            for name in vectors:
                self._reopen(name)
        except BaseException:
            self._token_embeddings = previous
            for name in vectors:
                self._reopen(name)
            raise
        for use in self.text_encoders:
            first = firsts[use.component]
            use.tokenizer.add_word(word, list(range(first, first + len(vectors[use.component]))))
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
                       for network, role in self._lora_networks().items() if names_network(tensors, network)}
            pairs = pair_count(tensors)
            matched = {network: len(updates.get(network, {})) for network in self._lora_networks()}
            if not any(matched.values()):
                raise RequestError(nothing_matched(spec.path.name, pairs))
            loaded.append(((spec, updates), {"file": spec.path.name, "strength": spec.strength, "matched": matched,
                                             "pairs": pairs, "unmatched": pairs - sum(matched.values())}))
        changed = [role for network, role in self._lora_networks().items()
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
                              "pairs name no weight of this artifact's UNet or text encoders and were left out "
                              "(artifacts exported before sdrt named the linear layers' weights match only "
                              "convolutions: re-export those).", stacklevel=2)
        return [summary for _, summary in loaded]

    @property
    def loras(self) -> list[tuple[str, float]]:
        """(file, strength) of each LoRA applied at run time, in the order loaded."""
        return [(str(spec.path), spec.strength) for spec, _ in self._loras]

    def unload_loras(self) -> None:
        """Back to the artifact's own weights (textual-inversion words stay)."""
        changed = {role for _, updates in self._loras for network, role in self._lora_networks().items()
                   if updates.get(network)}
        self._loras = []
        for role in sorted(changed):
            self._reopen(role)

    def _lora_networks(self) -> dict[str, str]:
        """LORA_NETWORKS that this model has."""
        return {network: role for network, role in LORA_NETWORKS.items() if role in self._components}

    def _weights(self, role: str) -> ModuleWeights:
        if role not in self._module_weights:
            self._module_weights[role] = ModuleWeights(self._components[role])
        return self._module_weights[role]

    def _reopen(self, role: str) -> None:
        """Open the network of `role` again with the run-time weights loaded so far: LoRA updates,
        and for a text encoder its token table extended by textual-inversion vectors."""
        network = next(network for network, owner in LORA_NETWORKS.items() if owner == role)
        weights = self._weights(role)
        updates = [(spec.strength, by_network[network]) for spec, by_network in self._loras
                   if by_network.get(network)]
        replaced = weights.with_updates(updates) if updates else {}
        if role in self._token_embeddings:
            name = weights.ending_with(TOKEN_EMBEDDING)
            if name is None:
                raise RequestError(f"The {weights.component.spec.name}'s ONNX file has no token-embedding table "
                                   f"(*{TOKEN_EMBEDDING}) to extend; was it exported by sdrt?")
            table = replaced[name] if name in replaced else weights.read([name])[name]
            replaced[name] = np.concatenate([table, self._token_embeddings[role].astype(table.dtype)])
        # The old session goes first: two UNets side by side would double the peak memory.
        del self.sessions[role]
        self.sessions[role] = self._backend_module.open_session(self._components[role], replace(
            self.options, precision=self._computes[role], weights=replaced or None))
