"""Sampler plans: a scheduler compiled, once per request, into plain data.

A plan step says which timestep the denoiser sees, how its input is scaled, and the
coefficients of one linear update

    x[i+1] = sum_k latent_weights[k] * x[i-k] + sum_k output_weights[k] * out[i-k]
             + noise_weight * noise[i]

over the current and earlier latents, the current and earlier (guided) model outputs and
fresh noise. Every sampler below is linear in those quantities once the prediction type's
conversion (epsilon or v to the clean-sample estimate) is folded into the coefficients, so
one pure update (kernels.sampler_step) serves all of them, on every backend and in C++.

The oracle is diffusers' scheduler classes: each builder below follows the named file of
diffusers 0.42 line for line where it computes timesteps and sigmas (in float32, as there),
and computes the update coefficients in float64.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from .errors import RequestError

SAMPLERS = ("ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "lcm")
# diffusers scheduler class -> the sampler that reproduces it
_SAMPLER_OF_CLASS = {
    "PNDMScheduler": "pndm",
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_a",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
    "LCMScheduler": "lcm",
}
_SIGMA_SAMPLERS = ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras")  # work in sigma = sqrt((1 - a) / a)

# Each sampler's diffusers defaults for the keys a checkpoint's scheduler config may omit.
_DEFAULTS = {
    "ddim": {"timestep_spacing": "leading", "clip_sample": True, "set_alpha_to_one": True},
    "pndm": {"timestep_spacing": "leading", "set_alpha_to_one": False},
    "euler": {"timestep_spacing": "linspace"},
    "euler_a": {"timestep_spacing": "linspace"},
    "dpmpp_2m": {"timestep_spacing": "linspace", "lower_order_final": True, "euler_at_final": False,
                 "final_sigmas_type": "zero"},
    "dpmpp_2m_karras": {"timestep_spacing": "linspace", "lower_order_final": True, "euler_at_final": False,
                        "final_sigmas_type": "zero"},
    "lcm": {"timestep_spacing": "leading", "clip_sample": False, "set_alpha_to_one": True,
            "original_inference_steps": 50, "timestep_scaling": 10.0},
}
_COMMON_DEFAULTS = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "prediction_type": "epsilon", "steps_offset": 0, "thresholding": False,
    "rescale_betas_zero_snr": False,
}


@dataclass(frozen=True)
class PlanStep:
    timestep: float
    input_scale: float
    latent_weights: tuple[float, ...]
    output_weights: tuple[float, ...]
    noise_weight: float = 0.0

    def to_json(self) -> dict:
        return {"timestep": self.timestep, "input_scale": self.input_scale,
                "latent_weights": list(self.latent_weights), "output_weights": list(self.output_weights),
                "noise_weight": self.noise_weight}


@dataclass(frozen=True)
class SamplerPlan:
    """The steps, and where they start: latents = init_image_weight * image latents +
    init_noise_sigma * standard-normal noise (text-to-image has no image: its weight is 0).

    Plans that start from an image also carry `noising`: for each step, the (image weight,
    noise weight) of the scheduler's add_noise at that step's timestep, with which inpainting
    re-noises the image's latents to where the loop is."""

    sampler: str
    init_noise_sigma: float
    steps: tuple[PlanStep, ...]
    init_image_weight: float = 0.0
    noising: tuple[tuple[float, float], ...] = ()

    @property
    def history_depth(self) -> int:
        return max((max(len(s.latent_weights), len(s.output_weights)) for s in self.steps), default=1)

    def to_json(self) -> dict:
        start = {"init_image_weight": self.init_image_weight} if self.init_image_weight else {}
        noising = {"noising": [list(pair) for pair in self.noising]} if self.noising else {}
        return {"sampler": self.sampler, "init_noise_sigma": self.init_noise_sigma, **start, **noising,
                "steps": [s.to_json() for s in self.steps]}



class _Linear:
    """a * x + b * out for one step's latents x and model output out."""

    __slots__ = ("x", "out")

    def __init__(self, x: float, out: float):
        self.x, self.out = x, out


def default_sampler(scheduler_config: dict) -> str:
    """The sampler that reproduces a checkpoint's own diffusers scheduler (pndm when unknown)."""
    sampler = _SAMPLER_OF_CLASS.get(scheduler_config.get("_class_name", ""), "pndm")
    if sampler == "dpmpp_2m" and scheduler_config.get("use_karras_sigmas"):
        sampler = "dpmpp_2m_karras"
    return sampler


def compile_plan(sampler: str, scheduler_config: dict, num_inference_steps: int) -> SamplerPlan:
    """Compile `sampler` for a checkpoint's diffusers scheduler config into a plan."""
    return _compile(sampler, scheduler_config, num_inference_steps, None)


def compile_img2img_plan(sampler: str, scheduler_config: dict, num_inference_steps: int,
                         strength: float, from_noise: bool = False) -> SamplerPlan:
    """The plan of image-to-image (SDEdit, Meng et al. 2022) as diffusers' img2img pipelines run it:
    of the `num_inference_steps`-step schedule, the last int(num_inference_steps * strength)
    steps, starting from the image's latents noised to the first of them (the scheduler's
    add_noise); multistep samplers start their history afresh there. Strength 0 leaves no step
    and no noise: the image's latents come back as they are. `from_noise`: start from pure
    noise scaled as text-to-image does, keeping the add_noise weights of every step (diffusers'
    inpainting at strength 1, is_strength_max)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise RequestError(f"strength must be a number in [0, 1], got {strength!r}.")
    if isinstance(num_inference_steps, int) and not isinstance(num_inference_steps, bool):
        # pipeline_stable_diffusion_img2img.py, get_timesteps
        kept = min(int(num_inference_steps * strength), num_inference_steps)
        return _compile(sampler, scheduler_config, num_inference_steps, num_inference_steps - kept, from_noise)
    return _compile(sampler, scheduler_config, num_inference_steps, 0)  # refuses the step count


def _cutoff(fraction, scheduler_config: dict, name: str) -> int:
    """The training timestep at `fraction` of the way from noise to image (diffusers'
    discrete_timestep_cutoff for denoising_end / denoising_start)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise RequestError(f"{name} must be a fraction between 0 and 1 (exclusive), got {fraction!r}.")
    total = int(scheduler_config.get("num_train_timesteps", 1000))
    return int(round(total - fraction * total))


def end_plan_at(plan: SamplerPlan, denoising_end: float, scheduler_config: dict) -> SamplerPlan:
    """The plan's steps down to `denoising_end` of the schedule: those whose timestep is at or above
    the cutoff (pipeline_stable_diffusion_xl.py), the rest left for a refiner."""
    cutoff = _cutoff(denoising_end, scheduler_config, "denoising_end")
    kept = sum(1 for step in plan.steps if step.timestep >= cutoff)
    return replace(plan, steps=plan.steps[:kept], noising=plan.noising[:kept])


def handoff_start(sampler: str, scheduler_config: dict, num_inference_steps: int, denoising_start: float) -> int:
    """The index, in the `num_inference_steps`-step schedule, of the first step a refiner runs
    after a base model stopped at `denoising_start`: the steps below its cutoff are the refiner's
    (pipeline_stable_diffusion_xl_img2img.py, get_timesteps with denoising_start)."""
    cutoff = _cutoff(denoising_start, scheduler_config, "denoising_start")
    full = compile_plan(sampler, scheduler_config, num_inference_steps)
    return num_inference_steps - sum(1 for step in full.steps if step.timestep < cutoff)


def compile_handoff_plan(sampler: str, scheduler_config: dict, num_inference_steps: int,
                         denoising_start: float) -> SamplerPlan:
    """A refiner's plan: of the `num_inference_steps`-step schedule, the steps below the
    `denoising_start` cutoff, starting from the given latents as they are (no noise added: they
    are a base model's, stopped there with denoising_end); multistep history starts afresh."""
    start = handoff_start(sampler, scheduler_config, num_inference_steps, denoising_start)
    return compile_handoff_plan_from(sampler, scheduler_config, num_inference_steps, start)


def compile_handoff_plan_from(sampler: str, scheduler_config: dict, num_inference_steps: int,
                              start: int) -> SamplerPlan:
    """compile_handoff_plan by the index of its first step (handoff_start)."""
    plan = _compile(sampler, scheduler_config, num_inference_steps, start)
    return replace(plan, init_noise_sigma=0.0, init_image_weight=1.0)


def _compile(sampler: str, scheduler_config: dict, num_inference_steps: int, start: int | None,
             from_noise: bool = False) -> SamplerPlan:
    """start None: text-to-image; else image-to-image from that index of the schedule."""
    if sampler not in SAMPLERS:
        raise RequestError(f"Unknown scheduler {sampler!r}; choose one of: {', '.join(SAMPLERS)}.")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise RequestError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}.")
    config = {**_COMMON_DEFAULTS, **_DEFAULTS[sampler],
              **{k: v for k, v in scheduler_config.items() if not k.startswith("_")}}
    if config["thresholding"]:
        raise RequestError("Scheduler configs with thresholding=true are not supported; set it to false.")
    if config.get("clip_sample") and sampler in ("ddim", "lcm"):
        raise RequestError(
            f"The {sampler} sampler with clip_sample=true is not linear and is not supported; the checkpoint's "
            "scheduler config should say clip_sample: false (Stable Diffusion's does)."
        )
    if config["prediction_type"] not in ("epsilon", "v_prediction"):
        raise RequestError(
            f"prediction_type {config['prediction_type']!r} is not supported; use epsilon or v_prediction.")
    if config["rescale_betas_zero_snr"]:
        if config["prediction_type"] != "v_prediction":
            raise RequestError("rescale_betas_zero_snr=true needs prediction_type v_prediction: at zero terminal "
                               "SNR an epsilon model's clean-image estimate divides by zero (Lin et al. 2024).")
        if sampler == "pndm":
            raise RequestError("The pndm sampler has no zero-terminal-SNR form (diffusers' PNDMScheduler ignores "
                               "rescale_betas_zero_snr); choose ddim, euler, euler_a, dpmpp_2m or lcm.")
    if config["timestep_spacing"] not in ("leading", "trailing", "linspace"):
        raise RequestError(
            f"timestep_spacing must be leading, trailing or linspace, got {config['timestep_spacing']!r}.")
    if num_inference_steps > int(config["num_train_timesteps"]):  # (DPM-Solver would divide by zero)
        raise RequestError(f"num_inference_steps ({num_inference_steps}) cannot exceed the "
                           f"{int(config['num_train_timesteps'])} training timesteps.")
    alphas_cumprod = _alphas_cumprod(config)
    if config["rescale_betas_zero_snr"] and sampler in _SIGMA_SAMPLERS:
        # As those diffusers schedulers do: close to 0 without being 0, so the first sigma is finite.
        alphas_cumprod[-1] = np.float32(2.0**-24)
    try:
        steps, noising, init_noise_sigma = _BUILDERS[sampler](config, alphas_cumprod, num_inference_steps, start or 0)
    except (IndexError, ZeroDivisionError):  # a timestep past the last, or two the same (a zero step)
        raise RequestError(f"The {sampler} sampler cannot space {num_inference_steps} steps over this scheduler's "
                           f"{config['num_train_timesteps']} training timesteps (its timesteps would run past the "
                           "last or repeat); choose fewer steps.") from None
    if start is None:
        return SamplerPlan(sampler, init_noise_sigma, tuple(steps))
    # image-to-image starts from the image's latents noised to the first step it runs (no steps: no noise)
    image_weight, noise_weight = (0.0, init_noise_sigma) if from_noise else noising[0] if steps else (1.0, 0.0)
    return SamplerPlan(sampler, noise_weight, tuple(steps), image_weight, tuple(noising))


# -- training noise schedule (diffusers: the schedulers' __init__) -------------------------

def _alphas_cumprod(config: dict) -> np.ndarray:
    n = int(config["num_train_timesteps"])
    schedule = config["beta_schedule"]
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float32)
    elif schedule == "linear":
        betas = _linspace_f32(config["beta_start"], config["beta_end"], n)
    elif schedule == "scaled_linear":
        betas = _linspace_f32(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n) ** 2
    elif schedule == "squaredcos_cap_v2":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.asarray([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                           dtype=np.float32)
    else:
        raise RequestError(
            f"beta_schedule {schedule!r} is not supported; use linear, scaled_linear or squaredcos_cap_v2.")
    if config["rescale_betas_zero_snr"]:
        betas = _rescale_zero_terminal_snr(betas)
    return np.cumprod(np.float32(1.0) - betas, dtype=np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Betas whose last alpha-bar is exactly 0 (Lin et al. 2024, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", algorithm 1; diffusers' rescale_zero_terminal_snr,
    in float32 as there)."""
    alphas_bar_sqrt = np.sqrt(np.cumprod(np.float32(1.0) - betas, dtype=np.float32))
    first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))  # shift to 0, keep the first
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]]).astype(np.float32)
    return (np.float32(1.0) - alphas).astype(np.float32)


def _linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    # torch.linspace in float32 (what diffusers calls) computes from both ends:
    # start + i * step for the first half and end - (n - 1 - i) * step for the rest.
    step = np.float32((end - start) / (n - 1))
    i = np.arange(n, dtype=np.float32)
    half = n // 2
    return np.where(np.arange(n) < half, np.float32(start) + step * i,
                    np.float32(end) - step * (np.float32(n - 1) - i)).astype(np.float32)


def _eps_and_x0(prediction_type: str, alpha_prod: float) -> tuple[_Linear, _Linear]:
    """(noise estimate, clean-sample estimate) as linear forms in (x, out) for a VP sample."""
    a, b = math.sqrt(alpha_prod), math.sqrt(1.0 - alpha_prod)
    if prediction_type == "epsilon":
        return _Linear(0.0, 1.0), _Linear(1.0 / a, -b / a)
    return _Linear(b, a), _Linear(a, -b)  # v-prediction (Salimans & Ho 2022, eq. 11)


def _spaced_timesteps(config: dict, steps: int, *, rounded: bool = True, one_more: bool = False) -> np.ndarray:
    """The training timesteps `steps` inference steps visit, descending, by the config's
    timestep_spacing (Lin et al. 2024, table 2; the set_timesteps of scheduling_ddim.py,
    _pndm.py, _euler_discrete.py, _dpmsolver_multistep.py). `rounded` False keeps linspace's
    fractional timesteps (the Euler schedulers); `one_more` spaces linspace and leading over
    steps + 1 points and drops the last (DPM-Solver)."""
    n, spacing = int(config["num_train_timesteps"]), config["timestep_spacing"]
    points = steps + 1 if one_more else steps
    if spacing == "linspace":
        spaced = np.linspace(0, n - 1, points)
        return (spaced.round() if rounded else spaced)[::-1][:steps]
    if spacing == "leading":
        return (np.arange(0, points) * (n // points)).round()[::-1][:steps] + int(config["steps_offset"])
    return np.round(np.arange(n, 0, -n / steps)) - 1  # trailing


def _discrete_timesteps(config: dict, steps: int) -> np.ndarray:
    """Integer timesteps of DDIM / PNDM / LCM-style schedulers, descending."""
    return _spaced_timesteps(config, steps).astype(np.int64)


def _alpha_prev(alphas_cumprod: np.ndarray, t: int, final: float) -> float:
    return float(alphas_cumprod[t]) if t >= 0 else final


def _final_alpha(config: dict, alphas_cumprod: np.ndarray) -> float:
    return 1.0 if config["set_alpha_to_one"] else float(alphas_cumprod[0])


def _vp_noising(alphas_cumprod: np.ndarray, timestep: int) -> tuple[float, float]:
    # add_noise of scheduling_ddim.py / _pndm.py / _lcm.py: sqrt(a_t) x0 + sqrt(1 - a_t) noise
    a = float(alphas_cumprod[int(timestep)])
    return math.sqrt(a), math.sqrt(1.0 - a)


# -- DDIM, eta = 0 (scheduling_ddim.py; Song et al. 2021, eq. 12) --------------------------

def _ddim(config, alphas_cumprod, steps, start):
    timesteps = _discrete_timesteps(config, steps)
    ratio = int(config["num_train_timesteps"]) // steps
    final = _final_alpha(config, alphas_cumprod)
    plan = []
    for t in timesteps:
        a, a_prev = float(alphas_cumprod[t]), _alpha_prev(alphas_cumprod, t - ratio, final)
        eps, x0 = _eps_and_x0(config["prediction_type"], a)
        ca, cb = math.sqrt(a_prev), math.sqrt(1.0 - a_prev)
        plan.append(PlanStep(float(t), 1.0, (ca * x0.x + cb * eps.x,), (ca * x0.out + cb * eps.out,)))
    return plan[start:], [_vp_noising(alphas_cumprod, t) for t in timesteps[start:]], 1.0


# -- PNDM with skip_prk_steps: PLMS (scheduling_pndm.py; Liu et al. 2022) ------------------

def _pndm(config, alphas_cumprod, steps, start):
    n = int(config["num_train_timesteps"])
    base = _spaced_timesteps(config, steps)[::-1].astype(np.int64)  # ascending
    timesteps = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1]
    # img2img cuts the (steps + 1)-long PLMS list; its counter, and so its history, restart
    timesteps = timesteps[start:] if start < steps else timesteps[:0]
    ratio = n // steps
    final = _final_alpha(config, alphas_cumprod)
    # Which earlier outputs the PLMS history holds: the second call's output is never stored.
    stored: list[int] = []
    plan = []
    for counter, t in enumerate(timesteps):
        t = int(t)
        model_t = t
        prev_t = t - ratio
        if counter != 1:
            stored = stored[-3:] + [counter]
        else:
            prev_t, t = t, t + ratio
        # Combination of raw outputs (by step index) and the sample it applies to (by index).
        if counter == 0:
            combo, sample_index = {0: 1.0}, 0
        elif counter == 1:
            combo, sample_index = {1: 0.5, stored[-1]: 0.5}, 0
        elif len(stored) == 2:
            combo, sample_index = {stored[-1]: 1.5, stored[-2]: -0.5}, counter
        elif len(stored) == 3:
            combo = {stored[-1]: 23 / 12, stored[-2]: -16 / 12, stored[-3]: 5 / 12}
            sample_index = counter
        else:
            combo = {stored[-1]: 55 / 24, stored[-2]: -59 / 24, stored[-3]: 37 / 24, stored[-4]: -9 / 24}
            sample_index = counter
        a, a_prev = float(alphas_cumprod[t]), _alpha_prev(alphas_cumprod, prev_t, final)
        # _get_prev_sample: v-prediction is turned into epsilon against the same sample.
        sample_coeff = math.sqrt(a_prev / a)
        denom = a * math.sqrt(1.0 - a_prev) + math.sqrt(a * (1.0 - a) * a_prev)
        out_coeff = -(a_prev - a) / denom
        latent = {sample_index: sample_coeff}
        outputs = {k: out_coeff * w for k, w in combo.items()}
        if config["prediction_type"] == "v_prediction":
            outputs = {k: w * math.sqrt(a) for k, w in outputs.items()}
            latent[sample_index] += out_coeff * math.sqrt(1.0 - a)
        plan.append(PlanStep(float(model_t), 1.0, _weights_back_from(counter, latent),
                             _weights_back_from(counter, outputs)))
    return plan, [_vp_noising(alphas_cumprod, t) for t in timesteps], 1.0


def _weights_back_from(current: int, by_index: dict[int, float]) -> tuple[float, ...]:
    """{step index: weight} -> weights over (current, previous, ...)."""
    depth = current - min(by_index) + 1
    weights = [0.0] * depth
    for index, w in by_index.items():
        weights[current - index] += w
    return tuple(weights)


# -- Euler and Euler ancestral (scheduling_euler_discrete.py, ..._ancestral_discrete.py) ---

def _euler_sigmas(config, alphas_cumprod, steps) -> tuple[np.ndarray, np.ndarray]:
    timesteps = _spaced_timesteps(config, steps, rounded=False).astype(np.float32)
    sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return timesteps.astype(np.float32), sigmas


def _euler_denoised(prediction_type: str, sigma: float) -> _Linear:
    if prediction_type == "epsilon":
        return _Linear(1.0, -sigma)
    return _Linear(1.0 / (sigma**2 + 1), -sigma / math.sqrt(sigma**2 + 1))


def _euler_init_sigma(config, sigmas) -> float:
    top = float(sigmas.max())
    return top if config["timestep_spacing"] in ("linspace", "trailing") else math.sqrt(top**2 + 1)


def _euler(config, alphas_cumprod, steps, start):
    timesteps, sigmas = _euler_sigmas(config, alphas_cumprod, steps)
    plan = []
    for i, t in enumerate(timesteps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        d = _euler_denoised(config["prediction_type"], sigma)
        dt = sigma_next - sigma
        # x + (x - D) / sigma * dt  (k-diffusion sample_euler)
        plan.append(PlanStep(float(t), 1.0 / math.sqrt(sigma**2 + 1),
                             (1.0 + (1.0 - d.x) / sigma * dt,), (-d.out / sigma * dt,)))
    # add_noise: x0 + sigma noise
    return plan[start:], [(1.0, float(sigma)) for sigma in sigmas[start:-1]], _euler_init_sigma(config, sigmas)


def _euler_ancestral(config, alphas_cumprod, steps, start):
    timesteps, sigmas = _euler_sigmas(config, alphas_cumprod, steps)
    plan = []
    for i, t in enumerate(timesteps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        d = _euler_denoised(config["prediction_type"], sigma)
        dt = sigma_down - sigma
        plan.append(PlanStep(float(t), 1.0 / math.sqrt(sigma**2 + 1),
                             (1.0 + (1.0 - d.x) / sigma * dt,), (-d.out / sigma * dt,), sigma_up))
    return plan[start:], [(1.0, float(sigma)) for sigma in sigmas[start:-1]], _euler_init_sigma(config, sigmas)


# -- DPM-Solver++(2M) (scheduling_dpmsolver_multistep.py; Lu et al. 2022, alg. 2) ----------

def _dpm_timesteps_and_sigmas(config, alphas_cumprod, steps, karras: bool):
    timesteps = _spaced_timesteps(config, steps, one_more=True).astype(np.int64)
    sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    log_sigmas = np.log(sigmas)
    if karras:
        descending = np.flip(sigmas).copy()
        sigma_min, sigma_max = float(descending[-1]), float(descending[0])
        rho = 7.0  # Karras et al. 2022, eq. 5
        ramp = np.linspace(0, 1, steps)
        sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        timesteps = np.array([_sigma_to_t(s, log_sigmas) for s in sigmas]).round()
    else:
        sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
    if config["final_sigmas_type"] == "sigma_min":
        last = float(np.sqrt((1 - alphas_cumprod[0]) / alphas_cumprod[0]))
    else:
        last = 0.0
    sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
    return timesteps.astype(np.int64), sigmas


def _sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = int(np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2).item())
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return float(((1 - w) * low + w * (low + 1)).item())


def _alpha_sigma(sigma: float) -> tuple[float, float]:
    alpha = 1.0 / math.sqrt(sigma**2 + 1)
    return alpha, sigma * alpha


def _dpmpp_2m(config, alphas_cumprod, steps, start, karras: bool = False):
    """karras: sigmas spaced as Karras et al. 2022, eq. 5 (diffusers' use_karras_sigmas=True)."""
    timesteps, sigmas = _dpm_timesteps_and_sigmas(config, alphas_cumprod, steps, karras)
    count = len(timesteps)
    first = start  # img2img: the solver's history starts at the first step it runs
    plan = []
    denoised: list[_Linear] = []  # clean-sample estimate of each step, in its own (x, out)
    for i, t in enumerate(timesteps):
        alpha_s, sig_s = _alpha_sigma(float(sigmas[i]))
        if config["prediction_type"] == "epsilon":
            d0 = _Linear(1.0 / alpha_s, -sig_s / alpha_s)
        else:
            d0 = _Linear(alpha_s, -sig_s)
        denoised.append(d0)
        lower_order_final = i == count - 1 and (
            config["euler_at_final"] or (config["lower_order_final"] and count < 15)
            or config["final_sigmas_type"] == "zero")
        sigma_next = float(sigmas[i + 1])
        if i < first:
            continue
        if sigma_next == 0.0:
            # lambda_t = +inf: the update lands on the clean-sample estimate.
            plan.append(PlanStep(float(t), 1.0, (d0.x,), (d0.out,)))
            continue
        alpha_t, sig_t = _alpha_sigma(sigma_next)
        h = (math.log(alpha_t) - math.log(sig_t)) - (math.log(alpha_s) - math.log(sig_s))
        phi = alpha_t * (math.exp(-h) - 1.0)
        if i == first or lower_order_final:
            plan.append(PlanStep(float(t), 1.0, (sig_t / sig_s - phi * d0.x,), (-phi * d0.out,)))
            continue
        alpha_p, sig_p = _alpha_sigma(float(sigmas[i - 1]))
        h_0 = (math.log(alpha_s) - math.log(sig_s)) - (math.log(alpha_p) - math.log(sig_p))
        r0 = h_0 / h
        d1 = denoised[i - 1]
        # x_t = (sig_t/sig_s) x - phi D0 - 0.5 phi (D0 - D1) / r0  (midpoint form)
        c0, c1 = -phi - 0.5 * phi / r0, 0.5 * phi / r0
        plan.append(PlanStep(float(t), 1.0, (sig_t / sig_s + c0 * d0.x, c1 * d1.x), (c0 * d0.out, c1 * d1.out)))
    # add_noise: alpha_t x0 + sigma_t noise at the first sigma
    return plan, [_alpha_sigma(float(sigma)) for sigma in sigmas[start:-1]], 1.0


# -- LCM multistep sampling (scheduling_lcm.py; Luo et al. 2023, alg. 3) -------------------

def _lcm(config, alphas_cumprod, steps, start):
    n = int(config["num_train_timesteps"])
    original = int(config["original_inference_steps"])
    if steps > original:
        raise RequestError(f"The lcm sampler takes at most {original} steps (its original_inference_steps), "
                           f"got {steps}.")
    k = n // original
    origin = (np.arange(1, original + 1) * k - 1)[::-1]
    indices = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
    timesteps = origin[indices]
    final = _final_alpha(config, alphas_cumprod)
    plan = []
    for i, t in enumerate(timesteps):
        t = int(t)
        prev_t = int(timesteps[i + 1]) if i + 1 < len(timesteps) else t
        a, a_prev = float(alphas_cumprod[t]), _alpha_prev(alphas_cumprod, prev_t, final)
        scaled = t * float(config["timestep_scaling"])
        c_skip = 0.25 / (scaled**2 + 0.25)  # sigma_data = 0.5
        c_out = scaled / math.sqrt(scaled**2 + 0.25)
        _, x0 = _eps_and_x0(config["prediction_type"], a)
        den = _Linear(c_out * x0.x + c_skip, c_out * x0.out)
        if i == len(timesteps) - 1:
            plan.append(PlanStep(float(t), 1.0, (den.x,), (den.out,)))
        else:
            s = math.sqrt(a_prev)
            plan.append(PlanStep(float(t), 1.0, (s * den.x,), (s * den.out,), math.sqrt(1.0 - a_prev)))
    return plan[start:], [_vp_noising(alphas_cumprod, t) for t in timesteps[start:]], 1.0


# sampler -> builder(config, alphas_cumprod, steps, start) -> (plan steps from `start` on, the
# add_noise (image weight, noise weight) at each of them, init_noise_sigma of text-to-image)
_BUILDERS = {
    "ddim": _ddim, "pndm": _pndm, "euler": _euler, "euler_a": _euler_ancestral,
    "dpmpp_2m": _dpmpp_2m, "dpmpp_2m_karras": functools.partial(_dpmpp_2m, karras=True), "lcm": _lcm,
}
