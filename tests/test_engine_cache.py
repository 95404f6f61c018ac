"""Compiled-engine cache: OpenVINO exports each compiled network once and imports it on later
loads; the folder is keyed by the component's checksums, the backend's version and the device.
And the weight files a backend maps, dropped from the process once repacked."""
from __future__ import annotations

import dataclasses
import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

import sdrt
from sdrt.runtime.artifact import open_artifact
from sdrt.runtime.backends import mapped
from sdrt.runtime.cache import engine_folder

REQUEST = dict(prompt="a red circle", num_inference_steps=3, seed=7, height=64, width=64)


def _blobs(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


def test_openvino_compiles_once_and_reuses_the_engines(tiny_artifact, tmp_path):
    pytest.importorskip("openvino")
    cache = tmp_path / "engines"
    first = sdrt.load(tiny_artifact, "openvino", engine_cache=cache)
    image = np.asarray(first(**REQUEST).images[0])
    written = _blobs(cache)
    folders = {path.relative_to(cache).parts[:2] for path in written}
    assert {parts[0] for parts in folders} == {"openvino"}
    assert sorted(name.split("-")[0] for _, name in folders) == ["text_encoder", "unet", "vae_decoder"]

    again = sdrt.load(tiny_artifact, "openvino", engine_cache=cache)
    assert _blobs(cache) == written  # imported, not rewritten
    np.testing.assert_array_equal(np.asarray(again(**REQUEST).images[0]), image)

    uncached = sdrt.load(tiny_artifact, "openvino", engine_cache=False)
    np.testing.assert_array_equal(np.asarray(uncached(**REQUEST).images[0]), image)
    assert _blobs(cache) == written


def test_the_default_cache_follows_sdrt_cache(tiny_artifact, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("SDRT_CACHE", str(tmp_path / "root"))
    sdrt.load(tiny_artifact, "openvino")(**REQUEST)  # the default on the CPU: no cache
    assert not (tmp_path / "root").exists()
    sdrt.load(tiny_artifact, "openvino", engine_cache=True)(**REQUEST)  # compiled at the first request
    assert any((tmp_path / "root" / "engines" / "openvino").rglob("*.blob"))


def test_an_unusable_default_cache_is_skipped_but_a_named_one_is_an_error(tiny_artifact, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SDRT_CACHE", str(blocker))
    backend = "openvino" if "openvino" in sdrt.available_backends() else "onnxruntime"
    sdrt.load(tiny_artifact, backend, engine_cache=True)  # the default location cannot be made: no cache
    with pytest.raises(sdrt.RequestError, match="no-engine-cache"):
        sdrt.load(tiny_artifact, backend, engine_cache=blocker)


def test_the_engine_folder_changes_with_the_weights_the_backend_and_the_device(tiny_artifact, tmp_path):
    unet = open_artifact(tiny_artifact).component_for_role("denoiser")
    assert unet.checksums and all(len(checksum) == 64 for checksum in unet.checksums)
    base = engine_folder(tmp_path, unet, "openvino", "2026.4", "CPU")
    assert base == engine_folder(tmp_path, unet, "openvino", "2026.4", "CPU")
    reexported = dataclasses.replace(unet, checksums=("0" * 64,) * len(unet.checksums))
    others = [engine_folder(tmp_path, reexported, "openvino", "2026.4", "CPU"),
              engine_folder(tmp_path, unet, "openvino", "2026.5", "CPU"),
              engine_folder(tmp_path, unet, "openvino", "2026.4", "GPU")]
    assert len({base, *others}) == 4
    assert all(folder.parent == tmp_path / "openvino" and folder.name.startswith("unet-") for folder in others)


@pytest.mark.slow
def test_a_cached_engine_keeps_the_requested_precision(tiny_artifact, tmp_path):
    """OpenVINO's blob is shared by fp32 and bf16 (its cache key leaves out the precision hint):
    an engine first cached by a bf16 load must still compute in fp32 for an fp32 load."""
    pytest.importorskip("openvino")
    cache = tmp_path / "engines"
    images = {}
    for precision, cached in [("bf16", True), ("fp32", True), ("fp32", False), ("bf16", False)]:
        pipe = sdrt.load(tiny_artifact, "openvino", precision=precision, engine_cache=cache if cached else False)
        images[precision, cached] = pipe(**REQUEST, output_type="np").images[0]
    np.testing.assert_array_equal(images["fp32", True], images["fp32", False])
    np.testing.assert_array_equal(images["bf16", True], images["bf16", False])
    assert not np.array_equal(images["fp32", True], images["bf16", True])


@pytest.mark.slow
def test_the_cli_flags_choose_the_cache(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from sdrt.cli import main

    monkeypatch.setenv("SDRT_CACHE", str(tmp_path / "default"))
    common = ["generate", "a red circle", "--backend", "openvino", "--steps", "2", "-o", str(tmp_path / "out.png")]
    assert main([*common, "--no-engine-cache"]) == 0
    assert not any((tmp_path / "default").rglob("*.blob"))
    assert main([*common, "--engine-cache", str(tmp_path / "named")]) == 0
    assert any((tmp_path / "named" / "openvino").rglob("*.blob"))
    assert not any((tmp_path / "default").rglob("*.blob"))
    assert main(common) == 0  # the CPU's default: no cache
    assert not any((tmp_path / "default").rglob("*.blob"))
    assert main([*common, "--engine-cache"]) == 0
    assert any((tmp_path / "default" / "engines" / "openvino").rglob("*.blob"))


def test_a_damaged_engine_is_recompiled(tiny_artifact, tmp_path):
    """A blob cut short (a process killed while writing it) must not break the next load."""
    pytest.importorskip("openvino")
    cache = tmp_path / "engines"
    image = np.asarray(sdrt.load(tiny_artifact, "openvino", engine_cache=cache)(**REQUEST).images[0])
    for blob in cache.rglob("*.blob"):
        blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    again = sdrt.load(tiny_artifact, "openvino", engine_cache=cache)
    np.testing.assert_array_equal(np.asarray(again(**REQUEST).images[0]), image)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="dropping mapped pages is done on Linux only")
def test_released_pages_leave_the_process_but_not_the_data(tmp_path):
    path = tmp_path / "weights.bin"
    content = np.random.default_rng(0).integers(0, 255, size=8 << 20, dtype=np.uint8).tobytes()
    path.write_bytes(content)
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:
        assert view[:] == content  # every page touched
        assert mapped.resident_bytes(path) >= len(content)
        ranges = mapped.mapped_ranges({path})
        assert sum(length for _, length in ranges) >= len(content)
        assert mapped.release(ranges) >= len(content)
        assert mapped.resident_bytes(path) < len(content) // 8
        assert view[:] == content  # read back from the file
    assert mapped.mapped_ranges({tmp_path / "other.bin"}) == []
