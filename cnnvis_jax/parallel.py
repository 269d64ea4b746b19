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
    """``tree`` placed with ``sharding`` (a no-op without one, or when already placed so).
    In a run of several processes, host values (numpy arrays, Python numbers) must be the
    same on every process; each process places its devices' parts of them."""
    if sharding is None:
        return tree
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(a):
        if isinstance(a, jax.Array):
            return jax.device_put(a, sharding)
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(one, tree)


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


# --- several processes (jax.distributed) --------------------------------------------------
#
# Under ``jax.distributed`` the mesh spans every process's devices. A batch split over the
# 1-D mesh is built from each process's own rows (it decodes only those), and per-image
# results come back as each process's rows; everything else is the same code.


def process_rows(size: int, mesh: jax.sharding.Mesh | None = None) -> slice:
    """The rows of a batch of ``size`` (a multiple of the device count) that this
    process's devices hold when it is split over ``mesh`` (default the 1-D images mesh):
    all of them in one process."""
    mesh = image_mesh() if mesh is None else mesh
    if jax.process_count() == 1 or mesh is None:
        return slice(0, size)
    sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
    blocks = sorted(
        (idx[0].start or 0, idx[0].stop if idx[0].stop is not None else size)
        for idx in sharding.addressable_devices_indices_map((size,)).values()
    )
    for (_, stop), (start, _) in zip(blocks, blocks[1:]):
        if stop != start:  # pragma: no cover - meshes from jax.make_mesh keep them together
            raise RuntimeError(f"this process's rows of the mesh are not contiguous: {blocks}")
    return slice(blocks[0][0], blocks[-1][1])


def take_batch(
    order: np.ndarray, start: int, size: int, rows: slice = slice(None)
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, valid)``: the batch of ``size`` at ``start`` of ``order`` (padding
    repeats the last index and is not valid), ``rows`` of it (:func:`process_rows`)."""
    chunk = order[start : start + size]
    valid = np.zeros(size, bool)
    valid[: len(chunk)] = True
    return pad_axis(chunk, size)[rows], valid[rows]


def put_rows(tree, sharding, size: int):
    """A global batch of ``size`` rows split with ``sharding`` from this process's rows
    (:func:`process_rows`) in ``tree``; :func:`put` in one process."""
    if jax.process_count() == 1 or sharding is None:
        return put(tree, sharding)
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(
            sharding, np.asarray(a), (size, *np.shape(a)[1:])
        ),
        tree,
    )


def local_rows(tree):
    """numpy copies of ``tree``'s arrays: a batch split over the mesh gives this process's
    rows (:func:`process_rows`), anything replicated or on one process all of it."""

    def one(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable or a.is_fully_replicated:
            return np.asarray(a)
        shards = sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)
        seen, parts = set(), []
        for s in shards:
            start = s.index[0].start or 0
            if start not in seen:  # a row block replicated on several local devices once
                seen.add(start)
                parts.append(np.asarray(s.data))
        return np.concatenate(parts)

    return jax.tree_util.tree_map(one, tree)


def to_host(tree):
    """numpy copies of ``tree``'s arrays, whole: an array split over the devices of
    several processes is gathered (a collective every process must reach)."""

    def one(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable or a.is_fully_replicated:
            return np.asarray(a)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree_util.tree_map(one, tree)


def gather_batches(local: np.ndarray, n: int, size: int) -> np.ndarray:
    """The (n, ...) rows of every process in data order, from this process's rows
    ``local`` (its :func:`process_rows` of each global batch of ``size``, batch after
    batch, padded rows included: ``ceil(n / size) * local_rows`` of them)."""
    local = np.asarray(local)
    if jax.process_count() == 1:
        return local[:n]
    from cnnvis_jax import distributed

    every = distributed.allgather(local)  # (P, batches * per, ...)
    per = local.shape[0] // max(-(-n // size), 1)
    batches = every.reshape(every.shape[0], -1, per, *local.shape[1:])
    ordered = np.swapaxes(batches, 0, 1).reshape(-1, *local.shape[1:])  # batch by batch
    return ordered[:n]
