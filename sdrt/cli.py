"""The `sdrt` command: export, quantize, info, plan, generate, eval, bench."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from sdrt.benchmarks import command as bench_command
from sdrt.models.demo import demo_artifact
from sdrt.models.demo.evaluation import EVAL_GUIDANCE, EVAL_IMAGE_SEEDS, EVAL_STEPS, evaluate, load_evaluation_prompts
from sdrt.models.demo.scenes import ATTRIBUTES
from sdrt.runtime.backends import BACKENDS
from sdrt.runtime.errors import SdrtError
from sdrt.runtime.image_input import outpaint_canvas
from sdrt.runtime.lora import LoraSpec
from sdrt.runtime.precisions import VARIANT_PRECISIONS
from sdrt.runtime.samplers import SAMPLERS


class CommandError(Exception):
    """A command-line argument that cannot work; the message says what to change."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdrt", description="Stable Diffusion RunTime: export checkpoints to ONNX artifacts and run them.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    export = commands.add_parser(
        "export", help="export a checkpoint to an artifact folder",
        description="Export a Stable Diffusion checkpoint (CLIP text encoder, UNet, VAE decoder and encoder, "
                    "tokenizer) to ONNX files plus a manifest (sdrt.json). Needs the export extra: "
                    "pip install 'sdrt[export]'.")
    export.add_argument("checkpoint", help="a diffusers folder, a hub id (when online), or a single .safetensors "
                                           "file; 'random:tiny' or 'random:sd15' builds random weights of that size "
                                           "(random:tiny-inpainting, random:sd15-inpainting: an inpainting UNet)")
    export.add_argument("-o", "--output", required=True, help="the artifact folder to create")
    export.add_argument("--overwrite", action="store_true", help="replace the output folder if it is not empty")
    export.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                        help="merge a LoRA (.safetensors; kohya/A1111 or diffusers/PEFT keys) into the UNet and text "
                             "encoder before export, at STRENGTH (default 1.0); repeat for several")
    export.add_argument("--allow-pickle", action="store_true",
                        help="allow .ckpt/.pt pickle checkpoints (loading one runs code from the file)")
    export.add_argument("--config", default="sd15",
                        help="for a single-file checkpoint: its architecture, a known config (sd15, sd15-inpainting, "
                             "tiny) or a diffusers folder holding its config files (default sd15)")
    export.add_argument("--no-verify", action="store_true",
                        help="skip measuring each component against PyTorch after export")
    export.add_argument("--precision", default="fp32",
                        help="comma-separated precisions to store: fp32 (always) and variants made as by "
                             f"`sdrt quantize` ({', '.join(VARIANT_PRECISIONS)}), each with its quality report "
                             "(default fp32)")

    quantize = commands.add_parser(
        "quantize", help="add a precision variant to an artifact, with its quality report",
        description="Make lower-precision copies of an artifact's networks, store them in the artifact with how "
                    "they were made, and measure them against fp32 on the same prompts, seeds and sampler: each "
                    "network's output difference on recorded pipeline inputs, and the PSNR and SSIM of whole "
                    "images. Default networks: fp16 and int4-weights, text encoder and UNet (the SD VAE decoder "
                    "overflows fp16; name it to convert it too) and int8-qdq; fp16-cuda, the UNet; int8 and "
                    "int8-weights, all three. int8 "
                    "and int8-qdq are calibrated: the fp32 pipeline first runs on calibration prompts and the "
                    "UNet's activations are quantized for the inputs it received. Needs the export extra (with "
                    "nncf).")
    quantize.add_argument("artifact", help="the artifact folder")
    quantize.add_argument("--precision", required=True, choices=["bf16", *VARIANT_PRECISIONS],
                          help="the variant to make: fp16 (ONNX, every backend); fp16-cuda (the UNet in "
                               "ONNX Runtime's CUDA form: fused attention, GroupNorm, NHWC convolutions; what "
                               "--precision fp16 picks on onnxruntime's cuda; its report needs that GPU); int8 "
                               "(UNet weights and "
                               "activations int8, calibrated; other networks int8 weights), int8-weights or "
                               "int4-weights (NNCF weight compression): OpenVINO models, the openvino backend only; "
                               "int8-qdq: ONNX Runtime's int8 (a calibrated static QDQ UNet), which "
                               "--precision int8 picks on onnxruntime; bf16: no files, OpenVINO's bf16 "
                               "computation of the fp32 files measured and its report stored")
    quantize.add_argument("--components", nargs="+", default=None, metavar="NAME",
                          help="networks to convert (default: see above)")
    quantize.add_argument("--report-backend", default=None, choices=list(BACKENDS),
                          help="backend that measures the quality report (default for fp16: onnxruntime, which "
                               "computes fp16 networks in fp16; openvino for the weight-only variants)")
    quantize.add_argument("--report-steps", type=int, default=10, help="denoising steps of the report's images")
    quantize.add_argument("--fidelity", type=int, default=0, metavar="N",
                          help="artifacts of the demo model: also score prompt fidelity (the demo checker) on N "
                               "evaluation prompts, fp32 and the variant")
    quantize.add_argument("--calibration-prompts", default=None, metavar="FILE",
                          help="int8: a text file with one calibration prompt per line (default: 8 built-in "
                               "prompts); prompts like the ones the model will serve calibrate best")
    quantize.add_argument("--calibration-steps", type=int, default=10,
                          help="int8: denoising steps per calibration prompt; the UNet's inputs at every step "
                               "are calibration samples (default 10)")
    quantize.add_argument("--calibration-size", default=None, metavar="WIDTHxHEIGHT",
                          help="int8: image size of the calibration runs (default: the model's)")

    info = commands.add_parser("info", help="describe an artifact and check it",
                               description="Validate an artifact's manifest against its JSON Schema and its files "
                                           "against their checksums, then list its components.")
    info.add_argument("artifact", help="the artifact folder")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")

    plan = commands.add_parser(
        "plan", help="add sampler plans to an artifact for C++ hosts",
        description="Compile sampler plans (the timesteps and update coefficients of a scheduler, as plain data) "
                    "for the artifact's scheduler config and add them to its sampler_plans.json, which C++ hosts "
                    "read; `sdrt export` already stores every sampler at 1-6, 8, 10, 15, 20, 25, 30, 40 and 50 "
                    "steps. With -o, write one plan to a file instead.")
    plan.add_argument("artifact", help="the artifact folder")
    plan.add_argument("--scheduler", nargs="+", required=True, choices=list(SAMPLERS), metavar="NAME",
                      help=f"samplers to compile: {', '.join(SAMPLERS)}")
    plan.add_argument("--steps", nargs="+", type=int, required=True, metavar="N", help="step counts to compile")
    plan.add_argument("-o", "--output", default=None,
                      help="write the plan (one scheduler, one step count) to this JSON file instead")

    generate = commands.add_parser("generate", help="generate images from a prompt",
                                   description="Text-to-image on an artifact folder, or on the embedded demo "
                                               "model (64x64 coloured shapes) without --artifact.")
    generate.add_argument("prompt", help="what the image should show")
    generate.add_argument("--negative", default=None, help="what the image should not show (negative prompt)")
    _engine_arguments(generate)
    generate.add_argument("--seed", type=int, default=None,
                          help="seed of sdrt's portable noise generator; the same seed gives the same image on "
                               "every backend (default: random, printed)")
    generate.add_argument("--size", default=None,
                          help="WIDTHxHEIGHT in pixels, multiples of the model's size step (default: the model's)")
    generate.add_argument("--image", default=None, type=Path,
                          help="image-to-image: start from this picture (PNG, JPEG, ...); the size defaults to "
                               "its own, rounded down to the model's size step")
    generate.add_argument("--strength", type=float, default=None,
                          help="with --image: how much to change it, 0 (keep) to 1 (start from noise); the last "
                               "int(steps x strength) steps run (default 0.8; 1.0 with --mask or --outpaint, as "
                               "diffusers)")
    generate.add_argument("--mask", default=None, type=Path,
                          help="with --image: inpaint, repainting where this mask image is white")
    generate.add_argument("--outpaint", default=None, metavar="SIDE=PX,...",
                          help="with --image: extend it, e.g. left=128,right=128 (sides: left, right, top, bottom)")
    generate.add_argument("--mask-blur", type=float, default=0.0,
                          help="with --mask or --outpaint: soften the seam where the input's pixels are put back "
                               "(a Gaussian's sigma in pixels; default 0, a hard edge)")
    generate.add_argument("--embedding", action="append", default=[], metavar="FILE[:WORD]",
                          help="a textual-inversion embedding (.safetensors) to use in the prompt by its word (the "
                               "file's tensor name, or its file name for AUTOMATIC1111 files; :WORD names it); "
                               "repeat for several")
    generate.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                          help="apply a LoRA (.safetensors; kohya/A1111 or diffusers/PEFT keys) to the UNet and text "
                               "encoder at STRENGTH (default 1.0), in memory, without re-exporting; repeat for "
                               "several (fp32 and fp16 networks; `sdrt export --lora` merges one for good)")
    generate.add_argument("--watermark", action="store_true",
                          help="mark the images invisibly as Stable Diffusion's own scripts did (the "
                               "invisible-watermark package's dwtDct, payload StableDiffusionV1); 256x256 or more")
    generate.add_argument("-n", "--num-images", type=int, default=1, help="images to generate (default 1)")
    generate.add_argument("-o", "--output", default="sdrt.png",
                          help="PNG file to write; with -n > 1, NAME-1.png, NAME-2.png, ... (default sdrt.png)")

    evaluate = commands.add_parser(
        "eval", help="score prompt fidelity on the demo model",
        description="Generate the demo model's held-out evaluation prompts (100 prompts x seeds 1 and 2) and "
                    "report the fraction of stated attributes (shape, colour, background, size, position) that "
                    "the checker reads back from the images, per attribute. Works on any artifact exported from "
                    "the demo model, on any backend and precision.")
    _engine_arguments(evaluate)
    evaluate.add_argument("--prompts", type=int, default=None,
                          help="score only the first N evaluation prompts (default: all 100)")
    evaluate.add_argument("--seeds", type=int, nargs="+", default=list(EVAL_IMAGE_SEEDS),
                          help="seeds per prompt (default: 1 2)")
    evaluate.add_argument("--json", action="store_true", help="print the scores as one JSON object")

    watermark = commands.add_parser(
        "watermark", help="check images for the invisible watermark",
        description="Read the invisible watermark Stable Diffusion's scripts (and `sdrt generate --watermark`) put "
                    "on images. Exit status 0 when every image carries it, 1 otherwise. Images with large flat "
                    "areas may not carry it readably (a limit of the dwtDct scheme).")
    watermark.add_argument("action", choices=["check"], help="check: read the mark")
    watermark.add_argument("images", nargs="+", type=Path, help="image files")

    bench_command.add_parser(commands)
    return parser


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The artifact, backend and sampling options `generate` and `eval` share."""
    parser.add_argument("--artifact", default=None,
                        help="the artifact folder (made by `sdrt export`; default: the embedded demo model)")
    parser.add_argument("--backend", default=None, choices=list(BACKENDS),
                        help="inference engine (default: openvino where installed, else onnxruntime)")
    parser.add_argument("--device", default=None,
                        help="device for the backend (default: its own, cpu; cuda for tensorrt): onnxruntime also "
                             "cuda, tensorrt, dml (:N for GPU N), openvino gpu, npu")
    parser.add_argument("--precision", default="fp32", type=_precision_argument,
                        help="fp32; bf16 (an openvino option, fast on CPUs with AMX or AVX512-BF16); a variant "
                             f"the artifact stores ({', '.join(VARIANT_PRECISIONS)}, made by `sdrt quantize`); or "
                             "one per network, unet=fp16,vae_decoder=fp32 (default fp32)")
    parser.add_argument("--steps", type=int, default=EVAL_STEPS, help=f"denoising steps (default {EVAL_STEPS})")
    parser.add_argument("--guidance", type=float, default=EVAL_GUIDANCE,
                        help=f"classifier-free guidance scale; <= 1 turns guidance off (default {EVAL_GUIDANCE})")
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


def _precision_argument(text: str):
    """'fp16' -> 'fp16'; 'unet=fp16,text_encoder=fp32' -> {'unet': 'fp16', 'text_encoder': 'fp32'}."""
    if "=" not in text:
        return text
    try:
        return dict(item.split("=", 1) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"write per-network precisions as unet=fp16,vae_decoder=fp32; got {text!r}")


def _load(args):
    import sdrt

    artifact = args.artifact
    if artifact is None:
        try:
            artifact = demo_artifact()
        except FileNotFoundError as error:
            raise CommandError(str(error)) from None
    engine_cache = False if args.no_engine_cache else args.engine_cache
    return sdrt.load(artifact, backend=args.backend, device=args.device, precision=args.precision,
                     num_threads=args.threads, engine_cache=engine_cache, cuda_graph=args.cuda_graph,
                     static_shapes=not args.dynamic_shapes)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "bench":
            return bench_command.run(args, argv[argv.index("bench") + 1:])
        if args.command == "export":
            return _export(args)
        if args.command == "info":
            return _info(args)
        if args.command == "plan":
            return _plan(args)
        if args.command == "quantize":
            return _quantize(args)
        if args.command == "eval":
            return _evaluate(args)
        if args.command == "watermark":
            return _check_watermarks(args)
        return _generate(args)
    except (SdrtError, CommandError) as error:
        print(f"sdrt: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        from sdrt.export.source import ExportError

        if isinstance(error, ExportError):
            print(f"sdrt: error: {error}", file=sys.stderr)
            return 2
        raise


def _progress_bar(total: int, unit: str):
    """A tqdm bar on a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit=unit, file=sys.stderr, leave=False)


def _export_precisions(text: str) -> list[str]:
    from sdrt.export.variants import MAKERS

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name != "fp32" and name not in MAKERS]
    if unknown:
        raise CommandError(f"--precision takes fp32 and {', '.join(MAKERS)}; got {', '.join(unknown)}.")
    return [name for name in names if name != "fp32"]


def _db(value: float | None) -> str:
    return "inf (identical)" if value is None else f"{value:.1f} dB"


def _report_quality(precision: str, report: dict) -> None:
    if report.get("measured") is False:
        print(f"{precision}: made; its quality report is not measured: {report['reason']}. Run `sdrt quantize` "
              f"again where {report['backend']} runs on {report['device']} to measure it.")
        return
    print(f"{precision}: {', '.join(k for k, v in report['precisions'].items() if v == precision)}; "
          f"{report['images']} images vs fp32 on {report['backend']}: PSNR {_db(report['psnr_db_mean'])} "
          f"(min {_db(report['psnr_db_min'])}), SSIM {report['ssim_mean']:.4f} (min {report['ssim_min']:.4f})")
    if "fidelity" in report:
        fidelity = report["fidelity"]
        print(f"{precision}: prompt fidelity on {fidelity['prompts']} demo prompts: {fidelity[precision]:.3f} "
              f"(fp32 {fidelity['fp32']:.3f})")


def _quantize(args) -> int:
    from sdrt.export.variants import make_variants

    if args.report_steps < 1:
        raise CommandError("--report-steps must be at least 1.")
    prompts = None
    if args.calibration_prompts is not None:
        try:
            lines = Path(args.calibration_prompts).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise CommandError(f"Cannot read the calibration prompts file: {error}.") from None
        prompts = [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise CommandError(f"{args.calibration_prompts} holds no prompts; write one prompt per line.")
    size = None
    if args.calibration_size:
        width, height = _parse_size(args.calibration_size)
        size = (height, width)
    report = make_variants(args.artifact, args.precision, args.components, report_backend=args.report_backend,
                           steps=args.report_steps, fidelity_prompts=args.fidelity, calibration_prompts=prompts,
                           calibration_steps=args.calibration_steps, calibration_size=size)
    _report_quality(args.precision, report)
    return 0


def _export(args) -> int:
    from sdrt.export.exporter import export_checkpoint
    from sdrt.export.variants import make_variants

    _export_precisions(args.precision)  # refuses unknown names before the export runs

    bar = _progress_bar(6, "stage")

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
                                 loras=args.lora,
                                 verify=not args.no_verify, single_file_config=args.config, progress=progress)
    finally:
        if bar is not None:
            bar.close()
        if scratch is not None:
            scratch.cleanup()
    for precision in _export_precisions(args.precision):
        _report_quality(precision, make_variants(path, precision, progress=lambda what: progress(0, 1, what)))
    print(f"exported {args.checkpoint} to {path}")
    return 0


def _info(args) -> int:
    from sdrt.runtime.artifact import open_artifact

    artifact = open_artifact(args.artifact)
    manifest = artifact.manifest
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    pipeline = manifest["pipeline"]
    height, width = pipeline["default_size"]
    print(f"artifact   {artifact.root}  (schema {manifest['schema_version']}, checksums verified)")
    print(f"family     {manifest['family']}  prediction {pipeline['prediction_type']}  "
          f"latents {pipeline['latent_channels']}ch x1/{pipeline['vae_scale_factor']}  "
          f"default {width}x{height}  size step {pipeline.get('size_multiple', pipeline['vae_scale_factor'])}")
    print(f"scheduler  {pipeline['scheduler'].get('_class_name', '?')}  source {manifest['exporter'].get('source')}")
    if manifest.get("sampler_plans"):
        plans = json.loads(artifact.file(manifest["sampler_plans"]).read_text(encoding="utf-8"))
        stored = ", ".join(f"{name} ({len(by_steps)})" for name, by_steps in plans["plans"].items())
        print(f"plans      {manifest['sampler_plans']}: {stored}; default {plans['default_sampler']}")
    else:
        print("plans      none stored (C++ hosts need them: `sdrt plan` adds them)")
    for name, entry in manifest["components"].items():
        size = sum(manifest["files"][f]["size"] for f in entry["files"])
        diff = entry.get("max_abs_diff_vs_torch")
        diff_text = "n/a" if diff is None else f"{diff:.1e}"
        print(f"\n{name}  [{entry['role']}]  {entry['precision']}  opset {entry['opset']}  "
              f"{entry.get('parameters', 0) / 1e6:.1f}M params  {size / 2**20:.1f} MiB  max|onnx-torch| {diff_text}")
        for kind in ("inputs", "outputs"):
            for tensor in entry[kind]:
                shape = ", ".join(str(d) for d in tensor["shape"])
                print(f"  {kind[:-1]:6} {tensor['name']:24} {tensor['dtype']:8} [{shape}]")
        for relative in entry["files"]:
            print(f"  file   {relative}  sha256 {manifest['files'][relative]['sha256'][:16]}...")
        for precision, variant in entry.get("variants", {}).items():
            quality = variant.get("quality", {})
            measured = (f"not measured ({quality['reason']})" if quality.get("measured") is False else
                        f"max {quality.get('output_max_abs_diff', float('nan')):.2e} mean "
                        f"{quality.get('output_mean_abs_diff', float('nan')):.2e}")
            print(f"  variant {precision:5} {variant['size'] / 2**20:.1f} MiB  by {variant['made_by']['tool']} "
                  f"{variant['made_by']['version']}  output vs fp32 on {quality.get('backend', '?')}: {measured}")
            calibration = variant["made_by"].get("calibration")
            if calibration:
                height, width = calibration["size"]
                print(f"          calibrated on {calibration['samples']} inputs: {len(calibration['prompts'])} "
                      f"prompts x {calibration['steps']} steps, {width}x{height}, fp32 on {calibration['backend']}")
    for precision, report in manifest.get("quality_reports", {}).items():
        if report.get("measured") is False:
            print(f"\nquality {precision}: not measured ({report['reason']})")
            continue
        print(f"\nquality {precision}: {report['images']} images ({report['size'][1]}x{report['size'][0]}, "
              f"{report['steps']} steps, {report['sampler']}) vs fp32 on {report['backend']}: PSNR "
              f"{_db(report['psnr_db_mean'])} (min {_db(report['psnr_db_min'])}), SSIM {report['ssim_mean']:.4f} "
              f"(min {report['ssim_min']:.4f})")
        if "fidelity" in report:
            fidelity = report["fidelity"]
            print(f"  prompt fidelity on {fidelity['prompts']} demo prompts: {fidelity[precision]:.3f} "
                  f"(fp32 {fidelity['fp32']:.3f})")
    return 0


def _plan(args) -> int:
    from sdrt.runtime.artifact import open_artifact
    from sdrt.runtime.plan_file import add_plans
    from sdrt.runtime.samplers import compile_plan

    if args.output is not None and (len(args.scheduler) != 1 or len(args.steps) != 1):
        raise CommandError("With -o, name one --scheduler and one --steps: a plan file holds one plan.")
    artifact = open_artifact(args.artifact, verify_checksums=False)  # refuses what is not an artifact, saying why
    if args.output is None:
        for name in add_plans(artifact.root, args.scheduler, args.steps):
            print(f"added {name}")
        return 0
    plan = compile_plan(args.scheduler[0], artifact.pipeline["scheduler"], args.steps[0])
    document = {**plan.to_json(), "num_inference_steps": args.steps[0]}
    Path(args.output).write_text(json.dumps(document, indent=1), encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CommandError(f"--size must look like 512x512 (WIDTHxHEIGHT), got {text!r}.") from None
    return width, height


def _generate(args) -> int:
    output = Path(args.output).expanduser()
    if not output.parent.is_dir():
        raise CommandError(f"The folder {output.parent} for the output image does not exist; create it or choose "
                           "another --output.")
    if output.suffix.lower() != ".png":
        raise CommandError(f"--output must be a .png file, got {output.name}.")
    width, height = _parse_size(args.size) if args.size else (None, None)
    image = _open_image(args.image, "--image") if args.image is not None else None
    mask = _open_image(args.mask, "--mask") if args.mask is not None else None
    if image is None and (mask is not None or args.outpaint):
        raise CommandError("--mask and --outpaint work on an input image: add --image PATH.")
    if mask is not None and args.outpaint:
        raise CommandError("Choose --mask (inpaint inside the image) or --outpaint (extend it), not both.")
    pipe = _load(args)
    for embedding in args.embedding:
        path, colon, word = embedding.rpartition(":")
        if not colon or not path or "/" in word or "\\" in word:  # FILE alone (a colon in its path)
            path, word = embedding, None
        pipe.load_textual_inversion(path, token=word)
    if args.lora:
        pipe.load_loras([(spec.path, spec.strength) for spec in map(LoraSpec.parse, args.lora)])
    if args.outpaint:
        image, mask = outpaint_canvas(image, **_parse_sides(args.outpaint), multiple=pipe.size_multiple)
    strength = args.strength if args.strength is not None else 1.0 if mask is not None else 0.8
    steps = len(pipe.plan(args.steps, args.scheduler, strength if image is not None else None).steps) \
        if args.steps >= 1 else 0
    bar = _progress_bar(steps, "step") if steps else None

    def on_step(index: int, timestep: float, latents) -> None:
        if bar is not None:
            bar.update(1)

    try:
        inpainting = {"mask_image": mask, "mask_blur": args.mask_blur} if mask is not None else {}
        result = pipe(args.prompt, args.negative, image=image, strength=strength, **inpainting,
                      num_inference_steps=args.steps, guidance_scale=args.guidance,
                      height=height, width=width, seed=args.seed, scheduler=args.scheduler,
                      num_images_per_prompt=args.num_images, watermark=args.watermark, callback=on_step)
    finally:
        if bar is not None:
            bar.close()
    paths = [output] if len(result.images) == 1 else [
        output.with_name(f"{output.stem}-{i + 1}{output.suffix}") for i in range(len(result.images))]
    for image, path in zip(result.images, paths):
        _save_png(image, path)
    steps = result.timings["steps"]
    per_step = sum(steps) / len(steps) if steps else 0.0
    encode = f"  encode {result.timings['vae_encoder']:.2f}s" if "vae_encoder" in result.timings else ""
    print(f"wrote {', '.join(str(p) for p in paths)}  {pipe.backend}  seed {result.seed}  "
          f"sampler {result.plan.sampler}  text {result.timings['text_encoder']:.2f}s{encode}  "
          f"{len(steps)} steps {per_step:.3f}s/step  vae {result.timings['vae_decoder']:.2f}s  "
          f"total {result.timings['total']:.2f}s")
    return 0


def _open_image(path: Path, option: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path.expanduser()) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise CommandError(f"{option} {path}: no such file.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise CommandError(f"{option} {path} is not an image PIL can read ({error}).") from None


def _check_watermarks(args) -> int:
    import numpy as np

    from sdrt.runtime.watermark import STABLE_DIFFUSION_MARK, read

    every = True
    for path in args.images:
        found = read(np.asarray(_open_image(path, "image")), len(STABLE_DIFFUSION_MARK))
        marked = found == STABLE_DIFFUSION_MARK
        every &= marked
        print(f"{path}: {'watermarked (' + found.decode() + ')' if marked else 'no watermark found'}")
    return 0 if every else 1


def _parse_sides(text: str) -> dict[str, int]:
    sides = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in ("left", "right", "top", "bottom") or not value.strip().isdigit() or name in sides:
            raise CommandError(f"--outpaint takes SIDE=PIXELS pairs, each side once, e.g. left=128,right=64 (sides: "
                               f"left, right, top, bottom); got {text!r}.")
        sides[name] = int(value)
    return sides


def _evaluate(args) -> int:
    prompts = load_evaluation_prompts()
    if args.prompts is not None:
        if not 1 <= args.prompts <= len(prompts):
            raise CommandError(f"--prompts must be between 1 and {len(prompts)}, got {args.prompts}.")
        prompts = prompts[:args.prompts]
    pipe = _load(args)
    bar = _progress_bar(len(prompts) * len(args.seeds), "image")

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(1)

    try:
        scores = evaluate(pipe, prompts, args.seeds, steps=args.steps, guidance=args.guidance,
                          scheduler=args.scheduler, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    scores.update(artifact=str(pipe.artifact.root), backend=pipe.backend, precision=args.precision,
                  sampler=pipe.plan(args.steps, args.scheduler).sampler, steps=args.steps, guidance=args.guidance,
                  seeds=list(args.seeds), prompts=len(prompts))
    if args.json:
        print(json.dumps(scores))
        return 0
    print(f"prompt fidelity  {pipe.artifact.root}  {pipe.backend} {args.precision}  {scores['sampler']} "
          f"{args.steps} steps  guidance {args.guidance}  {len(prompts)} prompts x seeds "
          f"{' '.join(str(s) for s in args.seeds)}")
    for name in (*ATTRIBUTES, "overall"):
        if name in scores:
            print(f"  {name:11} {scores[name]:.3f}")
    print(f"  {scores['images']} images, {scores['seconds_per_image']:.3f} s per image after load")
    return 0


def _save_png(image, path: Path) -> None:
    """Write through a temporary file in the same folder, so no half-written PNG is left."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
