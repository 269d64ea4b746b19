"""What the two AM problems (:mod:`~cnnvis_jax.am.render` and MFV's centre canvas,
:mod:`~cnnvis_jax.am.center`) share: jobs (recipe x seed x objective) vmapped with the
recipe's sweep axes, and one forward of every job's images as one batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["axes_tree", "objective_values", "per_job", "stopped_as_nan"]


def axes_tree(recipe, recipe_axes):
    """The vmap axes of ``recipe`` (0 for the numbers a sweep stacks, else None)."""
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(recipe), list(recipe_axes))


def per_job(recipe, axes, fn, *args):
    """``fn`` vmapped over the job axis of ``args``; the argument that is ``recipe``
    is mapped with its sweep ``axes``."""
    in_axes = tuple(axes if a is recipe else 0 for a in args)
    return jax.vmap(fn, in_axes=in_axes)(*args)


def objective_values(model, objectives, images):
    """float32 (J, B): each job's objective on its images (J, B, H, W, 3), the network
    run once on all J * B images."""
    n_jobs, batch = images.shape[:2]
    acts = model.apply(model.params, images.reshape(n_jobs * batch, *images.shape[2:]),
                       objectives.layers)  # fmt: skip
    acts = {k: v.reshape(n_jobs, batch, *v.shape[1:]) for k, v in acts.items()}
    return jax.vmap(lambda o, a: o(a).astype(jnp.float32))(objectives, acts)


def stopped_as_nan(active, values):
    """The per-step objectives (J, T, B), NaN where the job had stopped (active (J, T))."""
    return jnp.where(active[..., None], values, jnp.nan)
