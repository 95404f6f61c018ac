"""The invisible watermark against the invisible-watermark package (Stable Diffusion's own): each
reads what the other wrote; it barely changes the image; sdrt generate --watermark and
sdrt watermark check."""
import numpy as np
import pytest
from PIL import Image

import sdrt
from sdrt.cli import main
from sdrt.runtime import watermark
from sdrt.runtime.errors import RequestError

cv2 = pytest.importorskip("cv2")
imwatermark = pytest.importorskip("imwatermark")


def textured(seed: int, detail: int = 128) -> np.ndarray:
    """512x512 with texture: the dwtDct scheme needs it (on smooth images, the package's own
    encoder and decoder fail as sdrt's do)."""
    small = np.random.default_rng(seed).integers(0, 256, (detail, detail, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((512, 512), Image.BICUBIC))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_reads_what_the_other_wrote(seed):
    image = textured(seed)
    ours = watermark.embed(image)
    decoder = imwatermark.WatermarkDecoder("bytes", 136)
    assert decoder.decode(cv2.cvtColor(ours, cv2.COLOR_RGB2BGR), "dwtDct") == b"StableDiffusionV1"
    encoder = imwatermark.WatermarkEncoder()
    encoder.set_watermark("bytes", b"StableDiffusionV1")
    theirs = cv2.cvtColor(encoder.encode(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), "dwtDct"), cv2.COLOR_BGR2RGB)
    assert watermark.is_marked(theirs)
    assert not watermark.is_marked(image)
    error = np.mean((ours.astype(np.float64) - image) ** 2)
    assert 10 * np.log10(255**2 / error) > 38  # 42 dB measured


def test_small_images_are_refused(tiny_artifact):
    with pytest.raises(RequestError, match="at least 256x256"):
        watermark.embed(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(RequestError, match="at least 256x256 pixels; this request makes 64x64"):
        sdrt.load(tiny_artifact)("x", num_inference_steps=1, watermark=True)


@pytest.mark.slow
def test_generate_marks_and_check_reads(tiny_artifact, tmp_path, capsys):
    marked, plain = tmp_path / "marked.png", tmp_path / "plain.png"
    for path, extra in ((marked, ["--watermark"]), (plain, [])):
        assert main(["generate", "a castle", "--artifact", str(tiny_artifact), "--size", "512x512", "--steps", "1",
                     "--guidance", "1", "--seed", "4", "-o", str(path), *extra]) == 0
    capsys.readouterr()
    assert main(["watermark", "check", str(marked)]) == 0
    assert "watermarked (StableDiffusionV1)" in capsys.readouterr().out
    assert main(["watermark", "check", str(marked), str(plain)]) == 1
    assert "plain.png: no watermark found" in capsys.readouterr().out
    with Image.open(marked) as a, Image.open(plain) as b:
        difference = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    assert 0 < difference.mean() < 2
    # (at 256x256 each bit has 7 or 8 blocks to vote, and a bit of this image flips: 512x512 is reliable)
