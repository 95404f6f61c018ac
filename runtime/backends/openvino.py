"""OpenVINO backend: CPU (bf16 when asked, on CPUs with AMX or AVX512-BF16), GPU and NPU devices.

OpenVINO runs bf16 on CPUs with bf16 support (AMX, AVX512-BF16) unless told otherwise, so the
precision hint is always set explicitly: fp32 means INFERENCE_PRECISION_HINT=f32.
"""
from __future__ import annotations

import numpy as np
import openvino as ov

from ..artifact import Component
from ..cache import engine_folder
from ..errors import BackendUnavailableError, RequestError
from . import SessionOptions, cast_feeds, mapped

DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
DEFAULT_DEVICE = "cpu"
PRECISIONS = tuple(PRECISION_HINTS)


class OpenVinoSession:
    def __init__(self, component: Component, options: SessionOptions):
        if options.device not in DEVICES:
            raise RequestError(f"The openvino backend runs on: {', '.join(DEVICES)}; got device {options.device!r}.")
        if component.entry.get("format", "onnx") in ("onnxruntime", "onnxruntime-cuda"):
            plain = component.precision.split("-")[0]
            raise RequestError(f"The {component.precision} {component.spec.name} holds ONNX Runtime's own operators; "
                               f"choose precision='{plain}' for openvino.")
        core = ov.Core()
        device = DEVICES[options.device]
        if device not in core.available_devices:
            raise BackendUnavailableError(f"OpenVINO sees no {device} device here (it sees: "
                                          f"{', '.join(core.available_devices)}).")
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[options.precision], "PERFORMANCE_HINT": "LATENCY"}
        if options.num_threads and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = options.num_threads
        if options.engine_cache and not options.weights:
            # OpenVINO exports the compiled model on the first compile and imports it after. Its
            # cache key leaves out the precision hint: fp32 and bf16 loads share one blob and each
            # still computes at its own precision (tests/test_engine_cache.py checks this).
            folder = engine_folder(options.engine_cache, component, "openvino", ov.get_version(), device)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(folder)
            except OSError:
                pass  # a folder the user named was checked at load; the default one may be unwritable
        # Compiling from the path (not a read model) lets a cached engine skip reading the ONNX.
        if not options.weights:
            self._compiled = core.compile_model(str(component.path), device, config)
        else:
            self._compiled = core.compile_model(_with_weights(core, component, options.weights), device, config)
        self._request = self._compiled.create_infer_request()
        self.input_names = [p.any_name for p in self._compiled.inputs]
        # By the manifest's names: a port may carry several (an fp16 variant's outputs also bear
        # the names of the casts that return them to float32), and any_name may pick another.
        self.output_names = [t.name for t in component.spec.outputs]
        self._dtypes = {t.name: t.dtype for t in component.spec.inputs}
        # OpenVINO maps large weight files (the UNet's external data) and repacks the weights on
        # the first inference, after which the mapped copy stays resident though hardly read:
        # 3.2 GiB of 6.75 GiB for the SD 1.5 UNet in fp32. The first inference runs now, on the
        # smallest inputs the network takes (small activations beside both copies), and after
        # it, and after the first call at each new input shape (a few kernels repack per shape),
        # the mapped pages are dropped from the process (runtime/backends/mapped.py). Not for
        # an engine imported from the cache (its weights are in the blob, not these files):
        # dropping the pages of a mapped blob changed the results, measured at SD 1.5 sizes.
        # The mappings are looked up again at each release: never advise on an address range
        # that no longer maps these files.
        files = set(component.files)
        # Checked safe for ONNX weight files only (an OpenVINO model's .bin may be used in place).
        onnx = component.path.suffix == ".onnx"
        self._mapped_files = files if device == "CPU" and onnx and mapped.mapped_ranges(files) else set()
        self._shapes_seen: set[tuple] = set()
        if self._mapped_files:
            with mapped.releasing(self._mapped_files):  # also while it repacks: a lower peak
                self.run(_smallest_feeds(component.spec))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Inputs are read in place (the call is synchronous); outputs come back as fresh arrays
        # (share_outputs=False), so the next call cannot overwrite what the caller holds.
        result = self._request.infer(cast_feeds(feeds, self._dtypes), share_inputs=True, share_outputs=False)
        if self._mapped_files:
            shapes = tuple(np.shape(value) for value in feeds.values())
            if shapes not in self._shapes_seen:
                self._shapes_seen.add(shapes)
                mapped.release(mapped.mapped_ranges(self._mapped_files))
        return {name: result[self._compiled.output(name)] for name in self.output_names}


def _with_weights(core: ov.Core, component: Component, weights) -> ov.Model:
    """The model with the constants that hold the named ONNX initializers replaced by `weights`."""
    model = core.read_model(str(component.path))
    constants = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Constant"}
    for name, array in weights.items():
        if name not in constants:
            raise RequestError(f"OpenVINO's reading of {component.path.name} has no weight {name} to replace.")
        replacement = ov.opset13.constant(np.ascontiguousarray(array))
        for target in constants[name].output(0).get_target_inputs():
            target.replace_source_output(replacement.output(0))
    return model


def _smallest_feeds(spec) -> dict[str, np.ndarray]:
    """Zeros of the smallest shape every axis allows (rounded up to its multiple)."""
    def size(axis):
        if not isinstance(axis, str):
            return axis
        low = spec.axis_ranges.get(axis, (1, None))[0]
        multiple = spec.axis_multiples.get(axis, 1)
        return -(-low // multiple) * multiple
    return {t.name: np.zeros(tuple(size(a) for a in t.shape), dtype=t.dtype) for t in spec.inputs}


def open_session(component: Component, options: SessionOptions) -> OpenVinoSession:
    return OpenVinoSession(component, options)
