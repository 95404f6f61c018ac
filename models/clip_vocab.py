"""CLIP's BPE vocabulary, built from the merge list that ships with the package.

The construction follows CLIP's own `simple_tokenizer.py` (openai/CLIP): 256 byte tokens,
the same 256 with the end-of-word marker, the first 48,894 merges, then the two specials,
49,408 ids in all. Written as vocab.json + merges.txt, the files transformers' CLIPTokenizer
and sdrt's runtime tokenizer both read.
"""
from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

BPE_FILE = Path(__file__).parent / "clip_bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@lru_cache(maxsize=1)
def clip_merges() -> tuple[tuple[str, str], ...]:
    lines = gzip.open(BPE_FILE).read().decode("utf-8").split("\n")
    return tuple(tuple(line.split()) for line in lines[1 : NUM_MERGES + 1])


def clip_vocab() -> dict[str, int]:
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in clip_merges()]
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def write_clip_tokenizer(folder: Path, pad_token: str = EOS, max_length: int = 77) -> None:
    """Write a CLIP tokenizer folder that `CLIPTokenizer.from_pretrained` loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(clip_vocab(), ensure_ascii=False))
    merges = "#version: 0.2\n" + "\n".join(" ".join(m) for m in clip_merges()) + "\n"
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
