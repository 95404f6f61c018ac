"""Prompt fidelity: the evaluation prompts and the per-attribute score.

The evaluation set is fixed (eval_prompts.json, made by `evaluation_prompts()`), and the
training recipe never uses its prompts as captions.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .checker import fidelity, read_scene
from .scenes import ATTRIBUTES, describe, random_scene

EVAL_FILE = Path(__file__).parent / "eval_prompts.json"
EVAL_SEED = 90210
EVAL_IMAGE_SEEDS = (1, 2)


def evaluation_prompts(count: int = 100, seed: int = EVAL_SEED) -> list[dict]:
    """`count` distinct prompts that state colour, shape and background, and size and
    position about half the time each."""
    rng = np.random.default_rng(seed)
    prompts: dict[str, dict] = {}
    while len(prompts) < count:
        scene = random_scene(rng).attributes()
        stated = {k: scene[k] for k in ("shape", "colour", "background")}
        for optional in ("size", "position"):
            if rng.random() < 0.5:
                stated[optional] = scene[optional]
        text = describe(stated)
        prompts.setdefault(text, {"prompt": text, "attributes": {k: _plain(v) for k, v in stated.items()}})
    return list(prompts.values())


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def load_evaluation_prompts() -> list[dict]:
    return json.loads(EVAL_FILE.read_text())


def held_out(text: str) -> bool:
    """Whether `text` is an evaluation prompt (and so must not be a training caption)."""
    return text in {p["prompt"] for p in load_evaluation_prompts()}


def score(pairs: Iterable[tuple[dict, np.ndarray]]) -> dict[str, float]:
    """Prompt fidelity over (stated attributes, image) pairs: per attribute and overall."""
    hits = {name: [] for name in ATTRIBUTES}
    for stated, image in pairs:
        stated = {k: tuple(v) if isinstance(v, list) else v for k, v in stated.items()}
        for name, ok in fidelity(stated, read_scene(image)).items():
            hits[name].append(ok)
    result = {name: float(np.mean(v)) for name, v in hits.items() if v}
    result["overall"] = float(np.mean([ok for v in hits.values() for ok in v]))
    return result
