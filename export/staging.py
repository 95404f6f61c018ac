"""Writing into an artifact so that an interruption leaves it as it was, shared by the exporter
and the precision variants: files are assembled in a hidden staging folder and moved into
place, and the manifest is written beside the old one and renamed over it, so that a reader
sees the old artifact or the new one, never half of one.
"""
from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..models.manifest import MANIFEST_NAME


@contextmanager
def staging_folder(parent: Path, name: str = "", kind: str = "partial", *,
                   remove_leftovers: bool = False) -> Iterator[Path]:
    """A fresh hidden path `parent/.NAME.KIND-TOKEN` (`parent/.KIND-TOKEN` without a name) for
    the block to create and fill; whatever is left there when the block ends, however it ends,
    is removed, so the block moves what it finished into place before it returns.

    remove_leftovers: first remove the folders of this name that killed runs left behind (only
    where one run at a time writes into `parent`)."""
    prefix = f".{name}.{kind}-" if name else f".{kind}-"
    if remove_leftovers:
        for leftover in parent.glob(f"{prefix}*"):
            shutil.rmtree(leftover, ignore_errors=True)
    staging = parent / f"{prefix}{uuid.uuid4().hex[:8]}"
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_manifest(root: Path, manifest: dict) -> None:
    """Write root's manifest beside the old one, if any, and rename it over: readers see one or
    the other."""
    partial = root / f".{MANIFEST_NAME}.{uuid.uuid4().hex[:8]}"
    partial.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    partial.replace(root / MANIFEST_NAME)
