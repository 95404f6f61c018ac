"""The native TensorRT backend as far as a machine without TensorRT can check it: the engine
file's key and the one line that says what to install. (Its engines are built and run on NVIDIA
GPUs only; the README's support table says this path has not run yet.)"""
import json
import shutil

import pytest

import sdrt
from sdrt.runtime.artifact import open_artifact
from sdrt.runtime.cache import engine_key
from sdrt.runtime.errors import BackendUnavailableError


def test_engine_files_are_named_by_what_made_them(tiny_artifact, tmp_path):
    unet = open_artifact(tiny_artifact).component("unet")
    settings = {"tensorrt": "10.9", "gpu": "NVIDIA H100", "sm": "9.0", "fp16": True, "refit": False,
                "shapes": {"sample": ((1, 4, 32, 32), (2, 4, 64, 64), (16, 4, 128, 128))}}
    key = engine_key(unet, settings)
    assert key.startswith("unet-") and key == engine_key(unet, dict(reversed(settings.items())))
    changed = [{**settings, "tensorrt": "10.10"}, {**settings, "gpu": "NVIDIA H200"}, {**settings, "refit": True},
               {**settings, "shapes": {"sample": ((1, 4, 32, 32), (2, 4, 64, 64), (8, 4, 128, 128))}}]
    assert len({key, *(engine_key(unet, other) for other in changed)}) == 1 + len(changed)
    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    manifest = folder / "sdrt.json"  # the UNet re-exported with other weights: another checksum
    data = json.loads(manifest.read_text())
    data["files"]["unet/model.onnx"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    assert engine_key(open_artifact(folder, verify_checksums=False).component("unet"), settings) != key


def test_without_tensorrt_the_backend_says_what_to_install(tiny_artifact):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailableError, match=r"pip install 'sdrt\[tensorrt\]'"):
        sdrt.load(tiny_artifact, backend="tensorrt")
    assert "tensorrt" not in sdrt.available_backends()
