"""The fused step (kernels.sampler_step.fused_step) as one Triton kernel, for the torch CUDA path.

One pass over the latents: each program reads a block of the UNet output's two halves and of
the history, and writes the next latents, the guided output and both copies of the next UNet
input. The coefficients are read from a device tensor (a row of step_coefficients), so a CUDA
graph captured once replays every step with the row the loop points it to. Tested on the CPU
in Triton's interpreter (TRITON_INTERPRET=1), against the numpy step.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .sampler_step import GUIDANCE, LATENT_WEIGHTS, MAX_HISTORY, NEXT_INPUT_SCALE, NOISE_WEIGHT, OUTPUT_WEIGHTS

BLOCK = 1024


@triton.jit
def _fused_step_kernel(model_output, latents_0, latents_1, latents_2, latents_3, latents_4, outputs_1, outputs_2,
                       outputs_3, outputs_4, coefficients, noise, next_latents, guided_output, next_sample, numel,
                       COPIES: tl.constexpr, GUIDANCE: tl.constexpr, LATENT: tl.constexpr, OUTPUT: tl.constexpr,
                       NOISE: tl.constexpr, NEXT_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    uncond = tl.load(model_output + offsets, mask=mask)
    if COPIES == 1:
        guided = uncond
    else:
        cond = tl.load(model_output + (COPIES - 1) * numel + offsets, mask=mask)
        guided = uncond + tl.load(coefficients + GUIDANCE) * (cond - uncond)
    result = tl.load(coefficients + LATENT) * tl.load(latents_0 + offsets, mask=mask)
    result += tl.load(coefficients + LATENT + 1) * tl.load(latents_1 + offsets, mask=mask)
    result += tl.load(coefficients + LATENT + 2) * tl.load(latents_2 + offsets, mask=mask)
    result += tl.load(coefficients + LATENT + 3) * tl.load(latents_3 + offsets, mask=mask)
    result += tl.load(coefficients + LATENT + 4) * tl.load(latents_4 + offsets, mask=mask)
    result += tl.load(coefficients + OUTPUT) * guided
    result += tl.load(coefficients + OUTPUT + 1) * tl.load(outputs_1 + offsets, mask=mask)
    result += tl.load(coefficients + OUTPUT + 2) * tl.load(outputs_2 + offsets, mask=mask)
    result += tl.load(coefficients + OUTPUT + 3) * tl.load(outputs_3 + offsets, mask=mask)
    result += tl.load(coefficients + OUTPUT + 4) * tl.load(outputs_4 + offsets, mask=mask)
    result += tl.load(coefficients + NOISE) * tl.load(noise + offsets, mask=mask)
    tl.store(next_latents + offsets, result, mask=mask)
    tl.store(guided_output + offsets, guided, mask=mask)
    scaled = tl.load(coefficients + NEXT_SCALE) * result
    for copy in tl.static_range(COPIES):
        tl.store(next_sample + copy * numel + offsets, scaled, mask=mask)


def fused_step(model_output, latents, outputs, coefficients, noise, next_latents, guided_output, next_sample) -> None:
    """Run the step on torch tensors of one device (float32, contiguous): `latents` x[i], x[i-1],
    ... (MAX_HISTORY tensors), `outputs` the earlier guided outputs (MAX_HISTORY - 1),
    `coefficients` one step_coefficients row; writes next_latents, guided_output, next_sample."""
    if len(latents) != MAX_HISTORY or len(outputs) != MAX_HISTORY - 1:
        raise ValueError(f"The step takes {MAX_HISTORY} latents and {MAX_HISTORY - 1} earlier outputs.")
    numel = latents[0].numel()
    copies = model_output.numel() // numel
    grid = (triton.cdiv(numel, BLOCK),)
    _fused_step_kernel[grid](model_output, *latents, *outputs, coefficients, noise, next_latents, guided_output,
                             next_sample, numel, COPIES=copies, GUIDANCE=GUIDANCE, LATENT=LATENT_WEIGHTS.start,
                             OUTPUT=OUTPUT_WEIGHTS.start, NOISE=NOISE_WEIGHT, NEXT_SCALE=NEXT_INPUT_SCALE,
                             BLOCK=BLOCK)
