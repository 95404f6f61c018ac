"""The denoising loop: the same few lines for every sampler plan and every backend."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

from ..kernels.sampler_step import sampler_update
from .samplers import SamplerPlan

# predict(scaled_latents, timestep) -> model output (guided, when guidance is on)
Predict = Callable[[np.ndarray, float], np.ndarray]
# noise_for_step(step_index, shape) -> standard-normal float32 noise
NoiseSource = Callable[[int, tuple[int, ...]], np.ndarray]


def run_plan(plan: SamplerPlan, latents: np.ndarray, predict: Predict, noise_for_step: NoiseSource,
             after_step: Callable[[int, np.ndarray], np.ndarray] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (step index, latents after the step) for each step of `plan`.

    `latents` are the initial latents already multiplied by plan.init_noise_sigma.
    `after_step(index, latents)`, if given, replaces each step's result before the next step
    sees it (inpainting puts the known region back).
    The caller owns progress, timing and cancellation: it drives the generator.
    """
    depth = plan.history_depth
    latents_history: deque[np.ndarray] = deque(maxlen=depth)
    outputs_history: deque[np.ndarray] = deque(maxlen=depth)
    x = latents.astype(np.float32, copy=False)
    for index, step in enumerate(plan.steps):
        out = predict(np.float32(step.input_scale) * x, step.timestep)
        latents_history.appendleft(x)
        outputs_history.appendleft(out)
        noise = noise_for_step(index, x.shape) if step.noise_weight != 0.0 else None
        x = sampler_update(latents_history, outputs_history, step.latent_weights, step.output_weights,
                           step.noise_weight, noise)
        if after_step is not None:
            x = after_step(index, x)
        yield index, x
