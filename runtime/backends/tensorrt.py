"""Native TensorRT engines built from the artifact's ONNX files, on NVIDIA GPUs.

Written against TensorRT 10's documented Python API and cuda-python's runtime bindings.
TensorRT cannot be installed on the machines sdrt is developed on (its packages download from
NVIDIA's own index), so this file has not run yet; its pure parts (the engine key, the shape
profile) are tested, and the README's support table says so.

The engine's life, in the verbs of TensorRT's demo/Diffusion: build (the ONNX parser fills the
network, one optimization profile from the component's descriptor and the pipeline's profile,
fp16 kernels for an fp16 variant, refittable when weights are to be replaced, the timing cache
reused and saved), store (a file named by runtime.cache.engine_key in the engine cache), load
(deserialize), run (device buffers, execute_async_v3), refit (replaced weights by their ONNX
initializer names: run-time LoRA without a rebuild). The denoiser also runs the device-resident
loop (runtime/device_loop.py): the step graph (kernels/sampler_step.onnx) as an engine of its
own, every tensor in device memory, and with cuda_graph the UNet's call captured as a CUDA
graph per request shape (TensorRT's way: one enqueue first, then capture on the stream).
"""
from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorrt as trt  # pyright: ignore[reportMissingModuleSource]  (typings/tensorrt.pyi: not installable here)

from ...kernels.step_graph import STEP_GRAPH, step_shape_profile
from ...models.components import DENOISER
from ..artifact import Component
from ..cache import content_key, default_engine_cache, engine_folder, engine_key
from ..device_loop import ConditioningShapes, NoiseSource, UnetBuffers, run_on_device, unet_buffers_for
from ..errors import BackendUnavailableError, RequestError
from ..samplers import SamplerPlan
from . import Capabilities, SessionOptions, cast_feeds
from .shape_profiles import input_shapes

# precisions: the network's own (an fp16 variant builds with fp16 kernels)
CAPABILITIES = Capabilities(devices=("cuda",), default_device="cuda", precisions=("fp32",), device_loop=True,
                            cuda_graphs=True, shape_profiles=True)
WORKSPACE = 8 << 30
_LOGGER = trt.Logger(trt.Logger.WARNING)


def _cudart():
    # (cuda-python, like TensorRT, is not installable where sdrt is type-checked)
    try:
        from cuda.bindings import runtime  # pyright: ignore[reportMissingImports]
    except ImportError:
        try:
            from cuda import cudart as runtime  # pyright: ignore[reportMissingImports]  (cuda-python before 12.6)
        except ImportError as error:
            raise BackendUnavailableError("The tensorrt backend needs cuda-python for device memory: "
                                          "pip install cuda-python.") from error
    return runtime


def _check(result) -> Any:
    """cuda-python returns (error, values...): raise on an error, return the values."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise RuntimeError(f"CUDA call failed: {error}")
    return values[0] if len(values) == 1 else values


class _DeviceBuffer:
    def __init__(self, cuda, nbytes: int):
        self._cuda, self.nbytes = cuda, max(nbytes, 1)
        self.pointer = _check(cuda.cudaMalloc(self.nbytes))

    def __del__(self):
        if getattr(self, "pointer", None) is not None:
            self._cuda.cudaFree(self.pointer)


class TensorRtSession:
    def __init__(self, component: Component, options: SessionOptions):
        kind, _, index = options.device.partition(":")
        if kind != "cuda" or (index and not index.isdigit()):
            raise RequestError(f"The tensorrt backend runs on: cuda (cuda:N for GPU N); got device {options.device!r}.")
        if component.entry.get("format", "onnx") != "onnx":
            raise RequestError(f"The {component.precision} {component.spec.name} is not a plain ONNX network (its "
                               f"format: {component.entry['format']}); the tensorrt backend builds engines from ONNX "
                               "networks (fp32, fp16).")
        if options.precision not in CAPABILITIES.precisions:
            raise RequestError(f"The tensorrt backend computes in the network's own precision; precision "
                               f"{options.precision!r} is an openvino option.")
        self._cuda = _cudart()
        _check(self._cuda.cudaSetDevice(int(index or 0)))
        properties = _check(self._cuda.cudaGetDeviceProperties(int(index or 0)))
        gpu = properties.name.decode() if isinstance(properties.name, bytes) else str(properties.name)
        shapes = None
        if options.profile:
            shapes = input_shapes(component, options.profile)
        fp16, refit = component.precision == "fp16", bool(options.weights)
        settings = {"tensorrt": trt.__version__, "gpu": gpu, "sm": f"{properties.major}.{properties.minor}",
                    "shapes": shapes, "fp16": fp16, "refit": refit}
        folder = engine_folder(options.engine_cache or default_engine_cache(), component, "tensorrt",
                               trt.__version__, f"{gpu} sm{properties.major}{properties.minor}")
        folder.mkdir(parents=True, exist_ok=True)
        plan = folder / f"{engine_key(component, settings)}.plan"
        if not plan.is_file():
            _write_atomically(plan, _build(component, shapes, fp16, refit, folder / "timing.cache"))
        self._engine = trt.Runtime(_LOGGER).deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not load {plan}; delete it to rebuild.")
        if options.weights:
            self._refit(options.weights)
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cuda.cudaStreamCreate())
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.input_names = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self._dtypes = {t.name: t.dtype for t in component.spec.inputs}
        self._buffers: dict[str, _DeviceBuffer] = {}
        self._shapes, self._folder, self._settings = shapes, folder, settings
        self._cuda_graph = options.cuda_graph and component.spec.role == "denoiser"
        self._loop: TrtDeviceLoop | None = None

    def device_loop(self) -> "TrtDeviceLoop":
        """The denoising loop on this engine's GPU (made once: it holds the step engine)."""
        if self._loop is None:
            if not self._shapes or DENOISER.sample not in self._shapes:
                raise RequestError("The tensorrt device loop needs the UNet's shape profile; load through "
                                   "sdrt.load, which sets it.")
            sample = self._shapes[DENOISER.sample]
            profile = step_shape_profile(sample)
            graph = hashlib.sha256(STEP_GRAPH.read_bytes()).hexdigest()
            plan = self._folder / f"{content_key('sampler_step', (graph,), {**self._settings, 'shapes': profile})}.plan"
            if not plan.is_file():
                _write_atomically(plan, _build_file(STEP_GRAPH, "the sampler step", profile, False, False,
                                                    self._folder / "timing.cache"))
            engine = trt.Runtime(_LOGGER).deserialize_cuda_engine(plan.read_bytes())
            if engine is None:
                raise RuntimeError(f"TensorRT could not load {plan}; delete it to rebuild.")
            self._loop = TrtDeviceLoop(self._cuda, self._stream, self._context, engine, self._cuda_graph)
        return self._loop

    def _refit(self, weights: Mapping[str, np.ndarray]) -> None:
        refitter = trt.Refitter(self._engine, _LOGGER)
        refittable = set(refitter.get_all_weights())
        for name, array in weights.items():
            if name not in refittable:
                raise RequestError(f"TensorRT's engine has no refittable weight {name!r} (a longer token table, for "
                                   "textual inversion, needs the onnxruntime or openvino backend).")
            if not refitter.set_named_weights(name, trt.Weights(np.ascontiguousarray(array))):
                raise RequestError(f"TensorRT refused the new values of {name!r} (its shape or type changed).")
        if not refitter.refit_cuda_engine():
            raise RuntimeError(f"TensorRT could not refit the engine (missing: {refitter.get_missing_weights()}).")

    def _buffer(self, name: str, nbytes: int) -> _DeviceBuffer:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            buffer = self._buffers[name] = _DeviceBuffer(self._cuda, nbytes)
        return buffer

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self._cuda
        copy_in, copy_out = cuda.cudaMemcpyKind.cudaMemcpyHostToDevice, cuda.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, value in cast_feeds(feeds, self._dtypes).items():
            buffer = self._buffer(name, value.nbytes)
            _check(cuda.cudaMemcpyAsync(buffer.pointer, value.ctypes.data, value.nbytes, copy_in, self._stream))
            self._context.set_input_shape(name, value.shape)
            self._context.set_tensor_address(name, buffer.pointer)
        outputs = {}
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            outputs[name] = np.empty(shape, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))
            self._context.set_tensor_address(name, self._buffer(name, outputs[name].nbytes).pointer)
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT failed to run the engine.")
        for name, array in outputs.items():
            _check(cuda.cudaMemcpyAsync(array.ctypes.data, self._buffers[name].pointer, array.nbytes, copy_out,
                                        self._stream))
        _check(cuda.cudaStreamSynchronize(self._stream))
        return {name: value.astype(np.float32, copy=False) for name, value in outputs.items()}


class _DeviceTensor:
    """A float32 tensor in device memory."""

    def __init__(self, cuda, shape: tuple[int, ...]):
        self.shape = tuple(shape)
        self.memory = _DeviceBuffer(cuda, int(np.prod(self.shape)) * 4)
        self.pointer = self.memory.pointer


class TrtDeviceLoop:
    """runtime.device_loop.Device on a TensorRT UNet engine: cudaMalloc'd tensors, the UNet's
    and the step engine's tensors addressed by name, one stream; with cuda_graph the UNet's
    call is a CUDA graph, captured once per request shape on buffers kept for that shape."""

    def __init__(self, cuda, stream, unet_context, step_engine, cuda_graph: bool):
        self._cuda, self._stream, self._unet = cuda, stream, unet_context
        self._step_engine = step_engine  # (its context needs it alive)
        self._step = step_engine.create_execution_context()
        self._kept: dict[tuple, UnetBuffers] | None = {} if cuda_graph else None
        self._graphs: dict[int, object] = {}  # graph id -> the instantiated CUDA graph

    def buffer(self, shape: tuple[int, ...]) -> _DeviceTensor:
        return _DeviceTensor(self._cuda, shape)

    def to_device(self, array: np.ndarray) -> _DeviceTensor:
        tensor = self.buffer(array.shape)
        self.copy_to_device(tensor, array)
        return tensor

    def copy_to_device(self, tensor: _DeviceTensor, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=np.float32)
        _check(self._cuda.cudaMemcpyAsync(tensor.pointer, array.ctypes.data, array.nbytes,
                                          self._cuda.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
        _check(self._cuda.cudaStreamSynchronize(self._stream))  # the host array may go now

    def to_host(self, tensor: _DeviceTensor) -> np.ndarray:
        array = np.empty(tensor.shape, np.float32)
        _check(self._cuda.cudaMemcpyAsync(array.ctypes.data, tensor.pointer, array.nbytes,
                                          self._cuda.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream))
        _check(self._cuda.cudaStreamSynchronize(self._stream))
        return array

    def unet_buffers(self, sample_shape: tuple[int, ...], conditioning: ConditioningShapes) -> UnetBuffers:
        return unet_buffers_for(self, self._kept, sample_shape, conditioning)

    def unet_call(self, buffers: UnetBuffers) -> Callable[[], None]:
        cuda, stream, context = self._cuda, self._stream, self._unet
        for name, tensor in buffers.inputs.items():
            context.set_input_shape(name, tensor.shape)
            context.set_tensor_address(name, tensor.pointer)
        context.set_tensor_address(DENOISER.prediction, buffers.output.pointer)

        def run() -> None:
            if not context.execute_async_v3(stream):
                raise RuntimeError("TensorRT failed to run the UNet engine.")
        if buffers.graph_id < 0:
            return run
        graph = self._graphs.get(buffers.graph_id)
        if graph is None:  # TensorRT's recipe: one enqueue for its shape-dependent setup, then capture
            run()
            _check(cuda.cudaStreamSynchronize(stream))
            _check(cuda.cudaStreamBeginCapture(stream, cuda.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
            run()
            graph = _check(cuda.cudaGraphInstantiate(_check(cuda.cudaStreamEndCapture(stream)), 0))
            self._graphs[buffers.graph_id] = graph
        return lambda: _check(cuda.cudaGraphLaunch(graph, stream))

    def step_call(self) -> Callable[[dict[str, _DeviceTensor], dict[str, _DeviceTensor]], None]:
        context, stream = self._step, self._stream

        def step(inputs: dict[str, _DeviceTensor], outputs: dict[str, _DeviceTensor]) -> None:
            for name, tensor in inputs.items():
                context.set_input_shape(name, tensor.shape)
                context.set_tensor_address(name, tensor.pointer)
            for name, tensor in outputs.items():
                context.set_tensor_address(name, tensor.pointer)
            if not context.execute_async_v3(stream):
                raise RuntimeError("TensorRT failed to run the sampler step engine.")
        return step

    def run(self, plan: SamplerPlan, latents: np.ndarray, conditioning: dict[str, np.ndarray], guidance_scale: float,
            copies: int, noise_for_step: NoiseSource):
        """runtime.device_loop.run_on_device on this engine's GPU."""
        return run_on_device(self, plan, latents, conditioning, guidance_scale, copies, noise_for_step)


def _build(component: Component, shapes, fp16: bool, refit: bool, timing_cache: Path) -> bytes:
    return _build_file(component.path, component.spec.name, shapes, fp16, refit, timing_cache)


def _build_file(path: Path, what: str, shapes, fp16: bool, refit: bool, timing_cache: Path) -> bytes:
    builder = trt.Builder(_LOGGER)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, _LOGGER)
    if not parser.parse_from_file(str(path)):  # external data is read from beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RequestError(f"TensorRT could not parse {path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (least, best, most) in shapes.items():
            profile.set_shape(name, least, best, most)
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine for {what}.")
    _write_atomically(timing_cache, memoryview(config.get_timing_cache().serialize()).tobytes())
    return memoryview(serialized).tobytes()


def _write_atomically(path: Path, data: bytes) -> None:
    """Whole or not at all: a build interrupted leaves no engine file to be loaded."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    partial.write_bytes(data)
    os.replace(partial, path)


def open_session(component: Component, options: SessionOptions) -> TensorRtSession:
    return TensorRtSession(component, options)
