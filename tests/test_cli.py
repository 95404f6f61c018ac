"""The `sdrt` command: export, info, generate, --help."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdrt.cli import main


def test_help_explains_every_option():
    script = Path(sys.executable).parent / "sdrt"  # the console script pip installed
    result = subprocess.run([str(script), "generate", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--artifact", "--backend", "--steps", "--guidance", "--seed", "--size", "--scheduler",
                   "--negative", "--precision", "--device", "--output", "--image", "--strength"):
        assert option in result.stdout
    module = subprocess.run([sys.executable, "-m", "sdrt", "export", "--help"], capture_output=True, text=True)
    assert module.returncode == 0 and "--allow-pickle" in module.stdout


@pytest.mark.slow
def test_export_info_generate(tiny_checkpoint, tmp_path, capsys):
    artifact = tmp_path / "tiny-onnx"
    assert main(["export", str(tiny_checkpoint), "-o", str(artifact)]) == 0
    assert (artifact / "sdrt.json").is_file()

    assert main(["info", str(artifact)]) == 0
    text = capsys.readouterr().out
    assert "checksums verified" in text
    for name in ("text_encoder", "unet", "vae_decoder", "vae_encoder", "encoder_hidden_states", "latent_height"):
        assert name in text

    assert main(["info", str(artifact), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["schema_version"] == 1 and manifest["family"] == "sd1"

    out = tmp_path / "castle.png"
    for backend in ("onnxruntime", "openvino"):
        pytest.importorskip(backend)
        assert main(["generate", "a castle on a hill", "--artifact", str(artifact), "--backend", backend,
                     "--steps", "3", "--guidance", "7.5", "--seed", "42", "--size", "64x64", "--scheduler",
                     "dpmpp_2m", "-o", str(out)]) == 0
        assert "seed 42" in capsys.readouterr().out
        with Image.open(out) as image:
            assert image.size == (64, 64) and image.mode == "RGB"

    assert main(["generate", "two", "--artifact", str(artifact), "--steps", "2", "-n", "2", "--size", "64x32",
                 "-o", str(tmp_path / "pair.png")]) == 0
    with Image.open(tmp_path / "pair-2.png") as image:
        assert image.size == (64, 32)
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_size_text(tiny_artifact, tmp_path, capsys):
    assert main(["generate", "x", "--artifact", str(tiny_artifact), "--size", "big", "-o",
                 str(tmp_path / "x.png")]) == 2
    assert "--size must look like 512x512" in capsys.readouterr().err


def test_generate_from_an_image(tiny_artifact, tmp_path, capsys):
    source = tmp_path / "source.png"
    assert main(["generate", "a circle", "--artifact", str(tiny_artifact), "--steps", "4", "--seed", "1",
                 "-o", str(source)]) == 0
    out = tmp_path / "edited.png"
    assert main(["generate", "a square", "--artifact", str(tiny_artifact), "--image", str(source), "--strength",
                 "0.5", "--steps", "4", "--scheduler", "euler", "--seed", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert " 2 steps " in printed and "encode" in printed  # int(4 x 0.5) steps after the VAE encoder
    with Image.open(source) as before, Image.open(out) as after:
        assert after.size == before.size
        assert np.abs(np.asarray(after, np.float32) - np.asarray(before, np.float32)).mean() > 1
    assert main(["generate", "x", "--artifact", str(tiny_artifact), "--image", str(tmp_path / "missing.png"),
                 "-o", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["generate", "x", "--artifact", str(tiny_artifact), "--image", str(source), "--strength", "2",
                 "-o", str(out)]) == 2
    assert "strength must be a number in [0, 1]" in capsys.readouterr().err


def test_generate_inpaints_and_outpaints(tiny_artifact, tmp_path, capsys):
    source, mask, out = tmp_path / "source.png", tmp_path / "mask.png", tmp_path / "out.png"
    assert main(["generate", "a circle", "--artifact", str(tiny_artifact), "--steps", "3", "--seed", "1",
                 "-o", str(source)]) == 0
    square = np.zeros((64, 64), np.uint8)
    square[8:40, 8:40] = 255
    Image.fromarray(square).save(mask)
    assert main(["generate", "a square", "--artifact", str(tiny_artifact), "--image", str(source), "--mask",
                 str(mask), "--steps", "3", "--scheduler", "euler", "--seed", "2", "-o", str(out)]) == 0
    assert " 3 steps " in capsys.readouterr().out  # inpainting defaults to strength 1
    with Image.open(source) as before, Image.open(out) as after:
        before, after = np.asarray(before), np.asarray(after)
    np.testing.assert_array_equal(after[square == 0], before[square == 0])
    assert (after[square > 0] != before[square > 0]).any()

    assert main(["generate", "more", "--artifact", str(tiny_artifact), "--image", str(source), "--outpaint",
                 "left=16,bottom=8", "--steps", "2", "--seed", "3", "-o", str(out)]) == 0
    with Image.open(out) as wider:
        assert wider.size == (80, 72)
        np.testing.assert_array_equal(np.asarray(wider)[:64, 16:], before)
    for bad, message in ((["--outpaint", "left=16"], "add --image"),
                         (["--image", str(source), "--outpaint", "middle=3"], "--outpaint takes SIDE=PIXELS"),
                         (["--image", str(source), "--outpaint", "left=8", "--mask", str(mask)], "not both")):
        assert main(["generate", "x", "--artifact", str(tiny_artifact), *bad, "-o", str(out)]) == 2
        assert message in capsys.readouterr().err


def test_generate_imports_only_what_it_runs(tmp_path):
    """Each command's module is imported when that command runs: generate loads neither the
    benchmark harness nor the demo model's evaluation."""
    out = tmp_path / "x.png"
    code = ("import sys\nfrom sdrt.cli import main\n"
            f"assert main(['generate', 'a red circle', '--steps', '1', '-o', {str(out)!r}]) == 0\n"
            "print(sorted(m for m in sys.modules if m.startswith(('sdrt.benchmarks', 'sdrt.models.demo.evaluation',"
            " 'sdrt.cli.'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "['sdrt.cli._common', 'sdrt.cli.generate']"
