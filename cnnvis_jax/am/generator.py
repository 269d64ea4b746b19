"""DGN-AM's generator from a trained UpconvNet decoder, with its code bounds.

:func:`load_generator` turns a decoder saved by :mod:`cnnvis_jax.inversion`
(``cnnvis train-decoder``) into the :class:`~cnnvis_jax.am.params.Generator`
parameterization of the ``dgn`` preset: DGN-AM optimizes the decoder's input code,
bounded per unit by the code's range on real images (Nguyen et al. 2016).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnvis_jax.errors import InputError

__all__ = ["load_generator"]


def load_generator(path: str, model, *, dataset: str = "concepts", count: int = 512):
    """An :class:`~cnnvis_jax.am.params.Generator` from a decoder saved by
    :mod:`cnnvis_jax.inversion` (``load_decoder(path)``), with DGN-AM's code bounds
    computed from the decoder layer's features of ``count`` training images of
    ``dataset``.

    Raises:
      InputError: a missing file, or a decoder trained on another model.
    """
    from cnnvis_jax.am.params import generator_from_decoder
    from cnnvis_jax.data import open_dataset
    from cnnvis_jax.features import extract_features
    from cnnvis_jax.inversion import load_decoder

    if not Path(path).exists():
        raise InputError(
            f"generator file {path} does not exist; train one with cnnvis train-decoder."
        )
    decoder = load_decoder(path)
    layer = model.layer(decoder.layer).name
    if getattr(decoder, "model_name", model.name) != model.name:
        raise InputError(
            f"generator {path} was trained on model {decoder.model_name!r}, not {model.name!r}."
        )
    source = open_dataset(dataset, split="train", count=count, size=model.input.size)
    feats = extract_features(model, source, [layer], indices=np.arange(min(count, len(source))),
                             progress=False)[layer]  # fmt: skip
    return generator_from_decoder(decoder, feats)
