"""The denoising loop with every tensor on the session's device (ONNX Runtime IOBinding).

Each step runs the UNet, then the fused step graph (kernels/sampler_step.onnx: guidance, the
plan's update, the next UNet input), on buffers allocated once and bound by name; histories
rotate by re-binding, not copying. What the loop needs from the host (the first input, the
text embeddings, each step's timestep, coefficient row and noise) goes up before the first
step; the latents come down after the last, or after a step only when the caller asks for
them. `to_device` and `to_host` are the only transfers (tests count them).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnxruntime as ort

from ...kernels.sampler_step import MAX_HISTORY, step_coefficients
from ...kernels.step_graph import LATENT_INPUTS, OUTPUT_INPUTS, STEP_GRAPH
from ..samplers import SamplerPlan

# noise_for_step(step_index, shape) -> standard-normal float32 noise (host)
NoiseSource = Callable[[int, tuple[int, ...]], np.ndarray]


class OrtDeviceLoop:
    def __init__(self, unet: ort.InferenceSession, providers: list, device: str = "cpu", device_id: int = 0):
        self._unet = unet
        self._step = ort.InferenceSession(str(STEP_GRAPH), providers=providers)
        self._device, self._device_id = device, device_id

    def to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, dtype=np.float32), self._device,
                                                self._device_id)

    def to_host(self, value: ort.OrtValue) -> np.ndarray:
        return value.numpy().copy()  # (on the CPU, numpy() may view a buffer the loop reuses)

    def _buffer(self, shape: tuple[int, ...]) -> ort.OrtValue:
        """Device memory, allocated without a transfer."""
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self._device, self._device_id)

    def run(self, plan: SamplerPlan, latents: np.ndarray, embeddings: np.ndarray, guidance_scale: float,
            copies: int, noise_for_step: NoiseSource) -> Iterator[tuple[int, Callable[[], np.ndarray]]]:
        """Yield (step index, a function that fetches the latents after the step, valid until the
        next step) for each step.

        `latents` are the initial latents times plan.init_noise_sigma; `embeddings` the UNet's
        text input for all `copies` of the batch (2 with guidance: unconditional first)."""
        shape = latents.shape
        steps = plan.steps
        # Up front: everything the steps read from the host.
        sample = self.to_device(np.concatenate([np.float32(steps[0].input_scale) * latents] * copies))
        text = self.to_device(embeddings)
        timesteps = [self.to_device(np.full((sample.shape()[0],), step.timestep, np.float32)) for step in steps]
        rows = [self.to_device(row) for row in step_coefficients(steps, guidance_scale if copies > 1 else 1.0)]
        zeros = self.to_device(np.zeros(shape, np.float32))
        noises = [self.to_device(noise_for_step(index, shape)) if step.noise_weight != 0.0 else zeros
                  for index, step in enumerate(steps)]
        history = [self.to_device(latents)] + [zeros] * (MAX_HISTORY - 1)  # x[i], x[i-1], ...
        outputs = [zeros] * (MAX_HISTORY - 1)  # out[i-1], out[i-2], ...
        free_latents = [self._buffer(shape) for _ in range(MAX_HISTORY)]
        free_outputs = [self._buffer(shape) for _ in range(MAX_HISTORY)]
        model_output = self._buffer(sample.shape())

        unet = self._unet.io_binding()
        unet.bind_ortvalue_input("sample", sample)
        unet.bind_ortvalue_input("encoder_hidden_states", text)
        unet.bind_ortvalue_output("out_sample", model_output)
        step = self._step.io_binding()
        step.bind_ortvalue_input("model_output", model_output)
        step.bind_ortvalue_output("next_sample", sample)  # the UNet has read it by then
        for index in range(len(steps)):
            unet.bind_ortvalue_input("timestep", timesteps[index])
            self._unet.run_with_iobinding(unet)
            following, guided = free_latents.pop(), free_outputs.pop()
            for name, value in (*zip(LATENT_INPUTS, history), *zip(OUTPUT_INPUTS, outputs),
                                ("coefficients", rows[index]), ("noise", noises[index])):
                step.bind_ortvalue_input(name, value)
            step.bind_ortvalue_output("next_latents", following)
            step.bind_ortvalue_output("guided_output", guided)
            self._step.run_with_iobinding(step)
            for ring, free, new in ((history, free_latents, following), (outputs, free_outputs, guided)):
                dropped = ring.pop()
                ring.insert(0, new)
                if dropped is not zeros:
                    free.append(dropped)
            yield index, (lambda value=following: self.to_host(value))
