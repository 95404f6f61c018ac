"""LoRA merged at export time against diffusers' load_lora_weights + fuse_lora on the same tiny
model, for a LoRA file in the diffusers/PEFT layout and the same weights in kohya's layout."""
import json

import numpy as np
import pytest

import sdrt
from sdrt.runtime.noise import gaussian_noise

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers loads LoRA files through it

PROMPT = "a red circle on a blue background"
RANK = 4


def lora_weights(checkpoint):
    """Random LoRA pairs for some attention projections, a convolution and text-encoder layers:
    {(network, module name): (down, up, alpha)}."""
    unet = diffusers.UNet2DConditionModel.from_pretrained(checkpoint / "unet")
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel.from_pretrained(checkpoint / "text_encoder")
    generator = torch.Generator().manual_seed(0)
    pairs = {}
    for network, module in (("unet", unet), ("text_encoder", text_encoder)):
        for name, layer in module.named_modules():
            wanted = (name.endswith(("attn1.to_q", "attn2.to_k", "attn2.to_v", "attn1.to_out.0"))
                      or name == "down_blocks.0.resnets.0.conv1"
                      # (diffusers tells kohya text-encoder files apart by their out_proj keys)
                      or name.endswith(("self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj")))
            if not wanted:
                continue
            weight = layer.weight
            down = torch.randn((RANK, *weight.shape[1:]), generator=generator) * 0.3
            up = torch.randn((weight.shape[0], RANK, *([1] * (weight.dim() - 2))), generator=generator) * 0.3
            if network == "text_encoder" and not name.startswith("text_model."):
                name = f"text_model.{name}"  # as checkpoints and LoRA files name CLIP's layers
            pairs[(network, name)] = (down, up, 2.0)
    return pairs


def write_lora(pairs, path, layout):
    from safetensors.torch import save_file

    tensors = {}
    for (network, name), (down, up, alpha) in pairs.items():
        if layout == "peft":  # no alpha key: diffusers' files scale by 1 (alpha = rank), so fold it in
            stem = f"{network}.{name}"
            tensors[f"{stem}.lora_A.weight"] = down.contiguous()
            tensors[f"{stem}.lora_B.weight"] = (up * (alpha / RANK)).contiguous()
        else:
            stem = ("lora_unet_" if network == "unet" else "lora_te_") + name.replace(".", "_")
            tensors[f"{stem}.lora_down.weight"] = down.contiguous()
            tensors[f"{stem}.lora_up.weight"] = up.contiguous()
            tensors[f"{stem}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def lora_files(tiny_checkpoint, tmp_path_factory):
    pairs = lora_weights(tiny_checkpoint)
    folder = tmp_path_factory.mktemp("lora")
    return {layout: write_lora(pairs, folder / f"{layout}.safetensors", layout) for layout in ("peft", "kohya")}


def diffusers_image(checkpoint, latents, lora=None, strength=1.0):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(checkpoint, safety_checker=None,
                                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
        pipe.fuse_lora(lora_scale=strength)
    with torch.no_grad():
        return pipe(PROMPT, latents=torch.from_numpy(latents), num_inference_steps=4, guidance_scale=7.5,
                    output_type="np").images


@pytest.mark.parametrize("layout", ["peft", "kohya"])
def test_merged_lora_matches_diffusers_fuse_lora(tiny_checkpoint, lora_files, tmp_path, layout):
    artifact = sdrt.export_checkpoint(tiny_checkpoint, tmp_path / "artifact", loras=[f"{lora_files[layout]}:0.8"])
    latents = gaussian_noise(8, (1, 4, 32, 32))
    ours = sdrt.load(artifact)(PROMPT, latents=latents, num_inference_steps=4, scheduler="euler",
                               output_type="np").images
    theirs = diffusers_image(tiny_checkpoint, latents, lora_files[layout], 0.8)
    plain = diffusers_image(tiny_checkpoint, latents)
    assert np.abs(ours - theirs).mean() <= 1 / 255
    assert np.abs(theirs - plain).mean() > 5 / 255  # the LoRA changed the image
    recorded, = json.loads((artifact / "sdrt.json").read_text())["exporter"]["loras"]
    assert recorded["strength"] == 0.8 and recorded["unmatched"] == 0
    assert recorded["matched"]["text_encoder"] == 3 * 5  # q, v and out of 5 layers
    assert recorded["matched"]["unet"] == recorded["pairs"] - 15 > 0


def test_a_lora_for_another_model_is_refused(tiny_checkpoint, tmp_path):
    from safetensors.torch import save_file

    from sdrt.export.source import ExportError

    foreign = tmp_path / "foreign.safetensors"
    save_file({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(foreign))
    with pytest.raises(ExportError, match=r"none of its 1 LoRA weight pairs names a module .*\(0 matched\)"):
        sdrt.export_checkpoint(tiny_checkpoint, tmp_path / "artifact", loras=[str(foreign)])
    assert not (tmp_path / "artifact").exists()
    with pytest.raises(ExportError, match="does not exist"):
        sdrt.export_checkpoint(tiny_checkpoint, tmp_path / "artifact", loras=[str(tmp_path / "missing.safetensors")])
