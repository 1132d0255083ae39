"""The record of engine installs: ``$AIBOX_HOME/engine/engine.json`` (what is installed now,
verified or not) and ``history.jsonl`` (every attempt, restores included)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from aiboxctl.paths import StatePaths


def record_path(paths: StatePaths | None = None) -> Path:
    return (paths or StatePaths.from_env()).engine / "engine.json"


def read_record(paths: StatePaths | None = None) -> dict[str, Any] | None:
    try:
        return json.loads(record_path(paths).read_text())
    except (OSError, ValueError):
        return None


def write_record(doc: dict[str, Any], *, current: bool, paths: StatePaths | None = None) -> None:
    path = record_path(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / "history.jsonl", "a") as f:
        f.write(json.dumps(doc) + "\n")
    if current:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)

