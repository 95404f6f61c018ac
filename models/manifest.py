"""The artifact contract: the manifest's file name, schema version and JSON Schema."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

MANIFEST_NAME = "sdrt.json"
FORMAT = "sdrt-artifact"
SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).parent / "manifest.schema.json"


@lru_cache(maxsize=1)
def manifest_schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, as the manifest's `files` entries record it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
