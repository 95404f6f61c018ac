"""`sdrt plan`: compile sampler plans into an artifact (or a file) for C++ hosts."""
from __future__ import annotations

import json
from pathlib import Path

from ._common import CommandError


def add_parser(commands, name: str, summary: str) -> None:
    from sdrt.runtime.samplers import SAMPLERS

    plan = commands.add_parser(
        name, help=summary,
        description="Compile sampler plans (the timesteps and update coefficients of a scheduler, as plain data) "
                    "for the artifact's scheduler config and add them to its sampler_plans.json, which C++ hosts "
                    "read; `sdrt export` already stores every sampler at 1-6, 8, 10, 15, 20, 25, 30, 40 and 50 "
                    "steps. With -o, write one plan to a file instead.")
    plan.add_argument("artifact", help="the artifact folder")
    plan.add_argument("--scheduler", nargs="+", required=True, choices=list(SAMPLERS), metavar="NAME",
                      help=f"samplers to compile: {', '.join(SAMPLERS)}")
    plan.add_argument("--steps", nargs="+", type=int, required=True, metavar="N", help="step counts to compile")
    plan.add_argument("--denoising-start", nargs="+", type=float, default=[], metavar="F",
                      help="also compile the hand-off plans a refiner runs to finish another model's latents "
                           "stopped at F of the schedule (sdrt-host --refiner --high-noise-frac F; `sdrt export` "
                           "stores 0.8 for SDXL models)")
    plan.add_argument("-o", "--output", default=None,
                      help="write the plan (one scheduler, one step count) to this JSON file instead")


def run(args, argv: list[str]) -> int:
    from sdrt.runtime.artifact import open_artifact
    from sdrt.runtime.plan_file import add_plans
    from sdrt.runtime.samplers import compile_plan

    if args.output is not None and (len(args.scheduler) != 1 or len(args.steps) != 1):
        raise CommandError("With -o, name one --scheduler and one --steps: a plan file holds one plan.")
    if args.output is not None and args.denoising_start:
        raise CommandError("A hand-off plan is read from the refiner's artifact; leave out -o with --denoising-start.")
    artifact = open_artifact(args.artifact, verify_checksums=False)  # refuses what is not an artifact, saying why
    if args.output is None:
        for name in add_plans(artifact.root, args.scheduler, args.steps, args.denoising_start):
            print(f"added {name}")
        return 0
    plan = compile_plan(args.scheduler[0], artifact.pipeline["scheduler"], args.steps[0])
    document = {**plan.to_json(), "num_inference_steps": args.steps[0]}
    Path(args.output).write_text(json.dumps(document, indent=1), encoding="utf-8")
    print(f"wrote {args.output}")
    return 0
