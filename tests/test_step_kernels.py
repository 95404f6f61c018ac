"""The fused guidance + sampler step in each of its forms (numpy, the ONNX graph ONNX Runtime
runs with IOBinding, the Triton kernel in Triton's CPU interpreter) against the numpy update
the denoising loop uses, on random inputs and every sampler's real coefficients."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sdrt.kernels.sampler_step import (
    COEFFICIENTS,
    LATENT_WEIGHTS,
    MAX_HISTORY,
    NEXT_INPUT_SCALE,
    OUTPUT_WEIGHTS,
    fused_step,
    guide,
    step_coefficients,
)
from sdrt.kernels.step_graph import LATENT_INPUTS, OUTPUT_INPUTS, STEP_GRAPH
from sdrt.runtime.loop import run_plan
from sdrt.runtime.samplers import SAMPLERS, compile_plan

CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
          "clip_sample": False}
SHAPE = (2, 4, 8, 12)


def rows(sampler, steps=12, guidance=7.5):
    return step_coefficients(compile_plan(sampler, CONFIG, steps).steps, guidance)


def random_inputs(rng, copies, shape=SHAPE):
    def normal(*dims):
        return rng.standard_normal(dims).astype(np.float32)
    return (normal(copies * shape[0], *shape[1:]), [normal(*shape) for _ in range(MAX_HISTORY)],
            [normal(*shape) for _ in range(MAX_HISTORY - 1)], normal(*shape))


def test_coefficient_rows_hold_each_plan_step():
    plan = compile_plan("pndm", CONFIG, 12)
    table = step_coefficients(plan.steps, 5.0)
    assert table.shape == (len(plan.steps), COEFFICIENTS) and (table[:, 0] == 5.0).all()
    deepest = max(range(len(plan.steps)), key=lambda i: len(plan.steps[i].output_weights))
    step = plan.steps[deepest]
    assert len(step.output_weights) == MAX_HISTORY  # PNDM's fourth-order step fills every slot
    np.testing.assert_array_equal(table[deepest, OUTPUT_WEIGHTS], np.float32(step.output_weights))
    np.testing.assert_array_equal(table[deepest, LATENT_WEIGHTS][:len(step.latent_weights)],
                                  np.float32(step.latent_weights))
    assert table[deepest, NEXT_INPUT_SCALE] == np.float32(plan.steps[deepest + 1].input_scale)
    assert table[-1, NEXT_INPUT_SCALE] == 1.0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_loop_of_fused_steps_is_the_denoising_loop(sampler):
    """Driving a whole plan with fused_step and rotating histories (what device loops do)
    gives run_plan's latents, with guidance applied to a two-copy model output."""
    plan = compile_plan(sampler, CONFIG, 8)
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((4, 4)).astype(np.float32) * 0.3
    start = rng.standard_normal(SHAPE).astype(np.float32) * np.float32(plan.init_noise_sigma)

    def model(sample, timestep):  # two "conditions": the halves differ
        out = np.tanh(np.einsum("oc,nchw->nohw", weights, sample) + np.float32(timestep / 1000))
        return out * np.float32(np.repeat([1.0, 0.5], SHAPE[0]))[:, None, None, None]

    def noise_for_step(index, shape):
        return np.random.default_rng(100 + index).standard_normal(shape).astype(np.float32)

    def predict(scaled, timestep):
        out = model(np.concatenate([scaled, scaled]), timestep)
        return guide(out[:SHAPE[0]], out[SHAPE[0]:], 7.5)

    expected = [x for _, x in run_plan(plan, start, predict, noise_for_step)]
    table = step_coefficients(plan.steps, 7.5)
    zeros = np.zeros(SHAPE, np.float32)
    latents, outputs = [start] + [zeros] * (MAX_HISTORY - 1), [zeros] * (MAX_HISTORY - 1)
    sample = np.concatenate([start, start]) * np.float32(plan.steps[0].input_scale)
    for index, step in enumerate(plan.steps):
        following, guided, sample = fused_step(model(sample, step.timestep), latents, outputs, table[index],
                                               noise_for_step(index, SHAPE))
        np.testing.assert_allclose(following, expected[index], rtol=1e-5, atol=1e-5)
        latents, outputs = [following, *latents[:-1]], [guided, *outputs[:-1]]


@pytest.mark.parametrize("copies", [1, 2])
def test_onnx_step_graph_matches_numpy_with_iobinding(copies):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(STEP_GRAPH), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(copies)
    for sampler in SAMPLERS:
        table = rows(sampler)
        for row in table[[0, 1, np.argmax((table != 0).sum(axis=1)), -1]]:
            model_output, latents, outputs, noise = random_inputs(rng, copies)
            expected = fused_step(model_output, latents, outputs, row, noise)
            # inputs and outputs in buffers allocated once, bound by name: the device loop's way
            binding = session.io_binding()
            feeds = {"model_output": model_output, **dict(zip(LATENT_INPUTS, latents)),
                     **dict(zip(OUTPUT_INPUTS, outputs)), "coefficients": row, "noise": noise,
                     "next_timestep": np.full((model_output.shape[0],), 17.5, np.float32)}
            for name, value in feeds.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
            expected = [*expected, feeds["next_timestep"]]  # copied to the UNet's timestep buffer
            results = [ort.OrtValue.ortvalue_from_numpy(np.empty_like(value)) for value in expected]
            for name, value in zip(("next_latents", "guided_output", "next_sample", "timestep"), results):
                binding.bind_ortvalue_output(name, value)
            session.run_with_iobinding(binding)
            for got, want in zip(results, expected):
                np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_shipped_step_graph_is_what_the_builder_writes():
    pytest.importorskip("onnx")
    from sdrt.kernels.step_graph import build_step_graph

    assert STEP_GRAPH.read_bytes() == build_step_graph().SerializeToString(), \
        "rewrite it: python -m sdrt.kernels.step_graph"


def test_triton_step_matches_numpy_in_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    cases = []
    for copies in (1, 2):
        for sampler in ("pndm", "euler_a", "dpmpp_2m"):
            table = rows(sampler)
            row = table[np.argmax((table != 0).sum(axis=1))]  # the step using the most history
            model_output, latents, outputs, noise = random_inputs(rng, copies, (1, 4, 33, 31))  # not a block multiple
            np.savez(tmp_path / f"{sampler}-{copies}.npz", model_output=model_output, latents=np.stack(latents),
                     outputs=np.stack(outputs), row=row, noise=noise)
            cases.append(tmp_path / f"{sampler}-{copies}.npz")
    # The interpreter is chosen when the kernel is defined, from TRITON_INTERPRET: a fresh process.
    script = textwrap.dedent(f"""
        import json, numpy as np, torch
        from sdrt.kernels.triton_step import fused_step
        results = {{}}
        for path in {[str(c) for c in cases]!r}:
            case = {{key: torch.from_numpy(value) for key, value in np.load(path).items()}}
            latents = case["latents"]
            outs = [torch.empty_like(latents[0]), torch.empty_like(latents[0]), torch.empty_like(case["model_output"])]
            fused_step(case["model_output"], list(latents), list(case["outputs"]), case["row"], case["noise"], *outs)
            np.savez(path.replace(".npz", "-triton.npz"), *[o.numpy() for o in outs])
        print(json.dumps("done"))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**__import__("os").environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert run.returncode == 0 and json.loads(run.stdout.strip().splitlines()[-1]) == "done", run.stderr[-2000:]
    for path in cases:
        case = np.load(path)
        expected = fused_step(case["model_output"], list(case["latents"]), list(case["outputs"]), case["row"],
                              case["noise"])
        got = np.load(str(path).replace(".npz", "-triton.npz"))
        for index, want in enumerate(expected):
            np.testing.assert_allclose(got[f"arr_{index}"], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_the_torch_cuda_benchmark_runs_its_steps_on_the_cpu(tmp_path):
    """benchmarks/torch_cuda.py's flow on the CPU at tiny sizes (the GPU run has minutes, not
    retries): the loop's image path runs, the results hold every figure the table prints."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from sdrt.benchmarks.torch_cuda import main

    path = tmp_path / "result.json"
    assert main(["--config", "tiny", "--size", "64", "--steps", "3", "--runs", "1", "--device", "cpu",
                 "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    for key in ("end_to_end_s", "text_encoder_s", "denoise_eager_s", "vae_decoder_s", "first_run_s"):
        assert result[key] > 0, key
    # (on the CPU both comparisons run the same code, so only their presence is checked here;
    # tests/test_gpu.py checks the graph and the Triton step against references on a GPU)
    assert {"graph_vs_eager_max_rel", "triton_vs_torch_step_max_rel"} <= set(result)
    assert result["device"] == "cpu" and result["cuda_graph"] is False


@pytest.mark.slow
def test_the_torch_cuda_benchmarks_compiled_unet_matches_the_eager_one_on_the_cpu(tmp_path):
    """--compile: the loop runs the torch.compile'd UNet (inductor) and the benchmark's check
    compares its final latents with the eager UNet's loop: different code, the same result."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from sdrt.benchmarks.torch_cuda import main

    path = tmp_path / "result.json"
    assert main(["--config", "tiny", "--size", "64", "--steps", "3", "--runs", "1", "--device", "cpu", "--compile",
                 "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["torch_compile"] is True
    assert 0 <= result["graph_vs_eager_max_rel"] < 1e-4


def test_step_graph_profile_covers_every_input_for_the_unets_shapes():
    """The TensorRT profile of the step engine: every graph input named, the latent-sized ones
    from batch 1 to the UNet's largest batch, the UNet's output as its sample."""
    pytest.importorskip("onnx")
    from sdrt.kernels.step_graph import build_step_graph, step_shape_profile

    sample = ((1, 4, 32, 32), (2, 4, 64, 64), (16, 4, 128, 128))
    profile = step_shape_profile(sample)
    assert set(profile) == {i.name for i in build_step_graph().graph.input}
    assert profile["model_output"] == sample
    assert profile["latents_0"] == profile["noise"] == ((1, 4, 32, 32), (1, 4, 64, 64), (16, 4, 128, 128))
    assert profile["next_timestep"] == ((1,), (2,), (16,)) and profile["coefficients"] == ((13,),) * 3
    for least, best, most in profile.values():
        assert all(a <= b <= c for a, b, c in zip(least, best, most))
