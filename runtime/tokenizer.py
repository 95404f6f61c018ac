"""CLIP's byte-pair-encoding tokenizer in plain Python, reading vocab.json + merges.txt.

It follows CLIP's `simple_tokenizer.py` (openai/CLIP): collapse whitespace, lower-case,
split with CLIP's pattern, byte-encode, apply merges by rank. Like transformers'
CLIPTokenizer without ftfy installed (what diffusers pipelines usually run), it does not
run `ftfy.fix_text` or unescape HTML entities, so "&amp;" stays three tokens.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import regex

from ..models.clip_vocab import bytes_to_unicode

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


class ClipTokenizer:
    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, ...]], *, bos_id: int, eos_id: int,
                 pad_id: int, max_length: int = 77):
        self.encoder = vocab
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.max_length = max_length
        self._cache: dict[str, str] = {}
        self.added: dict[str, list[int]] = {}  # textual-inversion words -> their ids
        self._added_pattern = None

    @classmethod
    def from_folder(cls, folder: Path, *, bos_id: int, eos_id: int, pad_id: int, max_length: int) -> "ClipTokenizer":
        folder = Path(folder)
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        return cls(vocab, merges, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, max_length=max_length)

    def _bpe(self, token: str) -> str:
        if token in self._cache:
            return self._cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        result = " ".join(word)
        self._cache[token] = result
        return result

    def add_word(self, word: str, ids: list[int]) -> None:
        """Map `word` to `ids` wherever it appears in a prompt, case-insensitively, as diffusers'
        added tokens match (inside longer words too: give embeddings distinct words like <toy>)."""
        self.added[word.lower()] = list(ids)
        words = sorted(self.added, key=len, reverse=True)  # the longest first
        self._added_pattern = regex.compile("(" + "|".join(regex.escape(w) for w in words) + ")")

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without the start/end tokens."""
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids: list[int] = []
        parts = self._added_pattern.split(text) if self._added_pattern else [text]
        for index, part in enumerate(parts):
            if index % 2:  # an added word
                ids.extend(self.added[part])
                continue
            for piece in _PATTERN.findall(part):
                piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
                ids.extend(self.encoder[t] for t in self._bpe(piece).split(" "))
        return ids

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """(len(prompts), max_length) int64 ids: start token, text, end token, padding.

        Text longer than max_length - 2 tokens is truncated with a warning that says how
        many tokens were dropped.
        """
        return self.weighted([[(prompt, 1.0)] for prompt in prompts])[0][:, 0]

    def weighted(self, prompts: list[list[tuple[str, float]]], max_chunks: int = 1,
                 min_chunks: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Ids and each token's weight (float32; 1 for the start, end and padding tokens), shaped
        (prompts, chunks, max_length), for prompts given as (fragment, weight) pairs, each
        fragment tokenized on its own, as the web UIs do.

        A prompt longer than max_length - 2 tokens goes on in further chunks of that many tokens,
        each with its own start and end token (up to `max_chunks`, beyond which the rest is
        dropped with a warning that says how many tokens); every prompt gets as many chunks as
        the longest (and at least `min_chunks`), the shorter ones filled with empty chunks.
        """
        room = self.max_length - 2
        tokenized = []
        for fragments in prompts:
            ids: list[int] = []
            weights: list[float] = []
            for text, weight in fragments:
                piece = self.encode(text)
                ids += piece
                weights += [weight] * len(piece)
            if len(ids) > room * max_chunks:
                prompt = "".join(text for text, _ in fragments)
                warnings.warn(
                    f"The prompt is {len(ids)} tokens long; the model reads {room * max_chunks}, so the last "
                    f"{len(ids) - room * max_chunks} tokens were dropped: {prompt[:60]!r}...",
                    stacklevel=3,
                )
                ids, weights = ids[:room * max_chunks], weights[:room * max_chunks]
            tokenized.append((ids, weights))
        chunks = max(min_chunks, max(-(-len(ids) // room) for ids, _ in tokenized))
        id_rows = np.full((len(prompts), chunks, self.max_length), self.pad_id, dtype=np.int64)
        weight_rows = np.ones((len(prompts), chunks, self.max_length), dtype=np.float32)
        for row, (ids, weights) in enumerate(tokenized):
            for chunk in range(chunks):
                part = ids[chunk * room:(chunk + 1) * room]
                id_rows[row, chunk, :len(part) + 2] = [self.bos_id, *part, self.eos_id]
                weight_rows[row, chunk, 1:len(part) + 1] = weights[chunk * room:(chunk + 1) * room]
        return id_rows, weight_rows
