"""What several commands share: the engine arguments, loading a pipeline, images in and out."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from sdrt.runtime.errors import SdrtError


class CommandError(SdrtError):
    """A command-line argument that cannot work; the message says what to change."""


def engine_arguments(parser: argparse.ArgumentParser, steps: int, guidance: float) -> None:
    """The artifact, backend and sampling options `generate` and `eval` share."""
    from sdrt.runtime.backends import BACKENDS
    from sdrt.runtime.precisions import VARIANT_PRECISIONS
    from sdrt.runtime.samplers import SAMPLERS

    parser.add_argument("--artifact", default=None,
                        help="the artifact folder (made by `sdrt export`; default: the embedded demo model)")
    parser.add_argument("--backend", default=None, choices=list(BACKENDS),
                        help="inference engine (default: openvino where installed, else onnxruntime)")
    parser.add_argument("--device", default=None,
                        help="device for the backend (default: its own, cpu; cuda for tensorrt): onnxruntime also "
                             "cuda, tensorrt, dml (:N for GPU N), openvino gpu, npu")
    parser.add_argument("--precision", default="fp32", type=precision_argument,
                        help="fp32; bf16 (an openvino option, fast on CPUs with AMX or AVX512-BF16); a variant "
                             f"the artifact stores ({', '.join(VARIANT_PRECISIONS)}, made by `sdrt quantize`); or "
                             "one per network, unet=fp16,vae_decoder=fp32 (default fp32)")
    parser.add_argument("--steps", type=int, default=steps, help=f"denoising steps (default {steps})")
    parser.add_argument("--guidance", type=float, default=guidance,
                        help=f"classifier-free guidance scale; <= 1 turns guidance off (default {guidance})")
    parser.add_argument("--scheduler", default=None, choices=list(SAMPLERS),
                        help="sampler (default: the checkpoint's own scheduler)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--engine-cache", nargs="?", const=True, default=None, metavar="DIR",
                       help="keep compiled engines so the next load skips compilation (openvino), in DIR or "
                            "by default in $SDRT_CACHE/engines, else ~/.cache/sdrt/engines (default: on for "
                            "gpu and npu, off on the cpu, where it costs resident memory)")
    cache.add_argument("--no-engine-cache", action="store_true", help="compile on every load and keep nothing")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="onnxruntime on cuda: capture the denoising loop's UNet calls as CUDA graphs")
    parser.add_argument("--dynamic-shapes", action="store_true",
                        help="openvino: compile each network once, at load, for every shape, instead of for the "
                             "request's shapes at its first call (slower networks; no compile when sizes change)")
    parser.add_argument("--no-memory-check", action="store_true",
                        help="run a request even when its estimated memory exceeds what the system has free")


def precision_argument(text: str):
    """'fp16' -> 'fp16'; 'unet=fp16,text_encoder=fp32' -> {'unet': 'fp16', 'text_encoder': 'fp32'}."""
    if "=" not in text:
        return text
    try:
        return dict(item.split("=", 1) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"write per-network precisions as unet=fp16,vae_decoder=fp32; got {text!r}")


def load_pipeline(args, artifact=None):
    """The pipeline the engine arguments name (the demo model without --artifact); `artifact`:
    another artifact on the same engine settings (a refiner)."""
    import sdrt
    from sdrt.models.demo import demo_artifact

    artifact = artifact or args.artifact
    if artifact is None:
        try:
            artifact = demo_artifact()
        except FileNotFoundError as error:
            raise CommandError(str(error)) from None
    engine_cache = False if args.no_engine_cache else args.engine_cache
    return sdrt.load(artifact, backend=args.backend, device=args.device, precision=args.precision,
                     num_threads=args.threads, engine_cache=engine_cache, cuda_graph=args.cuda_graph,
                     static_shapes=not args.dynamic_shapes, memory_check=not args.no_memory_check,
                     vae=getattr(args, "vae", None), vae_tiling=getattr(args, "vae_tiling", False))


def progress_bar(total: int, unit: str):
    """A tqdm bar on a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit=unit, file=sys.stderr, leave=False)


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CommandError(f"{option} must look like 512x512 (WIDTHxHEIGHT), got {text!r}.") from None
    return width, height


def open_image(path: Path, option: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path.expanduser()) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise CommandError(f"{option} {path}: no such file.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise CommandError(f"{option} {path} is not an image PIL can read ({error}).") from None


def save_png(image, path: Path) -> None:
    """Write through a temporary file in the same folder, so no half-written PNG is left; the
    file gets the mode the umask gives new files (mkstemp's own 0600 would survive the rename)."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG")
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    try:  # Linux says it without changing it
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere reading it means setting it: put it back at once
    os.umask(mask)
    return mask
