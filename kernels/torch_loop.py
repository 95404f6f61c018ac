"""The denoising loop in torch, every tensor on one device: the reference GPU path.

Each step: the UNet on the static sample buffer, then the fused step (guidance, the plan's
update, the next UNet input) on the same device; histories live in two stacked buffers that
shift in place, so one step touches fixed addresses and a CUDA graph captured once replays
every step. What varies per step (timestep, coefficient row, noise) is copied into static
buffers from tables uploaded before the first step: device-to-device copies of a few numbers
and one latent-sized noise tensor, never a trip through the host. torch is imported by the
caller's environment only (this module is not used by the ONNX runtime).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .sampler_step import GUIDANCE, LATENT_WEIGHTS, MAX_HISTORY, NEXT_INPUT_SCALE, NOISE_WEIGHT, OUTPUT_WEIGHTS


def torch_step(model_output, latents, outputs, coefficients, noise, next_latents, guided_output, next_sample) -> None:
    """kernels.sampler_step.fused_step in torch operations (any device): `latents` (MAX_HISTORY,
    B, ...) and `outputs` (MAX_HISTORY - 1, B, ...) stacked; writes the three results in place."""
    batch = latents.shape[1]
    copies = model_output.shape[0] // batch
    uncond, cond = model_output[:batch], model_output[-batch:]
    guided_output.copy_(uncond + coefficients[GUIDANCE] * (cond - uncond))
    weights = coefficients[LATENT_WEIGHTS].view(-1, *[1] * (latents.dim() - 1))
    earlier = coefficients[OUTPUT_WEIGHTS][1:].view(-1, *[1] * (outputs.dim() - 1))
    next_latents.copy_((weights * latents).sum(0) + coefficients[OUTPUT_WEIGHTS][0] * guided_output
                       + (earlier * outputs).sum(0) + coefficients[NOISE_WEIGHT] * noise)
    next_sample.copy_((coefficients[NEXT_INPUT_SCALE] * next_latents).repeat(copies, *[1] * (latents.dim() - 2)))


def triton_step(model_output, latents, outputs, coefficients, noise, next_latents, guided_output, next_sample) -> None:
    from .triton_step import fused_step

    fused_step(model_output, list(latents), list(outputs), coefficients, noise, next_latents, guided_output,
               next_sample)


class TorchLoop:
    """Static buffers for one request shape, and the step function that runs on them."""

    def __init__(self, unet: Callable, embeddings, latent_shape: tuple[int, ...], copies: int, step=torch_step,
                 dtype=None):
        import torch

        device = embeddings.device
        self.torch, self.unet, self.step, self.copies = torch, unet, step, copies
        self.dtype = dtype or embeddings.dtype  # the UNet's own precision; the loop's state stays float32
        batch = latent_shape[0]
        self.embeddings = embeddings
        self.sample = torch.zeros((copies * batch, *latent_shape[1:]), device=device)
        self.timestep = torch.zeros((copies * batch,), device=device)
        self.coefficients = torch.zeros((1 + 2 * MAX_HISTORY + 2,), device=device)
        self.noise = torch.zeros(latent_shape, device=device)
        self.latents = torch.zeros((MAX_HISTORY, *latent_shape), device=device)
        self.outputs = torch.zeros((MAX_HISTORY - 1, *latent_shape), device=device)
        self.model_output = torch.zeros_like(self.sample)
        self.next_latents = torch.zeros(latent_shape, device=device)
        self.guided = torch.zeros(latent_shape, device=device)
        self.graph = None

    def _one_step(self) -> None:
        torch = self.torch
        out = self.unet(self.sample.to(self.dtype), self.timestep, self.embeddings)  # timesteps stay float32
        self.model_output.copy_(out.float())
        self.step(self.model_output, self.latents, self.outputs, self.coefficients, self.noise, self.next_latents,
                  self.guided, self.sample)
        # shift the histories in place: x[i+1] becomes the newest latents, out[i] the newest output
        self.latents.copy_(torch.cat([self.next_latents[None], self.latents[:-1]]))
        self.outputs.copy_(torch.cat([self.guided[None], self.outputs[:-1]]))

    def capture(self) -> None:
        """Record one step as a CUDA graph (after a warm-up step on a side stream, as torch's
        CUDA graph guide asks); run() then replays it."""
        torch = self.torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        saved = [t.clone() for t in (self.sample, self.latents, self.outputs)]
        with torch.cuda.stream(stream):
            self._one_step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._one_step()
        for buffer, value in zip((self.sample, self.latents, self.outputs), saved):
            buffer.copy_(value)

    def run(self, latents: np.ndarray, timesteps: np.ndarray, coefficients: np.ndarray, noises: np.ndarray,
            first_input_scale: float, on_step: Callable[[int], None] | None = None):
        """Denoise from `latents` (the initial latents times the plan's init sigma): per step its
        timestep, coefficient row (kernels.sampler_step.step_coefficients) and noise (zeros
        where the step adds none). Returns the final latents on the device."""
        torch = self.torch
        device = self.sample.device
        # Up front, the whole request's inputs: the loop itself moves nothing through the host.
        start = torch.from_numpy(np.ascontiguousarray(latents, np.float32)).to(device)
        timestep_table = torch.from_numpy(np.ascontiguousarray(timesteps, np.float32)).to(device)
        row_table = torch.from_numpy(np.ascontiguousarray(coefficients, np.float32)).to(device)
        noise_table = torch.from_numpy(np.ascontiguousarray(noises, np.float32)).to(device)
        self.latents.zero_()
        self.outputs.zero_()
        self.latents[0].copy_(start)
        self.sample.copy_((first_input_scale * start).repeat(self.copies, *[1] * (start.dim() - 1)))
        for index in range(len(timesteps)):
            self.timestep.copy_(timestep_table[index].expand_as(self.timestep))
            self.coefficients.copy_(row_table[index])
            self.noise.copy_(noise_table[index])
            if self.graph is not None:
                self.graph.replay()
            else:
                self._one_step()
            if on_step is not None:
                on_step(index)
        return self.latents[0]
