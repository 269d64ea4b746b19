"""Update rules of a :class:`~cnnvis_jax.am.recipe.Recipe`: sweepable settings of
the optax transformations in :mod:`cnnvis_jax.preimage.updates`.

Each is a pytree whose numbers are data (a sweep stacks them) and whose
:meth:`transformation` gives the ``optax.GradientTransformation`` the pre-image
engine applies to the gradient of the energy (minus the objective):

* :class:`Adam` -- ``optax.adam`` (Lucid: ``Adam(0.05)``).
* :class:`Nadam` -- ``optax.nadam`` (MACO: ``Nadam(1.0)``).
* :class:`Ascent` -- Yosinski et al.'s ``constant`` (``lr``) or ``progress``
  (``min(max_lr, desired / ||g||^2)``) steps.
* :class:`NormalizedAscent` -- ``lr_i / mean|g|`` steps with ``lr_i`` linear from
  ``start_lr`` to ``end_lr`` over the run (DGN-AM; MFV octaves).
* :class:`LBFGS` -- ``optax.lbfgs`` with a fixed step (for benchmarking variants).
"""

from __future__ import annotations

from typing import Any

import optax

from cnnvis_jax.am._tree import pytree_dataclass
from cnnvis_jax.errors import InputError
from cnnvis_jax.preimage import updates

__all__ = ["LBFGS", "Adam", "Ascent", "Nadam", "NormalizedAscent"]


@pytree_dataclass
class Adam:
    """Adam (``optax.adam``)."""

    lr: Any = 0.05
    b1: Any = 0.9
    b2: Any = 0.999
    eps: Any = 1e-8

    def transformation(self, total: int) -> optax.GradientTransformation:
        return optax.adam(self.lr, b1=self.b1, b2=self.b2, eps=self.eps)


@pytree_dataclass
class Nadam:
    """Adam with Nesterov momentum (``optax.nadam``; Xplique's MACO uses Keras'
    ``Nadam(1.0)``, whose momentum schedule optax does not have)."""

    lr: Any = 1.0
    b1: Any = 0.9
    b2: Any = 0.999
    eps: Any = 1e-7

    def transformation(self, total: int) -> optax.GradientTransformation:
        return optax.nadam(self.lr, b1=self.b1, b2=self.b2, eps=self.eps)


@pytree_dataclass(static=("policy",))
class Ascent:
    """Plain gradient steps with Yosinski et al.'s ``constant``/``progress`` policies."""

    policy: str = "constant"
    lr: Any = 1.0
    max_lr: Any = 100.0
    desired: Any = 2.0

    def __post_init__(self):
        if self.policy not in ("constant", "progress"):
            raise InputError(
                f"learning-rate policy must be 'constant' or 'progress', got {self.policy!r}."
            )

    def transformation(self, total: int) -> optax.GradientTransformation:
        return updates.ascent(self.policy, self.lr, self.max_lr, self.desired)


@pytree_dataclass
class NormalizedAscent:
    """``lr_i / mean|g|`` steps; ``lr_i = start + (end - start) * i / total``."""

    start_lr: Any = 8.0
    end_lr: Any = 1e-10

    def transformation(self, total: int) -> optax.GradientTransformation:
        return updates.normalized_ascent(self.start_lr, self.end_lr, total)


@pytree_dataclass(static=("memory",))
class LBFGS:
    """L-BFGS (``optax.lbfgs``) with a fixed step ``lr`` and no line search (the
    energies of rendering are stochastic: random transforms every step)."""

    lr: Any = 1.0
    memory: int = 10

    def transformation(self, total: int) -> optax.GradientTransformation:
        return optax.lbfgs(learning_rate=self.lr, memory_size=self.memory, linesearch=None)
