"""What `sdrt bench` writes: JSON lines with every figure, a Markdown report, PNG plots and a
table on the terminal. Ratios are sdrt / peer on medians."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .harness import DEFINITIONS, METRICS, EngineResult
from .stats import ratio

LATENCY_PLOTS = ("image_s", "text_encoder_s", "unet_batch1_s", "unet_batch2_s", "vae_decoder_s", "vae_encoder_s")
MEMORY_PLOTS = ("first_run_peak_rss_bytes", "steady_peak_rss_bytes")
# The figures of the Markdown summary table, in order; the JSON lines hold everything.
SUMMARY = ("image_s", "steps_per_s", "first_image_s", "load_s", "load_warm_s", "cold_start_s", "text_encoder_s",
           "unet_batch1_s", "unet_batch2_s", "vae_decoder_s", "vae_encoder_s", "first_run_peak_rss_bytes",
           "steady_peak_rss_bytes", "peak_rss_bytes", "size_bytes")


def image_agreement(results: list[EngineResult]) -> tuple[str | None, dict[str, float]]:
    """Mean absolute pixel difference (0-255 scale) of each engine's image from the reference
    engine's: diffusers fp32 when it ran, else the first fp32 engine."""
    with_images = [result for result in results if result.image is not None]
    fp32 = [result for result in with_images if result.engine.precision == "fp32"]
    reference = next((r for r in fp32 if r.engine.kind == "diffusers"), fp32[0] if fp32 else None)
    if reference is None:
        return None, {}
    from PIL import Image

    def pixels(result: EngineResult) -> np.ndarray:
        return np.asarray(Image.open(result.image).convert("RGB"), dtype=np.float64)

    expected = pixels(reference)
    return reference.engine.name, {result.engine.name: float(np.abs(pixels(result) - expected).mean())
                                   for result in with_images}


def quality_vs_own_fp32(results: list[EngineResult]) -> dict[str, dict]:
    """PSNR (dB) and SSIM of each lower-precision engine's image against the fp32 image of the
    same stack (sdrt/openvino/int8 against sdrt/openvino/fp32, optimum-intel/int8 against
    optimum-intel/fp32): what its precision costs, apart from how the stacks differ."""
    from PIL import Image

    from ..export.metrics import psnr, ssim  # numpy only: benchmarks need no export extra

    images = {result.engine.name: result.image for result in results if result.image is not None}
    found = {}
    for name, image in images.items():
        stack, precision = name.rsplit("/", 1)
        reference = images.get(f"{stack}/fp32")
        if precision == "fp32" or reference is None:
            continue
        a, b = (np.asarray(Image.open(path).convert("RGB")) for path in (reference, image))
        value = psnr(a, b)
        found[name] = {"reference": f"{stack}/fp32", "psnr_db": float(value) if np.isfinite(value) else None,
                       "ssim": float(ssim(a, b))}
    return found


def ratios(results: list[EngineResult]) -> list[dict]:
    """sdrt / peer for every figure both have, for every sdrt engine and every peer engine."""
    rows = []
    for ours in (r for r in results if not r.engine.is_peer):
        mine = ours.summaries()
        for theirs in (r for r in results if r.engine.is_peer):
            other = theirs.summaries()
            for metric in METRICS:
                if metric in mine and metric in other and other[metric].median > 0:
                    rows.append({"ours": ours.engine.name, "theirs": theirs.engine.name, "metric": metric,
                                 "ratio": ratio(mine[metric], other[metric])})
    return rows


def write_jsonl(path: Path, header: dict, results: list[EngineResult], agreement: dict[str, float],
                ratio_rows: list[dict]) -> None:
    lines = [{"type": "run", **header}]
    for result in results:
        engine = result.engine
        for metric, summary in result.summaries().items():
            lines.append({"type": "figure", "engine": engine.name, "kind": engine.kind,
                          "precision": engine.precision, "metric": metric, "unit": METRICS[metric][0],
                          "samples": result.samples[metric], **summary.as_dict()})
    for name, difference in agreement.items():
        lines.append({"type": "agreement", "engine": name, "reference": header.get("reference"),
                      "mean_abs_pixel_difference": difference})
    lines.extend({"type": "quality", "engine": name, **values} for name, values in quality_vs_own_fp32(results).items())
    lines.extend({"type": "ratio", **row} for row in ratio_rows)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def format_value(metric: str, value: float) -> str:
    unit = METRICS[metric][0]
    if unit == "bytes":
        return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.2f}"


def summary_rows(results: list[EngineResult]) -> list[list[str]]:
    """[figure, engine medians...] for every summary figure some engine has."""
    summaries = [result.summaries() for result in results]
    rows = []
    for metric in SUMMARY:
        if any(metric in s for s in summaries):
            rows.append([METRICS[metric][1]] + [format_value(metric, s[metric].median) if metric in s else "-"
                                                for s in summaries])
    return rows


def ratio_matrix(results: list[EngineResult], ratio_rows: list[dict], metric: str = "image_s") -> list[list[str]]:
    """[sdrt engine, ratio against each peer...] for one figure."""
    peers = [r.engine.name for r in results if r.engine.is_peer]
    found = {(row["ours"], row["theirs"]): row["ratio"] for row in ratio_rows if row["metric"] == metric}
    return [[ours.engine.name] + [f"{found[(ours.engine.name, peer)]:.2f}x" if (ours.engine.name, peer) in found
                                  else "-" for peer in peers]
            for ours in results if not ours.engine.is_peer]


def markdown(header: dict, results: list[EngineResult], agreement: dict[str, float], ratio_rows: list[dict],
             plots: list[str]) -> str:
    settings, machine = header["settings"], header["machine"]
    names = [result.engine.name for result in results]
    lines = [f"# sdrt bench: {header['model']}, {settings['width']}x{settings['height']}, {settings['steps']} steps "
             f"({header['date']})", "",
             f"Command: `{header['command']}`", "",
             f"Machine: {machine['cpu']}; {machine['logical_cores']} logical cores; flags "
             f"{', '.join(machine['cpu_flags']) or 'none of note'}; "
             f"{(machine['memory_bytes'] or 0) / 2**30:.0f} GiB RAM"
             + (f"; GPUs: {', '.join(g['name'] + ' (driver ' + g['driver'] + ')' for g in machine['gpus'])}"
                if machine["gpus"] else "") + ".",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in header["versions"].items())
             + (f"; sdrt commit {header['commit']}" if header.get("commit") else "") + "."
             + "".join(f" {name}: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."
                       for name, versions in header.get("peer_versions", {}).items()),
             *([("Networks (the form each ran in): " + "; ".join(
                 f"{name}: " + ", ".join(f"{network} {form}" for network, form in forms.items())
                 for name, forms in header["networks"].items()) + ".")] if header.get("networks") else []),
             f"Settings: prompt \"{settings['prompt']}\", sampler {settings['sampler']}, guidance "
             f"{settings['guidance']}, seed {settings['seed']} (the same initial latents for every engine); "
             f"{settings['warmup']} warm-up image(s), then {settings['repeats']} measured; "
             f"{settings['together']} engine(s) loaded at a time, taking turns.", ""]
    if header.get("missing"):
        lines += ["Not run: " + "; ".join(f"{name}: {why}" for name, why in header["missing"].items()),
                  ""]
    lines += ["## Medians", "", _table(["figure", *names], summary_rows(results)), "", DEFINITIONS, ""]
    if agreement:
        lines += [f"Mean absolute pixel difference from {header['reference']} (0-255): "
                  + ", ".join(f"{name} {value:.3f}" for name, value in agreement.items()) + ".", ""]
    quality = quality_vs_own_fp32(results)
    if quality:
        lines += ["Against the same stack's fp32 image, PSNR / SSIM: " + ", ".join(
            f"{name} {'identical' if q['psnr_db'] is None else format(q['psnr_db'], '.1f') + ' dB'} / "
            f"{q['ssim']:.4f}" for name, q in quality.items()) + ".", ""]
    if any(r.engine.is_peer for r in results):
        peers = [r.engine.name for r in results if r.engine.is_peer]
        lines += ["## sdrt / peer, image end to end (below 1: sdrt is faster)", "",
                  _table(["sdrt", *peers], ratio_matrix(results, ratio_rows)), ""]
        lines += ["## sdrt / peer, every figure (times and memory: below 1 is better; steps/s: above 1)", "",
                  _table(["sdrt", "peer", "figure", "ratio"],
                         [[row["ours"], row["theirs"], METRICS[row["metric"]][1], f"{row['ratio']:.2f}x"]
                          for row in ratio_rows]), ""]
    lines += ["## Every figure: median / p90 / min / max (count)", ""]
    detail = []
    for result in results:
        for metric, s in result.summaries().items():
            detail.append([result.engine.name, METRICS[metric][1]]
                          + [format_value(metric, v) for v in (s.median, s.p90, s.min, s.max)] + [str(s.count)])
    lines += [_table(["engine", "figure", "median", "p90", "min", "max", "n"], detail), ""]
    lines += [f"![{Path(plot).stem}]({Path(plot).name})" for plot in plots]
    return "\n".join(lines) + "\n"


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def print_tables(console, results: list[EngineResult], ratio_rows: list[dict], missing: dict[str, str]) -> None:
    from rich.table import Table

    table = Table(title="medians")
    table.add_column("figure")
    for result in results:
        table.add_column(result.engine.name, justify="right")
    for row in summary_rows(results):
        table.add_row(*row)
    console.print(table)
    if any(r.engine.is_peer for r in results):
        matrix = Table(title="sdrt / peer, image end to end (below 1: sdrt is faster)")
        matrix.add_column("sdrt")
        for result in results:
            if result.engine.is_peer:
                matrix.add_column(result.engine.name, justify="right")
        for row in ratio_matrix(results, ratio_rows):
            matrix.add_row(*row)
        console.print(matrix)
    for name, why in missing.items():
        console.print(f"not run: {name} ({why})")


def plot(results: list[EngineResult], out: Path) -> list[Path]:
    """latency.png (one panel per component) and memory.png; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for file_name, metrics, scale, unit in (("latency.png", LATENCY_PLOTS, 1.0, "s"),
                                            ("memory.png", MEMORY_PLOTS, 2.0**-30, "GiB")):
        present = [m for m in metrics if any(m in r.samples for r in results)]
        if not present:
            continue
        figure, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 0.45 * len(results) + 1.6),
                                    squeeze=False)
        for axis, metric in zip(axes[0], present):
            names = [r.engine.name for r in results if metric in r.samples]
            values = [float(np.median(r.samples[metric])) * scale for r in results if metric in r.samples]
            colours = ["tab:blue" if not r.engine.is_peer else "tab:gray" for r in results if metric in r.samples]
            axis.barh(names, values, color=colours)
            axis.invert_yaxis()
            axis.set_title(METRICS[metric][1], fontsize=9)
            axis.set_xlabel(unit)
            if axis is not axes[0][0]:
                axis.set_yticklabels([])
        figure.tight_layout()
        path = out / file_name
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
