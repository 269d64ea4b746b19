"""Top-k images per unit over a data set, and the receptive-field patches they show.

:func:`top_activations` streams a source once with a fixed batch shape (the last
batch padded and masked). Per unit it keeps the exact top-k of the per-image
maximal activation, one entry per image (Zeiler & Fergus show nine different
images), with the image index and the ``(row, col)`` of the maximum. The running
merge happens on device inside ``jit``: the current top-k is concatenated with the
batch's values and sorted by the tie key

    larger value first, then smaller image index, then smaller position

(within an image the maximum's position is the first in row-major order). The
result is therefore deterministic and independent of the batch size and of the
number of devices.

:func:`crop_patches` cuts each top image's receptive-field window (the unit's
:class:`~cnnvis_jax.ReceptiveField` box at the recorded position) and pads it to
the field's full size, so the unit's centre stays at the patch's centre.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from cnnvis_jax import checkpoint as checkpoint_mod
from cnnvis_jax import interrupt, parallel
from cnnvis_jax.deconv.projection import check_units, projectable_layer
from cnnvis_jax.errors import InputError
from cnnvis_jax.features import iterate_local_batches, load_batch, to_model_input
from cnnvis_jax.model import Model
from cnnvis_jax.progress import progress_bar

__all__ = ["Patches", "TopK", "crop_patches", "field_boxes", "cut_windows", "top_activations"]

_NO_IMAGE = np.iinfo(np.int32).max
"""Image index of empty slots and masked padding: sorts after every real image."""


class TopK(NamedTuple):
    """Per unit, the k images with the largest maximal activation (numpy arrays).

    Attributes:
      values: float32 (U, k), the per-image maxima, in decreasing order.
      image_index: int64 (U, k), indices into the source.
      position: int32 (U, k, 2), ``(row, col)`` of each maximum in the layer's
        grid; ``-1`` for fully connected layers.
      layer: canonical layer name.
      units: the units, in the order of the leading axis.
    """

    values: np.ndarray
    image_index: np.ndarray
    position: np.ndarray
    layer: str
    units: tuple[int, ...]


class Patches(NamedTuple):
    """Receptive-field crops of the top images (numpy arrays).

    Attributes:
      images: float32 (U, k, Sh, Sw, 3) in [0, 1]; pixels of the field outside the
        image hold ``fill``. ``(Sh, Sw)`` is the field's size (the image's size for
        fully connected layers), scaled to ``image_size``.
      boxes: int32 (U, k, 4), the clipped window ``(top, left, bottom, right)``
        (bottom/right exclusive) in the model's input pixels, as in
        :meth:`~cnnvis_jax.ReceptiveField.box`.
    """

    images: np.ndarray
    boxes: np.ndarray


# --- streaming top-k ------------------------------------------------------------------


def _activation(model: Model, images: jax.Array, layer: str) -> jax.Array:
    """The default score: the layer's activation for images in [0, 1]."""
    return model.apply(model.params, images, (layer,))[layer]


REDUCTIONS = ("max", "sum")
"""How a spatial score map becomes one value per image: its maximum (activations,
Zeiler & Fergus) or its sum (relevance, which is additive)."""


def _step(model: Model, state, images, indices, valid, units, *, layer: str, k: int,
          score=_activation, reduce: str = "max"):  # fmt: skip
    """Merge one batch into ``state = (values, image_index, flat_position)``, each (U, k)."""
    act = score(model, to_model_input(model, images), layer)
    if act.ndim == 4:
        batch, h, w, _ = act.shape
        maps = jnp.take(act, units, axis=-1).reshape(batch, h * w, units.size)
        where = jnp.argmax(maps, axis=1)  # first maximum: smallest row-major position
        best = jnp.max(maps, axis=1) if reduce == "max" else jnp.sum(maps, axis=1)
    else:
        best = jnp.take(act, units, axis=-1)
        where = jnp.zeros(best.shape, jnp.int32)
    best = best.T.astype(jnp.float32)  # (U, B)
    best = jnp.where(best == 0, 0.0, best)  # -0.0 and 0.0 tie
    best = jnp.where(jnp.isnan(best) | ~valid[None], -jnp.inf, best)
    index = jnp.broadcast_to(jnp.where(valid, indices, _NO_IMAGE)[None], best.shape)
    values = jnp.concatenate([state[0], best], axis=1)
    image = jnp.concatenate([state[1], index], axis=1)
    flat = jnp.concatenate([state[2], where.T.astype(jnp.int32)], axis=1)
    negated, image, flat = lax.sort((-values, image, flat), dimension=1, num_keys=3)
    return -negated[:, :k], image[:, :k], flat[:, :k]


@functools.lru_cache(maxsize=32)
def _compiled_step(layer: str, k: int, devices: int, score=_activation, reduce: str = "max"):
    fn = functools.partial(_step, layer=layer, k=k, score=score, reduce=reduce)
    mesh = parallel.image_mesh() if devices > 1 else None
    if mesh is None:
        return jax.jit(fn)
    replicated, split = parallel.shardings(mesh, None, P(parallel.AXIS))
    return jax.jit(
        fn,
        in_shardings=(replicated, replicated, split, split, split, replicated),
        out_shardings=replicated,
    )


def top_activations(
    model: Model,
    source: Any,
    layer: str,
    units: Sequence[int] | np.ndarray | None = None,
    *,
    k: int = 9,
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    score: Callable[[Model, jax.Array, str], jax.Array] | None = None,
    reduce: str = "max",
) -> TopK:
    """The top-``k`` images of each unit of ``layer`` over ``source``, in one pass.

    Args:
      model: the network (its own ``params``).
      source: random-access data source (uint8 images; resized to the model's size
        on device).
      layer: layer name or alias; spatial ``(H, W, C)`` or fully connected ``(C,)``.
      units: channel indices (U,); all channels of the layer by default.
      k: images kept per unit (at most the number of images).
      batch_size: images per forward pass (rounded up to a multiple of the device
        count; the last batch is padded and masked).
      indices: the source indices to consider (default: all of them).
      progress: show a progress bar.
      checkpoint: a ``.npz`` file for resumable state: the running top-k is saved
        every few seconds (:class:`~cnnvis_jax.checkpoint.Periodic`), a call with the
        same arguments resumes after the last saved batch, and inside such a call
        Ctrl-C / SIGTERM stop after the current batch with
        :class:`~cnnvis_jax.interrupt.Interrupted`. The result equals an
        uninterrupted pass (the merge is order-independent).
      score: what is ranked instead of the activation: a hashable, jittable
        ``score(model, images01 (B, H, W, 3), layer) -> (B, h, w, C) or (B, C)``
        shaped like the layer's activation (e.g. the relevance arriving there,
        :func:`cnnvis_jax.crp.top_relevance`); ``None``: the activation.
      reduce: ``"max"`` (the per-image maximum over positions) or ``"sum"``; the
        recorded position is the maximum's either way.

    Returns:
      A :class:`TopK`; ties ordered by smaller image index, then smaller position.

    Raises:
      InputError: unknown layer, unit out of range, ``k < 1``, or a source (or index
        list) with fewer than ``k`` images.
    """
    info = projectable_layer(model, layer)
    unit_array = (
        np.arange(info.channels, dtype=np.int32)
        if units is None
        else check_units(model, info.name, units)
    )
    if int(k) != k or k < 1:
        raise InputError(f"k (images per unit) must be a positive integer, got {k!r}.")
    if reduce not in REDUCTIONS:
        raise InputError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}.")
    score = _activation if score is None else score
    k = int(k)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}.")
    count = len(source) if indices is None else len(indices)
    if count < k:
        raise InputError(
            f"the data source has {count} images, fewer than the {k} top images asked per "
            f"unit; lower k (--top) to at most {count} or use more images (--count)."
        )
    largest = count - 1 if indices is None else int(np.max(np.asarray(indices)))
    if largest >= _NO_IMAGE:
        raise InputError(f"image indices must be below {_NO_IMAGE}; split the source.")
    size = parallel.devices_multiple(batch_size)
    mesh = parallel.image_mesh()
    replicated, split = parallel.shardings(mesh, None, P(parallel.AXIS))
    step = _compiled_step(info.name, k, jax.device_count(), score, reduce)
    placed = parallel.put(model, replicated)
    n_units = unit_array.size
    state = parallel.put(
        (
            jnp.full((n_units, k), -jnp.inf, jnp.float32),
            jnp.full((n_units, k), _NO_IMAGE, jnp.int32),
            jnp.zeros((n_units, k), jnp.int32),
        ),
        replicated,
    )
    device_units = parallel.put(jnp.asarray(unit_array), replicated)
    order = np.arange(count) if indices is None else np.asarray(indices, np.int64)
    mark = ""
    if checkpoint is not None:
        mark = checkpoint_mod.digest(model.params, unit_array, order) + f"/{info.name}/{k}"
        if score is not _activation or reduce != "max":
            mark += f"/{getattr(score, 'name', repr(score))}/{reduce}"
    saver = checkpoint_mod.Periodic(checkpoint, mark)
    done = 0
    saved = saver.load()
    if saved is not None:
        state = parallel.put(tuple(jnp.asarray(saved[n]) for n in ("values", "image", "flat")),
                             replicated)  # fmt: skip
        done = int(saved["done"])
    guard = interrupt.graceful(enabled=checkpoint is not None)
    with guard, progress_bar(count, f"top-{k} {info.name}", enabled=progress) as bar:
        bar.update(done)
        rest = order[done:]
        batches = iterate_local_batches(source, size, rest) if rest.size else ()
        for start, (batch_indices, valid, batch) in zip(range(0, rest.size, size), batches):
            state = step(
                placed,
                state,
                parallel.put_rows(batch["image"], split, size),
                parallel.put_rows(batch_indices.astype(np.int32), split, size),
                parallel.put_rows(valid, split, size),
                device_units,
            )
            count = min(size, rest.size - start)  # images of the whole batch, all processes
            done += count
            bar.update(count)
            saver.step(dict(zip(("values", "image", "flat"), state), done=done),
                       f"top-{k} {info.name}")  # fmt: skip
    values, image, flat = (np.asarray(a) for a in state)
    if info.spatial:
        width = info.shape[1]
        position = np.stack([flat // width, flat % width], axis=-1).astype(np.int32)
    else:
        position = np.full((n_units, k, 2), -1, np.int32)
    return TopK(
        values.astype(np.float32),
        image.astype(np.int64),
        position,
        info.name,
        tuple(int(u) for u in unit_array),
    )


# --- receptive-field windows -------------------------------------------------------------


def field_boxes(
    model: Model,
    layer: str,
    positions: np.ndarray,
    image_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Receptive-field windows of ``layer`` at ``positions`` (..., 2), at ``image_size``.

    Returns ``(clipped, full)``, int32 (..., 4) ``(top, left, bottom, right)``:
    ``full`` the unclipped window (its size is the field's, for every position),
    ``clipped`` the part inside the image. Boxes come from
    :meth:`~cnnvis_jax.ReceptiveField.box` in the model's input pixels and are
    scaled to ``image_size`` when it differs (outward rounding). Layers without a
    receptive field (fully connected) get the whole image.
    """
    info = model.layer(layer)
    model_h, model_w = model.input.size
    height, width = image_size or (model_h, model_w)
    positions = np.asarray(positions)
    shape = positions.shape[:-1]
    rf = info.receptive_field
    if rf is None:
        whole = np.broadcast_to(np.array([0, 0, height, width], np.int32), (*shape, 4))
        return whole.copy(), whole.copy()
    sy, sx = height / model_h, width / model_w
    size_h, size_w = int(np.ceil(rf.size[0] * sy)), int(np.ceil(rf.size[1] * sx))
    full = np.zeros((*shape, 4), np.int32)
    for idx in np.ndindex(*shape):
        top, left, _, _ = rf.box(*positions[idx])
        top, left = int(np.floor(top * sy)), int(np.floor(left * sx))
        full[idx] = (top, left, top + size_h, left + size_w)
    clipped = full.copy()
    clipped[..., 0::2] = np.clip(full[..., 0::2], 0, height)
    clipped[..., 1::2] = np.clip(full[..., 1::2], 0, width)
    return clipped, full


def cut_windows(
    images: np.ndarray, clipped: np.ndarray, full: np.ndarray, fill: float = 0.5
) -> np.ndarray:
    """Windows of ``images`` (M, H, W, C), padded to the full window size.

    ``clipped``/``full`` are (M, 4) boxes from :func:`field_boxes`; the part of each
    full window outside the image holds ``fill``. Returns (M, Sh, Sw, C) float32.
    """
    images = np.asarray(images, np.float32)
    full = np.asarray(full)
    if len(full) == 0:
        return np.zeros((0, 1, 1, images.shape[-1]), np.float32)
    size_h = int(full[0, 2] - full[0, 0])
    size_w = int(full[0, 3] - full[0, 1])
    out = np.full((len(images), size_h, size_w, images.shape[-1]), fill, np.float32)
    for m, ((top, left, bottom, right), (ftop, fleft, _, _)) in enumerate(zip(clipped, full)):
        y, x = top - ftop, left - fleft
        out[m, y : y + bottom - top, x : x + right - left] = images[m, top:bottom, left:right]
    return out


@functools.partial(jax.jit, static_argnames=("size",))
def _resized01(images_uint8, size: tuple[int, int]):
    x = images_uint8.astype(jnp.float32) / 255.0
    if x.shape[1:3] != size:
        shape = (x.shape[0], *size, x.shape[-1])
        x = jax.image.resize(x, shape, method="bilinear", antialias=True)
    return x


def _images_at(source: Any, indices: np.ndarray, size: tuple[int, int], chunk: int = 64):
    """float32 (M, H, W, 3) images of ``source`` at ``indices``, resized to ``size``."""
    parts = []
    for start in range(0, len(indices), chunk):
        batch = load_batch(source, indices[start : start + chunk])
        parts.append(np.asarray(_resized01(batch["image"], tuple(size))))
    return np.concatenate(parts)


def crop_patches(
    source: Any,
    topk: TopK,
    model: Model,
    layer: str | None = None,
    image_size: tuple[int, int] | None = None,
    *,
    fill: float = 0.5,
) -> Patches:
    """Receptive-field crops of the top images of ``topk``.

    Args:
      source: the source ``topk`` was computed on.
      topk: from :func:`top_activations`.
      model: the network (for the layer's receptive field and input size).
      layer: defaults to ``topk.layer``; must be the same layer.
      image_size: (H, W) at which to cut the crops; images are resized to it (as
        the network saw them at the model's input size, the default).
      fill: value of field pixels outside the image.

    Returns:
      :class:`Patches`: images (U, k, Sh, Sw, 3) and boxes (U, k, 4) in model pixels.
    """
    name = model.resolve(layer) if layer is not None else topk.layer
    if name != topk.layer:
        raise InputError(f"topk is for layer {topk.layer!r}, not {name!r}; pass its own layer.")
    size = tuple(int(v) for v in (image_size or model.input.size))
    n_units, k = np.shape(topk.image_index)
    flat_index = np.asarray(topk.image_index).reshape(-1)
    unique, inverse = np.unique(flat_index, return_inverse=True)
    pictures = _images_at(source, unique, size)[inverse.reshape(-1)]
    positions = np.asarray(topk.position).reshape(-1, 2)
    clipped, full = field_boxes(model, name, positions, size)
    crops = cut_windows(pictures, clipped, full, fill)
    boxes, _ = field_boxes(model, name, positions)
    return Patches(crops.reshape(n_units, k, *crops.shape[1:]), boxes.reshape(n_units, k, 4))
