"""Units that end a render at zero: restart them from the natural image that drives
them most, or report them as silent.

A ReLU unit whose random start gives 0 has zero gradient (the redirected ReLU of
Lucid's recipes helps only while it lasts), so a render can end on a blank or
arbitrary image for a unit that does respond to real images. :func:`natural_starts`
finds, for each objective, the image of a data set that drives it highest: a unit
positive there is live and is rendered again from that image; a unit at most 0 on
every image is *silent on the data* (not proven dead: some other input might still
excite it), and figures say so instead of showing an image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.model import Model

__all__ = ["NaturalStarts", "natural_starts", "restart_silent"]


class NaturalStarts(NamedTuple):
    """Per objective (U,): ``value`` float32, its largest value on the data;
    ``index`` int64, the data image giving it; ``images`` float32 (U, H, W, 3) in
    [0, 1], those images; ``live`` bool, ``value > 0``."""

    value: np.ndarray
    index: np.ndarray
    images: np.ndarray
    live: np.ndarray


def natural_starts(model: Model, objectives: Sequence[Any], source: Any, *, count: int = 256,
                   batch_size: int = 32) -> NaturalStarts:  # fmt: skip
    """The image among the first ``count`` of ``source`` (uint8 images at the model's
    size) that drives each of ``objectives`` highest (ties: the smaller index)."""
    from cnnvis_jax.features import iterate_batches, to_model_input

    n = min(int(count), len(source))
    layers = tuple(sorted({name for o in objectives for name in o.layers}))

    @jax.jit
    def scores(params, images_uint8):
        acts = model.apply(params, to_model_input(model, images_uint8), layers)
        return jnp.stack([o(acts).astype(jnp.float32) for o in objectives], axis=1)  # (B, U)

    best = np.full(len(objectives), -np.inf, np.float32)
    index = np.zeros(len(objectives), np.int64)
    for batch_indices, valid, batch in iterate_batches(source, batch_size, np.arange(n)):
        values = np.asarray(scores(model.params, batch["image"]))
        values = np.where(valid[:, None], values, -np.inf)
        top = values.argmax(axis=0)  # first maximum: the smallest index
        better = values[top, np.arange(values.shape[1])] > best
        best = np.where(better, values[top, np.arange(values.shape[1])], best)
        index = np.where(better, batch_indices[top], index)
    picked = np.stack([np.asarray(source[int(i)]["image"]) for i in index])
    images = np.asarray(to_model_input(model, picked), np.float32)
    return NaturalStarts(best, index, images, best > 0)


def restart_silent(model: Model, objectives: Sequence[Any], recipe: Any, result: Any,
                   source: Any, *, key: Any = 0, steps: int | None = None,
                   value: str = "best_activation", progress: bool = False,
                   checkpoint: Any = None):  # fmt: skip
    """Render again, from their :func:`natural_starts` image, the objectives of
    ``result`` (a :class:`~cnnvis_jax.am.render.RenderResult` with leading axis U, one
    per objective) whose ``value`` ended at or below 0 and that some image of
    ``source`` drives above 0.

    Returns ``(result with those objectives replaced, {index: fields})``, the fields
    (for every objective that ended at or below 0) being ``start`` (``"data image
    I"``, or ``"silent"`` when no image drives it above 0), ``data_image`` and
    ``data_max``. Generator recipes (which start from codes) are returned unchanged.
    """
    import sys

    from cnnvis_jax.am.params import Generator
    from cnnvis_jax.am.render import render

    low = np.flatnonzero(~(getattr(result, value)[:, 0] > 0))
    if len(low) == 0 or isinstance(recipe.param, Generator):
        return result, {}
    natural = natural_starts(model, [objectives[k] for k in low], source)
    starts = {}
    for k, v, i, live in zip(low, natural.value, natural.index, natural.live):
        starts[int(k)] = {"start": f"data image {int(i)}" if live else "silent",
                          "data_image": int(i), "data_max": float(v)}  # fmt: skip
    restart = low[natural.live]
    if len(restart) == 0:
        return result, starts
    print(f"cnnvis: {len(restart)} unit(s) ended at 0 from the random start but respond to "
          "data images; rendering them again from those images.", file=sys.stderr)  # fmt: skip
    again = render(model, [objectives[k] for k in restart], recipe, key=key, steps=steps,
                   init_images=natural.images[natural.live][:, None], progress=progress,
                   desc="restart", checkpoint=checkpoint)  # fmt: skip
    fields = {}
    for name in result._fields:
        if getattr(result, name) is None:  # a field the recipe does not fill
            fields[name] = None
            continue
        merged = np.array(getattr(result, name), copy=True)
        merged[restart] = getattr(again, name)
        fields[name] = merged
    return type(result)(**fields), starts
