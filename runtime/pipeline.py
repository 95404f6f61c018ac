"""Text-to-image, image-to-image and inpainting on an artifact: a validated request runs through
named stages: encode the prompt -> prepare the starting latents (by task) -> denoise with the
sampler plan -> decode -> post-process.

Keyword names follow diffusers' StableDiffusionPipeline so that its users feel at home.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import numpy as np

from ..kernels.image import to_uint8, to_unit_range
from ..kernels.sampler_step import guide
from ..models.components import DENOISER, TEXT_ENCODER, VAE_DECODER, VAE_ENCODER
from .artifact import Artifact, open_artifact
from .backends import Capabilities, DenoiserSession, Session, SessionOptions, backend_module, best_backend
from .backends.shape_profiles import default_profile
from .cache import default_engine_cache
from .conditioning import conditioning, guidance_embedding, text_encoder_uses, time_id_fields, time_id_values
from .errors import ArtifactError, RequestError
from .image_input import image_size, nearest_resize, outpaint_canvas, soft_mask, to_mask, to_pixels
from .loop import run_plan
from .memory import available_memory, estimate_request
from .noise import INITIAL_LATENTS_STREAM, VAE_SAMPLE_STREAM, gaussian_noise, step_noise_stream
from .precisions import Precision, resolve_precisions
from .request import (
    OUTPUT_TYPES,
    GenerationRequest,
    ImageInput,
    SizeConditions,
    clip_skip_value,
    guidance_copies,
    guidance_value,
    images_per_prompt_value,
    latent_image,
    latents_value,
    mask_blur_value,
    output_type_value,
    prompt_lists,
    seed_value,
    size_value,
    vae_tiling_value,
)
from .run_time_weights import RunTimeWeights
from .samplers import (
    SamplerPlan,
    compile_handoff_plan,
    compile_img2img_plan,
    compile_plan,
    default_sampler,
    end_plan_at,
)
from .vae_tiling import tile_sizes, tiled_decode
from .watermark import MIN_PIXELS as WATERMARK_MIN_PIXELS
from .watermark import embed as embed_watermark

# the model families this runtime runs (the manifest's family field)
FAMILIES = ("sd1", "sd2", "sdxl")

__all__ = ["OUTPUT_TYPES", "GenerationRequest", "GenerationResult", "StableDiffusionPipeline", "load"]

# callback(step_index, timestep, latents) after each denoising step
StepCallback = Callable[[int, float, np.ndarray], None]
# (step index, a function that fetches the latents after that step) as the loop runs
Steps = Iterator[tuple[int, Callable[[], np.ndarray]]]


@dataclass
class GenerationResult:
    images: list | np.ndarray  # PIL images, an NHWC float array in [0, 1], or latents
    seed: int
    plan: SamplerPlan
    timings: dict[str, float | list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Start:
    """Where the denoising loop starts: the latents times the plan's initial scale, the noise
    they were drawn from, and what an image task adds (an inpainting UNet's extra input
    channels, or the known region put back after every step for an ordinary UNet)."""

    latents: np.ndarray
    noise: np.ndarray
    extra_channels: np.ndarray | None = None
    after_step: Callable[[int, np.ndarray], np.ndarray] | None = None


class StableDiffusionPipeline(RunTimeWeights):
    """Text-to-image, image-to-image and inpainting on an sdrt artifact of the SD 1.x / 2.x
    families, on one backend."""

    def __init__(self, artifact: Artifact, backend: str = "onnxruntime", options: SessionOptions | None = None,
                 precision: Precision | None = None, memory_check: bool = True, vae: str | None = None,
                 vae_tiling: bool | int = False):
        options = options or SessionOptions()
        # refuse requests whose estimated activations exceed the memory available (runtime/memory.py)
        self.memory_check = memory_check
        if artifact.family not in FAMILIES:
            raise ArtifactError(f"This sdrt runs the {', '.join(FAMILIES)} families; the artifact is "
                                f"{artifact.family!r}. Upgrade sdrt to run it.")
        if vae is not None and vae not in artifact.vaes:
            have = f"it has: {', '.join(artifact.vaes)}" if artifact.vaes else "it has none besides its own"
            raise ArtifactError(f"The artifact has no VAE named {vae!r} ({have}); add one with `sdrt add-vae "
                                f"{artifact.root} PATH --name {vae}`.")
        self.vae = vae  # the VAE the images go through: None, the checkpoint's own, or one added by name
        module = backend_module(backend)
        self._capabilities: Capabilities = module.CAPABILITIES
        self._capabilities.check(backend, options)
        if options.profile is None and self._capabilities.shape_profiles:  # engines built for a range of shapes
            options = replace(options, profile=default_profile(tuple(artifact.pipeline["default_size"]),
                                                               artifact.pipeline["vae_scale_factor"]))
        self.artifact = artifact
        self.backend = backend
        self.options = options
        # component name -> the precision it runs in: a stored variant, or bf16 (fp32 files, bf16 compute)
        self.precisions = resolve_precisions(artifact, options.precision if precision is None else precision, backend,
                                             options.device)
        self._backend_module = module
        started = time.perf_counter()
        sessions = {}
        self._computes = {}  # role -> the compute precision its session was opened with
        # the text encoders go by their component names (text_encoder, text_encoder_2), the rest by role
        # the text encoders as the UNet reads them (runtime/conditioning.py), in the manifest's order
        self.text_encoders = text_encoder_uses(artifact)
        keys = {use.component: use.component for use in self.text_encoders}
        keys.update(denoiser=artifact.component_for_role("denoiser").spec.name,
                    vae_decoder=artifact.component_for_role("vae_decoder", vae).spec.name)
        for role, name in keys.items():
            chosen = self.precisions[name]
            component = artifact.variant(name, "fp32" if chosen == "bf16" else chosen)
            # a variant may ask for its float operations in bf16 (int8 on openvino)
            compute = "bf16" if chosen == "bf16" else component.entry.get("compute", "fp32")
            sessions[role] = (component, module.open_session(component, replace(options, precision=compute)))
            self._computes[role] = compute
        self._components = {role: component for role, (component, _) in sessions.items()}
        # Run-time weights (runtime/run_time_weights.py): textual-inversion vectors (in id order)
        # and LoRA updates, kept to rebuild the networks' replaced weights whenever one more is loaded.
        self._token_embeddings = {}
        self._loras = []
        self._module_weights = {}
        # The open backend sessions by component role, for callers that time or drive the
        # networks themselves (`sdrt bench`) or wrap them (the variant quality reports record
        # the networks' inputs); every call goes through this dict.
        self.sessions = {role: session for role, (_, session) in sessions.items()}
        self.load_seconds = time.perf_counter() - started
        self.tokenizer = self.text_encoders[0].tokenizer  # (the one textual inversion teaches)
        # Long prompts: as many 77-token chunks as the UNet's text sequence axis takes.
        denoiser = self._components["denoiser"].spec
        sequence = denoiser.tensor(DENOISER.text).shape[1]
        max_length = self.tokenizer.max_length
        longest = denoiser.axis_ranges.get(sequence, (1, max_length))[1] if isinstance(sequence, str) else sequence
        self.max_prompt_chunks = max(1, longest // max_length)
        # SDXL's added conditions: the time-id fields in the UNet's order, and whether a missing
        # negative prompt means zero embeddings (diffusers' force_zeros_for_empty_prompt)
        self.time_id_fields = time_id_fields(artifact)
        self.force_zeros_for_empty_prompt = bool(artifact.pipeline.get("force_zeros_for_empty_prompt", False))
        # a latent consistency model takes guidance as a UNet input: no unconditional half
        self.embedded_guidance = artifact.pipeline.get("guidance") == "embedded"
        # the deepest CLIP skip every text encoder can take (0 where one gives its last layer only)
        self.max_clip_skip = min(
            int(artifact.component(use.component).spec.tensor(TEXT_ENCODER.layers).shape[0]) - 1 + use.layer
            if use.has_layers else 0 for use in self.text_encoders)
        pipeline = artifact.pipeline
        self.latent_channels = pipeline["latent_channels"]
        self.vae_scale_factor = pipeline["vae_scale_factor"]
        self.size_multiple = pipeline.get("size_multiple", self.vae_scale_factor)
        self.default_size = tuple(pipeline["default_size"])
        # decode large images in tiles of the VAE's training size (diffusers' enable_vae_tiling), or of
        # this many pixels a side
        self.vae_tiling = vae_tiling_value(vae_tiling, self.vae_scale_factor)
        unet_channels = denoiser.tensor(DENOISER.sample).shape[1]
        # An inpainting UNet (SD inpainting checkpoints) also takes the mask and the masked image's latents.
        self.inpainting_unet = unet_channels == 2 * self.latent_channels + 1
        if unet_channels != self.latent_channels and not self.inpainting_unet:
            raise ArtifactError(f"The artifact's UNet takes {unet_channels} input channels; sdrt runs UNets of "
                                f"{self.latent_channels} (latents) or {2 * self.latent_channels + 1} (inpainting).")

    @property
    def default_sampler(self) -> str:
        return default_sampler(self.artifact.pipeline["scheduler"])

    def plan(self, num_inference_steps: int, scheduler: str | None = None, strength: float | None = None,
             from_noise: bool = False, denoising_start: float | None = None) -> SamplerPlan:
        """The sampler plan a request with these settings runs (one UNet call per step);
        with `strength`, an image-to-image request's (`from_noise`: inpainting at strength 1);
        with `denoising_start`, a refiner's that continues a base model's run from there."""
        sampler, config = scheduler or self.default_sampler, self.artifact.pipeline["scheduler"]
        if denoising_start is not None:
            return compile_handoff_plan(sampler, config, num_inference_steps, denoising_start)
        if strength is None:
            return compile_plan(sampler, config, num_inference_steps)
        return compile_img2img_plan(sampler, config, num_inference_steps, strength, from_noise)

    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None, *,
                 callback: StepCallback | None = None, **options) -> GenerationResult:
        """Generate images for `prompt`.

        `latents` are standard-normal initial latents (batch, channels, height/f, width/f); they
        are scaled by the sampler's initial sigma, as diffusers does. Without them, latents come
        from `seed` through sdrt's portable generator (sdrt.runtime.noise), the same on every
        backend. `callback(step_index, timestep, latents)` runs after every denoising step.
        `result.timings` holds seconds for text encoding, each step and VAE decoding.

        Image-to-image (SDEdit, as diffusers' StableDiffusionImg2ImgPipeline): `image` (a PIL
        image, or an HWC array in 0-255 uint8 or 0-1 float) is encoded by the VAE encoder (its
        distribution sampled with the seed's noise), noised to the step `strength` selects, and
        denoised from there: the last int(num_inference_steps * strength) steps run. Strength 1
        starts from (almost) pure noise; 0 runs no step and returns the image through the VAE.
        The size defaults to the image's, rounded down to the model's size step; a PIL image of
        another size is resized. `latents`, if given, are the noise added to the image's latents.
        `strength` defaults to 0.8, and to 1.0 when inpainting (as diffusers' two pipelines).

        Inpainting (as diffusers' StableDiffusionInpaintPipeline): `mask_image` is white (>= 0.5)
        where to repaint. An inpainting UNet (9 input channels) sees the mask and the masked
        image; an ordinary one gets the known region put back, noised to the current step, after
        every step. `keep_unmasked` then puts the input's own pixels back outside the mask (the
        VAE round trip changes them slightly otherwise), across a seam softened by `mask_blur`
        (a Gaussian's sigma in pixels; 0: a hard edge, unmasked pixels exactly the input's).

        `watermark=True` marks every image invisibly as Stable Diffusion's own scripts did
        (sdrt.runtime.watermark; images of 256x256 pixels or more).

        SDXL (Podell et al. 2023): `prompt_2` / `negative_prompt_2` go to the second text encoder
        (default: the first's); `original_size`, `crops_coords_top_left`, `target_size` (and the
        refiner's `aesthetic_score`) and their `negative_` forms are the size conditions, as
        diffusers' keywords ((height, width) pairs; sizes default to the request's, crops to (0, 0),
        each negative to its positive). Without a negative prompt an SDXL base guides against zero
        embeddings (its force_zeros_for_empty_prompt), as diffusers. `denoising_end` (a fraction)
        stops a text-to-image run at that point of the schedule, for a refiner to finish from
        `image=` those latents with the same `denoising_start` (diffusers' ensemble of experts).

        `clip_skip` (diffusers' keyword; the web UIs' "CLIP skip" minus one): condition on that
        many layers before the one the model was trained with, for every family.

        The same as `pipe.run(pipe.request(prompt, negative_prompt, **options), callback)`.
        """
        return self.run(self.request(prompt, negative_prompt, **options), callback)

    def request(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None, *,
                image=None, strength: float | None = None, mask_image=None, keep_unmasked: bool = True,
                mask_blur: float = 0.0, watermark: bool = False, num_inference_steps: int = 50,
                guidance_scale: float = 7.5, height: int | None = None, width: int | None = None,
                seed: int | None = None, scheduler: str | None = None, latents: np.ndarray | None = None,
                num_images_per_prompt: int = 1, output_type: str = "pil", clip_skip: int | None = None,
                prompt_2: str | list[str] | None = None, negative_prompt_2: str | list[str] | None = None,
                original_size: tuple[int, int] | None = None, crops_coords_top_left: tuple[int, int] = (0, 0),
                target_size: tuple[int, int] | None = None, aesthetic_score: float = 6.0,
                negative_original_size: tuple[int, int] | None = None,
                negative_crops_coords_top_left: tuple[int, int] | None = None,
                negative_target_size: tuple[int, int] | None = None, negative_aesthetic_score: float = 2.5,
                denoising_end: float | None = None, denoising_start: float | None = None) -> GenerationRequest:
        """The validated request __call__ would run (the same arguments, without the callback):
        every argument checked, the sampler plan compiled once, before any network runs."""
        if watermark and output_type == "latent":
            raise RequestError("watermark marks images; output_type='latent' returns latents.")
        prompts, negatives = prompt_lists(prompt, negative_prompt)
        second = (prompt_2, negative_prompt_2)
        if self.artifact.family != "sdxl" and any(value is not None for value in second):
            raise RequestError("prompt_2 and negative_prompt_2 go to SDXL's second text encoder; this artifact has one "
                               "text encoder: put everything in prompt / negative_prompt.")
        # each defaults to its first-encoder counterpart (None: the same prompts)
        prompts_2 = None if prompt_2 is None else prompt_lists(prompt_2, None)[0]
        if prompts_2 is not None and len(prompts_2) != len(prompts):
            raise RequestError(f"prompt_2 has {len(prompts_2)} entries for {len(prompts)} prompts; give one each.")
        negatives_2 = None if negative_prompt_2 is None else prompt_lists(prompts, negative_prompt_2)[1]
        conditions = SizeConditions.of(original_size, crops_coords_top_left, target_size, aesthetic_score,
                                       negative_original_size, negative_crops_coords_top_left, negative_target_size,
                                       negative_aesthetic_score)
        if not self.time_id_fields and conditions != SizeConditions():
            raise RequestError("original_size, crops_coords_top_left, target_size, aesthetic_score and their negative_ "
                               "forms are SDXL's size conditions; this artifact's UNet takes none.")
        clip_skip = clip_skip_value(clip_skip, self.max_clip_skip)
        if self.embedded_guidance and (negative_prompt is not None or negative_prompt_2 is not None):
            raise RequestError("This latent consistency model takes guidance as an input of its UNet and runs no "
                               "unconditional half, so a negative prompt would have no effect; leave it out.")
        if mask_image is not None and image is None:
            raise RequestError("mask_image needs the image to inpaint: pass image= too.")
        if self.inpainting_unet and mask_image is None:
            raise RequestError("This artifact's UNet is an inpainting UNet: pass image= and mask_image= (white where "
                               "to repaint).")
        task = "txt2img" if image is None else "img2img" if mask_image is None else "inpaint"
        image_latents = latent_image(image, self.latent_channels)
        if image_latents is not None and task == "inpaint":
            raise RequestError("Inpainting needs the image as a picture; image= holds latents.")
        if denoising_start is not None and task != "img2img":
            raise RequestError("denoising_start continues from an image's latents (a base model's output_type='latent' "
                               "run with denoising_end): pass them as image=.")
        mask_blur = mask_blur_value(mask_blur)
        if strength is None:
            strength = 1.0 if task == "inpaint" else 0.8  # diffusers' inpaint and img2img defaults
        # refuses bad step counts, unknown samplers and strengths outside [0, 1]; diffusers'
        # inpainting at full strength starts from pure noise (is_strength_max)
        plan = self.plan(num_inference_steps, scheduler, None if task == "txt2img" else strength,
                         from_noise=task == "inpaint" and strength == 1.0, denoising_start=denoising_start)
        if denoising_end is not None:
            plan = end_plan_at(plan, denoising_end, self.artifact.pipeline["scheduler"])
        guidance = guidance_value(guidance_scale)
        if image_latents is not None:  # the size the latents decode to
            own = [side * self.vae_scale_factor for side in image_latents.shape[2:]]
            if (height or own[0], width or own[1]) != tuple(own):
                raise RequestError(f"image= holds latents of a {own[1]}x{own[0]} image; leave height and width out.")
            height, width = own
        elif image is not None:  # the image's own size, rounded down to the size step (diffusers)
            own = [max(self.size_multiple, side // self.size_multiple * self.size_multiple)
                   for side in image_size(image)]
            height, width = own[0] if height is None else height, own[1] if width is None else width
        height, width = size_value(self.default_size[0] if height is None else height,
                                   self.default_size[1] if width is None else width, self.size_multiple)
        per_prompt = images_per_prompt_value(num_images_per_prompt)
        if image_latents is not None and len(image_latents) not in (1, len(prompts) * per_prompt):
            raise RequestError(f"image= holds {len(image_latents)} latents for {len(prompts) * per_prompt} images; "
                               "give one, or one per image.")
        copies = 1 if self.embedded_guidance else guidance_copies(guidance)
        self._check_fits(height, width, len(prompts) * per_prompt * copies)
        output_type = output_type_value(output_type)
        if watermark and height * width < WATERMARK_MIN_PIXELS:
            raise RequestError(f"The invisible watermark needs images of at least 256x256 pixels; this request makes "
                               f"{width}x{height}.")
        seed = seed_value(seed)
        shape = self._latent_shape(len(prompts) * per_prompt, height, width)
        image_input = None
        if image_latents is not None:
            image_input = ImageInput(None, latents=image_latents)
        elif image is not None:
            image_input = ImageInput(
                to_pixels(image, height, width),
                None if mask_image is None else to_mask(mask_image, height, width, image_size(image)),
                bool(keep_unmasked), mask_blur)
        return GenerationRequest(
            task, prompts, negatives, num_inference_steps, guidance, height, width, seed, plan, per_prompt, output_type,
            latents_value(latents, shape), image_input, bool(watermark), prompts_2=prompts_2,
            negative_prompts_2=negatives_2, zero_negative=self.force_zeros_for_empty_prompt and negative_prompt is None,
            clip_skip=clip_skip, size_conditions=conditions, embedded_guidance=self.embedded_guidance)

    def run(self, request: GenerationRequest, callback: StepCallback | None = None) -> GenerationResult:
        """Run a request made by `request()`: encode the prompt, prepare the starting latents,
        denoise, decode, post-process; `result.timings` holds each stage's seconds."""
        timings: dict[str, float | list[float]] = {}
        started = time.perf_counter()

        tick = time.perf_counter()
        conditioning = self._encode_prompt(request)
        timings["text_encoder"] = time.perf_counter() - tick

        tick = time.perf_counter()
        start = self._PREPARE[request.task](self, request)
        if request.image is not None:
            timings["vae_encoder"] = time.perf_counter() - tick

        final, step_times = self._denoise(request, start, conditioning, callback)
        timings["steps"] = step_times
        timings["denoising"] = float(sum(step_times))

        if request.output_type == "latent":
            images = final
        else:
            tick = time.perf_counter()
            decoded = self._decode(final)
            timings["vae_decoder"] = time.perf_counter() - tick
            images = self._post_process(request, to_unit_range(decoded))
        timings["total"] = time.perf_counter() - started
        return GenerationResult(images=images, seed=request.seed, plan=request.plan, timings=timings)

    # -- stage 2: the starting latents, by task -------------------------------------------

    def _initial_noise(self, request: GenerationRequest) -> np.ndarray:
        """The request's standard-normal latents: the caller's, or drawn from the seed."""
        if request.latents is not None:
            return request.latents
        shape = self._latent_shape(request.batch_size, request.height, request.width)
        return gaussian_noise(request.seed, shape, INITIAL_LATENTS_STREAM)

    def _latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        return batch, self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor

    def _start_from_noise(self, request: GenerationRequest) -> Start:
        noise = self._initial_noise(request)
        return Start(noise * np.float32(request.plan.init_noise_sigma), noise)

    def _start_from_image(self, request: GenerationRequest) -> Start:
        """The image's latents noised to the plan's first step (the scheduler's add_noise; one
        image for the whole batch)."""
        assert request.image is not None
        start = self._start_from_noise(request)
        if not request.plan.init_image_weight:  # (zero terminal SNR at strength 1: pure noise)
            return start
        image_latents, pixels = request.image.latents, request.image.pixels
        if image_latents is None:
            assert pixels is not None  # (an image comes as pixels or as latents)
            image_latents = self._encode_image(pixels, request.seed)
        return replace(start, latents=np.float32(request.plan.init_image_weight) * image_latents + start.latents)

    def _start_inpainting(self, request: GenerationRequest) -> Start:
        """An inpainting UNet sees the mask and the masked image's latents as extra input
        channels; an ordinary UNet gets the known region put back after every step."""
        assert request.image is not None and request.image.mask is not None
        start = self._start_from_noise(request)
        plan, pixels, mask = request.plan, request.image.pixels, request.image.mask
        assert pixels is not None  # (request() refuses latents as an image to inpaint)
        image_latents = None
        if plan.init_image_weight or not self.inpainting_unet:
            image_latents = self._encode_image(pixels, request.seed)
            start = replace(start, latents=np.float32(plan.init_image_weight) * image_latents + start.latents)
        latent_mask = nearest_resize(mask, *start.latents.shape[2:])
        if self.inpainting_unet:
            masked = self._encode_image(pixels * (mask < 0.5), request.seed)
            return replace(start, extra_channels=np.concatenate([latent_mask, masked], axis=1))
        assert image_latents is not None  # encoded above for an ordinary UNet
        return replace(start, after_step=_known_region_keeper(plan, image_latents, start.noise, latent_mask))

    _PREPARE = {"txt2img": _start_from_noise, "img2img": _start_from_image, "inpaint": _start_inpainting}

    # -- stage 3: the denoising loop ------------------------------------------------------

    def _denoise(self, request: GenerationRequest, start: Start, conditioning: dict[str, np.ndarray],
                 callback: StepCallback | None) -> tuple[np.ndarray, list[float]]:
        """The latents after the plan's last step, and each step's seconds."""
        plan = request.plan

        def step_noise(step_index: int, noise_shape: tuple[int, ...]) -> np.ndarray:
            return gaussian_noise(request.seed, noise_shape, step_noise_stream(step_index))

        # Inpainting runs on the host: its known region is blended in after every step.
        on_host = start.after_step is not None or start.extra_channels is not None
        device_loop = None if on_host else self._device_loop()
        if device_loop is not None:
            steps = device_loop.run(plan, start.latents, conditioning, request.guidance_scale, request.copies,
                                    step_noise)
        else:
            steps = self._host_loop(request, start, conditioning, step_noise)
        step_times: list[float] = []
        tick = time.perf_counter()
        fetch = lambda: start.latents  # noqa: E731  (no steps: the initial latents)
        for index, fetch in steps:
            step_times.append(time.perf_counter() - tick)
            if callback is not None:
                callback(index, plan.steps[index].timestep, fetch())
            tick = time.perf_counter()
        return fetch(), step_times

    def _host_loop(self, request: GenerationRequest, start: Start, conditioning: dict[str, np.ndarray],
                   step_noise) -> Steps:
        """The loop on the host: (step index, fetch latents) per step, the UNet run through its
        session with numpy feeds."""
        # The UNet's inputs are allocated once and refilled every step; with guidance on, the
        # latents go in twice, as the unconditional and the conditional half of one batch.
        latents, copies = start.latents, request.copies
        channels = int(self._components["denoiser"].spec.tensor(DENOISER.sample).shape[1])
        sample = np.empty((copies * latents.shape[0], channels, *latents.shape[2:]), dtype=np.float32)
        timestep_feed = np.empty((sample.shape[0],), dtype=np.float32)
        feeds = {DENOISER.sample: sample, DENOISER.timestep: timestep_feed, **conditioning}
        halves = [half[:, :latents.shape[1]] for half in np.split(sample, copies)]
        if start.extra_channels is not None:
            sample[:, latents.shape[1]:] = start.extra_channels

        def predict(scaled: np.ndarray, timestep: float) -> np.ndarray:
            for half in halves:
                half[...] = scaled
            timestep_feed.fill(timestep)
            out = self.sessions["denoiser"].run(feeds)[DENOISER.prediction]
            if request.uses_guidance:
                uncond, cond = np.split(out, 2)
                return guide(uncond, cond, request.guidance_scale)
            return out

        for index, x in run_plan(request.plan, latents, predict, step_noise, start.after_step):
            yield index, lambda x=x: x

    def _device_loop(self):
        """The denoiser session's device-resident loop when it is on (SessionOptions.device_loop;
        by default for devices other than the CPU on backends that have one), else None."""
        if not self._capabilities.wants_device_loop(self.options):
            return None
        return cast(DenoiserSession, self.sessions["denoiser"]).device_loop()  # (the capability says it has one)

    # -- stage 5: post-processing ---------------------------------------------------------

    def _post_process(self, request: GenerationRequest, images: np.ndarray):
        """Decoded NHWC images in [0, 1] -> what output_type asks for: the input's own pixels
        outside an inpainting mask (keep_unmasked), the watermark, PIL images."""
        source = request.image
        if source is not None and source.mask is not None and source.pixels is not None and source.keep_unmasked:
            # Outside the (softened) mask, the input's own pixels: [-1, 1] back to [0, 1].
            weight = soft_mask(source.mask[0, 0], source.mask_blur)[..., np.newaxis]
            original = (source.pixels[0].transpose(1, 2, 0) + 1) / 2
            images = (weight * images + (1 - weight) * original).astype(np.float32)
        if request.watermark:
            marked = np.stack([embed_watermark(image) for image in to_uint8(images)])
            images = marked if request.output_type == "pil" else marked.astype(np.float32) / np.float32(255)
        if request.output_type == "pil":
            from PIL import Image

            return [Image.fromarray(image) for image in (images if request.watermark else to_uint8(images))]
        return images

    def outpaint(self, prompt: str | list[str], image, *, left: int = 0, right: int = 0, top: int = 0,
                 bottom: int = 0, **options) -> GenerationResult:
        """Extend `image` by the given pixels on each side: the canvas is padded (to the model's
        size step), the padding masked, and the request inpainted; `options` as for __call__
        (e.g. negative_prompt, num_inference_steps, seed, mask_blur)."""
        canvas, mask = outpaint_canvas(image, left, right, top, bottom, self.size_multiple)
        return self(prompt, image=canvas, mask_image=mask, **options)

    def _check_fits(self, height: int, width: int, batch: int) -> None:
        """Refuse a size outside the range the networks were exported for, and (memory_check) a
        request whose activations, estimated from the network configs, exceed the memory free now."""
        scale = self.vae_scale_factor
        ranges = self._components["denoiser"].spec.axis_ranges
        for axis, side in (("latent_height", height), ("latent_width", width)):
            low, high = ranges.get(axis, (1, 2**31 - 1))
            if not low <= side // scale <= high:
                raise RequestError(f"This model's networks were exported for images of {low * scale} to "
                                   f"{high * scale} pixels a side; got {width}x{height}.")
        available = available_memory() if self.memory_check else None
        if available is None:
            return
        configs = {role: self._components[role].entry.get("config") or {} for role in ("denoiser", "vae_decoder")}
        tile = self._tile_sizes()[0] if self.vae_tiling and tile_sizes(configs["vae_decoder"], scale) else None
        needed = estimate_request(configs, batch, height, width, scale, tile)
        if needed is None or needed.bytes <= available:
            return
        multiple = self.size_multiple
        low, high = (side * scale for side in ranges.get("latent_height", (1, height // scale)))
        fitting = [side for side in range(-(-low // multiple) * multiple, min(high, max(height, width)) + 1, multiple)
                   if (fit := estimate_request(configs, batch, side, side, scale, tile)) and fit.bytes <= available]
        advice = (f"the largest square size that fits is about {fitting[-1]}x{fitting[-1]}" if fitting else
                  "no size fits with this many images at once")
        raise RequestError(f"A {width}x{height} request needs about {needed.bytes / 2**30:.1f} GiB for the "
                           f"{needed.network}'s {needed.part} alone ({batch} latents per UNet call; guidance doubles "
                           f"them), and {available / 2**30:.1f} GiB is free; {advice}. Ask for a smaller size or "
                           "fewer images, or pass memory_check=False (CLI: --no-memory-check) to try anyway.")

    # -- stages 1 and 4: the networks around the loop ------------------------------------

    def _encode_prompt(self, request: GenerationRequest) -> dict[str, np.ndarray]:
        """The denoiser's conditioning inputs by name (runtime/conditioning.py): text embeddings
        ([negative..., positive...] when guidance is on), and SDXL's pooled text and time ids."""
        sets = len(self.text_encoders)
        positive = [list(request.prompts), list(request.prompts_2 or request.prompts)][:sets]
        negative = [list(request.negative_prompts), list(request.negative_prompts_2 or request.negative_prompts)][:sets]
        time_ids = None
        if self.time_id_fields:
            sizes = request.size_conditions
            time_ids = (time_id_values(self.time_id_fields, sizes.values(request.height, request.width)),
                        time_id_values(self.time_id_fields, sizes.negative_values(request.height, request.width)))
        guidance = None
        if self.embedded_guidance:
            width = int(self._components["denoiser"].spec.tensor(DENOISER.guidance).shape[1])
            guidance = guidance_embedding(request.guidance_scale, width)
        return conditioning(self.text_encoders, self.sessions, positive, negative, request.zero_negative, time_ids,
                            request.copies, request.num_images_per_prompt, self.max_prompt_chunks, request.clip_skip,
                            guidance)

    def vae_encoder_session(self) -> Session:
        """The chosen VAE's encoder session, opened on the first image-to-image request (text-to-
        image never holds it in memory), computing in the decoder's precision."""
        if "vae_encoder" not in self.sessions:
            component = self.artifact.component_for_role("vae_encoder", self.vae)
            decoder = self._components["vae_decoder"].spec.name
            compute = "bf16" if self.precisions[decoder] == "bf16" else "fp32"
            self.sessions["vae_encoder"] = self._backend_module.open_session(
                component, replace(self.options, precision=compute))
        return self.sessions["vae_encoder"]

    def _encode_image(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        """Scaled latents of one image: a sample of the VAE encoder's diagonal Gaussian, drawn
        with the seed's own stream (diffusers' DiagonalGaussianDistribution.sample)."""
        outputs = self.vae_encoder_session().run({VAE_ENCODER.image: pixels})
        if VAE_ENCODER.latents in outputs:  # a deterministic encoder (AutoencoderTiny): the latents themselves
            sample = outputs[VAE_ENCODER.latents]
        else:
            mean, log_variance = np.split(outputs[VAE_ENCODER.parameters], 2, axis=1)
            std = np.exp(np.float32(0.5) * np.clip(log_variance, -30.0, 20.0))  # clamped as diffusers does
            sample = mean + std * gaussian_noise(seed, mean.shape, VAE_SAMPLE_STREAM)
        scaling, shift = self._vae_factors
        if shift is not None:
            sample = sample - np.float32(shift)
        return (sample * np.float32(scaling)).astype(np.float32)

    @property
    def _vae_factors(self) -> tuple[float, float | None]:
        """(scaling factor, shift factor) of the VAE in use: latents = (vae latents - shift) * scaling."""
        if self.vae is None:
            pipeline = self.artifact.pipeline
            return pipeline["vae_scaling_factor"], pipeline.get("vae_shift_factor")
        entry = self._components["vae_decoder"].entry
        return entry.get("scaling_factor", 1.0), entry.get("shift_factor")

    def _decode(self, latents: np.ndarray) -> np.ndarray:
        scaling, shift = self._vae_factors
        scaled = latents / np.float32(scaling)
        if shift is not None:
            scaled = scaled + np.float32(shift)
        # One image at a time keeps the decoder's peak memory independent of the batch; with
        # vae_tiling, a large one goes tile by tile (runtime/vae_tiling.py).
        decoder = self.sessions["vae_decoder"]

        def decode(latents: np.ndarray) -> np.ndarray:
            return decoder.run({VAE_DECODER.latents: latents})[VAE_DECODER.image]

        tiles = self._tile_sizes() if self.vae_tiling else None
        if tiles is not None and max(scaled.shape[2:]) > tiles[0]:
            return np.concatenate([tiled_decode(decode, scaled[i:i + 1], *tiles) for i in range(scaled.shape[0])])
        return np.concatenate([decode(scaled[i:i + 1]) for i in range(scaled.shape[0])])

    def _tile_sizes(self) -> tuple[int, int]:
        """(latent, image) pixels a side of a decoding tile: vae_tiling's own size, or the VAE's."""
        tiles = tile_sizes(self._components["vae_decoder"].entry.get("config") or {}, self.vae_scale_factor)
        if tiles is not None and not isinstance(self.vae_tiling, bool):
            return self.vae_tiling // self.vae_scale_factor, self.vae_tiling
        if tiles is None:
            raise RequestError("vae_tiling decodes with the tiles of an AutoencoderKL's training size; this VAE "
                               f"({self.vae}) has none: turn vae_tiling off (the tiny autoencoder needs little "
                               "memory).")
        return tiles



def _known_region_keeper(plan: SamplerPlan, image_latents: np.ndarray, noise: np.ndarray,
                         latent_mask: np.ndarray) -> Callable[[int, np.ndarray], np.ndarray]:
    """Inpainting with an ordinary UNet: after step i, outside the mask, the image's latents
    noised (with the request's own initial noise) to step i + 1, and clean after the last
    (pipeline_stable_diffusion_inpaint.py, num_channels_unet == 4)."""
    keep = np.float32(1) - latent_mask

    def put_back(index: int, latents: np.ndarray) -> np.ndarray:
        image_weight, noise_weight = plan.noising[index + 1] if index + 1 < len(plan.steps) else (1.0, 0.0)
        known = np.float32(image_weight) * image_latents + np.float32(noise_weight) * noise
        return keep * known + latent_mask * latents

    return put_back


def load(artifact: str | os.PathLike, backend: str | None = None, device: str | None = None, *,
         precision: Precision = "fp32",
         num_threads: int | None = None, verify_checksums: bool = True,
         engine_cache: str | os.PathLike | bool | None = None,
         device_loop: bool | None = None, cuda_graph: bool = False,
         static_shapes: bool = True, memory_check: bool = True, vae: str | None = None,
         vae_tiling: bool | int = False) -> StableDiffusionPipeline:
    """Open an sdrt artifact folder on a backend and return a text-to-image pipeline.

    backend: "onnxruntime", "openvino" or "tensorrt" (default: openvino where installed, else
    onnxruntime);
    device: the backend's default when None ("cpu"; "cuda" for tensorrt); onnxruntime also takes
    "cuda", "tensorrt", "dml" (":N" for GPU N), openvino "gpu", "npu";
    precision: "fp32"; "bf16" on openvino (fast on CPUs with AMX or AVX512-BF16); or a variant
    the artifact stores ("fp16", ... made by `sdrt quantize`), for every network that has it;
    or a dict by component name, e.g. {"unet": "fp16", "vae_decoder": "fp32"} (see
    sdrt.runtime.precisions.resolve_precisions);
    engine_cache: where backends that compile (openvino) keep compiled engines so the next load
    skips compilation: True for the user cache ($SDRT_CACHE/engines, default
    ~/.cache/sdrt/engines; skipped when it cannot be created), a folder (created if missing),
    False for none; None (default): the user cache on GPU and NPU devices, none on the CPU, where
    a cached engine keeps more memory resident (docs/backends.md);
    device_loop: run the denoising loop with its tensors on the device (onnxruntime: IOBinding,
    the UNet's output fed to kernels/sampler_step.onnx and its output back to the UNet; latents
    leave the device after the last step, or after each when a callback asks for them); None
    (default): on for GPU devices, off on the CPU; inpainting always runs on the host;
    cuda_graph: onnxruntime on cuda: capture the device loop's UNet calls as CUDA graphs (one
    per request shape, replayed on every later step and request of that shape);
    static_shapes: openvino: compile each network for the shapes of the request at its first
    call, and again when a request changes them (as optimum-intel's reshape does): faster
    networks (benchmarks/README.md); False: one compile, at load, for every shape;
    memory_check: refuse a request whose activations, estimated from the network configs, need
    more memory than the system has free (sdrt.runtime.memory), saying what size fits;
    vae: decode (and encode) with a VAE added to the artifact under this name, e.g. "taesd" (the
    tiny autoencoder: `sdrt add-vae`, docs/families.md); None: the checkpoint's own;
    vae_tiling: True: decode images larger than the VAE's training size in overlapping tiles of
    that size, blended, as diffusers' enable_vae_tiling (bounded decoder memory); a number: tiles
    of that many pixels a side (a multiple of the VAE's scale factor, 8; diffusers' vae
    tile_sample_min_size), e.g. 512 for SDXL, whose VAE's own tiles are 1024; `pipe.vae_tiling`
    switches it later.
    """
    backend = best_backend() if backend is None else backend
    chosen: str = device or backend_module(backend).CAPABILITIES.default_device  # a missing package fails here
    if engine_cache is None:
        engine_cache = chosen != "cpu"
    options = SessionOptions(device=chosen, num_threads=num_threads, engine_cache=_engine_cache_folder(engine_cache),
                             device_loop=device_loop, cuda_graph=cuda_graph, static_shapes=static_shapes)
    return StableDiffusionPipeline(open_artifact(Path(artifact), verify_checksums=verify_checksums), backend, options,
                                   precision, memory_check=memory_check, vae=vae, vae_tiling=vae_tiling)


def _engine_cache_folder(engine_cache: str | os.PathLike | bool) -> str | None:
    if engine_cache is False:
        return None
    if engine_cache is True:
        return str(default_engine_cache())  # made by the backends that use it; skipped if it cannot be
    folder = Path(engine_cache)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RequestError(f"Cannot use {folder} as the engine cache ({error.strerror}); pass another folder, "
                           "or engine_cache=False (CLI: --no-engine-cache).") from None
    return str(folder)
