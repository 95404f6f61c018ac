"""What a new user trying sdrt ran into: each finding of issue 20, fixed and held here."""
import json
import os
import re
import shutil
import stat

import numpy as np
import pytest
from PIL import Image

import sdrt
from sdrt.cli import main
from sdrt.runtime import pipeline as pipeline_module
from sdrt.runtime.errors import RequestError
from test_no_torch import run_blocked


@pytest.fixture(scope="module")
def pipe(tiny_artifact):
    return sdrt.load(tiny_artifact, backend="onnxruntime")


@pytest.mark.slow
def test_export_reads_a_tokenizer_saved_by_transformers_5(tiny_checkpoint, tmp_path):
    """transformers 5's save_pretrained writes tokenizer.json without vocab.json and merges.txt."""
    from transformers import CLIPTokenizer

    from sdrt.export.exporter import export_checkpoint
    from sdrt.runtime.artifact import open_artifact
    from sdrt.runtime.tokenizer import ClipTokenizer

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    original = CLIPTokenizer.from_pretrained(checkpoint / "tokenizer")
    shutil.rmtree(checkpoint / "tokenizer")
    original.save_pretrained(checkpoint / "tokenizer")
    assert not (checkpoint / "tokenizer" / "vocab.json").exists()  # the layout this test is about
    assert (checkpoint / "tokenizer" / "tokenizer.json").is_file()

    artifact = open_artifact(export_checkpoint(checkpoint, tmp_path / "artifact", verify=False))
    entry = artifact.tokenizer_entry("text_encoder")
    tokenizer = ClipTokenizer.from_folder(artifact.file(entry["files"]["vocab"]).parent, bos_id=entry["bos_id"],
                                          eos_id=entry["eos_id"], pad_id=entry["pad_id"],
                                          max_length=entry["max_length"])
    for prompt in ("a red circle on a blue background", "Watercolour of a lighthouse, at dusk!!", "naïve café"):
        expected = original(prompt, padding="max_length", max_length=77, truncation=True)["input_ids"]
        assert tokenizer([prompt])[0].tolist() == expected
    assert (entry["bos_id"], entry["eos_id"], entry["pad_id"]) == (49406, 49407, 49407)


def test_export_without_any_tokenizer_file_says_what_to_do(tiny_checkpoint, tmp_path):
    from sdrt.export.exporter import export_checkpoint
    from sdrt.export.source import ExportError

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        (checkpoint / "tokenizer" / name).unlink(missing_ok=True)
    with pytest.raises(ExportError, match="neither CLIP's BPE files .* nor a tokenizer.json"):
        export_checkpoint(checkpoint, tmp_path / "artifact", verify=False)
    assert not (tmp_path / "artifact").exists()


def test_a_huge_size_is_refused_before_anything_runs(pipe, capsys, tiny_artifact, tmp_path):
    with pytest.raises(RequestError, match=r"exported for images of 16 to 512 pixels a side; got 65536x65536"):
        pipe("a red circle", height=65536, width=65536, num_inference_steps=1)
    assert main(["generate", "x", "--artifact", str(tiny_artifact), "--size", "65536x65536", "-o",
                 str(tmp_path / "x.png")]) == 2
    assert "exported for images of 16 to 512 pixels a side" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def _largest_fitting_side(message: str) -> int:
    return int(re.search(r"the largest square size that fits is about (\d+)x\1", message)[1])


def test_a_request_past_the_free_memory_is_refused_with_a_size_that_fits(pipe, monkeypatch):
    monkeypatch.setattr(pipeline_module, "available_memory", lambda: 2**30)
    with pytest.raises(RequestError) as refused:
        pipe("a red circle", height=512, width=448, num_inference_steps=1)
    message = str(refused.value)
    # the tiny model's attention over 112x128 (UNet) or 224x256 (VAE) latent positions: over 12 GiB
    assert re.search(r"A 448x512 request needs about 1\d\.\d GiB for the (unet|vae_decoder)'s attention alone \(2 "
                     r"latents per UNet call; guidance doubles them\), and 1\.0 GiB is free", message), message
    side = _largest_fitting_side(message)
    assert 16 < side < 448
    # the size it names runs; the next size step does not pass the check
    latents = pipe("a red circle", height=side, width=side, num_inference_steps=1, output_type="latent").images
    assert latents.shape == (1, 4, side // 2, side // 2)
    with pytest.raises(RequestError, match="needs about"):
        pipe("a red circle", height=side + 4, width=side + 4, num_inference_steps=1)
    # more images in one UNet call: a smaller size is the largest that fits
    with pytest.raises(RequestError) as refused:
        pipe("a red circle", height=512, width=448, num_inference_steps=1, num_images_per_prompt=3)
    assert "(6 latents per UNet call" in str(refused.value)
    assert _largest_fitting_side(str(refused.value)) < side


def test_the_memory_check_can_be_turned_off(tiny_artifact, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline_module, "available_memory", lambda: 1)
    with pytest.raises(RequestError, match="no size fits with this many images at once"):
        sdrt.load(tiny_artifact, backend="onnxruntime")("x", num_inference_steps=1)
    unchecked = sdrt.load(tiny_artifact, backend="onnxruntime", memory_check=False)
    assert unchecked("x", num_inference_steps=1, output_type="latent").images.shape == (1, 4, 32, 32)
    out = tmp_path / "x.png"
    arguments = ["generate", "x", "--artifact", str(tiny_artifact), "--backend", "onnxruntime", "--steps", "1",
                 "-o", str(out)]
    assert main(arguments) == 2
    assert "(CLI: --no-memory-check) to try anyway" in capsys.readouterr().err
    assert main([*arguments, "--no-memory-check"]) == 0 and out.is_file()


@pytest.mark.parametrize("command", ["export", "quantize"])
def test_export_commands_without_the_export_extra_name_it(tiny_artifact, tmp_path, command):
    target = [str(tmp_path / "out")] if command == "export" else []
    arguments = (["export", "random:tiny", "-o", *target] if command == "export" else
                 ["quantize", str(tiny_artifact), "--precision", "fp16"])
    result = run_blocked(f"""
        from sdrt.cli import main
        raise SystemExit(main({arguments!r}))
    """)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.fullmatch(r"sdrt: error: (Building a random-weight model|Making fp16 variants) needs the export "
                        r"extra \(\w+ is not installed\): pip install torch==2\.13\.0 first .*, then pip install "
                        r"'sdrt\[export\]'\.", lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_ctrl_c_exits_130_with_one_line_and_no_file(tiny_artifact, tmp_path, monkeypatch, capsys):
    def interrupted(self, latents):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_module.StableDiffusionPipeline, "_decode", interrupted)
    assert main(["generate", "x", "--artifact", str(tiny_artifact), "--steps", "1", "-o",
                 str(tmp_path / "x.png")]) == 130
    assert capsys.readouterr().err == "sdrt: interrupted\n"
    assert not list(tmp_path.iterdir())


def test_warnings_reach_the_terminal_as_one_sdrt_line(tiny_artifact, tmp_path, monkeypatch, capsys):
    import warnings

    decode = pipeline_module.StableDiffusionPipeline._decode

    def warning_decode(self, latents):
        warnings.warn("something the user should know", stacklevel=2)
        return decode(self, latents)

    monkeypatch.setattr(pipeline_module.StableDiffusionPipeline, "_decode", warning_decode)
    assert main(["generate", "x", "--artifact", str(tiny_artifact), "--steps", "1", "-o",
                 str(tmp_path / "x.png")]) == 0
    assert capsys.readouterr().err == "sdrt: warning: something the user should know\n"
    # the CLI's way of showing warnings ends with the command
    assert warnings.showwarning.__module__ != "sdrt.cli"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_images_are_written_with_the_umask_mode(tiny_artifact, tmp_path, umask, mode):
    out = tmp_path / "x.png"
    previous = os.umask(umask)
    try:
        assert main(["generate", "x", "--artifact", str(tiny_artifact), "--steps", "1", "-o", str(out)]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == mode


def test_numpy_integer_seeds_are_seeds(pipe):
    reference = pipe("x", num_inference_steps=1, seed=3, output_type="latent").images
    for seed in (np.int64(3), np.uint32(3), np.int8(3)):
        result = pipe("x", num_inference_steps=1, seed=seed, output_type="latent")
        assert result.seed == 3 and type(result.seed) is int
        np.testing.assert_array_equal(result.images, reference)
    for seed in (3.0, np.float32(3), True, -1, 2**64):
        with pytest.raises(RequestError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
            pipe("x", num_inference_steps=1, seed=seed)


@pytest.mark.slow
def test_int8_at_export_makes_each_cpu_backends_form(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("nncf")
    for backend in ("onnxruntime", "openvino"):
        pytest.importorskip(backend)
    artifact = tmp_path / "artifact"
    assert main(["export", str(tiny_checkpoint), "-o", str(artifact), "--precision", "int8", "--no-verify"]) == 0
    unet = json.loads((artifact / "sdrt.json").read_text())["components"]["unet"]
    assert {"int8", "int8-qdq"} <= set(unet["variants"])
    for backend, form in (("openvino", "int8"), ("onnxruntime", "int8-qdq")):
        pipe = sdrt.load(artifact, backend=backend, precision="int8")
        assert pipe.precisions["unet"] == form
        image = pipe("a red circle", num_inference_steps=1, seed=1).images[0]
        assert isinstance(image, Image.Image) and image.size == (64, 64)


def test_an_unknown_random_config_is_one_line_listing_the_known_ones(tmp_path, capsys):
    pytest.importorskip("diffusers")
    assert main(["export", "random:sdxl-large", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdrt: error: Unknown model config 'sdxl-large'; known configs: ") and "tiny-sdxl" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
