"""OpenVINO backend: CPU (bf16 when asked, on CPUs with AMX or AVX512-BF16), GPU and NPU devices.

OpenVINO runs bf16 on CPUs with bf16 support (AMX, AVX512-BF16) unless told otherwise, so the
precision hint is always set explicitly: fp32 means INFERENCE_PRECISION_HINT=f32.
"""
from __future__ import annotations

import contextlib

import numpy as np
import openvino as ov

from ..artifact import Component
from ..cache import engine_folder
from ..errors import BackendUnavailableError, RequestError
from . import Capabilities, SessionOptions, cast_feeds, mapped

DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
# OpenVINO's CPU plugin fuses attention into one generated kernel (its "snippets"). The VAE
# decoder's mid-block attends over every latent position in one head, and there the fused kernel
# falls far behind the plain matrix kernels once the positions are many: the SDXL VAE decoder at
# 128x128 latents took 35.1 s with it (9.0 s in the fused attention) and 27.0 s without, while at
# 64x64 the fusion was the faster (6.35 s against 6.63 s; bf16, 2 cores;
# benchmarks/results/2026-12-07-profile-networks). From this many positions it is turned off.
UNFUSED_ATTENTION_POSITIONS = 128 * 128
CAPABILITIES = Capabilities(devices=tuple(DEVICES), default_device="cpu", precisions=tuple(PRECISION_HINTS),
                            static_shapes=True)


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
        config: dict[str, str | int] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[options.precision],
                                        "PERFORMANCE_HINT": "LATENCY"}
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
        self._core, self._device, self._config = core, device, config
        self._component, self._weights = component, options.weights
        self._static = options.static_shapes
        self.input_names = [t.name for t in component.spec.inputs]
        # By the manifest's names: a port may carry several (an fp16 variant's outputs also bear
        # the names of the casts that return them to float32), and any_name may pick another.
        self.output_names = [t.name for t in component.spec.outputs]
        self._dtypes = {t.name: t.dtype for t in component.spec.inputs}
        self._compiled = self._request = None
        self._shapes: tuple | None = None  # the input shapes of the compiled network (static shapes)
        self._shapes_seen: set[tuple] = set()
        self._mapped_files: set = set()
        if not self._static:
            self._compile(None)
            if self._mapped_files:
                self.run(_smallest_feeds(component.spec))  # repacks now, at load, on small activations

    def _compile(self, shapes: dict[str, tuple[int, ...]] | None) -> None:
        """Compile the network for these input shapes, or for every shape (None).

        Static shapes let OpenVINO's CPU plugin pick kernels and memory for one size: faster
        networks than compiled for every shape (benchmarks/README.md, static shapes). A session
        holds one compiled network: the old one goes first.
        """
        self._compiled = self._request = self._shapes = None  # (a failed compile leaves none: the next call retries)
        model: ov.Model | str
        if self._weights or shapes is not None:
            model = (_with_weights(self._core, self._component, self._weights) if self._weights
                     else self._core.read_model(str(self._component.path)))
            if shapes is not None:
                model.reshape({name: list(shape) for name, shape in shapes.items()})
        else:
            # Compiling from the path (not a read model) lets a cached engine skip reading the ONNX.
            model = str(self._component.path)
        # OpenVINO maps large weight files (the UNet's external data) and repacks the weights at
        # compile (static shapes) or on the first inference, after which the mapped copy stays
        # resident though hardly read (about half the process's memory for the SD 1.5 UNet in fp32). The
        # compile and the first inference at each input shape (a few kernels repack per shape)
        # run while the mapped pages are dropped from the process, and once more after
        # (runtime/backends/mapped.py): without it, a static compile of that UNet peaked at twice the memory.
        # Not for an engine imported from the cache (its weights are in the blob, not these
        # files; the read model that mapped them is gone): dropping the pages of a mapped blob
        # changed the results, measured at SD 1.5 sizes. The mappings are looked up again at each
        # release: never advise on an address range that no longer maps these files. Checked safe
        # for ONNX weight files only (an OpenVINO model's .bin may be used in place).
        files = set(self._component.files)
        onnx = self._device == "CPU" and self._component.path.suffix == ".onnx"
        config = self._config
        if shapes is not None and not isinstance(model, str) and self._long_attention(model, shapes):
            config = {**config, "SNIPPETS_MODE": "DISABLE"}
        with mapped.releasing(files) if onnx else contextlib.nullcontext():
            self._compiled = self._core.compile_model(model, self._device, config)
            del model
        self._request = self._compiled.create_infer_request()
        self._shapes = None if shapes is None else tuple(shapes.items())
        self._shapes_seen = set()
        self._mapped_files = files if onnx and mapped.mapped_ranges(files) else set()

    def _long_attention(self, model: ov.Model, shapes: dict[str, tuple[int, ...]]) -> bool:
        """A VAE decoder with attention, on the CPU, at UNFUSED_ATTENTION_POSITIONS or more."""
        if self._device != "CPU" or self._component.entry.get("role") != "vae_decoder":
            return False
        latents = shapes.get(self.input_names[0], ())
        if len(latents) != 4 or latents[2] * latents[3] < UNFUSED_ATTENTION_POSITIONS:
            return False
        return any(op.get_type_name() == "Softmax" for op in model.get_ops())  # (the tiny autoencoder has none)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = cast_feeds(feeds, self._dtypes)
        shapes = tuple((name, feeds[name].shape) for name in self.input_names if name in feeds)
        if self._static and shapes != self._shapes:
            self._compile(dict(shapes))
        if self._mapped_files and shapes not in self._shapes_seen:
            self._shapes_seen.add(shapes)
            with mapped.releasing(self._mapped_files):
                result = self._infer(feeds)
            mapped.release(mapped.mapped_ranges(self._mapped_files))
            return result
        return self._infer(feeds)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Inputs are read in place (the call is synchronous); outputs come back as fresh arrays
        # (share_outputs=False), so the next call cannot overwrite what the caller holds.
        request, compiled = self._request, self._compiled
        assert request is not None and compiled is not None  # run() compiles when there is none
        result = request.infer(feeds, share_inputs=True, share_outputs=False)
        return {name: result[compiled.output(name)] for name in self.output_names}


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
