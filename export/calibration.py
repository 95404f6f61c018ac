"""Calibration for the int8 variants: the inputs the denoiser receives while the fp32 pipeline
makes images, recorded on the backend the int8 form runs on, from which a calibrated maker
takes its activation ranges.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime.artifact import Artifact

# Calibration prompts when the user gives none: the demo model's world and ordinary SD subjects,
# so that the denoiser sees both kinds of conditioning (a file of the user's own prompts is better).
CALIBRATION_PROMPTS = (
    "a red circle on a blue background", "a small green triangle in the top left on a white background",
    "a large yellow square in the center on a black background", "a purple circle at the bottom right on gray",
    "a photograph of a castle on a hill at sunset", "portrait of an old fisherman, oil painting, detailed",
    "a bowl of fruit on a wooden table, soft light", "a city street at night in the rain, neon signs",
)
CALIBRATION_STEPS = 10
CALIBRATION_ROLES = ("denoiser",)  # the networks whose activations a calibrated maker quantizes


@dataclass(frozen=True)
class Calibration:
    """Inputs the denoiser received while the fp32 pipeline made images for calibration prompts
    (classifier-free guidance batches, every step), and how they were made."""

    feeds: list[dict[str, np.ndarray]]
    settings: dict


class Recorder:
    """A session that keeps a copy of every call's inputs and outputs (the pipeline reuses its
    input buffers, so they are copied): calibration's samples, and the quality reports' inputs
    on which each variant network is compared with its fp32 one."""

    def __init__(self, session):
        self.session, self.calls = session, []

    def run(self, feeds):
        outputs = self.session.run(feeds)
        self.calls.append(({k: np.array(v) for k, v in feeds.items()}, outputs))
        return outputs


def calibrate(artifact: Artifact, backend: str, prompts: list[str], steps: int,
              size: tuple[int, int] | None) -> Calibration:
    """Record the denoiser's inputs while the fp32 pipeline makes one image per prompt (seed =
    the prompt's index, guidance 7.5, the model's default sampler), on the backend the int8
    form runs on."""
    from ..runtime.backends import SessionOptions
    from ..runtime.pipeline import StableDiffusionPipeline

    # on the host loop: the recorder wraps the denoiser session's calls
    pipe = StableDiffusionPipeline(artifact, backend, SessionOptions(device_loop=False))
    height, width = size or pipe.default_size
    recorder = Recorder(pipe.sessions["denoiser"])
    pipe.sessions["denoiser"] = recorder
    for seed, prompt in enumerate(prompts):
        pipe(prompt, seed=seed, num_inference_steps=steps, guidance_scale=7.5, height=height, width=width,
             output_type="latent")
    feeds = [feeds for feeds, _ in recorder.calls]
    recorder.calls.clear()
    return Calibration(feeds, {"prompts": prompts, "seeds": list(range(len(prompts))), "steps": steps,
                               "guidance_scale": 7.5, "sampler": pipe.default_sampler, "size": [height, width],
                               "samples": len(feeds), "backend": backend, "precision": "fp32"})
