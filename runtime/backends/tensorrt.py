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
initializer names: run-time LoRA without a rebuild).
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import tensorrt as trt

from ..artifact import Component
from ..cache import default_engine_cache, engine_folder, engine_key
from ..errors import BackendUnavailableError, RequestError
from . import SessionOptions, cast_feeds

DEFAULT_DEVICE = "cuda"
PRECISIONS = ("fp32",)  # an fp16 variant builds with fp16 kernels
WORKSPACE = 8 << 30
_LOGGER = trt.Logger(trt.Logger.WARNING)


def _cudart():
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python before 12.6
        except ImportError as error:
            raise BackendUnavailableError("The tensorrt backend needs cuda-python for device memory: "
                                          "pip install cuda-python.") from error
    return runtime


def _check(result):
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
        if options.precision not in PRECISIONS:
            raise RequestError(f"The tensorrt backend computes in the network's own precision; precision "
                               f"{options.precision!r} is an openvino option.")
        self._cuda = _cudart()
        _check(self._cuda.cudaSetDevice(int(index or 0)))
        properties = _check(self._cuda.cudaGetDeviceProperties(int(index or 0)))
        gpu = properties.name.decode() if isinstance(properties.name, bytes) else str(properties.name)
        shapes = None
        if options.profile:
            shapes = component.spec.shape_profile({axis: bounds[1] for axis, bounds in options.profile.items()},
                                                  {axis: (bounds[0], bounds[2]) for axis, bounds in
                                                   options.profile.items()})
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

    def _refit(self, weights: dict[str, np.ndarray]) -> None:
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


def _build(component: Component, shapes, fp16: bool, refit: bool, timing_cache: Path) -> bytes:
    builder = trt.Builder(_LOGGER)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, _LOGGER)
    if not parser.parse_from_file(str(component.path)):  # external data is read from beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RequestError(f"TensorRT could not parse {component.path.name}: {errors}")
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
        raise RuntimeError(f"TensorRT could not build an engine for {component.spec.name}.")
    _write_atomically(timing_cache, memoryview(config.get_timing_cache().serialize()).tobytes())
    return memoryview(serialized).tobytes()


def _write_atomically(path: Path, data: bytes) -> None:
    """Whole or not at all: a build interrupted leaves no engine file to be loaded."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    partial.write_bytes(data)
    os.replace(partial, path)


def open_session(component: Component, options: SessionOptions) -> TensorRtSession:
    return TensorRtSession(component, options)
