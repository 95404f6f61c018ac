"""Prompt fidelity: the evaluation prompts and the per-attribute score.

The evaluation set is fixed (eval_prompts.json, made by `evaluation_prompts()`), and the
training recipe never uses its prompts as captions.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .checker import fidelity, read_scene
from .scenes import ATTRIBUTES, describe, random_scene

EVAL_FILE = Path(__file__).parent / "eval_prompts.json"
EVAL_SEED = 90210
EVAL_IMAGE_SEEDS = (1, 2)
# What `sdrt generate` does by default: the checkpoint's own sampler, 20 steps, guidance 7.5.
EVAL_STEPS = 20
EVAL_GUIDANCE = 7.5


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


def evaluate(pipe, prompts: list[dict] | None = None, seeds: Iterable[int] = EVAL_IMAGE_SEEDS, *,
             steps: int = EVAL_STEPS, guidance: float = EVAL_GUIDANCE, scheduler: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Prompt fidelity of a text-to-image pipeline on the evaluation prompts.

    `pipe` is an sdrt pipeline (or anything called the same way) on a demo-model artifact.
    Each (prompt, seed) is one image generated alone, exactly as
    `sdrt generate PROMPT --seed SEED` makes it. Returns the per-attribute scores, "overall",
    "images" and "seconds_per_image" (generation only, after load).
    """
    import time

    prompts = load_evaluation_prompts() if prompts is None else prompts
    seeds = tuple(seeds)
    total = len(prompts) * len(seeds)
    pairs, elapsed = [], 0.0
    for index, (entry, seed) in enumerate((p, s) for p in prompts for s in seeds):
        started = time.perf_counter()
        result = pipe(entry["prompt"], num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                      scheduler=scheduler)
        elapsed += time.perf_counter() - started
        pairs.append((entry["attributes"], np.asarray(result.images[0])))  # the pixels the PNG would hold
        if progress is not None:
            progress(index + 1, total)
    scores = score(pairs)
    scores["images"] = total
    scores["seconds_per_image"] = elapsed / total
    return scores
