"""`sdrt bench`: parse the request, prepare the model and the engines, run them, write the report."""
from __future__ import annotations

import datetime
import importlib
import shlex
import shutil
import sys
from pathlib import Path

from ..runtime.backends import BACKENDS, available_backends, backend_module
from ..runtime.cache import user_cache
from ..runtime.precisions import PRECISION_NAMES
from ..runtime.samplers import SAMPLERS
from .builtin import BUILTIN_MODELS, builtin_model
from .harness import BenchmarkError, Engine, Settings, run_engines, sdrt_engine
from .peers import PEERS, parse_compare, peer_engines, peer_python

# which peer an sdrt backend is measured against first (for taking turns in pairs)
NATURAL_PEER = {"openvino": "optimum-intel", "onnxruntime": "optimum-onnx"}


def add_parser(commands) -> None:
    bench = commands.add_parser(
        "bench", help="measure latency and memory, against peers if asked",
        description="Measure load time, each network, end-to-end images, steps/s, peak memory and size on disk "
                    "for sdrt on each backend and precision, and with --compare for diffusers, optimum-intel and "
                    "optimum's ONNX Runtime pipeline on the same weights, prompt, size, steps, sampler and "
                    "initial latents. Writes JSON lines, a Markdown report and PNG plots. Needs the bench extra: "
                    "pip install 'sdrt[bench]'.")
    source = bench.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, choices=list(BUILTIN_MODELS),
                        help="a built-in model: a family's random weights at its real sizes, built and exported "
                             "once into the cache with a random TAESD-size VAE added as taesd (needs the export "
                             "extra the first time); demo is the embedded demo model (default when no --artifact)")
    source.add_argument("--artifact", type=Path, default=None, help="an artifact folder to measure")
    bench.add_argument("--checkpoint", type=Path, default=None,
                       help="with --artifact and --compare: the diffusers folder it was exported from")
    bench.add_argument("--backends", default=None,
                       help="comma-separated sdrt backends (default: every installed one)")
    bench.add_argument("--precisions", default="fp32",
                       help="comma-separated: fp32, bf16, or variants the artifact stores (fp16, int8-weights, "
                            "int4-weights; made by `sdrt quantize`) (default fp32)")
    bench.add_argument("--vae", default="default",
                       help="comma-separated VAEs to measure each sdrt engine with: default (the artifact's own) "
                            "or the name of an added one, e.g. taesd (default: default)")
    bench.add_argument("--compare", default=None, help=f"comma-separated peers: {', '.join(PEERS)}")
    bench.add_argument("--peer-python", default=None,
                       help="the Python interpreter of the peer environment (default: the one `python -m "
                            "sdrt.benchmarks.peers setup` made, else this one)")
    bench.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's)")
    bench.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    bench.add_argument("--guidance", type=float, default=7.5, help="guidance scale (default 7.5)")
    bench.add_argument("--sampler", default="dpmpp_2m", choices=list(SAMPLERS), help="sampler (default dpmpp_2m)")
    bench.add_argument("--prompt", default=Settings.prompt)
    bench.add_argument("--negative-prompt", default="")
    bench.add_argument("--seed", type=int, default=42, help="seed of the shared initial latents (default 42)")
    bench.add_argument("--repeats", type=int, default=3, help="measured runs of each figure (default 3)")
    bench.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default 1)")
    bench.add_argument("--together", type=int, default=2,
                       help="engines loaded at once, taking turns image by image (default 2: each sdrt engine "
                            "with its natural peer; more needs more memory)")
    bench.add_argument("--no-cold-start", action="store_true",
                       help="skip the fresh-process load and first image of each engine")
    bench.add_argument("--threads", type=int, default=None, help="CPU threads per engine (default: all cores)")
    bench.add_argument("--cache", type=Path, default=None,
                       help="where built-in models and peer conversions go (default: $SDRT_CACHE or ~/.cache/sdrt)")
    bench.add_argument("--out", type=Path, default=None,
                       help="output folder (default: sdrt-bench/DATE-MODEL-SIZE in the current folder)")


def run(args, argv: list[str], console=None) -> int:
    """Run `sdrt bench` as parsed into `args` (`argv`: the arguments after "bench", for the record)."""
    for module, extra in (("rich", "bench"), ("psutil", "bench"), ("matplotlib", "bench")):
        try:
            importlib.import_module(module)
        except ImportError:
            raise BenchmarkError(f"sdrt bench needs {module}: pip install 'sdrt[{extra}]'.") from None
    from rich.console import Console

    from ..runtime.artifact import open_artifact
    from ..runtime.noise import INITIAL_LATENTS_STREAM, gaussian_noise
    from . import report
    from .machine import git_commit, machine_info, package_versions

    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 200)
    backends = _names(args.backends, available_backends(), BACKENDS, "backend")
    precisions = _names(args.precisions, None, PRECISION_NAMES, "precision")
    vaes = [None if name == "default" else name for name in _names(args.vae, ["default"], None, "VAE")]
    peers = parse_compare(args.compare)
    cache = args.cache or user_cache()

    if args.artifact is not None:
        if not (args.artifact / "sdrt.json").is_file():
            raise BenchmarkError(f"{args.artifact} is not an sdrt artifact folder (it has no sdrt.json).")
        if peers and args.checkpoint is None:
            raise BenchmarkError("--compare runs the peers on the diffusers folder the artifact was exported from; "
                                 "pass it with --checkpoint.")
        model_name, artifact, checkpoint = args.artifact.name, args.artifact, args.checkpoint
    else:
        model = builtin_model(args.model or "demo", cache,
                              progress=lambda done, total, what: console.print(f"preparing the model: {what}"))
        model_name, artifact, checkpoint = model.name, model.artifact, model.checkpoint
    manifest = open_artifact(artifact, verify_checksums=False)
    unknown_vaes = [vae for vae in vaes if vae is not None and vae not in manifest.vaes]
    if unknown_vaes:
        added = ", ".join(manifest.vaes) or "none"
        raise BenchmarkError(f"The artifact {artifact} has no VAE named {', '.join(unknown_vaes)} (added VAEs: "
                             f"{added}); add one with sdrt add-vae.")
    pipeline = manifest.pipeline
    height, width = _size(args.size, tuple(pipeline["default_size"]),
                          pipeline.get("size_multiple", pipeline["vae_scale_factor"]))
    settings = Settings(prompt=args.prompt, negative_prompt=args.negative_prompt, height=height, width=width,
                        steps=args.steps, guidance=args.guidance, sampler=args.sampler, seed=args.seed,
                        repeats=args.repeats, warmup=args.warmup, together=args.together,
                        cold_start=not args.no_cold_start)

    stamp = datetime.datetime.now(datetime.timezone.utc)
    out = args.out or Path("sdrt-bench") / f"{stamp:%Y%m%d-%H%M%S}-{model_name}-{width}x{height}"
    if out.exists() and any(out.iterdir()):
        raise BenchmarkError(f"Output folder {out} is not empty; choose another --out.")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)

    # The initial latents every engine starts from: sdrt's portable generator, saved for the peers.
    import numpy as np

    factor = pipeline["vae_scale_factor"]
    latents_path = partial / "latents.npy"
    np.save(latents_path, gaussian_noise(settings.seed, (1, pipeline["latent_channels"], height // factor,
                                                          width // factor), INITIAL_LATENTS_STREAM))
    ours, missing = [], {}
    for backend in backends:
        offered = backend_module(backend).CAPABILITIES.precisions
        for precision in precisions:
            why = _why_not(manifest, backend, offered, precision)
            if why is not None:
                missing[f"sdrt/{backend}/{precision}"] = why
                continue
            ours.extend(sdrt_engine(artifact, backend, precision, args.threads, vae) for vae in vaes)
    theirs, peers_missing = peer_engines(peers, precisions, peer_python(args.peer_python), checkpoint,
                                         latents_path, cache / "bench" / model_name / "peers", args.threads,
                                         calibration=_int8_calibration(manifest))
    missing.update(peers_missing)
    engines = pair_order(ours, theirs)
    for name, why in missing.items():
        console.print(f"[yellow]not run[/yellow]: {name}: {why}")

    try:
        results = run_engines(engines, settings, partial, progress=lambda message: console.print(message))
    except BenchmarkError as error:
        raise BenchmarkError(f"{error}\n(everything measured so far, with each worker's log, is in {partial})") \
            from None
    reference, agreement = report.image_agreement(results)
    ratio_rows = report.ratios(results)
    header = {"date": stamp.isoformat(timespec="seconds"),
              "command": "sdrt bench " + shlex.join(argv),
              "model": model_name, "settings": settings.__dict__, "machine": machine_info(),
              "versions": package_versions(), "commit": git_commit(), "engines": [e.name for e in engines],
              "peer_versions": {r.engine.name: r.versions for r in results if r.versions},
              "networks": {r.engine.name: r.networks for r in results if r.networks},
              "missing": missing, "reference": reference}
    report.write_jsonl(partial / "results.jsonl", header, results, agreement, ratio_rows)
    plots = report.plot(results, partial)
    (partial / "report.md").write_text(report.markdown(header, results, agreement, ratio_rows,
                                                       [p.name for p in plots]))
    partial.rename(out)
    report.print_tables(console, results, ratio_rows, missing)
    console.print(f"results: {out}")
    return 0


def pair_order(ours: list[Engine], theirs: list[Engine]) -> list[Engine]:
    """sdrt engines each followed by its natural peer at the same precision (openvino with
    optimum-intel, onnxruntime with optimum-onnx), so that pairs load together and take turns;
    the remaining peers last."""
    left = list(theirs)
    ordered = []
    for engine in ours:
        ordered.append(engine)
        match = next((peer for peer in left if peer.precision == engine.precision
                      and peer.kind == NATURAL_PEER.get(engine.spec["backend"])), None)
        if match is not None:
            left.remove(match)
            ordered.append(match)
    return ordered + left


def _why_not(artifact, backend: str, offered: tuple[str, ...], precision: str) -> str | None:
    """Why sdrt on `backend` cannot run `precision` on this artifact, or None when it can: a
    compute precision the backend offers, or stored variants in a format the backend reads."""
    from ..runtime.errors import SdrtError
    from ..runtime.precisions import resolve_precisions

    if precision in ("fp32", "bf16"):
        return None if precision in offered else f"the {backend} backend offers {', '.join(offered)}"
    try:
        chosen = resolve_precisions(artifact, precision, backend)
    except SdrtError as error:
        return str(error)
    formats = {artifact.variant(name, value).entry.get("format", "onnx") for name, value in chosen.items()
               if value not in ("fp32", "bf16")}
    if backend == "onnxruntime" and "openvino" in formats:
        return f"the {precision} variants are OpenVINO models"
    if "onnxruntime-cuda" in formats:
        return f"the {precision} variants run on ONNX Runtime's CUDA provider only"
    return None


def _int8_calibration(artifact) -> dict | None:
    """How the artifact's int8 UNet was calibrated and computes, for peers that make their own
    int8 model: the same prompts, number of samples and float precision; None without one."""
    entry = artifact.manifest["components"][artifact.component_for_role("denoiser").spec.name]
    variant = entry.get("variants", {}).get("int8", {})
    calibration = variant.get("made_by", {}).get("calibration")
    return None if calibration is None else {"prompts": calibration["prompts"], "samples": calibration["samples"],
                                             "compute": variant.get("compute", "fp32")}


def _names(text: str | None, default: list[str] | None, known, what: str) -> list[str]:
    """The comma-separated names in `text` (else `default`), each one of `known` unless that is None."""
    names = [n.strip() for n in text.split(",") if n.strip()] if text else list(default or [])
    unknown = [n for n in names if known is not None and n not in known]
    if unknown:
        raise BenchmarkError(f"Unknown {what}(s) {', '.join(unknown)}; choose from: {', '.join(known)}.")
    if not names:
        raise BenchmarkError(f"No {what} to measure; install one: pip install 'sdrt[openvino]'.")
    return names


def _size(text: str | None, default: tuple[int, int], multiple: int) -> tuple[int, int]:
    """(height, width) from WIDTHxHEIGHT."""
    if text is None:
        return default
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BenchmarkError(f"--size must look like 512x512 (WIDTHxHEIGHT), got {text!r}.") from None
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        raise BenchmarkError(f"--size must be positive multiples of {multiple} for this model, got {text!r}.")
    return height, width

