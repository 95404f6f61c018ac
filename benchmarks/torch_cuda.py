"""The torch CUDA path, timed end to end: text encoder, the denoising loop (kernels/torch_loop.py:
UNet and the fused Triton step on static buffers, replayed as one CUDA graph per step) and the
VAE decoder, on random weights of a named config (latency does not depend on weight values).

    python -m sdrt.benchmarks.torch_cuda --config sd15 --size 512 --steps 50 --json out.json

The UNet and text encoder run in fp16 with PyTorch's SDPA attention and channels-last
convolutions; the VAE decoder in bf16 (fp32's range: SD's VAE overflows fp16). Reports the
median of --runs timed runs after a warm-up, the peak GPU memory of a run, and checks that the
graph replay (of the torch.compile'd UNet with --compile) and the eager loop agree.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def build(config_name: str, device):
    """Random-weight text encoder, UNet and VAE of a models.configs config, made on `device`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..models.configs import checkpoint_config

    config = checkpoint_config(config_name)
    torch.manual_seed(0)
    with torch.device(device):
        text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
        unet = UNet2DConditionModel(**config["unet"])
        vae = AutoencoderKL(**config["vae"])
    return config, text_encoder.eval(), unet.eval(), vae.eval()


def measure(args) -> dict:
    import numpy as np
    import torch

    from ..kernels.sampler_step import step_coefficients
    from ..kernels.torch_loop import TorchLoop, torch_step, triton_step
    from ..runtime.noise import gaussian_noise, step_noise_stream
    from ..runtime.samplers import compile_plan

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    # On the CPU (to check this script, not to time it): the torch step, no graph, no GPU memory.
    step = triton_step if cuda else torch_step
    graph = cuda and not args.no_graph
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    config, text_encoder, unet, vae = build(args.config, device)
    half, vae_dtype = (torch.float16, torch.bfloat16) if cuda else (torch.float32, torch.float32)
    text_encoder.to(half)
    unet.to(half).to(memory_format=torch.channels_last)
    vae.to(vae_dtype)
    factor = 2 ** (len(config["vae"]["block_out_channels"]) - 1)
    shape = (1, config["unet"].get("in_channels", 4), args.size // factor, args.size // factor)
    plan = compile_plan(args.sampler, config["scheduler"], args.steps)
    copies = 2 if args.guidance > 1 else 1
    latents = gaussian_noise(0, shape) * np.float32(plan.init_noise_sigma)
    timesteps = np.float32([step.timestep for step in plan.steps])
    rows = step_coefficients(plan.steps, args.guidance)
    noises = np.stack([gaussian_noise(0, shape, step_noise_stream(i)) if step.noise_weight else
                       np.zeros(shape, np.float32) for i, step in enumerate(plan.steps)])
    ids = torch.randint(0, 49406, (copies, 77), device=device)

    # torch.compile (inductor, static shapes) under the loop's own CUDA graph: its warm-up step
    # compiles before the capture. The eager comparison below runs the uncompiled UNet.
    compiled = torch.compile(unet, dynamic=False) if args.compile else unet

    def call_unet(sample, timestep, embeddings, model=compiled):
        return model(sample.contiguous(memory_format=torch.channels_last), timestep, embeddings,
                     return_dict=False)[0]

    def call_eager(sample, timestep, embeddings):
        return call_unet(sample, timestep, embeddings, unet)

    def generate(loop_holder: dict, graph: bool):
        with torch.inference_mode():
            embeddings = text_encoder(ids)[0]
            loop = loop_holder.get("loop")
            if loop is None:
                loop = TorchLoop(call_unet, embeddings, shape, copies, step=step, dtype=half)
                if graph:
                    loop.capture()
                loop_holder["loop"] = loop
            loop.embeddings.copy_(embeddings)
            final = loop.run(latents, timesteps, rows, noises, plan.steps[0].input_scale)
            image = vae.decode((final / config["vae"].get("scaling_factor", 0.18215)).to(vae_dtype))[0]
            return final.clone(), image

    def timed(fn):
        synchronize()
        started = time.perf_counter()
        result = fn()
        synchronize()
        return time.perf_counter() - started, result

    results = {"config": args.config, "size": args.size, "steps": args.steps, "sampler": args.sampler,
               "guidance": args.guidance, "cuda_graph": graph, "torch_compile": args.compile,
               "torch": torch.__version__,
               "device": torch.cuda.get_device_name() if cuda else "cpu"}
    holder = {}
    setup, _ = timed(lambda: generate(holder, graph))  # builds, captures, warms up
    results["first_run_s"] = setup
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, final = [], None
    for _ in range(args.runs):
        seconds, (final, _) = timed(lambda: generate(holder, graph))
        times.append(seconds)
    results["end_to_end_s"] = statistics.median(times)
    results["runs_s"] = times
    if cuda:
        results["peak_vram_gib"] = torch.cuda.max_memory_allocated() / 2**30
        results["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    # the parts, eagerly (no graph), for the table
    with torch.inference_mode():
        results["text_encoder_s"], embeddings = timed(lambda: text_encoder(ids)[0])
        eager = TorchLoop(call_eager, embeddings, shape, copies, step=step, dtype=half)
        results["denoise_eager_s"], eager_final = timed(
            lambda: eager.run(latents, timesteps, rows, noises, plan.steps[0].input_scale).clone())
        results["vae_decoder_s"], _ = timed(lambda: vae.decode(eager_final.to(vae_dtype))[0])
        reference = TorchLoop(call_eager, embeddings, shape, copies, step=torch_step, dtype=half)
        torch_final = reference.run(latents, timesteps, rows, noises, plan.steps[0].input_scale)
    scale = float(eager_final.abs().max())
    results["graph_vs_eager_max_rel"] = float((final - eager_final).abs().max()) / scale
    results["triton_vs_torch_step_max_rel"] = float((eager_final - torch_final).abs().max()) / scale
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sd15", help="models.configs name (sd15, tiny)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-graph", action="store_true", help="run the loop eagerly, without CUDA graphs")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet (inductor, static shapes) inside the loop's CUDA graph")
    parser.add_argument("--device", default="cuda", help="cuda (cpu only checks that the script runs)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark measures the torch CUDA path (--device cpu checks the script)")
    results = measure(args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    sys.stdout.write(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
