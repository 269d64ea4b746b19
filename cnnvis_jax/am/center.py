"""MFV's center-bias regularization (Nguyen, Yosinski & Clune 2016), vmapped over jobs.

The image lives on a *canvas* that starts at the model's input size and is zoomed
(bicubic) by each octave's ``scale``. Every step optimizes one crop of the model's
input size whose offset is drawn from a Gaussian around the canvas centre (standard
deviation ``window * (canvas - input)``, clipped to the canvas, truncated to
pixels); only the central ``[margin, size - margin)`` square of the crop gets the
gradient; the update is ``step / mean|g| * g`` in 0-255 units, then the crop is
clipped to [0, 255] and TV-denoised (:func:`~cnnvis_jax.am.regularizers.tv_denoise`)
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

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax import checkpoint as checkpoint_mod
from cnnvis_jax import interrupt
from cnnvis_jax.am._tree import normal
from cnnvis_jax.am.params import Pixel, mean255
from cnnvis_jax.am.recipe import Octave, Recipe
from cnnvis_jax.am.regularizers import tv_denoise
from cnnvis_jax.am.transforms import fit
from cnnvis_jax.errors import InputError
from cnnvis_jax.progress import progress_bar

__all__ = ["render_center"]


def _axes_tree(recipe, recipe_axes):
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(recipe), list(recipe_axes))


def _init_job(model, recipe: Recipe, key, init_images, batch):
    k_init, k_run = jax.random.split(key)
    params = recipe.param.init(k_init, batch, model.input, init_images)
    params = recipe.param.clip(params, model.input)
    return dict(
        canvas=params,
        key=k_run,
        start=recipe.param.to_image(params, model.input),
        stopped_at=jnp.asarray(-1, jnp.int32),
    )


def _octave_job(model, recipe: Recipe, objective, state, start, first, *, index: int,
                length: int, zoom: bool):  # fmt: skip
    """Steps ``[first, first + length)`` of octave ``index`` (which began at global
    step ``start``); ``zoom``: this chunk opens the octave, so the canvas is zoomed."""
    octave: Octave = recipe.center.octaves[index]
    contract = model.input
    param = recipe.param
    h, w = contract.size
    canvas = state["canvas"]
    b, ch, cw, _ = canvas.shape
    if zoom and octave.scale != 1.0:
        ch, cw = round(ch * octave.scale), round(cw * octave.scale)
        canvas = jax.image.resize(canvas, (b, ch, cw, 3), method="cubic")
    margin = round(octave.margin * h / recipe.center.reference_size)
    mask = np.zeros((h, w, 1), np.float32)
    if margin > 0 and 2 * margin < min(h, w):
        mask[margin : h - margin, margin : w - margin] = 1.0
    else:
        mask[:] = 1.0
    n = octave.iterations
    offset = jnp.asarray(mean255(contract))

    def score(crop):
        values = objective(
            model.apply(model.params, param.to_image(crop, contract), objective.layers)
        )
        values = values.astype(jnp.float32)
        return jnp.sum(values), values

    def body(carry, i):
        canvas, stopped_at = carry
        k = jax.random.fold_in(state["key"], start + i)
        mid = jnp.asarray([(ch - h) / 2.0, (cw - w) / 2.0])
        spread = jnp.asarray([float(ch - h), float(cw - w)]) * octave.window
        draw = mid + spread * normal(k, (b, 2))
        limit = jnp.asarray([ch - h, cw - w])
        origin = jnp.clip(draw, 0, limit).astype(jnp.int32)  # truncation, as int()

        def cut(img, o):
            return jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, 3))

        crops = jax.vmap(cut)(canvas, origin)
        (total, values), g = jax.value_and_grad(score, has_aux=True)(crops)
        g = g * mask
        fi = i.astype(jnp.float32)
        step = octave.start_step + (octave.end_step - octave.start_step) * fi / n
        weight = octave.start_denoise - (octave.start_denoise - octave.end_denoise * fi) / n
        mean_abs = jnp.mean(jnp.abs(g), axis=(1, 2, 3), keepdims=True)
        moved = param.clip(crops + step / jnp.maximum(mean_abs, 1e-30) * g, contract)
        moved = tv_denoise(moved + offset, weight, recipe.center.tv_iterations) - offset
        finite = jnp.isfinite(total) & jnp.all(jnp.isfinite(g))
        running = stopped_at < 0
        active = finite & running

        def paste(img, crop, o):
            return jax.lax.dynamic_update_slice(img, crop, (o[0], o[1], 0))

        updated = jax.vmap(paste)(canvas, moved, origin)
        canvas = jnp.where(active, updated, canvas)
        stopped_at = jnp.where(running & ~finite, (start + i).astype(jnp.int32), stopped_at)
        return (canvas, stopped_at), jnp.where(active, values, jnp.nan)

    steps = first + jnp.arange(length)
    (canvas, stopped_at), values = jax.lax.scan(body, (canvas, state["stopped_at"]), steps)
    return dict(state, canvas=canvas, stopped_at=stopped_at), values


@functools.partial(jax.jit, static_argnames=("batch", "recipe_axes"))
def _init_all(model, recipe, keys, init_images, *, batch, recipe_axes):
    axes = _axes_tree(recipe, recipe_axes)
    images_axis = None if init_images is None else 0
    return jax.vmap(
        functools.partial(_init_job, batch=batch), in_axes=(None, axes, 0, images_axis)
    )(model, recipe, keys, init_images)


@functools.partial(jax.jit, static_argnames=("index", "length", "zoom", "recipe_axes"))
def _octave_all(model, recipe, objectives, state, start, first, *, index, length, zoom,
                recipe_axes):  # fmt: skip
    axes = _axes_tree(recipe, recipe_axes)
    fn = functools.partial(_octave_job, index=index, length=length, zoom=zoom)
    return jax.vmap(fn, in_axes=(None, axes, 0, 0, None, None))(
        model, recipe, objectives, state, start, first
    )


@functools.partial(jax.jit, static_argnames=("recipe_axes",))
def _finish_all(model, recipe, objectives, state, *, recipe_axes):
    axes = _axes_tree(recipe, recipe_axes)

    def one(model, recipe, objective, state):
        contract = model.input
        final = recipe.param.to_image(fit(state["canvas"], contract.size), contract)
        b = final.shape[0]
        images = jnp.concatenate([state["start"], final])
        acts = model.apply(model.params, images, objective.layers)
        values = objective(acts).astype(jnp.float32)
        return dict(
            start_images=state["start"],
            best_images=final,
            final_images=final,
            start_activation=values[:b],
            best_activation=values[b:],
            final_activation=values[b:],
            stopped_at=state["stopped_at"],
        )

    return jax.vmap(one, in_axes=(None, axes, 0, 0))(model, recipe, objectives, state)


def _chunks(octaves, chunk: int):
    """``(octave index, octave start, first step in it, length)`` for every chunk."""
    start = 0
    for index, octave in enumerate(octaves):
        for first in range(0, octave.iterations, chunk):
            yield index, start, first, min(chunk, octave.iterations - first)
        start += octave.iterations


def render_center(
    model, recipe, objectives, keys, init_images, *, batch, recipe_axes, progress, desc,
    checkpoint=None, fingerprint: str = "",
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
    total = recipe.center.steps
    chunk = max(o.iterations for o in octaves)
    if checkpoint is not None:
        chunk = checkpoint_mod.even_chunk([o.iterations for o in octaves])
    trajectories, done = [], 0
    if checkpoint is not None:
        saved = checkpoint_mod.load_arrays(checkpoint, fingerprint + f"/center{chunk}")
        if saved is not None:
            done = int(saved.pop("done"))
            trajectories.append(jnp.asarray(saved.pop("trajectory")))
            state = {k: jax.device_put(saved[k], state[k].sharding) for k in state}
    guard = interrupt.graceful(enabled=checkpoint is not None)
    with guard, progress_bar(total, desc, enabled=progress, unit="step") as bar:
        bar.update(done)
        for index, start, first, length in _chunks(octaves, chunk):
            if start + first + length <= done:  # run before the checkpoint
                continue
            state, values = _octave_all(
                model,
                recipe,
                objectives,
                state,
                jnp.asarray(start, jnp.int32),
                jnp.asarray(first, jnp.int32),
                index=index,
                length=length,
                zoom=first == 0,
                recipe_axes=recipe_axes,
            )
            trajectories.append(values)
            bar.update(length)
            if checkpoint is not None:
                trajectories = [jnp.concatenate(trajectories, axis=1)]
                arrays = {k: jax.device_get(v) for k, v in state.items()}
                checkpoint_mod.save_arrays(checkpoint, {**arrays, "trajectory": trajectories[0],
                                           "done": start + first + length},
                                           fingerprint + f"/center{chunk}")  # fmt: skip
                interrupt.check(desc)
    out = _finish_all(model, recipe, objectives, state, recipe_axes=recipe_axes)
    return out, jnp.concatenate(trajectories, axis=1)
