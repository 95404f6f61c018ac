"""`sdrt eval`: prompt fidelity of an artifact of the demo model."""
from __future__ import annotations

import json

from ._common import CommandError, engine_arguments, load_pipeline, progress_bar


def add_parser(commands, name: str, summary: str) -> None:
    from sdrt.models.demo.evaluation import EVAL_GUIDANCE, EVAL_IMAGE_SEEDS, EVAL_STEPS

    evaluate = commands.add_parser(
        name, help=summary,
        description="Generate the demo model's held-out evaluation prompts (100 prompts x seeds 1 and 2) and "
                    "report the fraction of stated attributes (shape, colour, background, size, position) that "
                    "the checker reads back from the images, per attribute. Works on any artifact exported from "
                    "the demo model, on any backend and precision.")
    engine_arguments(evaluate, EVAL_STEPS, EVAL_GUIDANCE)
    evaluate.add_argument("--prompts", type=int, default=None,
                          help="score only the first N evaluation prompts (default: all 100)")
    evaluate.add_argument("--seeds", type=int, nargs="+", default=list(EVAL_IMAGE_SEEDS),
                          help="seeds per prompt (default: 1 2)")
    evaluate.add_argument("--json", action="store_true", help="print the scores as one JSON object")


def run(args, argv: list[str]) -> int:
    from sdrt.models.demo.evaluation import evaluate, load_evaluation_prompts
    from sdrt.models.demo.scenes import ATTRIBUTES

    prompts = load_evaluation_prompts()
    if args.prompts is not None:
        if not 1 <= args.prompts <= len(prompts):
            raise CommandError(f"--prompts must be between 1 and {len(prompts)}, got {args.prompts}.")
        prompts = prompts[:args.prompts]
    pipe = load_pipeline(args)
    bar = progress_bar(len(prompts) * len(args.seeds), "image")

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
