"""Atomic file writers: a crash never leaves a half-written file behind.

Each writer writes to ``<name>.partial`` beside the target, then renames it over the
target (``os.replace`` is atomic on one file system), creating parent folders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Strict JSON (a NaN or infinity is an error, not ``NaN``), written atomically."""
    return write_text(path, json.dumps(value, indent=1, allow_nan=False))
