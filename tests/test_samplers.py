"""Sampler plans against diffusers' schedulers: same model outputs, same noise, every step."""
import numpy as np
import pytest

# sdrt sampler -> the diffusers scheduler (and config overrides) it must reproduce; `sdrt bench`
# gives the peers the same table, so this test also checks that they run the same sampler.
from sdrt.benchmarks.peer_worker import SCHEDULERS as ORACLES
from sdrt.models.configs import SD1_SCHEDULER
from sdrt.runtime.errors import RequestError
from sdrt.runtime.loop import run_plan
from sdrt.runtime.samplers import SAMPLERS, compile_img2img_plan, compile_plan

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

CONFIGS = {
    "sd15": dict(SD1_SCHEDULER),
    "v_trailing": {**SD1_SCHEDULER, "prediction_type": "v_prediction", "timestep_spacing": "trailing",
                   "steps_offset": 0},
    "linspace_linear": {**SD1_SCHEDULER, "timestep_spacing": "linspace", "beta_schedule": "linear",
                        "beta_start": 0.0001, "beta_end": 0.02, "steps_offset": 0},
    "no_spacing_key": {k: v for k, v in SD1_SCHEDULER.items() if k not in ("timestep_spacing", "set_alpha_to_one")},
    # zero terminal SNR (Lin et al. 2024): v-prediction, trailing timesteps, the last alpha-bar 0
    "zero_snr": {**SD1_SCHEDULER, "prediction_type": "v_prediction", "timestep_spacing": "trailing",
                 "steps_offset": 0, "rescale_betas_zero_snr": True},
}

SHAPE = (2, 4, 8, 8)


def fake_model(x: np.ndarray, t: float) -> np.ndarray:
    """A deterministic stand-in for the UNet, nonlinear in both x and t."""
    rng = np.random.default_rng(1234)
    pattern = rng.standard_normal(SHAPE).astype(np.float32)
    return (np.tanh(0.7 * x) * np.float32(np.cos(t / 150.0)) + np.float32(0.3) * pattern).astype(np.float32)


def diffusers_trajectory(sampler, config, steps, initial):
    cls_name, overrides = ORACLES[sampler]
    scheduler = getattr(diffusers, cls_name).from_config({**config, **overrides})
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(7)
    x = torch.from_numpy(initial) * scheduler.init_noise_sigma
    result = []
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        out = torch.from_numpy(fake_model(x_in.numpy(), float(t)))
        kwargs = {"generator": generator} if sampler in ("euler_a", "lcm") else {}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
        result.append((float(t), x.numpy().copy()))
    return float(scheduler.init_noise_sigma), result


def sdrt_trajectory(sampler, config, steps, initial):
    plan = compile_plan(sampler, config, steps)
    generator = torch.Generator().manual_seed(7)

    def noise(index, shape):
        return torch.randn(shape, generator=generator, dtype=torch.float32).numpy()

    x = initial * np.float32(plan.init_noise_sigma)
    steps_out = [(step.timestep, x_next.copy()) for step, (_, x_next) in
                 zip(plan.steps, run_plan(plan, x, fake_model, noise))]
    return plan.init_noise_sigma, steps_out


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("steps", [4, 20])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_plan_matches_diffusers_every_step(sampler, config_name, steps):
    config = CONFIGS[config_name]
    if sampler == "pndm" and config.get("rescale_betas_zero_snr"):
        pytest.skip("refused: diffusers' PNDMScheduler ignores rescale_betas_zero_snr (test below)")
    if sampler == "ddim" and "clip_sample" not in config:
        config = {**config, "clip_sample": False}
    initial = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    ref_sigma, reference = diffusers_trajectory(sampler, config, steps, initial)
    sigma, ours = sdrt_trajectory(sampler, config, steps, initial)
    assert sigma == pytest.approx(ref_sigma, rel=1e-6)
    assert [t for t, _ in ours] == pytest.approx([t for t, _ in reference], abs=1e-3)
    # At zero terminal SNR the Euler samplers start at sigma = 4096: diffusers' first float32
    # step cancels terms of about 4096 |x| (one ulp ~ 1e-3) down to a few units, so its own
    # rounding reaches ~7e-5 of the result there.
    tolerance = 1e-4 if config.get("rescale_betas_zero_snr") and sampler in ("euler", "euler_a") else 1e-5
    for index, ((_, mine), (_, theirs)) in enumerate(zip(ours, reference)):
        rel = np.abs(mine - theirs).max() / np.abs(theirs).max()
        assert rel <= tolerance, f"{sampler} step {index}: relative error {rel:.2e}"


def diffusers_img2img_trajectory(sampler, config, steps, strength, image, noise):
    """What StableDiffusionImg2ImgPipeline does with the scheduler (get_timesteps, add_noise)."""
    cls_name, overrides = ORACLES[sampler]
    scheduler = getattr(diffusers, cls_name).from_config({**config, **overrides})
    scheduler.set_timesteps(steps)
    start = steps - min(int(steps * strength), steps)
    timesteps = scheduler.timesteps[start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * scheduler.order)
    x = scheduler.add_noise(torch.from_numpy(image), torch.from_numpy(noise), timesteps[:1].repeat(SHAPE[0]))
    initial = x.numpy().copy()
    generator = torch.Generator().manual_seed(7)
    result, renoised = [], []
    for i, t in enumerate(timesteps):
        out = torch.from_numpy(fake_model(scheduler.scale_model_input(x, t).numpy(), float(t)))
        kwargs = {"generator": generator} if sampler in ("euler_a", "lcm") else {}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
        result.append((float(t), x.numpy().copy()))
        if i + 1 < len(timesteps):
            renoised.append(scheduler.add_noise(torch.from_numpy(image), torch.from_numpy(noise),
                                                timesteps[i + 1:i + 2].repeat(SHAPE[0])).numpy())
    # What inpainting re-noises the image to after each step: add_noise at the next timestep
    # (pipeline_stable_diffusion_inpaint.py, with the scheduler's state after the step).
    return initial, result, renoised


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("config_name", ["sd15", "v_trailing"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_img2img_plan_matches_diffusers_every_step(sampler, config_name, strength):
    config = CONFIGS[config_name]
    rng = np.random.default_rng(1)
    image, noise = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
    reference_initial, reference, renoised = diffusers_img2img_trajectory(sampler, config, 10, strength, image, noise)
    plan = compile_img2img_plan(sampler, config, 10, strength)
    initial = np.float32(plan.init_image_weight) * image + np.float32(plan.init_noise_sigma) * noise
    assert np.abs(initial - reference_initial).max() <= 1e-5 * np.abs(reference_initial).max()
    generator = torch.Generator().manual_seed(7)
    ours = [(step.timestep, x.copy()) for step, (_, x) in zip(plan.steps, run_plan(
        plan, initial, fake_model, lambda index, shape: torch.randn(shape, generator=generator).numpy()))]
    assert len(ours) == len(reference) > 0
    assert [t for t, _ in ours] == pytest.approx([t for t, _ in reference], abs=1e-3)
    for index, ((_, mine), (_, theirs)) in enumerate(zip(ours, reference)):
        rel = np.abs(mine - theirs).max() / np.abs(theirs).max()
        assert rel <= 1e-5, f"{sampler} step {index}: relative error {rel:.2e}"
    assert len(plan.noising) == len(plan.steps) and plan.noising[0] == (plan.init_image_weight, plan.init_noise_sigma)
    for (image_weight, noise_weight), theirs in zip(plan.noising[1:], renoised, strict=True):
        mine = np.float32(image_weight) * image + np.float32(noise_weight) * noise
        assert np.abs(mine - theirs).max() <= 1e-5 * np.abs(theirs).max()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_img2img_at_strength_zero_runs_no_step_and_adds_no_noise(sampler):
    plan = compile_img2img_plan(sampler, SD1_SCHEDULER, 10, 0.0)
    assert (plan.steps, plan.init_image_weight, plan.init_noise_sigma) == ((), 1.0, 0.0)
    # Fewer steps than strength asks for never add a step: 0.05 of 10 is none.
    assert compile_img2img_plan(sampler, SD1_SCHEDULER, 10, 0.05).steps == ()


@pytest.mark.parametrize("strength", [-0.1, 1.5, "0.5", True])
def test_img2img_strength_outside_zero_one_is_refused(strength):
    with pytest.raises(RequestError, match="strength must be a number in \\[0, 1\\]"):
        compile_img2img_plan("euler", SD1_SCHEDULER, 10, strength)


def test_zero_terminal_snr_is_refused_where_it_cannot_work():
    config = CONFIGS["zero_snr"]
    with pytest.raises(RequestError, match="pndm sampler has no zero-terminal-SNR form"):
        compile_plan("pndm", config, 10)
    with pytest.raises(RequestError, match="needs prediction_type v_prediction"):
        compile_plan("euler", {**config, "prediction_type": "epsilon"}, 10)


def test_unknown_sampler_lists_known_ones():
    with pytest.raises(RequestError, match="choose one of: ddim, pndm, euler"):
        compile_plan("heun", SD1_SCHEDULER, 10)


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "lcm"])  # lcm: at most its original steps
def test_more_steps_than_training_timesteps_are_refused(sampler):
    with pytest.raises(RequestError, match=r"num_inference_steps \(1001\) cannot exceed the 1000 training timesteps"):
        compile_plan(sampler, SD1_SCHEDULER, 1001)
    try:  # a count the spacing cannot give is a sentence too, never an arithmetic error
        assert len(compile_plan(sampler, SD1_SCHEDULER, 1000).steps) >= 1000
    except RequestError as error:
        assert f"The {sampler} sampler cannot space 1000 steps" in str(error)


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_below_one_are_refused(steps):
    with pytest.raises(RequestError, match="num_inference_steps must be an integer >= 1"):
        compile_plan("euler", SD1_SCHEDULER, steps)
