"""Dropping a backend's memory-mapped weight files from this process once it has repacked them.

Backends map the weight files read-only and, on the first inference, copy the weights into
their own kernel layouts; the mapped pages then stay resident, counted in the process's memory,
without being read again (at SD 1.5 sizes, the whole of the UNet's external data). Telling the
kernel we no longer need them (madvise MADV_DONTNEED) unmaps those pages from the process: the
file stays mapped, and a page touched again is read back from the page cache. That holds for the
weight files the ONNX frontend maps (tests compare with PyTorch after a release); it did not for
an engine blob OpenVINO imported from its cache (the images changed), so callers name only the
files they have checked. Linux only; elsewhere nothing is done.
"""
from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from pathlib import Path

MAPS = Path("/proc/self/maps")
SMAPS = Path("/proc/self/smaps")
MADV_DONTNEED = 4


def mapped_ranges(files: set[Path]) -> list[tuple[int, int]]:
    """(start, length) of this process's mappings of `files`."""
    if not sys.platform.startswith("linux") or not MAPS.exists():
        return []
    names = {str(path.resolve()) for path in files}
    ranges = []
    for line in MAPS.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        name = fields[5]
        if name in names:
            start, end = (int(value, 16) for value in fields[0].split("-"))
            ranges.append((start, end - start))
    return ranges


def resident_bytes(path: Path) -> int:
    """Bytes of `path` resident in this process's mappings (0 where smaps is not available)."""
    if not SMAPS.exists():
        return 0
    name, total, inside = str(Path(path).resolve()), 0, False
    for line in SMAPS.read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header line
            inside = len(fields) >= 6 and fields[5] == name
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def release(ranges: list[tuple[int, int]]) -> int:
    """Drop the resident pages of `ranges` from this process; returns the bytes advised."""
    if not ranges:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    for start, length in ranges:
        if libc.madvise(start, length, MADV_DONTNEED) == 0:
            done += length
    return done


@contextlib.contextmanager
def releasing(files: set[Path], every: float = 0.05):
    """Release the mapped pages of `files` every `every` seconds while the block runs (a backend
    reading them once to repack them then never holds the whole file resident), and once after."""
    done = threading.Event()

    def loop():
        while not done.wait(every):
            release(mapped_ranges(files))

    thread = threading.Thread(target=loop, name="sdrt-release-mapped", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        release(mapped_ranges(files))
