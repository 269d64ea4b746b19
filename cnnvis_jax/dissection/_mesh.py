"""Image-axis sharding for the dissection passes: ``shard_map`` over the 1-D ``images``
mesh, or the plain function on one device (the same code either way)."""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax import lax
from jax.sharding import PartitionSpec as P

from cnnvis_jax import parallel

AXIS = parallel.AXIS
SPLIT = P(AXIS)
REPLICATED = P()


def mesh() -> jax.sharding.Mesh | None:
    return parallel.image_mesh()


def devices() -> int:
    return jax.device_count()


def shard(fn: Callable, mesh_, in_specs, out_specs) -> Callable:
    """``fn`` run per device on its block (``shard_map``), or ``fn`` itself without a mesh."""
    if mesh_ is None:
        return fn
    return jax.shard_map(fn, mesh=mesh_, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def psum(tree, axis: str | None):
    """Sum over the devices of ``axis`` (identity without one)."""
    return tree if axis is None else lax.psum(tree, axis)
