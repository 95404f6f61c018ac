"""What an artifact carries for hosts that run no Python: sampler plans and the tokenizer as an
OpenVINO model. Oracles: runtime.samplers.compile_plan (itself checked against diffusers) and
sdrt's Python CLIP tokenizer (checked against transformers' in test_tokenizer.py)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sdrt.cli import main
from sdrt.models.demo import demo_artifact
from sdrt.runtime.artifact import open_artifact
from sdrt.runtime.errors import RequestError
from sdrt.runtime.plan_file import DEFAULT_HANDOFF, DEFAULT_STEP_COUNTS
from sdrt.runtime.samplers import SAMPLERS, compile_handoff_plan, compile_plan, default_sampler, handoff_start
from sdrt.runtime.tokenizer import ClipTokenizer

PROMPTS = [
    "a red circle on a blue background",
    "",
    "  A  Castle,\ton a HILL!!  ",
    "don't stop: 123 4.5 émigré café, naïve — “quotes” & <tags>",
    "an astronaut riding a horse on mars, 8k, (masterpiece:1.2), [blurry]",
    "日本語のプロンプト 🙂 emoji",
    "word " * 90,  # truncated to 77 ids
]


@pytest.fixture(params=["demo", "tiny"])
def artifact(request, tiny_artifact):
    return demo_artifact() if request.param == "demo" else tiny_artifact


def stored_plans(folder, manifest) -> dict:
    return json.loads((folder / manifest["sampler_plans"]).read_text())["plans"]


def test_every_sampler_is_stored_at_the_default_step_counts(artifact):
    """Which plans the exporter stores; their values are checked where they are read: the C++
    host runs them (tests/test_cpp_host.py, images against the Python runtime's)."""
    manifest = open_artifact(artifact).manifest
    config = manifest["pipeline"]["scheduler"]
    document = json.loads((artifact / manifest["sampler_plans"]).read_text())
    assert document["default_sampler"] == default_sampler(config)
    assert set(document["plans"]) == set(SAMPLERS)
    for sampler in SAMPLERS:
        counts = [n for n in DEFAULT_STEP_COUNTS if sampler != "lcm" or n <= config.get("original_inference_steps", 50)]
        assert sorted(int(n) for n in document["plans"][sampler]) == counts
    assert "37" not in document["plans"]["euler"]


def test_sdxl_artifacts_store_the_refiner_hand_off_plans(tiny_sdxl_refiner_artifact, tiny_artifact):
    """The plans that finish a base model's latents from 0.8 (keyed by their first step), for every
    sampler and default step count that leaves the refiner a step; none for SD 1.x."""
    manifest = open_artifact(tiny_sdxl_refiner_artifact).manifest
    config = manifest["pipeline"]["scheduler"]
    handoffs = json.loads((tiny_sdxl_refiner_artifact / manifest["sampler_plans"]).read_text())["handoffs"]
    assert set(handoffs) == set(SAMPLERS)
    for sampler, by_steps in handoffs.items():
        for steps in DEFAULT_STEP_COUNTS:
            try:
                start = handoff_start(sampler, config, steps, DEFAULT_HANDOFF)
            except RequestError:  # (lcm beyond its original step count)
                start = steps
            if start == steps:
                assert str(steps) not in by_steps
                continue
            assert by_steps[str(steps)] == {str(start): compile_handoff_plan(sampler, config, steps,
                                                                             DEFAULT_HANDOFF).to_json()}
    assert handoffs["euler"]["20"].keys() == {"16"}
    sd1 = open_artifact(tiny_artifact).manifest
    assert "handoffs" not in json.loads((tiny_artifact / sd1["sampler_plans"]).read_text())


def test_openvino_tokenizer_gives_the_python_tokenizer_ids(artifact):
    ov = pytest.importorskip("openvino")
    pytest.importorskip("openvino_tokenizers")  # importing it registers the extension with OpenVINO
    manifest = open_artifact(artifact).manifest
    entry = manifest["tokenizers"][0]
    model = ov.Core().compile_model(str(artifact / entry["files"]["openvino_tokenizer"]), "CPU")
    python = ClipTokenizer.from_folder(artifact / "tokenizer", bos_id=entry["bos_id"], eos_id=entry["eos_id"],
                                       pad_id=entry["pad_id"], max_length=entry["max_length"])
    with pytest.warns(UserWarning, match="dropped"):
        expected = python(PROMPTS)
    ids = model([np.array(PROMPTS)])["input_ids"]
    assert ids.shape == (len(PROMPTS), entry["max_length"])
    np.testing.assert_array_equal(ids, expected)


def test_sdrt_plan_adds_a_plan_and_keeps_the_artifact_valid(tmp_path, capsys):
    folder = shutil.copytree(demo_artifact(), tmp_path / "artifact")
    assert main(["plan", str(folder), "--scheduler", "euler", "lcm", "--steps", "37", "7"]) == 0
    assert "added euler 37" in capsys.readouterr().out
    artifact = open_artifact(folder)  # checksums still hold
    config = artifact.pipeline["scheduler"]
    plans = stored_plans(folder, artifact.manifest)
    for sampler in ("euler", "lcm"):
        for steps in (37, 7):
            assert plans[sampler][str(steps)] == compile_plan(sampler, config, steps).to_json()
    assert plans["ddim"]["20"] == compile_plan("ddim", config, 20).to_json()  # kept

    assert main(["plan", str(folder), "--scheduler", "ddim", "--steps", "12", "--denoising-start", "0.75", "0.5"]) == 0
    assert "added ddim 12 from step 9" in capsys.readouterr().out
    handoffs = json.loads((folder / artifact.manifest["sampler_plans"]).read_text())["handoffs"]["ddim"]["12"]
    assert handoffs == {str(handoff_start("ddim", config, 12, f)): compile_handoff_plan("ddim", config, 12, f).to_json()
                        for f in (0.75, 0.5)}
    open_artifact(folder)

    plan_file = tmp_path / "plan.json"
    assert main(["plan", str(folder), "--scheduler", "dpmpp_2m", "--steps", "9", "-o", str(plan_file)]) == 0
    assert json.loads(plan_file.read_text()) == {**compile_plan("dpmpp_2m", config, 9).to_json(),
                                                 "num_inference_steps": 9}


def test_sdrt_plan_refuses_what_cannot_be_compiled(tmp_path, capsys):
    folder = shutil.copytree(demo_artifact(), tmp_path / "artifact")
    before = (folder / "sdrt.json").read_bytes()
    assert main(["plan", str(folder), "--scheduler", "lcm", "--steps", "80"]) == 2
    assert "at most 50 steps" in capsys.readouterr().err
    assert (folder / "sdrt.json").read_bytes() == before
    single = str(tmp_path / "p.json")
    assert main(["plan", str(folder), "--scheduler", "euler", "ddim", "--steps", "9", "-o", single]) == 2
    assert "one --scheduler" in capsys.readouterr().err
    assert main(["plan", str(folder), "--scheduler", "euler", "--steps", "9", "--denoising-start", "0.8", "-o",
                 single]) == 2
    assert "leave out -o" in capsys.readouterr().err
    assert main(["plan", str(folder), "--scheduler", "euler", "--steps", "9", "--denoising-start", "1.5"]) == 2
    assert "denoising_start must be a fraction" in capsys.readouterr().err
    assert (folder / "sdrt.json").read_bytes() == before
    assert main(["plan", str(tmp_path), "--scheduler", "euler", "--steps", "9"]) == 2
    assert "sdrt.json" in capsys.readouterr().err
