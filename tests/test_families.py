"""The model families (SD 2.x, SDXL base and refiner, Turbo) against diffusers' own pipelines on the
same random weights and latents: tiny configs unlike those of diffusers' tests (three UNet levels,
heads per level, encoders of different widths), non-square sizes so that a swapped height and
width (in the latents or in SDXL's time ids) fails."""
import types

import numpy as np
import pytest

import sdrt
from sdrt.runtime.errors import RequestError
from sdrt.runtime.noise import gaussian_noise
from test_pipeline_parity import count_denoiser_batches

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.slow

SCHEDULERS = {"euler": "EulerDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}
HEIGHT, WIDTH = 48, 64  # the tiny VAE's f=2: latents 24x32
PROMPT, NEGATIVE = "a lighthouse at dusk", "blurry"


def reference(cls, checkpoint, sampler=None):
    pipe = cls.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    if sampler is not None:
        pipe.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    text_encoder = getattr(pipe, "text_encoder", None)
    if text_encoder is not None and not hasattr(text_encoder, "text_model"):
        # diffusers' SD pipeline reads text_encoder.text_model.final_layer_norm for clip_skip; transformers 5's
        # CLIPTextModel holds final_layer_norm itself
        text_encoder.text_model = types.SimpleNamespace(final_layer_norm=text_encoder.final_layer_norm)
    return pipe


def run_reference(pipe, latents, **options):
    with torch.no_grad():
        return pipe(latents=torch.from_numpy(latents), output_type="np", **options).images


def close(ours, theirs):
    assert ours.shape == theirs.shape
    assert theirs.std() > 0.01  # (a flat image would match trivially)
    return float(np.abs(ours - theirs).mean())


def load(artifact, backend):
    if backend not in sdrt.available_backends():
        pytest.skip(f"{backend} is not installed")
    return sdrt.load(artifact, backend=backend)


BACKENDS = ["onnxruntime", "openvino"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_sd2_matches_diffusers(tiny_sd2_checkpoint, tiny_sd2_artifact, backend, sampler):
    pipe = load(tiny_sd2_artifact, backend)
    assert pipe.artifact.family == "sd2" and pipe.artifact.pipeline["prediction_type"] == "v_prediction"
    latents = gaussian_noise(1, (1, 4, HEIGHT // 2, WIDTH // 2))
    ours = pipe(PROMPT, NEGATIVE, latents=latents, num_inference_steps=5, guidance_scale=6.0, height=HEIGHT,
                width=WIDTH, scheduler=sampler, output_type="np").images
    theirs = run_reference(reference(diffusers.StableDiffusionPipeline, tiny_sd2_checkpoint, sampler), latents,
                           prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=5, guidance_scale=6.0,
                           height=HEIGHT, width=WIDTH)
    assert close(ours, theirs) <= 1 / 255


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_clip_skip_matches_diffusers(family, tiny_sd2_checkpoint, tiny_sd2_artifact, tiny_sdxl_checkpoint,
                                     tiny_sdxl_artifact):
    # Without guidance: diffusers skips layers for the positive prompt only, sdrt for the negative one
    # too (as the web UIs and ComfyUI do), so the two agree where there is no negative half.
    checkpoint, artifact, cls = {
        "sd2": (tiny_sd2_checkpoint, tiny_sd2_artifact, diffusers.StableDiffusionPipeline),
        "sdxl": (tiny_sdxl_checkpoint, tiny_sdxl_artifact, diffusers.StableDiffusionXLPipeline)}[family]
    pipe = sdrt.load(artifact)
    theirs_pipe = reference(cls, checkpoint, "euler")
    latents = gaussian_noise(2, (1, 4, HEIGHT // 2, WIDTH // 2))
    images = {}
    for skip in (None, 1, pipe.max_clip_skip):
        ours = pipe(PROMPT, latents=latents, num_inference_steps=4, guidance_scale=1.0, height=HEIGHT, width=WIDTH,
                    scheduler="euler", clip_skip=skip, output_type="np").images
        theirs = run_reference(theirs_pipe, latents, prompt=PROMPT, num_inference_steps=4, guidance_scale=1.0,
                               height=HEIGHT, width=WIDTH, clip_skip=skip)
        assert close(ours, theirs) <= 1 / 255
        images[skip] = ours
    assert np.abs(images[None] - images[1]).max() > 0.02  # the layer read changes the image
    with pytest.raises(RequestError, match="clip_skip must be an integer in"):
        pipe.request(PROMPT, clip_skip=pipe.max_clip_skip + 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_sdxl_matches_diffusers(tiny_sdxl_checkpoint, tiny_sdxl_artifact, backend, sampler):
    pipe = load(tiny_sdxl_artifact, backend)
    theirs_pipe = reference(diffusers.StableDiffusionXLPipeline, tiny_sdxl_checkpoint, sampler)
    latents = gaussian_noise(3, (1, 4, HEIGHT // 2, WIDTH // 2))
    common = dict(num_inference_steps=5, guidance_scale=5.0, height=HEIGHT, width=WIDTH)
    # no negative prompt: zero embeddings (force_zeros_for_empty_prompt); then both prompts and both negatives
    for options in ({}, dict(negative_prompt=NEGATIVE, prompt_2="an oil painting", negative_prompt_2="grainy")):
        ours = pipe(PROMPT, latents=latents, scheduler=sampler, output_type="np", **common, **options).images
        theirs = run_reference(theirs_pipe, latents, prompt=PROMPT, **common, **options)
        assert close(ours, theirs) <= 1 / 255, options


def test_sdxl_size_conditions_match_diffusers_and_matter(tiny_sdxl_checkpoint, tiny_sdxl_artifact):
    pipe = sdrt.load(tiny_sdxl_artifact)
    theirs_pipe = reference(diffusers.StableDiffusionXLPipeline, tiny_sdxl_checkpoint, "euler")
    latents = gaussian_noise(4, (1, 4, HEIGHT // 2, WIDTH // 2))
    common = dict(num_inference_steps=4, guidance_scale=5.0, height=HEIGHT, width=WIDTH, negative_prompt=NEGATIVE)
    conditions = dict(original_size=(512, 768), crops_coords_top_left=(16, 8), target_size=(384, 640),
                      negative_original_size=(256, 256), negative_target_size=(320, 448))
    ours = pipe(PROMPT, latents=latents, scheduler="euler", output_type="np", **common, **conditions).images
    theirs = run_reference(theirs_pipe, latents, prompt=PROMPT, **common, **conditions)
    assert close(ours, theirs) <= 1 / 255
    # the defaults are (height, width): the same sizes swapped give another image
    default = pipe(PROMPT, latents=latents, scheduler="euler", output_type="np", **common).images
    swapped = pipe(PROMPT, latents=latents, scheduler="euler", output_type="np", original_size=(WIDTH, HEIGHT),
                   target_size=(WIDTH, HEIGHT), **common).images
    theirs_default = run_reference(theirs_pipe, latents, prompt=PROMPT, **common)
    error = close(default, theirs_default)
    assert error <= 1 / 255
    # a swapped height and width would fail the parity above many times over (the tiny UNet embeds the time
    # ids in 8 features only, so the images differ little in absolute terms)
    assert close(swapped, theirs_default) > max(20 * error, 1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_refiner_hand_off_matches_diffusers(tiny_sdxl_checkpoint, tiny_sdxl_artifact, tiny_sdxl_refiner_checkpoint,
                                            tiny_sdxl_refiner_artifact, backend, sampler):
    base, refiner = load(tiny_sdxl_artifact, backend), load(tiny_sdxl_refiner_artifact, backend)
    their_base = reference(diffusers.StableDiffusionXLPipeline, tiny_sdxl_checkpoint, sampler)
    their_refiner = reference(diffusers.StableDiffusionXLImg2ImgPipeline, tiny_sdxl_refiner_checkpoint, sampler)
    latents = gaussian_noise(5, (1, 4, HEIGHT // 2, WIDTH // 2))
    common = dict(negative_prompt=NEGATIVE, num_inference_steps=10, guidance_scale=5.0)
    middle = base(PROMPT, latents=latents, height=HEIGHT, width=WIDTH, scheduler=sampler, denoising_end=0.7,
                  output_type="latent", **common)
    assert len(middle.plan.steps) == 7
    ours = refiner(PROMPT, image=middle.images, scheduler=sampler, denoising_start=0.7, output_type="np", **common)
    assert len(ours.plan.steps) == 3
    with torch.no_grad():
        their_middle = their_base(PROMPT, latents=torch.from_numpy(latents), height=HEIGHT, width=WIDTH,
                                  denoising_end=0.7, output_type="latent", **common).images
        theirs = their_refiner(PROMPT, image=their_middle, denoising_start=0.7, output_type="np", **common).images
    assert np.abs(middle.images - their_middle.numpy()).max() < 1e-3
    assert close(ours.images, theirs) <= 1 / 255


def test_turbo_one_step_without_guidance_matches_diffusers(tiny_sd_turbo_checkpoint, tiny_sd_turbo_artifact):
    pipe = sdrt.load(tiny_sd_turbo_artifact)
    assert pipe.default_sampler == "euler"
    latents = gaussian_noise(6, (1, 4, HEIGHT // 2, WIDTH // 2))
    theirs_pipe = reference(diffusers.StableDiffusionPipeline, tiny_sd_turbo_checkpoint)
    for steps in (1, 2):
        result = pipe(PROMPT, latents=latents, num_inference_steps=steps, guidance_scale=0.0, height=HEIGHT,
                      width=WIDTH, output_type="np")
        assert [step.timestep for step in result.plan.steps][0] == 999  # trailing spacing starts at the last
        theirs = run_reference(theirs_pipe, latents, prompt=PROMPT, num_inference_steps=steps, guidance_scale=0.0,
                               height=HEIGHT, width=WIDTH)
        assert close(result.images, theirs) <= 1 / 255


def test_family_arguments_are_refused_where_they_do_not_apply(tiny_artifact, tiny_sdxl_artifact, tmp_path):
    sd1 = sdrt.load(tiny_artifact)
    with pytest.raises(RequestError, match="second text encoder"):
        sd1.request(PROMPT, prompt_2="x")
    with pytest.raises(RequestError, match="size conditions"):
        sd1.request(PROMPT, original_size=(512, 512))
    with pytest.raises(RequestError, match="denoising_start continues from an image"):
        sd1.request(PROMPT, denoising_start=0.8)
    sdxl = sdrt.load(tiny_sdxl_artifact)
    with pytest.raises(RequestError, match="denoising_end must be a fraction"):
        sdxl.request(PROMPT, denoising_end=1.0)
    with pytest.raises(RequestError, match="target_size must be a pair of integer sizes"):
        sdxl.request(PROMPT, target_size=(0, 512))
    with pytest.raises(RequestError, match="holds latents of a 64x48 image"):
        sdxl.request(PROMPT, image=np.zeros((1, 4, 24, 32), np.float32), height=64)
    with pytest.raises(RequestError, match="taken as latents"):
        sdxl.request(PROMPT, image=np.zeros((1, 3, 24, 32), np.float32))
    # a manifest naming a time-id field this sdrt does not know is refused at load, not misread
    import json
    import shutil

    from sdrt.runtime.errors import ArtifactError

    copy = tmp_path / "newer"
    shutil.copytree(tiny_sdxl_artifact, copy)
    manifest = json.loads((copy / "sdrt.json").read_text())
    manifest["pipeline"]["time_ids"].append("camera_angle")
    (copy / "sdrt.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"time ids this sdrt does not know \(camera_angle\)"):
        sdrt.load(copy)


def test_every_network_matches_pytorch_at_export(tiny_sdxl_artifact, tiny_sdxl_refiner_artifact, tiny_sd2_artifact):
    # the exporter runs each ONNX network on ONNX Runtime against its PyTorch module on the same inputs
    for artifact in (tiny_sdxl_artifact, tiny_sdxl_refiner_artifact, tiny_sd2_artifact):
        components = sdrt.open_artifact(artifact).manifest["components"]
        for name, entry in components.items():
            assert entry["max_abs_diff_vs_torch"] <= 1e-4, (artifact, name)
    names = sdrt.open_artifact(tiny_sdxl_artifact).manifest["components"]
    assert {"text_encoder", "text_encoder_2", "unet"} <= set(names)
    assert [t["name"] for t in names["unet"]["inputs"]][3:] == ["text_embeds", "time_ids"]


def test_generate_with_a_refiner_is_the_api_hand_off(tiny_sdxl_artifact, tiny_sdxl_refiner_artifact, tmp_path):
    from PIL import Image

    from sdrt.cli import main

    out = tmp_path / "l.png"
    assert main(["generate", PROMPT, "--artifact", str(tiny_sdxl_artifact), "--high-noise-frac", "0.75",
                 "--refiner", str(tiny_sdxl_refiner_artifact), "--size", f"{WIDTH}x{HEIGHT}", "--steps", "8",
                 "--seed", "3", "--backend", "onnxruntime", "--prompt-2", "an oil painting", "-o", str(out)]) == 0
    base = sdrt.load(tiny_sdxl_artifact, backend="onnxruntime")
    refiner = sdrt.load(tiny_sdxl_refiner_artifact, backend="onnxruntime")
    common = dict(num_inference_steps=8, guidance_scale=7.5, seed=3)
    latents = base(PROMPT, prompt_2="an oil painting", height=HEIGHT, width=WIDTH, denoising_end=0.75,
                   output_type="latent", **common).images
    expected = refiner(PROMPT, prompt_2="an oil painting", image=latents, denoising_start=0.75, **common).images[0]
    written = Image.open(out)
    assert written.size == (WIDTH, HEIGHT)
    np.testing.assert_array_equal(np.asarray(written), np.asarray(expected))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lcm_with_a_guidance_embedding_matches_diffusers(tiny_lcm_checkpoint, tiny_lcm_artifact, backend):
    pipe = load(tiny_lcm_artifact, backend)
    assert pipe.default_sampler == "lcm" and pipe.embedded_guidance
    theirs_pipe = reference(diffusers.LatentConsistencyModelPipeline, tiny_lcm_checkpoint)
    latents = gaussian_noise(7, (1, 4, HEIGHT // 2, WIDTH // 2))
    calls = count_denoiser_batches(pipe)
    images, errors = {}, []
    # One step: LCM's later steps add fresh noise, drawn by diffusers from torch's generator and by sdrt from its
    # own (the lcm plan's steps, noise included, are checked against LCMScheduler in tests/test_samplers.py).
    for guidance in (8.5, 2.0):
        ours = pipe(PROMPT, latents=latents, num_inference_steps=1, guidance_scale=guidance, height=HEIGHT,
                    width=WIDTH, output_type="np")
        theirs = run_reference(theirs_pipe, latents, prompt=PROMPT, num_inference_steps=1, guidance_scale=guidance,
                               height=HEIGHT, width=WIDTH)
        images[guidance] = ours.images
        errors.append(close(ours.images, theirs))
        assert errors[-1] <= 1 / 255
    four = pipe(PROMPT, num_inference_steps=4, guidance_scale=8.5, height=HEIGHT, width=WIDTH, seed=7)
    assert [step.timestep for step in four.plan.steps] == [999, 759, 499, 259]  # diffusers' LCMScheduler's
    assert set(calls) == {1}  # no unconditional half
    # the embedded guidance reaches the UNet: its effect is many times the parity error
    assert np.abs(images[8.5] - images[2.0]).mean() > 20 * max(errors)
    with pytest.raises(RequestError, match="runs no unconditional half"):
        pipe.request(PROMPT, negative_prompt="blurry")


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_autoencoder_matches_diffusers(tiny_taesd_artifact, tiny_checkpoint, backend, monkeypatch):
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img_module
    from PIL import Image

    from sdrt.runtime.noise import INITIAL_LATENTS_STREAM

    artifact, vae_folder = tiny_taesd_artifact
    pipe = sdrt.load(artifact, backend=backend, vae="taesd")
    assert pipe._components["vae_decoder"].spec.name == "taesd_decoder"
    tiny = diffusers.AutoencoderTiny.from_pretrained(vae_folder)
    their_pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_checkpoint, vae=tiny, safety_checker=None,
                                                                   requires_safety_checker=False)
    their_pipe.set_progress_bar_config(disable=True)
    their_pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(their_pipe.scheduler.config)
    latents = gaussian_noise(8, (1, 4, HEIGHT // 2, WIDTH // 2))
    common = dict(negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=6.0)
    ours = pipe(PROMPT, latents=latents, height=HEIGHT, width=WIDTH, scheduler="euler", output_type="np", **common)
    theirs = run_reference(their_pipe, latents, prompt=PROMPT, height=HEIGHT, width=WIDTH, **common)
    assert close(ours.images, theirs) <= 1 / 255
    # the checkpoint's own VAE gives another image from the same latents
    own = sdrt.load(artifact, backend=backend)(PROMPT, latents=latents, height=HEIGHT, width=WIDTH, scheduler="euler",
                                               output_type="np", **common).images
    assert np.abs(own - ours.images).mean() > 5 / 255
    # image-to-image through TAESD's encoder (deterministic: no VAE sample), diffusers' added noise replaced by
    # sdrt's stream for the seed
    picture = Image.fromarray((np.random.default_rng(0).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8))
    monkeypatch.setattr(img2img_module, "randn_tensor", lambda shape, **kwargs: torch.from_numpy(
        gaussian_noise(9, tuple(shape), INITIAL_LATENTS_STREAM)))
    their_img2img = diffusers.StableDiffusionImg2ImgPipeline(**their_pipe.components)
    their_img2img.set_progress_bar_config(disable=True)
    ours = pipe(PROMPT, image=picture, strength=0.6, seed=9, scheduler="euler", output_type="np", **common).images
    with torch.no_grad():
        theirs = their_img2img(PROMPT, image=picture, strength=0.6, output_type="np", **common).images
    assert close(ours, theirs) <= 1 / 255


def test_an_unknown_vae_name_lists_the_ones_there(tiny_taesd_artifact, capsys):
    from sdrt.cli import main
    from sdrt.runtime.errors import ArtifactError

    with pytest.raises(ArtifactError, match=r"no VAE named 'taesdxl' \(it has: taesd\)"):
        sdrt.load(tiny_taesd_artifact[0], vae="taesdxl")
    assert main(["info", str(tiny_taesd_artifact[0])]) == 0
    assert "taesd_decoder  [vae_decoder, the VAE 'taesd' (--vae taesd)]" in capsys.readouterr().out


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiled_decoding_matches_diffusers_enable_tiling(tiny_checkpoint, tiny_artifact, backend):
    # the tiny VAE's tiles: 64 pixels (32 latent pixels), overlapping by a quarter; a 96x176 image takes 2 x 4
    pipe = load(tiny_artifact, backend)
    pipe.vae_tiling = True
    their_pipe = reference(diffusers.StableDiffusionPipeline, tiny_checkpoint, "euler")
    their_pipe.vae.enable_tiling()
    height, width = 96, 176
    latents = gaussian_noise(10, (1, 4, height // 2, width // 2))
    common = dict(negative_prompt=NEGATIVE, num_inference_steps=3, guidance_scale=6.0, height=height, width=width)
    ours = pipe(PROMPT, latents=latents, scheduler="euler", output_type="np", **common).images
    theirs = run_reference(their_pipe, latents, prompt=PROMPT, **common)
    assert close(ours, theirs) <= 1 / 255
    pipe.vae_tiling = False
    whole = pipe(PROMPT, latents=latents, scheduler="euler", output_type="np", **common).images
    assert np.abs(whole - ours).mean() > 1 / 255  # the tiles do change the image (diffusers' seams included)
    # tiles of a chosen size: diffusers' tile_sample_min_size
    pipe = sdrt.load(tiny_artifact, backend=backend, vae_tiling=40)
    their_pipe.vae.tile_sample_min_size, their_pipe.vae.tile_latent_min_size = 40, 20
    ours = pipe(PROMPT, latents=latents, scheduler="euler", output_type="np", **common).images
    assert close(ours, run_reference(their_pipe, latents, prompt=PROMPT, **common)) <= 1 / 255
    with pytest.raises(RequestError, match="a tile size in pixels, a multiple of 2 "):
        sdrt.load(tiny_artifact, vae_tiling=41)


def test_generate_passes_the_size_conditions(tiny_sdxl_artifact, tmp_path, capsys):
    from PIL import Image

    from sdrt.cli import main

    out = tmp_path / "c.png"
    assert main(["generate", PROMPT, "--artifact", str(tiny_sdxl_artifact), "--size", f"{WIDTH}x{HEIGHT}",
                 "--steps", "3", "--seed", "5", "--backend", "onnxruntime", "--original-size", "96x80",
                 "--crops-coords-top-left", "8,16", "--negative-target-size", "32x40", "-o", str(out)]) == 0
    pipe = sdrt.load(tiny_sdxl_artifact, backend="onnxruntime")
    expected = pipe(PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=3, guidance_scale=7.5, seed=5,
                    original_size=(80, 96), crops_coords_top_left=(8, 16), negative_target_size=(40, 32)).images[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(expected))
    assert main(["generate", PROMPT, "--artifact", str(tiny_sdxl_artifact), "--crops-coords-top-left", "8x16",
                 "-o", str(out)]) == 2
    assert "TOP,LEFT" in capsys.readouterr().err
