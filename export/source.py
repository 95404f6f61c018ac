"""Where a checkpoint comes from: a local diffusers folder, a hub id, or a single file.

Every source ends as a local diffusers folder, so the rest of the exporter has one path.
"""
from __future__ import annotations

import importlib.util
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..models.configs import checkpoint_config
from ..runtime.errors import SdrtError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
SINGLE_FILE_SUFFIXES = (".safetensors",)
REQUIRED_PARTS = ("unet", "vae", "scheduler")


class ExportError(SdrtError):
    """The checkpoint cannot be exported as given; the message says what to change."""


# what reading a checkpoint and exporting it to ONNX imports (the `export` extra)
EXPORT_PACKAGES = ("torch", "diffusers", "transformers", "onnx", "onnxscript")


def require_packages(what: str, packages: tuple[str, ...]) -> None:
    """Refuse, in one sentence naming the extra, to start `what` when one of `packages` (the
    export extra's) cannot be imported; checked before anything is written."""
    for package in packages:
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ExportError(f"{what} needs the export extra ({package} is not installed): pip install "
                              "torch==2.13.0 first (an unpinned torch is a multi-GB CUDA build), then pip install "
                              "'sdrt[export]'.")


@dataclass
class Checkpoint:
    folder: Path  # a diffusers folder layout
    description: str  # what the user named, for the manifest


def resolve_checkpoint(source: str, *, allow_pickle: bool = False, work_dir: Path | None = None,
                       single_file_config: str = "sd15") -> Checkpoint:
    """Turn what the user named into a local diffusers folder.

    `single_file_config` says what a single-file checkpoint holds: a config name of
    models.configs (sd15, tiny) or a diffusers folder whose config files describe it.
    """
    path = Path(source).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ExportError(
                f"{source} is a pickle checkpoint; loading one runs arbitrary code from the file. Convert it to "
                ".safetensors, or pass --allow-pickle (allow_pickle=True) if you trust its origin."
            )
        if not path.is_file():
            raise ExportError(f"Checkpoint file {source} does not exist.")
        return _from_single_file(path, work_dir, single_file_config, allow_pickle=True)
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise ExportError(f"Checkpoint file {source} does not exist.")
        return _from_single_file(path, work_dir, single_file_config, allow_pickle=False)
    if path.is_dir():
        _check_diffusers_folder(path)
        return Checkpoint(path, str(source))
    if path.exists():
        raise ExportError(f"{source} is neither a diffusers folder nor a .safetensors checkpoint.")
    if _looks_like_hub_id(source):
        return Checkpoint(_download(source), f"hub:{source}")
    raise ExportError(f"Checkpoint {source} does not exist: give a diffusers folder, a .safetensors file or a hub id.")


def _check_diffusers_folder(folder: Path) -> None:
    if not (folder / "model_index.json").is_file():
        raise ExportError(f"{folder} has no model_index.json; give a folder in the diffusers layout "
                          "(as saved by `pipeline.save_pretrained`).")
    missing = [part for part in REQUIRED_PARTS if not (folder / part).is_dir()]
    encoders = [suffix for suffix in ("", "_2") if (folder / f"text_encoder{suffix}").is_dir()]
    if not encoders:
        missing.append("text_encoder")
    missing += [f"tokenizer{suffix}" for suffix in encoders if not (folder / f"tokenizer{suffix}").is_dir()]
    if missing:
        raise ExportError(f"{folder} lacks the sub-folder(s) {', '.join(missing)} of a Stable Diffusion pipeline.")


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:  # pragma: no cover - huggingface_hub comes with diffusers
        raise ExportError("Downloading from the hub needs huggingface_hub: pip install 'sdrt[export]'.") from error
    patterns = ["model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*", "unet/*.json", "vae/*.json",
                "unet/*.safetensors", "vae/*.safetensors", "text_encoder/*.json", "text_encoder/*.safetensors",
                "text_encoder_2/*.json", "text_encoder_2/*.safetensors"]
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:
        raise ExportError(f"Could not fetch {repo_id} from the hub ({error}). Download it on a machine that is "
                          "online and pass the local folder instead.") from error
    _check_diffusers_folder(folder)
    return folder


def _from_single_file(path: Path, work_dir: Path | None, config: str, *, allow_pickle: bool) -> Checkpoint:
    """Convert an original-layout (LDM / SGM) SD or SDXL checkpoint into a diffusers folder, with
    the pipeline class the config names (StableDiffusionXLPipeline for `sdxl`, ...).

    The configs come from models.configs or a local folder, so no hub access is needed.
    """
    import diffusers

    if Path(config).is_dir():
        config_dir = Path(config)
    else:
        try:
            settings = checkpoint_config(config)
        except ValueError as error:
            raise ExportError(f"{error} Or give a diffusers folder with the checkpoint's config files.") from None
        config_dir = Path(tempfile.mkdtemp(prefix="sdrt-config-", dir=work_dir))
        write_config_folder(config_dir, settings)
    kind = json.loads((config_dir / "model_index.json").read_text(encoding="utf-8"))["_class_name"]
    unchecked = {} if "XL" in kind else {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipe = getattr(diffusers, kind).from_single_file(
            str(path), config=str(config_dir), local_files_only=True, use_safetensors=not allow_pickle, **unchecked)
    except Exception as error:
        raise ExportError(f"Could not read {path} as a single-file checkpoint of the {config} configuration "
                          f"({kind}): {error}") from error
    target = Path(tempfile.mkdtemp(prefix="sdrt-single-", dir=work_dir))
    pipe.save_pretrained(target)
    return Checkpoint(target, f"file:{path.name}")


def write_config_folder(folder: Path, config: dict) -> None:
    """The config files (no weights) of a diffusers SD or SDXL folder, plus its CLIP tokenizers."""
    from diffusers import __version__ as diffusers_version

    from ..models.clip_vocab import write_clip_tokenizer

    inpainting = config["unet"]["in_channels"] == 9
    sdxl = "text_encoder_2" in config
    if sdxl:
        pipeline_class = "StableDiffusionXLPipeline" if "text_encoder" in config else "StableDiffusionXLImg2ImgPipeline"
    elif config["unet"].get("time_cond_proj_dim"):
        pipeline_class = "LatentConsistencyModelPipeline"
    else:
        pipeline_class = "StableDiffusionInpaintPipeline" if inpainting else "StableDiffusionPipeline"
    index = {
        "_class_name": pipeline_class,
        "_diffusers_version": diffusers_version,  # diffusers' inpainting pipeline reads it
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", config["scheduler"]["_class_name"]],
        **config.get("pipeline", {}),
    }
    if not sdxl:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    files = {"unet/config.json": {**config["unet"], "_class_name": "UNet2DConditionModel"},
             "vae/config.json": {**config["vae"], "_class_name": "AutoencoderKL"},
             "scheduler/scheduler_config.json": config["scheduler"]}
    for suffix, architecture in (("", "CLIPTextModel"), ("_2", "CLIPTextModelWithProjection")):
        if f"text_encoder{suffix}" not in config:
            if sdxl:  # (the refiner has no first encoder: diffusers records it as null)
                index[f"text_encoder{suffix}"] = index[f"tokenizer{suffix}"] = [None, None]
            continue
        index[f"text_encoder{suffix}"] = ["transformers", architecture]
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
        text = {**config[f"text_encoder{suffix}"], "architectures": [architecture], "model_type": "clip_text_model"}
        files[f"text_encoder{suffix}/config.json"] = text
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content, indent=2))
    for suffix in ("", "_2"):
        if f"text_encoder{suffix}" in config:
            write_clip_tokenizer(folder / f"tokenizer{suffix}", **config.get(f"tokenizer{suffix}", {}))
