"""Work over devices through JAX's own sharding: a 1-D mesh over all devices.

The mesh axis is named for what is split (``images`` for streaming over a data
set, ``units`` for rendering many units at once). Every function here is a no-op
on one device, so callers write the same code for one CPU and a pod slice. Per-image
(per-unit) work is independent, so sharding that axis and replicating everything
else gives the single-device results; counts are ``psum``-ed where they meet.

Test multi-device code on CPU with ``JAX_NUM_CPU_DEVICES=8`` in a subprocess.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "images"
"""The mesh axis of streaming over images."""


@functools.lru_cache(maxsize=8)
def _mesh(count: int, axis: str) -> jax.sharding.Mesh:
    axis_type = getattr(getattr(jax.sharding, "AxisType", None), "Auto", None)
    if axis_type is None:  # pragma: no cover - jax without axis types
        return jax.make_mesh((count,), (axis,))
    return jax.make_mesh((count,), (axis,), axis_types=(axis_type,))


def device_mesh(axis: str) -> jax.sharding.Mesh | None:
    """A 1-D mesh over all devices with the one axis ``axis``, or ``None`` on a
    single device."""
    count = jax.device_count()
    return _mesh(count, axis) if count > 1 else None


def image_mesh() -> jax.sharding.Mesh | None:
    """The 1-D ``images`` mesh over all devices, or ``None`` on a single device."""
    return device_mesh(AXIS)


def shardings(mesh: jax.sharding.Mesh | None, *specs: P | None):
    """``NamedSharding`` per spec (``None`` spec = replicated); all ``None`` without a mesh."""
    if mesh is None:
        return tuple(None for _ in specs)
    return tuple(NamedSharding(mesh, P() if spec is None else spec) for spec in specs)


def put(tree, sharding):
    """``tree`` placed with ``sharding`` (a no-op without one, or when already placed so)."""
    return tree if sharding is None else jax.device_put(tree, sharding)


def devices_multiple(n: int) -> int:
    """``n`` rounded up to a multiple of the device count (the axis splits evenly)."""
    count = jax.device_count()
    return -(-int(n) // count) * count


def pad_axis(array, size: int, axis: int = 0):
    """``array`` padded along ``axis`` to ``size`` by repeating its last entry (a JAX
    array, typed PRNG keys included, stays one; anything else becomes numpy)."""
    xp = jax.numpy if isinstance(array, jax.Array) else np
    array = array if xp is not np else np.asarray(array)
    n = array.shape[axis]
    missing = size - n
    if missing <= 0:
        return array
    last = array[(slice(None),) * axis + (slice(n - 1, n),)]
    return xp.concatenate([array, xp.repeat(last, missing, axis=axis)], axis=axis)
