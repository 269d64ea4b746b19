"""Progress bars for long work (tqdm on a terminal, silent when disabled)."""

from __future__ import annotations

import contextlib
import os
import sys

from tqdm.auto import tqdm


@contextlib.contextmanager
def progress_bar(total: int | None, desc: str, *, enabled: bool = True, unit: str = "img"):
    """A tqdm bar on stderr; disabled when ``enabled`` is False or CNNVIS_PROGRESS=0."""
    enabled = enabled and os.environ.get("CNNVIS_PROGRESS", "1") != "0"
    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )
    try:
        yield bar
    finally:
        bar.close()
