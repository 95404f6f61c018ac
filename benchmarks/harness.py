"""`sdrt bench`: every engine (sdrt on a backend and precision, or a peer pipeline) runs in its
own worker process, on the same weights, prompt, size, steps, sampler and initial latents.

Engines are loaded `together` at a time and take turns image by image (the order reversing
every round), so that machine drift hits all of them alike; each worker's memory and cold
start are its own. Figures are kept as raw samples and summarised at the end.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..runtime.errors import SdrtError
from .stats import Summary, summarize

# figure -> (unit, what it is); times and memory are better lower, steps/s higher.
METRICS = {
    "load_s": ("s", "load + compile"),
    "load_warm_s": ("s", "load + compile, new process"),
    "cold_start_s": ("s", "new process to first image"),
    "first_image_s": ("s", "first image"),
    "image_s": ("s", "image"),
    "steps_per_s": ("steps/s", "steps per second"),
    "text_encoder_s": ("s", "text encoder"),
    "unet_batch1_s": ("s", "UNet, batch 1"),
    "unet_batch2_s": ("s", "UNet, batch 2"),
    "vae_decoder_s": ("s", "VAE decode"),
    "vae_encoder_s": ("s", "VAE encode"),
    "first_run_peak_rss_bytes": ("bytes", "peak RSS, first run"),
    "steady_peak_rss_bytes": ("bytes", "peak RSS, steady"),
    "peak_rss_bytes": ("bytes", "peak RSS, worker"),
    "size_bytes": ("bytes", "on disk"),
    "size_text_encoder_bytes": ("bytes", "on disk, text encoder"),
    "size_unet_bytes": ("bytes", "on disk, UNet"),
    "size_vae_decoder_bytes": ("bytes", "on disk, VAE decoder"),
    "size_vae_encoder_bytes": ("bytes", "on disk, VAE encoder"),
}
# What each figure measures, for the report's legend.
DEFINITIONS = (
    "load + compile: opening the model and compiling it for the backend, in the worker that measures "
    "everything else (first load of the run; peers convert the checkpoint beforehand, untimed); sdrt on "
    "openvino compiles each network at its first call, for the request's shapes, so its compile and weight "
    "repacking fall in the first image; new process: the same in a "
    "fresh process once files and caches are warm. New process to first image: from starting the worker "
    "process to the first image "
    "done (the cold start a user sees). First image: the first image after load (includes any lazy "
    "compilation); image: the measured images after warm-up, end to end (tokenize, text encoder, "
    "denoising, VAE decode). Steps per second: denoising steps over the denoising time of those images. "
    "Text encoder / UNet / VAE: one call each, on the request's shapes (the text encoder on prompt + "
    "negative; the UNet with random latents). Peak RSS: the worker's resident memory sampled every 5 ms "
    "on a background thread: first run = load + first image, steady = later images; worker = the "
    "highest sample over its life. On disk: the model files the engine reads (for sdrt, each network in "
    "the precision it runs plus the manifest, tokenizer and plans; not the artifact's other precisions)."
)
HIGHER_IS_BETTER = {"steps_per_s"}


class BenchmarkError(SdrtError):
    """A benchmark could not be run or an engine failed; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    """What every engine runs, and how often."""

    prompt: str = "a photograph of an astronaut riding a horse"
    negative_prompt: str = ""
    height: int = 512
    width: int = 512
    steps: int = 20
    guidance: float = 7.5
    sampler: str = "dpmpp_2m"
    seed: int = 42
    repeats: int = 3
    warmup: int = 1
    together: int = 2  # engines loaded at once, taking turns
    cold_start: bool = True

    def __post_init__(self):
        for name in ("height", "width", "steps", "repeats", "together"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.warmup < 0:
            raise BenchmarkError(f"warmup must be 0 or more, got {self.warmup}.")


@dataclass(frozen=True)
class Engine:
    """One thing to measure and how to start its worker."""

    name: str  # "sdrt/openvino/bf16", "diffusers/fp32"
    kind: str  # "sdrt" or the peer's name
    precision: str
    command: tuple[str, ...]  # the worker's command line, without the spec
    spec: dict  # what the worker loads (JSON-serialisable)

    @property
    def is_peer(self) -> bool:
        return self.kind != "sdrt"


@dataclass
class EngineResult:
    engine: Engine
    samples: dict[str, list[float]] = field(default_factory=dict)
    image: Path | None = None
    versions: dict[str, str] = field(default_factory=dict)  # a peer's own environment
    networks: dict[str, str] = field(default_factory=dict)  # sdrt: the precision each network ran in

    def add(self, metric: str, value: float) -> None:
        self.samples.setdefault(metric, []).append(float(value))

    def summaries(self) -> dict[str, Summary]:
        return {metric: summarize(values) for metric, values in self.samples.items() if values}


Progress = Callable[[str], None]


def run_engines(engines: list[Engine], settings: Settings, out: Path,
                progress: Progress | None = None) -> list[EngineResult]:
    """Measure every engine; raises BenchmarkError naming the engine when one fails."""
    report = progress or (lambda message: None)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    results = [EngineResult(engine) for engine in engines]
    _prepare_peers(engines, settings, out, report)
    for start in range(0, len(results), settings.together):
        _run_group(results[start:start + settings.together], settings, out, report)
    if settings.cold_start:
        for result in results:
            _cold_start(result, settings, out, report)
    return results


def _prepare_peers(engines: list[Engine], settings: Settings, out: Path, report: Progress) -> None:
    """Each peer engine's one-time conversion of the checkpoint (a precision may have its own:
    optimum-intel's int8 is a quantized conversion), in a process of its own, untimed; a
    conversion already made is kept."""
    for engine in engines:
        if engine.is_peer:
            report(f"{engine.name}: preparing (its own conversion of the checkpoint, once; not measured)")
            worker = Worker.start(engine, settings, out / "logs" / f"{engine.name.replace('/', '-')}-prepare.log")
            try:
                worker.call("prepare")
            finally:
                worker.close()


def _run_group(group: list[EngineResult], settings: Settings, out: Path, report: Progress) -> None:
    workers = []
    first_run_peaks: dict[int, list[int]] = {}  # per engine: peak RSS of the load, then of the first image
    try:
        for result in group:
            report(f"{result.engine.name}: loading")
            worker = Worker.start(result.engine, settings, out / "logs" / f"{_file_name(result.engine)}.log")
            workers.append(worker)
            loaded = worker.call("load")
            result.add("load_s", loaded["load_s"])
            result.versions = loaded.get("versions", {})
            result.networks = loaded.get("networks", {})
            for part, size in loaded.get("sizes", {}).items():  # bytes on disk: "total" and per component
                result.add("size_bytes" if part == "total" else f"size_{part}_bytes", size)
            first_run_peaks[id(result)] = [loaded["peak_rss_bytes"]]
        images = settings.warmup + settings.repeats
        for round_index in range(images):
            order = list(zip(group, workers))
            if round_index % 2:
                order.reverse()
            for result, worker in order:
                report(f"{result.engine.name}: image {round_index + 1} of {images}")
                path = out / "images" / f"{_file_name(result.engine)}.png"
                figures = worker.call("image", save=str(path))
                result.image = path
                if round_index == 0:
                    first_run_peaks[id(result)].append(figures["peak_rss_bytes"])
                _record_image(result, figures, settings, first=round_index == 0,
                              measured=round_index >= settings.warmup)
        for result, worker in zip(group, workers):
            report(f"{result.engine.name}: components")
            figures = worker.call("components", repeats=settings.repeats, warmup=1)
            result.add("peak_rss_bytes", figures.pop("lifetime_peak_rss_bytes"))
            for metric, values in figures.items():
                for value in values:
                    result.add(metric, value)
    finally:
        for worker in workers:
            worker.close()
    for result in group:
        result.add("first_run_peak_rss_bytes", max(first_run_peaks[id(result)]))


def _record_image(result: EngineResult, figures: dict, settings: Settings, first: bool, measured: bool) -> None:
    if first:
        result.add("first_image_s", figures["total_s"])
    else:
        result.add("steady_peak_rss_bytes", figures["peak_rss_bytes"])
    if measured:
        result.add("image_s", figures["total_s"])
        result.add("steps_per_s", settings.steps / figures["denoising_s"])


def _cold_start(result: EngineResult, settings: Settings, out: Path, report: Progress) -> None:
    report(f"{result.engine.name}: cold start")
    launched = time.time()
    worker = Worker.start(result.engine, settings, out / "logs" / f"{_file_name(result.engine)}-cold.log")
    try:
        result.add("load_warm_s", worker.call("load")["load_s"])
        finished = worker.call("image")["finished"]
    finally:
        worker.close()
    result.add("cold_start_s", finished - launched)


def _file_name(engine: Engine) -> str:
    return engine.name.replace("/", "-")


class Worker:
    """A running worker process; `call` sends one request and returns its result."""

    def __init__(self, engine: Engine, process: subprocess.Popen, log: Path):
        self.engine, self.process, self.log = engine, process, log

    @classmethod
    def start(cls, engine: Engine, settings: Settings, log: Path) -> Worker:
        spec = {**engine.spec, "settings": asdict(settings)}
        with open(log, "ab") as stderr:
            process = subprocess.Popen([*engine.command, json.dumps(spec)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        worker = cls(engine, process, log)
        worker._receive("start")
        return worker

    def call(self, op: str, **arguments) -> dict:
        try:
            self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the worker died; _receive reports it with its log
        return self._receive(op)

    def _receive(self, op: str) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise BenchmarkError(f"{self.engine.name} stopped during {op!r} (exit status "
                                 f"{self.process.returncode}); its log {self.log} ends with:\n{self._log_tail()}")
        message = json.loads(line)
        if not message["ok"]:
            raise BenchmarkError(f"{self.engine.name} failed during {op!r}: {message['error']} "
                                 f"(full log: {self.log})")
        return message["result"]

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def sdrt_engine(artifact: Path, backend: str, precision: str, threads: int | None = None,
                vae: str | None = None) -> Engine:
    """sdrt on `backend` at `precision` in its default configuration (with the added VAE `vae`
    when named), in a worker run by this interpreter."""
    return Engine(name=f"sdrt/{backend}/{precision}" + (f"+{vae}" if vae else ""), kind="sdrt", precision=precision,
                  command=(sys.executable, "-m", "sdrt.benchmarks.sdrt_worker"),
                  spec={"artifact": str(artifact), "backend": backend, "precision": precision, "threads": threads,
                        "vae": vae})


def folder_size(path: Path) -> int:
    """Bytes of every file under `path`."""
    return sum(entry.stat().st_size for entry in Path(path).rglob("*") if entry.is_file())
