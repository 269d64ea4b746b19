"""Random keys as the package's functions take them: ``key=`` an int seed, a raw
``uint32 (2,)`` key (``jax.random.PRNGKey``) or a typed key (``jax.random.key``)."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.errors import InputError

__all__ = ["raw_key"]


def raw_key(key: Any) -> jax.Array:
    """The raw key data of ``key`` (an int seed ``s`` gives ``PRNGKey(s)``; a typed key
    gives its data), so it can travel through ``jit`` and checkpoints as an array.

    Raises:
      InputError: anything else (the message names what was given).
    """
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        return jax.random.PRNGKey(int(key))
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if dtype is not None and np.dtype(dtype) == np.uint32 and np.shape(key)[-1:] == (2,):
        return jnp.asarray(key)
    raise InputError(
        f"key must be an int seed or a JAX PRNG key, got {type(key).__name__} "
        f"{getattr(key, 'shape', '')}; pass key=0 or key=jax.random.key(0)."
    )
