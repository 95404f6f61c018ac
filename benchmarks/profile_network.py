"""Where one network's time goes on OpenVINO's CPU plugin: its per-layer performance counters.

    python -m benchmarks.profile_network MODEL.onnx|MODEL.xml --input sample=1,4,64,64 \
        --input timestep=1 --input encoder_hidden_states=1,77,1024 --precision bf16 [--json OUT]

compiles the network for those static input shapes as sdrt's openvino backend does (latency
hint, the precision hint always set) with PERF_COUNT on, runs it once to warm up and then
`--runs` times on random inputs, and prints the median call and the last call's time summed by
layer type and by the kernel OpenVINO chose (its exec type, which names the precision the
kernel ran in). The same command on optimum-intel's IR of the same network (its
openvino_model.xml) shows where two exports of one network differ (benchmarks/README.md).

    python -m benchmarks.profile_network --ceiling --precision bf16

measures what this CPU reaches on the two operations that hold a Stable Diffusion network's
arithmetic (a large matrix product, a 3x3 convolution), in multiply-adds a second, and
`--macs` counts a network's multiply-adds at the given shapes: their ratio bounds a call's time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def parse_inputs(items: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for item in items:
        name, equals, dims = item.partition("=")
        try:
            shapes[name] = [int(d) for d in dims.split(",")] if equals else []
        except ValueError:
            raise SystemExit(f"--input takes NAME=D1,D2,..., got {item!r}") from None
    return shapes


def random_feeds(compiled, seed: int = 0) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(seed)
    feeds = {}
    for port in compiled.inputs:
        shape = tuple(port.get_shape())
        dtype = port.get_element_type().to_dtype()
        if np.issubdtype(dtype, np.integer):
            feeds[port.get_any_name()] = generator.integers(0, 999, size=shape).astype(dtype)
        else:
            feeds[port.get_any_name()] = generator.standard_normal(shape).astype(dtype)
    return feeds


def resident_gib() -> dict[str, float]:
    """This process's anonymous and file-backed resident memory and its peak, from /proc/self/status."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0]) / 2**20
    return fields


def profile(model_path: Path, shapes: dict[str, list[int]], precision: str, runs: int, threads: int,
            extra: dict[str, str] | None = None) -> dict:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model_path))
    names = {port.get_any_name() for port in model.inputs}
    unknown = set(shapes) - names
    if unknown:
        raise SystemExit(f"{model_path.name} has no input {', '.join(sorted(unknown))} "
                         f"(it has {', '.join(sorted(names))})")
    model.reshape({name: shape for name, shape in shapes.items()})
    config: dict = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": "YES"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    config.update(extra or {})
    started = time.perf_counter()
    compiled = core.compile_model(model, "CPU", config)
    compile_s = time.perf_counter() - started
    del model
    request = compiled.create_infer_request()
    feeds = random_feeds(compiled)
    request.infer(feeds)  # warm-up: first-call repacking
    memory = resident_gib()  # (the read model is gone: what the compiled network keeps)
    calls = []
    for _ in range(runs):
        tick = time.perf_counter()
        request.infer(feeds)
        calls.append(time.perf_counter() - tick)
    by_type: dict[str, float] = defaultdict(float)
    by_kernel: dict[str, float] = defaultdict(float)
    layers = []
    for info in request.profiling_info:
        if info.status != info.Status.EXECUTED:
            continue
        ms = info.real_time.total_seconds() * 1e3
        by_type[info.node_type] += ms
        by_kernel[f"{info.node_type}:{info.exec_type}"] += ms
        layers.append((ms, info.node_type, info.exec_type, info.node_name))
    layers.sort(reverse=True)
    return {"model": str(model_path), "inputs": shapes, "precision": precision, "config": extra or {},
            "compile_s": compile_s,
            "median_call_s": statistics.median(calls), "calls_s": calls, "memory_after_first_call_gib": memory,
            "counted_ms": sum(by_type.values()),
            "by_type_ms": dict(sorted(by_type.items(), key=lambda item: -item[1])),
            "by_kernel_ms": dict(sorted(by_kernel.items(), key=lambda item: -item[1])),
            "top_layers": [{"ms": ms, "type": kind, "kernel": kernel, "name": name}
                           for ms, kind, kernel, name in layers[:25]]}


def count_macs(model_path: Path, shapes: dict[str, list[int]]) -> dict[str, int]:
    """Multiply-adds of the network's convolutions and matrix products at these input shapes."""
    import openvino as ov

    model = ov.Core().read_model(str(model_path))
    model.reshape({name: shape for name, shape in shapes.items()})
    macs = {"Convolution": 0, "MatMul": 0}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Convolution":
            out, weights = op.get_output_shape(0), op.get_input_shape(1)
            macs[kind] += int(np.prod(out)) * int(np.prod(weights[1:]))
        elif kind == "MatMul":
            left, out = op.get_input_shape(0), op.get_output_shape(0)
            macs[kind] += int(np.prod(out)) * int(left[-2] if op.get_transpose_a() else left[-1])
    return macs


def ceiling(precision: str, threads: int) -> dict[str, float]:
    """Multiply-adds a second of a 2048x4096 @ 4096x4096 product and a 512-channel 3x3
    convolution on 64x64, compiled as the networks are."""
    import openvino as ov
    import openvino.opset13 as ops

    generator = np.random.default_rng(0)
    left = ops.parameter([2048, 4096], np.float32)
    matmul = ops.matmul(left, ops.constant(generator.standard_normal((4096, 4096)).astype(np.float32)), False, False)
    image = ops.parameter([1, 512, 64, 64], np.float32)
    conv = ops.convolution(image, ops.constant(generator.standard_normal((512, 512, 3, 3)).astype(np.float32) * 0.01),
                           [1, 1], [1, 1], [1, 1], [1, 1])
    cases = {"matmul 2048x4096x4096": (ov.Model([matmul], [left]), 2048 * 4096 * 4096),
             "conv3x3 512->512 at 64x64": (ov.Model([conv], [image]), 64 * 64 * 512 * 512 * 9)}
    config: dict = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    rates = {}
    for name, (model, macs) in cases.items():
        request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
        feeds = random_feeds(request.get_compiled_model())
        request.infer(feeds)
        calls = []
        for _ in range(5):
            tick = time.perf_counter()
            request.infer(feeds)
            calls.append(time.perf_counter() - tick)
        rates[name] = macs / min(calls) / 1e9
    return rates


def print_report(result: dict, top: int) -> None:
    counted = result["counted_ms"]
    print(f"{result['model']}  {result['precision']} {result['config'] or ''}  compile {result['compile_s']:.1f} s  "
          f"call {result['median_call_s'] * 1e3:.0f} ms (median of {len(result['calls_s'])}; "
          f"counters sum {counted:.0f} ms)")
    memory = result["memory_after_first_call_gib"]
    print("after the first call: " + "  ".join(f"{key} {value:.2f} GiB" for key, value in memory.items()))
    print("by layer type:")
    for kind, ms in list(result["by_type_ms"].items())[:top]:
        print(f"  {kind:28s} {ms:9.1f} ms  {100 * ms / counted:5.1f}%")
    print("by kernel:")
    for kernel, ms in list(result["by_kernel_ms"].items())[:top]:
        print(f"  {kernel:60s} {ms:9.1f} ms  {100 * ms / counted:5.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, nargs="?", help="an ONNX file or an OpenVINO IR (.xml)")
    parser.add_argument("--ceiling", action="store_true", help="measure this CPU's multiply-adds a second instead")
    parser.add_argument("--macs", action="store_true", help="count the network's multiply-adds instead")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=D1,D2,...",
                        help="a static input shape (repeat per input; a scalar: NAME=)")
    parser.add_argument("--precision", default="bf16", choices=["f32", "bf16", "f16"])
    parser.add_argument("--runs", type=int, default=3, help="timed calls after the warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="INFERENCE_NUM_THREADS (default: OpenVINO's)")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="another OpenVINO CPU property to compile with (repeat)")
    parser.add_argument("--top", type=int, default=12, help="rows of each table (default 12)")
    parser.add_argument("--json", type=Path, default=None, help="also write the whole profile here")
    args = parser.parse_args(argv)
    if args.ceiling:
        for name, rate in ceiling(args.precision, args.threads).items():
            print(f"{name:28s} {rate:7.0f} GMAC/s ({args.precision})")
        return 0
    if args.model is None:
        parser.error("name a model (or --ceiling)")
    if args.macs:
        macs = count_macs(args.model, parse_inputs(args.input))
        print("  ".join(f"{kind} {count / 1e9:.1f} GMAC" for kind, count in macs.items()),
              f" total {sum(macs.values()) / 1e9:.1f} GMAC")
        return 0
    extra = dict(item.split("=", 1) for item in args.config)
    result = profile(args.model, parse_inputs(args.input), args.precision, args.runs, args.threads, extra)
    print_report(result, args.top)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
