"""Every update rule of the pre-image problems as an optax ``GradientTransformation``.

They consume the gradient of the energy being *minimized* and return the update to
add to the parameters (``optax.apply_updates``); states are NamedTuples, so each
composes with any other optax piece. Per-image quantities (norms, means) are taken
over every axis but the first (one entry per image).

* Adam -- ``optax.adam`` itself (Lucid: ``Adam(0.05)``).
* :func:`ascent` -- Yosinski et al.'s plain steps: ``"constant"`` (``-lr g``) or
  ``"progress"`` (``-min(max_lr, desired / ||g||²) g``, the step whose linear
  prediction changes the energy by ``desired``).
* :func:`normalized_ascent` -- ``-lr_t / mean|g| · g`` with ``lr_t`` linear from
  ``start_lr`` to ``end_lr`` over ``total`` steps (DGN-AM; MFV's octaves).
* :func:`momentum_with_resets` -- deep-goggle ``invert_nn.m``: heavy-ball momentum
  ``v = μ v − lr_t g``, ``v`` reset to 0 whenever the learning rate changes (the
  first step counts as a change from 0).
* :func:`adagrad_momentum` -- nnpreimage ``nnpreimage.m`` (``useAdagrad``):
  ``G = μ G + g²``, ``v = μ v − g / (1/lr_t + √G)``; ``v`` (not ``G``) is reset
  when the learning rate changes, as in the code.
* :func:`sign_descent` -- ``-step · sign(g)`` (FGSM, PGD).

Learning-rate schedules of the inversion rules are piecewise constant:
``schedule = ((lr, steps), ...)``; past the last piece the last rate stays (the
code's ``learningRate(min(t, end))``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "AdagradMomentumState",
    "CountState",
    "MomentumResetState",
    "adagrad_momentum",
    "ascent",
    "momentum_with_resets",
    "normalized_ascent",
    "normalized_step",
    "piecewise_rate",
    "sign_descent",
]


def _per_image(x: jax.Array, value: jax.Array) -> jax.Array:
    """``value`` (B,) broadcast against ``x`` (B, ...)."""
    return value.reshape(value.shape + (1,) * (x.ndim - value.ndim))


def _image_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


class CountState(NamedTuple):
    count: jax.Array  # int32 ()


def ascent(
    policy: str = "constant", lr=1.0, max_lr=100.0, desired=2.0
) -> optax.GradientTransformation:
    """Yosinski et al.'s steps: ``-lr g`` (``"constant"``) or
    ``-min(max_lr, desired / ||g||²) g`` per image (``"progress"``)."""
    if policy not in ("constant", "progress"):
        raise ValueError(f"policy must be 'constant' or 'progress', got {policy!r}.")

    def update(grads, state, params=None):
        del params

        def one(g):
            if policy == "constant":
                return -lr * g
            sq = jnp.sum(g * g, axis=_image_axes(g))
            rate = jnp.minimum(max_lr, desired / jnp.maximum(sq, 1e-30))
            return -_per_image(g, rate) * g

        return jax.tree_util.tree_map(one, grads), state

    return optax.GradientTransformation(lambda params: (), update)


def normalized_step(g: jax.Array, lr) -> jax.Array:
    """``-lr / mean|g| · g`` per image (means over every axis but the first)."""
    mean_abs = jnp.mean(jnp.abs(g), axis=_image_axes(g))
    return -_per_image(g, lr / jnp.maximum(mean_abs, 1e-30)) * g


def normalized_ascent(start_lr, end_lr, total: int) -> optax.GradientTransformation:
    """``-lr_t / mean|g| · g`` with ``lr_t = start + (end - start) · t / total`` at the
    ``t``-th update (DGN-AM's schedule)."""

    def init(params):
        return CountState(jnp.zeros((), jnp.int32))

    def update(grads, state, params=None):
        del params
        lr = start_lr + (end_lr - start_lr) * state.count / total
        updates = jax.tree_util.tree_map(lambda g: normalized_step(g, lr), grads)
        return updates, CountState(state.count + 1)

    return optax.GradientTransformation(init, update)


def sign_descent(step_size) -> optax.GradientTransformation:
    """``-step_size · sign(g)`` (the update of FGSM and PGD)."""
    return optax.chain(optax.scale_by_sign(), optax.scale(-step_size))


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
