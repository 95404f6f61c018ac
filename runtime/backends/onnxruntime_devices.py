"""ONNX Runtime's execution providers by sdrt device name, and the options sdrt runs them with.

Devices: "cpu", "cuda" (CUDAExecutionProvider), "tensorrt" (TensorrtExecutionProvider, with
CUDA for what TensorRT does not take), "dml" (DmlExecutionProvider, Windows); a GPU index may
follow a colon ("cuda:1"). Each needs its ONNX Runtime build (onnxruntime-gpu,
onnxruntime-directml); a build that lacks the provider gives one line saying which to install.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import BackendUnavailableError, RequestError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
             "dml": "DmlExecutionProvider"}
PACKAGES = {"cpu": "onnxruntime", "cuda": "onnxruntime-gpu", "tensorrt": "onnxruntime-gpu, with TensorRT's libraries",
            "dml": "onnxruntime-directml (Windows)"}
def parse_device(device: str) -> tuple[str, int]:
    """("cuda", 1) for "cuda:1"; the index defaults to 0."""
    kind, colon, index = device.partition(":")
    if kind not in PROVIDERS or (colon and not index.isdigit()) or (colon and kind == "cpu"):
        raise RequestError(f"The onnxruntime backend runs on: {', '.join(PROVIDERS)} (a GPU index may follow, "
                           f"e.g. cuda:1); got device {device!r}.")
    return kind, int(index) if colon else 0


def provider_chain(kind: str, index: int, *, engine_folder: Path | None = None,
                   shapes: dict[str, tuple[tuple[int, ...], ...]] | None = None, fp16: bool = True,
                   cuda_graph: bool = False) -> list:
    """The providers, in the order ONNX Runtime should try them, each (name, options)."""
    cpu = ("CPUExecutionProvider", {})
    cuda = ("CUDAExecutionProvider", {"device_id": str(index), "cudnn_conv_algo_search": "EXHAUSTIVE",
                                      "arena_extend_strategy": "kSameAsRequested", "do_copy_in_default_stream": "1",
                                      **({"enable_cuda_graph": "1"} if cuda_graph else {})})
    if kind == "cpu":
        return [cpu]
    if kind == "cuda":
        return [cuda, cpu]
    if kind == "dml":
        return [("DmlExecutionProvider", {"device_id": str(index)}), cpu]
    options = {"device_id": str(index), "trt_fp16_enable": "1" if fp16 else "0", "trt_max_workspace_size": str(8 << 30)}
    if engine_folder is not None:
        options.update({"trt_engine_cache_enable": "1", "trt_engine_cache_path": str(engine_folder),
                        "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(engine_folder)})
    if shapes:
        for position, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
            options[key] = ",".join(f"{name}:{'x'.join(map(str, bounds[position]))}" for name, bounds in shapes.items())
    return [("TensorrtExecutionProvider", options), cuda, cpu]


def check_available(kind: str, available: list[str]) -> None:
    """One line naming the package to install when this ONNX Runtime build lacks the provider."""
    if PROVIDERS[kind] not in available:
        raise BackendUnavailableError(
            f"This onnxruntime build has no {PROVIDERS[kind]} (it has: {', '.join(available)}); device {kind!r} "
            f"needs {PACKAGES[kind]} installed instead of onnxruntime.")
