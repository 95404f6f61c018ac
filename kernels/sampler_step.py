"""The one update every sampler plan uses, and classifier-free guidance (numpy, float32)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def guide(uncond: np.ndarray, cond: np.ndarray, guidance_scale: float) -> np.ndarray:
    """Classifier-free guidance (Ho & Salimans 2022): uncond + g * (cond - uncond)."""
    return uncond + np.float32(guidance_scale) * (cond - uncond)


def sampler_update(latents: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                   latent_weights: Sequence[float], output_weights: Sequence[float],
                   noise_weight: float = 0.0, noise: np.ndarray | None = None) -> np.ndarray:
    """sum_k latent_weights[k] * latents[k] + sum_k output_weights[k] * outputs[k] + noise_weight * noise.

    latents[0] / outputs[0] are the current step's; latents[k] the one k steps earlier.
    A zero weight skips its term, so histories may be shorter than the weights at the start.
    """
    result = np.zeros_like(latents[0], dtype=np.float32)
    for weight, value in zip(latent_weights, latents):
        if weight != 0.0:
            result += np.float32(weight) * value
    for weight, value in zip(output_weights, outputs):
        if weight != 0.0:
            result += np.float32(weight) * value
    if noise_weight != 0.0:
        if noise is None:
            raise ValueError("This plan step adds noise; pass the step's noise.")
        result += np.float32(noise_weight) * noise
    return result


# The fused step of device-resident loops (guidance, update, and the next UNet input in one
# kernel). Its coefficients are one float32 row per plan step, the same for every device form
# (kernels/step_graph.py's ONNX graph, kernels/triton_step.py): the guidance scale; the weights
# of the latents x[i], x[i-1], ... and of the guided outputs out[i], out[i-1], ... (MAX_HISTORY
# each, zero-padded; out[i] is the one this step computes); the noise weight; and the input
# scale of the next UNet call (1 after the last step). Unused history slots must hold finite
# values (zeros): a zero weight times NaN is NaN.
MAX_HISTORY = 5
GUIDANCE, NOISE_WEIGHT, NEXT_INPUT_SCALE = 0, 1 + 2 * MAX_HISTORY, 2 + 2 * MAX_HISTORY
LATENT_WEIGHTS = slice(1, 1 + MAX_HISTORY)
OUTPUT_WEIGHTS = slice(1 + MAX_HISTORY, 1 + 2 * MAX_HISTORY)
COEFFICIENTS = 3 + 2 * MAX_HISTORY


def step_coefficients(steps: Sequence, guidance_scale: float) -> np.ndarray:
    """(len(steps), COEFFICIENTS) float32: the fused step's row for each plan step (objects with
    latent_weights, output_weights, noise_weight and input_scale, as runtime.samplers.PlanStep)."""
    table = np.zeros((len(steps), COEFFICIENTS), dtype=np.float32)
    for index, step in enumerate(steps):
        if max(len(step.latent_weights), len(step.output_weights)) > MAX_HISTORY:
            raise ValueError(f"A plan step looks {MAX_HISTORY} steps back at most; this one looks further.")
        table[index, GUIDANCE] = guidance_scale
        table[index, LATENT_WEIGHTS][:len(step.latent_weights)] = step.latent_weights
        table[index, OUTPUT_WEIGHTS][:len(step.output_weights)] = step.output_weights
        table[index, NOISE_WEIGHT] = step.noise_weight
        table[index, NEXT_INPUT_SCALE] = steps[index + 1].input_scale if index + 1 < len(steps) else 1.0
    return table


def fused_step(model_output: np.ndarray, latents: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
               coefficients: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The device step in numpy, for reference: `model_output` is the UNet's (the unconditional
    then the conditional half when it holds two copies of the batch), `latents` x[i], x[i-1], ...
    and `outputs` out[i-1], out[i-2], ... (MAX_HISTORY and MAX_HISTORY - 1 of them). Returns the
    next latents, this step's guided output and the next UNet input (next latents scaled, as
    many copies as `model_output` holds)."""
    batch = latents[0].shape[0]
    copies = model_output.shape[0] // batch
    guided = model_output if copies == 1 else guide(model_output[:batch], model_output[-batch:],
                                                    float(coefficients[GUIDANCE]))
    following = sampler_update(latents, [guided, *outputs], [float(w) for w in coefficients[LATENT_WEIGHTS]],
                               [float(w) for w in coefficients[OUTPUT_WEIGHTS]], float(coefficients[NOISE_WEIGHT]),
                               noise)
    sample = np.concatenate([np.float32(coefficients[NEXT_INPUT_SCALE]) * following] * copies)
    return following, guided, sample
