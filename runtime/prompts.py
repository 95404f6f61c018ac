"""Prompt weighting in the syntax the Stable Diffusion web UIs made standard.

    (words)        x 1.1          ((words))      x 1.21 (brackets nest and multiply)
    [words]        / 1.1          (words:1.5)    x 1.5
    \\( \\) \\[ \\] \\\\   the characters themselves

Round and square brackets pair up separately, as in the web UIs. A bracket without its partner
is kept as text and reported in a warning (the web UIs instead weight the rest of the prompt).
Weights apply to the text encoder's output, token by token, after which each prompt's mean is
restored (the AUTOMATIC1111 web UI's way: emphasis without changing the embedding's scale).
"""
from __future__ import annotations

import re
import warnings

import numpy as np

ROUND, SQUARE = 1.1, 1 / 1.1
# "(words:1.5)": the weight and its closing bracket, spaces allowed around the number
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)")
_ESCAPED = "()[]\\"


def parse_prompt(text: str) -> list[tuple[str, float]]:
    """`text` as (fragment, weight) pairs, neighbours of equal weight merged; [("", 1.0)] for
    an empty prompt."""
    # Pass 1: text pieces, brackets, and weighted closes, with escapes resolved.
    tokens: list[list] = []  # [kind, text, weight]; kind: text | ( | [ | ) | ]
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPED:
            tokens.append(["text", text[i + 1], None])
            i += 2
            continue
        if char in "([])":
            tokens.append([char, char, None])
            i += 1
            continue
        weighted = _WEIGHT_CLOSE.match(text, i) if char == ":" else None
        if weighted:
            tokens.append([")", weighted.group(0), float(weighted.group(1))])
            i = weighted.end()
            continue
        end = i + 1
        while end < len(text) and text[end] not in "([])\\:":
            end += 1
        tokens.append(["text", text[i:end], None])
        i = end

    # Pair brackets, round and square apart; what stays unpaired becomes text.
    multiplier: dict[int, float] = {}  # index of a paired opening bracket -> its factor
    opened_by: dict[int, int] = {}  # index of a paired closing bracket -> its opening one
    open_at: dict[str, list[int]] = {"(": [], "[": []}
    for index, (kind, _, weight) in enumerate(tokens):
        if kind in open_at:
            open_at[kind].append(index)
        elif kind in ")]":
            stack = open_at["(" if kind == ")" else "["]
            if stack:
                start = stack.pop()
                multiplier[start] = weight if weight is not None else (ROUND if kind == ")" else SQUARE)
                opened_by[index] = start
    unpaired = [t[1] for index, t in enumerate(tokens)
                if t[0] != "text" and index not in multiplier and index not in opened_by]
    if unpaired:
        warnings.warn(f"Unbalanced brackets in the prompt ({' '.join(unpaired)}) are kept as text: {text[:60]!r}",
                      stacklevel=2)

    # Pass 2: each text piece at the product of the bracket pairs around it.
    pieces: list[tuple[str, float]] = []
    active: list[int] = []  # the opening brackets whose pair is still open, in order
    weight = 1.0
    for index, (kind, piece, _) in enumerate(tokens):
        if index in multiplier or index in opened_by:
            if index in multiplier:
                active.append(index)
            else:
                active.remove(opened_by[index])
            weight = 1.0
            for start in active:
                weight *= multiplier[start]
        elif piece:
            if pieces and pieces[-1][1] == weight:
                pieces[-1] = (pieces[-1][0] + piece, weight)
            else:
                pieces.append((piece, weight))
    return pieces or [("", 1.0)]


def weigh_embeddings(hidden: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each token's embedding times its weight, then rescaled so that each prompt's mean is what
    it was (hidden: (prompts, tokens, width); weights: (prompts, tokens))."""
    means = hidden.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
    weighted = hidden * weights[..., np.newaxis].astype(np.float32)
    scale = means / weighted.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
    return (weighted * scale.astype(np.float32)).astype(np.float32)
