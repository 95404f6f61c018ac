"""Text-to-image and image-to-image on an artifact: tokenize, encode, denoise with a sampler
plan, decode.

Keyword names follow diffusers' StableDiffusionPipeline so that its users feel at home.
"""
from __future__ import annotations

import math
import numbers
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..kernels.image import to_uint8, to_unit_range
from ..kernels.sampler_step import guide
from ..models.components import DENOISER, TEXT_ENCODER, VAE_DECODER, VAE_ENCODER
from .artifact import Artifact, open_artifact
from .backends import SessionOptions, backend_module, best_backend, default_profile
from .cache import default_engine_cache
from .errors import ArtifactError, RequestError
from .loop import run_plan
from .lora import PREFIXES, LoraSpec, lora_updates, nothing_matched, pair_count, read_lora
from .memory import available_memory, estimate_request
from .module_weights import ModuleWeights
from .image_input import image_size, nearest_resize, outpaint_canvas, soft_mask, to_mask, to_pixels
from .noise import INITIAL_LATENTS_STREAM, VAE_SAMPLE_STREAM, gaussian_noise, step_noise_stream
from .precisions import Precision, resolve_precisions
from .prompts import parse_prompt, weigh_embeddings
from .samplers import SamplerPlan, compile_img2img_plan, compile_plan, default_sampler
from .textual_inversion import TOKEN_EMBEDDING, load_embedding
from .tokenizer import ClipTokenizer
from .watermark import MIN_PIXELS as WATERMARK_MIN_PIXELS
from .watermark import embed as embed_watermark

OUTPUT_TYPES = ("pil", "np", "latent")
# the networks a LoRA changes, by the name LoRA files give them -> their role in the pipeline
LORA_NETWORKS = {"text_encoder": "text_encoder", "unet": "denoiser"}
# callback(step_index, timestep, latents) after each denoising step
StepCallback = Callable[[int, float, np.ndarray], None]


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request; built by StableDiffusionPipeline.__call__."""

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    seed: int
    plan: SamplerPlan  # compiled from the sampler name and step count, which it also validates
    num_images_per_prompt: int
    output_type: str
    pixels: np.ndarray | None = None  # image-to-image: the input image, (1, 3, height, width) in [-1, 1]
    mask: np.ndarray | None = None  # inpainting: (1, 1, height, width), 1 where to repaint
    keep_unmasked: bool = True  # inpainting: put the input's pixels back outside the mask
    mask_blur: float = 0.0  # inpainting: the seam's softness (Gaussian sigma, pixels)

    @property
    def batch_size(self) -> int:
        return len(self.prompts) * self.num_images_per_prompt

    @property
    def uses_guidance(self) -> bool:
        # As diffusers: guidance_scale <= 1 skips the unconditional branch.
        return self.guidance_scale > 1.0


@dataclass
class GenerationResult:
    images: list | np.ndarray  # PIL images, an NHWC float array in [0, 1], or latents
    seed: int
    plan: SamplerPlan
    timings: dict[str, float | list[float]] = field(default_factory=dict)


class StableDiffusionPipeline:
    """Text-to-image and image-to-image on an sdrt artifact of the SD 1.x / 2.x families, on one
    backend."""

    def __init__(self, artifact: Artifact, backend: str = "onnxruntime", options: SessionOptions | None = None,
                 precision: Precision | None = None, memory_check: bool = True):
        options = options or SessionOptions()
        # refuse requests whose estimated activations exceed the memory available (runtime/memory.py)
        self.memory_check = memory_check
        if artifact.family not in ("sd1", "sd2"):
            raise ArtifactError(f"This sdrt runs the sd1 and sd2 families; the artifact is {artifact.family!r}.")
        if options.profile is None:  # shapes for engines built for a range of them (TensorRT)
            options = replace(options, profile=default_profile(tuple(artifact.pipeline["default_size"]),
                                                               artifact.pipeline["vae_scale_factor"]))
        self.artifact = artifact
        self.backend = backend
        self.options = options
        # component name -> the precision it runs in: a stored variant, or bf16 (fp32 files, bf16 compute)
        self.precisions = resolve_precisions(artifact, options.precision if precision is None else precision, backend,
                                             options.device)
        module = backend_module(backend)
        if options.cuda_graph and not getattr(module, "CUDA_GRAPHS", False):
            raise RequestError(f"The {backend} backend does not capture CUDA graphs (onnxruntime on cuda does); "
                               "leave cuda_graph off.")
        self._backend_module = module
        started = time.perf_counter()
        sessions = {}
        self._computes = {}  # role -> the compute precision its session was opened with
        for role in ("text_encoder", "denoiser", "vae_decoder"):
            name = artifact.component_for_role(role).spec.name
            chosen = self.precisions[name]
            component = artifact.variant(name, "fp32" if chosen == "bf16" else chosen)
            # a variant may ask for its float operations in bf16 (int8 on openvino)
            compute = "bf16" if chosen == "bf16" else component.entry.get("compute", "fp32")
            sessions[role] = (component, module.open_session(component, replace(options, precision=compute)))
            self._computes[role] = compute
        self._components = {role: component for role, (component, _) in sessions.items()}
        self._unet_component = sessions["denoiser"][0]
        self._text_encoder_component = sessions["text_encoder"][0]
        # Run-time weights: textual-inversion vectors (in id order) and LoRA updates, kept to
        # rebuild the networks' replaced weights whenever one more is loaded.
        self._token_embeddings: np.ndarray | None = None
        self._loras: list[tuple[LoraSpec, dict[str, dict[str, np.ndarray]]]] = []
        self._module_weights: dict[str, ModuleWeights] = {}
        # The open backend sessions by component role, for callers that time or drive the
        # networks themselves (`sdrt bench`) or wrap them (the variant quality reports record
        # the networks' inputs); every call goes through this dict.
        self.sessions = {role: session for role, (_, session) in sessions.items()}
        self.load_seconds = time.perf_counter() - started
        if options.device_loop and not hasattr(self.sessions["denoiser"], "device_loop"):
            raise RequestError(f"The {backend} backend has no device-resident denoising loop (onnxruntime has); "
                               "leave device_loop unset.")
        entry = artifact.tokenizer_entry("text_encoder")
        self.tokenizer = ClipTokenizer.from_folder(
            artifact.file(entry["files"]["vocab"]).parent, bos_id=entry["bos_id"], eos_id=entry["eos_id"],
            pad_id=entry["pad_id"], max_length=entry["max_length"])
        # Long prompts: as many 77-token chunks as the UNet's text sequence axis takes.
        text_input = next(t for t in self._unet_component.spec.inputs if t.name == DENOISER.text)
        sequence = text_input.shape[1]
        longest = self._unet_component.spec.axis_ranges.get(sequence, (1, entry["max_length"]))[1] \
            if isinstance(sequence, str) else sequence
        self.max_prompt_chunks = max(1, longest // entry["max_length"])
        pipeline = artifact.pipeline
        self.latent_channels = pipeline["latent_channels"]
        self.vae_scale_factor = pipeline["vae_scale_factor"]
        self.size_multiple = pipeline.get("size_multiple", self.vae_scale_factor)
        self.default_size = tuple(pipeline["default_size"])
        unet_channels = self._unet_component.spec.inputs[0].shape[1]
        # An inpainting UNet (SD inpainting checkpoints) also takes the mask and the masked image's latents.
        self.inpainting_unet = unet_channels == 2 * self.latent_channels + 1
        if unet_channels != self.latent_channels and not self.inpainting_unet:
            raise ArtifactError(f"The artifact's UNet takes {unet_channels} input channels; sdrt runs UNets of "
                                f"{self.latent_channels} (latents) or {2 * self.latent_channels + 1} (inpainting).")

    @property
    def default_sampler(self) -> str:
        return default_sampler(self.artifact.pipeline["scheduler"])

    def plan(self, num_inference_steps: int, scheduler: str | None = None,
             strength: float | None = None) -> SamplerPlan:
        """The sampler plan a request with these settings runs (one UNet call per step);
        with `strength`, an image-to-image request's."""
        sampler, config = scheduler or self.default_sampler, self.artifact.pipeline["scheduler"]
        if strength is None:
            return compile_plan(sampler, config, num_inference_steps)
        return compile_img2img_plan(sampler, config, num_inference_steps, strength)

    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None, *,
                 image=None, strength: float | None = None, mask_image=None, keep_unmasked: bool = True,
                 mask_blur: float = 0.0, watermark: bool = False,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, height: int | None = None,
                 width: int | None = None, seed: int | None = None, scheduler: str | None = None,
                 latents: np.ndarray | None = None, num_images_per_prompt: int = 1, output_type: str = "pil",
                 callback: StepCallback | None = None) -> GenerationResult:
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
        """
        if watermark and output_type == "latent":
            raise RequestError("watermark marks images; output_type='latent' returns latents.")
        request = self._request(prompt, negative_prompt, num_inference_steps, guidance_scale, height, width,
                                seed, scheduler, num_images_per_prompt, output_type, image, strength, mask_image,
                                keep_unmasked, mask_blur)
        if watermark and request.height * request.width < WATERMARK_MIN_PIXELS:
            raise RequestError(f"The invisible watermark needs images of at least 256x256 pixels; this request makes "
                               f"{request.width}x{request.height}.")
        timings: dict[str, float | list[float]] = {}
        started = time.perf_counter()

        tick = time.perf_counter()
        embeddings = self._encode(request)
        timings["text_encoder"] = time.perf_counter() - tick

        plan = request.plan
        shape = (request.batch_size, self.latent_channels, request.height // self.vae_scale_factor,
                 request.width // self.vae_scale_factor)
        if latents is None:
            latents = gaussian_noise(request.seed, shape, INITIAL_LATENTS_STREAM)
        else:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.shape != shape:
                raise RequestError(f"latents must have shape {shape} for this request, got {latents.shape}.")
        noise = latents
        latents = latents * np.float32(plan.init_noise_sigma)
        extra_channels = None  # an inpainting UNet's mask and masked-image latents
        keep_known = None
        if request.pixels is not None:
            tick = time.perf_counter()
            image_latents = None
            if plan.init_image_weight or (request.mask is not None and not self.inpainting_unet):
                image_latents = self._encode_image(request.pixels, request.seed)
                # the scheduler's add_noise at the plan's first step (one image for the whole batch)
                latents = np.float32(plan.init_image_weight) * image_latents + latents
            if request.mask is not None:
                latent_mask = nearest_resize(request.mask, *shape[2:])
                if self.inpainting_unet:
                    masked = self._encode_image(request.pixels * (request.mask < 0.5), request.seed)
                    extra_channels = np.concatenate([latent_mask, masked], axis=1)
                else:
                    keep_known = _known_region_keeper(plan, image_latents, noise, latent_mask)
            timings["vae_encoder"] = time.perf_counter() - tick

        def step_noise(step_index: int, noise_shape: tuple[int, ...]) -> np.ndarray:
            return gaussian_noise(request.seed, noise_shape, step_noise_stream(step_index))

        copies = 2 if request.uses_guidance else 1
        device_loop = self._device_loop() if keep_known is None and extra_channels is None else None
        if device_loop is not None:
            steps = device_loop.run(plan, latents, {DENOISER.text: embeddings}, request.guidance_scale, copies,
                                    step_noise)
        else:
            steps = self._host_loop(request, latents, embeddings, extra_channels, step_noise, keep_known)
        step_times: list[float] = []
        tick = time.perf_counter()
        fetch = lambda: latents  # noqa: E731  (no steps: the initial latents)
        for index, fetch in steps:
            step_times.append(time.perf_counter() - tick)
            if callback is not None:
                callback(index, plan.steps[index].timestep, fetch())
            tick = time.perf_counter()
        final = fetch()
        timings["steps"] = step_times
        timings["denoising"] = float(sum(step_times))

        if request.output_type == "latent":
            images = final
        else:
            tick = time.perf_counter()
            decoded = self._decode(final)
            timings["vae_decoder"] = time.perf_counter() - tick
            images = to_unit_range(decoded)
            if request.mask is not None and request.keep_unmasked:
                # Outside the (softened) mask, the input's own pixels: [-1, 1] back to [0, 1].
                weight = soft_mask(request.mask[0, 0], request.mask_blur)[..., np.newaxis]
                original = (request.pixels[0].transpose(1, 2, 0) + 1) / 2
                images = (weight * images + (1 - weight) * original).astype(np.float32)
            if watermark:
                marked = np.stack([embed_watermark(image) for image in to_uint8(images)])
                images = marked if request.output_type == "pil" else marked.astype(np.float32) / np.float32(255)
            if request.output_type == "pil":
                from PIL import Image

                images = [Image.fromarray(image) for image in (images if watermark else to_uint8(images))]
        timings["total"] = time.perf_counter() - started
        return GenerationResult(images=images, seed=request.seed, plan=plan, timings=timings)

    def _host_loop(self, request: GenerationRequest, latents: np.ndarray, embeddings: np.ndarray,
                   extra_channels: np.ndarray | None, step_noise, keep_known):
        """The loop on the host: (step index, fetch latents) per step, the UNet run through its
        session with numpy feeds."""
        # The UNet's inputs are allocated once and refilled every step; with guidance on, the
        # latents go in twice, as the unconditional and the conditional half of one batch.
        copies = 2 if request.uses_guidance else 1
        channels = self._unet_component.spec.inputs[0].shape[1]
        sample = np.empty((copies * latents.shape[0], channels, *latents.shape[2:]), dtype=np.float32)
        timestep_feed = np.empty((sample.shape[0],), dtype=np.float32)
        feeds = {DENOISER.sample: sample, DENOISER.timestep: timestep_feed, DENOISER.text: embeddings}
        halves = [half[:, :latents.shape[1]] for half in np.split(sample, copies)]
        if extra_channels is not None:
            sample[:, latents.shape[1]:] = extra_channels

        def predict(scaled: np.ndarray, timestep: float) -> np.ndarray:
            for half in halves:
                half[...] = scaled
            timestep_feed.fill(timestep)
            out = self.sessions["denoiser"].run(feeds)[DENOISER.prediction]
            if request.uses_guidance:
                uncond, cond = np.split(out, 2)
                return guide(uncond, cond, request.guidance_scale)
            return out

        for index, x in run_plan(request.plan, latents, predict, step_noise, keep_known):
            yield index, lambda x=x: x

    def _device_loop(self):
        """The denoiser session's device-resident loop when it is on (SessionOptions.device_loop;
        by default for devices other than the CPU), else None. Inpainting runs on the host (its
        known region is blended in after every step)."""
        wanted = self.options.device_loop if self.options.device_loop is not None else self.options.device != "cpu"
        if not wanted:
            return None
        make = getattr(self.sessions["denoiser"], "device_loop", None)  # absent: a wrapped or other session
        return make() if make is not None else None

    def load_textual_inversion(self, path: str | os.PathLike, token: str | None = None) -> str:
        """Teach the pipeline a word from a textual-inversion embedding file (.safetensors: the
        diffusers layout, whose tensor is named after the word, or AUTOMATIC1111's, named by the
        file); `token` names the word instead. Returns the word, to use in prompts. The text
        encoder's session reopens with the new vectors appended to its token table; the
        artifact's files are not touched."""
        width = self._text_encoder_component.spec.outputs[0].shape[-1]
        word, vectors = load_embedding(path, width, token)
        if word.lower() in self.tokenizer.added:
            raise RequestError(f"An embedding for {word!r} is loaded already; name this one with token=...")
        if word.lower() + "</w>" in self.tokenizer.encoder:
            raise RequestError(f"{word!r} is a word CLIP knows already; name the embedding with token=... (e.g. "
                               f"'<{word}>').")
        first = len(self.tokenizer.encoder) + (0 if self._token_embeddings is None else len(self._token_embeddings))
        table = vectors if self._token_embeddings is None else np.concatenate([self._token_embeddings, vectors])
        previous, self._token_embeddings = self._token_embeddings, table
        try:
            self._reopen("text_encoder")
        except BaseException:
            self._token_embeddings = previous
            if "text_encoder" not in self.sessions:
                self._reopen("text_encoder")
            raise
        self.tokenizer.add_word(word, list(range(first, first + len(vectors))))
        return word

    def load_lora(self, path: str | os.PathLike, strength: float = 1.0) -> dict:
        """Apply a LoRA file (.safetensors, kohya/AUTOMATIC1111 or diffusers/PEFT keys) to the UNet
        and text encoder with `strength`, on top of LoRAs loaded before (diffusers'
        load_lora_weights + fuse_lora(lora_scale=strength)). The networks it changes reopen with
        their weights replaced in memory (seconds: a session load, not an export; the artifact's
        files are not touched); their fp32 or fp16 forms only. Returns what matched: {file,
        strength, matched: {network: modules}, pairs, unmatched}; pairs that name nothing in
        this model are left out with a warning. `unload_loras()` goes back to the exported
        weights."""
        return self.load_loras([(path, strength)])[0]

    def load_loras(self, loras: list[tuple[str | os.PathLike, float]]) -> list[dict]:
        """load_lora for several (file, strength) pairs, reopening each network once."""
        loaded = []
        for path, strength in loras:
            if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
                raise RequestError(f"A LoRA's strength is a finite number (1.0: as trained), got {strength!r}.")
            spec = LoraSpec(Path(path).expanduser(), float(strength))
            tensors = read_lora(spec.path)
            updates = {network: lora_updates(tensors, network, self._weights(role).modules, spec.path.name)
                       for network, role in LORA_NETWORKS.items()
                       if any(key.startswith(PREFIXES[network]) for key in tensors)}
            pairs = pair_count(tensors)
            matched = {network: len(updates.get(network, {})) for network in LORA_NETWORKS}
            if not any(matched.values()):
                raise RequestError(nothing_matched(spec.path.name, pairs))
            loaded.append(((spec, updates), {"file": spec.path.name, "strength": spec.strength, "matched": matched,
                                             "pairs": pairs, "unmatched": pairs - sum(matched.values())}))
        changed = [role for network, role in LORA_NETWORKS.items()
                   if any(summary["matched"][network] for _, summary in loaded)]
        before = list(self._loras)
        self._loras += [lora for lora, _ in loaded]
        try:
            for role in changed:
                self._reopen(role)
        except BaseException:
            self._loras = before  # back to the weights before them, in every network they changed
            for role in changed:
                self._reopen(role)
            raise
        for _, summary in loaded:
            if summary["unmatched"]:
                warnings.warn(f"LoRA file {summary['file']}: {summary['unmatched']} of its {summary['pairs']} weight "
                              "pairs name no weight of this artifact's UNet or text encoder and were left out "
                              "(artifacts exported before sdrt named the linear layers' weights match only "
                              "convolutions: re-export those).", stacklevel=2)
        return [summary for _, summary in loaded]

    @property
    def loras(self) -> list[tuple[str, float]]:
        """(file, strength) of each LoRA applied at run time, in the order loaded."""
        return [(str(spec.path), spec.strength) for spec, _ in self._loras]

    def unload_loras(self) -> None:
        """Back to the artifact's own weights (textual-inversion words stay)."""
        changed = {role for _, updates in self._loras for network, role in LORA_NETWORKS.items()
                   if updates.get(network)}
        self._loras = []
        for role in sorted(changed):
            self._reopen(role)

    def _weights(self, role: str) -> ModuleWeights:
        if role not in self._module_weights:
            self._module_weights[role] = ModuleWeights(self._components[role])
        return self._module_weights[role]

    def _reopen(self, role: str) -> None:
        """Open the network of `role` again with the run-time weights loaded so far: LoRA updates,
        and for the text encoder the token table extended by textual-inversion vectors."""
        network = next(network for network, owner in LORA_NETWORKS.items() if owner == role)
        weights = self._weights(role)
        updates = [(spec.strength, by_network[network]) for spec, by_network in self._loras
                   if by_network.get(network)]
        replaced = weights.with_updates(updates) if updates else {}
        if role == "text_encoder" and self._token_embeddings is not None:
            name = weights.ending_with(TOKEN_EMBEDDING)
            if name is None:
                raise RequestError(f"The {weights.component.spec.name}'s ONNX file has no token-embedding table "
                                   f"(*{TOKEN_EMBEDDING}) to extend; was it exported by sdrt?")
            table = replaced[name] if name in replaced else weights.read([name])[name]
            replaced[name] = np.concatenate([table, self._token_embeddings.astype(table.dtype)])
        # The old session goes first: two UNets side by side would double the peak memory.
        del self.sessions[role]
        self.sessions[role] = self._backend_module.open_session(self._components[role], replace(
            self.options, precision=self._computes[role], weights=replaced or None))

    def outpaint(self, prompt: str | list[str], image, *, left: int = 0, right: int = 0, top: int = 0,
                 bottom: int = 0, **options) -> GenerationResult:
        """Extend `image` by the given pixels on each side: the canvas is padded (to the model's
        size step), the padding masked, and the request inpainted; `options` as for __call__
        (e.g. negative_prompt, num_inference_steps, seed, mask_blur)."""
        canvas, mask = outpaint_canvas(image, left, right, top, bottom, self.size_multiple)
        return self(prompt, image=canvas, mask_image=mask, **options)

    def _request(self, prompt, negative_prompt, steps, guidance, height, width, seed, sampler, per_prompt,
                 output_type, image=None, strength=None, mask_image=None, keep_unmasked=True,
                 mask_blur=0.0) -> GenerationRequest:
        prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError("prompt must be a string or a non-empty list of strings.")
        if negative_prompt is None:
            negatives = ("",) * len(prompts)
        elif isinstance(negative_prompt, str):
            negatives = (negative_prompt,) * len(prompts)
        else:
            negatives = tuple(negative_prompt)
            if len(negatives) != len(prompts):
                raise RequestError(f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts; "
                                   "give one per prompt or a single string.")
        if mask_image is not None and image is None:
            raise RequestError("mask_image needs the image to inpaint: pass image= too.")
        if self.inpainting_unet and mask_image is None:
            raise RequestError("This artifact's UNet is an inpainting UNet: pass image= and mask_image= (white where "
                               "to repaint).")
        if not isinstance(mask_blur, (int, float)) or isinstance(mask_blur, bool) or not 0 <= mask_blur <= 64:
            raise RequestError(f"mask_blur must be a number of pixels in [0, 64], got {mask_blur!r}.")
        if strength is None:
            strength = 1.0 if mask_image is not None else 0.8  # diffusers' inpaint and img2img defaults
        # refuses bad step counts, unknown samplers and strengths outside [0, 1]
        plan = self.plan(steps, sampler, None if image is None else strength)
        if mask_image is not None and strength == 1.0:
            # diffusers' inpainting at full strength starts from pure noise (is_strength_max)
            plan = replace(plan, init_image_weight=0.0, init_noise_sigma=self.plan(steps, sampler).init_noise_sigma)
        try:
            value = float(guidance)
        except (TypeError, ValueError):
            raise RequestError(f"guidance_scale must be a number >= 0, got {guidance!r}.") from None
        if math.isnan(value) or math.isinf(value) or value < 0:
            raise RequestError(f"guidance_scale must be a finite number >= 0, got {guidance!r}.")
        guidance = value
        if image is not None:  # the image's own size, rounded down to the size step (diffusers)
            own = [max(self.size_multiple, side // self.size_multiple * self.size_multiple)
                   for side in image_size(image)]
            height, width = own[0] if height is None else height, own[1] if width is None else width
        height = self.default_size[0] if height is None else height
        width = self.default_size[1] if width is None else width
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise RequestError(f"{name} must be a positive integer, got {value!r}.")
        multiple = self.size_multiple
        if height % multiple or width % multiple:
            hint = f"{_round_to(height, multiple)}x{_round_to(width, multiple)}"
            raise RequestError(f"height and width must be multiples of {multiple} for this model, got "
                               f"{height}x{width}; try {hint}.")
        if isinstance(per_prompt, bool) or not isinstance(per_prompt, int) or per_prompt < 1:
            raise RequestError(f"num_images_per_prompt must be an integer >= 1, got {per_prompt!r}.")
        self._check_fits(height, width, len(prompts) * per_prompt * (2 if guidance > 1.0 else 1))
        if output_type not in OUTPUT_TYPES:
            raise RequestError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}.")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little") >> 1
        elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
            raise RequestError(f"seed must be an integer in [0, 2**64), got {seed!r}.")
        seed = int(seed)  # numpy integers too
        pixels = None if image is None else to_pixels(image, height, width)
        mask = None if mask_image is None else to_mask(mask_image, height, width, image_size(image))
        return GenerationRequest(prompts, negatives, steps, guidance, height, width, seed, plan, per_prompt,
                                 output_type, pixels, mask, bool(keep_unmasked), float(mask_blur))

    def _check_fits(self, height: int, width: int, batch: int) -> None:
        """Refuse a size outside the range the networks were exported for, and (memory_check) a
        request whose activations, estimated from the network configs, exceed the memory free now."""
        scale = self.vae_scale_factor
        ranges = self._unet_component.spec.axis_ranges
        for axis, side in (("latent_height", height), ("latent_width", width)):
            low, high = ranges.get(axis, (1, 2**31 - 1))
            if not low <= side // scale <= high:
                raise RequestError(f"This model's networks were exported for images of {low * scale} to "
                                   f"{high * scale} pixels a side; got {width}x{height}.")
        available = available_memory() if self.memory_check else None
        if available is None:
            return
        configs = {role: self.artifact.component_for_role(role).entry.get("config") or {}
                   for role in ("denoiser", "vae_decoder")}
        needed = estimate_request(configs, batch, height, width, scale)
        if needed is None or needed.bytes <= available:
            return
        multiple = self.size_multiple
        low, high = (side * scale for side in ranges.get("latent_height", (1, height // scale)))
        fitting = [side for side in range(-(-low // multiple) * multiple, min(high, max(height, width)) + 1, multiple)
                   if (fit := estimate_request(configs, batch, side, side, scale)) and fit.bytes <= available]
        advice = (f"the largest square size that fits is about {fitting[-1]}x{fitting[-1]}" if fitting else
                  "no size fits with this many images at once")
        raise RequestError(f"A {width}x{height} request needs about {needed.bytes / 2**30:.1f} GiB for the "
                           f"{needed.network}'s {needed.part} alone ({batch} latents per UNet call; guidance doubles "
                           f"them), and {available / 2**30:.1f} GiB is free; {advice}. Ask for a smaller size or "
                           "fewer images, or pass memory_check=False (CLI: --no-memory-check) to try anyway.")

    def _encode(self, request: GenerationRequest) -> np.ndarray:
        """Text embeddings for the UNet: [negative..., positive...] when guidance is on."""
        texts = list(request.prompts)
        if request.uses_guidance:
            texts = list(request.negative_prompts) + texts
        fragments = [parse_prompt(text) for text in texts]
        ids, weights = self.tokenizer.weighted(fragments, self.max_prompt_chunks)
        prompts, chunks, length = ids.shape
        # Each 77-token chunk is encoded on its own; the UNet reads the chunks one after another.
        hidden = self.sessions["text_encoder"].run({TEXT_ENCODER.input_ids: ids.reshape(-1, length)})[
            TEXT_ENCODER.hidden_states]
        weights = weights.reshape(-1, length)
        emphasized = (weights != 1).any(axis=1)
        if emphasized.any():  # chunks without weights stay exactly as encoded
            hidden = hidden.copy()
            hidden[emphasized] = weigh_embeddings(hidden[emphasized], weights[emphasized])
        hidden = hidden.reshape(prompts, chunks * length, hidden.shape[-1])
        # Each prompt's embedding repeated num_images_per_prompt times in a row, as diffusers does.
        return np.repeat(hidden, request.num_images_per_prompt, axis=0)

    def _encode_image(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        """Scaled latents of one image: a sample of the VAE encoder's diagonal Gaussian, drawn
        with the seed's own stream (diffusers' DiagonalGaussianDistribution.sample)."""
        if "vae_encoder" not in self.sessions:
            # Opened on the first image-to-image request: text-to-image never holds it in memory.
            component = self.artifact.component_for_role("vae_encoder")
            decoder = self.artifact.component_for_role("vae_decoder").spec.name
            compute = "bf16" if self.precisions[decoder] == "bf16" else "fp32"
            self.sessions["vae_encoder"] = self._backend_module.open_session(
                component, replace(self.options, precision=compute))
        parameters = self.sessions["vae_encoder"].run({VAE_ENCODER.image: pixels})[VAE_ENCODER.parameters]
        mean, log_variance = np.split(parameters, 2, axis=1)
        std = np.exp(np.float32(0.5) * np.clip(log_variance, -30.0, 20.0))  # clamped as diffusers does
        sample = mean + std * gaussian_noise(seed, mean.shape, VAE_SAMPLE_STREAM)
        pipeline = self.artifact.pipeline
        if pipeline.get("vae_shift_factor") is not None:
            sample = sample - np.float32(pipeline["vae_shift_factor"])
        return (sample * np.float32(pipeline["vae_scaling_factor"])).astype(np.float32)

    def _decode(self, latents: np.ndarray) -> np.ndarray:
        pipeline = self.artifact.pipeline
        scaled = latents / np.float32(pipeline["vae_scaling_factor"])
        if pipeline.get("vae_shift_factor") is not None:
            scaled = scaled + np.float32(pipeline["vae_shift_factor"])
        # One image at a time keeps the decoder's peak memory independent of the batch.
        decoder = self.sessions["vae_decoder"]
        return np.concatenate([decoder.run({VAE_DECODER.latents: scaled[i:i + 1]})[VAE_DECODER.image]
                               for i in range(scaled.shape[0])])


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


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def load(artifact: str | os.PathLike, backend: str | None = None, device: str | None = None, *,
         precision: Precision = "fp32",
         num_threads: int | None = None, verify_checksums: bool = True,
         engine_cache: str | os.PathLike | bool | None = None,
         device_loop: bool | None = None, cuda_graph: bool = False,
         static_shapes: bool = True, memory_check: bool = True) -> StableDiffusionPipeline:
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
    more memory than the system has free (sdrt.runtime.memory), saying what size fits.
    """
    backend = best_backend() if backend is None else backend
    device = device or backend_module(backend).DEFAULT_DEVICE  # a missing package fails here, first
    if engine_cache is None:
        engine_cache = device != "cpu"
    options = SessionOptions(device=device, num_threads=num_threads, engine_cache=_engine_cache_folder(engine_cache),
                             device_loop=device_loop, cuda_graph=cuda_graph, static_shapes=static_shapes)
    return StableDiffusionPipeline(open_artifact(Path(artifact), verify_checksums=verify_checksums), backend, options,
                                   precision, memory_check=memory_check)


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
