"""The demo model's training recipe: the VAE first, then the UNet and text encoder together.

    python -m sdrt.models.demo.train CHECKPOINT --stage vae --minutes 15
    python -m sdrt.models.demo.train CHECKPOINT --stage unet --minutes 90

CHECKPOINT is a diffusers folder (created with random weights from models.configs "demo" on
the first run). Each stage is resumable: it saves weights, optimizer and data-generator state
to CHECKPOINT/training/ every `save_every` seconds and continues from there when run again;
losses go to CHECKPOINT/training/<stage>_loss.csv. Seeds are fixed, data comes from
scenes.py, and evaluation prompts never appear as captions. Train one stage at a time: two
torch jobs on two cores slow each other about 5x.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..configs import CLIP_TEXT_COMMON
from .evaluation import load_evaluation_prompts
from .scenes import caption, random_scene, render

IMAGE_SIDE = 64
STAGES = ("vae", "unet")


def scene_batches(rng: np.random.Generator, batch: int, held_out: set[str]) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Endless (images in [-1, 1] as NCHW float32, captions) batches."""
    while True:
        images, captions = [], []
        for _ in range(batch):
            scene = random_scene(rng)
            text = caption(scene, rng)
            while text in held_out:
                text = caption(scene, rng)
            images.append(render(scene, IMAGE_SIDE, rng))
            captions.append(text)
        array = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
        yield array, captions


def prepare_checkpoint(folder: Path) -> None:
    """A random-weight demo pipeline in `folder`, unless one is there already."""
    if (folder / "model_index.json").is_file():
        return
    from ...export.random_model import build_random_pipeline

    build_random_pipeline("demo", folder, seed=0)


class _Run:
    """Resumable bookkeeping of one stage: step count, elapsed time, generator state, loss log."""

    def __init__(self, folder: Path, stage: str, seed: int):
        self.dir = folder / "training"
        self.dir.mkdir(exist_ok=True)
        self.state_path = self.dir / f"{stage}.json"
        self.log_path = self.dir / f"{stage}_loss.csv"
        self.rng = np.random.default_rng(seed)
        self.step, self.elapsed = 0, 0.0
        if self.state_path.is_file():
            state = json.loads(self.state_path.read_text())
            self.step, self.elapsed = state["step"], state["elapsed"]
            self.rng.bit_generator.state = state["rng"]
        self._pending: list[tuple[int, float]] = []

    def record(self, loss: float) -> None:
        self.step += 1
        self._pending.append((self.step, loss))

    def save(self) -> None:
        new = not self.log_path.is_file()
        with open(self.log_path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "loss"])
            writer.writerows(self._pending)
        self._pending.clear()
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"step": self.step, "elapsed": self.elapsed,
                                         "rng": self.rng.bit_generator.state}))
        temporary.replace(self.state_path)


def train(folder: Path, stage: str, *, minutes: float, max_steps: int | None = None, batch: int | None = None,
          save_every: float = 120.0, progress: bool = True) -> dict:
    """Train `stage` of the demo pipeline in `folder` for `minutes` (or `max_steps` more steps)."""
    import torch

    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose one of: {', '.join(STAGES)}.")
    with torch.random.fork_rng(devices=[]):  # fixed seeds without touching the caller's generator
        return _train(Path(folder), stage, minutes, max_steps, batch, save_every, progress)


def _train(folder: Path, stage: str, minutes: float, max_steps: int | None, batch: int | None, save_every: float,
           progress: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from ...runtime.tokenizer import ClipTokenizer

    prepare_checkpoint(folder)
    run = _Run(folder, stage, seed=STAGES.index(stage) + 1)
    torch.manual_seed(run.step + 1000 * STAGES.index(stage))
    held_out = {p["prompt"] for p in load_evaluation_prompts()}
    batch = batch or (32 if stage == "vae" else 128)
    data = scene_batches(run.rng, batch, held_out)

    vae = AutoencoderKL.from_pretrained(folder / "vae")
    modules: list[torch.nn.Module]
    if stage == "vae":
        modules = [vae]
        learning_rate = 1e-3
    else:
        vae.requires_grad_(False).eval()
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
        unet = UNet2DConditionModel.from_pretrained(folder / "unet")
        modules = [text_encoder, unet]
        learning_rate = 5e-4
        noise_schedule = DDPMScheduler.from_pretrained(folder / "scheduler")
        tokenizer = ClipTokenizer.from_folder(folder / "tokenizer", bos_id=CLIP_TEXT_COMMON["bos_token_id"],
                                              eos_id=CLIP_TEXT_COMMON["eos_token_id"],
                                              pad_id=CLIP_TEXT_COMMON["pad_token_id"],
                                              max_length=CLIP_TEXT_COMMON["max_position_embeddings"])
        scaling = vae.config.scaling_factor
    parameters = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    optimizer_path = run.dir / f"{stage}_optimizer.pt"
    if optimizer_path.is_file():
        optimizer.load_state_dict(torch.load(optimizer_path, weights_only=True))
    for module in modules:
        module.train()

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(minutes * 60), initial=int(min(run.elapsed, minutes * 60)), unit="s",
                   desc=f"training {stage}")
    steps_this_run = 0
    started = time.perf_counter() - run.elapsed
    last_save = time.perf_counter()
    while time.perf_counter() - started < minutes * 60 and (max_steps is None or steps_this_run < max_steps):
        images, captions = next(data)
        pixels = torch.from_numpy(images)
        if stage == "vae":
            posterior = vae.encode(pixels).latent_dist
            reconstruction = vae.decode(posterior.sample()).sample
            loss = F.mse_loss(reconstruction, pixels) + 1e-6 * posterior.kl().mean()
        else:
            with torch.no_grad():
                latents = vae.encode(pixels).latent_dist.sample() * scaling
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (latents.shape[0],))
            noisy = noise_schedule.add_noise(latents, noise, timesteps)
            ids = torch.from_numpy(tokenizer(captions))
            hidden = text_encoder(input_ids=ids).last_hidden_state
            loss = F.mse_loss(unet(noisy, timesteps, hidden).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        run.record(loss.item())
        steps_this_run += 1
        run.elapsed = time.perf_counter() - started
        if bar is not None:
            bar.n = int(min(run.elapsed, minutes * 60))
            bar.set_postfix(step=run.step, loss=f"{loss.item():.4f}")
        if time.perf_counter() - last_save > save_every:
            _save(folder, stage, modules, optimizer, optimizer_path, run)
            last_save = time.perf_counter()
    if stage == "vae":
        vae.register_to_config(scaling_factor=_latent_scaling(vae, scene_batches(np.random.default_rng(7), 64, set())))
    _save(folder, stage, modules, optimizer, optimizer_path, run)
    if bar is not None:
        bar.close()
    return {"stage": stage, "step": run.step, "elapsed_s": run.elapsed, "steps_this_run": steps_this_run}


def _latent_scaling(vae, data) -> float:
    """1 / standard deviation of the VAE's latents, as Stable Diffusion's 0.18215 was chosen."""
    import torch

    with torch.no_grad():
        latents = torch.cat([vae.encode(torch.from_numpy(next(data)[0])).latent_dist.sample() for _ in range(4)])
    return float(1.0 / latents.std())


def _save(folder: Path, stage: str, modules, optimizer, optimizer_path: Path, run: _Run) -> None:
    import torch

    names = ["vae"] if stage == "vae" else ["text_encoder", "unet"]
    for name, module in zip(names, modules):
        module.save_pretrained(folder / name)
    torch.save(optimizer.state_dict(), optimizer_path)
    run.save()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="the diffusers folder to train (created if missing)")
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--minutes", type=float, required=True, help="total training time of the stage")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 32 for vae, 128 for unet)")
    args = parser.parse_args(argv)
    summary = train(args.checkpoint, args.stage, minutes=args.minutes, batch=args.batch)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
