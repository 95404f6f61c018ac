"""What a recorded run ran on: CPU model and flags, cores, memory, GPUs, package versions and
the git commit, so that a result can be read and reproduced without asking."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

# CPU features that decide which kernels the backends pick (bf16 and int8 paths above all).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")
PACKAGES = ("sdrt", "numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "diffusers", "transformers",
            "optimum", "optimum-intel", "optimum-onnx")


def machine_info(cpuinfo: str | None = None, meminfo: str | None = None) -> dict:
    """CPU, memory and GPU facts of this machine."""
    if cpuinfo is None:
        cpuinfo = _read("/proc/cpuinfo")
    if meminfo is None:
        meminfo = _read("/proc/meminfo")
    fields = _first_block(cpuinfo)
    flags = set(fields.get("flags", "").split())
    memory = next((int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemTotal:")),
                  None)
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
        "logical_cores": os.cpu_count(),
        "memory_bytes": memory,
        "gpus": _gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def package_versions(names=PACKAGES) -> dict:
    """Installed versions of the packages a result depends on (absent ones left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the sdrt checkout the code runs from (with "-dirty" when it has
    uncommitted changes), or None for an installed wheel."""
    root = path or Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def _first_block(cpuinfo: str) -> dict:
    fields = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _gpus() -> list[dict]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, driver, memory = (part.strip() for part in line.split(","))
        gpus.append({"name": name, "driver": driver, "memory": memory})
    return gpus


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
