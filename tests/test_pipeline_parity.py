"""End to end: sdrt on every backend vs diffusers' StableDiffusionPipeline on the same weights."""
import numpy as np
import pytest

import sdrt
from sdrt.runtime.backends import BACKENDS
from sdrt.runtime.noise import gaussian_noise

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

DIFFUSERS_SCHEDULERS = {"euler": "EulerDiscreteScheduler", "ddim": "DDIMScheduler",
                        "dpmpp_2m": "DPMSolverMultistepScheduler"}
PROMPT, NEGATIVE = "a red circle on a blue background", "blurry"


@pytest.fixture(scope="module")
def diffusers_pipe(tiny_checkpoint):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_checkpoint, safety_checker=None,
                                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_images(pipe, sampler, latents, steps=6, guidance=7.5):
    pipe.scheduler = getattr(diffusers, DIFFUSERS_SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    with torch.no_grad():
        return pipe(PROMPT, negative_prompt=NEGATIVE, latents=torch.from_numpy(latents), num_inference_steps=steps,
                    guidance_scale=guidance, output_type="np").images


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("sampler", list(DIFFUSERS_SCHEDULERS))
def test_images_match_diffusers(tiny_artifact, diffusers_pipe, backend, sampler):
    if backend not in sdrt.available_backends():
        pytest.skip(f"{backend} is not installed")
    pipe = sdrt.load(tiny_artifact, backend=backend)
    latents = gaussian_noise(3, (1, 4, 32, 32))
    ours = pipe(PROMPT, NEGATIVE, latents=latents, num_inference_steps=6, guidance_scale=7.5, scheduler=sampler,
                output_type="np").images
    theirs = reference_images(diffusers_pipe, sampler, latents)
    assert ours.shape == theirs.shape == (1, 64, 64, 3)
    assert np.abs(ours - theirs).mean() <= 1 / 255
    # An image that is flat grey would match trivially; the random model's is not.
    assert theirs.std() > 0.01


def test_guidance_at_most_one_skips_the_unconditional_branch(tiny_artifact, diffusers_pipe):
    pipe = sdrt.load(tiny_artifact)
    latents = gaussian_noise(4, (1, 4, 32, 32))
    calls = []
    session = pipe.sessions["denoiser"]

    class Counting:
        def run(self, feeds):
            calls.append(feeds["sample"].shape[0])
            return session.run(feeds)

    pipe.sessions["denoiser"] = Counting()
    ours = pipe(PROMPT, latents=latents, num_inference_steps=4, guidance_scale=1.0, scheduler="euler",
                output_type="np").images
    assert set(calls) == {1}
    theirs = reference_images(diffusers_pipe, "euler", latents, steps=4, guidance=1.0)
    assert np.abs(ours - theirs).mean() <= 1 / 255


@pytest.mark.parametrize("sampler", sdrt.SAMPLERS)
def test_every_sampler_runs_and_is_deterministic(tiny_artifact, sampler):
    pipe = sdrt.load(tiny_artifact)
    first = pipe(PROMPT, num_inference_steps=4, seed=11, scheduler=sampler, output_type="np").images
    second = pipe(PROMPT, num_inference_steps=4, seed=11, scheduler=sampler, output_type="np").images
    assert np.isfinite(first).all() and first.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(first, second)


def test_same_seed_same_latents_on_every_backend(tiny_artifact, backends):
    results = [sdrt.load(tiny_artifact, backend=b)(PROMPT, num_inference_steps=3, seed=5, scheduler="euler_a",
                                                    output_type="np").images for b in backends]
    for other in results[1:]:
        assert np.abs(other - results[0]).mean() <= 1 / 255


def test_batch_of_prompts_with_several_images_each(tiny_artifact):
    pipe = sdrt.load(tiny_artifact)
    steps = []
    result = pipe(["a red circle", "a blue square"], num_images_per_prompt=2, num_inference_steps=3, seed=2,
                  callback=lambda i, t, x: steps.append((i, t, x.shape)))
    assert len(result.images) == 4 and result.images[0].size == (64, 64)
    # The default sampler is the checkpoint's PNDM, whose PLMS start takes one extra UNet call.
    assert result.plan.sampler == "pndm" and len(result.plan.steps) == 4
    assert [s[0] for s in steps] == [0, 1, 2, 3] and steps[0][2] == (4, 4, 32, 32)
    assert [s[1] for s in steps] == [p.timestep for p in result.plan.steps]
    assert len(result.timings["steps"]) == 4
    assert {"text_encoder", "vae_decoder", "total"} <= set(result.timings)
    latent = pipe("a red circle", num_inference_steps=2, seed=2, output_type="latent").images
    assert latent.shape == (1, 4, 32, 32)
