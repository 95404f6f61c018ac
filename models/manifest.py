"""The artifact contract: the manifest's file name, schema version and JSON Schema."""
from __future__ import annotations

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
