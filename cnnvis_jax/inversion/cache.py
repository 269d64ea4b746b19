"""The decoder cache: one trained UpconvNet decoder per model, weights and layer.

``<cache>/decoders/<model>-<weights hash>/<layer>/`` holds the decoder that
``cnnvis invert --method upconv`` (and :func:`cached_decoder`) trains once with the
default settings and reuses afterwards; decoders of other weights are never reused.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["cached_decoder", "decoder_dir"]


def decoder_dir(model, layer: str, model_fp: str) -> Path:
    """The cache folder of the decoder of ``layer`` for weights ``model_fp``."""
    from cnnvis_jax.default import cache_dir

    return cache_dir() / "decoders" / f"{model.name}-{model_fp}" / layer


def cached_decoder(model, layer: str, path: str | None = None, *, progress: bool = True,
                   model_fp: str | None = None):  # fmt: skip
    """The decoder at ``path`` (checked against model and layer), or the cached one,
    trained with the default settings (and a note on stderr) when it is missing.

    Raises:
      InputError: a decoder of another model, layer or weights.
    """
    from cnnvis_jax.inversion.io import DECODER_FILE, check_decoder, fingerprint, load_decoder
    from cnnvis_jax.inversion.train import DecoderConfig, train_decoder

    model_fp = fingerprint(model) if model_fp is None else model_fp
    if path is not None:
        decoder = load_decoder(path)
    else:
        folder = decoder_dir(model, layer, model_fp)
        if not (folder / DECODER_FILE).exists():
            print(f"cnnvis: training the {layer} decoder once (cached in {folder})...",
                  file=sys.stderr)  # fmt: skip
            train_decoder(model, DecoderConfig(layer=layer), folder, progress=progress)
        decoder = load_decoder(folder)
    check_decoder(decoder, model, layer, model_fp)
    return decoder
