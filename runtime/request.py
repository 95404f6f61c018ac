"""One generation request, validated where it enters: what `pipe(...)` was asked, as plain data.

The pipeline builds a GenerationRequest from its keyword arguments (StableDiffusionPipeline.request)
and runs it through named stages; every argument is checked here, before any network runs, with
a sentence that says what to change.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import numpy as np

from .errors import RequestError
from .samplers import SamplerPlan

OUTPUT_TYPES = ("pil", "np", "latent")
# how the starting latents are made: from noise, from an image, from an image and a mask
TASKS = ("txt2img", "img2img", "inpaint")


@dataclass(frozen=True)
class ImageInput:
    """Image-to-image and inpainting: the input image, and where to repaint it."""

    pixels: np.ndarray | None  # (1, 3, height, width) in [-1, 1]; None when the image came as latents
    mask: np.ndarray | None = None  # inpainting: (1, 1, height, width), 1 where to repaint
    keep_unmasked: bool = True  # inpainting: put the input's pixels back outside the mask
    mask_blur: float = 0.0  # inpainting: the seam's softness (Gaussian sigma, pixels)
    latents: np.ndarray | None = None  # image-to-image from latents (a base model's output): no VAE encoding


Size = tuple[int, int]


@dataclass(frozen=True)
class SizeConditions:
    """SDXL's size and crop conditioning (Podell et al. 2023, section 2.2) and the refiner's
    aesthetic score, as diffusers' keywords: (height, width) and (top, left) pairs. A size left
    None is the request's (negative_values says the unconditional half's defaults)."""

    original_size: Size | None = None
    crops_coords_top_left: Size = (0, 0)
    target_size: Size | None = None
    aesthetic_score: float = 6.0
    negative_original_size: Size | None = None
    negative_crops_coords_top_left: Size | None = None
    negative_target_size: Size | None = None
    negative_aesthetic_score: float = 2.5

    @classmethod
    def of(cls, original_size, crops_coords_top_left, target_size, aesthetic_score, negative_original_size,
           negative_crops_coords_top_left, negative_target_size, negative_aesthetic_score) -> "SizeConditions":
        """Checked values: sizes positive and crops non-negative integer pairs, scores finite numbers."""
        pairs = {"original_size": (original_size, 1), "crops_coords_top_left": (crops_coords_top_left, 0),
                 "target_size": (target_size, 1), "negative_original_size": (negative_original_size, 1),
                 "negative_crops_coords_top_left": (negative_crops_coords_top_left, 0),
                 "negative_target_size": (negative_target_size, 1)}
        checked: dict = {}
        for name, (value, least) in pairs.items():
            if value is None:
                checked[name] = None
                continue
            if (not isinstance(value, (tuple, list)) or len(value) != 2
                    or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= least
                               for v in value)):
                kind = "sizes" if least else "offsets"
                raise RequestError(f"{name} must be a pair of integer {kind} in pixels (height, width), each >= "
                                   f"{least}, got {value!r}.")
            checked[name] = (int(value[0]), int(value[1]))
        scores = {"aesthetic_score": aesthetic_score, "negative_aesthetic_score": negative_aesthetic_score}
        for name, value in scores.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RequestError(f"{name} must be a finite number, got {value!r}.")
            checked[name] = float(value)
        return cls(**checked)

    def values(self, height: int, width: int) -> dict[str, tuple[float, ...]]:
        """The positive time-id fields by name (runtime.conditioning.TIME_ID_FIELDS)."""
        return {"original_size": self.original_size or (height, width),
                "crops_coords_top_left": self.crops_coords_top_left,
                "target_size": self.target_size or (height, width), "aesthetic_score": (self.aesthetic_score,)}

    def negative_values(self, height: int, width: int) -> dict[str, tuple[float, ...]]:
        """The unconditional half's fields: the positive ones (but the aesthetic score) when no
        negative size or crop is given, as diffusers' SDXL pipeline; else each negative size
        defaults to its positive one and the crop to (0, 0), as diffusers' keywords do."""
        positive = self.values(height, width)
        given = (self.negative_original_size, self.negative_crops_coords_top_left, self.negative_target_size)
        crops = positive["crops_coords_top_left"] if given == (None, None, None) else (0, 0)
        return {"original_size": self.negative_original_size or positive["original_size"],
                "crops_coords_top_left": self.negative_crops_coords_top_left or crops,
                "target_size": self.negative_target_size or positive["target_size"],
                "aesthetic_score": (self.negative_aesthetic_score,)}


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request; built by StableDiffusionPipeline.request."""

    task: str  # one of TASKS
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    seed: int
    plan: SamplerPlan  # compiled once, from the sampler name, step count and strength
    num_images_per_prompt: int
    output_type: str
    latents: np.ndarray | None = None  # the caller's standard-normal initial latents
    image: ImageInput | None = None
    watermark: bool = False
    prompts_2: tuple[str, ...] | None = None  # SDXL's second text encoder (default: prompts)
    negative_prompts_2: tuple[str, ...] | None = None
    zero_negative: bool = False  # zero embeddings for the negative half (SDXL base without a negative prompt)
    clip_skip: int = 0
    size_conditions: SizeConditions = SizeConditions()
    embedded_guidance: bool = False  # the UNet takes guidance as an input (a latent consistency model)

    @property
    def batch_size(self) -> int:
        return len(self.prompts) * self.num_images_per_prompt

    @property
    def uses_guidance(self) -> bool:
        """Classifier-free guidance: an unconditional and a conditional half in every UNet call."""
        return self.copies == 2

    @property
    def copies(self) -> int:
        """How many times the latents go into each denoiser call: unconditional and conditional."""
        return 1 if self.embedded_guidance else guidance_copies(self.guidance_scale)


def guidance_copies(guidance_scale: float) -> int:
    """2 when guidance is on (guidance_scale > 1, as diffusers), else 1."""
    return 2 if guidance_scale > 1.0 else 1


def prompt_lists(prompt, negative_prompt) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(prompts, one negative prompt each)."""
    prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError("prompt must be a string or a non-empty list of strings.")
    if negative_prompt is None:
        return prompts, ("",) * len(prompts)
    if isinstance(negative_prompt, str):
        return prompts, (negative_prompt,) * len(prompts)
    negatives = tuple(negative_prompt)
    if len(negatives) != len(prompts):
        raise RequestError(f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts; "
                           "give one per prompt or a single string.")
    return prompts, negatives


def mask_blur_value(mask_blur) -> float:
    if not isinstance(mask_blur, (int, float)) or isinstance(mask_blur, bool) or not 0 <= mask_blur <= 64:
        raise RequestError(f"mask_blur must be a number of pixels in [0, 64], got {mask_blur!r}.")
    return float(mask_blur)


def guidance_value(guidance) -> float:
    try:
        value = float(guidance)
    except (TypeError, ValueError):
        raise RequestError(f"guidance_scale must be a number >= 0, got {guidance!r}.") from None
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise RequestError(f"guidance_scale must be a finite number >= 0, got {guidance!r}.")
    return value


def size_value(height, width, multiple: int) -> tuple[int, int]:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise RequestError(f"{name} must be a positive integer, got {value!r}.")
    if height % multiple or width % multiple:
        hint = f"{_round_to(height, multiple)}x{_round_to(width, multiple)}"
        raise RequestError(f"height and width must be multiples of {multiple} for this model, got "
                           f"{height}x{width}; try {hint}.")
    return height, width


def images_per_prompt_value(per_prompt) -> int:
    if isinstance(per_prompt, bool) or not isinstance(per_prompt, int) or per_prompt < 1:
        raise RequestError(f"num_images_per_prompt must be an integer >= 1, got {per_prompt!r}.")
    return per_prompt


def output_type_value(output_type) -> str:
    if output_type not in OUTPUT_TYPES:
        raise RequestError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}.")
    return output_type


def seed_value(seed) -> int:
    """The seed as an int (numpy integers too); a fresh random one for None."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little") >> 1
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**64:
        raise RequestError(f"seed must be an integer in [0, 2**64), got {seed!r}.")
    return int(seed)


def clip_skip_value(clip_skip, most: int) -> int:
    if clip_skip is None:
        return 0
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, numbers.Integral) or not 0 <= int(clip_skip) <= most:
        raise RequestError(f"clip_skip must be an integer in [0, {most}] for this model (0: the layer it was trained "
                           f"with; the web UIs' \"CLIP skip 2\" is clip_skip=1), got {clip_skip!r}.")
    return int(clip_skip)


def vae_tiling_value(vae_tiling, multiple: int) -> bool | int:
    if isinstance(vae_tiling, bool):
        return vae_tiling
    if not isinstance(vae_tiling, numbers.Integral) or int(vae_tiling) < multiple or int(vae_tiling) % multiple:
        raise RequestError(f"vae_tiling is True, False or a tile size in pixels, a multiple of {multiple} for this "
                           f"model; got {vae_tiling!r}.")
    return int(vae_tiling)


def latent_image(image, channels: int) -> np.ndarray | None:
    """`image` as latents when it is a 4-D array of `channels` channels (a base model's
    output_type="latent"), else None (a picture)."""
    if not isinstance(image, np.ndarray) or image.ndim != 4:
        return None
    if image.shape[1] != channels or not np.issubdtype(image.dtype, np.floating):
        raise RequestError(f"A 4-D image= array is taken as latents (batch, {channels}, latent height, latent width) "
                           f"of floats; got shape {image.shape} of {image.dtype}.")
    if not np.isfinite(image).all():
        raise RequestError("The latents given as image= hold NaN or infinite values.")
    return image.astype(np.float32)


def latents_value(latents, shape: tuple[int, ...]) -> np.ndarray | None:
    if latents is None:
        return None
    latents = np.asarray(latents, dtype=np.float32)
    if latents.shape != shape:
        raise RequestError(f"latents must have shape {shape} for this request, got {latents.shape}.")
    return latents


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)
