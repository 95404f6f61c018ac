"""Where checkpoints come from: local folders, hub ids and single files end as one folder path."""
import pytest

from sdrt.export.source import ExportError, resolve_checkpoint


def test_local_folder(tiny_checkpoint):
    checkpoint = resolve_checkpoint(str(tiny_checkpoint))
    assert checkpoint.folder == tiny_checkpoint


def test_folder_that_is_not_a_diffusers_layout(tmp_path):
    with pytest.raises(ExportError, match="has no model_index.json; give a folder in the diffusers layout"):
        resolve_checkpoint(str(tmp_path))


def test_hub_id_downloads_then_takes_the_folder_path(tiny_checkpoint, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    asked = {}

    def fake_download(repo_id, allow_patterns):
        asked["repo"], asked["patterns"] = repo_id, allow_patterns
        return str(tiny_checkpoint)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    checkpoint = resolve_checkpoint("someone/sd-model")
    assert asked["repo"] == "someone/sd-model" and "unet/*.safetensors" in asked["patterns"]
    assert checkpoint.folder == tiny_checkpoint and checkpoint.description == "hub:someone/sd-model"


def test_hub_id_offline_says_what_to_do(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(repo_id, allow_patterns):
        raise OSError("We couldn't connect to the hub and the files are not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ExportError, match="Could not fetch nobody/nothing from the hub .* pass the local folder"):
        resolve_checkpoint("nobody/nothing")


def test_missing_path(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("family, config", [("tiny", "tiny"), ("tiny_sdxl", "tiny-sdxl"),
                                            ("tiny_sdxl_refiner", "tiny-sdxl-refiner")])
def test_single_file_checkpoint_converts_to_the_folders_weights(family, config, tmp_path, request):
    """An original-layout .safetensors file (SDXL's: the SGM layout with an OpenCLIP second text
    encoder) converts to the same weights as the diffusers folder, in the config's pipeline."""
    torch = pytest.importorskip("torch")
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from ldm_checkpoint import write_ldm_checkpoint

    folder = request.getfixturevalue(f"{family}_checkpoint")
    single = write_ldm_checkpoint(folder, tmp_path / "model.safetensors")
    checkpoint = resolve_checkpoint(str(single), work_dir=tmp_path, single_file_config=config)
    assert checkpoint.description == "file:model.safetensors"
    index = json.loads((checkpoint.folder / "model_index.json").read_text())
    assert index["_class_name"] == json.loads((folder / "model_index.json").read_text())["_class_name"]
    parts = [(cls, part) for cls, part in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae"),
                                           (CLIPTextModel, "text_encoder"),
                                           (CLIPTextModelWithProjection, "text_encoder_2"))
             if (folder / part).is_dir()]
    assert len(parts) == {"tiny": 3, "tiny-sdxl": 4, "tiny-sdxl-refiner": 3}[config]
    for cls, part in parts:
        original = cls.from_pretrained(folder / part).state_dict()
        converted = cls.from_pretrained(checkpoint.folder / part).state_dict()
        assert original.keys() == converted.keys(), part
        for key in original:
            assert torch.equal(original[key], converted[key]), (part, key)


def test_single_file_with_an_unknown_config_name(tmp_path):
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"")
    with pytest.raises(ExportError, match="Unknown model config 'sdxxl'"):
        resolve_checkpoint(str(single), work_dir=tmp_path, single_file_config="sdxxl")


def test_random_checkpoints_name_clip_weights_like_real_ones(tiny_checkpoint):
    """transformers 4.x loads a text encoder only from text_model.* keys (real checkpoints'
    layout), and the peers `sdrt bench` compares against run on it; transformers 5 reads both."""
    from safetensors import safe_open
    from transformers import CLIPTextModel

    with safe_open(tiny_checkpoint / "text_encoder" / "model.safetensors", framework="numpy") as weights:
        keys = list(weights.keys())
    assert keys and all(key.startswith("text_model.") for key in keys)
    model = CLIPTextModel.from_pretrained(tiny_checkpoint / "text_encoder")
    with safe_open(tiny_checkpoint / "text_encoder" / "model.safetensors", framework="pt") as weights:
        stored = weights.get_tensor("text_model.final_layer_norm.weight")
    loaded = model.state_dict()  # transformers 5 names them without the prefix, 4.x with it
    assert (loaded.get("final_layer_norm.weight", loaded.get("text_model.final_layer_norm.weight")) == stored).all()
