"""`sdrt generate`: text-to-image, image-to-image, inpainting and outpainting from the command line."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import CommandError, engine_arguments, load_pipeline, open_image, parse_size, progress_bar, save_png

# what `sdrt generate` does without --steps and --guidance
STEPS, GUIDANCE = 20, 7.5
SIDES = ("left", "right", "top", "bottom")


def add_parser(commands, name: str, summary: str) -> None:
    generate = commands.add_parser(name, help=summary,
                                   description="Text-to-image on an artifact folder, or on the embedded demo "
                                               "model (64x64 coloured shapes) without --artifact.")
    generate.add_argument("prompt", help="what the image should show")
    generate.add_argument("--negative", default=None, help="what the image should not show (negative prompt)")
    generate.add_argument("--prompt-2", default=None,
                          help="SDXL: the prompt of the second text encoder (default: the prompt)")
    generate.add_argument("--negative-2", default=None,
                          help="SDXL: the negative prompt of the second text encoder (default: --negative)")
    generate.add_argument("--clip-skip", type=int, default=None,
                          help="condition on this many text-encoder layers before the last one the model was trained "
                               "with (diffusers' clip_skip; the web UIs' \"CLIP skip\" N is N - 1); default 0")
    generate.add_argument("--vae", default=None, metavar="NAME",
                          help="decode (and encode) with a VAE added to the artifact under NAME, e.g. taesd (the tiny "
                               "autoencoder: `sdrt add-vae`); default: the checkpoint's own")
    generate.add_argument("--vae-tiling", nargs="?", type=int, const=True, default=False, metavar="PX",
                          help="decode large images in overlapping tiles of the VAE's training size (diffusers' "
                               "enable_vae_tiling), or of PX pixels a side: bounded memory for large images")
    generate.add_argument("--refiner", default=None, metavar="ARTIFACT",
                          help="SDXL: finish the image with this refiner artifact from --high-noise-frac of the "
                               "schedule on (diffusers' ensemble of experts)")
    generate.add_argument("--high-noise-frac", type=float, default=0.8,
                          help="with --refiner: the fraction of the schedule the base model runs (default 0.8)")
    for flag, what in (("original-size", "the size the model is told the image had before cropping"),
                       ("target-size", "the size the model is told to aim for"),
                       ("crops-coords-top-left", "the crop's top-left corner the model is told of")):
        form = "TOP,LEFT" if flag.startswith("crops") else "WxH"
        default = "0,0" if flag.startswith("crops") else "the image's size"
        generate.add_argument(f"--{flag}", default=None, metavar=form,
                              help=f"SDXL: {what} (diffusers' {flag.replace('-', '_')}; default {default})")
        generate.add_argument(f"--negative-{flag}", default=None, metavar=form,
                              help="SDXL: the same for the unconditional half (default: the positive ones; once one "
                                   "negative condition is given, the other sizes are the positive ones, the crop 0,0)")
    generate.add_argument("--aesthetic-score", type=float, default=None,
                          help="SDXL refiner: the aesthetic score it is conditioned on (default 6)")
    generate.add_argument("--negative-aesthetic-score", type=float, default=None,
                          help="SDXL refiner: the unconditional half's (default 2.5)")
    engine_arguments(generate, STEPS, GUIDANCE)
    generate.add_argument("--seed", type=int, default=None,
                          help="seed of sdrt's portable noise generator; the same seed gives the same image on "
                               "every backend (default: random, printed)")
    generate.add_argument("--size", default=None,
                          help="WIDTHxHEIGHT in pixels, multiples of the model's size step (`sdrt info` shows it; "
                               "default: the model's size)")
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


def run(args, argv: list[str]) -> int:
    from sdrt.runtime.image_input import outpaint_canvas
    from sdrt.runtime.lora import LoraSpec

    output = Path(args.output).expanduser()
    if not output.parent.is_dir():
        raise CommandError(f"The folder {output.parent} for the output image does not exist; create it or choose "
                           "another --output.")
    if output.suffix.lower() != ".png":
        raise CommandError(f"--output must be a .png file, got {output.name}.")
    width, height = parse_size(args.size) if args.size else (None, None)
    image = open_image(args.image, "--image") if args.image is not None else None
    mask = open_image(args.mask, "--mask") if args.mask is not None else None
    if image is None and (mask is not None or args.outpaint):
        raise CommandError("--mask and --outpaint work on an input image: add --image PATH.")
    if mask is not None and args.outpaint:
        raise CommandError("Choose --mask (inpaint inside the image) or --outpaint (extend it), not both.")
    sides = _parse_sides(args.outpaint) if args.outpaint else None
    if args.refiner is not None and image is not None:
        raise CommandError("--refiner finishes a text-to-image run; leave out --image.")
    pipe = load_pipeline(args)
    refiner = load_pipeline(args, args.refiner) if args.refiner is not None else None
    for embedding in args.embedding:
        path, colon, word = embedding.rpartition(":")
        if not colon or not path or "/" in word or "\\" in word:  # FILE alone (a colon in its path)
            path, word = embedding, None
        pipe.load_textual_inversion(path, token=word)
    if args.lora:
        pipe.load_loras([(spec.path, spec.strength) for spec in map(LoraSpec.parse, args.lora)])
    if sides:
        image, mask = outpaint_canvas(image, **sides, multiple=pipe.size_multiple)
    inpainting = {"mask_image": mask, "mask_blur": args.mask_blur} if mask is not None else {}
    family = {"clip_skip": args.clip_skip}
    if args.prompt_2 is not None or args.negative_2 is not None:
        family.update(prompt_2=args.prompt_2, negative_prompt_2=args.negative_2)
    shared = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, scheduler=args.scheduler, **family,
                  **_size_conditions(args))
    handoff = {} if refiner is None else {"denoising_end": args.high_noise_frac, "output_type": "latent"}
    request = pipe.request(args.prompt, args.negative, image=image, strength=args.strength, **inpainting,
                           height=height, width=width, seed=args.seed, num_images_per_prompt=args.num_images,
                           watermark=args.watermark and refiner is None, **shared, **handoff)
    def refine(latents):
        assert refiner is not None
        return refiner.request(args.prompt, args.negative, image=latents, denoising_start=args.high_noise_frac,
                               seed=request.seed, watermark=args.watermark, **shared)

    steps = len(request.plan.steps)
    if refiner is not None:  # checked before the base runs, on latents of the shape it will give
        shape = (request.batch_size, pipe.latent_channels, *(side // pipe.vae_scale_factor for side in
                                                             (request.height, request.width)))
        steps += len(refine(np.zeros(shape, np.float32)).plan.steps)
    bar = progress_bar(steps, "step") if steps else None

    def on_step(index: int, timestep: float, latents) -> None:
        if bar is not None:
            bar.update(1)

    try:
        result = pipe.run(request, callback=on_step)
        if refiner is not None:
            base = result.timings
            result = refiner.run(refine(result.images), callback=on_step)
            for name in ("steps", "text_encoder", "total"):  # both models' times
                result.timings[name] = base[name] + result.timings[name]  # type: ignore[operator]
    finally:
        if bar is not None:
            bar.close()
    paths = [output] if len(result.images) == 1 else [
        output.with_name(f"{output.stem}-{i + 1}{output.suffix}") for i in range(len(result.images))]
    for picture, path in zip(result.images, paths):
        save_png(picture, path)
    steps = result.timings["steps"]
    assert isinstance(steps, list)  # one time per step (the other timings are floats)
    per_step = sum(steps) / len(steps) if steps else 0.0
    encode = f"  encode {result.timings['vae_encoder']:.2f}s" if "vae_encoder" in result.timings else ""
    print(f"wrote {', '.join(str(p) for p in paths)}  {pipe.backend}  seed {result.seed}  "
          f"sampler {result.plan.sampler}  text {result.timings['text_encoder']:.2f}s{encode}  "
          f"{len(steps)} steps {per_step:.3f}s/step  vae {result.timings['vae_decoder']:.2f}s  "
          f"total {result.timings['total']:.2f}s")
    return 0


def _size_conditions(args) -> dict:
    """SDXL's size conditions given on the command line, as the API's (height, width) / (top, left) pairs."""
    conditions: dict = {}
    for prefix in ("", "negative_"):
        for name in ("original_size", "target_size"):
            text = getattr(args, prefix + name)
            if text is not None:
                width, height = parse_size(text, "--" + (prefix + name).replace("_", "-"))
                conditions[prefix + name] = (height, width)
        crop = getattr(args, prefix + "crops_coords_top_left")
        if crop is not None:
            option = "--" + (prefix + "crops_coords_top_left").replace("_", "-")
            try:
                top, left = (int(v) for v in crop.split(","))
            except ValueError:
                raise CommandError(f"{option} must look like 0,64 (TOP,LEFT), got {crop!r}.") from None
            conditions[prefix + "crops_coords_top_left"] = (top, left)
        score = getattr(args, prefix + "aesthetic_score")
        if score is not None:
            conditions[prefix + "aesthetic_score"] = score
    return conditions


def _parse_sides(text: str) -> dict[str, int]:
    sides = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in SIDES or not value.strip().isdigit() or name in sides:
            raise CommandError(f"--outpaint takes SIDE=PIXELS pairs, each side once, e.g. left=128,right=64 (sides: "
                               f"left, right, top, bottom); got {text!r}.")
        sides[name] = int(value)
    return sides
