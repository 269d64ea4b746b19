"""Pass 2 (the dense engine): the fused tally of every unit against every label, one
batch at a time, entirely on device (the engine for accelerators; on CPU the sparse
engine, :mod:`~cnnvis_jax.dissection.sparse_tally`, computes the same counts).

Per batch and layer, on device:

1. upsample the activations to the segmentation size (PIL's bilinear,
   :mod:`~cnnvis_jax.dissection.upsample`) and threshold them:
   ``m[n, p, u] = up(A)[n, p, u] > T_u`` (maps whose maximum is <= T_u are skipped,
   as NetDissect-Lite does);
2. intersect with the labels as one contraction for all units x labels,
   ``inter[n, l, u] = sum_p m[n, p, u] * cnt[n, p, l]`` with ``cnt`` the number of
   pixel layers carrying label ``l`` at ``p`` (``"segment"``: a segment sum keyed by
   ``(image, label)``, best on CPU; ``"einsum"``: a bf16 one-hot contraction with fp32
   accumulation, best on accelerators; both exact);
3. reduce to the counts NetDissect keeps:

   * ``both[u, l]`` = sum_n inter + (activated pixels) x (image-level labels),
   * ``units[u]`` activated pixels,
   * ``units_cat_lite[u, c]``: activated pixels of images whose activated region
     overlaps a label of (primary) category c or that carry an image-level label of c
     (NetDissect-Lite),
   * ``units_cat_original[u, c]``: activated pixels of images that have any label of
     category c (original NetDissect),
   * ``labels[l]``: pixels of label l (an image-level label counts all sh * sw pixels).

Counts are exact integers (int32 per batch, summed over devices with ``psum``); the
host accumulates them in int64. Nothing per image outlives the batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cnnvis_jax.dissection import _mesh
from cnnvis_jax.dissection.upsample import upsample
from cnnvis_jax.features import to_model_input
from cnnvis_jax.model import Model

CONTRACTIONS = ("auto", "segment", "einsum")


def resolve_contraction(contraction: str) -> str:
    """``auto`` -> ``einsum`` on accelerators, ``segment`` on CPU."""
    if contraction == "auto":
        return "segment" if jax.default_backend() == "cpu" else "einsum"
    return contraction


def intersections(m: jax.Array, pix: jax.Array, num_labels: int, contraction: str) -> jax.Array:
    """int32 (B, L, U): ``sum_p m[n, p, u] * #{layers with label l at p}``.

    Args:
      m: bool (B, P, U) activation masks.
      pix: int32 (B, Ly, P) label numbers (0 = none; counted in column 0).
    """
    b, p, u = m.shape
    if contraction == "einsum":
        cnt = jnp.zeros((b, p, num_labels), jnp.bfloat16)
        for ly in range(pix.shape[1]):
            cnt = cnt + jax.nn.one_hot(pix[:, ly], num_labels, dtype=jnp.bfloat16)
        inter = jnp.einsum(
            "npu,npl->nlu", m.astype(jnp.bfloat16), cnt, preferred_element_type=jnp.float32
        )
    else:
        flat = m.reshape(b * p, u).astype(jnp.float32)
        ids = pix + (jnp.arange(b, dtype=jnp.int32) * num_labels)[:, None, None]
        inter = jnp.zeros((b * num_labels, u), jnp.float32)
        for ly in range(pix.shape[1]):
            inter = inter + jax.ops.segment_sum(
                flat, ids[:, ly].reshape(-1), num_segments=b * num_labels
            )
        inter = inter.reshape(b, num_labels, u)
    return jnp.rint(inter).astype(jnp.int32)


def layer_masks(acts: jax.Array, threshold: jax.Array, taps: tuple, valid: jax.Array) -> jax.Array:
    """bool (B, P, U) thresholded upsampled maps (zero for padded images); ``taps`` is
    (rows, cols) of :func:`~cnnvis_jax.dissection.upsample.layer_matrices`."""
    acts = acts.astype(jnp.float32)
    up = upsample(acts, taps[0], taps[1])
    peak = jnp.max(acts, axis=(1, 2))
    hit = (up > threshold) & (peak > threshold)[:, None, None, :] & valid[:, None, None, None]
    b, sh, sw, u = hit.shape
    return hit.reshape(b, sh * sw, u)


def _local_tally(
    model: Model, images, valid, pix, sca, thresholds, taps, labelcat, *, layers, contraction, axis
):
    num_labels, _ = labelcat.shape
    acts = model.apply(model.params, to_model_input(model, images), layers)
    pix = jnp.where(valid[:, None, None], pix, 0)
    sca = jnp.where(valid[:, None], sca, -1)
    b, _, npix = pix.shape
    scalar = jnp.zeros((b, num_labels), jnp.int32)
    for s in range(sca.shape[1]):
        scalar = scalar + jax.nn.one_hot(sca[:, s], num_labels, dtype=jnp.int32)
    ids = (pix + (jnp.arange(b, dtype=jnp.int32) * num_labels)[:, None, None]).reshape(-1)
    per_image = jax.ops.segment_sum(
        jnp.ones(ids.shape, jnp.int32), ids, num_segments=b * num_labels
    ).reshape(b, num_labels)
    per_image = per_image.at[:, 0].set(0)
    cat = labelcat.astype(jnp.int32)
    scalar_cat = scalar @ cat  # (B, C)
    present = ((per_image @ cat + scalar_cat) > 0).astype(jnp.int32)
    out = {
        "labels": jnp.sum(per_image, 0) + jnp.sum(scalar, 0) * npix,
        "images": jnp.sum(valid.astype(jnp.int32)),
        "category_images": jnp.sum(present, 0),
    }
    for name in layers:
        m = layer_masks(acts[name], thresholds[name], taps[name], valid)
        act = jnp.sum(m, axis=1, dtype=jnp.int32)  # (B, U)
        inter = intersections(m, pix, num_labels, contraction)
        inter = inter.at[:, 0, :].set(0)
        both = jnp.sum(inter, 0).T + act.T @ scalar  # (U, L)
        overlap = jnp.einsum("nlu,lc->nuc", inter, cat) + scalar_cat[:, None, :]
        out[name] = {
            "both": both,
            "units": jnp.sum(act, 0),
            "units_cat_lite": jnp.einsum("nu,nuc->uc", act, (overlap > 0).astype(jnp.int32)),
            "units_cat_original": act.T @ present,
        }
    return _mesh.psum(out, axis)


@functools.lru_cache(maxsize=16)
def compiled_tally(layers: tuple[str, ...], contraction: str, devices: int):
    """jit(tally)(model, images, valid, pix, sca, thresholds, taps, labelcat) -> counts."""
    mesh = _mesh.mesh() if devices > 1 else None
    axis = _mesh.AXIS if mesh is not None else None
    fn = functools.partial(_local_tally, layers=layers, contraction=contraction, axis=axis)
    split, rep = _mesh.SPLIT, _mesh.REPLICATED
    fn = _mesh.shard(fn, mesh, (rep, split, split, split, split, rep, rep, rep), rep)
    return jax.jit(fn)


__all__ = ["CONTRACTIONS", "compiled_tally", "intersections", "layer_masks"]
