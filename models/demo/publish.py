"""Turn a trained demo folder into the shipped demo model: models/demo/checkpoint and artifact.

    python -m sdrt.models.demo.publish TRAINED_FOLDER
    python -m sdrt.models.demo.publish --export-only    # after a change to the exporter

TRAINED_FOLDER is what `python -m sdrt.models.demo.train` trained (both stages). The diffusers
folder is written with fp16 weights (half the bytes; the exporter computes in fp32, so the
artifact holds exactly these weights widened) and without the training state; the artifact is
exported from it by sdrt's own exporter. Both replace the shipped copies only when complete.
"""
from __future__ import annotations

import argparse
import json
import shutil
import uuid
from pathlib import Path

from . import ARTIFACT, CHECKPOINT

WEIGHT_FILES = {
    "text_encoder": "model.safetensors",
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
}
CONFIG_FOLDERS = ("scheduler", "tokenizer")


def publish(trained: Path, checkpoint: Path = CHECKPOINT, artifact: Path = ARTIFACT) -> dict:
    """Write the fp16 diffusers folder to `checkpoint` and its export to `artifact`; return their sizes."""
    trained = Path(trained)
    for stage in ("vae", "unet"):
        if not (trained / "training" / f"{stage}.json").is_file():
            raise ValueError(f"{trained} has no trained {stage} stage; run `python -m sdrt.models.demo.train "
                             f"{trained} --stage {stage} --minutes N` first.")
    staging = checkpoint.parent / f".publish-{uuid.uuid4().hex[:8]}"
    try:
        _write_half_precision_folder(trained, staging / "checkpoint")
        _export(staging / "checkpoint", staging / "artifact")
        for made, shipped in ((staging / "checkpoint", checkpoint), (staging / "artifact", artifact)):
            if shipped.exists():
                shutil.rmtree(shipped)
            made.rename(shipped)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"checkpoint_bytes": folder_bytes(checkpoint), "artifact_bytes": folder_bytes(artifact)}


def export_again(checkpoint: Path = CHECKPOINT, artifact: Path = ARTIFACT) -> dict:
    """Re-export the shipped checkpoint into the shipped artifact (the exporter changed)."""
    staging = checkpoint.parent / f".publish-{uuid.uuid4().hex[:8]}"
    try:
        _export(checkpoint, staging / "artifact")
        shutil.rmtree(artifact)
        (staging / "artifact").rename(artifact)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"artifact_bytes": folder_bytes(artifact)}


def _export(checkpoint: Path, target: Path) -> None:
    from ...export.exporter import export_checkpoint

    export_checkpoint(checkpoint, target)
    manifest_path = target / "sdrt.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["exporter"]["source"] = "sdrt.models.demo checkpoint (fp16 diffusers folder)"
    manifest_path.write_text(json.dumps(manifest, indent=2))


def _write_half_precision_folder(trained: Path, target: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from ...export.random_model import standard_text_encoder_keys

    target.mkdir(parents=True)
    shutil.copyfile(trained / "model_index.json", target / "model_index.json")
    for name in CONFIG_FOLDERS:
        shutil.copytree(trained / name, target / name)
    for name, weights in WEIGHT_FILES.items():
        (target / name).mkdir()
        config = json.loads((trained / name / "config.json").read_text())
        for key in ("torch_dtype", "dtype"):
            if key in config:
                config[key] = "float16"
        config.pop("_name_or_path", None)  # where it was trained, not part of the model
        (target / name / "config.json").write_text(json.dumps(config, indent=2))
        tensors = {k: v.to(torch.float16) if v.is_floating_point() else v
                   for k, v in load_file(trained / name / weights).items()}
        if name == "text_encoder":
            tensors = standard_text_encoder_keys(tensors)
        save_file(tensors, target / name / weights, metadata={"format": "pt"})


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trained", type=Path, nargs="?", help="the diffusers folder the training recipe trained")
    parser.add_argument("--export-only", action="store_true",
                        help="re-export the shipped checkpoint into the shipped artifact instead")
    args = parser.parse_args(argv)
    if args.export_only == (args.trained is not None):
        parser.error("give TRAINED_FOLDER or --export-only")
    print(json.dumps(export_again() if args.export_only else publish(args.trained)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
