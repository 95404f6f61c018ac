"""A benchmark worker that runs one sdrt engine (artifact x backend x precision).

    python -m sdrt.benchmarks.sdrt_worker '{"artifact": ..., "backend": ..., "precision": ..., ...}'

Speaks benchmarks/protocol.py; `sdrt bench` starts one per engine so that each has its own
memory figures and its own cold start.
"""
from __future__ import annotations

import json
import sys
import time

from .protocol import serve  # first: its import time is the worker's start


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    return serve(SdrtEngine(spec).handlers())


class SdrtEngine:
    def __init__(self, spec: dict):
        from .memory import PeakPoller, process_rss

        self.spec = spec
        self.settings = spec["settings"]
        self.pipeline = None
        self.memory = PeakPoller(process_rss()).__enter__()

    def handlers(self) -> dict:
        return {"load": self.load, "image": self.image, "components": self.components}

    def load(self) -> dict:
        from sdrt.runtime.pipeline import load

        self.memory.take()
        started = time.perf_counter()
        # Checksums are not verified: none of the peers verifies its files at load either.
        self.pipeline = load(self.spec["artifact"], self.spec["backend"], precision=self.spec["precision"],
                             num_threads=self.spec.get("threads"), verify_checksums=False,
                             vae=self.spec.get("vae"))
        return {"load_s": time.perf_counter() - started, "peak_rss_bytes": self.memory.take(),
                "sizes": self._sizes(), "networks": self._networks()}

    def _networks(self) -> dict:
        """The form each network of text-to-image is in (not the VAEs the engine did not choose)."""
        pipeline = self.pipeline
        names = [use.component for use in pipeline.text_encoders] + [
            pipeline.artifact.component_for_role("denoiser").spec.name,
            pipeline.artifact.component_for_role("vae_decoder", self.spec.get("vae")).spec.name]
        return {name: pipeline.precisions[name] for name in names}

    def _sizes(self) -> dict:
        return engine_sizes(self.pipeline.artifact, self.pipeline.precisions, self.spec.get("vae"))

    def image(self, save: str | None = None) -> dict:
        settings = self.settings
        self.memory.take()
        started = time.perf_counter()
        # no negative prompt when it is empty, as the peers are called (an SDXL base then guides
        # against zeros; a latent consistency model takes none)
        result = self.pipeline(settings["prompt"], settings["negative_prompt"] or None,
                               num_inference_steps=settings["steps"], guidance_scale=settings["guidance"],
                               height=settings["height"], width=settings["width"], seed=settings["seed"],
                               scheduler=settings["sampler"], output_type="pil")
        total = time.perf_counter() - started
        if save:
            result.images[0].save(save)
        timings = result.timings
        return {"total_s": total, "text_encoder_s": timings["text_encoder"], "denoising_s": timings["denoising"],
                "vae_decoder_s": timings["vae_decoder"], "step_s": timings["steps"],
                "peak_rss_bytes": self.memory.take(), "finished": time.time()}

    def components(self, repeats: int, warmup: int) -> dict:
        """Each network alone on the request's shapes: the text encoders as guidance calls them
        (the negative and the positive prompt), the UNet at batch 1 and 2, the VAE decoder and
        (when the artifact has one) encoder."""
        from sdrt.models.components import TEXT_ENCODER, random_feeds

        from .stats import timed

        settings, pipeline = self.settings, self.pipeline
        factor = pipeline.vae_scale_factor
        height, width = settings["height"], settings["width"]
        sizes = {"latent_height": height // factor, "latent_width": width // factor, "height": height,
                 "width": width, "sequence": 77}
        artifact, sessions, vae = pipeline.artifact, pipeline.sessions, self.spec.get("vae")

        def feeds(role: str, batch: int) -> dict:
            return random_feeds(artifact.component_for_role(role, vae if role.startswith("vae") else None).spec,
                                {**sizes, "batch": batch})

        encoders = [(sessions[use.component],
                     {TEXT_ENCODER.input_ids: use.tokenizer([settings["negative_prompt"], settings["prompt"]])})
                    for use in pipeline.text_encoders]
        calls = {
            "text_encoder_s": lambda: [session.run(inputs) for session, inputs in encoders],
            "unet_batch1_s": _call(sessions["denoiser"], feeds("denoiser", 1)),
            "unet_batch2_s": _call(sessions["denoiser"], feeds("denoiser", 2)),
            "vae_decoder_s": _call(sessions["vae_decoder"], feeds("vae_decoder", 1)),
        }
        if artifact.has_role("vae_encoder"):
            calls["vae_encoder_s"] = _call(pipeline.vae_encoder_session(), feeds("vae_encoder", 1))
        figures = {name: timed(call, repeats, warmup) for name, call in calls.items()}
        # The poller's own record: getrusage's maxrss would include the memory of the process
        # this worker was forked from (Linux keeps it across exec).
        self.memory.take()
        figures["lifetime_peak_rss_bytes"] = self.memory.lifetime
        return figures


def _call(session, inputs: dict):
    return lambda: session.run(inputs)


def engine_sizes(artifact, precisions: dict[str, str], vae: str | None = None) -> dict:
    """Bytes on disk of what an engine with these precisions and VAE reads: each network's files
    in the precision it runs ("text_encoder": every text encoder, "unet", "vae_decoder",
    "vae_encoder"), and as "total" those plus the artifact's other files (manifest, tokenizers,
    plans), not the networks' other precisions nor the other VAEs."""
    from .harness import folder_size

    sizes = {}
    for name, entry in artifact.manifest["components"].items():
        if entry["role"].startswith("vae") and entry.get("vae") != vae:  # another VAE than the one it runs
            continue
        part = {"denoiser": "unet"}.get(entry["role"], entry["role"])  # (text encoders summed)
        stored = precisions.get(name, "fp32")
        component = artifact.variant(name, "fp32" if stored == "bf16" else stored)
        sizes[part] = sizes.get(part, 0) + sum(f.stat().st_size for f in component.files)
    network_files = set()
    for entry in artifact.manifest["components"].values():
        network_files.update(entry["files"])
        for variant in entry.get("variants", {}).values():
            network_files.update(variant["files"])
    every_network = sum((artifact.root / f).stat().st_size for f in network_files)
    sizes["total"] = folder_size(artifact.root) - every_network + sum(sizes.values())
    return sizes


if __name__ == "__main__":
    raise SystemExit(main())

