"""Atomic file writers: a crash never leaves a half-written file behind.

Each writer writes to ``<name>.partial`` beside the target, then renames it over the
target (``os.replace`` is atomic on one file system), creating parent folders. In a run
of several processes (:mod:`cnnvis_jax.distributed`) only process 0 writes; the others'
writes do nothing (they compute the same files).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def naming(path: str | os.PathLike):
    """Let an :class:`OSError` raised inside (a failed ``write``, which carries no file
    name: full disk, size limit) name ``path``, so the error message can say which
    file could not be written."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), os.fspath(path)) from None
        raise


def writes_here() -> bool:
    """Whether this process writes files (see the module docstring)."""
    from cnnvis_jax.distributed import is_primary

    return is_primary()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    if not writes_here():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with naming(path):
        partial.write_bytes(data)
    os.replace(partial, path)
    return path


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]],
              fields: list[str] | None = None) -> Path:  # fmt: skip
    """Write ``rows`` as CSV with a header (``fields``, default the first row's keys;
    None as an empty cell) to ``path`` atomically."""
    import csv
    import io

    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fields if fields is not None else list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save the matplotlib figure ``fig`` as PNG at ``path`` atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    if not writes_here():
        plt.close(fig)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with naming(path):
        fig.savefig(partial, dpi=dpi, format="png")
    plt.close(fig)
    os.replace(partial, path)
    return path


def strict(value: Any) -> tuple[Any, int]:
    """``value`` as strict JSON data, and how many non-finite numbers it held.

    NumPy scalars and arrays become Python numbers and lists. A NaN or infinity becomes
    ``null``, and the object holding it gains ``"non_finite_fields": [its keys]`` (a
    reader sees which numbers are missing and why, instead of ``NaN``, which is not
    JSON).
    """
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return (value, 0) if math.isfinite(value) else (None, 1)
    if isinstance(value, dict):
        out, count, fields = {}, 0, []
        for k, v in value.items():
            out[k], n = strict(v)
            count += n
            if n and not isinstance(v, (dict, list, tuple, np.ndarray)):
                fields.append(k)
        if fields:
            out["non_finite_fields"] = fields
        return out, count
    if isinstance(value, (list, tuple)):
        items = [strict(v) for v in value]
        return [v for v, _ in items], sum(n for _, n in items)
    return value, 0


def write_json(path: str | os.PathLike, value: Any) -> int:
    """Write ``value`` as strict JSON (see :func:`strict`) atomically; returns the number
    of non-finite numbers written as ``null`` (0 normally)."""
    clean, count = strict(value)
    write_text(path, json.dumps(clean, indent=1, allow_nan=False))
    return count


def warn_non_finite(count: int, path: str | os.PathLike, where: str) -> None:
    """One warning line on stderr when ``count`` numbers of ``path`` were not finite."""
    if count:
        import sys

        print(
            f"cnnvis: warning: {count} non-finite value(s) in {os.fspath(path)} ({where}): "
            "written as null (see non_finite_fields); the weights or the input produce NaN "
            "or infinity there.",
            file=sys.stderr,
        )
