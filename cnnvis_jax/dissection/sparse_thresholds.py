"""Pass 1 with sparse bookkeeping: the device compares every activation with each
unit's running threshold, the host keeps the few values that pass.

The state is the one of :mod:`~cnnvis_jax.dissection.thresholds` (per unit, the
``K`` largest values seen so far), kept on the host. Per batch the device runs the
forward for all layers and marks the activations above the unit's current ``K``-th
value (after the first batches, a few per cent of them and falling as ``K / i`` in
batch ``i``); the host gathers only those (``np.flatnonzero``) into a candidate
buffer. When the buffer holds more than ``U * K / 4`` values it is merged into the
top ``K`` per unit (``np.partition``) and the ``K``-th values rise. Values at or below a
unit's ``K``-th value cannot change its top ``K`` (as values), so the result is
exact, equal to the dense pass. Memory: ``K`` values per unit plus the buffer
(at most ``U * K / 4`` plus one batch's candidates); like ``K`` itself (``q`` times
the activations per unit) it grows with the data set, nothing else does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.dissection import thresholds as th
from cnnvis_jax.features import to_model_input
from cnnvis_jax.model import Model


def _local_step(model: Model, images, valid, kth, *, layers):
    """Forward; per layer and image: activations, bool above the image's ``kth`` row
    (B, U), minimum, maximum. Everything is per image, so a batch split over the
    processes of a run needs no collective."""
    acts = model.apply(model.params, to_model_input(model, images), layers)
    out = {}
    for name in layers:
        a = acts[name].astype(jnp.float32)
        a = jnp.where(jnp.isnan(a) | ~valid[:, None, None, None], -jnp.inf, a)
        lo = jnp.min(jnp.where(valid[:, None, None, None], a, jnp.inf), axis=(1, 2))
        peak = jnp.max(a, axis=(1, 2))
        out[name] = {
            "acts": a,
            "above": a > kth[name][:, None, None, :],
            "lo": lo,
            "peak": jnp.where(peak == 0, 0.0, peak),
        }
    return out


@functools.lru_cache(maxsize=16)
def compiled_step(layers: tuple[str, ...]):
    """jit(step)(model, images, valid, kth) -> {layer: {acts, above, lo, peak}}."""
    return jax.jit(functools.partial(_local_step, layers=layers))


class HostTopK:
    """One layer's pass-1 state on the host (see the module docstring)."""

    def __init__(self, spec: th.PassOneSpec, merged: dict[str, np.ndarray] | None = None):
        self.spec = spec
        state = merged if merged is not None else th.init_state(spec, 1)
        self.top = np.array(state["top"][0], np.float32)  # (U, K), any order
        self.lo = np.array(state["lo"][0], np.float32)
        self.hi = np.array(state["hi"][0], np.float32)
        self.img_v = np.array(state["img_v"][0], np.float32)
        self.img_i = np.array(state["img_i"][0], np.int32)
        self.kth = self.top.min(axis=1)
        self._units: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._pending = 0
        # buffered values that trigger a merge: a quarter of the state's size
        self.budget = max(spec.units * spec.kept // 4, 1 << 16)

    def absorb(self, out: dict[str, np.ndarray], indices: np.ndarray) -> None:
        """Add one batch's step output (numpy) for images ``indices`` (int32 (B,),
        :data:`~cnnvis_jax.dissection.thresholds.NO_IMAGE` for padding)."""
        units = self.spec.units
        where = np.flatnonzero(out["above"])
        self._values.append(out["acts"].reshape(-1)[where])
        self._units.append((where % units).astype(np.int32))
        self._pending += len(where)
        self.lo = np.minimum(self.lo, np.min(out["lo"], axis=0, initial=np.inf))
        self.hi = np.maximum(self.hi, np.max(out["peak"], axis=0, initial=-np.inf))
        peak = np.asarray(out["peak"]).T  # (U, B)
        value = np.concatenate([self.img_v, peak], axis=1)
        image = np.concatenate([self.img_i, np.broadcast_to(indices, peak.shape)], axis=1)
        self.img_v, self.img_i = th.top_images(value, image, self.spec.top_images)
        if self._pending > self.budget:
            self.merge()

    def merge(self) -> None:
        """Fold the candidate buffer into the top ``K`` per unit (one unit at a time,
        so the merge needs no more memory than one unit's values)."""
        if not self._pending:
            return
        units, values = np.concatenate(self._units), np.concatenate(self._values)
        self._units, self._values, self._pending = [], [], 0
        order = np.argsort(units, kind="stable")
        values = values[order]
        bounds = np.searchsorted(units[order], np.arange(self.spec.units + 1))
        k = self.spec.kept
        for unit in np.flatnonzero(np.diff(bounds)):
            pool = np.concatenate([self.top[unit], values[bounds[unit] : bounds[unit + 1]]])
            self.top[unit] = np.partition(pool, len(pool) - k)[len(pool) - k :]
        self.kth = self.top.min(axis=1)

    def merged(self) -> dict[str, np.ndarray]:
        """The state in :func:`~cnnvis_jax.dissection.thresholds.merge_devices`' form."""
        self.merge()
        return {
            "top": -np.sort(-self.top, axis=1)[None],
            "lo": self.lo[None],
            "hi": self.hi[None],
            "img_v": self.img_v[None],
            "img_i": self.img_i[None],
        }


__all__ = ["HostTopK", "compiled_step"]
