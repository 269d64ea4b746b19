"""Update rules for gradient *ascent*, in the optax style: ``init(params) -> state``,
``update(grad, state, params, i, total) -> (params, state)``.

``grad`` is the derivative of the quantity being maximized, float ``(B, ...)`` with
one leading entry per image; per-image quantities (norms, means) are taken over
every other axis. Hyperparameters are data (sweepable); policies are static.

* :class:`Adam` -- optax's Adam on ``-grad`` (Lucid: ``Adam(0.05)``).
* :class:`Ascent` -- ``params += lr * grad`` with Yosinski et al.'s policies:
  ``"constant"`` (``lr``) or ``"progress"`` (``min(max_lr, desired / ||g||^2)``,
  the step whose linear prediction gains ``desired``).
* :class:`NormalizedAscent` -- ``params += lr_i / mean|g| * grad`` with ``lr_i``
  linear from ``start_lr`` to ``end_lr`` over the run (DGN-AM; MFV octaves).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from cnnvis_jax.am._tree import pytree_dataclass
from cnnvis_jax.errors import InputError

__all__ = ["Adam", "Ascent", "NormalizedAscent"]


def _per_image(x, fn):
    axes = tuple(range(1, x.ndim))
    return fn(x, axes)


def _expand(v, like):
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


@pytree_dataclass
class Adam:
    """Adam (``optax.adam``) on the negated gradient."""

    lr: Any = 0.05
    b1: Any = 0.9
    b2: Any = 0.999
    eps: Any = 1e-8

    def _tx(self):
        return optax.adam(self.lr, b1=self.b1, b2=self.b2, eps=self.eps)

    def init(self, params):
        return self._tx().init(params)

    def update(self, grad, state, params, i, total):
        updates, state = self._tx().update(-grad, state, params)
        return optax.apply_updates(params, updates), state


@pytree_dataclass(static=("policy",))
class Ascent:
    """Plain gradient ascent with Yosinski et al.'s ``constant``/``progress`` policies."""

    policy: str = "constant"
    lr: Any = 1.0
    max_lr: Any = 100.0
    desired: Any = 2.0

    def __post_init__(self):
        if self.policy not in ("constant", "progress"):
            raise InputError(
                f"learning-rate policy must be 'constant' or 'progress', got {self.policy!r}."
            )

    def init(self, params):
        return ()

    def rate(self, grad):
        """Per-image learning rate (B,)."""
        if self.policy == "constant":
            return jnp.full(grad.shape[:1], self.lr, grad.dtype)
        sq = _per_image(grad, lambda g, axes: jnp.sum(g * g, axis=axes))
        return jnp.minimum(self.max_lr, self.desired / jnp.maximum(sq, 1e-30))

    def update(self, grad, state, params, i, total):
        return params + _expand(self.rate(grad), grad) * grad, state


@pytree_dataclass
class NormalizedAscent:
    """``params += lr_i / mean|g| * g``; ``lr_i = start + (end - start) * i / total``."""

    start_lr: Any = 8.0
    end_lr: Any = 1e-10

    def init(self, params):
        return ()

    def update(self, grad, state, params, i, total):
        lr = self.start_lr + (self.end_lr - self.start_lr) * i / total
        mean_abs = _per_image(grad, lambda g, axes: jnp.mean(jnp.abs(g), axis=axes))
        step = lr / jnp.maximum(mean_abs, 1e-30)
        return params + _expand(step, grad) * grad, state
