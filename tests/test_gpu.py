"""Checks that need a CUDA GPU (skipped elsewhere; benchmarks/gpu_check.sh runs them): the Triton
step compiled for the GPU, and the torch loop replayed as a CUDA graph, against the numpy
references."""
import numpy as np
import pytest

from sdrt.kernels.sampler_step import MAX_HISTORY, fused_step, guide, step_coefficients
from sdrt.runtime.loop import run_plan
from sdrt.runtime.samplers import compile_plan

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
pytest.importorskip("triton")

CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
          "clip_sample": False}


@pytest.mark.parametrize("copies", [1, 2])
@pytest.mark.parametrize("sampler", ["pndm", "euler_a", "dpmpp_2m"])
def test_triton_step_on_the_gpu_matches_numpy(sampler, copies):
    from sdrt.kernels.triton_step import fused_step as triton_fused_step

    rng = np.random.default_rng(0)
    shape = (1, 4, 64, 64)
    table = step_coefficients(compile_plan(sampler, CONFIG, 20).steps, 7.5)
    row = table[np.argmax((table != 0).sum(axis=1))]
    model_output = rng.standard_normal((copies * shape[0], *shape[1:])).astype(np.float32)
    latents = [rng.standard_normal(shape).astype(np.float32) for _ in range(MAX_HISTORY)]
    outputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(MAX_HISTORY - 1)]
    noise = rng.standard_normal(shape).astype(np.float32)
    expected = fused_step(model_output, latents, outputs, row, noise)

    def cuda(array):
        return torch.from_numpy(array).cuda()
    results = [torch.empty(shape, device="cuda"), torch.empty(shape, device="cuda"),
               torch.empty(model_output.shape, device="cuda")]
    triton_fused_step(cuda(model_output), [cuda(x) for x in latents], [cuda(x) for x in outputs], cuda(row),
                      cuda(noise), *results)
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_cuda_graph_loop_matches_the_host_loop(tiny_checkpoint):
    diffusers = pytest.importorskip("diffusers")
    from sdrt.kernels.torch_loop import TorchLoop, triton_step

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = diffusers.UNet2DConditionModel.from_pretrained(tiny_checkpoint / "unet").eval().cuda()
    plan = compile_plan("dpmpp_2m", CONFIG, 8)
    shape = (1, 4, 16, 16)
    rng = np.random.default_rng(1)
    latents = rng.standard_normal(shape).astype(np.float32) * np.float32(plan.init_noise_sigma)
    embeddings = rng.standard_normal((2, 77, model.config.cross_attention_dim)).astype(np.float32)

    def run(sample, timestep, hidden):
        return model(sample, timestep, hidden, return_dict=False)[0]

    def predict(scaled, timestep):
        with torch.inference_mode():
            out = run(torch.from_numpy(np.concatenate([scaled, scaled])).cuda(), torch.full((2,), timestep).cuda(),
                      torch.from_numpy(embeddings).cuda()).cpu().numpy()
        return guide(out[:1], out[1:], 7.5)

    expected = [x for _, x in run_plan(plan, latents, predict, lambda i, s: np.zeros(s, np.float32))][-1]
    with torch.inference_mode():
        loop = TorchLoop(run, torch.from_numpy(embeddings).cuda(), shape, 2, step=triton_step)
        loop.capture()
        final = loop.run(latents, np.float32([s.timestep for s in plan.steps]), step_coefficients(plan.steps, 7.5),
                         np.zeros((len(plan.steps), *shape), np.float32), plan.steps[0].input_scale)
        got = final.cpu().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_the_cuda_graph_loop_moves_no_latents_through_the_host(tiny_checkpoint):
    """Issue 8's check with the profiler: a denoising run of 8 steps copies host to device only
    the tables uploaded before the first step (start latents, timesteps, rows, noise) and nothing
    back (the final latents stay on the device)."""
    diffusers = pytest.importorskip("diffusers")
    from sdrt.kernels.torch_loop import TorchLoop, triton_step

    model = diffusers.UNet2DConditionModel.from_pretrained(tiny_checkpoint / "unet").eval().cuda()
    plan = compile_plan("euler_a", CONFIG, 8)
    shape = (1, 4, 16, 16)
    rng = np.random.default_rng(2)
    latents = rng.standard_normal(shape).astype(np.float32) * np.float32(plan.init_noise_sigma)
    embeddings = torch.from_numpy(rng.standard_normal((2, 77, model.config.cross_attention_dim)).astype(np.float32))
    noises = rng.standard_normal((len(plan.steps), *shape)).astype(np.float32)
    with torch.inference_mode():
        loop = TorchLoop(lambda s, t, h: model(s, t, h, return_dict=False)[0], embeddings.cuda(), shape, 2,
                         step=triton_step)
        loop.capture()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
            loop.run(latents, np.float32([s.timestep for s in plan.steps]), step_coefficients(plan.steps, 7.5),
                     noises, plan.steps[0].input_scale)
            torch.cuda.synchronize()
    names = [event.name for event in profile.events()]
    assert 0 < sum("HtoD" in name for name in names) <= 4
    assert not [name for name in names if "DtoH" in name]
