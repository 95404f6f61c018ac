"""Textual-inversion embeddings: new words whose token vectors come from a file.

The vectors are appended to the text encoder's token-embedding table when its session opens
(each backend replaces the table in the loaded model: the artifact's files stay as exported),
and the tokenizer maps the word to the new ids. Files are read as safetensors, without torch:
the diffusers layout ({"<word>": (vectors, width) or (width,)}) and AUTOMATIC1111's
({"emb_params": (vectors, width)}, the word being the file's name).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import RequestError
from .safetensors_reader import read_safetensors

# the exporter's name for CLIP's token-embedding table, as it ends (models may nest it)
TOKEN_EMBEDDING = "embeddings.token_embedding.weight"


def load_embedding(path: str | os.PathLike, width: int, token: str | None = None) -> tuple[str, np.ndarray]:
    """(word, vectors of shape (count, width)) from an embedding file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RequestError(f"Embedding file {path} does not exist.")
    if path.suffix != ".safetensors":
        raise RequestError(f"Embedding files are read as .safetensors (.pt and .bin files are pickles, which run "
                           f"code when loaded); convert {path.name} first.")
    tensors = read_safetensors(path)
    if "emb_params" in tensors:  # AUTOMATIC1111
        word, vectors = token or path.stem, tensors["emb_params"]
    elif "clip_l" in tensors:  # the SD 2 / XL embedding layout's CLIP-L part
        word, vectors = token or path.stem, tensors["clip_l"]
    elif len(tensors) == 1:  # diffusers: the word is the key
        (key, vectors), = tensors.items()
        word = token or key
    else:
        raise RequestError(f"{path.name} holds {', '.join(sorted(tensors))}: not an embedding layout sdrt reads "
                           "(diffusers: one tensor named after its word; AUTOMATIC1111: emb_params).")
    vectors = vectors.reshape(-1, vectors.shape[-1])
    if vectors.shape[-1] != width:
        raise RequestError(f"The embedding in {path.name} has vectors of {vectors.shape[-1]} values; this model's text "
                           f"encoder takes {width} (SD 1.x: 768, SD 2.x: 1024): it was made for another model.")
    if not word.strip() or any(c.isspace() for c in word.strip()):
        raise RequestError(f"An embedding's word is one word without spaces; got {word!r} (pass token=...).")
    return word.strip(), vectors
