"""Frozen dataclasses registered as pytrees (numbers and arrays as data, names as metadata)."""

from __future__ import annotations

import dataclasses

import jax


def pytree_dataclass(cls=None, *, static: tuple[str, ...] = ()):
    """Make ``cls`` a frozen dataclass whose fields are pytree children, except the
    fields named in ``static`` (hashable metadata: names, shapes, loop lengths).

    Data fields may hold Python numbers, arrays or other pytrees; they become traced
    values under ``jit`` and can carry a leading axis under ``vmap`` (a sweep).
    """

    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True, eq=False)(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = set(static) - set(names)
        if unknown:
            raise TypeError(f"static fields {sorted(unknown)} are not fields of {cls.__name__}")
        meta = [n for n in names if n in static]
        data = [n for n in names if n not in static]
        jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
        return cls

    return wrap if cls is None else wrap(cls)


def replace(obj, **changes):
    """A copy of the frozen dataclass ``obj`` with ``changes`` (never mutates ``obj``)."""
    return dataclasses.replace(obj, **changes)


def normal(key, shape, dtype=None):
    """``jax.random.normal`` drawn flat and reshaped (the same numbers for a given
    key and size; multi-dimensional draws compile far more slowly on CPU)."""
    import math

    import jax.numpy as jnp

    flat = jax.random.normal(key, (math.prod(shape),), dtype or jnp.float32)
    return flat.reshape(shape)


def randint(key, shape, low, high):
    """``jax.random.randint`` drawn flat and reshaped (see :func:`normal`)."""
    import math

    return jax.random.randint(key, (math.prod(shape),), low, high).reshape(shape)
