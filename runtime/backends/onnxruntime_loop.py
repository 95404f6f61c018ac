"""ONNX Runtime's side of the device-resident denoising loop (runtime/device_loop.py): OrtValues
in the session's device memory, the UNet and kernels/sampler_step.onnx run through IOBinding.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import onnxruntime as ort

from ...kernels.step_graph import STEP_GRAPH
from ...models.components import DENOISER
from ..device_loop import ConditioningShapes, NoiseSource, UnetBuffers, run_on_device, unet_buffers_for
from ..samplers import SamplerPlan


class OrtDeviceLoop:
    """cuda_graphs: the UNet session was opened with ONNX Runtime's CUDA graphs on. Its buffers
    are then kept per request shape (each shape its own graph, by `gpu_graph_id`), so that a
    later request of that shape replays the graph on the addresses it was captured with."""

    def __init__(self, unet: ort.InferenceSession, providers: Sequence[str], device: str = "cpu", device_id: int = 0,
                 cuda_graphs: bool = False):
        self._unet = unet
        self._step = ort.InferenceSession(str(STEP_GRAPH), providers=providers)
        self._device, self._device_id = device, device_id
        self._cuda_graphs = cuda_graphs
        self._kept: dict[tuple, UnetBuffers] | None = {} if cuda_graphs else None

    def buffer(self, shape: tuple[int, ...]) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self._device, self._device_id)

    def to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, dtype=np.float32), self._device,
                                                self._device_id)

    def copy_to_device(self, tensor: ort.OrtValue, array: np.ndarray) -> None:
        tensor.update_inplace(np.ascontiguousarray(array, dtype=np.float32))

    def to_host(self, tensor: ort.OrtValue) -> np.ndarray:
        return tensor.numpy().copy()  # (on the CPU, numpy() may view a buffer the loop reuses)

    def unet_buffers(self, sample_shape: tuple[int, ...], conditioning: ConditioningShapes) -> UnetBuffers:
        return unet_buffers_for(self, self._kept, sample_shape, conditioning)

    def unet_call(self, buffers: UnetBuffers) -> Callable[[], None]:
        binding = self._unet.io_binding()
        for name, value in buffers.inputs.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(DENOISER.prediction, buffers.output)
        options = None
        if self._cuda_graphs:  # one captured graph per request shape
            options = ort.RunOptions()
            options.add_run_config_entry("gpu_graph_id", str(buffers.graph_id))
        return lambda: self._unet.run_with_iobinding(binding, options)

    def step_call(self) -> Callable[[dict, dict], None]:
        binding = self._step.io_binding()

        def step(inputs: dict[str, ort.OrtValue], outputs: dict[str, ort.OrtValue]) -> None:
            for name, value in inputs.items():
                binding.bind_ortvalue_input(name, value)
            for name, value in outputs.items():
                binding.bind_ortvalue_output(name, value)
            self._step.run_with_iobinding(binding)
        return step

    def run(self, plan: SamplerPlan, latents: np.ndarray, conditioning: dict[str, np.ndarray], guidance_scale: float,
            copies: int, noise_for_step: NoiseSource) -> Iterator[tuple[int, Callable[[], np.ndarray]]]:
        """runtime.device_loop.run_on_device on this session's device."""
        return run_on_device(self, plan, latents, conditioning, guidance_scale, copies, noise_for_step)
