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


def diffusers_pipeline(cls, checkpoint):
    pipe = cls.from_pretrained(checkpoint, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def diffusers_pipe(tiny_checkpoint):
    return diffusers_pipeline(diffusers.StableDiffusionPipeline, tiny_checkpoint)


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


def count_denoiser_batches(pipe) -> list[int]:
    """The batch size of every denoiser call the pipeline makes from now on."""
    calls = []
    session = pipe.sessions["denoiser"]

    class Counting:
        def run(self, feeds):
            calls.append(feeds["sample"].shape[0])
            return session.run(feeds)

    pipe.sessions["denoiser"] = Counting()
    return calls


def test_guidance_at_most_one_skips_the_unconditional_branch(tiny_artifact, diffusers_pipe):
    pipe = sdrt.load(tiny_artifact)
    latents = gaussian_noise(4, (1, 4, 32, 32))
    calls = count_denoiser_batches(pipe)
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


def input_image(size: int = 64):
    """A smooth colour image with some structure (an encoder sees more than flat colour)."""
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def diffusers_img2img(tiny_checkpoint):
    return diffusers_pipeline(diffusers.StableDiffusionImg2ImgPipeline, tiny_checkpoint)


def img2img_reference(pipe, monkeypatch, sampler, image, seed, strength, steps=6):
    """diffusers' img2img, its two random draws (the VAE sample, the added noise) replaced by
    sdrt's portable streams for `seed`."""
    from diffusers.models.autoencoders import vae
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img

    from sdrt.runtime.noise import INITIAL_LATENTS_STREAM, VAE_SAMPLE_STREAM

    def stream(number):
        return lambda shape, **kwargs: torch.from_numpy(gaussian_noise(seed, tuple(shape), number))

    monkeypatch.setattr(vae, "randn_tensor", stream(VAE_SAMPLE_STREAM))
    monkeypatch.setattr(img2img, "randn_tensor", stream(INITIAL_LATENTS_STREAM))
    pipe.scheduler = getattr(diffusers, DIFFUSERS_SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    with torch.no_grad():
        return pipe(PROMPT, image=image, strength=strength, negative_prompt=NEGATIVE, num_inference_steps=steps,
                    guidance_scale=7.5, output_type="np").images


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("sampler", list(DIFFUSERS_SCHEDULERS))
def test_img2img_matches_diffusers(tiny_artifact, diffusers_img2img, monkeypatch, backend, sampler):
    if backend not in sdrt.available_backends():
        pytest.skip(f"{backend} is not installed")
    pipe = sdrt.load(tiny_artifact, backend=backend)
    image = input_image()
    ours = pipe(PROMPT, NEGATIVE, image=image, strength=0.6, num_inference_steps=6, seed=9, scheduler=sampler,
                output_type="np")
    theirs = img2img_reference(diffusers_img2img, monkeypatch, sampler, image, 9, 0.6)
    assert len(ours.timings["steps"]) == 3  # int(6 * 0.6)
    assert ours.images.shape == theirs.shape == (1, 64, 64, 3)
    assert np.abs(ours.images - theirs).mean() <= 1 / 255
    # The denoising changed the image: it is neither the input nor what strength 0 gives.
    unchanged = pipe(PROMPT, image=image, strength=0.0, seed=9, output_type="np").images
    assert np.abs(ours.images - unchanged).mean() > 5 / 255


def test_img2img_at_strength_zero_returns_the_image_through_the_vae(tiny_artifact):
    pipe = sdrt.load(tiny_artifact)
    image = input_image()
    calls = []
    session = pipe.sessions["denoiser"]

    class Counting:
        def run(self, feeds):
            calls.append(1)
            return session.run(feeds)

    pipe.sessions["denoiser"] = Counting()
    result = pipe(PROMPT, image=image, strength=0.0, seed=3, output_type="np")
    assert calls == [] and result.timings["steps"] == []
    # Encoding then decoding the VAE's own sample, as the random model's VAE gives it: compare
    # with the two sessions run by hand on the same pixels and the same sample noise.
    from sdrt.runtime.image_input import to_pixels
    from sdrt.runtime.noise import VAE_SAMPLE_STREAM

    parameters = pipe.sessions["vae_encoder"].run({"sample": to_pixels(image, 64, 64)})["latent_parameters"]
    mean, log_variance = np.split(parameters, 2, axis=1)
    sample = mean + np.exp(0.5 * np.clip(log_variance, -30, 20)) * gaussian_noise(3, mean.shape, VAE_SAMPLE_STREAM)
    decoded = pipe.sessions["vae_decoder"].run({"latent_sample": sample.astype(np.float32)})["sample"]
    expected = np.clip(decoded / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(result.images, expected, atol=1e-5)


def test_img2img_size_follows_the_image_and_refuses_bad_input(tiny_artifact):
    from sdrt.runtime.errors import RequestError

    pipe = sdrt.load(tiny_artifact)
    # 67x67 rounds down to the size step (4 on this model: 64x64); an explicit size resizes a PIL image.
    big = input_image(67)
    assert pipe(PROMPT, image=big, strength=0.5, num_inference_steps=2, seed=1, output_type="np").images.shape == \
        (1, 64, 64, 3)
    assert pipe(PROMPT, image=big, strength=0.5, num_inference_steps=2, seed=1, height=32, width=48,
                output_type="np").images.shape == (1, 32, 48, 3)
    # Two images per prompt share the image's latents but not the noise.
    pair = pipe(PROMPT, image=input_image(), strength=0.5, num_inference_steps=2, seed=1, num_images_per_prompt=2,
                output_type="np").images
    assert pair.shape == (2, 64, 64, 3) and np.abs(pair[0] - pair[1]).mean() > 0
    with pytest.raises(RequestError, match="strength must be a number in"):
        pipe(PROMPT, image=input_image(), strength=1.2, num_inference_steps=2)
    with pytest.raises(RequestError, match="pass a PIL image to have it resized"):
        pipe(PROMPT, image=np.zeros((64, 64, 3), np.uint8), height=32, width=32, num_inference_steps=2)
    with pytest.raises(RequestError, match="HWC array with 3"):
        pipe(PROMPT, image=np.zeros((64, 64), np.uint8), num_inference_steps=2)
    with pytest.raises(RequestError, match="values in \\[0, 1\\]"):
        pipe(PROMPT, image=np.full((64, 64, 3), 2.0, np.float32), num_inference_steps=2)


def chunked_embeddings(pipe, text, chunks):
    """The long-prompt method built on diffusers' own tokenizer and text encoder: 75-token chunks,
    each with start and end tokens and padding, encoded one by one and concatenated."""
    tokenizer = pipe.tokenizer
    ids = tokenizer(text, add_special_tokens=False).input_ids
    rows = []
    for chunk in range(chunks):
        part = ids[chunk * 75:(chunk + 1) * 75]
        row = [tokenizer.bos_token_id, *part, tokenizer.eos_token_id]
        rows.append(row + [tokenizer.pad_token_id] * (77 - len(row)))
    with torch.no_grad():
        hidden = pipe.text_encoder(torch.tensor(rows))[0]
    return hidden.reshape(1, chunks * 77, -1)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_long_prompt_matches_diffusers_with_chunked_embeddings(tiny_artifact, diffusers_pipe, backend):
    if backend not in sdrt.available_backends():
        pytest.skip(f"{backend} is not installed")
    long_prompt = ", ".join(["a red circle on a blue background"] * 14)  # 2 chunks: 112 tokens
    latents = gaussian_noise(6, (1, 4, 32, 32))
    ours = sdrt.load(tiny_artifact, backend=backend)(long_prompt, NEGATIVE, latents=latents, num_inference_steps=4,
                                                     scheduler="euler", output_type="np").images
    diffusers_pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(diffusers_pipe.scheduler.config)
    with torch.no_grad():
        theirs = diffusers_pipe(prompt_embeds=chunked_embeddings(diffusers_pipe, long_prompt, 2),
                                negative_prompt_embeds=chunked_embeddings(diffusers_pipe, NEGATIVE, 2),
                                latents=torch.from_numpy(latents), num_inference_steps=4, guidance_scale=7.5,
                                output_type="np").images
    assert np.abs(ours - theirs).mean() <= 1 / 255
    # and the second chunk matters: the truncated prompt makes another image
    short = sdrt.load(tiny_artifact, backend=backend)
    short.max_prompt_chunks = 1
    with pytest.warns(UserWarning, match="tokens were dropped"):
        truncated = short(long_prompt, NEGATIVE, latents=latents, num_inference_steps=4, scheduler="euler",
                          output_type="np").images
    assert np.abs(truncated - ours).mean() > 1 / 255
