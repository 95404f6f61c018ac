"""`sdrt info`: validate an artifact and describe it."""
from __future__ import annotations

import json

from .quantize import db


def add_parser(commands, name: str, summary: str) -> None:
    info = commands.add_parser(name, help=summary,
                               description="Validate an artifact's manifest against its JSON Schema and its files "
                                           "against their checksums, then list its components.")
    info.add_argument("artifact", help="the artifact folder")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")


def run(args, argv: list[str]) -> int:
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
        _component(manifest, name, entry)
    for precision, report in manifest.get("quality_reports", {}).items():
        if report.get("measured") is False:
            print(f"\nquality {precision}: not measured ({report['reason']})")
            continue
        print(f"\nquality {precision}: {report['images']} images ({report['size'][1]}x{report['size'][0]}, "
              f"{report['steps']} steps, {report['sampler']}) vs fp32 on {report['backend']}: PSNR "
              f"{db(report['psnr_db_mean'])} (min {db(report['psnr_db_min'])}), SSIM {report['ssim_mean']:.4f} "
              f"(min {report['ssim_min']:.4f})")
        if "fidelity" in report:
            fidelity = report["fidelity"]
            print(f"  prompt fidelity on {fidelity['prompts']} demo prompts: {fidelity[precision]:.3f} "
                  f"(fp32 {fidelity['fp32']:.3f})")
    return 0


def _component(manifest: dict, name: str, entry: dict) -> None:
    size = sum(manifest["files"][f]["size"] for f in entry["files"])
    diff = entry.get("max_abs_diff_vs_torch")
    diff_text = "n/a" if diff is None else f"{diff:.1e}"
    role = entry["role"] + (f", the VAE {entry['vae']!r} (--vae {entry['vae']})" if entry.get("vae") else "")
    print(f"\n{name}  [{role}]  {entry['precision']}  opset {entry['opset']}  "
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
