"""Summary statistics of repeated measurements, as every benchmark figure reports them."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Median, 90th percentile, min and max of `count` samples."""

    median: float
    p90: float
    min: float
    max: float
    count: int

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(samples: Sequence[float]) -> Summary:
    """The summary of `samples`; p90 interpolates linearly between order statistics (numpy's
    default, as ONNX Runtime's SD benchmark reports it)."""
    values = np.asarray(samples, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("A summary needs at least one sample.")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"Samples must be finite numbers, got {list(samples)}.")
    return Summary(median=float(np.median(values)), p90=float(np.percentile(values, 90)),
                   min=float(values.min()), max=float(values.max()), count=int(values.size))


def ratio(ours: Summary, theirs: Summary) -> float:
    """ours / theirs on medians: below 1 means sdrt takes less time (or memory)."""
    if theirs.median == 0:
        raise ValueError("Cannot take a ratio against a zero median.")
    return ours.median / theirs.median


def timed(call: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Seconds of each of `repeats` calls, after `warmup` unmeasured ones."""
    samples = []
    for index in range(warmup + repeats):
        tick = time.perf_counter()
        call()
        if index >= warmup:
            samples.append(time.perf_counter() - tick)
    return samples
