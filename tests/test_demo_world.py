"""The demo model's data generator and checker (the prompt-fidelity oracle)."""
import json
from collections import Counter

import numpy as np
import pytest

from sdrt.models.demo.checker import fidelity, read_scene
from sdrt.models.demo.evaluation import evaluation_prompts, held_out, load_evaluation_prompts, score
from sdrt.models.demo.scenes import ATTRIBUTES, COLOURS, SHAPES, caption, describe, parse, random_scene, render


def test_checker_reads_at_least_99_percent_of_attributes_on_1000_fresh_renders():
    rng = np.random.default_rng(20261128)
    wrong = Counter()
    for _ in range(1000):
        scene = random_scene(rng)
        read = read_scene(render(scene, 64, rng))
        for name, ok in fidelity(scene.attributes(), read).items():
            wrong[name] += not ok
    accuracy = 1 - sum(wrong.values()) / (1000 * len(ATTRIBUTES))
    assert accuracy >= 0.99, (accuracy, dict(wrong))
    assert max(wrong.values()) <= 30, dict(wrong)  # no single attribute below 97%


@pytest.mark.parametrize("side", [64, 128])
def test_every_shape_and_colour_is_read_at_both_image_sizes(side):
    rng = np.random.default_rng(side)
    for shape in SHAPES:
        for colour in COLOURS:
            scene = random_scene(rng)
            background = "black" if colour != "black" else "white"
            scene = type(scene)(shape, colour, background, "large", (1, 1), (0.5, 0.5), 0.31)
            read = read_scene(render(scene, side))
            assert (read["shape"], read["colour"], read["background"]) == (shape, colour, background)


def test_blank_image_has_no_foreground():
    read = read_scene(np.full((64, 64, 3), COLOURS["blue"], dtype=np.uint8))
    assert read["background"] == "blue" and read["shape"] is None and read["colour"] is None


def test_captions_state_what_they_say_and_parse_back():
    rng = np.random.default_rng(1)
    empty = 0
    for _ in range(2000):
        scene = random_scene(rng)
        text = caption(scene, rng)
        if not text:
            empty += 1
            continue
        stated = parse(text)
        assert all(scene.attributes()[k] == v for k, v in stated.items()), (text, stated)
        assert describe(stated) == text
    assert 150 < empty < 250  # about 10% empty captions


def test_full_caption_round_trip():
    scene = random_scene(np.random.default_rng(3))
    assert parse(describe(scene.attributes())) == scene.attributes()
    assert describe({"shape": "circle", "colour": "red", "background": "blue"}) == "a red circle on a blue background"


def test_scene_distribution_covers_every_value():
    rng = np.random.default_rng(5)
    scenes = [random_scene(rng) for _ in range(3000)]
    for name, expected in (("shape", 3), ("colour", 8), ("background", 8), ("size", 3), ("position", 9)):
        assert len({s.attributes()[name] for s in scenes}) == expected, name
    assert all(s.colour != s.background for s in scenes)


def _blur(image, k=2):
    pixels = image.astype(np.float64)
    total = sum(np.roll(np.roll(pixels, dy, 0), dx, 1) for dy in range(-k, k + 1) for dx in range(-k, k + 1))
    return np.clip(total / (2 * k + 1) ** 2, 0, 255).astype(np.uint8)


def test_checker_tolerates_blur_and_noise_like_a_generated_image():
    rng = np.random.default_rng(11)
    pairs = []
    for index in range(300):
        scene = random_scene(rng)
        image = render(scene, 64, rng)
        image = _blur(image) if index % 2 else np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
        pairs.append((scene.attributes(), image))
    scores = score(pairs)
    assert scores["overall"] >= 0.98 and min(scores.values()) >= 0.95, scores


def test_evaluation_set_is_the_shipped_one_and_held_out():
    shipped = load_evaluation_prompts()
    assert shipped == json.loads(json.dumps(evaluation_prompts()))
    assert len(shipped) == 100 and len({p["prompt"] for p in shipped}) == 100
    for entry in shipped:
        assert parse(entry["prompt"]) == {k: tuple(v) if isinstance(v, list) else v
                                          for k, v in entry["attributes"].items()}
    assert held_out(shipped[0]["prompt"]) and not held_out("a red circle")


def test_score_counts_only_stated_attributes():
    scene = random_scene(np.random.default_rng(2))
    image = render(scene)
    stated = {"colour": scene.colour, "shape": "square" if scene.shape != "square" else "circle"}
    scores = score([(stated, image)])
    assert scores == {"shape": 0.0, "colour": 1.0, "overall": 0.5}
