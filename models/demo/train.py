"""The demo model's training recipe: the VAE first, then the UNet and text encoder together.

    python -m sdrt.models.demo.train CHECKPOINT --stage vae --minutes 15
    python -m sdrt.models.demo.train CHECKPOINT --stage unet --minutes 95

CHECKPOINT is a diffusers folder (created with random weights from models.configs "demo" on
the first run). Each stage is resumable: it saves weights, optimizer and data-generator state
to CHECKPOINT/training/ every `save_every` seconds and continues from there when run again
(`--minutes` is the stage's total time); losses go to CHECKPOINT/training/<stage>_loss.csv.
Seeds are fixed, data comes from scenes.py, and evaluation prompts never appear as captions.
The VAE learns a mean-squared-error reconstruction. The UNet stage first encodes a pool of
scenes with the trained VAE, then trains on their posterior means with fresh captions and
multi-resolution noise (see `multiresolution_noise`) to predict what the scheduler config says
(v for the demo model: see models/README.md), and keeps an exponential moving average
of the UNet and text encoder weights, which is what it saves to the folder. Train one stage
at a time: two torch jobs on two cores slow each other about 5x.
`python -m sdrt.models.demo.publish CHECKPOINT` then writes the shipped folder and artifact.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..configs import CLIP_TEXT_COMMON
from .evaluation import load_evaluation_prompts
from .scenes import Scene, caption, random_scene, render

IMAGE_SIDE = 64
STAGES = ("vae", "unet")
EMA_DECAY = 0.999  # of the UNet and text encoder weights that sampling uses
# The UNet stage draws its latents from a pool of scenes encoded once by the trained VAE (their
# posterior means, with a fresh caption every time): encoding every batch would cost about
# 1.35 s more per step of 128 on two cores.
POOL_SIZE = 40_000
POOL_SEED = 3
MULTIRES_DISCOUNT = 0.6  # weight of each coarser octave of the training noise (see multiresolution_noise)


def scene_batches(rng: np.random.Generator, batch: int, held_out: set[str]) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Endless (images in [-1, 1] as NCHW float32, captions) batches."""
    while True:
        images, captions = [], []
        for _ in range(batch):  # scene, caption, render: the order the shipped weights saw
            scene = random_scene(rng)
            captions.append(training_caption(scene, rng, held_out))
            images.append(render(scene, IMAGE_SIDE, rng))
        yield to_pixels(images), captions


def training_caption(scene: Scene, rng: np.random.Generator, held_out: set[str]) -> str:
    """A random caption of `scene` that is not an evaluation prompt."""
    text = caption(scene, rng)
    while text in held_out:
        text = caption(scene, rng)
    return text


def to_pixels(images: list[np.ndarray]) -> np.ndarray:
    """uint8 HWC renders -> float32 NCHW in [-1, 1], what the VAE takes."""
    return np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0


def pool_batches(pool: dict, rng: np.random.Generator, batch: int,
                 held_out: set[str]) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Endless (latents, captions) batches drawn from the latent pool: posterior means, fresh captions."""
    scenes = pool["scenes"]
    while True:
        picks = rng.integers(len(scenes), size=batch)
        yield pool["mean"][picks], [training_caption(scenes[index], rng, held_out) for index in picks]


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
          pool_size: int | None = None, save_every: float = 120.0, progress: bool = True) -> dict:
    """Train `stage` of the demo pipeline in `folder` for `minutes` (or `max_steps` more steps)."""
    import torch

    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose one of: {', '.join(STAGES)}.")
    with torch.random.fork_rng(devices=[]):  # fixed seeds without touching the caller's generator
        return _train(Path(folder), stage, minutes, max_steps, batch, pool_size, save_every, progress)


def _train(folder: Path, stage: str, minutes: float, max_steps: int | None, batch: int | None,
           pool_size: int | None, save_every: float, progress: bool) -> dict:
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

    vae = AutoencoderKL.from_pretrained(folder / "vae")
    modules: list[torch.nn.Module]
    averages: list[torch.nn.Module] = []
    if stage == "vae":
        modules = [vae]
        learning_rate = 1e-3
    else:
        vae.requires_grad_(False).eval()
        # The folder holds the exponential moving average of the weights (what sampling uses);
        # the raw weights the optimizer steps live in training/ until the stage is resumed.
        raw = run.dir / "unet_raw"
        source = raw if (raw / "unet").is_dir() else folder
        text_encoder = CLIPTextModel.from_pretrained(source / "text_encoder")
        unet = UNet2DConditionModel.from_pretrained(source / "unet")
        modules = [text_encoder, unet]
        averages = [CLIPTextModel.from_pretrained(folder / "text_encoder").requires_grad_(False),
                    UNet2DConditionModel.from_pretrained(folder / "unet").requires_grad_(False)]
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
    started = time.perf_counter() - run.elapsed  # the stage's time includes building the pool
    if stage == "vae":
        data = scene_batches(run.rng, batch, held_out)
    else:
        pool = _latent_pool(run.dir / "latent_pool.npz", vae, pool_size or POOL_SIZE, bar)
        data = pool_batches(pool, run.rng, batch, held_out)
    last_save = time.perf_counter()
    while time.perf_counter() - started < minutes * 60 and (max_steps is None or steps_this_run < max_steps):
        if stage == "vae":
            images, captions = next(data)
            pixels = torch.from_numpy(images)
            posterior = vae.encode(pixels).latent_dist
            reconstruction = vae.decode(posterior.sample()).sample
            loss = F.mse_loss(reconstruction, pixels) + 1e-6 * posterior.kl().mean()
        else:
            latents, captions = next(data)
            latents = torch.from_numpy(latents) * scaling
            noise = multiresolution_noise(latents.shape)
            timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (latents.shape[0],))
            noisy = noise_schedule.add_noise(latents, noise, timesteps)
            ids = torch.from_numpy(tokenizer(captions))
            hidden = text_encoder(input_ids=ids).last_hidden_state
            target = (noise_schedule.get_velocity(latents, noise, timesteps)
                      if noise_schedule.config.prediction_type == "v_prediction" else noise)
            loss = F.mse_loss(unet(noisy, timesteps, hidden).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if averages:
            _update_average(averages, modules, decay=min(EMA_DECAY, (1 + run.step) / (10 + run.step)))
        run.record(loss.item())
        steps_this_run += 1
        run.elapsed = time.perf_counter() - started
        if bar is not None:
            bar.n = int(min(run.elapsed, minutes * 60))
            bar.set_postfix(step=run.step, loss=f"{loss.item():.4f}")
        if time.perf_counter() - last_save > save_every:
            _save(folder, stage, modules, averages, optimizer, optimizer_path, run)
            last_save = time.perf_counter()
    if stage == "vae":
        vae.register_to_config(scaling_factor=_latent_scaling(vae, scene_batches(np.random.default_rng(7), 64, set())))
    _save(folder, stage, modules, averages, optimizer, optimizer_path, run)
    if bar is not None:
        bar.close()
    return {"stage": stage, "step": run.step, "elapsed_s": run.elapsed, "steps_this_run": steps_this_run}


def multiresolution_noise(shape, discount: float = MULTIRES_DISCOUNT):
    """Unit-variance Gaussian noise with extra power at coarse scales (white noise plus upsampled
    noise at 1/2, 1/4, ... of the side, weighted discount**level).

    With 16x16 latents and solid backgrounds, white noise leaves the background colour and the
    shape's place readable from the noisy latents even at the last timestep, so the UNet learns
    to copy them from the noise instead of reading them from the caption, and at sampling time
    takes them from the random starting noise. Coarse noise hides them (the offset-noise idea,
    at every scale). Sampling still starts from plain white noise.
    """
    import torch
    import torch.nn.functional as F

    batch, channels, height, width = shape
    noise = torch.randn(shape)
    total, level, side = 1.0, 1, min(height, width)
    while side > 1:
        side //= 2
        weight = discount ** level
        coarse = torch.randn(batch, channels, max(1, height >> level), max(1, width >> level))
        noise += weight * F.interpolate(coarse, size=(height, width), mode="nearest")
        total += weight * weight
        level += 1
    return noise / total ** 0.5


def _latent_pool(path: Path, vae, size: int, bar) -> dict:
    """Scenes and their VAE posterior means, built once per stage and kept in training/."""
    import torch

    if not path.is_file():
        rng = np.random.default_rng(POOL_SEED)
        scenes, means = [], []
        if bar is not None:
            bar.set_description("encoding the latent pool")
        with torch.no_grad():
            while len(scenes) < size:
                chunk = [random_scene(rng) for _ in range(min(128, size - len(scenes)))]
                pixels = torch.from_numpy(to_pixels([render(scene, IMAGE_SIDE, rng) for scene in chunk]))
                scenes.extend(chunk)
                means.append(vae.encode(pixels).latent_dist.mean.numpy())
                if bar is not None:
                    bar.set_postfix(scenes=len(scenes))
        temporary = path.with_name(path.stem + ".tmp.npz")
        np.savez(temporary, mean=np.concatenate(means),
                 scenes=np.array(json.dumps([asdict(scene) for scene in scenes])))
        temporary.replace(path)
        if bar is not None:
            bar.set_description("training unet")
    with np.load(path) as stored:
        scenes = [Scene(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()})
                  for entry in json.loads(str(stored["scenes"]))]
        return {"mean": stored["mean"], "scenes": scenes}


def _latent_scaling(vae, data) -> float:
    """1 / standard deviation of the VAE's latents (posterior means, what the UNet learns), as
    Stable Diffusion's 0.18215 was chosen."""
    import torch

    with torch.no_grad():
        latents = torch.cat([vae.encode(torch.from_numpy(next(data)[0])).latent_dist.mean for _ in range(4)])
    return float(1.0 / latents.std())


def _update_average(averages, modules, decay: float) -> None:
    import torch

    with torch.no_grad():
        for average, module in zip(averages, modules):
            for kept, current in zip(average.parameters(), module.parameters()):
                kept.lerp_(current, 1.0 - decay)


def _save(folder: Path, stage: str, modules, averages, optimizer, optimizer_path: Path, run: _Run) -> None:
    import torch

    names = ["vae"] if stage == "vae" else ["text_encoder", "unet"]
    for name, module in zip(names, modules):
        module.save_pretrained((run.dir / "unet_raw" if averages else folder) / name)
    for name, average in zip(names, averages):
        average.save_pretrained(folder / name)
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
