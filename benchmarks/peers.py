"""The peers `sdrt bench --compare` measures sdrt against, and the Python environment they run in.

Their latest releases need library versions sdrt does not use (optimum-onnx wants
transformers < 4.58, sdrt's export extra takes transformers 5), so they run in their own
environment: `python -m sdrt.benchmarks.peers setup` makes one from peer-requirements.txt
(a set of pins known to install and run together) and `sdrt bench` finds it there.

    python -m sdrt.benchmarks.peers setup [FOLDER]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

from ..runtime.cache import user_cache
from .harness import BenchmarkError, Engine

REQUIREMENTS = Path(__file__).with_name("peer-requirements.txt")
WORKER = Path(__file__).with_name("peer_worker.py")


@dataclass(frozen=True)
class Peer:
    name: str
    module: str  # must import in the peer environment
    precisions: tuple[str, ...]
    what: str


PEERS = {
    "diffusers": Peer("diffusers", "diffusers", ("fp32", "bf16"), "diffusers' StableDiffusionPipeline on PyTorch"),
    "optimum-intel": Peer("optimum-intel", "optimum.intel", ("fp32", "bf16", "int8"),
                          "optimum-intel's OVStableDiffusionPipeline, static shapes (reshape + compile); int8: "
                          "its hybrid quantization"),
    "optimum-onnx": Peer("optimum-onnx", "optimum.onnxruntime", ("fp32",),
                         "optimum's ORTStableDiffusionPipeline on the ONNX Runtime CPU provider"),
}


def default_peer_environment() -> Path:
    return user_cache() / "peers-venv"


def peer_python(explicit: str | None = None) -> str:
    """The interpreter peers run in: `explicit`, else the environment `setup` made, else this one."""
    if explicit:
        return explicit
    made = default_peer_environment() / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    return str(made) if made.is_file() else sys.executable


def parse_compare(text: str | None) -> list[str]:
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        raise BenchmarkError(f"Unknown peer(s) {', '.join(unknown)}; --compare takes a comma-separated list of: "
                             f"{', '.join(PEERS)}.")
    return names


def missing_module(python: str, module: str) -> str | None:
    """None when `module` imports in `python`, else why not, in one line."""
    try:
        done = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
    except OSError as error:
        return f"cannot start {python}: {error}"
    if done.returncode == 0:
        return None
    last = (done.stderr.strip().splitlines() or ["import failed"])[-1]
    return f"{module} does not import in {python} ({last}); run: python -m sdrt.benchmarks.peers setup"


def peer_engines(names: list[str], precisions: list[str], python: str, checkpoint: Path, latents: Path,
                 work: Path, threads: int | None = None, check=missing_module,
                 calibration: dict | None = None) -> tuple[list[Engine], dict[str, str]]:
    """Engines for the named peers at the requested precisions, and {peer: why not} for the
    ones that cannot run here. `work` keeps their one-time conversions of the checkpoint;
    `calibration` (prompts, samples: those of sdrt's int8 UNet) is what a peer's int8 model is
    calibrated on."""
    engines, missing = [], {}
    for name in names:
        peer = PEERS[name]
        why = check(python, peer.module)
        if why is not None:
            missing[name] = why
            continue
        for precision in precisions:
            if precision not in peer.precisions:
                missing[f"{name}/{precision}"] = f"{name} has no {precision} mode here"
                continue
            if precision == "int8" and calibration is None:
                missing[f"{name}/{precision}"] = ("its int8 model is calibrated on sdrt's int8 calibration set, and "
                                                  "the artifact has no int8 UNet (sdrt quantize --precision int8)")
                continue
            spec = {"peer": name, "checkpoint": str(checkpoint), "precision": precision, "threads": threads,
                    "latents": str(latents), "work": str(work / name),
                    **({"calibration": calibration} if precision == "int8" else {})}
            engines.append(Engine(name=f"{name}/{precision}", kind=name, precision=precision,
                                  command=(python, str(WORKER)), spec=spec))
    return engines, missing


def setup(folder: Path) -> Path:
    """Create the peer environment in `folder` (torch 2.13.0 first, then the pinned peers)."""
    venv.EnvBuilder(with_pip=True).create(folder)
    python = folder / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    # torch first: the pins below were resolved against it; install a CPU build of torch
    # beforehand on machines where pip would pick a CUDA one.
    for arguments in (["torch==2.13.0"], ["--no-deps", "-r", str(REQUIREMENTS)]):
        subprocess.run([str(python), "-m", "pip", "install", *arguments], check=True)
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("setup", help="create the peer environment")
    make.add_argument("folder", nargs="?", type=Path, default=None)
    args = parser.parse_args(argv)
    python = setup(args.folder or default_peer_environment())
    sys.stdout.write(f"peer environment ready: {python}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
