"""The C++ host (runtime/cpp) built with CMake against OpenVINO's C++ API and run on artifacts.

Oracle: the Python runtime on the openvino backend in fp32, with the same artifact, prompt,
seed and sampler; the noise generator against runtime/noise.py; the demo model's checker.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdrt.models.demo import demo_artifact
from sdrt.models.demo.checker import read_scene
from sdrt.models.demo.evaluation import load_evaluation_prompts
from sdrt.runtime.noise import gaussian_noise

pytest.importorskip("openvino")
pytest.importorskip("openvino_tokenizers")
SOURCE = Path(__file__).resolve().parents[1] / "runtime" / "cpp"
PROMPT, NEGATIVE = "a red circle on a blue background", "green"


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> Path:
    """The sdrt-host program, built the way runtime/cpp/README.md says."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("building the C++ host needs cmake and a C++17 compiler")
    build = tmp_path_factory.mktemp("host-build")
    for command in (["cmake", "-S", str(SOURCE), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"],
                    ["cmake", "--build", str(build), "-j2"]):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    return build / "sdrt-host"


def run_host(host: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(host), *args], capture_output=True, text=True, timeout=600)


def host_image(host: Path, artifact: Path, out: Path, *, prompt=PROMPT, negative=NEGATIVE, steps=10, guidance=5.0,
               seed=7, scheduler=None, size=None, extra=()) -> np.ndarray:
    from PIL import Image

    args = ["generate", "--artifact", str(artifact), "--prompt", prompt, "--steps", str(steps), "--guidance",
            str(guidance), "--seed", str(seed), "-o", str(out), *(() if negative is None else ("--negative", negative)),
            *extra]
    if scheduler:
        args += ["--scheduler", scheduler]
    if size:
        args += ["--size", size]
    done = run_host(host, *args)
    assert done.returncode == 0, done.stderr
    return np.asarray(Image.open(out).convert("RGB"))


def python_image(pipe, *, prompt=PROMPT, negative=NEGATIVE, steps=10, guidance=5.0, seed=7, scheduler=None,
                 size=None) -> np.ndarray:
    width, height = size if size else (None, None)
    result = pipe(prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                  scheduler=scheduler, width=width, height=height)
    return np.asarray(result.images[0])


@pytest.mark.parametrize("seed,stream", [(0, 0), (42, 3), (2**40 + 5, 2**33 + 1), (2**64 - 1, 0)])
def test_noise_matches_the_python_generator(host, seed, stream):
    done = run_host(host, "noise", "--seed", str(seed), "--count", "1001", "--stream", str(stream))
    assert done.returncode == 0, done.stderr
    values = np.array([float(line) for line in done.stdout.split()], dtype=np.float32)
    np.testing.assert_array_equal(values, gaussian_noise(seed, (1001,), stream))


@pytest.fixture(scope="module", params=["demo", "tiny"])
def artifact_and_pipe(request, tiny_artifact):
    import sdrt

    artifact = demo_artifact() if request.param == "demo" else tiny_artifact
    return artifact, sdrt.load(artifact, backend="openvino", precision="fp32")


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpmpp_2m", "euler_a"])
def test_image_matches_the_python_runtime(host, artifact_and_pipe, scheduler, tmp_path):
    artifact, pipe = artifact_and_pipe
    size = None if artifact == demo_artifact() else (64, 48)  # tiny: a non-square size
    cpp = host_image(host, artifact, tmp_path / "cpp.png", scheduler=scheduler,
                     size=None if size is None else f"{size[0]}x{size[1]}")
    python = python_image(pipe, scheduler=scheduler, size=size)
    assert cpp.shape == python.shape
    difference = np.abs(cpp.astype(np.int16) - python.astype(np.int16))
    assert difference.mean() <= 1.0, f"mean abs difference {difference.mean():.3f}/255"
    assert python.std() > 1  # not a blank image, which would match anything


def test_guidance_off_and_the_default_scheduler_match(host, artifact_and_pipe, tmp_path):
    artifact, pipe = artifact_and_pipe
    cpp = host_image(host, artifact, tmp_path / "cpp.png", guidance=1.0, steps=4, seed=123)
    python = python_image(pipe, guidance=1.0, steps=4, seed=123)
    assert np.abs(cpp.astype(np.int16) - python.astype(np.int16)).mean() <= 1.0


@pytest.mark.slow
def test_checker_reads_the_cpp_images_as_the_python_ones(host, tmp_path):
    import sdrt

    pipe = sdrt.load(demo_artifact(), backend="openvino", precision="fp32")
    for entry in load_evaluation_prompts()[:6]:
        kwargs = dict(prompt=entry["prompt"], negative="", steps=20, guidance=7.5, seed=1)
        cpp = host_image(host, demo_artifact(), tmp_path / "cpp.png", **kwargs)
        assert read_scene(cpp) == read_scene(python_image(pipe, **kwargs)), entry["prompt"]


def test_a_plan_file_runs_a_step_count_the_artifact_lacks(host, tmp_path):
    import sdrt
    from sdrt.cli import main

    plan = tmp_path / "plan.json"
    # pndm: its plan has one more UNet call than its step count
    assert main(["plan", str(demo_artifact()), "--scheduler", "pndm", "--steps", "7", "-o", str(plan)]) == 0
    done = run_host(host, "generate", "--artifact", str(demo_artifact()), "--prompt", PROMPT, "--steps", "7",
                    "--scheduler", "pndm", "-o", str(tmp_path / "x.png"))
    assert done.returncode == 1 and "no pndm plan for 7 steps" in done.stderr and "sdrt plan" in done.stderr
    cpp = host_image(host, demo_artifact(), tmp_path / "cpp.png", steps=7, scheduler="pndm",
                     extra=("--plan", str(plan)))
    python = python_image(sdrt.load(demo_artifact(), backend="openvino"), steps=7, scheduler="pndm")
    assert np.abs(cpp.astype(np.int16) - python.astype(np.int16)).mean() <= 1.0
    assert "plan of 7 steps" in _refusal(host, demo_artifact(), tmp_path, "--plan", str(plan))  # it asks for 4


def _copy(tmp_path: Path) -> Path:
    return shutil.copytree(demo_artifact(), tmp_path / "artifact")


def _refusal(host: Path, artifact: Path, tmp_path: Path, *extra: str) -> str:
    out = tmp_path / "refused.png"
    done = run_host(host, "generate", "--artifact", str(artifact), "--prompt", PROMPT, "--steps", "4",
                    "-o", str(out), *extra)
    assert done.returncode != 0
    assert not out.exists() and not Path(f"{out}.partial").exists()
    return done.stderr


def test_refuses_a_newer_manifest_schema(host, tmp_path):
    folder = _copy(tmp_path)
    manifest = json.loads((folder / "sdrt.json").read_text())
    manifest["schema_version"] = 2
    (folder / "sdrt.json").write_text(json.dumps(manifest))
    assert "schema version 2" in _refusal(host, folder, tmp_path)


def test_refuses_missing_and_corrupt_files(host, tmp_path):
    folder = _copy(tmp_path)
    (folder / "vae_decoder" / "model.onnx").unlink()
    assert "vae_decoder/model.onnx is missing" in _refusal(host, folder, tmp_path)

    folder = shutil.copytree(demo_artifact(), tmp_path / "corrupt")
    weights = folder / "unet" / "model.onnx"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    weights.write_bytes(bytes(data))
    assert "does not match its SHA-256" in _refusal(host, folder, tmp_path)


def test_refuses_paths_outside_the_artifact_and_bad_requests(host, tmp_path):
    folder = _copy(tmp_path)
    manifest = json.loads((folder / "sdrt.json").read_text())
    manifest["files"]["../outside.bin"] = {"sha256": "0" * 64, "size": 1}
    (folder / "sdrt.json").write_text(json.dumps(manifest))
    assert "outside the artifact folder" in _refusal(host, folder, tmp_path)

    assert "multiples of 8" in _refusal(host, demo_artifact(), tmp_path, "--size", "60x64")
    assert "does not exist" in _refusal(host, demo_artifact(), tmp_path, "--tokenizers-extension", "/nonexistent.so")
    assert "--steps takes a number" in _refusal(host, demo_artifact(), tmp_path, "--steps", "many")
    assert "does not exist" in _refusal(host, tmp_path / "nowhere", tmp_path)


# The other families on tiny models: (artifact fixture, generate options, the host's extra flags). SDXL runs
# twice: without a negative prompt (zero embeddings) and with both prompts of both encoders and CLIP skip.
FAMILIES = {
    "sdxl-zeros": ("tiny_sdxl_artifact", dict(negative=None, steps=6, guidance=5.0), {}),
    "sdxl-prompts": ("tiny_sdxl_artifact", dict(steps=6, guidance=5.0),
                     {"prompt_2": "an oil painting", "negative_prompt_2": "grainy", "clip_skip": 1}),
    "sdxl-refiner": ("tiny_sdxl_refiner_artifact", dict(steps=5, guidance=5.0), {}),
    "sd-turbo": ("tiny_sd_turbo_artifact", dict(negative=None, steps=1, guidance=0.0), {}),
    "lcm": ("tiny_lcm_artifact", dict(negative=None, steps=4, guidance=8.5), {}),
    "taesd": ("tiny_taesd_artifact", dict(steps=4, guidance=5.0), {"vae": "taesd"}),
}
FLAGS = {"prompt_2": "--prompt-2", "negative_prompt_2": "--negative-2", "clip_skip": "--clip-skip", "vae": "--vae"}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_families_match_the_python_runtime(host, family, request, tmp_path):
    import sdrt

    fixture, options, special = FAMILIES[family]
    artifact = request.getfixturevalue(fixture)
    artifact = artifact[0] if isinstance(artifact, tuple) else artifact  # (taesd: the artifact and its VAE's folder)
    extra = [item for name, value in special.items() for item in (FLAGS[name], str(value))]
    cpp = host_image(host, artifact, tmp_path / "cpp.png", size="64x48", extra=extra, **options)
    pipe = sdrt.load(artifact, backend="openvino", precision="fp32", vae=special.get("vae"))
    negative = options.get("negative", NEGATIVE)
    result = pipe(PROMPT, negative_prompt=negative, num_inference_steps=options["steps"],
                  guidance_scale=options["guidance"], seed=7, width=64, height=48,
                  **{k: v for k, v in special.items() if k != "vae"})
    python = np.asarray(result.images[0])
    assert cpp.shape == python.shape == (48, 64, 3)
    difference = np.abs(cpp.astype(np.int16) - python.astype(np.int16))
    assert difference.mean() <= 1.0, f"mean abs difference {difference.mean():.3f}/255"
    assert python.std() > 1


@pytest.mark.slow
def test_refiner_hand_off_matches_the_python_runtime(host, tiny_sdxl_artifact, tiny_sdxl_refiner_artifact, tmp_path):
    """`--refiner` at the stored 0.8 hand-off (a multistep sampler, so the refiner's history restarts);
    another fraction is refused until `sdrt plan --denoising-start` adds its plans."""
    import sdrt
    from sdrt.cli import main

    base = sdrt.load(tiny_sdxl_artifact, backend="openvino", precision="fp32")
    refiner = sdrt.load(tiny_sdxl_refiner_artifact, backend="openvino", precision="fp32")
    common = dict(num_inference_steps=10, guidance_scale=5.0, seed=7, scheduler="dpmpp_2m")

    def python(fraction):
        latents = base(PROMPT, negative_prompt=NEGATIVE, height=48, width=64, denoising_end=fraction,
                       output_type="latent", **common).images
        refined = refiner(PROMPT, negative_prompt=NEGATIVE, image=latents, denoising_start=fraction, **common)
        return np.asarray(refined.images[0])

    def cpp(fraction, artifact=tiny_sdxl_refiner_artifact):
        return host_image(host, tiny_sdxl_artifact, tmp_path / "cpp.png", steps=10, scheduler="dpmpp_2m",
                          size="64x48", extra=["--refiner", str(artifact), "--high-noise-frac", str(fraction)])

    expected = python(0.8)
    difference = np.abs(cpp(0.8).astype(np.int16) - expected.astype(np.int16))
    assert difference.mean() <= 1.0, f"mean abs difference {difference.mean():.3f}/255"
    base_alone = python_image(base, steps=10, scheduler="dpmpp_2m", size=(64, 48))
    assert np.abs(expected.astype(np.int16) - base_alone.astype(np.int16)).mean() > 1  # the refiner ran

    copy = shutil.copytree(tiny_sdxl_refiner_artifact, tmp_path / "refiner")
    args = ["generate", "--artifact", str(tiny_sdxl_artifact), "--prompt", PROMPT, "--negative", NEGATIVE, "--steps",
            "10", "--scheduler", "dpmpp_2m", "--size", "64x48", "--refiner", str(copy), "--high-noise-frac", "0.55",
            "-o", str(tmp_path / "x.png")]
    refused = run_host(host, *args)
    assert refused.returncode == 1 and "--denoising-start 0.55" in refused.stderr, refused.stderr
    assert main(["plan", str(copy), "--scheduler", "dpmpp_2m", "--steps", "10", "--denoising-start", "0.55"]) == 0
    difference = np.abs(cpp(0.55, copy).astype(np.int16) - python(0.55).astype(np.int16))
    assert difference.mean() <= 1.0, f"mean abs difference {difference.mean():.3f}/255"


@pytest.mark.slow
def test_sdxl_size_conditions_match_the_python_runtime(host, tiny_sdxl_artifact, tmp_path):
    import sdrt

    flags = ["--original-size", "96x80", "--crops-coords-top-left", "8,16", "--target-size", "64x48",
             "--negative-target-size", "32x40"]
    cpp = host_image(host, tiny_sdxl_artifact, tmp_path / "cpp.png", steps=6, size="64x48", extra=flags)
    pipe = sdrt.load(tiny_sdxl_artifact, backend="openvino", precision="fp32")
    common = dict(negative_prompt=NEGATIVE, num_inference_steps=6, guidance_scale=5.0, seed=7, width=64, height=48)
    python = np.asarray(pipe(PROMPT, original_size=(80, 96), crops_coords_top_left=(8, 16), target_size=(48, 64),
                             negative_target_size=(40, 32), **common).images[0])
    plain = np.asarray(pipe(PROMPT, **common).images[0])
    difference = np.abs(cpp.astype(np.int16) - python.astype(np.int16))
    assert difference.mean() <= 1.0, f"mean abs difference {difference.mean():.3f}/255"
    assert np.abs(python.astype(np.int16) - plain.astype(np.int16)).mean() > 1  # the conditions matter
    bad = run_host(host, "generate", "--artifact", str(tiny_sdxl_artifact), "--prompt", PROMPT,
                   "--original-size", "0x48", "-o", str(tmp_path / "x.png"))
    assert bad.returncode == 1 and "original_size must be a pair" in bad.stderr, bad.stderr
