"""`sdrt watermark check`: read Stable Diffusion's invisible watermark."""
from __future__ import annotations

from pathlib import Path

from ._common import open_image


def add_parser(commands, name: str, summary: str) -> None:
    watermark = commands.add_parser(
        name, help=summary,
        description="Read the invisible watermark Stable Diffusion's scripts (and `sdrt generate --watermark`) put "
                    "on images. Exit status 0 when every image carries it, 1 otherwise. Images with large flat "
                    "areas may not carry it readably (a limit of the dwtDct scheme).")
    watermark.add_argument("action", choices=["check"], help="check: read the mark")
    watermark.add_argument("images", nargs="+", type=Path, help="image files")


def run(args, argv: list[str]) -> int:
    import numpy as np

    from sdrt.runtime.watermark import STABLE_DIFFUSION_MARK, read

    every = True
    for path in args.images:
        found = read(np.asarray(open_image(path, "image")), len(STABLE_DIFFUSION_MARK))
        marked = found == STABLE_DIFFUSION_MARK
        every &= marked
        print(f"{path}: {'watermarked (' + found.decode() + ')' if marked else 'no watermark found'}")
    return 0 if every else 1
