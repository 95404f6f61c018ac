"""The denoising loop with every tensor on a device, for any backend that can bind buffers.

Each step runs the UNet, then the fused step (kernels/sampler_step.onnx: guidance, the plan's
update, the next UNet input and timestep) on buffers allocated once. The UNet reads and writes
the same buffers every step (the step writes its next input and timestep into them), so a
backend may capture it as a CUDA graph; the step's histories rotate by re-binding, not copying.
What the loop needs from the host (the first input, the conditioning, each step's timestep,
coefficient row and noise) goes up before the first step; the latents come down after the last,
or after a step only when the caller asks for them. A backend supplies the memory and the two
calls (`Device`); its `to_device`, `copy_to_device` and `to_host` are the only transfers (tests
count them).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from ..kernels.sampler_step import MAX_HISTORY, step_coefficients
from ..kernels.step_graph import LATENT_INPUTS, OUTPUT_INPUTS
from ..models.components import DENOISER
from .samplers import SamplerPlan

# noise_for_step(step_index, shape) -> standard-normal float32 noise (host)
NoiseSource = Callable[[int, tuple[int, ...]], np.ndarray]
Tensor = Any  # a backend's device buffer


# the denoiser's conditioning inputs by name (runtime.models.components.DenoiserIO) -> their shapes
ConditioningShapes = tuple[tuple[str, tuple[int, ...]], ...]


class UnetBuffers:
    """The denoiser's inputs (by name) and output for one request shape: the same addresses
    every step. graph_id: the CUDA graph captured on them (-1: none)."""

    def __init__(self, device: "Device", sample_shape: tuple[int, ...], conditioning: ConditioningShapes,
                 graph_id: int = -1):
        self.inputs = {DENOISER.sample: device.buffer(sample_shape),
                       DENOISER.timestep: device.buffer(sample_shape[:1]),
                       **{name: device.buffer(shape) for name, shape in conditioning}}
        self.output = device.buffer(sample_shape)
        self.graph_id = graph_id

    @property
    def sample(self) -> Tensor:
        return self.inputs[DENOISER.sample]

    @property
    def timestep(self) -> Tensor:
        return self.inputs[DENOISER.timestep]


def unet_buffers_for(device: "Device", kept: dict[tuple, UnetBuffers] | None, sample_shape: tuple[int, ...],
                     conditioning: ConditioningShapes) -> UnetBuffers:
    """New buffers for a request; or, for a backend that captures CUDA graphs (`kept` not None),
    the buffers kept for this request shape, each shape with a graph id of its own."""
    if kept is None:
        return UnetBuffers(device, sample_shape, conditioning)
    key = (sample_shape, conditioning)
    if key not in kept:
        kept[key] = UnetBuffers(device, sample_shape, conditioning, len(kept))
    return kept[key]


class DeviceLoop(Protocol):
    """What a denoiser session's device_loop() returns (backends whose Capabilities.device_loop is set)."""

    def run(self, plan: SamplerPlan, latents: np.ndarray, conditioning: dict[str, np.ndarray], guidance_scale: float,
            copies: int, noise_for_step: NoiseSource) -> Iterator[tuple[int, Callable[[], np.ndarray]]]:
        """run_on_device on the backend's device."""
        ...


class Device(Protocol):
    def buffer(self, shape: tuple[int, ...]) -> Tensor:
        """float32 device memory, allocated without a transfer."""
        ...

    def to_device(self, array: np.ndarray) -> Tensor: ...

    def copy_to_device(self, tensor: Tensor, array: np.ndarray) -> None:
        """`array` into memory already allocated (its address unchanged)."""
        ...

    def to_host(self, tensor: Tensor) -> np.ndarray: ...

    def unet_buffers(self, sample_shape: tuple[int, ...], conditioning: ConditioningShapes) -> UnetBuffers:
        """This request's UNet buffers (kept per shape by a backend that captures graphs)."""
        ...

    def unet_call(self, buffers: UnetBuffers) -> Callable[[], None]:
        """A function that runs the UNet once on `buffers` (bound once, here)."""
        ...

    def step_call(self) -> Callable[[dict[str, Tensor], dict[str, Tensor]], None]:
        """A function that runs the step graph on the given inputs and outputs by name."""
        ...


def run_on_device(device: Device, plan: SamplerPlan, latents: np.ndarray, conditioning: dict[str, np.ndarray],
                  guidance_scale: float, copies: int,
                  noise_for_step: NoiseSource) -> Iterator[tuple[int, Callable[[], np.ndarray]]]:
    """Yield (step index, a function that fetches the latents after the step, valid until the
    next step) for each step.

    `latents` are the initial latents times plan.init_noise_sigma; `conditioning` the denoiser's
    other inputs by name (the text embeddings...) for all `copies` of the batch (2 with
    guidance: unconditional first)."""
    shape = latents.shape
    steps = plan.steps
    unet_shape = (shape[0] * copies, *shape[1:])
    buffers = device.unet_buffers(unet_shape, tuple((name, value.shape) for name, value in conditioning.items()))
    # Up front: everything the steps read from the host.
    device.copy_to_device(buffers.sample, np.concatenate([np.float32(steps[0].input_scale) * latents] * copies))
    for name, value in conditioning.items():
        device.copy_to_device(buffers.inputs[name], value)
    device.copy_to_device(buffers.timestep, np.full(unet_shape[:1], steps[0].timestep, np.float32))
    # each step writes the next step's timestep into the UNet's buffer (after the last, the last again)
    timesteps = [device.to_device(np.full(unet_shape[:1], step.timestep, np.float32))
                 for step in (*steps[1:], steps[-1])]
    rows = [device.to_device(row) for row in step_coefficients(steps, guidance_scale if copies > 1 else 1.0)]
    zeros = device.to_device(np.zeros(shape, np.float32))
    noises = [device.to_device(noise_for_step(index, shape)) if step.noise_weight != 0.0 else zeros
              for index, step in enumerate(steps)]
    history = [device.to_device(latents)] + [zeros] * (MAX_HISTORY - 1)  # x[i], x[i-1], ...
    outputs = [zeros] * (MAX_HISTORY - 1)  # out[i-1], out[i-2], ...
    free_latents = [device.buffer(shape) for _ in range(MAX_HISTORY)]
    free_outputs = [device.buffer(shape) for _ in range(MAX_HISTORY)]

    unet, step = device.unet_call(buffers), device.step_call()
    for index in range(len(steps)):
        unet()
        following, guided = free_latents.pop(), free_outputs.pop()
        step({"model_output": buffers.output, **dict(zip(LATENT_INPUTS, history)),
              **dict(zip(OUTPUT_INPUTS, outputs)), "coefficients": rows[index], "noise": noises[index],
              "next_timestep": timesteps[index]},
             {"next_latents": following, "guided_output": guided, "next_sample": buffers.sample,
              "timestep": buffers.timestep})
        for ring, free, new in ((history, free_latents, following), (outputs, free_outputs, guided)):
            dropped = ring.pop()
            ring.insert(0, new)
            if dropped is not zeros:
                free.append(dropped)
        yield index, (lambda value=following: device.to_host(value))
