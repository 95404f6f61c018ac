"""The torch denoising loop (kernels/torch_loop.py, the GPU reference path) on the CPU: with the
same UNet, its static-buffer loop gives run_plan's latents, for samplers with noise, with deep
histories, with and without guidance."""
import numpy as np
import pytest

from sdrt.kernels.sampler_step import guide, step_coefficients
from sdrt.runtime.loop import run_plan
from sdrt.runtime.noise import gaussian_noise, step_noise_stream
from sdrt.runtime.samplers import compile_plan

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from sdrt.kernels.torch_loop import TorchLoop  # noqa: E402


@pytest.fixture(scope="module")
def unet(tiny_checkpoint):
    model = diffusers.UNet2DConditionModel.from_pretrained(tiny_checkpoint / "unet").eval()

    def run(sample, timestep, embeddings):
        with torch.no_grad():
            return model(sample, timestep, embeddings).sample
    return run, model.config.cross_attention_dim


@pytest.mark.parametrize("sampler,guidance", [("euler_a", 7.5), ("pndm", 7.5), ("dpmpp_2m", 1.0)])
def test_torch_loop_gives_run_plans_latents(unet, sampler, guidance):
    run, width = unet
    config = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear", "clip_sample": False}
    plan = compile_plan(sampler, config, 6)
    shape, copies = (1, 4, 16, 16), 2 if guidance > 1 else 1
    latents = gaussian_noise(3, shape) * np.float32(plan.init_noise_sigma)
    embeddings = np.random.default_rng(0).standard_normal((copies, 77, width)).astype(np.float32)

    def noise_for_step(index, noise_shape):
        return gaussian_noise(3, noise_shape, step_noise_stream(index))

    def predict(scaled, timestep):
        sample = torch.from_numpy(np.concatenate([scaled] * copies))
        out = run(sample, torch.full((copies,), timestep), torch.from_numpy(embeddings)).numpy()
        return guide(out[:1], out[1:], guidance) if copies == 2 else out

    expected = [x for _, x in run_plan(plan, latents, predict, noise_for_step)][-1]
    loop = TorchLoop(run, torch.from_numpy(embeddings), shape, copies)
    noises = np.stack([noise_for_step(i, shape) if step.noise_weight else np.zeros(shape, np.float32)
                       for i, step in enumerate(plan.steps)])
    seen = []
    final = loop.run(latents, np.float32([step.timestep for step in plan.steps]),
                     step_coefficients(plan.steps, guidance), noises, plan.steps[0].input_scale, seen.append)
    assert seen == list(range(len(plan.steps)))
    np.testing.assert_allclose(final.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
