"""LoRA merged at export time and applied at run time, against diffusers' load_lora_weights +
fuse_lora on the same tiny model, for a LoRA file in the diffusers/PEFT layout and the same
weights in kohya's layout."""
import json
import shutil

import numpy as np
import pytest

import sdrt
from sdrt.runtime.backends import BACKENDS
from sdrt.runtime.errors import RequestError
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


KOHYA_SD = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
KOHYA_SDXL = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


def write_lora(pairs, path, layout, kohya=KOHYA_SD, unet_names=None):
    """The pairs as a LoRA file in the diffusers/PEFT layout or kohya's (`kohya`: each network's
    prefix; `unet_names`: the UNet's modules by the names kohya's files give them)."""
    from safetensors.torch import save_file

    tensors = {}
    for (network, name), (down, up, alpha) in pairs.items():
        if layout == "peft":  # no alpha key: diffusers' files scale by 1 (alpha = rank), so fold it in
            stem = f"{network}.{name}"
            tensors[f"{stem}.lora_A.weight"] = down.contiguous()
            tensors[f"{stem}.lora_B.weight"] = (up * (alpha / RANK)).contiguous()
        else:
            named = (unet_names or {}).get(name, name) if network == "unet" else name
            stem = kohya[network] + named.replace(".", "_")
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


@pytest.mark.slow
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

    foreign = tmp_path / "foreign.safetensors"  # (SDXL's deepest block: no such module here)
    save_file({"lora_unet_input_blocks_8_1_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_input_blocks_8_1_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(foreign))
    with pytest.raises(ExportError, match=r"none of its 1 LoRA weight pairs names a module .*\(0 matched\)"):
        sdrt.export_checkpoint(tiny_checkpoint, tmp_path / "artifact", loras=[str(foreign)])
    assert not (tmp_path / "artifact").exists()
    with pytest.raises(ExportError, match="does not exist"):
        sdrt.export_checkpoint(tiny_checkpoint, tmp_path / "artifact", loras=[str(tmp_path / "missing.safetensors")])


# Run-time LoRA: the same files applied to the exported artifact's sessions, without re-export.

def sdrt_image(pipe, latents, prompt=PROMPT):
    return pipe(prompt, latents=latents, num_inference_steps=4, scheduler="euler", output_type="np").images


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("layout", ["peft", "kohya"])
def test_run_time_lora_matches_diffusers_fuse_lora(tiny_artifact, tiny_checkpoint, lora_files, backend, layout):
    if backend not in sdrt.available_backends():
        pytest.skip(f"{backend} is not installed")
    latents = gaussian_noise(8, (1, 4, 32, 32))
    pipe = sdrt.load(tiny_artifact, backend=backend)
    before = sdrt_image(pipe, latents)
    summary = pipe.load_lora(lora_files[layout], 0.8)
    assert summary["matched"] == {"text_encoder": 15, "unet": summary["pairs"] - 15} and summary["unmatched"] == 0
    ours = sdrt_image(pipe, latents)
    theirs = diffusers_image(tiny_checkpoint, latents, lora_files[layout], 0.8)
    # (the LoRA changes a convolution: ONNX Runtime's NCHWc pass, if it ran, would drop that
    # change and miss this bound by ~6/255)
    assert np.abs(ours - theirs).mean() <= 1 / 255
    assert np.abs(ours - before).mean() > 5 / 255
    pipe.unload_loras()
    assert pipe.loras == [] and np.array_equal(sdrt_image(pipe, latents), before)
    # two files add up: the same pairs at 0.5 and 0.3 are the one file at 0.8
    pipe.load_loras([(lora_files["peft"], 0.5), (lora_files["kohya"], 0.3)])
    assert [strength for _, strength in pipe.loras] == [0.5, 0.3]
    assert np.abs(sdrt_image(pipe, latents) - theirs).mean() <= 1 / 255


def test_run_time_lora_and_textual_inversion_together(tiny_artifact, tiny_checkpoint, lora_files, tmp_path):
    """Both replace text-encoder weights: the LoRA's projections and the longer token table."""
    from safetensors.torch import save_file

    vectors = torch.randn((2, 32), generator=torch.Generator().manual_seed(1)) * 0.5
    save_file({"<toy>": vectors}, str(tmp_path / "toy.safetensors"))
    prompt, latents = "a photo of <toy>", gaussian_noise(4, (1, 4, 32, 32))
    pipe = sdrt.load(tiny_artifact, backend="onnxruntime")
    pipe.load_textual_inversion(tmp_path / "toy.safetensors")
    pipe.load_lora(lora_files["kohya"], 0.8)
    ours = sdrt_image(pipe, latents, prompt)
    reference = diffusers.StableDiffusionPipeline.from_pretrained(tiny_checkpoint, safety_checker=None,
                                                                  requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    reference.scheduler = diffusers.EulerDiscreteScheduler.from_config(reference.scheduler.config)
    reference.load_textual_inversion(str(tmp_path / "toy.safetensors"))
    reference.load_lora_weights(str(lora_files["kohya"]))
    reference.fuse_lora(lora_scale=0.8)
    with torch.no_grad():
        theirs = reference(prompt, latents=torch.from_numpy(latents), num_inference_steps=4, guidance_scale=7.5,
                           output_type="np").images
    assert np.abs(ours - theirs).mean() <= 1 / 255
    pipe.unload_loras()  # the word stays
    assert pipe.tokenizer.encode(prompt)[-2:] == [49408, 49409]


def test_run_time_lora_errors(tiny_artifact, lora_files, tmp_path):
    from safetensors.torch import save_file

    pipe = sdrt.load(tiny_artifact, backend="onnxruntime")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"lora_unet_input_blocks_8_1_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_input_blocks_8_1_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(foreign))
    with pytest.raises(RequestError, match=r"none of its 1 LoRA weight pairs names a module .*\(0 matched\)"):
        pipe.load_lora(foreign)
    with pytest.raises(RequestError, match="does not exist"):
        pipe.load_lora(tmp_path / "missing.safetensors")
    with pytest.raises(RequestError, match="finite number"):
        pipe.load_lora(lora_files["peft"], float("nan"))
    half = tmp_path / "half.safetensors"  # one pair for this model, one for another
    save_file({"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.ones(4, 64),
               "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.ones(64, 4),
               "lora_unet_input_blocks_8_1_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_input_blocks_8_1_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(half))
    with pytest.warns(UserWarning, match="1 of its 2 weight pairs name no weight"):
        summary = pipe.load_lora(half)
    assert summary["matched"] == {"text_encoder": 0, "unet": 1} and pipe.loras == [(str(half), 1.0)]
    assert pipe("a cat", num_inference_steps=1, output_type="np").images.shape == (1, 64, 64, 3)
    # a module this model has, by its original-checkpoint name, with another model's shape
    wrong = tmp_path / "wrong.safetensors"
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(wrong))
    with pytest.raises(RequestError, match="down_blocks.1.attentions.0.proj_in by 8x8 values .* made for another"):
        pipe.load_lora(wrong)
    assert pipe.loras == [(str(half), 1.0)]


def test_generate_applies_loras(tiny_artifact, lora_files, tmp_path):
    from PIL import Image

    from sdrt.cli import main

    common = ["generate", PROMPT, "--artifact", str(tiny_artifact), "--backend", "onnxruntime", "--steps", "3",
              "--seed", "5"]
    assert main(common + ["-o", str(tmp_path / "plain.png")]) == 0
    assert main(common + ["--lora", f"{lora_files['peft']}:0.5", "--lora", f"{lora_files['kohya']}:0.3",
                          "-o", str(tmp_path / "lora.png")]) == 0
    pipe = sdrt.load(tiny_artifact, backend="onnxruntime")
    pipe.load_lora(lora_files["peft"], 0.8)
    expected = np.asarray(pipe(PROMPT, num_inference_steps=3, seed=5).images[0], dtype=float)
    got = np.asarray(Image.open(tmp_path / "lora.png"), dtype=float)
    assert np.abs(got - expected).mean() <= 1  # 0.5 + 0.3 of the same pairs, through PNG
    assert np.abs(got - np.asarray(Image.open(tmp_path / "plain.png"), dtype=float)).mean() > 5


def test_export_names_every_linear_and_convolution_weight_after_its_module(tiny_artifact, tiny_checkpoint):
    """The artifact contract run-time LoRA relies on (docs/artifact.md): model.<module>.weight, and
    model.<module>.weight.T for linear layers, which the ONNX files store transposed."""
    from transformers import CLIPTextModel

    from sdrt.runtime.artifact import open_artifact
    from sdrt.runtime.module_weights import ModuleWeights

    artifact = open_artifact(tiny_artifact)
    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_checkpoint / "unet")
    text_encoder = CLIPTextModel.from_pretrained(tiny_checkpoint / "text_encoder")
    for role, module in (("denoiser", unet), ("text_encoder", text_encoder)):
        weights = ModuleWeights(artifact.component_for_role(role))
        layers = {name: layer for name, layer in module.named_modules()
                  if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d))}
        assert layers and set(layers) <= set(weights.modules)
        stored = weights.read([weights.modules[name][0] for name in layers])
        for name, layer in layers.items():
            initializer, transposed = weights.modules[name]
            assert not (transposed and isinstance(layer, torch.nn.Conv2d))  # (a Gemm's linear weight: as is)
            expected = layer.weight.detach().numpy()
            np.testing.assert_array_equal(stored[initializer], expected.T if transposed else expected)


@pytest.mark.slow
def test_run_time_weights_in_external_data(tiny_checkpoint, tiny_artifact, lora_files, tmp_path, monkeypatch):
    """The same LoRA and textual-inversion word on an artifact whose networks keep every weight in
    external data files (as the SD 1.5 UNet does): the LoRA's weights are replaced in place, the
    longer token table through the rewritten model; the images equal the inline artifact's."""
    from safetensors.torch import save_file

    from sdrt.export import onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    external = sdrt.export_checkpoint(tiny_checkpoint, tmp_path / "external")
    assert (external / "text_encoder" / "model.onnx.data").is_file()
    save_file({"<toy>": torch.ones(32) * 0.3}, str(tmp_path / "toy.safetensors"))
    latents = gaussian_noise(6, (1, 4, 32, 32))
    images = []
    for artifact in (tiny_artifact, external):
        pipe = sdrt.load(artifact, backend="onnxruntime")
        pipe.load_textual_inversion(tmp_path / "toy.safetensors")
        pipe.load_lora(lora_files["kohya"], 0.8)
        images.append(sdrt_image(pipe, latents, "a photo of <toy>"))
    np.testing.assert_allclose(images[1], images[0], atol=1e-5)


def test_run_time_lora_on_onnx_runtimes_fused_unet(tiny_artifact, tiny_checkpoint, lora_files, tmp_path):
    """fp32 on onnxruntime runs a stored fp32-fused UNet (attention fused, projections kept by
    name): a LoRA lands on it as on the exported one, diffusers' fuse_lora the oracle."""
    from sdrt.export.variants import make_variants

    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    make_variants(folder, "fp32-fused", prompts=("a cat",), seeds=(0,), steps=1)
    pipe = sdrt.load(folder, backend="onnxruntime")
    assert pipe.precisions["unet"] == "fp32-fused"
    latents = gaussian_noise(8, (1, 4, 32, 32))
    summary = pipe.load_lora(lora_files["kohya"], 0.8)
    assert summary["unmatched"] == 0
    theirs = diffusers_image(tiny_checkpoint, latents, lora_files["kohya"], 0.8)
    assert np.abs(sdrt_image(pipe, latents) - theirs).mean() <= 1 / 255


# SDXL: the two text encoders ("lora_te1_" / "lora_te2_", "text_encoder." / "text_encoder_2.") and
# the UNet under the original checkpoints' (LDM / SGM) names in kohya's files, as kohya's SDXL
# trainer writes them; diffusers' own conversion of those names is the oracle.

def sdxl_lora_weights(checkpoint):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    networks = {"unet": diffusers.UNet2DConditionModel.from_pretrained(checkpoint / "unet"),
                "text_encoder": CLIPTextModel.from_pretrained(checkpoint / "text_encoder"),
                "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(checkpoint / "text_encoder_2")}
    convolutions = ("down_blocks.1.resnets.0.conv1", "up_blocks.0.resnets.1.conv2", "down_blocks.0.downsamplers.0.conv",
                    "up_blocks.0.upsamplers.0.conv", "up_blocks.1.resnets.0.conv_shortcut")
    generator = torch.Generator().manual_seed(2)
    pairs = {}
    for network, module in networks.items():
        for name, layer in module.named_modules():
            wanted = (name.endswith(("attn1.to_q", "attn2.to_k", "attn2.to_v", "ff.net.2", "proj_in",
                                     "self_attn.q_proj", "self_attn.out_proj"))
                      or name in convolutions or name == "mid_block.resnets.0.time_emb_proj")
            if not wanted:
                continue
            weight = layer.weight
            down = torch.randn((RANK, *weight.shape[1:]), generator=generator) * 0.3
            up = torch.randn((weight.shape[0], RANK, *([1] * (weight.dim() - 2))), generator=generator) * 0.3
            if network != "unet" and not name.startswith("text_model."):
                name = f"text_model.{name}"
            pairs[(network, name)] = (down, up, 2.0)
    assert {n for n, _ in pairs} == set(networks) and sum(name in convolutions for _, name in pairs) == 5
    from sdrt.runtime.lora import ldm_unet_names

    # the UNet's modules by their original-checkpoint names (kohya's SDXL keys)
    ldm = {diffusers_name: name for name, diffusers_name in
           ldm_unet_names(name for name, _ in networks["unet"].named_modules()).items()}
    return pairs, ldm


@pytest.fixture(scope="module")
def sdxl_lora_files(tiny_sdxl_checkpoint, tmp_path_factory):
    pairs, ldm = sdxl_lora_weights(tiny_sdxl_checkpoint)
    folder = tmp_path_factory.mktemp("sdxl-lora")
    return {layout: write_lora(pairs, folder / f"{layout}.safetensors", layout, KOHYA_SDXL, ldm)
            for layout in ("peft", "kohya")}


def sdxl_reference(checkpoint, lora=None, embedding=None):
    # (not test_families.reference: its clip_skip shim of text_encoder.text_model would make
    # diffusers read LoRA keys for transformers 4's text-encoder layout)
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    if embedding is not None:  # diffusers' documented way: each half into its encoder
        from safetensors.torch import load_file

        vectors = load_file(str(embedding))
        pipe.load_textual_inversion(vectors["clip_l"], token="<toy>", text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(vectors["clip_g"], token="<toy>", text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
        pipe.fuse_lora(lora_scale=0.8)
    return pipe


SDXL_REQUEST = dict(num_inference_steps=4, guidance_scale=5.0, height=48, width=64)


def sdxl_images(pipe, theirs, latents, prompt=PROMPT):
    from test_families import close, run_reference

    ours = pipe(prompt, latents=latents, scheduler="euler", output_type="np", **SDXL_REQUEST).images
    return ours, close(ours, run_reference(theirs, latents, prompt=prompt, **SDXL_REQUEST))


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("layout", ["peft", "kohya"])
def test_sdxl_lora_at_run_time_matches_diffusers(tiny_sdxl_artifact, tiny_sdxl_checkpoint, sdxl_lora_files, backend,
                                                 layout):
    if backend not in sdrt.available_backends():
        pytest.skip(f"{backend} is not installed")
    latents = gaussian_noise(8, (1, 4, 24, 32))
    pipe = sdrt.load(tiny_sdxl_artifact, backend=backend)
    before = pipe(PROMPT, latents=latents, scheduler="euler", output_type="np", **SDXL_REQUEST).images
    summary = pipe.load_lora(sdxl_lora_files[layout], 0.8)
    assert summary["unmatched"] == 0 and all(summary["matched"].values())
    assert set(summary["matched"]) == {"text_encoder", "text_encoder_2", "unet"}
    ours, difference = sdxl_images(pipe, sdxl_reference(tiny_sdxl_checkpoint, sdxl_lora_files[layout]), latents)
    assert difference <= 1 / 255
    assert np.abs(ours - before).mean() > 5 / 255  # the LoRA changed the image


@pytest.mark.slow
def test_sdxl_lora_merged_at_export_matches_diffusers(tiny_sdxl_checkpoint, sdxl_lora_files, tmp_path):
    artifact = sdrt.export_checkpoint(tiny_sdxl_checkpoint, tmp_path / "artifact",
                                      loras=[f"{sdxl_lora_files['kohya']}:0.8"])
    recorded, = json.loads((artifact / "sdrt.json").read_text())["exporter"]["loras"]
    assert recorded["unmatched"] == 0 and set(recorded["matched"]) == {"text_encoder", "text_encoder_2", "unet"}
    _, difference = sdxl_images(sdrt.load(artifact, backend="onnxruntime"),
                                sdxl_reference(tiny_sdxl_checkpoint, sdxl_lora_files["kohya"]),
                                gaussian_noise(8, (1, 4, 24, 32)))
    assert difference <= 1 / 255


@pytest.mark.slow
def test_sdxl_two_vector_embedding_matches_diffusers(tiny_sdxl_artifact, tiny_sdxl_checkpoint, tmp_path):
    """SDXL's embedding files: clip_l vectors for the first text encoder, clip_g for the second."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(3)
    path = tmp_path / "toy.safetensors"
    save_file({"clip_l": torch.randn((2, 32), generator=generator) * 0.5,
               "clip_g": torch.randn((2, 48), generator=generator) * 0.5}, str(path))
    pipe = sdrt.load(tiny_sdxl_artifact, backend="openvino" if "openvino" in sdrt.available_backends()
                     else "onnxruntime")
    assert pipe.load_textual_inversion(path, token="<toy>") == "<toy>"
    ours, difference = sdxl_images(pipe, sdxl_reference(tiny_sdxl_checkpoint, embedding=path),
                                   gaussian_noise(9, (1, 4, 24, 32)), "a photo of <toy>")
    assert difference <= 1 / 255
    plain = sdrt.load(tiny_sdxl_artifact, backend="onnxruntime")
    plain_image = plain("a photo of <toy>", latents=gaussian_noise(9, (1, 4, 24, 32)), scheduler="euler",
                        output_type="np", **SDXL_REQUEST).images
    assert np.abs(ours - plain_image).mean() > 1 / 255  # the word's vectors took part
    single = tmp_path / "single.safetensors"
    save_file({"<one>": torch.zeros(1, 32)}, str(single))
    with pytest.raises(RequestError, match="one set of vectors; this model has 2 text encoders"):
        pipe.load_textual_inversion(single)


@pytest.mark.slow
def test_lcm_lora_on_sdxl_matches_diffusers(tiny_sdxl_artifact, tiny_sdxl_checkpoint, sdxl_lora_files):
    """LCM-LoRA: a LoRA and the lcm sampler at guidance 1 (one UNet call per step), against
    diffusers' SDXL pipeline with the same LoRA and LCMScheduler. One step for the images (LCM's
    later steps add noise, which diffusers draws from torch's generator); the 4-step plan's
    timesteps are LCMScheduler's on this checkpoint's config."""
    from test_families import close, run_reference
    from test_pipeline_parity import count_denoiser_batches

    latents = gaussian_noise(10, (1, 4, 24, 32))
    pipe = sdrt.load(tiny_sdxl_artifact, backend="onnxruntime")
    pipe.load_lora(sdxl_lora_files["kohya"], 0.8)
    calls = count_denoiser_batches(pipe)
    request = dict(num_inference_steps=1, guidance_scale=1.0, height=48, width=64)
    ours = pipe(PROMPT, latents=latents, scheduler="lcm", output_type="np", **request).images
    theirs = sdxl_reference(tiny_sdxl_checkpoint, sdxl_lora_files["kohya"])
    theirs.scheduler = diffusers.LCMScheduler.from_config(theirs.scheduler.config)
    assert close(ours, run_reference(theirs, latents, prompt=PROMPT, **request)) <= 1 / 255
    assert set(calls) == {1}
    theirs.scheduler.set_timesteps(4)
    assert [step.timestep for step in pipe.plan(4, "lcm").steps] == theirs.scheduler.timesteps.tolist()
