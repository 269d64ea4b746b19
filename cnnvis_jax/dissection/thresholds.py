"""Pass 1: exact per-unit top-quantile thresholds, streamed over a data set.

For every unit ``u`` of every requested layer the threshold is an order statistic of
all ``M = N * h * w`` activations at feature-map resolution:

* ``exact`` read-out: ``T_u`` = the ``K``-th largest value, ``K = ceil(q * M)``
  (so fewer than ``q * M`` values exceed it; numpy's ``quantile(a, 1 - q)`` lies
  within one order statistic of it);
* ``lite`` read-out: NetDissect-Lite's ``readout(1000)[:, int(1000 * (1 - q) - 1)]``
  (the point 994/999 for q = 0.005) with the positions its sketch gives the sorted
  values (see :func:`readout`), computed from the exact order statistics.

The dense engine (below) streams on device; the sparse engine
(:mod:`~cnnvis_jax.dissection.sparse_thresholds`, the CPU default) keeps the same
state on the host and gives the same thresholds.

Streaming with fixed shapes: each device keeps, per unit, the sorted top ``K`` seen
so far (``top``) and a candidate buffer (``buf``). Only values above the current
``K``-th value can enter the final top ``K``, so a batch appends just those to the
buffer (a masked cumulative-sum compaction); when the buffer would overflow, top and
buffer are merged with ``lax.top_k`` (inside ``lax.cond``, so only when needed). The
buffer holds at least one local batch, so the merged state is always exact. At the
end the devices' states are merged on the host. Memory: ``K + buffer`` floats per unit
(``K`` grows as ``q * M``; nothing else depends on the data set's size).

The same pass keeps each unit's running minimum and maximum (constant units are
reported, not thresholded) and, optionally, the top images by per-image maximum.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnvis_jax.dissection import _mesh
from cnnvis_jax.errors import InputError
from cnnvis_jax.features import to_model_input
from cnnvis_jax.model import Model

NO_IMAGE = np.iinfo(np.int32).max
READOUTS = ("exact", "lite")


def lite_quantile(quantile: float) -> float:
    """The point NetDissect-Lite reads for ``quantile``: ``linspace(0, 1, 1000)[i]`` with
    ``i = int(1000 * (1 - quantile) - 1)`` (0.005 -> 994/999)."""
    return float(np.linspace(0.0, 1.0, 1000)[int(1000 * (1 - quantile) - 1)])


def check_quantile(quantile: float) -> float:
    q = float(quantile)
    if not 0.0 < q < 0.5:
        raise InputError(f"quantile must be in (0, 0.5) (the top fraction kept), got {quantile!r}.")
    return q


def _lite_positions(ranks: np.ndarray, total: int) -> np.ndarray:
    """float64 positions of ascending ranks in Lite's read-out table: the float32
    ``rank / (total - 1/2)`` of its normalized cumulative weights (see :func:`readout`)."""
    return (ranks.astype(np.float32) / np.float32(total - 0.5)).astype(np.float64)


def _lite_rank(total: int, quantile: float) -> int:
    """The ascending rank ``j`` with ``pos[j] <= x < pos[j + 1]`` (numpy.interp's cell)."""
    x = lite_quantile(quantile)
    j = int(min(max(math.floor(x * (total - 0.5)), 0), total - 1))
    ranks = np.arange(max(j - 2, 0), min(j + 3, total))
    pos = _lite_positions(ranks, total)
    return int(ranks[np.searchsorted(pos, x, side="right") - 1])


def kept_count(total: int, quantile: float) -> int:
    """Values per unit the state must keep so that both read-outs are exact."""
    exact = math.ceil(quantile * total)
    lite = total - _lite_rank(total, quantile)
    return int(min(total, max(exact, lite, 1)))


def readout(desc: np.ndarray, total: int, quantile: float, mode: str = "exact") -> np.ndarray:
    """Thresholds from each unit's sorted (descending) top values.

    Args:
      desc: (U, K) the K largest activations per unit, descending (K from
        :func:`kept_count`).
      total: M, the number of activations per unit.
      quantile: the top fraction q.
      mode: "exact" (the K-th largest, K = ceil(q M)) or "lite" (NetDissect-Lite's
        read-out, below).

    NetDissect-Lite reads ``QuantileVector.readout(1000)[:, 994]``: ``numpy.interp`` at
    ``x = 994/999`` over a table of the sorted values plus the unit's minimum and
    maximum (weight 0), placed at their float32 cumulative weights (``c - w/2``)
    shifted to start at 0 and divided by the last. While its sketch holds every value
    (M <= 24,576 per unit), the table is the sorted values with ascending rank ``j``
    at ``float32(j / (M - 1/2))``: the order numpy's unstable sort gives the two
    weight-0 extremes among equal values moves that denominator to ``M - 1`` (the
    maximum extreme sorted before the equal real maximum) and the start by 1/2 (the
    minimum extreme first); this read-out takes the common case (both extremes
    outside), which equals Lite's value for most units and otherwise lies within one
    half of the gap between two neighbouring order statistics of it. Beyond 24,576
    values Lite's sketch subsamples; this read-out stays exact.

    Returns:
      float64 (U,) thresholds (compare float32 activations with them as float64, or
      with :func:`float32_below`).
    """
    desc = np.asarray(desc, np.float64)
    if mode == "exact":
        k = math.ceil(quantile * total)
        return desc[:, k - 1].copy()
    if mode != "lite":
        raise InputError(f"readout must be one of {READOUTS}, got {mode!r}.")
    x = lite_quantile(quantile)
    j = _lite_rank(total, quantile)
    if j >= total - 1:
        return desc[:, 0].copy()
    x0, x1 = _lite_positions(np.array([j, j + 1]), total)
    y0, y1 = desc[:, total - 1 - j], desc[:, total - 2 - j]
    if x == x0:
        return y0.copy()
    slope = (y1 - y0) / (x1 - x0)
    return slope * (x - x0) + y0


def float32_below(values: np.ndarray) -> np.ndarray:
    """float32 ``t`` with ``a > t`` exactly when ``a > values`` for every float32 ``a``
    (the largest float32 not above each float64 threshold)."""
    v = np.asarray(values, np.float64)
    t = v.astype(np.float32)
    return np.where(t.astype(np.float64) > v, np.nextafter(t, np.float32(-np.inf)), t).astype(
        np.float32
    )


@dataclasses.dataclass(frozen=True)
class PassOneSpec:
    """Static sizes of pass 1 for one layer: U units, K kept, Kb buffer, k top images."""

    units: int
    kept: int
    buffer: int
    top_images: int


def init_state(spec: PassOneSpec, devices: int) -> dict[str, np.ndarray]:
    """Empty pass-1 state of one layer, leading axis = devices (numpy)."""
    d, u = devices, spec.units
    return {
        "top": np.full((d, u, spec.kept), -np.inf, np.float32),
        "buf": np.full((d, u, spec.buffer), -np.inf, np.float32),
        "fill": np.zeros((d, u), np.int32),
        "lo": np.full((d, u), np.inf, np.float32),
        "hi": np.full((d, u), -np.inf, np.float32),
        "img_v": np.full((d, u, spec.top_images), -np.inf, np.float32),
        "img_i": np.full((d, u, spec.top_images), NO_IMAGE, np.int32),
    }


def _absorb(top, buf, fill, flat):
    """Add ``flat`` (U, n) to the per-unit top-K state (see the module docstring)."""
    k, kb = top.shape[1], buf.shape[1]
    count = jnp.sum(flat > top[:, k - 1 : k], axis=1, dtype=jnp.int32)

    def merge(top, buf, fill):
        merged = lax.top_k(jnp.concatenate([top, buf], axis=1), k)[0]
        return merged, jnp.full_like(buf, -jnp.inf), jnp.zeros_like(fill)

    top, buf, fill = lax.cond(jnp.any(fill + count > kb), merge, lambda *a: a, top, buf, fill)
    take = flat > top[:, k - 1 : k]
    pos = fill[:, None] + jnp.cumsum(take, axis=1, dtype=jnp.int32) - 1
    pos = jnp.where(take, pos, kb)
    rows = jnp.broadcast_to(jnp.arange(top.shape[0])[:, None], pos.shape)
    buf = buf.at[rows, pos].set(flat, mode="drop")
    return top, buf, fill + jnp.sum(take, axis=1, dtype=jnp.int32)


def _top_images(img_v, img_i, peak, indices):
    """Merge per-image maxima ``peak`` (U, b) into the top-k (value desc, index asc)."""
    k = img_v.shape[1]
    idx = jnp.broadcast_to(indices[None, :], peak.shape)
    neg, image = lax.sort(
        (jnp.concatenate([-img_v, -peak], 1), jnp.concatenate([img_i, idx], 1)),
        dimension=1,
        num_keys=2,
    )
    return -neg[:, :k], image[:, :k]


def _local_step(model: Model, images, indices, valid, states, *, layers: tuple[str, ...]):
    acts = model.apply(model.params, to_model_input(model, images), layers)
    out = {}
    for name in layers:
        st = {k: v[0] for k, v in states[name].items()}
        a = acts[name].astype(jnp.float32)
        b, h, w, u = a.shape
        vals = a.reshape(b, h * w, u)
        vals = jnp.where(jnp.isnan(vals), -jnp.inf, vals)
        lo = jnp.min(jnp.where(valid[:, None, None], vals, jnp.inf), axis=(0, 1))
        hi = jnp.max(jnp.where(valid[:, None, None], vals, -jnp.inf), axis=(0, 1))
        vals = jnp.where(valid[:, None, None], vals, -jnp.inf)
        flat = vals.transpose(2, 0, 1).reshape(u, b * h * w)
        top, buf, fill = _absorb(st["top"], st["buf"], st["fill"], flat)
        peak = jnp.max(vals, axis=1).T
        peak = jnp.where(peak == 0, 0.0, peak)
        index = jnp.where(valid, indices, NO_IMAGE)
        img_v, img_i = _top_images(st["img_v"], st["img_i"], peak, index)
        new = {
            "top": top,
            "buf": buf,
            "fill": fill,
            "lo": jnp.minimum(st["lo"], lo),
            "hi": jnp.maximum(st["hi"], hi),
            "img_v": img_v,
            "img_i": img_i,
        }
        out[name] = {k: v[None] for k, v in new.items()}
    return out


@functools.lru_cache(maxsize=16)
def compiled_step(layers: tuple[str, ...], devices: int):
    """jit(step)(model, images, indices, valid, states) -> states (sharded over images)."""
    fn = functools.partial(_local_step, layers=layers)
    mesh = _mesh.mesh() if devices > 1 else None
    split, rep = _mesh.SPLIT, _mesh.REPLICATED
    fn = _mesh.shard(fn, mesh, (rep, split, split, split, split), split)
    return jax.jit(fn, donate_argnums=(4,))


def merge_devices(state: dict[str, np.ndarray], spec: PassOneSpec) -> dict[str, np.ndarray]:
    """One device's worth of state holding the exact merge of all devices' states."""
    d, u = state["top"].shape[:2]
    values = np.concatenate(
        [
            state["top"].transpose(1, 0, 2).reshape(u, -1),
            state["buf"].transpose(1, 0, 2).reshape(u, -1),
        ],
        axis=1,
    )
    k = spec.kept
    part = -np.partition(-values, k - 1, axis=1)[:, :k] if values.shape[1] > k else values
    top = -np.sort(-part, axis=1)
    merged = init_state(spec, 1)
    merged["top"][0] = top
    merged["lo"][0] = state["lo"].min(axis=0)
    merged["hi"][0] = state["hi"].max(axis=0)
    merged["img_v"][0], merged["img_i"][0] = top_images(
        state["img_v"].transpose(1, 0, 2).reshape(u, -1),
        state["img_i"].transpose(1, 0, 2).reshape(u, -1),
        spec.top_images,
    )
    return merged


def top_images(values: np.ndarray, images: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best per row of per-image maxima ``values`` (U, n) with image indices
    ``images`` (U, n): value descending, ties by smaller index (as :func:`_top_images`)."""
    order = np.lexsort((images, -values), axis=1)[:, :k]
    return np.take_along_axis(values, order, 1), np.take_along_axis(images, order, 1)


def spread(merged: dict[str, np.ndarray], spec: PassOneSpec, devices: int) -> dict[str, np.ndarray]:
    """A merged single-device state laid out over ``devices`` (device 0 holds it)."""
    out = init_state(spec, devices)
    for key in ("top", "img_v", "img_i"):
        out[key][0] = merged[key][0]
    out["lo"][:] = merged["lo"][0]
    out["hi"][:] = merged["hi"][0]
    return out


@dataclasses.dataclass
class Thresholds:
    """Result of pass 1 for one layer (numpy).

    Attributes:
      layer: canonical layer name.
      values: float64 (U,) thresholds (``+inf`` for constant units); a float32
        activation ``a`` is above when ``a > values`` (:func:`float32_below` gives the
        float32 thresholds with the same comparisons).
      constant: bool (U,) units whose activations never vary.
      minimum, maximum: float32 (U,) over the data set.
      top_values: float32 (U, k) largest per-image maxima, descending.
      top_images: int64 (U, k) their image indices (into the source).
      total: M, activations per unit.
      quantile, readout: how the thresholds were read.
    """

    layer: str
    values: np.ndarray
    constant: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    top_values: np.ndarray
    top_images: np.ndarray
    total: int
    quantile: float
    readout: str


def finish(
    layer: str, merged: dict[str, np.ndarray], total: int, quantile: float, mode: str
) -> Thresholds:
    """Thresholds of a merged pass-1 state."""
    lo, hi = merged["lo"][0], merged["hi"][0]
    constant = ~(hi > lo)
    values = readout(merged["top"][0], total, quantile, mode)
    values = np.where(constant, np.inf, values)
    return Thresholds(
        layer=layer,
        values=values,
        constant=constant,
        minimum=lo.astype(np.float32),
        maximum=hi.astype(np.float32),
        top_values=merged["img_v"][0],
        top_images=merged["img_i"][0].astype(np.int64),
        total=total,
        quantile=quantile,
        readout=mode,
    )


def layer_specs(
    model: Model,
    layers: Sequence[str],
    count: int,
    quantile: float,
    local_batch: int,
    top_images: int,
) -> dict[str, PassOneSpec]:
    specs = {}
    for name in layers:
        h, w, u = model.layer(name).shape
        total = count * h * w
        kept = kept_count(total, quantile)
        specs[name] = PassOneSpec(
            units=u,
            kept=kept,
            buffer=max(local_batch * h * w, -(-kept // 2)),
            top_images=max(1, min(top_images, count)),
        )
    return specs
