"""The line protocol between `sdrt bench` and the worker processes that run one engine each.

A worker reads one JSON request per line on stdin ({"op": name, ...}) and answers each with
one JSON line ({"ok": true, "result": {...}} or {"ok": false, "error": sentence}). Its own
stdout is kept for the protocol: anything a library prints goes to stderr instead. This file
imports only the standard library, so that peer workers can use it from environments without
sdrt's dependencies.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable

PROCESS_STARTED = time.time()  # the moment the worker's interpreter reached this import


def serve(handlers: dict[str, Callable[..., dict]]) -> int:
    """Answer requests until "exit" or end of input; returns the process exit status."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints land in the worker's log
    sys.stdout = sys.stderr
    _send(channel, {"ok": True, "result": {"ready": True, "process_started": PROCESS_STARTED}})
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "exit":
            _send(channel, {"ok": True, "result": {}})
            return 0
        if op not in handlers:
            _send(channel, {"ok": False, "error": f"The worker has no operation {op!r}."})
            continue
        try:
            result = handlers[op](**request)
        except Exception as error:  # reported to the harness, which fails the run with it
            traceback.print_exc()
            _send(channel, {"ok": False, "error": f"{type(error).__name__}: {error}"})
            continue
        _send(channel, {"ok": True, "result": result})
    return 0


def _send(channel, message: dict) -> None:
    channel.write(json.dumps(message) + "\n")
