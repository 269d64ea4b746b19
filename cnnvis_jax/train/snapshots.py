"""Trained ConceptNet weights as self-describing safetensors files.

The tensors use the zoo's torch-style keys (:func:`cnnvis_jax.weights.export_state_dict`);
the safetensors metadata records what is needed to rebuild the network:
``cnnvis.model``, ``cnnvis.variant`` (JSON of the ConceptNet variant),
``cnnvis.class_names`` (JSON list) and ``cnnvis.epoch``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from cnnvis_jax.errors import WeightsError

MODEL_KEY = "cnnvis.model"


def save_weights(
    module,
    path: str | os.PathLike,
    *,
    config,
    class_names: Sequence[str],
    epoch: int,
) -> Path:
    """Write ``module``'s weights and description to ``path`` atomically."""
    from cnnvis_jax.weights import export_state_dict, write_safetensors

    metadata = {
        MODEL_KEY: "conceptnet",
        "cnnvis.variant": json.dumps(config.variant, sort_keys=True),
        "cnnvis.class_names": json.dumps(list(class_names)),
        "cnnvis.epoch": str(epoch),
        "cnnvis.target": config.target,
    }
    return write_safetensors(path, export_state_dict(module, "conceptnet"), metadata)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors metadata of ``path`` (empty for files without any)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} does not exist.") from None
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise WeightsError(
            f"weights file {path} is not a readable safetensors file ({e}); re-export it."
        ) from None


def load_trained(path: str | os.PathLike):
    """A :class:`cnnvis_jax.Model` from a file written by :func:`save_weights`."""
    from cnnvis_jax.weights import load_torch_state_dict, read_state_dict
    from cnnvis_jax.zoo import as_model, init_module

    meta = read_metadata(path)
    if meta.get(MODEL_KEY) != "conceptnet":
        raise WeightsError(
            f"{path} was not written by `cnnvis train` (no {MODEL_KEY} metadata); load "
            "it with --model NAME --weights FILE instead."
        )
    variant = json.loads(meta["cnnvis.variant"])
    class_names = json.loads(meta["cnnvis.class_names"])
    module = init_module("conceptnet", num_classes=len(class_names), **variant)
    load_torch_state_dict(module, read_state_dict(path), name="conceptnet")
    return as_model(module, "conceptnet", class_names=class_names)
