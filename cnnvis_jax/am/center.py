"""MFV's center-bias regularization (Nguyen, Yosinski & Clune 2016), vmapped over jobs.

The image lives on a *canvas* that starts at the model's input size and is zoomed
(bicubic) by each octave's ``scale``. Every step optimizes one crop of the model's
input size whose offset is drawn from a Gaussian around the canvas centre (standard
deviation ``window * (canvas - input)``, clipped to the canvas, truncated to
pixels); only the central ``[margin, size - margin)`` square of the crop gets the
gradient; the update is ``step / mean|g| * g`` in 0-255 units, then the crop is
clipped to [0, 255] and TV-denoised (:func:`~cnnvis_jax.preimage.priors.tv_denoise`)
and written back. Random crops near the centre make one centred object instead of
repeated fragments.

Differences from the release (``act_max.tvd.center.py``): its first octaves maximize
the softmax probability (``prob``) and later ones the logit; here every octave
maximizes the objective given. The result is the centre crop of the final canvas at
the model's input size (the release saves the whole canvas). TV denoising uses
Chambolle's algorithm for the same energy instead of split Bregman.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.am import jobs
from cnnvis_jax.am.params import Pixel, mean255
from cnnvis_jax.am.recipe import Octave, Recipe
from cnnvis_jax.am.transforms import fit
from cnnvis_jax.errors import InputError
from cnnvis_jax.preimage import canvas as canvas_mod
from cnnvis_jax.preimage import engine, updates
from cnnvis_jax.preimage.priors import tv_denoise

__all__ = ["render_center"]


class _State(NamedTuple):
    lanes: engine.State  # params: the canvases (J, B, Hc, Wc, 3)
    key: jax.Array  # (J, 2) the jobs' step keys
    start: jax.Array  # (J, B, H, W, 3) start images


def _init_job(model, recipe: Recipe, key, init_images, batch):
    k_init, k_run = jax.random.split(key)
    params = recipe.param.init(k_init, batch, model.input, init_images)
    params = recipe.param.clip(params, model.input)
    return params, k_run, recipe.param.to_image(params, model.input)


def _problem(model, recipe: Recipe, axes, objectives, keys, octave_start, *, index: int):
    """Octave ``index`` as a pre-image problem over the canvases. Step ``i`` (global;
    the octave began at ``octave_start``) draws each image's crop origin from
    ``fold_in(key, i)``; the energy is minus the objective on the crops; the update
    recomputes the same origins and moves only the crops (masked normalized step,
    clip to the pixel range, TV denoising), written back into the canvases."""
    octave: Octave = recipe.center.octaves[index]
    contract = model.input
    h, w = contract.size
    margin = round(octave.margin * h / recipe.center.reference_size)
    mask = np.zeros((h, w, 1), np.float32)
    if margin > 0 and 2 * margin < min(h, w):
        mask[margin : h - margin, margin : w - margin] = 1.0
    else:
        mask[:] = 1.0
    offset = jnp.asarray(mean255(contract))

    per_job = functools.partial(jobs.per_job, recipe, axes)

    def origins(key, canvas, i):  # (B, 2) for one job's canvases (B, Hc, Wc, 3)
        return canvas_mod.gaussian_origins(jax.random.fold_in(key, i), canvas.shape[0],
                                           canvas.shape[1:3], (h, w), octave.window)  # fmt: skip

    def crops_of(canvas, where):
        return jax.vmap(lambda c, o: canvas_mod.crop(c, o, (h, w)))(canvas, where)

    def energy(canvas, i):
        where = jax.vmap(origins, in_axes=(0, 0, None))(keys, canvas, i)
        images = per_job(lambda r, c, o: r.param.to_image(crops_of(c, o), contract),
                         recipe, canvas, where)  # fmt: skip
        values = jobs.objective_values(model, objectives, images)  # (J, B)
        return -jnp.sum(values, axis=1), {"record": values}

    def update(grad, opt, canvas, i):
        fi = (i - octave_start).astype(jnp.float32)
        n = octave.iterations
        step = octave.start_step + (octave.end_step - octave.start_step) * fi / n
        weight = octave.start_denoise - (octave.start_denoise - octave.end_denoise * fi) / n

        def one(r, key, g, c):
            where = origins(key, c, i)
            crop, g_crop = crops_of(c, where), crops_of(g, where) * mask
            moved = r.param.clip(crop + updates.normalized_step(g_crop, step), contract)
            moved = tv_denoise(moved + offset, weight, recipe.center.tv_iterations) - offset
            return jax.vmap(canvas_mod.paste)(c, moved, where)

        return per_job(one, recipe, keys, grad, canvas), opt

    return engine.Problem(energy, update)


@functools.partial(jax.jit, static_argnames=("batch", "recipe_axes"))
def _init_all(model, recipe, keys, init_images, *, batch, recipe_axes):
    axes = jobs.axes_tree(recipe, recipe_axes)
    images_axis = None if init_images is None else 0
    canvas, run_keys, image = jax.vmap(
        functools.partial(_init_job, batch=batch), in_axes=(None, axes, 0, images_axis)
    )(model, recipe, keys, init_images)
    return _State(engine.start(canvas, ()), run_keys, image)


@functools.partial(jax.jit, static_argnames=("scale",))
def _zoom_all(state: _State, *, scale: float) -> _State:
    canvas = jax.vmap(lambda c: canvas_mod.zoom(c, scale))(state.lanes.params)
    return state._replace(lanes=state.lanes._replace(params=canvas))


@functools.partial(jax.jit, static_argnames=("index", "recipe_axes"))
def _octave_all(model, recipe, objectives, state: _State, steps, octave_start, *, index,
                recipe_axes):  # fmt: skip
    """Run the steps numbered ``steps`` (global) of octave ``index``; the trajectory
    (J, T, B) holds the objective per step (NaN once a job stopped)."""
    axes = jobs.axes_tree(recipe, recipe_axes)
    problem = _problem(model, recipe, axes, objectives, state.key, octave_start, index=index)
    lanes, (_, active, values) = engine.scan(problem, state.lanes, steps)
    return state._replace(lanes=lanes), jobs.stopped_as_nan(active, values)


@functools.partial(jax.jit, static_argnames=("recipe_axes",))
def _finish_all(model, recipe, objectives, state: _State, *, recipe_axes):
    axes = jobs.axes_tree(recipe, recipe_axes)

    def one(recipe, objective, canvas, start):
        contract = model.input
        final = recipe.param.to_image(fit(canvas, contract.size), contract)
        b = final.shape[0]
        acts = model.apply(model.params, jnp.concatenate([start, final]), objective.layers)
        values = objective(acts).astype(jnp.float32)
        return dict(
            start_images=start,
            best_images=final,
            final_images=final,
            start_activation=values[:b],
            best_activation=values[b:],
            final_activation=values[b:],
        )

    out = jax.vmap(one, in_axes=(axes, 0, 0, 0))(
        recipe, objectives, state.lanes.params, state.start
    )
    return {**out, "stopped_at": state.lanes.stopped_at}


def render_center(
    model, recipe, objectives, keys, init_images, *, batch, recipe_axes, progress, desc,
    checkpoint=None, fingerprint: str = "", timings=None,
):  # fmt: skip
    """Run the center-bias octaves of ``recipe`` for every job (arrays already placed
    on the device mesh). Returns ``(outputs dict, trajectory (J, steps, B))``.

    With ``checkpoint`` (a ``.npz`` path) the octaves run in chunks of equal length,
    the state (the canvas, whose size grows with the octaves) is saved after each, a
    call with the same ``fingerprint`` resumes from it, and Ctrl-C / SIGTERM stop at
    the end of a chunk with :class:`~cnnvis_jax.interrupt.Interrupted`.
    """
    if not isinstance(recipe.param, Pixel) or recipe.param.space != "caffe":
        raise InputError("center-bias recipes need a Pixel(space='caffe') parameterization.")
    state = _init_all(model, recipe, keys, init_images, batch=batch, recipe_axes=recipe_axes)
    octaves = recipe.center.octaves

    def enter(state, index):
        return _zoom_all(state, scale=float(octaves[index].scale))

    def advance(state, chunk):
        steps = jnp.arange(chunk.start, chunk.start + chunk.length, dtype=jnp.int32)
        octave_start = jnp.asarray(chunk.start - chunk.first, jnp.int32)
        return _octave_all(model, recipe, objectives, state, steps, octave_start,
                           index=chunk.phase, recipe_axes=recipe_axes)  # fmt: skip

    state, trajectory = engine.drive(
        advance, state, [o.iterations for o in octaves], enter=enter,
        checkpoint=checkpoint, fingerprint=fingerprint, desc=desc, progress=progress,
        timings=timings,
    )  # fmt: skip
    return _finish_all(model, recipe, objectives, state, recipe_axes=recipe_axes), trajectory
