"""`sdrt quantize`: add a precision variant to an artifact, with its quality report."""
from __future__ import annotations

from pathlib import Path

from ._common import CommandError, parse_size


def add_parser(commands, name: str, summary: str) -> None:
    from sdrt.runtime.backends import BACKENDS
    from sdrt.runtime.precisions import VARIANT_PRECISIONS

    quantize = commands.add_parser(
        name, help=summary,
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


def run(args, argv: list[str]) -> int:
    from sdrt.export.variants import make_variants  # refuses a missing export extra by name

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
        width, height = parse_size(args.calibration_size, "--calibration-size")
        size = (height, width)
    report = make_variants(args.artifact, args.precision, args.components, report_backend=args.report_backend,
                           steps=args.report_steps, fidelity_prompts=args.fidelity, calibration_prompts=prompts,
                           calibration_steps=args.calibration_steps, calibration_size=size)
    report_quality(args.precision, report)
    return 0


def db(value: float | None) -> str:
    return "inf (identical)" if value is None else f"{value:.1f} dB"


def report_quality(precision: str, report: dict) -> None:
    """Print a variant's quality report in two lines."""
    if report.get("measured") is False:
        print(f"{precision}: made; its quality report is not measured: {report['reason']}. Run `sdrt quantize` "
              f"again where {report['backend']} runs on {report['device']} to measure it.")
        return
    print(f"{precision}: {', '.join(k for k, v in report['precisions'].items() if v == precision)}; "
          f"{report['images']} images vs fp32 on {report['backend']}: PSNR {db(report['psnr_db_mean'])} "
          f"(min {db(report['psnr_db_min'])}), SSIM {report['ssim_mean']:.4f} (min {report['ssim_min']:.4f})")
    if "fidelity" in report:
        fidelity = report["fidelity"]
        print(f"{precision}: prompt fidelity on {fidelity['prompts']} demo prompts: {fidelity[precision]:.3f} "
              f"(fp32 {fidelity['fp32']:.3f})")
