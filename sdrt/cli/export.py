"""`sdrt export`: a checkpoint -> an artifact folder."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ._common import CommandError, progress_bar
from .quantize import report_quality

# networks-and-format variants an `--precision` name at export stands for: int8 makes each
# installed CPU backend's form, so that the artifact loads with precision="int8" on either
INT8_FORMS = {"openvino": "int8", "onnxruntime": "int8-qdq"}


def add_parser(commands, name: str, summary: str) -> None:
    from sdrt.models.configs import KNOWN_CONFIGS
    from sdrt.runtime.precisions import VARIANT_PRECISIONS

    export = commands.add_parser(
        name, help=summary,
        description="Export a Stable Diffusion checkpoint (SD 1.x, 2.x, SDXL: CLIP text encoders, UNet, VAE decoder "
                    "and encoder, tokenizers) to ONNX files plus a manifest (sdrt.json). Needs the export extra: "
                    "pip install 'sdrt[export]'.")
    export.add_argument("checkpoint", help="a diffusers folder, a hub id (when online), or a single .safetensors "
                                           "file; 'random:NAME' builds random weights of a known config: "
                                           f"{', '.join(KNOWN_CONFIGS)}")
    export.add_argument("-o", "--output", required=True, help="the artifact folder to create")
    export.add_argument("--overwrite", action="store_true", help="replace the output folder if it is not empty")
    export.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                        help="merge a LoRA (.safetensors; kohya/A1111 or diffusers/PEFT keys) into the UNet and text "
                             "encoder before export, at STRENGTH (default 1.0); repeat for several")
    export.add_argument("--allow-pickle", action="store_true",
                        help="allow .ckpt/.pt pickle checkpoints (loading one runs code from the file)")
    export.add_argument("--config", default="sd15",
                        help="for a single-file checkpoint: its architecture, a known config (sd15, sd15-inpainting, "
                             "sd2, sdxl, sdxl-refiner, sd-turbo, sdxl-turbo, lcm, tiny, tiny-sdxl, ...) or a "
                             "diffusers folder holding its config files (default sd15)")
    export.add_argument("--tiny-vae", default=None, metavar="PATH",
                        help="also store this tiny autoencoder (a diffusers AutoencoderTiny folder: TAESD for SD "
                             "1.x/2.x, TAESDXL for SDXL; or random:taesd) as the VAE named taesd (`--vae taesd` at "
                             "generate time)")
    export.add_argument("--no-verify", action="store_true",
                        help="skip measuring each component against PyTorch after export")
    export.add_argument("--precision", default="fp32",
                        help="comma-separated precisions to store: fp32 (always) and variants made as by "
                             f"`sdrt quantize` ({', '.join(VARIANT_PRECISIONS)}), each with its quality report; "
                             "int8 makes the int8 form of each installed CPU backend (openvino: int8, onnxruntime: "
                             "int8-qdq), so precision int8 loads on either (default fp32)")


def run(args, argv: list[str]) -> int:
    # (a missing export extra is refused by sdrt.export.source.require_packages, naming the package)
    from sdrt.export.exporter import export_checkpoint
    from sdrt.export.variants import make_variants

    precisions = export_precisions(args.precision)  # refuses unknown names before the export runs
    bar = progress_bar(6, "stage")

    def progress(done: int, total: int, what: str) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.set_description(what)
            bar.refresh()

    source = args.checkpoint
    scratch = None
    if source.startswith("random:"):
        from sdrt.export.random_model import build_random_pipeline

        scratch = tempfile.TemporaryDirectory(prefix="sdrt-random-")
        source = str(build_random_pipeline(source.split(":", 1)[1], Path(scratch.name) / "checkpoint"))
    try:
        path = export_checkpoint(source, args.output, allow_pickle=args.allow_pickle, overwrite=args.overwrite,
                                 loras=args.lora, verify=not args.no_verify, single_file_config=args.config,
                                 progress=progress)
    finally:
        if bar is not None:
            bar.close()
        if scratch is not None:
            scratch.cleanup()
    if args.tiny_vae is not None:
        from types import SimpleNamespace

        from .add_vae import added_vae

        added_vae(SimpleNamespace(artifact=path, vae=args.tiny_vae, name="taesd", overwrite=False))
    for precision in precisions:
        report_quality(precision, make_variants(path, precision, progress=lambda what: progress(0, 1, what)))
    print(f"exported {args.checkpoint} to {path}")
    return 0


def export_precisions(text: str) -> list[str]:
    """The variants `--precision` asks for, in order, int8 standing for each installed CPU
    backend's int8 form."""
    from sdrt.export.variants import MAKERS
    from sdrt.runtime.backends import available_backends

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name != "fp32" and name not in MAKERS]
    if unknown:
        raise CommandError(f"--precision takes fp32 and {', '.join(MAKERS)}; got {', '.join(unknown)}.")
    chosen: list[str] = []
    for name in names:
        if name == "int8":
            forms = [form for backend, form in INT8_FORMS.items() if backend in available_backends()]
            if not forms:
                raise CommandError("--precision int8 makes the int8 form of an installed CPU backend, and neither "
                                   "openvino nor onnxruntime is installed: pip install 'sdrt[cpu]'.")
        else:
            forms = [name]
        chosen += [form for form in forms if form != "fp32" and form not in chosen]
    return chosen
