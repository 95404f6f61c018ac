"""One descriptor per network: input/output names, dtypes, symbolic axes and shape ranges.

The exporter builds its dynamic shapes from these and writes them into the manifest; the
runtime builds its feeds from the same names. Symbolic axes are plain strings; an axis that
must be a multiple of something is declared in `ComponentSpec.axis_multiples`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Latent-space range of the exported spatial axes. 8..256 latent pixels covers 64..2048 px
# for an f=8 VAE; the range only bounds the exporter's symbolic shapes and the
# TensorRT-style profiles of later backends.
LATENT_MIN, LATENT_MAX = 8, 256
BATCH_MAX = 64


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64"
    shape: tuple[str | int, ...]  # a symbolic axis name or a fixed size per dimension

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict) -> "TensorSpec":
        return cls(data["name"], data["dtype"], tuple(data["shape"]))


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # folder name in the artifact
    role: str  # how a pipeline uses it: text_encoder | denoiser | vae_decoder | vae_encoder
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # axis -> (min, max); an axis missing here is unbounded.
    axis_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    # axis -> the multiple its size must be (the UNet's down/up-sampling depth).
    axis_multiples: dict[str, int] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def tensor(self, name: str) -> TensorSpec:
        """The input or output called `name`."""
        for tensor in (*self.inputs, *self.outputs):
            if tensor.name == name:
                return tensor
        raise KeyError(f"The {self.name} has no input or output {name!r}.")

    def shape_profile(self, sizes: dict[str, int], ranges: dict[str, tuple[int, int]] | None = None
                      ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT-style (min, opt, max) shapes of every input: `sizes` gives each symbolic axis's
        opt size, `ranges` the (min, max) of the axes allowed to vary (the others are fixed at
        their opt size). Each size is kept inside the axis's range and on its multiple (min
        rounded up, max down); an opt size outside them is refused."""
        bounds = {}
        for axis in {a for t in self.inputs for a in t.shape if isinstance(a, str)}:
            if axis not in sizes:
                raise ValueError(f"The {self.name} profile needs a size for its {axis!r} axis.")
            low, high = self.axis_ranges.get(axis, (1, 2**31 - 1))
            multiple = self.axis_multiples.get(axis, 1)
            opt = sizes[axis]
            if not low <= opt <= high or opt % multiple:
                raise ValueError(f"{axis} = {opt} is outside what the {self.name} takes ({low}..{high}, "
                                 f"multiples of {multiple}).")
            least, most = (ranges or {}).get(axis, (opt, opt))
            least = max(low, -(-min(least, opt) // multiple) * multiple)
            most = min(high, max(most, opt) // multiple * multiple)
            bounds[axis] = (least, opt, most)
        return {t.name: tuple(tuple(bounds[a][i] if isinstance(a, str) else a for a in t.shape) for i in range(3))
                for t in self.inputs}

    def to_json(self) -> dict:
        return {
            "role": self.role,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "axis_ranges": {k: list(v) for k, v in self.axis_ranges.items()},
            "axis_multiples": dict(self.axis_multiples),
        }

    @classmethod
    def from_json(cls, name: str, data: dict) -> "ComponentSpec":
        return cls(
            name=name,
            role=data["role"],
            inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
            axis_ranges={k: tuple(v) for k, v in data.get("axis_ranges", {}).items()},
            axis_multiples=dict(data.get("axis_multiples", {})),
        )


# What each input and output of a role means to a pipeline, and the tensor name it has: the one
# place these names are written. The spec builders below and every runtime feed (pipeline,
# device loops, engines) use them; a family whose networks take more (SDXL's pooled text and
# time ids) adds its inputs here and in its spec, not in the loop.
@dataclass(frozen=True)
class TextEncoderIO:
    input_ids: str = "input_ids"
    hidden_states: str = "last_hidden_state"
    pooled: str = "pooler_output"  # a CLIP text model's pooled output (the end token's state)
    projected: str = "text_embeds"  # a CLIP text model with projection: the pooled output, projected
    # every layer's output, stacked: (layers + 1, batch, sequence, hidden), the embeddings first;
    # the final layer norm applied to each where the family's conditioning reads normed states
    # (the manifest's pipeline.text_encoders[].final_layer_norm). CLIP skip reads an earlier layer.
    layers: str = "hidden_states"


@dataclass(frozen=True)
class DenoiserIO:
    sample: str = "sample"  # the (scaled) latents, with an inpainting UNet's extra channels
    timestep: str = "timestep"
    text: str = "encoder_hidden_states"  # the text encoder's hidden states, chunks one after another
    prediction: str = "out_sample"  # noise, v or flow, as the manifest's prediction_type says
    # SDXL's added conditions: the pooled text projection and the size / aesthetic conditions
    pooled_text: str = "text_embeds"
    time_ids: str = "time_ids"
    # a latent consistency model's guidance embedding (the manifest's pipeline.guidance "embedded")
    guidance: str = "timestep_cond"


@dataclass(frozen=True)
class VaeDecoderIO:
    latents: str = "latent_sample"
    image: str = "sample"


@dataclass(frozen=True)
class VaeEncoderIO:
    image: str = "sample"
    parameters: str = "latent_parameters"  # the diagonal Gaussian's mean and log-variance (AutoencoderKL)
    latents: str = "latents"  # the latents themselves, for an encoder that gives no distribution (AutoencoderTiny)


TEXT_ENCODER, DENOISER, VAE_DECODER, VAE_ENCODER = TextEncoderIO(), DenoiserIO(), VaeDecoderIO(), VaeEncoderIO()


def text_encoder_spec(hidden_size: int, max_length: int, num_layers: int, projection_dim: int | None = None,
                      name: str = "text_encoder") -> ComponentSpec:
    """A CLIP text encoder; `projection_dim`: one with a text projection (SDXL's second)."""
    pooled = (TensorSpec(TEXT_ENCODER.pooled, "float32", ("batch", hidden_size)) if projection_dim is None else
              TensorSpec(TEXT_ENCODER.projected, "float32", ("batch", projection_dim)))
    return ComponentSpec(
        name=name,
        role="text_encoder",
        inputs=(TensorSpec(TEXT_ENCODER.input_ids, "int64", ("batch", "sequence")),),
        outputs=(
            TensorSpec(TEXT_ENCODER.hidden_states, "float32", ("batch", "sequence", hidden_size)),
            pooled,
            TensorSpec(TEXT_ENCODER.layers, "float32", (num_layers + 1, "batch", "sequence", hidden_size)),
        ),
        axis_ranges={"batch": (1, BATCH_MAX), "sequence": (1, max_length)},
    )


def unet_spec(in_channels: int, out_channels: int, text_hidden_size: int, latent_multiple: int,
              pooled_text_size: int | None = None, time_ids: int | None = None,
              guidance_embedding: int | None = None) -> ComponentSpec:
    """The UNet; `pooled_text_size` and `time_ids` (their widths): SDXL's added conditions;
    `guidance_embedding` (its width): a latent consistency model's guidance input."""
    # The sequence axis of the text embeddings is dynamic so that long prompts (several
    # 77-token chunks concatenated) reach the cross-attention unchanged.
    added = () if pooled_text_size is None or time_ids is None else (
        TensorSpec(DENOISER.pooled_text, "float32", ("batch", pooled_text_size)),
        TensorSpec(DENOISER.time_ids, "float32", ("batch", time_ids)))
    if guidance_embedding is not None:
        added += (TensorSpec(DENOISER.guidance, "float32", ("batch", guidance_embedding)),)
    return ComponentSpec(
        name="unet",
        role="denoiser",
        inputs=(
            TensorSpec(DENOISER.sample, "float32", ("batch", in_channels, "latent_height", "latent_width")),
            TensorSpec(DENOISER.timestep, "float32", ("batch",)),
            TensorSpec(DENOISER.text, "float32", ("batch", "sequence", text_hidden_size)),
            *added,
        ),
        outputs=(TensorSpec(DENOISER.prediction, "float32",
                            ("batch", out_channels, "latent_height", "latent_width")),),
        axis_ranges={
            "batch": (1, BATCH_MAX),
            "latent_height": (max(LATENT_MIN, latent_multiple), LATENT_MAX),
            "latent_width": (max(LATENT_MIN, latent_multiple), LATENT_MAX),
            "sequence": (1, 77 * 8),
        },
        axis_multiples={"latent_height": latent_multiple, "latent_width": latent_multiple},
    )


def vae_decoder_spec(latent_channels: int, scale_factor: int, name: str = "vae_decoder") -> ComponentSpec:
    return ComponentSpec(
        name=name,
        role="vae_decoder",
        inputs=(TensorSpec(VAE_DECODER.latents, "float32",
                           ("batch", latent_channels, "latent_height", "latent_width")),),
        outputs=(TensorSpec(VAE_DECODER.image, "float32", ("batch", 3, "height", "width")),),
        axis_ranges={"batch": (1, BATCH_MAX), "latent_height": (1, LATENT_MAX), "latent_width": (1, LATENT_MAX)},
    )


def vae_encoder_spec(latent_channels: int, scale_factor: int, name: str = "vae_encoder",
                     deterministic: bool = False) -> ComponentSpec:
    # The encoder returns the diagonal Gaussian's parameters (mean, log-variance stacked on
    # the channel axis) so that the runtime samples it with its own portable noise; a
    # deterministic one (AutoencoderTiny) returns the latents.
    output = (TensorSpec(VAE_ENCODER.latents, "float32", ("batch", latent_channels, "latent_height", "latent_width"))
              if deterministic else
              TensorSpec(VAE_ENCODER.parameters, "float32",
                         ("batch", 2 * latent_channels, "latent_height", "latent_width")))
    return ComponentSpec(
        name=name,
        role="vae_encoder",
        inputs=(TensorSpec(VAE_ENCODER.image, "float32", ("batch", 3, "height", "width")),),
        outputs=(output,),
        axis_ranges={"batch": (1, BATCH_MAX), "height": (scale_factor, LATENT_MAX * scale_factor),
                     "width": (scale_factor, LATENT_MAX * scale_factor)},
        axis_multiples={"height": scale_factor, "width": scale_factor},
    )


def random_feeds(spec: ComponentSpec, sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for `spec`, its symbolic axes set from `sizes`: token ids in CLIP's range,
    timesteps in (1, 999), standard-normal floats elsewhere. For export checks, tests and benchmarks."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in spec.inputs:
        shape = tuple(sizes[a] if isinstance(a, str) else a for a in tensor.shape)
        if tensor.dtype == "int64":
            feeds[tensor.name] = rng.integers(0, 49406, size=shape, dtype=np.int64)
        elif tensor.name == DENOISER.timestep:
            feeds[tensor.name] = rng.uniform(1, 999, size=shape).astype(np.float32)
        elif tensor.name == DENOISER.time_ids:  # sizes and crops in pixels
            feeds[tensor.name] = rng.integers(0, 1024, size=shape).astype(np.float32)
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds
