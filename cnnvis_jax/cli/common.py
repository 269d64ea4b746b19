"""Argument helpers shared by every command (``--model``, ``--dataset``, counts)."""

from __future__ import annotations

import argparse

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
        help="concepts | broden:DIR | folder:DIR (default: %(default)s)",
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
