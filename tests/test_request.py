"""One validated request, its plan compiled once, run through named stages."""
import numpy as np
import pytest
from PIL import Image

import sdrt
from sdrt.cli import main
from sdrt.runtime import samplers
from sdrt.runtime.errors import RequestError


@pytest.fixture(scope="module")
def pipe(tiny_artifact):
    return sdrt.load(tiny_artifact, backend="onnxruntime")


@pytest.fixture
def compiles(monkeypatch):
    """How many times a sampler plan is compiled."""
    calls = []
    compile_once = samplers._compile

    def counted(*args, **kwargs):
        calls.append(args[:2])
        return compile_once(*args, **kwargs)

    monkeypatch.setattr(samplers, "_compile", counted)
    return calls


IMAGE = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
MASK = np.zeros((64, 64), np.uint8)
MASK[16:48, 8:40] = 255


@pytest.mark.parametrize("task,options", [
    ("txt2img", {}),
    ("img2img", {"image": IMAGE, "strength": 0.5}),
    ("inpaint", {"image": IMAGE, "mask_image": Image.fromarray(MASK)}),  # strength 1: from pure noise
    ("inpaint", {"image": IMAGE, "mask_image": Image.fromarray(MASK), "strength": 0.6}),
])
def test_each_task_compiles_its_plan_once(pipe, compiles, task, options):
    request = pipe.request("a red circle", num_inference_steps=4, seed=1, **options)
    assert request.task == task and len(compiles) == 1
    pipe.run(request)
    pipe("a red circle", num_inference_steps=4, seed=1, **options)
    assert len(compiles) == 2


def test_inpainting_at_full_strength_starts_from_text_to_images_noise(pipe):
    """diffusers' is_strength_max: the latents are pure noise times the text-to-image sigma, and
    the known region is noised with every step's add_noise weights."""
    for sampler in ("euler", "dpmpp_2m", "ddim"):
        text = pipe.plan(6, sampler)
        inpaint = pipe.request("x", image=IMAGE, mask_image=MASK, num_inference_steps=6, scheduler=sampler).plan
        image = pipe.plan(6, sampler, strength=1.0)
        assert inpaint.init_image_weight == 0.0 and image.init_image_weight > 0.0
        assert inpaint.init_noise_sigma == text.init_noise_sigma
        assert inpaint.steps == image.steps == text.steps and inpaint.noising == image.noising


def test_a_request_is_checked_before_any_network_runs(tiny_artifact, monkeypatch):
    pipe = sdrt.load(tiny_artifact, backend="onnxruntime")

    class Refuse:
        def run(self, feeds):
            raise AssertionError("a network ran for a request that is refused")

    pipe.sessions = {role: Refuse() for role in pipe.sessions}
    with pytest.raises(RequestError, match=r"latents must have shape \(1, 4, 32, 32\) for this request"):
        pipe("x", latents=np.zeros((1, 4, 16, 16), np.float32))
    with pytest.raises(RequestError, match="watermark needs images of at least 256x256"):
        pipe("x", watermark=True)
    with pytest.raises(RequestError, match="seed must be an integer"):
        pipe("x", seed="1")


def test_generate_compiles_the_plan_once(tiny_artifact, tmp_path, compiles):
    assert main(["generate", "x", "--artifact", str(tiny_artifact), "--steps", "2", "-o",
                 str(tmp_path / "x.png")]) == 0
    assert len(compiles) == 1
