"""Stage 1 of a request: prompts -> the denoiser's conditioning inputs by name, built from the
manifest's data (pipeline.text_encoders, time_ids, force_zeros_for_empty_prompt), the same way for
every family: SD 1.x / 2.x read one encoder's last layer; SDXL reads two encoders' penultimate
layers side by side, the second's pooled projection and the size conditions (time ids).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..models.components import DENOISER, TEXT_ENCODER
from .artifact import Artifact
from .backends import Session
from .errors import ArtifactError, RequestError
from .prompts import parse_prompt, weigh_embeddings
from .tokenizer import ClipTokenizer

# An artifact written before the manifest described its text encoders: SD 1.x / 2.x.
DEFAULT_TEXT_ENCODERS = ({"component": "text_encoder", "layer": -1, "final_layer_norm": True, "pooled": False},)
# How many numbers each named time-id field holds (diffusers' _get_add_time_ids).
TIME_ID_FIELDS = {"original_size": 2, "crops_coords_top_left": 2, "target_size": 2, "aesthetic_score": 1}


@dataclass(frozen=True)
class TextEncoderUse:
    """One text encoder as the UNet reads it: which of its stacked layers (at CLIP skip 0), and
    whether its pooled projection is an added condition."""

    component: str
    layer: int
    pooled: bool
    tokenizer: ClipTokenizer
    has_layers: bool  # the network outputs every layer (artifacts exported before CLIP skip do not)


def text_encoder_uses(artifact: Artifact) -> list[TextEncoderUse]:
    uses = []
    for entry in artifact.pipeline.get("text_encoders") or DEFAULT_TEXT_ENCODERS:
        name = entry["component"]
        tokenizer_entry = artifact.tokenizer_entry(name)
        tokenizer = ClipTokenizer.from_folder(
            artifact.file(tokenizer_entry["files"]["vocab"]).parent, bos_id=tokenizer_entry["bos_id"],
            eos_id=tokenizer_entry["eos_id"], pad_id=tokenizer_entry["pad_id"],
            max_length=tokenizer_entry["max_length"])
        outputs = artifact.component(name).spec.output_names
        uses.append(TextEncoderUse(name, int(entry["layer"]), bool(entry["pooled"]), tokenizer,
                                   TEXT_ENCODER.layers in outputs))
    if len({use.tokenizer.max_length for use in uses}) != 1:
        raise ArtifactError(f"The text encoders of {artifact.root} read prompts of different lengths; export it again.")
    return uses


def time_id_fields(artifact: Artifact) -> list[str]:
    """The manifest's time-id fields (SDXL's size conditions), in the UNet's order; refuses a
    field this sdrt does not know."""
    fields = list(artifact.pipeline.get("time_ids", []))
    unknown = [name for name in fields if name not in TIME_ID_FIELDS]
    if unknown:
        raise ArtifactError(f"The artifact's UNet takes time ids this sdrt does not know ({', '.join(unknown)}); "
                            "upgrade sdrt (pip install -U sdrt) to run it.")
    return fields


def time_id_values(fields: list[str], values: Mapping[str, tuple[float, ...]]) -> tuple[float, ...]:
    """The time ids of `fields` (the manifest's order) from a request's values by field name."""
    return tuple(float(v) for name in fields for v in values[name])


def encode_text(uses: list[TextEncoderUse], sessions: Mapping[str, Session], prompt_sets: list[list[str]],
                max_chunks: int, clip_skip: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(hidden states: (prompts, chunks x 77, summed width), pooled projection or None) of the
    prompts; prompt_sets[i] goes to encoder i. Each 77-token chunk is encoded on its own and the
    chunks follow one another; the pooled projection is the first chunk's (as the web UIs do).
    Weighted fragments ("(word:1.2)") scale their tokens' states, the mean kept (prompts.py)."""
    fragments = [[parse_prompt(text) for text in prompts] for prompts in prompt_sets]
    tokenized = [use.tokenizer.weighted(parts, max_chunks) for use, parts in zip(uses, fragments)]
    chunks = max(ids.shape[1] for ids, _ in tokenized)
    states, pooled = [], None
    for use, parts, (ids, weights) in zip(uses, fragments, tokenized):
        if ids.shape[1] < chunks:  # (prompt_2 shorter than prompt: as many chunks, empty ones appended)
            ids, weights = use.tokenizer.weighted(parts, max_chunks, min_chunks=chunks)
        prompts, _, length = ids.shape
        outputs = sessions[use.component].run({TEXT_ENCODER.input_ids: ids.reshape(-1, length)})
        if use.has_layers:  # (the request checked clip_skip against every encoder's depth)
            hidden = outputs[TEXT_ENCODER.layers][use.layer - clip_skip]
        elif clip_skip or use.layer != -1:
            raise RequestError("This artifact's text encoder gives its last layer only, so clip_skip needs the "
                               "artifact exported again with this sdrt.")
        else:
            hidden = outputs[TEXT_ENCODER.hidden_states]
        weights = weights.reshape(-1, length)
        emphasized = (weights != 1).any(axis=1)
        if emphasized.any():  # chunks without weights stay exactly as encoded
            hidden = hidden.copy()
            hidden[emphasized] = weigh_embeddings(hidden[emphasized], weights[emphasized])
        states.append(hidden.reshape(prompts, chunks * length, hidden.shape[-1]))
        if use.pooled:
            projected = outputs[TEXT_ENCODER.projected]
            pooled = projected.reshape(prompts, chunks, projected.shape[-1])[:, 0]
    return np.concatenate(states, axis=-1), pooled


def guidance_embedding(guidance_scale: float, width: int) -> np.ndarray:
    """(1, width) float32: a latent consistency model's guidance input, sinusoidal features of
    w = guidance_scale - 1 (Kingma et al. 2021, VDM; diffusers' LatentConsistencyModelPipeline.
    get_guidance_scale_embedding, in float32 as there)."""
    w = np.float32(guidance_scale - 1.0) * np.float32(1000.0)
    half = width // 2
    step = np.log(np.float32(10000.0)) / np.float32(half - 1)
    frequencies = np.exp(np.arange(half, dtype=np.float32) * -step).astype(np.float32)
    angles = (w * frequencies)[np.newaxis]
    embedding = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    return np.pad(embedding, ((0, 0), (0, width % 2))).astype(np.float32)


def conditioning(uses: list[TextEncoderUse], sessions: Mapping[str, Session], positive: list[list[str]],
                 negative: list[list[str]] | None, zero_negative: bool, time_ids: tuple[tuple[float, ...], ...] | None,
                 copies: int, per_prompt: int, max_chunks: int, clip_skip: int,
                 guidance: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The denoiser's conditioning inputs by name: with guidance (copies 2), [negative...,
    positive...] along the batch; each prompt's repeated per_prompt times in a row, as diffusers
    does. `zero_negative`: zeros for the negative half (SDXL's force_zeros_for_empty_prompt);
    `time_ids`: (positive, negative) size conditions, or None for a UNet without them;
    `guidance`: a latent consistency model's guidance embedding (one row), or None."""
    prompt_sets = positive if copies == 1 or zero_negative else [n + p for n, p in zip(negative or positive, positive)]
    hidden, pooled = encode_text(uses, sessions, prompt_sets, max_chunks, clip_skip)
    if copies == 2 and zero_negative:
        hidden = np.concatenate([np.zeros_like(hidden), hidden])
        pooled = None if pooled is None else np.concatenate([np.zeros_like(pooled), pooled])
    feeds = {DENOISER.text: np.repeat(hidden, per_prompt, axis=0)}
    if pooled is not None:
        feeds[DENOISER.pooled_text] = np.repeat(pooled, per_prompt, axis=0)
    if time_ids is not None:
        rows = len(feeds[DENOISER.text]) // copies
        halves = [time_ids[1], time_ids[0]] if copies == 2 else [time_ids[0]]
        feeds[DENOISER.time_ids] = np.repeat(np.asarray(halves, dtype=np.float32), rows, axis=0)
    if guidance is not None:
        feeds[DENOISER.guidance] = np.repeat(guidance, len(feeds[DENOISER.text]), axis=0)
    return feeds
