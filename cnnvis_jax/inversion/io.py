"""Decoder files: safetensors tensors + JSON metadata (never pickle).

``DIR/decoder.safetensors`` holds the flat parameter dict; its header metadata
``cnnvis.decoder`` is the JSON record (layer, model name, model weights
fingerprint, feature shape and scale, design, training summary), also written
next to it as ``DIR/decoder.json`` for people. Loading reads the record from the
safetensors header (the authoritative copy).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cnnvis_jax.errors import InputError, WeightsError
from cnnvis_jax.inversion.decoder import Decoder, DecoderDesign
from cnnvis_jax.model import Model
from cnnvis_jax.report.files import write_json

__all__ = ["DECODER_FILE", "check_decoder", "fingerprint", "load_decoder", "save_decoder"]

DECODER_FILE = "decoder.safetensors"
META_KEY = "cnnvis.decoder"
FORMAT = 1


def fingerprint(model: Model) -> str:
    """16 hex digits of SHA-256 over the model's name, parameter paths, shapes,
    dtypes and values: equal for the same weights, different for any other."""
    h = hashlib.sha256(model.name.encode())
    leaves = jax.tree_util.tree_leaves_with_path(model.params)
    for path, leaf in leaves:
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def _file(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / DECODER_FILE if path.is_dir() or path.suffix != ".safetensors" else path


def save_decoder(decoder: Decoder, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``decoder`` to ``path`` (a directory, or a ``.safetensors`` file) and the
    JSON copy of its record beside it; returns the safetensors path."""
    from cnnvis_jax.weights import write_safetensors

    target = _file(path)
    record = {
        "format": FORMAT,
        "layer": decoder.layer,
        "model_name": decoder.model_name,
        "model_fingerprint": decoder.model_fingerprint,
        "feature_shape": list(decoder.feature_shape),
        "feature_scale": float(decoder.feature_scale),
        "image_size": list(decoder.image_size),
        "design": decoder.design.to_json(),
        **(extra or {}),
    }
    tensors = {
        k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in decoder.params.items()
    }
    write_safetensors(target, tensors, {META_KEY: json.dumps(record)})
    write_json(target.with_suffix(".json"), record)
    return target


def load_decoder(path: str | os.PathLike) -> Decoder:
    """A :class:`Decoder` from a file written by :func:`save_decoder` (or its folder).

    Raises:
      WeightsError: missing, unreadable, or not a decoder file.
    """
    from safetensors import safe_open

    target = _file(path)
    if not target.exists():
        raise WeightsError(
            f"decoder file {target} does not exist; train one with `cnnvis train-decoder`."
        )
    try:
        with safe_open(str(target), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            params = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise WeightsError(f"{target} is not a readable safetensors file ({e}).") from None
    if META_KEY not in meta:
        raise WeightsError(f"{target} is not a decoder file (no {META_KEY} metadata).")
    record = json.loads(meta[META_KEY])
    design = DecoderDesign.from_json(record["design"])
    import jax.numpy as jnp

    return Decoder(
        params={k: jnp.asarray(v) for k, v in params.items()},
        design=design,
        layer=record["layer"],
        model_name=record["model_name"],
        model_fingerprint=record["model_fingerprint"],
        feature_scale=float(record["feature_scale"]),
    )


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON record of a decoder file."""
    from safetensors import safe_open

    with safe_open(str(_file(path)), framework="numpy") as f:
        return json.loads((f.metadata() or {})[META_KEY])


def check_decoder(decoder: Decoder, model: Model, layer: str, model_fp: str | None = None) -> None:
    """Refuse a decoder trained for another layer or another model (names both).

    Raises:
      InputError: layer, model name or model weights differ.
    """
    canonical = model.resolve(layer)
    fp = model_fp or fingerprint(model)
    if (decoder.layer, decoder.model_name, decoder.model_fingerprint) != (
        canonical,
        model.name,
        fp,
    ):
        raise InputError(
            f"this decoder was trained for layer {decoder.layer!r} of model "
            f"{decoder.model_name!r} (weights {decoder.model_fingerprint}), not for layer "
            f"{canonical!r} of model {model.name!r} (weights {fp}); train one with "
            f"`cnnvis train-decoder --layer {canonical}`."
        )
