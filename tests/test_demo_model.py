"""The shipped demo model: it fits its budget, it is what its diffusers folder exports to, and the
images it makes show what their prompts say, on every backend (the checker is the oracle)."""
import json

import numpy as np
import pytest

import sdrt
from sdrt.cli import main
from sdrt.models.demo import CHECKPOINT, demo_artifact, demo_checkpoint
from sdrt.models.demo.checker import read_scene
from sdrt.models.demo.evaluation import evaluate, load_evaluation_prompts
from sdrt.models.demo.publish import folder_bytes
from sdrt.runtime.backends import available_backends

SUBSET = 24  # the first 24 evaluation prompts, seed 1
# The full evaluation (100 prompts x 2 seeds) scores overall 0.935 and colour 0.950 on both CPU
# backends, and this subset 0.989 and 0.958 (models/README.md); the bounds sit a few points under
# the full scores.
SUBSET_OVERALL = 0.90
SUBSET_COLOUR = 0.90


@pytest.fixture(scope="module")
def pipes():
    return {backend: sdrt.load(demo_artifact(), backend=backend) for backend in available_backends()}


def test_shipped_model_fits_the_budget_and_verifies():
    artifact = sdrt.open_artifact(demo_artifact())  # schema and every checksum
    assert artifact.manifest["pipeline"]["default_size"] == [64, 64]
    assert folder_bytes(demo_checkpoint()) + folder_bytes(demo_artifact()) <= 40_000_000


def test_shipped_text_encoder_uses_the_standard_key_names():
    """Real checkpoints name CLIP's weights text_model.*; transformers 4.x (what the peers pin)
    loads nothing from any other layout."""
    from safetensors import safe_open

    with safe_open(demo_checkpoint() / "text_encoder" / "model.safetensors", framework="numpy") as weights:
        keys = list(weights.keys())
    assert keys and all(key.startswith("text_model.") for key in keys)


@pytest.mark.slow
def test_shipped_artifact_is_the_export_of_the_shipped_folder(tmp_path):
    pytest.importorskip("torch")
    shipped = json.loads((demo_artifact() / "sdrt.json").read_text())
    again = sdrt.export_checkpoint(CHECKPOINT, tmp_path / "again")
    fresh = json.loads((again / "sdrt.json").read_text())
    assert fresh["files"] == shipped["files"], "re-publish: python -m sdrt.models.demo.publish (models/README.md)"
    # The export's own check against PyTorch is a measurement: its last bits vary with the
    # machine's kernels (seen across CPUs), so it is compared as a bound, not copied.
    measured = "max_abs_diff_vs_torch"
    for entries in (fresh["components"], shipped["components"]):
        for entry in entries.values():
            assert entry.pop(measured) <= 1e-4
    assert fresh["components"] == shipped["components"] and fresh["pipeline"] == shipped["pipeline"]


@pytest.mark.slow
def test_prompt_fidelity_on_every_backend(pipes):
    prompts = load_evaluation_prompts()[:SUBSET]
    scores = {backend: evaluate(pipe, prompts, seeds=(1,)) for backend, pipe in pipes.items()}
    for backend, result in scores.items():
        assert result["overall"] >= SUBSET_OVERALL, (backend, result)
        assert result["colour"] >= SUBSET_COLOUR, (backend, result)
    overall = [result["overall"] for result in scores.values()]
    assert max(overall) - min(overall) <= 0.02, scores


@pytest.mark.slow
def test_negative_prompt_moves_the_colour_away(pipes):
    pipe = next(iter(pipes.values()))

    def colours(negative=None):
        images = [pipe("a circle", negative, num_inference_steps=20, seed=seed).images[0] for seed in range(32)]
        return [read_scene(np.asarray(image))["colour"] for image in images]

    plain = colours()
    common = max(sorted(set(plain)), key=plain.count)  # "a circle": black, orange, red 6 of 32 each
    negative = colours(common)
    assert plain.count(common) >= 4, plain
    assert negative.count(common) <= plain.count(common) // 4, (common, negative)


def test_img2img_recolours_a_circle_and_keeps_the_scene(pipes):
    # The oracle: "a red circle", redone as "a blue circle" at strength 0.7, turns blue.
    # Measured on openvino, seeds 0-7: 7 of 8 blue circles, 7 of 8 backgrounds kept (seed 5 drew
    # its red circle on blue, where a blue circle cannot show).
    pipe = next(iter(pipes.values()))
    recoloured = kept = 0
    for seed in range(8):
        source = pipe("a red circle", num_inference_steps=20, seed=seed).images[0]
        before = read_scene(np.asarray(source))
        assert before["colour"] == "red"
        after = read_scene(np.asarray(pipe("a blue circle", image=source, strength=0.7, num_inference_steps=20,
                                           seed=100 + seed).images[0]))
        recoloured += (after["colour"], after["shape"]) == ("blue", "circle")
        kept += after["background"] == before["background"]
    assert recoloured >= 6 and kept >= 6, (recoloured, kept)


def test_inpainting_changes_only_the_masked_region(pipes):
    # The oracle: a square region of a generated image is repainted and nothing else
    # changes. A red circle drawn top left; the bottom-right quadrant repainted as "a small blue
    # square in the bottom right" (measured on openvino, seeds 0-7: a blue shape there 8 of 8).
    from PIL import Image

    pipe = pipes.get("openvino") or next(iter(pipes.values()))
    mask = np.zeros((64, 64), np.uint8)
    mask[32:, 32:] = 255
    for seed in range(4):
        source = np.asarray(pipe("a small red circle in the top left on a white background", num_inference_steps=20,
                                 seed=seed).images[0])
        out = np.asarray(pipe("a small blue square in the bottom right on a white background", image=source,
                              mask_image=Image.fromarray(mask), num_inference_steps=20, seed=50 + seed).images[0])
        np.testing.assert_array_equal(out[mask == 0], source[mask == 0])
        quadrant = out[32:, 32:].reshape(-1, 3).astype(int)
        shape = quadrant[np.abs(quadrant - 255).sum(axis=1) > 120]  # not the white background
        assert len(shape) > 100
        r, g, b = shape.mean(axis=0)
        assert b > r + 80 and b > g + 80, (seed, shape.mean(axis=0))


@pytest.mark.slow
def test_prompt_weights_move_the_image(pipes):
    # Weighting a word down weakens it: "red" at weight 0 no longer always gives a red circle.
    # (CLIP's later tokens have read the word too, so the effect is partial, as in the web UIs.)
    # Measured on openvino, seeds 0-15: red 16 of 16 at weight 1, 14 at 0.3, 12 at 0; "a circle": 3.
    pipe = pipes.get("openvino") or next(iter(pipes.values()))

    def reds(prompt):
        return sum(read_scene(np.asarray(pipe(prompt, num_inference_steps=20, seed=seed).images[0]))["colour"] == "red"
                   for seed in range(16))

    assert reds("a red circle") >= 15
    assert reds("a (red:0) circle") <= 13


def test_generate_without_an_artifact_uses_the_demo_model_on_the_best_backend(tmp_path, pipes):
    from PIL import Image

    output = tmp_path / "demo.png"
    assert main(["generate", "a red circle on a blue background", "--seed", "1", "-o", str(output)]) == 0
    expected = pipes["openvino" if "openvino" in pipes else "onnxruntime"](
        "a red circle on a blue background", num_inference_steps=20, seed=1).images[0]
    assert np.array_equal(np.asarray(Image.open(output).convert("RGB")), np.asarray(expected))


def test_eval_command_prints_the_scores(capsys):
    assert main(["eval", "--prompts", "2", "--seeds", "3", "--backend", "onnxruntime", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["images"] == 2 and scores["backend"] == "onnxruntime" and 0 <= scores["overall"] <= 1
    assert {"shape", "colour", "background"} <= scores.keys()
    assert main(["eval", "--prompts", "101"]) == 2
    assert "--prompts must be between 1 and 100" in capsys.readouterr().err
