"""Textual-inversion embeddings: new words whose token vectors come from a file.

The vectors are appended to the text encoder's token-embedding table when its session opens
(each backend replaces the table in the loaded model: the artifact's files stay as exported),
and the tokenizer maps the word to the new ids. Files are read as safetensors, without torch:
the diffusers layout ({"<word>": (vectors, width) or (width,)}), AUTOMATIC1111's
({"emb_params": (vectors, width)}, the word being the file's name) and SDXL's ({"clip_l": ...,
"clip_g": ...}: one set per text encoder, the word being the file's name). With two text
encoders each gets its own vectors and the word in its tokenizer.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import RequestError
from .safetensors_reader import read_safetensors

# the exporter's name for CLIP's token-embedding table, as it ends (models may nest it)
TOKEN_EMBEDDING = "embeddings.token_embedding.weight"


# SDXL's embedding files: one set of vectors per text encoder, by the encoder's component name
ENCODER_KEYS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}


def load_embedding(path: str | os.PathLike, widths: dict[str, int],
                   token: str | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """(word, {text encoder: vectors of shape (count, width)}) from an embedding file, for the
    text encoders of `widths` (component name: hidden width)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RequestError(f"Embedding file {path} does not exist.")
    if path.suffix != ".safetensors":
        raise RequestError(f"Embedding files are read as .safetensors (.pt and .bin files are pickles, which run "
                           f"code when loaded); convert {path.name} first.")
    tensors = read_safetensors(path)
    if any(key in tensors for key in ENCODER_KEYS.values()):  # SDXL's layout (and SD 1.x's CLIP-L part of it)
        word = token or path.stem
        missing = [name for name in widths if ENCODER_KEYS.get(name) not in tensors]
        if missing:
            raise RequestError(f"{path.name} holds {', '.join(sorted(tensors))}; this model's {missing[0]} needs its "
                               f"{ENCODER_KEYS.get(missing[0], missing[0])} vectors: it was made for another model.")
        found = {name: tensors[ENCODER_KEYS[name]] for name in widths}
    else:
        if "emb_params" in tensors:  # AUTOMATIC1111
            word, vectors = token or path.stem, tensors["emb_params"]
        elif len(tensors) == 1:  # diffusers: the word is the key
            (key, vectors), = tensors.items()
            word = token or key
        else:
            raise RequestError(f"{path.name} holds {', '.join(sorted(tensors))}: not an embedding layout sdrt reads "
                               "(diffusers: one tensor named after its word; AUTOMATIC1111: emb_params; SDXL: "
                               "clip_l and clip_g).")
        if len(widths) > 1:
            raise RequestError(f"{path.name} holds one set of vectors; this model has {len(widths)} text encoders and "
                               "takes SDXL's embedding files (clip_l and clip_g vectors).")
        found = {name: vectors for name in widths}
    for name, vectors in found.items():
        if vectors.shape[-1] != widths[name]:
            raise RequestError(f"The embedding in {path.name} has vectors of {vectors.shape[-1]} values; this model's "
                               f"{name.replace('_', ' ')} takes {widths[name]} (SD 1.x: 768, SD 2.x: 1024, SDXL: 768 "
                               "and 1280): it was made for another model.")
    counts = {len(vectors.reshape(-1, vectors.shape[-1])) for vectors in found.values()}
    if len(counts) > 1:
        raise RequestError(f"{path.name} has a different number of vectors for each text encoder; it is damaged.")
    if not word.strip() or any(c.isspace() for c in word.strip()):
        raise RequestError(f"An embedding's word is one word without spaces; got {word!r} (pass token=...).")
    return word.strip(), {name: vectors.reshape(-1, vectors.shape[-1]) for name, vectors in found.items()}
