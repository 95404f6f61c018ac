"""The `sdrt` command: export, info, generate, --help."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sdrt.cli import main


def test_help_explains_every_option():
    script = Path(sys.executable).parent / "sdrt"  # the console script pip installed
    result = subprocess.run([str(script), "generate", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--artifact", "--backend", "--steps", "--guidance", "--seed", "--size", "--scheduler",
                   "--negative", "--precision", "--device", "--output"):
        assert option in result.stdout
    module = subprocess.run([sys.executable, "-m", "sdrt", "export", "--help"], capture_output=True, text=True)
    assert module.returncode == 0 and "--allow-pickle" in module.stdout


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
