"""Inpainting against diffusers' StableDiffusionInpaintPipeline on the same tiny random weights:
an ordinary UNet (the known region put back after every step) and an inpainting UNet (9 input
channels); and the input's pixels kept outside the mask."""
import numpy as np
import pytest
from PIL import Image

import sdrt
from sdrt.runtime.backends import BACKENDS
from sdrt.runtime.errors import RequestError
from sdrt.runtime.noise import INITIAL_LATENTS_STREAM, VAE_SAMPLE_STREAM, gaussian_noise

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SCHEDULERS = {"euler": "EulerDiscreteScheduler", "ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}
PROMPT, NEGATIVE = "a red circle on a blue background", "blurry"


def input_image(size: int = 64) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def square_mask(size: int = 64, top: int = 16, left: int = 24, side: int = 24) -> Image.Image:
    mask = np.zeros((size, size), np.uint8)
    mask[top:top + side, left:left + side] = 255
    return Image.fromarray(mask)


def reference(checkpoint, monkeypatch, sampler, seed, strength, steps=6):
    """diffusers' inpainting, its random draws (VAE samples, the initial noise) replaced by
    sdrt's portable streams for `seed`."""
    from diffusers.models.autoencoders import vae
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as inpaint

    def stream(number):
        return lambda shape, **kwargs: torch.from_numpy(gaussian_noise(seed, tuple(shape), number))

    monkeypatch.setattr(vae, "randn_tensor", stream(VAE_SAMPLE_STREAM))
    monkeypatch.setattr(inpaint, "randn_tensor", stream(INITIAL_LATENTS_STREAM))
    pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(checkpoint, safety_checker=None,
                                                                    requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    with torch.no_grad():
        return pipe(PROMPT, image=input_image(), mask_image=square_mask(), strength=strength, negative_prompt=NEGATIVE,
                    num_inference_steps=steps, guidance_scale=7.5, height=64, width=64, output_type="np").images


def ours(artifact, backend, sampler, seed, strength, steps=6, **options):
    pipe = sdrt.load(artifact, backend=backend)
    return pipe(PROMPT, NEGATIVE, image=input_image(), mask_image=square_mask(), strength=strength,
                num_inference_steps=steps, seed=seed, scheduler=sampler, output_type="np", **options).images


def check_match(mine, theirs):
    assert mine.shape == theirs.shape == (1, 64, 64, 3)
    assert np.abs(mine - theirs).mean() <= 1 / 255
    assert theirs.std() > 0.01


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_ordinary_unet_matches_diffusers(tiny_artifact, tiny_checkpoint, monkeypatch, backend, sampler):
    if backend not in sdrt.available_backends():
        pytest.skip(f"{backend} is not installed")
    for strength in (1.0, 0.7):  # full strength starts from pure noise, as diffusers does
        check_match(ours(tiny_artifact, backend, sampler, 4, strength, keep_unmasked=False),
                    reference(tiny_checkpoint, monkeypatch, sampler, 4, strength))


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_inpainting_unet_matches_diffusers(tiny_inpainting_artifact, tiny_inpainting_checkpoint, monkeypatch,
                                           backend, sampler):
    if backend not in sdrt.available_backends():
        pytest.skip(f"{backend} is not installed")
    for strength in (1.0, 0.7):
        check_match(ours(tiny_inpainting_artifact, backend, sampler, 5, strength, keep_unmasked=False),
                    reference(tiny_inpainting_checkpoint, monkeypatch, sampler, 5, strength))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["ordinary", "inpainting"])
def test_pixels_outside_the_mask_stay_as_they_were(tiny_artifact, tiny_inpainting_artifact, which):
    artifact = tiny_artifact if which == "ordinary" else tiny_inpainting_artifact
    pipe = sdrt.load(artifact)
    source = np.asarray(input_image())
    inside = np.asarray(square_mask()) > 0
    result = np.asarray(pipe(PROMPT, image=input_image(), mask_image=square_mask(), num_inference_steps=4,
                             seed=2).images[0])
    np.testing.assert_array_equal(result[~inside], source[~inside])
    assert np.abs(result[inside].astype(int) - source[inside]).mean() > 10  # the square was repainted
    # Without keeping them, the VAE's round trip changes them; a soft seam reaches past the mask
    # by a few sigmas and no further.
    loose = np.asarray(pipe(PROMPT, image=input_image(), mask_image=square_mask(), num_inference_steps=4, seed=2,
                            keep_unmasked=False).images[0])
    assert np.abs(loose[~inside].astype(int) - source[~inside]).mean() > 1
    soft = np.asarray(pipe(PROMPT, image=input_image(), mask_image=square_mask(), num_inference_steps=4, seed=2,
                           mask_blur=2.0).images[0])
    far = np.ones_like(inside)
    far[16 - 8:40 + 8, 24 - 8:48 + 8] = False  # more than 4 sigma from the square
    np.testing.assert_array_equal(soft[far], source[far])
    ring = ~far & ~inside
    assert (soft[ring] != source[ring]).any()


@pytest.mark.slow
def test_inpainting_requests_are_checked(tiny_artifact, tiny_inpainting_artifact):
    pipe = sdrt.load(tiny_artifact)
    with pytest.raises(RequestError, match="mask_image needs the image"):
        pipe(PROMPT, mask_image=square_mask(), num_inference_steps=2)
    with pytest.raises(RequestError, match="mask_blur must be"):
        pipe(PROMPT, image=input_image(), mask_image=square_mask(), mask_blur=-1, num_inference_steps=2)
    with pytest.raises(RequestError, match="HW array"):
        pipe(PROMPT, image=input_image(), mask_image=np.zeros((64, 64, 3)), num_inference_steps=2)
    inpainting = sdrt.load(tiny_inpainting_artifact)
    with pytest.raises(RequestError, match="inpainting UNet: pass image= and mask_image="):
        inpainting(PROMPT, num_inference_steps=2)
    with pytest.raises(RequestError, match="inpainting UNet"):
        inpainting(PROMPT, image=input_image(), num_inference_steps=2)
    # A mask as a boolean array works like the same mask as an image.
    from_array = inpainting(PROMPT, image=input_image(), mask_image=np.asarray(square_mask()) > 0,
                            num_inference_steps=2, seed=1, output_type="np").images
    from_image = inpainting(PROMPT, image=input_image(), mask_image=square_mask(), num_inference_steps=2, seed=1,
                            output_type="np").images
    np.testing.assert_array_equal(from_array, from_image)


def test_outpainting_extends_the_canvas_and_keeps_the_image(tiny_artifact):
    from sdrt.runtime.image_input import outpaint_canvas

    pipe = sdrt.load(tiny_artifact)
    source = np.asarray(input_image())
    result = pipe.outpaint(PROMPT, input_image(), right=32, top=14, num_inference_steps=4, seed=3, output_type="np")
    # top 14 grows to 16, the next multiple of the size step (4 here) over 64 + 14
    image = (result.images[0] * 255).round().astype(np.uint8)
    assert image.shape == (64 + 16, 64 + 32, 3)
    np.testing.assert_array_equal(image[16:, :64], source)
    assert image[:16].std() > 1 and image[16:, 64:].std() > 1  # the new strips are not flat
    canvas, mask = outpaint_canvas(input_image(), left=8, multiple=8)
    assert canvas.size == mask.size == (72, 64)
    assert (np.asarray(mask)[:, :8] == 255).all() and (np.asarray(mask)[:, 8:] == 0).all()
    np.testing.assert_array_equal(np.asarray(canvas)[:, :8], np.repeat(source[:, :1], 8, axis=1))
    with pytest.raises(RequestError, match="at least one side"):
        outpaint_canvas(input_image())
    with pytest.raises(RequestError, match="outpaint left must be"):
        outpaint_canvas(input_image(), left=-8)


def test_masks_that_do_not_fit_or_are_not_masks_are_refused(tiny_artifact):
    pipe = sdrt.load(tiny_artifact)
    with pytest.raises(RequestError, match="mask_image is 32x32 .* and the image 64x64"):
        pipe(PROMPT, image=input_image(), mask_image=square_mask(32, 4, 4, 8), num_inference_steps=2)
    with pytest.raises(RequestError, match="mask_image has colour"):
        pipe(PROMPT, image=input_image(), mask_image=input_image(), num_inference_steps=2)
    with pytest.raises(RequestError, match="does not look like a mask: 100% of its pixels are mid-grey"):
        pipe(PROMPT, image=input_image(), mask_image=Image.new("L", (64, 64), 128), num_inference_steps=2)
    # A soft-edged mask (a brush's antialiasing) and a grey RGB mask are masks.
    from PIL import ImageFilter

    soft = square_mask().filter(ImageFilter.GaussianBlur(1.5))
    pipe(PROMPT, image=input_image(), mask_image=soft, num_inference_steps=1)
    pipe(PROMPT, image=input_image(), mask_image=square_mask().convert("RGB"), num_inference_steps=1)
