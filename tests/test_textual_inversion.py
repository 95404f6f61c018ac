"""Textual inversion against diffusers' load_textual_inversion on the same tiny model: the
diffusers and AUTOMATIC1111 file layouts, multi-vector words, on every backend."""
import numpy as np
import pytest

import sdrt
from sdrt.runtime.backends import BACKENDS
from sdrt.runtime.errors import RequestError
from sdrt.runtime.noise import gaussian_noise

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")

PROMPT = "a photo of {} on a table"


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeddings")
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn((2, 32), generator=generator) * 0.5
    safetensors_torch.save_file({"<cat-toy>": vectors}, str(folder / "learned_embeds.safetensors"))
    safetensors_torch.save_file({"emb_params": vectors.flip(0).contiguous()}, str(folder / "mystyle.safetensors"))
    return {"diffusers": (folder / "learned_embeds.safetensors", "<cat-toy>"),
            "a1111": (folder / "mystyle.safetensors", "mystyle")}


def diffusers_image(checkpoint, path, word, latents):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(checkpoint, safety_checker=None,
                                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.load_textual_inversion(str(path), token=word)
    with torch.no_grad():
        return pipe(PROMPT.format(word), latents=torch.from_numpy(latents), num_inference_steps=4,
                    guidance_scale=7.5, output_type="np").images


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("layout", ["diffusers", "a1111"])
def test_embedding_matches_diffusers(tiny_artifact, tiny_checkpoint, embeddings, backend, layout):
    if backend not in sdrt.available_backends():
        pytest.skip(f"{backend} is not installed")
    path, word = embeddings[layout]
    latents = gaussian_noise(9, (1, 4, 32, 32))
    pipe = sdrt.load(tiny_artifact, backend=backend)
    before = pipe(PROMPT.format(word), latents=latents, num_inference_steps=4, scheduler="euler",
                  output_type="np").images
    assert pipe.load_textual_inversion(path) == word  # the key, or the file's name
    ours = pipe(PROMPT.format(word), latents=latents, num_inference_steps=4, scheduler="euler",
                output_type="np").images
    theirs = diffusers_image(tiny_checkpoint, path, word, latents)
    assert np.abs(ours - theirs).mean() <= 1 / 255
    assert np.abs(ours - before).mean() > 2 / 255  # the word was BPE pieces before
    assert len(pipe.tokenizer.encode(f"x {word.upper()} y")) == 4  # 2 vectors, case-insensitive


def test_two_embeddings_and_the_errors(tiny_artifact, embeddings, tmp_path):
    pipe = sdrt.load(tiny_artifact)
    first = pipe.load_textual_inversion(embeddings["diffusers"][0])
    second = pipe.load_textual_inversion(embeddings["a1111"][0])
    ids = pipe.tokenizer.encode(f"{first} and {second}")
    assert ids[:2] == [49408, 49409] and ids[-2:] == [49410, 49411]
    with pytest.raises(RequestError, match="is loaded already"):
        pipe.load_textual_inversion(embeddings["a1111"][0])
    with pytest.raises(RequestError, match="a word CLIP knows already"):
        pipe.load_textual_inversion(embeddings["a1111"][0], token="castle")
    wide = tmp_path / "wide.safetensors"
    safetensors_torch.save_file({"<wide>": torch.zeros(768)}, str(wide))
    with pytest.raises(RequestError, match="vectors of 768 values; this model's text encoder takes 32"):
        pipe.load_textual_inversion(wide)
    odd = tmp_path / "odd.safetensors"
    safetensors_torch.save_file({"a": torch.zeros(32), "b": torch.zeros(32)}, str(odd))
    with pytest.raises(RequestError, match="not an embedding layout"):
        pipe.load_textual_inversion(odd)
    pickle = tmp_path / "style.pt"
    pickle.write_bytes(b"not read")
    with pytest.raises(RequestError, match="pickles"):
        pipe.load_textual_inversion(pickle)
    # the words still work after the refusals
    assert pipe("a photo of " + first, num_inference_steps=1, output_type="np").images.shape == (1, 64, 64, 3)


def test_generate_takes_embeddings(tiny_artifact, embeddings, tmp_path, capsys):
    from sdrt.cli import main

    path, _ = embeddings["diffusers"]
    out = tmp_path / "toy.png"
    assert main(["generate", "a photo of <toy>", "--artifact", str(tiny_artifact), "--steps", "2",
                 "--embedding", f"{path}:<toy>", "--seed", "1", "-o", str(out)]) == 0
    assert out.is_file()
    assert main(["generate", "x", "--artifact", str(tiny_artifact), "--embedding", str(tmp_path / "no.safetensors"),
                 "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
