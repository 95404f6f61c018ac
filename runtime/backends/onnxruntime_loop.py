"""The denoising loop with every tensor on the session's device (ONNX Runtime IOBinding).

Each step runs the UNet, then the fused step graph (kernels/sampler_step.onnx: guidance, the
plan's update, the next UNet input), on buffers allocated once and bound by name; histories
rotate by re-binding, not copying; the UNet reads and writes the same buffers every step (the
step graph writes its next input and timestep into them). What the loop needs from the host
(the first input, the text embeddings, each step's timestep, coefficient row and noise) goes up
before the first step; the latents come down after the last, or after a step only when the
caller asks for them. `to_device`, `copy_to_device` and `to_host` are the only transfers
(tests count them).
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


class _UnetBuffers:
    """The UNet's inputs and output for one request shape: the same addresses every step."""

    def __init__(self, loop: "OrtDeviceLoop", sample_shape: tuple[int, ...], text_shape: tuple[int, ...],
                 graph_id: int):
        self.sample, self.text = loop._buffer(sample_shape), loop._buffer(text_shape)
        self.timestep, self.output = loop._buffer(sample_shape[:1]), loop._buffer(sample_shape)
        self.graph_id = graph_id


class OrtDeviceLoop:
    """cuda_graphs: the UNet session was opened with ONNX Runtime's CUDA graphs on. Its buffers
    are then kept per request shape (each shape its own graph, by `gpu_graph_id`), so that a
    later request of that shape replays the graph on the addresses it was captured with."""

    def __init__(self, unet: ort.InferenceSession, providers: list, device: str = "cpu", device_id: int = 0,
                 cuda_graphs: bool = False):
        self._unet = unet
        self._step = ort.InferenceSession(str(STEP_GRAPH), providers=providers)
        self._device, self._device_id = device, device_id
        self._cuda_graphs = cuda_graphs
        self._kept: dict[tuple, _UnetBuffers] = {}

    def to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, dtype=np.float32), self._device,
                                                self._device_id)

    def copy_to_device(self, value: ort.OrtValue, array: np.ndarray) -> None:
        """`array` into device memory already allocated (its address unchanged)."""
        value.update_inplace(np.ascontiguousarray(array, dtype=np.float32))

    def to_host(self, value: ort.OrtValue) -> np.ndarray:
        return value.numpy().copy()  # (on the CPU, numpy() may view a buffer the loop reuses)

    def _buffer(self, shape: tuple[int, ...]) -> ort.OrtValue:
        """Device memory, allocated without a transfer."""
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self._device, self._device_id)

    def _unet_buffers(self, sample_shape: tuple[int, ...], text_shape: tuple[int, ...]) -> _UnetBuffers:
        if not self._cuda_graphs:
            return _UnetBuffers(self, sample_shape, text_shape, -1)
        key = (sample_shape, text_shape)
        if key not in self._kept:
            self._kept[key] = _UnetBuffers(self, sample_shape, text_shape, len(self._kept))
        return self._kept[key]

    def run(self, plan: SamplerPlan, latents: np.ndarray, embeddings: np.ndarray, guidance_scale: float,
            copies: int, noise_for_step: NoiseSource) -> Iterator[tuple[int, Callable[[], np.ndarray]]]:
        """Yield (step index, a function that fetches the latents after the step, valid until the
        next step) for each step.

        `latents` are the initial latents times plan.init_noise_sigma; `embeddings` the UNet's
        text input for all `copies` of the batch (2 with guidance: unconditional first)."""
        shape = latents.shape
        steps = plan.steps
        unet_shape = (shape[0] * copies, *shape[1:])
        buffers = self._unet_buffers(unet_shape, embeddings.shape)
        # Up front: everything the steps read from the host.
        self.copy_to_device(buffers.sample, np.concatenate([np.float32(steps[0].input_scale) * latents] * copies))
        self.copy_to_device(buffers.text, embeddings)
        self.copy_to_device(buffers.timestep, np.full(unet_shape[:1], steps[0].timestep, np.float32))
        # each step's step graph writes the next step's timestep into the UNet's buffer
        # (after the last step, the last one again)
        timesteps = [self.to_device(np.full(unet_shape[:1], step.timestep, np.float32))
                     for step in (*steps[1:], steps[-1])]
        rows = [self.to_device(row) for row in step_coefficients(steps, guidance_scale if copies > 1 else 1.0)]
        zeros = self.to_device(np.zeros(shape, np.float32))
        noises = [self.to_device(noise_for_step(index, shape)) if step.noise_weight != 0.0 else zeros
                  for index, step in enumerate(steps)]
        history = [self.to_device(latents)] + [zeros] * (MAX_HISTORY - 1)  # x[i], x[i-1], ...
        outputs = [zeros] * (MAX_HISTORY - 1)  # out[i-1], out[i-2], ...
        free_latents = [self._buffer(shape) for _ in range(MAX_HISTORY)]
        free_outputs = [self._buffer(shape) for _ in range(MAX_HISTORY)]

        unet = self._unet.io_binding()
        unet.bind_ortvalue_input("sample", buffers.sample)
        unet.bind_ortvalue_input("encoder_hidden_states", buffers.text)
        unet.bind_ortvalue_input("timestep", buffers.timestep)
        unet.bind_ortvalue_output("out_sample", buffers.output)
        run_options = None
        if self._cuda_graphs:  # one captured graph per request shape
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(buffers.graph_id))
        step = self._step.io_binding()
        step.bind_ortvalue_input("model_output", buffers.output)
        step.bind_ortvalue_output("next_sample", buffers.sample)  # the UNet has read it by then
        step.bind_ortvalue_output("timestep", buffers.timestep)
        for index in range(len(steps)):
            self._unet.run_with_iobinding(unet, run_options)
            following, guided = free_latents.pop(), free_outputs.pop()
            for name, value in (*zip(LATENT_INPUTS, history), *zip(OUTPUT_INPUTS, outputs),
                                ("coefficients", rows[index]), ("noise", noises[index]),
                                ("next_timestep", timesteps[index])):
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
