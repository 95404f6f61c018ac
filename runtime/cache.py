"""Where sdrt keeps what it builds once and reuses: compiled engines and built-in benchmark models.

Compiled engines (OpenVINO blobs, TensorRT plans) live under the user's cache, not
inside the artifact: artifacts are often read-only (an installed package, a shared mount), and
one artifact serves several precisions and devices. Each component gets its own folder, named
by a hash of its files' SHA-256 (from the manifest), the backend's version and the device, so
a re-exported artifact at the same path never meets a stale engine.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .artifact import Component


def user_cache() -> Path:
    """$SDRT_CACHE, else $XDG_CACHE_HOME/sdrt, else ~/.cache/sdrt."""
    if os.environ.get("SDRT_CACHE"):
        return Path(os.environ["SDRT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sdrt"


def default_engine_cache() -> Path:
    return user_cache() / "engines"


def engine_key(component: Component, settings: dict) -> str:
    """A file name stem for one engine of `component` built with `settings` (shapes, precision
    flags, the GPU, the builder's version: whatever changes the engine), so that an engine file
    is found again only for exactly what made it."""
    return content_key(component.spec.name, component.checksums, settings)


def content_key(name: str, checksums: tuple[str, ...], settings: dict) -> str:
    """`name`, then a hash of the files' checksums and the settings."""
    text = "\n".join([*checksums, *(f"{key}={settings[key]}" for key in sorted(settings))])
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def engine_folder(root: str | os.PathLike, component: Component, backend: str, version: str, device: str) -> Path:
    """The folder under `root` for one component's compiled engines on one backend build and device."""
    key = hashlib.sha256("\n".join([*component.checksums, backend, version, device]).encode()).hexdigest()[:20]
    return Path(root) / backend / f"{component.spec.name}-{key}"
