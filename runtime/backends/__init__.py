"""Backends: one file per inference engine, found by name and imported lazily.

A backend module defines `open_session(component, options) -> Session` and CAPABILITIES, what
it offers (devices, compute precisions, the device loop, CUDA graphs, static shapes, engines
built for shape ranges); the pipeline asks those instead of probing sessions. Adding a backend
means adding one file here and its name to BACKENDS.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..device_loop import DeviceLoop
from ..errors import BackendUnavailableError, RequestError

# name -> (module that must import, extra that installs it)
BACKENDS = {
    "onnxruntime": ("onnxruntime", "onnxruntime"),
    "openvino": ("openvino", "openvino"),
    "tensorrt": ("tensorrt", "tensorrt"),
}
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class SessionOptions:
    device: str = "cpu"
    precision: str = "fp32"  # compute precision: fp32, or bf16 where the backend offers it
    num_threads: int | None = None  # None: the backend's default (all cores)
    engine_cache: str | None = None  # folder for compiled engines (backends that compile); None: no cache
    # run the denoising loop with its tensors on the device (backends whose sessions offer
    # device_loop()); None: on for devices other than the CPU
    device_loop: bool | None = None
    # capture the device loop's UNet calls as CUDA graphs, one per request shape, replayed on
    # every later step and request of that shape (Capabilities.cuda_graphs: onnxruntime on cuda)
    cuda_graph: bool = False
    # compile each network for the input shapes of the request, again when they change
    # (openvino); False: one compile that takes every shape
    static_shapes: bool = True
    # axis -> (min, opt, max) sizes for engines built for a range of shapes (TensorRT)
    profile: dict[str, tuple[int, int, int]] | None = field(default=None, compare=False)
    # weights replaced in the loaded model, by initializer name (run-time LoRA, textual
    # inversion's longer token table: runtime/module_weights.py); the files stay as exported
    weights: Mapping[str, np.ndarray] | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise RequestError(f"Unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}.")
        if self.cuda_graph and self.device_loop is False:
            raise RequestError("cuda_graph replays the device loop's UNet calls; leave device_loop on (or unset).")
        if self.num_threads is not None and self.num_threads < 1:
            raise RequestError(f"num_threads must be >= 1, got {self.num_threads}.")


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers. `check` refuses the session options it cannot serve, with the
    sentence that says what to change; options a device of the backend lacks (CUDA graphs off
    cuda) are refused by the backend's session, which sees the device."""

    devices: tuple[str, ...]  # device kinds; a GPU index may follow a colon ("cuda:1")
    default_device: str
    precisions: tuple[str, ...]  # compute precisions of SessionOptions.precision
    device_loop: bool = False  # a denoiser's session offers device_loop() (runtime/device_loop.py)
    cuda_graphs: bool = False  # SessionOptions.cuda_graph: the device loop's UNet calls as CUDA graphs
    static_shapes: bool = False  # SessionOptions.static_shapes: a compile per request shape
    shape_profiles: bool = False  # engines built for (min, opt, max) shapes: SessionOptions.profile

    def check(self, backend: str, options: SessionOptions) -> None:
        if options.cuda_graph and not self.cuda_graphs:
            raise RequestError(f"The {backend} backend does not capture CUDA graphs (onnxruntime on cuda does); "
                               "leave cuda_graph off.")
        if options.device_loop and not self.device_loop:
            raise RequestError(f"The {backend} backend has no device-resident denoising loop (onnxruntime has); "
                               "leave device_loop unset.")

    def wants_device_loop(self, options: SessionOptions) -> bool:
        """Whether the denoising loop runs on the device: as asked, else on devices other than the CPU."""
        wanted = options.device_loop if options.device_loop is not None else options.device != "cpu"
        return wanted and self.device_loop


class Session(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on host arrays; return every output by name."""
        ...



class DenoiserSession(Session, Protocol):
    """A denoiser's session on a backend whose Capabilities.device_loop is set."""

    def device_loop(self) -> DeviceLoop:
        """The denoising loop on the session's device (runtime/device_loop.py; onnxruntime's in
        backends/onnxruntime_loop.py)."""
        ...


def backend_module(name: str):
    """The backend module for `name`, or a one-line error naming the extra to install."""
    if name not in BACKENDS:
        raise RequestError(f"Unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}.")
    package, extra = BACKENDS[name]
    try:
        importlib.import_module(package)
    except ImportError as error:
        raise BackendUnavailableError(
            f"The {name} backend needs the {package} package, which is not installed: pip install 'sdrt[{extra}]'."
        ) from error
    return importlib.import_module(f"{__name__}.{name}")


def available_backends() -> list[str]:
    """Backends whose package imports in this environment."""
    names = []
    for name, (package, _) in BACKENDS.items():
        try:
            importlib.import_module(package)
        except ImportError:
            continue
        names.append(name)
    return names


def best_backend() -> str:
    """The backend used when none is named: openvino where installed (the faster one on Intel
    and AMD CPUs), else onnxruntime."""
    installed = available_backends()
    if not installed:
        raise BackendUnavailableError("No inference backend is installed: pip install 'sdrt[openvino]' or "
                                      "'sdrt[onnxruntime]'.")
    return "openvino" if "openvino" in installed else installed[0]


def cast_feeds(feeds: dict[str, np.ndarray], dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    """Feeds in the dtypes the component declares, C-contiguous."""
    return {name: np.ascontiguousarray(value, dtype=dtypes[name]) for name, value in feeds.items()}
