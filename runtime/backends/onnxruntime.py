"""ONNX Runtime backend: the CPU, CUDA, TensorRT and DirectML execution providers
(onnxruntime_devices.py), and a device-resident denoising loop (onnxruntime_loop.py)."""
from __future__ import annotations

import contextlib
import mmap
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import numpy as np
import onnxruntime as ort

from ..artifact import Component
from ..cache import engine_folder
from ..errors import RequestError
from ..onnx_proto import initializers, with_external_weights
from . import Capabilities, SessionOptions, cast_feeds
from .onnxruntime_devices import PROVIDERS, check_available, parse_device, provider_chain
from .onnxruntime_loop import OrtDeviceLoop
from .shape_profiles import input_shapes

# CUDA graphs: on the cuda device, for the device loop's UNet; shape profiles: the tensorrt device's engines
CAPABILITIES = Capabilities(devices=tuple(PROVIDERS), default_device="cpu", precisions=("fp32",), device_loop=True,
                            cuda_graphs=True, shape_profiles=True)
# where each device kind keeps OrtValues (IOBinding)
TENSOR_DEVICES = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda", "dml": "dml"}
# the name replaced weights are given as an external-data file that exists only in memory
REPLACED_WEIGHTS = "sdrt-replaced-weights.bin"


class OnnxRuntimeSession:
    def __init__(self, component: Component, options: SessionOptions):
        kind, index = parse_device(options.device)
        form = component.entry.get("format", "onnx")
        if form == "onnxruntime-cuda" and kind != "cuda":
            raise RequestError(f"The {component.precision} {component.spec.name} holds operators only ONNX Runtime's "
                               f"CUDA provider runs; load it with device='cuda', or choose precision='fp16' (the "
                               "portable fp16, which device='cuda' also takes).")
        if form not in ("onnx", "onnxruntime", "onnxruntime-cuda"):
            raise RequestError(f"The {component.precision} {component.spec.name} is an OpenVINO model "
                               f"({component.path.name}); run it with backend='openvino', or choose another "
                               "precision for this network"
                               + (" (`sdrt quantize --precision int8-qdq` makes ONNX Runtime's int8 form)."
                                  if component.precision == "int8" else "."))
        if options.precision not in CAPABILITIES.precisions:
            raise RequestError(f"The onnxruntime backend runs the fp32 artifact as exported; precision "
                               f"{options.precision!r} is an openvino option (use backend='openvino').")
        if options.cuda_graph and kind != "cuda":
            raise RequestError(f"cuda_graph needs ONNX Runtime's CUDA provider (device='cuda'); got device "
                               f"{options.device!r}.")
        check_available(kind, ort.get_available_providers())
        # the UNet's calls in the device loop are captured; the other networks run as they come
        self._cuda_graph = options.cuda_graph and component.spec.role == "denoiser"
        shapes = folder = None
        if kind == "tensorrt":  # engines built for a range of shapes, kept in the engine cache
            if options.profile:
                shapes = input_shapes(component, options.profile)
            if options.engine_cache:
                folder = engine_folder(options.engine_cache, component, "onnxruntime", ort.__version__, options.device)
                folder.mkdir(parents=True, exist_ok=True)
        providers = provider_chain(kind, index, engine_folder=folder, shapes=shapes,
                                   fp16=component.precision == "fp16", cuda_graph=self._cuda_graph)
        settings = ort.SessionOptions()
        settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        settings.log_severity_level = 3
        if options.num_threads:
            settings.intra_op_num_threads = options.num_threads
        if kind == "dml":  # DirectML takes neither memory patterns nor parallel execution
            settings.enable_mem_pattern = False
            settings.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        with _replaced_weights(settings, component.path, options.weights or {}) as source:
            self._session = ort.InferenceSession(source, settings, providers=[name for name, _ in providers],
                                                 provider_options=[values for _, values in providers])
        self._device = (TENSOR_DEVICES[kind], index)
        self._loop: OrtDeviceLoop | None = None
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self._dtypes = {t.name: t.dtype for t in component.spec.inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        options = None
        if self._cuda_graph:  # host arrays move between calls: never captured
            options = ort.RunOptions()
            options.add_run_config_entry("gpu_graph_id", "-1")
        outputs = self._session.run(self.output_names, cast_feeds(feeds, self._dtypes), options)
        # (run's type allows sparse tensors, sequences and maps; sdrt's networks output dense tensors)
        return dict(zip(self.output_names, cast(list[np.ndarray], outputs)))

    def device_loop(self) -> OrtDeviceLoop:
        """The denoising loop on this UNet session's device, through IOBinding (made once: it
        holds the step graph's session)."""
        if self._loop is None:
            self._loop = OrtDeviceLoop(self._session, self._session.get_providers(), *self._device,
                                       cuda_graphs=self._cuda_graph)
        return self._loop


@contextlib.contextmanager
def _replaced_weights(settings: ort.SessionOptions, path: Path, weights: Mapping[str, np.ndarray]):
    """The model to load (its path, or its bytes) with `weights` in place of the initializers of
    those names, set up in `settings`; what ONNX Runtime reads stays alive until it has loaded.

    Both ways put the weights in place before ONNX Runtime optimizes the graph. Initializers
    added with add_initializer come after some passes, and are lost: its NCHWc pass reorders
    convolution weights, and constant folding casts fp16 weights, from the file's values
    (tests/test_lora.py, tests/test_variants.py)."""
    if not weights:
        yield str(path)
        return
    stored = initializers(path)
    # Weights in external data, replaced by arrays of the same shape: in place, copied in.
    in_place = {name: np.ascontiguousarray(array) for name, array in weights.items()
                if stored[name].location is not None and tuple(array.shape) == stored[name].dims}
    values = [ort.OrtValue.ortvalue_from_numpy(array) for array in in_place.values()]
    if in_place:
        settings.add_external_initializers(list(in_place), values)
    rest = {name: array for name, array in weights.items() if name not in in_place}
    if not rest:
        yield str(path)
        return
    # The others (weights inside the .onnx file, a longer token table): the model is rewritten
    # to read them from an external-data file that exists only in memory. ONNX Runtime then
    # wants every external file from memory: the model's own are mapped (and copied in whole:
    # sdrt's exports keep a network's weights all inside the .onnx file or all outside).
    model, data = with_external_weights(path, rest, REPLACED_WEIGHTS)
    with contextlib.ExitStack() as stack:
        files: dict[str, bytes | bytearray | mmap.mmap] = {REPLACED_WEIGHTS: data}
        for location in sorted({tensor.location for tensor in stored.values() if tensor.location}):
            handle = stack.enter_context(open(path.parent / location, "rb"))
            files[location] = stack.enter_context(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
        settings.add_external_initializers_from_files_in_memory(list(files), list(files.values()),
                                                                [len(buffer) for buffer in files.values()])
        yield model


def open_session(component: Component, options: SessionOptions) -> OnnxRuntimeSession:
    return OnnxRuntimeSession(component, options)
