"""Activation maximization on the pre-image engine: many runs as one vmapped, jitted program.

A *job* is one (recipe, seed, objective) triple; each job optimizes ``batch``
images. Jobs are vmapped (units, seeds and hyperparameter values of a sweep are
all just jobs), steps are a :func:`jax.lax.scan`, and with more than one device
the job axis is sharded over a 1-D ``units`` mesh; every job is independent, so
results equal the single-device run.

Per step and job: image from the parameters, random transforms (keys folded from
the job's key and the step number), forward to the objective's layers, score =
``objective - penalties``, gradient with respect to the parameters, update, post
steps. The best-so-far image (by the step's objective value) is kept per image.
A job whose score or gradient stops being finite is frozen at its last finite
parameters and reported (``stopped_at``); the other jobs go on.

The loop itself is :mod:`cnnvis_jax.preimage.engine` (jobs are its lanes; the
energy is minus ``objective - penalties``; the update is the recipe's optax rule then
its post steps); this module builds that problem and runs its phases.

After the loop the start, best and final images are evaluated once more without
transforms (the ``*_activation`` values are these clean objective values; a final
image better than the best-so-far becomes the best).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from cnnvis_jax import checkpoint as checkpoint_mod
from cnnvis_jax import parallel
from cnnvis_jax.am import jobs
from cnnvis_jax.am import objectives as obj_mod
from cnnvis_jax.am.recipe import Recipe
from cnnvis_jax.am.regularizers import ClipParams, StepContext
from cnnvis_jax.am.transforms import Run, apply_chain, fit, view_count
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model, check_images
from cnnvis_jax.preimage import engine
from cnnvis_jax.prng import raw_key
from cnnvis_jax.rules import model_for_input_gradients, model_with_rules

__all__ = ["AXIS", "RenderResult", "input_view", "objective_layer", "render"]

AXIS = "units"
"""The mesh axis jobs are sharded over."""


class RenderResult(NamedTuple):
    """Rendered images and their activations (numpy arrays).

    The leading axes ``lead`` are ``(U,)`` for one recipe and one seed, else
    ``(R, S, U)`` (recipes of a sweep, seeds, objectives). ``B`` is the batch of
    images each job optimizes.

    Attributes:
      images: float32 (*lead, B, H, W, 3) in [0, 1]: the recipe's output (best or last).
      best_images, final_images, start_images: float32 (*lead, B, H, W, 3).
      trajectory: float32 (*lead, steps, B), the objective at every step (on the
        transformed images; NaN after a job stopped).
      start_activation, best_activation, final_activation: float32 (*lead, B),
        the objective on the untransformed start, best and final images.
      stopped_at: int32 (*lead,), the step at which a non-finite score or gradient
        stopped the job, -1 when it ran to the end.
      transparency: float32 (*lead, B, H, W, 3), the sum over steps of
        ``|d objective / d image|`` (MACO's transparency map), for recipes with
        ``transparency=True``; else None.
    """

    images: np.ndarray
    best_images: np.ndarray
    final_images: np.ndarray
    start_images: np.ndarray
    trajectory: np.ndarray
    start_activation: np.ndarray
    best_activation: np.ndarray
    final_activation: np.ndarray
    stopped_at: np.ndarray
    transparency: np.ndarray | None = None

    def summary(self) -> list[dict[str, Any]]:
        """Per objective (leading axis ``(U,)``; the first image of each batch):
        ``{start_activation, best_activation, final_activation, stopped_at_step}``
        (``stopped_at_step`` None when the job ran to the end)."""
        if self.stopped_at.ndim != 1:
            raise InputError("summary() and save() take a render of one recipe and one seed.")
        rows = []
        for k in range(len(self.stopped_at)):
            stopped = int(self.stopped_at[k])
            rows.append({
                "start_activation": float(self.start_activation[k, 0]),
                "best_activation": float(self.best_activation[k, 0]),
                "final_activation": float(self.final_activation[k, 0]),
                "stopped_at_step": stopped if stopped >= 0 else None,
            })  # fmt: skip
        return rows

    def save(self, out_dir: str | os.PathLike, *, names: Sequence[str] | None = None,
             labels: Sequence[str] | None = None, records: Sequence[dict] | None = None,
             hidden: Sequence[bool] | None = None) -> Path:  # fmt: skip
        """Write ``<name>.png`` per objective, ``grid.png`` (captioned ``labels``) and
        ``results.json`` (per objective ``records[k]`` followed by its
        :meth:`summary` row) into ``out_dir``. ``hidden[k]`` draws objective ``k`` as a
        grey tile in the grid (e.g. a unit silent on the data). Names default to
        ``image_0000``... Non-finite numbers are written as null. Returns the folder."""
        from cnnvis_jax.report.files import write_json
        from cnnvis_jax.report.grid import image_grid, save_png

        out = Path(out_dir)
        rows = self.summary()
        n = len(rows)
        names = list(names) if names is not None else [f"image_{k:04d}" for k in range(n)]
        hidden = list(hidden) if hidden is not None else [False] * n
        for k in range(n):
            save_png(self.images[k, 0], out / f"{names[k]}.png")
        tiles = np.stack([np.full_like(self.images[k, 0], 0.5) if hidden[k]
                          else self.images[k, 0] for k in range(n)])  # fmt: skip
        scale = max(1, 128 // max(tiles.shape[1], 1))
        save_png(image_grid(tiles, labels=labels, scale=scale), out / "grid.png")
        extra = list(records) if records is not None else [{} for _ in range(n)]
        write_json(out / "results.json", [{**extra[k], **rows[k]} for k in range(n)])
        return out


class _State(NamedTuple):
    lanes: engine.State  # params, optimizer state, best image per job and image
    key: jax.Array  # (J, 2) the jobs' step keys
    start: jax.Array  # (J, B, H, W, 3) start images


# --- one job ---------------------------------------------------------------------------------


class _Probed(NamedTuple):
    """A job's parameters when the recipe accumulates the image gradient: the
    image is ``to_image(inner) + probe`` with ``probe`` held at zero, so the gradient
    with respect to ``probe`` is the gradient with respect to the image, from the
    same backward pass; ``transparency`` sums its absolute value over the steps."""

    inner: Any
    probe: jax.Array  # (B, H, W, 3) zeros
    transparency: jax.Array  # (B, H, W, 3)


def _inner(params):
    return params.inner if isinstance(params, _Probed) else params


def _image(recipe: Recipe, params, contract):
    """The job's images (B, H, W, 3) from its parameters."""
    image = recipe.param.to_image(_inner(params), contract)
    return image + params.probe if isinstance(params, _Probed) else image


def input_view(recipe: Recipe, images, size):
    """Rendered images (N, H, W, 3) at the model's input ``size``, as the render
    scores them untransformed: a canvas (MACO) is resized as a whole, other images
    are fitted (centre crop when larger, e.g. a generator's output; resize when
    smaller)."""
    if hasattr(recipe.param, "canvas") and images.shape[1:3] != tuple(size):
        b, _, _, c = images.shape
        return jax.image.resize(images, (b, *size, c), method="bilinear", antialias=True)
    return fit(images, size)


def _forward_score(model: Model, recipe: Recipe, objective, images):
    acts = model.apply(model.params, input_view(recipe, images, model.input.size),
                       objective.layers)  # fmt: skip
    return objective(acts).astype(jnp.float32)


def _anchored_values(model: Model, objectives, anchor, both, weight):
    """Objective values and anchor distances, (J, V) each, for views ``both``
    (J, V, h, w, 6): the image's views in channels 0-2, the start image's under the
    same transforms in 3-5; the network runs once on all 2 J V views."""
    n_jobs, n_views = both.shape[:2]
    x = jnp.concatenate([both[..., :3], both[..., 3:]], axis=1)  # (J, 2V, h, w, 3)
    layers = tuple(dict.fromkeys((*objectives.layers, anchor.layer)))
    acts = model.apply(model.params, x.reshape(n_jobs * 2 * n_views, *x.shape[2:]), layers)
    acts = {k: v.reshape(n_jobs, 2 * n_views, *v.shape[1:]) for k, v in acts.items()}
    mine = {k: v[:, :n_views] for k, v in acts.items()}
    values = jax.vmap(lambda o, a: o(a).astype(jnp.float32))(objectives, mine)
    a = acts[anchor.layer]
    diff = (a[:, :n_views] - jax.lax.stop_gradient(a[:, n_views:])).astype(jnp.float32)
    distance = jnp.sqrt(jnp.sum(diff * diff, axis=-1) + 1e-12)  # (J, V, ...positions)
    distance = distance.reshape(n_jobs, n_views, -1).mean(-1)
    return values, weight[:, None] * distance


def _init_job(model, recipe: Recipe, objective, key, init_images, init_params, batch):
    contract = model.input
    k_init, k_run = jax.random.split(key)
    if init_params is not None:
        params = init_params
    else:
        params = recipe.param.init(k_init, batch, contract, init_images)
    if any(isinstance(op, ClipParams) for op in recipe.post):
        params = recipe.param.clip(params, contract)
    image = recipe.param.to_image(params, contract)
    opt = recipe.optimizer.transformation(recipe.steps).init(params)
    if recipe.transparency:
        params = _Probed(params, jnp.zeros_like(image), jnp.zeros_like(image))
    return params, opt, k_run, image


def _problem(model, recipe: Recipe, axes, objectives, keys, start) -> engine.Problem:
    """AM as a pre-image problem: the energy of job ``j`` is minus the sum over its
    images of ``objective - penalties`` (minus the anchor distance, Feature
    Accentuation). Per-job pieces (image, transforms, objective, update, post steps)
    are vmapped over jobs; the network runs once on the batch of all jobs' views
    (J * B * views), so the forward and backward are those of one batch. With a
    multi-view transform (MACO's crops) an image's objective is the mean over its
    views. Scores (minus the objective) keep the best image per job and image."""
    contract = model.input
    per_job = functools.partial(jobs.per_job, recipe, axes)
    views = view_count(recipe.transforms)
    last_step = max(recipe.steps - 1, 1)

    def transformed(k, im, fraction):
        run = Run(fraction, tuple(contract.size))
        return fit(apply_chain(recipe.transforms, k, im, run), contract.size)

    def energy(params, i):
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)
        fraction = i.astype(jnp.float32) / last_step
        images = per_job(lambda r, p: _image(r, p, contract), recipe, params)
        n_jobs, batch = images.shape[:2]
        if recipe.anchor is None:
            x = per_job(lambda k, im: transformed(k, im, fraction), step_keys, images)
            values = jobs.objective_values(model, objectives, x)  # (J, B * views)
            tie = jnp.zeros_like(values)
        else:
            both = per_job(
                lambda k, im, s: transformed(k, jnp.concatenate([im, s], -1), fraction),
                step_keys,
                images,
                start,
            )
            weight = per_job(
                lambda r, k: jnp.asarray(r.anchor.weight, jnp.float32), recipe, step_keys
            )
            values, tie = _anchored_values(model, objectives, recipe.anchor, both, weight)
        values = values.reshape(n_jobs, batch, views).mean(-1)
        per_image = values - tie.reshape(n_jobs, batch, views).mean(-1)
        for k in range(len(recipe.penalties)):
            per_image = per_image - per_job(
                lambda r, im, k=k: r.penalties[k](im, contract), recipe, images
            )
        return -jnp.sum(per_image, axis=1), {"score": -values, "keep": images, "record": values}

    def update(grad, opt, params, i):
        def one(r, g, o, p):
            inner, g_inner = _inner(p), _inner(g)
            updates, o = r.optimizer.transformation(r.steps).update(g_inner, o, inner)
            inner = optax.apply_updates(inner, updates)
            ctx = StepContext(r.param, contract)
            for op in r.post:  # post steps see the ascent direction
                inner = op(inner, -g_inner, i, ctx)
            if isinstance(p, _Probed):
                return _Probed(inner, p.probe, p.transparency + jnp.abs(g.probe)), o
            return inner, o

        return jax.vmap(one, in_axes=(axes, 0, 0, 0))(recipe, grad, opt, params)

    return engine.Problem(energy, update)


def _finish_job(model, recipe: Recipe, objective, params, start, best):
    final = recipe.param.to_image(_inner(params), model.input)
    b = final.shape[0]
    images = jnp.concatenate([start, best, final])
    values = _forward_score(model, recipe, objective, images)
    start_v, best_v, final_v = values[:b], values[b : 2 * b], values[2 * b :]
    take_final = ~(best_v >= final_v)  # also when best is NaN
    best = jnp.where(take_final[:, None, None, None], final, best)
    best_v = jnp.where(take_final, final_v, best_v)
    out = dict(
        start_images=start,
        best_images=best,
        final_images=final,
        start_activation=start_v,
        best_activation=best_v,
        final_activation=final_v,
    )
    if isinstance(params, _Probed):
        out["transparency"] = params.transparency
    return out


# --- vmapped and jitted over jobs -------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("batch", "recipe_axes"))
def _init_all(model, recipe, objectives, keys, init_images, init_params, *, batch, recipe_axes):
    axes = jobs.axes_tree(recipe, recipe_axes)
    images_axis = None if init_images is None else 0
    params_axis = None if init_params is None else 0
    params, opt, run_keys, image = jax.vmap(
        functools.partial(_init_job, batch=batch),
        in_axes=(None, axes, 0, 0, images_axis, params_axis),
    )(model, recipe, objectives, keys, init_images, init_params)
    lanes = engine.start(params, opt, best=image,
                         best_score=jnp.full(image.shape[:2], jnp.inf, jnp.float32))  # fmt: skip
    return _State(lanes, run_keys, image)


@functools.partial(jax.jit, static_argnames=("recipe_axes",))
def _advance_all(model, recipe, objectives, state: _State, steps, *, recipe_axes):
    """Run the steps numbered ``steps`` of every job; the trajectory (J, T, B) holds
    the objective per step (NaN once a job stopped)."""
    axes = jobs.axes_tree(recipe, recipe_axes)
    problem = _problem(model, recipe, axes, objectives, state.key, state.start)
    lanes, (_, active, values) = engine.scan(problem, state.lanes, steps)
    return state._replace(lanes=lanes), jobs.stopped_as_nan(active, values)


@functools.partial(jax.jit, static_argnames=("recipe_axes",))
def _finish_all(model, recipe, objectives, state: _State, *, recipe_axes):
    axes = jobs.axes_tree(recipe, recipe_axes)
    out = jax.vmap(_finish_job, in_axes=(None, axes, 0, 0, 0, 0))(
        model, recipe, objectives, state.lanes.params, state.start, state.lanes.best
    )
    return {**out, "stopped_at": state.lanes.stopped_at}


def _phases(steps: int, redirect: int) -> list[int]:
    """Step counts of the phases: redirected-ReLU steps first (when any), then the rest."""
    redirect = min(redirect, steps)
    return [n for n in (redirect, steps - redirect) if n > 0]


# --- inputs --------------------------------------------------------------------------------


def _as_objectives(objectives, model: Model):
    if isinstance(objectives, obj_mod.Objective):
        objectives = [objectives]
    objectives = [obj_mod.bind(o, model) for o in objectives]
    return obj_mod.stack(objectives), len(objectives)


def _as_recipes(recipe) -> tuple[Recipe, int, tuple, bool]:
    """The recipes stacked where they differ: (recipe, R, axes per leaf, swept?)."""
    from cnnvis_jax.am.presets import preset

    swept = isinstance(recipe, list | tuple)
    recipes = list(recipe) if swept else [recipe]
    recipes = [preset(r) if isinstance(r, str) else r for r in recipes]
    if not recipes:
        raise InputError("no recipe given; pass a preset name or a Recipe.")
    for r in recipes:
        if not isinstance(r, Recipe):
            raise InputError(f"not a recipe: {type(r).__name__}; use am.preset(name).")
    structures = {jax.tree_util.tree_structure(r) for r in recipes}
    if len(structures) != 1:
        raise InputError(
            "recipes of one sweep must differ only in numbers (same steps, transforms, "
            "parameterization and post steps)."
        )
    leaves = [jax.tree_util.tree_leaves(r) for r in recipes]
    stacked, axes = [], []
    for values in zip(*leaves):
        if all(v is values[0] for v in values) or all(
            np.shape(v) == np.shape(values[0]) and np.array_equal(v, values[0]) for v in values
        ):
            stacked.append(values[0])
            axes.append(None)
        else:
            stacked.append(np.stack([np.asarray(v) for v in values]))
            axes.append(0)
    treedef = jax.tree_util.tree_structure(recipes[0])
    return jax.tree_util.tree_unflatten(treedef, stacked), len(recipes), tuple(axes), swept


def _per_objective_images(images, n_objectives: int, batch: int) -> np.ndarray:
    """Init images (B, H, W, 3) shared by every objective, or (U, B, H, W, 3) -> (U, B, H, W, 3)."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = np.broadcast_to(images, (n_objectives, *images.shape))
    if images.ndim != 5 or images.shape[:2] != (n_objectives, batch) or images.shape[-1] != 3:
        raise InputError(
            f"init_images must have shape ({batch}, H, W, 3) (shared) or ({n_objectives}, "
            f"{batch}, H, W, 3) (one set per objective), got {images.shape}."
        )
    return images


def _per_objective_params(params, n_objectives: int, batch: int):
    """Init params with leaves (U, B, ...): one start per objective."""
    for leaf in jax.tree_util.tree_leaves(params):
        if np.ndim(leaf) < 2 or np.shape(leaf)[:2] != (n_objectives, batch):
            raise InputError(
                f"init_params leaves must have leading axes ({n_objectives} objectives, "
                f"{batch} images), got shape {np.shape(leaf)}."
            )
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)


def _contains(objective, kind) -> bool:
    if isinstance(objective, kind):
        return True
    if isinstance(objective, obj_mod.Scaled):
        return _contains(objective.term, kind)
    if isinstance(objective, obj_mod.Sum):
        return any(_contains(t, kind) for t in objective.terms)
    return False


def _checked_views_and_anchor(recipe: Recipe, objectives, model: Model, init_images) -> Recipe:
    """Refuse what multi-view transforms and an anchor cannot do; fill in the
    anchor's layer (the objective's own) when it is not given."""
    if view_count(recipe.transforms) > 1 and _contains(objectives, obj_mod.Diversity):
        raise InputError(
            "a diversity term compares the images of a batch, but this recipe scores "
            "several crops per image; drop the diversity term or the multi-view transform."
        )
    anchor = recipe.anchor
    if anchor is None:
        return recipe
    if init_images is None:
        raise InputError(
            f"recipe {recipe.name!r} accentuates a given image: pass init_images (images "
            "in [0, 1] at the model's input size), or --image FILE on the command line."
        )
    layer = anchor.layer
    if layer is None:
        layers = objectives.layers
        if len(layers) != 1:
            raise InputError(
                f"the objective reads layers {list(layers)}; name the anchor's layer: "
                "Anchor(weight, layer=...)."
            )
        layer = layers[0]
    from cnnvis_jax.am._tree import replace

    return replace(recipe, anchor=replace(anchor, layer=model.layer(layer).name))


def _check_codes(param, init_params) -> None:
    """Start codes of a generator parameterization must have its code size."""
    from cnnvis_jax.am.params import Generator

    if not isinstance(param, Generator):
        return
    shapes = [np.shape(leaf)[2:] for leaf in jax.tree_util.tree_leaves(init_params)]
    if shapes != [(int(param.code_size),)]:
        got = shapes[0] if len(shapes) == 1 else shapes
        raise InputError(
            f"generator start codes have shape {got} per image, but the generator's code "
            f"has {param.code_size} values; pass init_params of shape (objectives, batch, "
            f"{param.code_size}) (e.g. the decoder layer's features of images)."
        )


# --- public -----------------------------------------------------------------------------------


def render(
    model: Model,
    objectives,
    recipe,
    *,
    key: jax.Array | int = 0,
    seeds: int = 1,
    batch: int = 1,
    init_images: Any = None,
    init_params: Any = None,
    steps: int | None = None,
    progress: bool = False,
    desc: str = "render",
    checkpoint: str | os.PathLike | None = None,
    timings: list | None = None,
) -> RenderResult:
    """Render activation-maximizing images.

    Args:
      model: the network.
      objectives: an :class:`~cnnvis_jax.am.objectives.Objective` or a list of
        objectives of one structure (e.g. one per unit); U of them.
      recipe: a :class:`~cnnvis_jax.am.recipe.Recipe` or preset name, or a list of
        recipes differing only in numbers (a sweep, R of them).
      key: PRNG key or int seed. Seed ``s`` of ``seeds`` uses ``split(key, seeds)[s]``;
        every objective of a seed starts from the same image and sees the same
        transforms (the same key gives the same images).
      seeds: S independent starts per objective and recipe.
      batch: images optimized together per job (B; e.g. for a diversity term).
      init_images: start images in [0, 1], float (B, H, W, 3) shared or
        (U, B, H, W, 3) per objective, at the model's input size.
      init_params: start parameters per objective, leaves (U, B, ...) (e.g.
        generator codes (U, B, D)); overrides ``init_images``.
      steps: override the recipe's step count.
      progress: show a progress bar (steps are then run in chunks).
      checkpoint: a file (``.npz``) for resumable state: the steps run in 20 chunks,
        the state is saved after each, and a later call with the same arguments
        resumes from it and returns the same result as an uninterrupted one. Inside
        such a call the first Ctrl-C (or SIGTERM) stops at the end of the current
        chunk with :class:`cnnvis_jax.interrupt.Interrupted`, the state saved. The
        file is kept (delete it once the result is stored). MFV's centre recipes
        save after chunks of their octaves the same way.
      timings: a list to receive ``(first step, steps, seconds)`` per chunk of about
        20 (each waited for; :func:`cnnvis_jax.preimage.engine.seconds_per_step`
        reads the time per step without compilation).

    Returns:
      A :class:`RenderResult` with leading axes (U,) for one recipe and seed, else
      (R, S, U).

    Raises:
      InputError: unknown layer or preset; a unit, class or position out of range;
        init images of the wrong size or not finite; bad counts.
    """
    from cnnvis_jax.am.center import render_center

    if not isinstance(model, Model):
        raise InputError(f"render needs a cnnvis_jax Model, got {type(model).__name__}.")
    for name, value in (("seeds", seeds), ("batch", batch)):
        if int(value) < 1:
            raise InputError(f"{name} must be at least 1, got {value}.")
    stacked, n_obj = _as_objectives(objectives, model)
    recipe_data, n_rec, recipe_axes, swept = _as_recipes(recipe)
    if steps is not None:
        recipe_data = recipe_data.with_steps(steps)
    recipe_data = _checked_views_and_anchor(recipe_data, stacked, model, init_images)
    seed_keys = jax.random.split(raw_key(key), seeds)

    if init_images is not None and init_params is None:
        per = _per_objective_images(init_images, n_obj, batch)
        check_images(per.reshape(-1, *per.shape[2:]), model.input)
        init_images = per.astype(np.float32)
    else:
        init_images = None
    if init_params is not None:
        init_params = _per_objective_params(init_params, n_obj, batch)
        _check_codes(recipe_data.param, init_params)

    # jobs in (recipe, seed, objective) order
    n_jobs = n_rec * seeds * n_obj
    r_idx, s_idx, u_idx = (a.reshape(-1) for a in np.indices((n_rec, seeds, n_obj)))
    size = parallel.devices_multiple(n_jobs)
    pick = np.concatenate([np.arange(n_jobs), np.full(size - n_jobs, n_jobs - 1)]).astype(int)
    r_idx, s_idx, u_idx = r_idx[pick], s_idx[pick], u_idx[pick]

    def take(tree, index):
        return jax.tree_util.tree_map(lambda a: np.asarray(a)[index], tree)

    job_objectives = take(stacked, u_idx)
    job_keys = np.asarray(seed_keys)[s_idx]
    job_images = None if init_images is None else np.asarray(init_images)[u_idx]
    job_params = None if init_params is None else take(init_params, u_idx)
    leaves = jax.tree_util.tree_leaves(recipe_data)
    job_leaves = [np.asarray(v)[r_idx] if ax == 0 else v for v, ax in zip(leaves, recipe_axes)]
    treedef = jax.tree_util.tree_structure(recipe_data)

    mesh = parallel.device_mesh(AXIS)
    per_job, replicated = parallel.shardings(mesh, P(AXIS), None)
    put_jobs = functools.partial(parallel.put, sharding=per_job)
    job_leaves = [
        put_jobs(v) if ax == 0 else parallel.put(v, replicated)
        for v, ax in zip(job_leaves, recipe_axes)
    ]
    job_recipe = jax.tree_util.tree_unflatten(treedef, job_leaves)
    # explicit kernel transposes: XLA:CPU's fast convolutions inside the step scan
    model_r = model_for_input_gradients(parallel.put(model, replicated))
    job_objectives = put_jobs(job_objectives)
    job_keys = put_jobs(job_keys)
    job_images = None if job_images is None else put_jobs(job_images)
    job_params = None if job_params is None else put_jobs(job_params)

    def fingerprint(total: int) -> str:
        return checkpoint_mod.digest(
            model.params, job_recipe, job_objectives, job_keys, job_images, job_params,
            np.asarray([total, batch, n_jobs]),
        ) + repr((recipe_axes, treedef, jax.tree_util.tree_structure(job_objectives)))  # fmt: skip

    if recipe_data.center is not None:
        out, trajectory = render_center(
            model_r,
            job_recipe,
            job_objectives,
            job_keys,
            job_images,
            batch=batch,
            recipe_axes=recipe_axes,
            progress=progress,
            desc=desc,
            checkpoint=checkpoint,
            fingerprint="" if checkpoint is None else fingerprint(recipe_data.center.steps),
            timings=timings,
        )
    else:
        state = _init_all(
            model_r,
            job_recipe,
            job_objectives,
            job_keys,
            job_images,
            job_params,
            batch=batch,
            recipe_axes=recipe_axes,
        )
        total = recipe_data.steps
        redirect = min(recipe_data.redirect_steps, total)
        ruled = model_r
        if redirect > 0:
            ruled = model_with_rules(
                model_r, "redirected", require_relu=False, explicit_conv_transpose=True
            )

        def advance(state, chunk):
            m = ruled if (redirect > 0 and chunk.phase == 0) else model_r
            steps_run = jnp.arange(chunk.start, chunk.start + chunk.length, dtype=jnp.int32)
            return _advance_all(m, job_recipe, job_objectives, state, steps_run,
                                recipe_axes=recipe_axes)  # fmt: skip

        state, trajectory = engine.drive(
            advance, state, _phases(total, redirect),
            chunked=_progress_on(progress),
            checkpoint=checkpoint,
            fingerprint="" if checkpoint is None else fingerprint(total),
            desc=desc, progress=progress, timings=timings,
        )  # fmt: skip
        out = _finish_all(model_r, job_recipe, job_objectives, state, recipe_axes=recipe_axes)

    out = {k: v[:n_jobs] for k, v in parallel.to_host(out).items()}
    trajectory = np.asarray(trajectory)[:n_jobs]
    chosen = out["best_images"] if recipe_data.output == "best" else out["final_images"]
    lead = (n_obj,) if (n_rec == 1 and seeds == 1 and not swept) else (n_rec, seeds, n_obj)

    def shape(a):
        return a.reshape(*lead, *a.shape[1:])

    return RenderResult(
        images=shape(np.clip(chosen, 0.0, 1.0)),
        best_images=shape(out["best_images"]),
        final_images=shape(out["final_images"]),
        start_images=shape(out["start_images"]),
        trajectory=shape(trajectory),
        start_activation=shape(out["start_activation"]),
        best_activation=shape(out["best_activation"]),
        final_activation=shape(out["final_activation"]),
        stopped_at=shape(out["stopped_at"]),
        transparency=shape(out["transparency"]) if "transparency" in out else None,
    )


def _progress_on(progress: bool) -> bool:
    import os

    return bool(progress) and os.environ.get("CNNVIS_PROGRESS", "1") != "0"


def objective_layer(model: Model, layer: str) -> str:
    """The layer to maximize for a unit of ``layer``: its pre-ReLU tap (``conv3_pre``)
    when the model has one, so that units silent on the start image still get a
    gradient; else ``layer`` itself. The unit's channel is the same in both."""
    names = {info.name for info in model.layers}
    pre = f"{model.resolve(layer)}_pre"
    return pre if pre in names else layer


def objectives_for_units(
    model: Model,
    layer: str,
    units: Sequence[int],
    kind: str = "neuron",
    position: Sequence[int] | None = None,
) -> list:
    """One objective per unit of ``layer``: ``"neuron"`` (at ``position``, default the
    centre) or ``"channel"``; for the logits layer either is the class score."""
    info = model.layer(layer)
    if kind not in ("neuron", "channel"):
        raise InputError(f"objective kind must be 'neuron' or 'channel', got {kind!r}.")
    if position is not None and not info.spatial:
        raise InputError(
            f"layer {info.name!r} is fully connected and has no positions; drop --position."
        )
    if kind == "channel" and position is not None:
        raise InputError("a position applies to the 'neuron' objective, not to 'channel'.")
    for unit in units:
        model.check_unit(info.name, int(unit))
    if kind == "channel":
        return [obj_mod.channel(info.name, u) for u in units]
    return [obj_mod.neuron(info.name, u, position) for u in units]
