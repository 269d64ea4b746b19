"""The two published inversion optimizers as optax gradient transformations.

Both consume the gradient of the objective and return the *update* to add to the
variable (``optax.apply_updates``), with NamedTuple states, so they compose with
any other optax piece (``optax.chain(optax.scale(B**2), momentum_with_resets(...))``
is the CVPR'15 step).

* :func:`momentum_with_resets` — deep-goggle ``invert_nn.m``: heavy-ball momentum
  ``v = μ v − lr_t g``, with ``v`` reset to 0 whenever the learning rate changes
  (the first step counts as a change from 0).
* :func:`adagrad_momentum` — nnpreimage ``nnpreimage.m`` (``useAdagrad``):
  ``G = μ G + g²``, ``v = μ v − g / (1/lr_t + √G)``; ``v`` (not ``G``) is reset when
  the learning rate changes, as in the code.

Learning rates are piecewise constant: ``schedule = ((lr, steps), ...)``; past the
last piece the last rate stays (the code's ``learningRate(min(t, end))``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "AdagradMomentumState",
    "MomentumResetState",
    "adagrad_momentum",
    "momentum_with_resets",
    "piecewise_rate",
]

Schedule = tuple[tuple[float, int], ...]


def piecewise_rate(schedule: Schedule):
    """``rate(count) -> float32`` for a piecewise-constant ``((lr, steps), ...)``."""
    if not schedule or any(int(n) < 1 for _, n in schedule):
        raise ValueError(f"schedule needs pieces of at least one step, got {schedule!r}.")
    rates = np.asarray([float(lr) for lr, _ in schedule], np.float32)
    ends = np.cumsum([int(n) for _, n in schedule])

    def rate(count):
        piece = jnp.searchsorted(jnp.asarray(ends), count, side="right")
        return jnp.asarray(rates)[jnp.minimum(piece, len(rates) - 1)]

    return rate


class MomentumResetState(NamedTuple):
    count: jax.Array  # int32 ()
    velocity: optax.Updates
    last_rate: jax.Array  # float32 ()


def momentum_with_resets(schedule: Schedule, momentum: float = 0.9) -> optax.GradientTransformation:
    """CVPR'15 heavy-ball step with a momentum reset at each learning-rate change."""
    rate_at = piecewise_rate(schedule)

    def init(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return MomentumResetState(jnp.zeros((), jnp.int32), zeros, jnp.zeros((), jnp.float32))

    def update(grads, state, params=None):
        del params
        rate = rate_at(state.count)
        keep = (rate == state.last_rate).astype(jnp.float32)
        velocity = jax.tree_util.tree_map(
            lambda v, g: momentum * keep * v - rate * g, state.velocity, grads
        )
        return velocity, MomentumResetState(state.count + 1, velocity, rate)

    return optax.GradientTransformation(init, update)


class AdagradMomentumState(NamedTuple):
    count: jax.Array  # int32 ()
    accumulator: optax.Updates  # G
    velocity: optax.Updates
    last_rate: jax.Array  # float32 ()


def adagrad_momentum(
    schedule: Schedule, momentum: float = 0.9, rate_scale: float = 1.0
) -> optax.GradientTransformation:
    """IJCV'16 step: ``G = μG + g²``, ``v = μv − g/(1/lr + √G)`` with
    ``lr = rate_scale · schedule(t)`` (the code's ``numPixels · learningRate(t)``)."""
    rate_at = piecewise_rate(schedule)

    def init(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return AdagradMomentumState(
            jnp.zeros((), jnp.int32), zeros, zeros, jnp.zeros((), jnp.float32)
        )

    def update(grads, state, params=None):
        del params
        rate = rate_scale * rate_at(state.count)
        keep = (rate == state.last_rate).astype(jnp.float32)
        acc = jax.tree_util.tree_map(lambda a, g: momentum * a + g * g, state.accumulator, grads)
        velocity = jax.tree_util.tree_map(
            lambda v, g, a: momentum * keep * v - g / (1.0 / rate + jnp.sqrt(a)),
            state.velocity,
            grads,
            acc,
        )
        return velocity, AdagradMomentumState(state.count + 1, acc, velocity, rate)

    return optax.GradientTransformation(init, update)
