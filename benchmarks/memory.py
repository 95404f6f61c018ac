"""Peak memory, polled on a background thread (ONNX Runtime's SD benchmark does the same), so
that the first run and the steady state can be reported apart."""
from __future__ import annotations

import threading
from collections.abc import Callable


def process_rss() -> Callable[[], int]:
    """A reader of this process's resident set size in bytes."""
    import psutil

    process = psutil.Process()
    return lambda: process.memory_info().rss


class PeakPoller:
    """Polls `read()` every `interval` seconds; `take()` returns the peak since the last take."""

    def __init__(self, read: Callable[[], int], interval: float = 0.005):
        self._read = read
        self._interval = interval
        self._lock = threading.Lock()
        self._peak = read()
        self.lifetime = self._peak  # the highest value seen since the poller was made
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="sdrt-memory-poller", daemon=True)

    def __enter__(self) -> PeakPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        value = self._read()
        with self._lock:
            self._peak = max(self._peak, value)
            self.lifetime = max(self.lifetime, value)

    def take(self) -> int:
        """The peak since the previous take (or the start), including the value right now."""
        self._sample()
        with self._lock:
            peak, self._peak = self._peak, self._read()
        return peak
