"""Argument helpers shared by every command (``--model``, ``--dataset``, counts)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from cnnvis_jax.errors import InputError


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="'default' (the trained ConceptNet, trained on first use) or a zoo name "
        "(see `cnnvis models`)",
    )
    p.add_argument("--weights", help="weights file (.safetensors, .npz, or .pth with torch)")


def add_dataset_arg(p: argparse.ArgumentParser, default: str = "concepts") -> None:
    p.add_argument(
        "--dataset",
        default=default,
        help="concepts | broden:DIR | folder:DIR | tfds:DIR | skimage (default: %(default)s)",
    )


def given_or_default(name: str, value: int | None, default: int) -> int:
    """``value`` of option ``--name`` when given (it must be >= 1: 0 is not "the
    default"), else ``default``."""
    if value is None:
        return default
    if value < 1:
        raise InputError(f"--{name} must be at least 1, got {value}; omit it for {default}.")
    return value


def load_model_arg(args):
    from cnnvis_jax.models import load

    return load(args.model, weights=args.weights)


def writable_folder(path: str, what: str) -> Path:
    """``path`` as a folder that exists and can be written, checked before any work.

    Raises:
      InputError: an empty path, a path naming a file, or a folder that cannot be
        created or written (read-only, no permission, full disk); the message names
        ``what`` (the option or variable) and the fix.
    """
    if not path or not str(path).strip():
        raise InputError(f"{what} must name a folder, got an empty string.")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {os.fspath(folder)!r} is a file; give a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise InputError(
            f"cannot write into {what} {os.fspath(folder)!r} ({e.strerror or e}); choose a "
            "writable folder."
        ) from None
    return folder


def check_outputs(args) -> None:
    """The output folder (``--out``) and, unless the command sets ``needs_cache=False``,
    the cache (``$CNNVIS_CACHE``: trained defaults, converted weights, compiled
    programs) are writable."""
    from cnnvis_jax.default import cache_dir

    if getattr(args, "out", None) is not None:
        writable_folder(args.out, "--out")
    if getattr(args, "needs_cache", True):
        writable_folder(os.fspath(cache_dir()), "the cache ($CNNVIS_CACHE)")
