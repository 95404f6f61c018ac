"""A benchmark worker that runs one peer pipeline: diffusers (PyTorch), optimum-intel
(OpenVINO) or optimum's ONNX Runtime pipeline, on the diffusers folder sdrt's artifact was
exported from.

    python peer_worker.py '{"peer": ..., "checkpoint": ..., "precision": ..., "latents": ..., ...}'

Runs as a script in the peer environment, where sdrt's own dependencies may be missing: it
imports only the standard library, numpy, torch, the peer's package and protocol.py (loaded
from its file). Every peer gets the same prompt, size, steps, sampler and initial latents.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path


def _sibling(name: str):
    """benchmarks/<name>.py, loaded from its file (this script runs outside the sdrt package)."""
    spec = importlib.util.spec_from_file_location(f"sdrt_bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


protocol = _sibling("protocol")  # first: its import time is the worker's start
memory = _sibling("memory")
stats = _sibling("stats")

# sdrt sampler -> the diffusers scheduler class (and config overrides) it reproduces
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "lcm": ("LCMScheduler", {}),
}


# the checkpoint's diffusers pipeline class (model_index.json) -> its optimum-intel and optimum
# ONNX Runtime counterparts
PIPELINES = {
    "StableDiffusionPipeline": ("OVStableDiffusionPipeline", "ORTStableDiffusionPipeline"),
    "StableDiffusionXLPipeline": ("OVStableDiffusionXLPipeline", "ORTStableDiffusionXLPipeline"),
    "LatentConsistencyModelPipeline": ("OVLatentConsistencyModelPipeline", "ORTLatentConsistencyModelPipeline"),
}


def pipeline_class(spec: dict, peer: str):
    """The peer's text-to-image pipeline class for the checkpoint's family."""
    kind = json.loads((Path(spec["checkpoint"]) / "model_index.json").read_text())["_class_name"]
    if kind not in PIPELINES:
        raise SystemExit(f"the peers run {', '.join(PIPELINES)} checkpoints; this one is a {kind}")
    if peer == "diffusers":
        import diffusers

        return getattr(diffusers, kind)
    if peer == "optimum-intel":
        import optimum.intel

        return getattr(optimum.intel, PIPELINES[kind][0])
    import optimum.onnxruntime

    return getattr(optimum.onnxruntime, PIPELINES[kind][1])


def load_diffusers(spec: dict, settings: dict):
    import torch

    dtype = torch.float32 if spec["precision"] == "fp32" else torch.bfloat16
    model_index = json.loads((Path(spec["checkpoint"]) / "model_index.json").read_text())
    unchecked = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in model_index else {}
    pipe = pipeline_class(spec, "diffusers").from_pretrained(spec["checkpoint"], torch_dtype=dtype, **unchecked)
    return pipe, {}, {"total": _size(spec["checkpoint"])}


def load_optimum_intel(spec: dict, settings: dict):
    converted = (convert_optimum_intel_int8 if spec["precision"] == "int8" else convert_optimum_intel)(spec)
    # Its fastest configuration: static shapes for the request, compiled once. fp32 must be
    # asked for: OpenVINO runs bf16 by default on CPUs that have it. int8 computes what it does
    # not quantize in the precision sdrt's int8 does.
    hints = {"fp32": "f32", "bf16": "bf16"}
    precision = spec["calibration"]["compute"] if spec["precision"] == "int8" else spec["precision"]
    config = {"INFERENCE_PRECISION_HINT": hints[precision]}
    if spec.get("threads"):
        config["INFERENCE_NUM_THREADS"] = str(spec["threads"])
    pipe = pipeline_class(spec, "optimum-intel").from_pretrained(converted, compile=False, ov_config=config)
    pipe.reshape(batch_size=1, height=settings["height"], width=settings["width"], num_images_per_prompt=1)
    if settings["guidance"] <= 1:  # its reshape assumes guidance (UNet batch 2); without, the UNet runs batch 1
        _one_batch(pipe.unet.model)
    pipe.compile()
    batch = pipe.unet.model.input("sample").get_partial_shape()[0].get_length()
    skipped = {f"unet_batch{3 - batch}_s": f"its UNet is compiled for batch {batch} only"}
    return pipe, skipped, {"total": _size(converted)}


def _one_batch(model) -> None:
    """Reshape an OpenVINO model's inputs of batch 2 to batch 1 (the other axes as they are)."""
    shapes = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.get_length() > 0 and shape[0].is_static and shape[0].get_length() == 2:
            shape[0] = 1
        shapes[port] = shape
    model.reshape(shapes)


def load_optimum_onnx(spec: dict, settings: dict):
    import onnxruntime

    converted = convert_optimum_onnx(spec)
    options = onnxruntime.SessionOptions()
    if spec.get("threads"):
        options.intra_op_num_threads = spec["threads"]
    pipe = pipeline_class(spec, "optimum-onnx").from_pretrained(converted, provider="CPUExecutionProvider",
                                                      session_options=options)
    return pipe, {}, {"total": _size(converted)}


def convert_optimum_intel(spec: dict) -> Path:
    """optimum-intel's conversion with the weights as they are: by default it would store the
    weights of a network of more than 1e9 parameters (SDXL's UNet) in int8."""
    return _converted(spec, "openvino", lambda: pipeline_class(spec, "optimum-intel").from_pretrained(
        spec["checkpoint"], export=True, compile=False, load_in_8bit=False))


def convert_optimum_intel_int8(spec: dict) -> Path:
    """optimum-intel's hybrid quantization (UNet int8 weights and activations, calibrated on its
    own pipeline runs of the given prompts; the other models int8 weights) of its conversion,
    with as many calibration samples as sdrt's int8 UNet was calibrated on."""
    from optimum.intel import OVWeightQuantizationConfig

    source = convert_optimum_intel(spec)
    calibration = spec["calibration"]
    config = OVWeightQuantizationConfig(bits=8, quant_method="hybrid", dataset=list(calibration["prompts"]),
                                        num_samples=calibration["samples"])
    return _converted(spec, "openvino-int8", lambda: pipeline_class(spec, "optimum-intel").from_pretrained(
        source, quantization_config=config, compile=False, ov_config={"INFERENCE_PRECISION_HINT": "f32"}))


def convert_optimum_onnx(spec: dict) -> Path:
    return _converted(spec, "onnx", lambda: pipeline_class(spec, "optimum-onnx").from_pretrained(
        spec["checkpoint"], export=True))


LOADERS = {"diffusers": load_diffusers, "optimum-intel": load_optimum_intel, "optimum-onnx": load_optimum_onnx}
# The peers' one-time conversions of the checkpoint, run by `prepare` in a process of their own
# before anything is measured (their memory and time would otherwise land in the first load).
CONVERSIONS = {"optimum-intel": convert_optimum_intel, "optimum-onnx": convert_optimum_onnx}
CONVERSIONS_BY_PRECISION = {("optimum-intel", "int8"): convert_optimum_intel_int8}


def _converted(spec: dict, kind: str, convert) -> Path:
    """The peer's own conversion of the checkpoint, made once (not part of any timing)."""
    folder = Path(spec["work"]) / kind
    if not (folder / "model_index.json").is_file():
        partial = folder.with_name(folder.name + ".partial")
        convert().save_pretrained(partial)
        partial.rename(folder)
    return folder


def _versions() -> dict:
    """The peer environment's versions of what the result depends on."""
    from importlib import metadata

    found = {}
    for name in ("torch", "diffusers", "transformers", "optimum", "optimum-intel", "optimum-onnx", "openvino",
                 "onnxruntime"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _size(folder: Path) -> int:
    return sum(entry.stat().st_size for entry in Path(folder).rglob("*") if entry.is_file())


class PeerEngine:
    def __init__(self, spec: dict):
        import torch

        self.spec, self.settings = spec, spec["settings"]
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        self.memory = memory.PeakPoller(memory.process_rss()).__enter__()
        self.pipe = None
        self.skipped: dict[str, str] = {}

    def handlers(self) -> dict:
        return {"prepare": self.prepare, "load": self.load, "image": self.image, "components": self.components}

    def prepare(self) -> dict:
        key = (self.spec["peer"], self.spec["precision"])
        convert = CONVERSIONS_BY_PRECISION.get(key) or CONVERSIONS.get(self.spec["peer"])
        if convert is not None:
            convert(self.spec)
        return {}

    def load(self) -> dict:
        import diffusers

        self.memory.take()
        started = time.perf_counter()
        self.pipe, self.skipped, sizes = LOADERS[self.spec["peer"]](self.spec, self.settings)
        name, overrides = SCHEDULERS[self.settings["sampler"]]
        self.pipe.scheduler = getattr(diffusers, name).from_config({**self.pipe.scheduler.config, **overrides})
        return {"load_s": time.perf_counter() - started, "peak_rss_bytes": self.memory.take(), "sizes": sizes,
                "versions": _versions()}

    def image(self, save: str | None = None) -> dict:
        import numpy as np
        import torch

        settings, pipe = self.settings, self.pipe
        latents = torch.from_numpy(np.load(self.spec["latents"]))
        if self.spec["peer"] == "diffusers":
            latents = latents.to(pipe.unet.dtype)
        spent = {"text_encoder": 0.0, "vae_decoder": 0.0}
        originals = {"text_encoder": pipe.encode_prompt, "vae_decoder": pipe.vae.decode}

        def timed(part):
            def call(*args, **kwargs):
                tick = time.perf_counter()
                try:
                    return originals[part](*args, **kwargs)
                finally:
                    spent[part] += time.perf_counter() - tick
            return call

        pipe.encode_prompt, pipe.vae.decode = timed("text_encoder"), timed("vae_decoder")
        self.memory.take()
        try:
            started = time.perf_counter()
            with torch.inference_mode():
                # (a latent consistency model's pipeline takes no negative_prompt at all)
                negative = {"negative_prompt": settings["negative_prompt"]} if settings["negative_prompt"] else {}
                image = pipe(settings["prompt"], **negative,
                             num_inference_steps=settings["steps"], guidance_scale=settings["guidance"],
                             height=settings["height"], width=settings["width"], latents=latents,
                             generator=torch.Generator().manual_seed(settings["seed"]), output_type="pil").images[0]
            total = time.perf_counter() - started
        finally:
            pipe.encode_prompt, pipe.vae.decode = originals["text_encoder"], originals["vae_decoder"]
        if save:
            image.save(save)
        return {"total_s": total, "text_encoder_s": spent["text_encoder"], "vae_decoder_s": spent["vae_decoder"],
                "denoising_s": total - spent["text_encoder"] - spent["vae_decoder"],
                "peak_rss_bytes": self.memory.take(), "finished": time.time()}

    def components(self, repeats: int, warmup: int) -> dict:
        """The same calls as sdrt's worker, through the pipeline's own component objects."""
        import torch

        settings, pipe = self.settings, self.pipe
        dtype = pipe.unet.dtype if self.spec["peer"] == "diffusers" else torch.float32
        generator = torch.Generator().manual_seed(0)
        factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        latent = (pipe.unet.config.in_channels, settings["height"] // factor, settings["width"] // factor)
        encoders = [(getattr(pipe, f"text_encoder{n}"), getattr(pipe, f"tokenizer{n}")) for n in ("", "_2")
                    if getattr(pipe, f"text_encoder{n}", None) is not None]
        ids = [tokenizer([settings["negative_prompt"], settings["prompt"]], padding="max_length",
                         max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
               for _, tokenizer in encoders]

        def unet(batch: int):
            inputs = unet_inputs(pipe.unet.config, batch, latent, dtype, generator)
            return lambda: pipe.unet(**inputs, return_dict=False)

        calls = {
            # As their pipelines do: the prompt and the negative prompt in two calls of batch 1.
            "text_encoder_s": lambda: [(encoder(i[1:]), encoder(i[:1])) for (encoder, _), i in zip(encoders, ids)],
            "unet_batch1_s": unet(1),
            "unet_batch2_s": unet(2),
            "vae_decoder_s": lambda: pipe.vae.decode(torch.randn(1, pipe.vae.config.latent_channels, *latent[1:],
                                                                 generator=generator, dtype=dtype), return_dict=False),
        }
        calls["vae_encoder_s"] = lambda: pipe.vae.encode(
            torch.randn(1, 3, settings["height"], settings["width"], generator=generator, dtype=dtype))
        with torch.inference_mode():
            figures = {name: stats.timed(call, repeats, warmup) for name, call in calls.items()
                       if name not in self.skipped}
        self.memory.take()
        figures["lifetime_peak_rss_bytes"] = self.memory.lifetime  # not getrusage: see sdrt_worker
        return figures


def unet_inputs(config, batch: int, latent: tuple[int, ...], dtype, generator) -> dict:
    """Random inputs of a UNet of this config at `batch`: its added conditions (SDXL's pooled text
    and time ids, an LCM's guidance embedding) as its pipeline passes them."""
    import torch

    def noise(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    inputs = {"sample": noise(batch, *latent), "timestep": torch.tensor(500),
              "encoder_hidden_states": noise(batch, 77, config.cross_attention_dim)}
    if config.addition_embed_type == "text_time":  # six time ids in SDXL's text-to-image pipeline
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {"text_embeds": noise(batch, pooled),
                                       "time_ids": torch.full((batch, 6), 512.0, dtype=dtype)}
    if getattr(config, "time_cond_proj_dim", None):
        inputs["timestep_cond"] = noise(batch, config.time_cond_proj_dim)
    return inputs


def main() -> int:
    spec = json.loads(sys.argv[1])
    if spec["peer"] not in LOADERS:
        raise SystemExit(f"unknown peer {spec['peer']!r}")
    return protocol.serve(PeerEngine(spec).handlers())


if __name__ == "__main__":
    raise SystemExit(main())
