"""Precision variants stored in the artifact (issue 6, fp16 first): making them from the CLI, the
manifest entries and quality reports, choosing them at load, and leaving the artifact intact
when making fails. Oracles: scikit-image's PSNR/SSIM, an independent re-measurement of the
report's images, ONNX's own reading of the variant files, the demo model's checker."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import sdrt
from sdrt.cli import main
from sdrt.export.metrics import psnr, ssim
from sdrt.runtime.artifact import open_artifact
from sdrt.runtime.errors import ArtifactError, RequestError

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def fp16_artifact(tiny_checkpoint, tmp_path_factory):
    """The tiny model exported with `--precision fp32,fp16`."""
    folder = tmp_path_factory.mktemp("variants") / "tiny16"
    assert main(["export", str(tiny_checkpoint), "-o", str(folder), "--precision", "fp32,fp16"]) == 0
    return folder


def test_every_variant_precision_the_runtime_names_has_a_maker():
    from sdrt.export.variants import MAKERS
    from sdrt.runtime.precisions import VARIANT_PRECISIONS

    assert set(MAKERS) == set(VARIANT_PRECISIONS)  # no name a user can ask for that nothing makes
    from sdrt.models.manifest import SCHEMA_FILE

    schema = json.loads(SCHEMA_FILE.read_text())
    variant = schema["properties"]["components"]["additionalProperties"]["properties"]["variants"]
    assert set(VARIANT_PRECISIONS) <= set(variant["additionalProperties"]["properties"]["precision"]["enum"])


def test_psnr_and_ssim_match_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 56, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-25, 25, a.shape), 0, 255).astype(np.uint8)
    assert psnr(a, b) == pytest.approx(metrics.peak_signal_noise_ratio(a, b, data_range=255), rel=1e-12)
    expected = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                             channel_axis=-1, data_range=255)
    assert ssim(a, b) == pytest.approx(expected, rel=1e-12)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)


@pytest.mark.slow
def test_variant_entries_hold_fp16_files_how_they_were_made_and_their_report(fp16_artifact):
    import onnx

    manifest = open_artifact(fp16_artifact).manifest  # schema and checksums, variants included
    for name in ("text_encoder", "unet"):
        variant = manifest["components"][name]["variants"]["fp16"]
        assert variant["path"] == f"variants/fp16/{name}/model.onnx"
        assert variant["made_by"]["tool"].startswith("onnxruntime.transformers.float16")
        assert variant["size"] == sum(manifest["files"][f]["size"] for f in variant["files"])
        model = onnx.load(str(fp16_artifact / variant["path"]))
        kinds = {t.data_type for t in model.graph.initializer}
        assert onnx.TensorProto.FLOAT16 in kinds
        boundary = [t.type.tensor_type.elem_type for t in [*model.graph.input, *model.graph.output]]
        assert onnx.TensorProto.FLOAT16 not in boundary  # inputs and outputs stay as the manifest says
        quality = variant["quality"]
        assert 0 < quality["output_mean_abs_diff"] <= quality["output_max_abs_diff"] < 0.1
    assert "variants" not in manifest["components"]["vae_decoder"]  # fp16 leaves the VAE decoder fp32
    fp16_bytes = manifest["components"]["unet"]["variants"]["fp16"]["size"]
    fp32_bytes = sum(manifest["files"][f]["size"] for f in manifest["components"]["unet"]["files"])
    assert fp16_bytes < 0.6 * fp32_bytes


@pytest.mark.slow
def test_quality_report_is_what_a_user_measures(fp16_artifact):
    report = open_artifact(fp16_artifact).manifest["quality_reports"]["fp16"]
    assert report["precisions"] == {"text_encoder": "fp16", "unet": "fp16", "vae_decoder": "fp32"}
    assert report["images"] == len(report["prompts"]) * len(report["seeds"]) == 4
    reference = sdrt.load(fp16_artifact, backend=report["backend"])
    variant = sdrt.load(fp16_artifact, backend=report["backend"], precision="fp16")
    psnrs, ssims = [], []
    for prompt in report["prompts"]:
        for seed in report["seeds"]:
            settings = dict(seed=seed, num_inference_steps=report["steps"], guidance_scale=report["guidance_scale"])
            a = np.asarray(reference(prompt, **settings).images[0])
            b = np.asarray(variant(prompt, **settings).images[0])
            psnrs.append(psnr(a, b))
            ssims.append(ssim(a, b))
    assert report["psnr_db_mean"] == pytest.approx(np.mean(psnrs), rel=1e-9)
    assert report["psnr_db_min"] == pytest.approx(min(psnrs), rel=1e-9)
    assert report["ssim_mean"] == pytest.approx(np.mean(ssims), rel=1e-9)
    assert 25 < report["psnr_db_min"] and 0.9 < report["ssim_min"] < 1  # close, and not the fp32 files again


@pytest.mark.slow
def test_load_picks_variants_by_name_or_per_component(fp16_artifact, backends):
    for backend in backends:
        pipe = sdrt.load(fp16_artifact, backend=backend, precision="fp16")
        assert pipe.precisions == {"text_encoder": "fp16", "unet": "fp16", "vae_decoder": "fp32"}
        image = np.asarray(pipe("a cat", seed=3, num_inference_steps=3).images[0])
        fp32 = np.asarray(sdrt.load(fp16_artifact, backend=backend)("a cat", seed=3, num_inference_steps=3).images[0])
        assert 25 < psnr(fp32, image) < float("inf")
    mixed = sdrt.load(fp16_artifact, backend="onnxruntime", precision={"unet": "fp16"})
    assert mixed.precisions == {"text_encoder": "fp32", "unet": "fp16", "vae_decoder": "fp32"}


def write_random_lora(path, seed=0):
    """A kohya-layout LoRA for a UNet attention projection and convolution and a text-encoder
    projection of the tiny model."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    shapes = {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v": ((4, 32), (64, 4)),
              "lora_unet_down_blocks_0_resnets_0_conv1": ((4, 32, 3, 3), (32, 4, 1, 1)),
              "lora_te_text_model_encoder_layers_0_self_attn_q_proj": ((4, 32), (32, 4))}
    tensors = {}
    for stem, (down, up) in shapes.items():
        tensors[f"{stem}.lora_down.weight"] = (rng.standard_normal(down) * 0.5).astype(np.float32)
        tensors[f"{stem}.lora_up.weight"] = (rng.standard_normal(up) * 0.5).astype(np.float32)
    save_file(tensors, str(path))
    return path


@pytest.mark.slow
def test_run_time_lora_on_fp16_networks(fp16_artifact, backends, tmp_path):
    """fp16 weights replaced at run time (cast from fp32 + update) change the image as they do in
    fp32; on ONNX Runtime's CPU provider the fp16 weights are cast by its constant folding, which
    must see the replaced values."""
    lora = write_random_lora(tmp_path / "lora.safetensors")
    for backend in backends:
        images = {}
        for precision in ("fp32", "fp16"):
            pipe = sdrt.load(fp16_artifact, backend=backend, precision=precision)
            before = np.asarray(pipe("a cat", seed=3, num_inference_steps=3).images[0], dtype=float)
            assert pipe.load_lora(lora, 0.7)["matched"] == {"text_encoder": 1, "unet": 2}
            images[precision] = (before, np.asarray(pipe("a cat", seed=3, num_inference_steps=3).images[0],
                                                    dtype=float))
        effect = np.abs(images["fp32"][1] - images["fp32"][0]).mean()
        assert effect > 3
        assert np.abs(images["fp16"][1] - images["fp32"][1]).mean() < 0.1 * effect, backend


@pytest.mark.slow
def test_load_refuses_precisions_it_cannot_serve(fp16_artifact, tiny_artifact):
    with pytest.raises(ArtifactError, match="no fp16 variant of any network.*sdrt quantize"):
        sdrt.load(tiny_artifact, backend="onnxruntime", precision="fp16")
    with pytest.raises(ArtifactError, match="vae_decoder has no fp16 variant .*fp32"):
        sdrt.load(fp16_artifact, backend="onnxruntime", precision={"vae_decoder": "fp16"})
    with pytest.raises(RequestError, match="vae, which the pipeline does not run"):
        sdrt.load(fp16_artifact, backend="onnxruntime", precision={"vae": "fp16"})
    with pytest.raises(RequestError, match="Unknown precision 'fp8'"):
        sdrt.load(fp16_artifact, backend="onnxruntime", precision="fp8")


def test_a_failed_quantize_leaves_the_artifact_as_it_was(tiny_artifact, tmp_path, monkeypatch):
    from sdrt.export import variants

    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted while measuring")

    monkeypatch.setattr(variants, "measure", fail)
    killed = folder / "variants" / ".partial-0badf00d" / "unet"  # what a run killed outright leaves
    killed.mkdir(parents=True)
    (killed / "model.onnx").write_bytes(b"half written")
    with pytest.raises(RuntimeError, match="interrupted"):
        variants.make_variants(folder, "fp16")
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before and not list((folder / "variants").iterdir())
    assert main(["quantize", str(folder), "--precision", "fp16", "--components", "vae"]) == 2


@pytest.mark.slow
def test_the_report_holds_one_pipeline_at_a_time(tiny_artifact, tmp_path, monkeypatch):
    """Two SD 1.5 pipelines do not fit beside each other in 24 GiB: the fp32 images are made,
    and that pipeline released, before the variant's pipeline opens; each network's output
    difference is still measured on every call the fp32 images made."""
    import gc
    import weakref

    from sdrt.export import variants
    from sdrt.runtime import pipeline

    opened, alive_at_open = [], []

    class Counted(pipeline.StableDiffusionPipeline):
        def __init__(self, *args, **kwargs):
            gc.collect()
            alive_at_open.append(sum(ref() is not None for ref in opened))
            super().__init__(*args, **kwargs)
            opened.append(weakref.ref(self))

    monkeypatch.setattr(pipeline, "StableDiffusionPipeline", Counted)
    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    variants.make_variants(folder, "fp16", ["unet"], steps=2)
    assert alive_at_open == [0, 0]
    unet = open_artifact(folder).manifest["components"]["unet"]["variants"]["fp16"]["quality"]
    # 4 images x 3 calls (pndm's 2 steps: one call more at the start)
    assert unet["inputs"] == "the 12 denoiser calls of the report's fp32 images"
    assert 0 < unet["output_mean_abs_diff"] <= unet["output_max_abs_diff"] < 0.1


@pytest.mark.parametrize("precision,components,bound", [
    ("fp16", ["text_encoder", "unet", "vae_decoder"], 0.01),  # issue 6: fp16 within 0.01 of fp32
    ("bf16", None, 0.01),  # issue 6: fp16 and bf16 within 0.01
    ("int8", None, 0.03),  # issue 6: int8 static within 0.03 of fp32
    ("int8-qdq", None, 0.03),
    ("int8-weights", None, 0.03),  # held to int8's bound
    ("int4-weights", None, None),  # reported as measured
])
@pytest.mark.slow
def test_variants_keep_the_demo_models_prompt_fidelity(precision, components, bound, tmp_path):
    """Prompt fidelity next to fp32's on 12 evaluation prompts, seed 1 (the closing note and
    docs/precisions.md give the 20-prompt figures)."""
    if precision not in ("fp16", "bf16"):
        pytest.importorskip("nncf")
    if precision == "bf16":
        pytest.importorskip("openvino")
    from sdrt.export.variants import make_variants

    folder = shutil.copytree(sdrt.demo_artifact(), tmp_path / "demo")
    report = make_variants(folder, precision, components, steps=4, fidelity_prompts=12)
    fidelity = report["fidelity"]
    assert fidelity["fp32"] >= 0.9 and 0 <= fidelity[precision] <= 1
    if bound is not None:
        assert abs(fidelity[precision] - fidelity["fp32"]) <= bound, fidelity
    stored = json.loads((folder / "sdrt.json").read_text())["quality_reports"][precision]
    assert stored["fidelity"] == fidelity
    if precision == "bf16":  # no files: the report also holds each network's output difference
        import openvino as ov

        networks = stored["networks"]
        assert set(networks) == {"text_encoder", "unet", "vae_decoder"}
        if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):  # else OpenVINO computes fp32
            assert all(0 < n["output_mean_abs_diff"] <= n["output_max_abs_diff"] for n in networks.values())


@pytest.mark.slow
@pytest.mark.parametrize("precision,networks", [("int8-weights", ["text_encoder", "unet", "vae_decoder"]),
                                                ("int4-weights", ["text_encoder", "unet"])])
def test_weight_only_variants_are_openvino_models_with_compressed_weights(precision, networks, tiny_artifact,
                                                                          tmp_path):
    pytest.importorskip("nncf")
    ov = pytest.importorskip("openvino")
    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    assert main(["quantize", str(folder), "--precision", precision, "--report-steps", "2"]) == 0
    manifest = open_artifact(folder).manifest
    assert manifest["quality_reports"][precision]["backend"] == "openvino"
    for name in networks:
        variant = manifest["components"][name]["variants"][precision]
        assert variant["format"] == "openvino" and variant["path"].endswith("/model.xml")
        assert variant["made_by"]["tool"] == "nncf.compress_weights"
        weights = {str(op.get_output_element_type(0)) for op in ov.Core().read_model(folder / variant["path"]).get_ops()
                   if op.get_type_name() == "Constant"}
        assert ("<Type: 'int8_t'>" in weights or "<Type: 'uint8_t'>" in weights) if precision == "int8-weights" \
            else "<Type: 'int4_t'>" in weights or "<Type: 'uint4_t'>" in weights, weights
    unet = manifest["components"]["unet"]
    fp32_bytes = sum(manifest["files"][f]["size"] for f in unet["files"])
    assert unet["variants"][precision]["size"] < 0.5 * fp32_bytes  # tiny layers: biases and norms stay fp32

    pipe = sdrt.load(folder, backend="openvino", precision=precision)
    assert set(pipe.precisions.values()) == {precision} | ({"fp32"} if len(networks) < 3 else set())
    image = np.asarray(pipe("a cat", seed=3, num_inference_steps=3).images[0])
    assert image.std() > 0
    with pytest.raises(RequestError, match="OpenVINO model .*backend='openvino'"):
        sdrt.load(folder, backend="onnxruntime", precision=precision)
    with pytest.raises(RequestError, match=f"The {precision} text_encoder stores its weights quantized .*precision="):
        pipe.load_lora(write_random_lora(tmp_path / "lora.safetensors"))


@pytest.mark.slow
def test_int8_quantizes_the_unets_activations_on_calibration_inputs_and_the_other_weights(tiny_artifact, tmp_path):
    """int8 (NNCF post-training quantization): the UNet's convolutions and weighted matmuls take
    int8 activations, with ranges from the inputs the fp32 pipeline gave it on the calibration
    prompts, and int8 weights; the text encoder and VAE decoder get int8 weights only; what
    stays float is computed in bf16 where the CPU has it."""
    pytest.importorskip("nncf")
    ov = pytest.importorskip("openvino")
    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n  a castle at dawn  \na bowl of fruit\n", encoding="utf-8")
    assert main(["quantize", str(folder), "--precision", "int8", "--calibration-prompts", str(prompts),
                 "--calibration-steps", "3", "--calibration-size", "48x32", "--report-steps", "2"]) == 0
    manifest = open_artifact(folder).manifest
    unet = manifest["components"]["unet"]["variants"]["int8"]
    calibration = unet["made_by"]["calibration"]
    assert calibration["prompts"] == ["a red circle", "a castle at dawn", "a bowl of fruit"]
    from sdrt.runtime.samplers import compile_plan

    calls = len(compile_plan(calibration["sampler"], manifest["pipeline"]["scheduler"], 3).steps)
    assert calibration["samples"] == 3 * calls and calibration["size"] == [32, 48]  # a guidance batch per call
    assert calibration["backend"] == "openvino" and calibration["precision"] == "fp32"
    model = ov.Core().read_model(folder / unet["path"])

    def producer(op, port):  # the node that makes the input, past layout changes
        node = op.input_value(port).get_node()
        while node.get_type_name() in ("Transpose", "Reshape"):
            node = node.input_value(0).get_node()
        return node.get_type_name()

    kinds = {}
    for op in model.get_ops():
        if op.get_type_name() in ("Convolution", "MatMul"):
            kinds.setdefault(op.get_type_name(), []).append([producer(op, 0), producer(op, 1)])
    assert all(inputs == ["FakeQuantize", "Multiply"] for inputs in kinds["Convolution"])  # int8 data and weights
    weighted = [inputs for inputs in kinds["MatMul"] if inputs[1] == "Multiply"]  # int8 weights, dequantized
    assert len(weighted) >= 4 and all(inputs[0] == "FakeQuantize" for inputs in weighted)
    assert unet["compute"] == "bf16" and unet["made_by"]["tool"] == "nncf.quantize"
    for name in ("text_encoder", "vae_decoder"):
        variant = manifest["components"][name]["variants"]["int8"]
        assert variant["made_by"]["tool"] == "nncf.compress_weights" and "calibration" not in variant["made_by"]
        model = ov.Core().read_model(folder / variant["path"])
        assert not [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    pipe = sdrt.load(folder, backend="openvino", precision="int8")
    assert set(pipe.precisions.values()) == {"int8"}
    assert np.asarray(pipe("a cat", seed=3, num_inference_steps=3).images[0]).std() > 0
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    hint = pipe.sessions["denoiser"]._compiled.get_property("INFERENCE_PRECISION_HINT")
    assert hint == (ov.Type.bf16 if has_bf16 else ov.Type.f32)
    with pytest.raises(RequestError, match="OpenVINO model.*--precision int8-qdq"):
        sdrt.load(folder, backend="onnxruntime", precision="int8")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    assert main(["quantize", str(folder), "--precision", "int8", "--calibration-prompts", str(empty)]) == 2


@pytest.mark.slow
def test_int8_on_onnxruntime_is_a_static_qdq_model_calibrated_on_pipeline_inputs(tiny_artifact, tmp_path):
    """int8-qdq: onnxruntime.quantization's static QDQ UNet (uint8 activations, int8 weights per
    channel) with the calibration set recorded; precision="int8" on onnxruntime picks it, and on
    openvino the OpenVINO form, when the artifact holds both."""
    import onnx

    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    assert main(["quantize", str(folder), "--precision", "int8-qdq", "--calibration-steps", "2",
                 "--report-steps", "2"]) == 0
    manifest = open_artifact(folder).manifest
    unet = manifest["components"]["unet"]["variants"]["int8-qdq"]
    assert unet["format"] == "onnx" and unet["made_by"]["tool"] == "onnxruntime.quantization.quantize_static"
    assert len(unet["made_by"]["calibration"]["prompts"]) == 8 and manifest["quality_reports"]["int8-qdq"][
        "backend"] == "onnxruntime"
    graph = onnx.load(str(folder / unet["path"])).graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name: t for t in graph.initializer}
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    assert convolutions
    for conv in convolutions:
        data, weight = (producers[name] for name in conv.input[:2])
        assert data.op_type == weight.op_type == "DequantizeLinear"
        assert producers[data.input[0]].op_type == "QuantizeLinear"  # activations quantized as they run
        assert initializers[data.input[2]].data_type == onnx.TensorProto.UINT8
        assert initializers[weight.input[0]].data_type == onnx.TensorProto.INT8  # stored int8
        assert len(initializers[weight.input[1]].dims) == 1  # one scale per output channel
    assert "variants" not in manifest["components"]["vae_decoder"]

    pipe = sdrt.load(folder, backend="onnxruntime", precision="int8")  # the form made for this backend
    assert pipe.precisions == {"text_encoder": "int8-qdq", "unet": "int8-qdq", "vae_decoder": "fp32"}
    image = np.asarray(pipe("a cat", seed=3, num_inference_steps=3).images[0])
    fp32 = np.asarray(sdrt.load(folder, backend="onnxruntime")("a cat", seed=3, num_inference_steps=3).images[0])
    assert 15 < psnr(fp32, image) < float("inf")
    with pytest.raises(ArtifactError, match="no int8 variant of any network.*--precision int8"):
        sdrt.load(folder, backend="openvino", precision="int8")


@pytest.mark.slow
def test_fp16_cuda_is_onnx_runtimes_fused_unet_taken_for_fp16_on_its_cuda_provider(fp16_artifact, tmp_path, capsys):
    """fp16-cuda: the UNet with its attention fused (export.fusions) and ONNX Runtime's UNet
    fusions and fp16 conversion, inputs and outputs float32; precision="fp16" on onnxruntime's
    cuda takes it, the CPU and other backends keep the portable fp16 and refuse it by name.
    Without the CUDA provider its report is stored unmeasured, saying why."""
    import onnx
    import onnxruntime as ort

    from sdrt.runtime.precisions import resolve_precisions

    folder = shutil.copytree(fp16_artifact, tmp_path / "artifact")
    assert main(["quantize", str(folder), "--precision", "fp16-cuda", "--report-steps", "2"]) == 0
    artifact = open_artifact(folder)  # schema and checksums
    entry = artifact.manifest["components"]["unet"]["variants"]["fp16-cuda"]
    assert entry["format"] == "onnxruntime-cuda" and entry["path"] == "variants/fp16-cuda/unet/model.onnx"
    exported = onnx.load(str(artifact.component("unet").path))
    attention = sum(node.op_type == "Softmax" for node in exported.graph.node)
    model = onnx.load(str(folder / entry["path"]))
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    assert {"MultiHeadAttention", "GroupNorm", "NhwcConv"} <= ops and "Softmax" not in ops
    assert entry["made_by"]["settings"]["attention_fused"] == attention
    assert entry["made_by"]["settings"]["fused_operators"]["MultiHeadAttention"] == attention
    assert all(t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for t in (*model.graph.input,
                                                                                 *model.graph.output))
    weights = [t for t in model.graph.initializer if len(t.dims) >= 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    report = artifact.manifest["quality_reports"]["fp16-cuda"]
    if not cuda:
        assert report["measured"] is False and "CUDAExecutionProvider" in report["reason"]
        assert entry["quality"]["measured"] is False
        assert "not measured" in capsys.readouterr().out
        assert main(["info", str(folder)]) == 0
        assert "fp16-cuda: not measured" in capsys.readouterr().out

    assert resolve_precisions(artifact, "fp16", "onnxruntime", "cuda") == {
        "text_encoder": "fp16", "unet": "fp16-cuda", "vae_decoder": "fp32"}
    for backend, device in (("onnxruntime", "cpu"), ("onnxruntime", None), ("openvino", "cpu")):
        assert resolve_precisions(artifact, "fp16", backend, device)["unet"] == "fp16"
    with pytest.raises(RequestError, match="only ONNX Runtime's CUDA provider runs; load it with device='cuda'"):
        sdrt.load(folder, backend="onnxruntime", precision="fp16-cuda")
    if "openvino" in sdrt.runtime.backends.available_backends():
        with pytest.raises(RequestError, match="choose precision='fp16' for openvino"):
            sdrt.load(folder, backend="openvino", precision={"unet": "fp16-cuda"})


def test_fp32_fused_is_onnx_runtimes_form_of_fp32_with_the_same_images(tiny_artifact, tmp_path):
    """fp32-fused: the UNet with its attention fused (MultiHeadAttention), measured on ONNX
    Runtime's CPU provider when made; the onnxruntime backend takes it for fp32 and makes the
    plain artifact's images; openvino keeps the exported UNet and refuses this one by name."""
    folder = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    assert main(["quantize", str(folder), "--precision", "fp32-fused", "--report-steps", "2"]) == 0
    manifest = open_artifact(folder).manifest
    entry = manifest["components"]["unet"]["variants"]["fp32-fused"]
    assert entry["format"] == "onnxruntime" and entry["made_by"]["settings"]["attention_fused"] > 0
    # measured against the exported UNet (a different graph: not bit for bit), on the CPU provider
    assert entry["quality"]["device"] == "cpu" and 0 < entry["quality"]["output_max_abs_diff"] < 1e-4
    assert manifest["quality_reports"]["fp32-fused"]["psnr_db_min"] is None or \
        manifest["quality_reports"]["fp32-fused"]["psnr_db_min"] > 50

    pipe = sdrt.load(folder, backend="onnxruntime")
    assert pipe.precisions == {"text_encoder": "fp32", "unet": "fp32-fused", "vae_decoder": "fp32"}
    fused = np.asarray(pipe("a cat", seed=3, num_inference_steps=3).images[0]).astype(float)
    plain = np.asarray(sdrt.load(tiny_artifact, backend="onnxruntime")("a cat", seed=3, num_inference_steps=3)
                       .images[0]).astype(float)
    assert np.abs(fused - plain).mean() < 0.05
    exported = sdrt.load(folder, backend="onnxruntime", precision={"unet": "fp32"})  # a dict's fp32: as exported
    assert exported.precisions["unet"] == "fp32"
    if "openvino" in sdrt.runtime.backends.available_backends():
        assert sdrt.load(folder, backend="openvino").precisions["unet"] == "fp32"
        with pytest.raises(RequestError, match="choose precision='fp32' for openvino"):
            sdrt.load(folder, backend="openvino", precision={"unet": "fp32-fused"})


@pytest.mark.full_size
def test_fp16_converts_a_network_past_protobufs_2_gib(tmp_path):
    """The SD 1.5 UNet's weights (3.3 GiB) are more than protobuf can serialize whole, which ONNX's
    shape inference does: a network of 2.03 GiB of external weights converts, each weight the
    float16 of its fp32 value, the graph's input and output still float32."""
    import onnx
    from onnx import TensorProto, helper

    from sdrt.export.makers import make_fp16 as _fp16

    rows, cols = 16384, 16640  # 1.02 GiB each
    source = tmp_path / "net" / "model.onnx"
    source.parent.mkdir()
    weights = []
    for index in range(2):
        name = f"w{index}"
        shape = (rows, cols) if index == 0 else (cols, rows)
        value = np.full(shape, 0.5 + index, np.float32)
        value[0, :8] = np.arange(8, dtype=np.float32) / 3
        value.tofile(source.parent / f"{name}.bin")
        del value
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=f"{name}.bin")
        weights.append(tensor)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w1"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", rows])], initializer=weights)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(source))

    _fp16(source, tmp_path / "fp16")
    converted = onnx.load(str(tmp_path / "fp16" / "model.onnx"))
    stored = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in converted.graph.initializer}
    assert {name: value.dtype for name, value in stored.items()} == {"w0": np.float16, "w1": np.float16}
    assert stored["w0"].shape == (rows, cols) and stored["w1"].shape == (cols, rows)
    np.testing.assert_array_equal(stored["w0"][0, :8], (np.arange(8, dtype=np.float32) / 3).astype(np.float16))
    assert np.all(stored["w1"][1:] == np.float16(1.5))
    assert [value.type.tensor_type.elem_type for value in (*converted.graph.input, *converted.graph.output)] == [
        TensorProto.FLOAT, TensorProto.FLOAT]
