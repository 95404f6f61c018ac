"""Median latency of one UNet call on an artifact, per backend.

    python -m sdrt.benchmarks.unet_step ARTIFACT --backends onnxruntime,openvino --size 512x512 --batch 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from sdrt.models.components import random_feeds
from sdrt.runtime.artifact import open_artifact
from sdrt.runtime.backends import SessionOptions, backend_module

from .stats import timed


def measure(artifact_path: str, backend: str, height: int, width: int, batch: int, repeats: int, warmup: int,
            precision: str = "fp32") -> dict:
    artifact = open_artifact(artifact_path, verify_checksums=False)
    component = artifact.component_for_role("denoiser")
    factor = artifact.pipeline["vae_scale_factor"]
    sizes = {"batch": batch, "latent_height": height // factor, "latent_width": width // factor, "sequence": 77}
    feeds = random_feeds(component.spec, sizes)
    started = time.perf_counter()
    session = backend_module(backend).open_session(component, SessionOptions(precision=precision))
    load = time.perf_counter() - started
    times = timed(lambda: session.run(feeds), repeats, warmup)
    return {"backend": backend, "precision": precision, "height": height, "width": width, "batch": batch,
            "load_s": load, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--size", default="512x512", help="WIDTHxHEIGHT")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    for backend in args.backends.split(","):
        row = measure(args.artifact, backend, height, width, args.batch, args.repeats, args.warmup, args.precision)
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
