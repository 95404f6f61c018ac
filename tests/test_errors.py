"""Every bad input gives one sentence that says what to change, and leaves nothing behind."""
import json
import shutil

import numpy as np
import pytest

import sdrt
from sdrt.cli import main
from sdrt.models.manifest import sha256_file
from sdrt.runtime.errors import ArtifactError, RequestError

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def pipe(tiny_artifact):
    return sdrt.load(tiny_artifact)


@pytest.fixture
def artifact_copy(tiny_artifact, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(tiny_artifact, target)
    return target


def _rewrite_manifest(folder, change):
    path = folder / "sdrt.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("size", [(62, 64), (64, 90)])
def test_size_not_a_multiple(pipe, size):
    with pytest.raises(RequestError, match=r"height and width must be multiples of 4 for this model, got "
                                           rf"{size[0]}x{size[1]}; try"):
        pipe("x", height=size[0], width=size[1], num_inference_steps=1)


@pytest.mark.parametrize("steps", [0, -1])
def test_steps_below_one(pipe, steps):
    with pytest.raises(RequestError, match="num_inference_steps must be an integer >= 1"):
        pipe("x", num_inference_steps=steps)


@pytest.mark.parametrize("guidance", [float("nan"), -1.0, float("inf")])
def test_guidance_nan_or_negative(pipe, guidance):
    with pytest.raises(RequestError, match="guidance_scale must be a finite number >= 0"):
        pipe("x", guidance_scale=guidance, num_inference_steps=1)


def test_unknown_scheduler_lists_the_known_ones(pipe):
    with pytest.raises(RequestError, match="Unknown scheduler 'heun'; choose one of: ddim, pndm, euler, euler_a, "
                                           "dpmpp_2m, dpmpp_2m_karras, lcm"):
        pipe("x", scheduler="heun", num_inference_steps=1)


def test_latents_of_the_wrong_shape(pipe):
    with pytest.raises(RequestError, match=r"latents must have shape \(1, 4, 32, 32\)"):
        pipe("x", latents=np.zeros((1, 4, 8, 8), np.float32), num_inference_steps=1)


def test_folder_without_manifest(artifact_copy):
    (artifact_copy / "sdrt.json").unlink()
    with pytest.raises(ArtifactError, match="has no sdrt.json, so it is not a complete sdrt artifact"):
        sdrt.load(artifact_copy)


def test_manifest_from_a_newer_schema(artifact_copy):
    _rewrite_manifest(artifact_copy, lambda m: m.update(schema_version=99))
    with pytest.raises(ArtifactError, match="schema version 99, but this sdrt reads up to version 1; upgrade sdrt"):
        sdrt.load(artifact_copy)


def test_manifest_that_breaks_the_schema(artifact_copy):
    _rewrite_manifest(artifact_copy, lambda m: m["pipeline"].pop("latent_channels"))
    with pytest.raises(ArtifactError, match="does not follow the manifest schema at pipeline"):
        sdrt.load(artifact_copy)


def test_corrupt_file_fails_its_checksum(artifact_copy):
    path = artifact_copy / "vae_decoder" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="vae_decoder/model.onnx .* does not match its SHA-256 checksum"):
        sdrt.load(artifact_copy)


def test_truncated_file_is_reported(artifact_copy):
    path = artifact_copy / "unet" / "model.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="unet/model.onnx in .* has 1000 bytes, the manifest says"):
        sdrt.load(artifact_copy)


def _model_with_external_data(location: str):
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    node = helper.make_node("Add", ["latent_sample", "w"], ["sample"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("latent_sample", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("sample", TensorProto.FLOAT, None)], [weight])
    return helper.make_model(graph)


@pytest.mark.parametrize("location", ["../../outside.bin", "/etc/passwd"])
def test_external_data_outside_the_folder_is_refused(artifact_copy, location):
    path = artifact_copy / "vae_decoder" / "model.onnx"
    onnx.save_model(_model_with_external_data(location), path)

    def update(manifest):
        manifest["files"]["vae_decoder/model.onnx"] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    _rewrite_manifest(artifact_copy, update)
    with pytest.raises(ArtifactError, match="outside the artifact folder; refusing to load it"):
        sdrt.load(artifact_copy)


def test_manifest_path_outside_the_folder_is_refused(artifact_copy):
    _rewrite_manifest(artifact_copy, lambda m: m["components"]["unet"].update(path="../../../etc/hosts"))
    with pytest.raises(ArtifactError, match="a path outside the artifact folder; refusing to load it"):
        sdrt.load(artifact_copy)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt"])
def test_pickle_checkpoint_refused_without_allow_pickle(tmp_path, capsys, suffix):
    checkpoint = tmp_path / f"model{suffix}"
    checkpoint.write_bytes(b"not really a pickle")
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "out")]) == 2
    assert "is a pickle checkpoint; loading one runs arbitrary code" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.name]


def test_generate_into_a_missing_folder(tiny_artifact, tmp_path, capsys):
    target = tmp_path / "missing" / "out.png"
    assert main(["generate", "x", "--artifact", str(tiny_artifact), "--steps", "1", "-o", str(target)]) == 2
    assert "for the output image does not exist; create it or choose another --output" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_interrupted_export_leaves_nothing_loadable(tiny_checkpoint, tmp_path, monkeypatch):
    from sdrt.export import exporter

    real = exporter.export_component
    calls = []

    def interrupt_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(exporter, "export_component", interrupt_on_second)
    with pytest.raises(KeyboardInterrupt):
        exporter.export_checkpoint(tiny_checkpoint, tmp_path / "artifact")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ArtifactError, match="does not exist; export one"):
        sdrt.load(tmp_path / "artifact")


def test_existing_output_is_not_overwritten_silently(tiny_checkpoint, tmp_path):
    from sdrt.export.exporter import export_checkpoint
    from sdrt.export.source import ExportError

    (tmp_path / "artifact").mkdir()
    (tmp_path / "artifact" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not empty; choose another path or pass --overwrite"):
        export_checkpoint(tiny_checkpoint, tmp_path / "artifact")
    assert (tmp_path / "artifact" / "keep.txt").read_text() == "mine"


def test_unknown_backend(tiny_artifact):
    with pytest.raises(RequestError, match="Unknown backend 'tensorflow'; choose one of: onnxruntime, openvino"):
        sdrt.load(tiny_artifact, backend="tensorflow")
