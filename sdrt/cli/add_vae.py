"""`sdrt add-vae`: another VAE (the tiny autoencoder TAESD, a fine-tuned VAE) into an artifact."""
from __future__ import annotations

import tempfile
from pathlib import Path


def add_parser(commands, name: str, summary: str) -> None:
    from sdrt.models.configs import KNOWN_AUTOENCODERS

    add = commands.add_parser(
        name, help=summary,
        description="Export a VAE (a diffusers AutoencoderTiny, such as TAESD or TAESDXL, or an AutoencoderKL) into an "
                    "artifact under a name; choose it with `sdrt generate --vae NAME` or sdrt.load(..., vae=NAME). "
                    "Needs the export extra.")
    add.add_argument("artifact", help="the artifact folder")
    add.add_argument("vae", help="the VAE's diffusers folder (config.json and weights); 'random:NAME' builds random "
                                 f"weights of a known config: {', '.join(KNOWN_AUTOENCODERS)}")
    add.add_argument("--name", default="taesd", help="what to call it (default taesd)")
    add.add_argument("--overwrite", action="store_true", help="replace a VAE of that name")


def run(args, argv: list[str]) -> int:
    print(f"added {args.vae} to {args.artifact} as {args.name}: {', '.join(added_vae(args).values())}")
    return 0


def added_vae(args) -> dict:
    """Add the VAE the arguments name (random:NAME built in a temporary folder)."""
    from sdrt.export.vae import add_vae

    if not args.vae.startswith("random:"):
        return add_vae(args.artifact, args.vae, args.name, overwrite=args.overwrite)
    from sdrt.export.random_model import build_random_vae

    with tempfile.TemporaryDirectory(prefix="sdrt-random-vae-") as scratch:
        folder = build_random_vae(args.vae.split(":", 1)[1], Path(scratch) / "vae")
        return add_vae(args.artifact, folder, args.name, overwrite=args.overwrite)
