"""Regularized inversion (Mahendran & Vedaldi): find an image whose features match.

For target features Φ0 of one layer, minimize over the canvas ``u``::

    E(u) = C·Σ mask·(Φ(image(crop(u))) − Φ0)² / ‖mask·Φ0‖² + λ_TV·TV^β(u) + λ_α·N_α(u)

``u`` is in the papers' units, the mean-subtracted image on the 0-255 scale:
``image01 = mean + u / 255`` with ``mean`` the model's input mean in [0, 1] units
(what the network subtracts), so the published B, B+ and λ's apply unchanged. The
canvas is ``J − 1`` pixels larger than the image when the plan jitters (J > 1);
each step differentiates a random ``H × W`` crop of it; the result is the central
crop. C is the plan's ``data_weight`` (1 for CVPR'15, IJCV'16's ``objectiveWeight``).
The priors and the optimizers follow the :class:`~.presets.Plan`'s convention
(:mod:`.regularizers`, :mod:`.optim`); :func:`energy_terms` evaluates E's terms with
the same code as the loop.

Structure of the computation: one jitted program per group of layers that share a
canvas shape and a schedule, with the steps in a ``lax.scan``. A *lane* is one
image × one restart × one layer; lanes are the batch axis of one forward/backward
per step (the step differentiates the sum of the lanes' independent energies), and
the per-lane pieces (initialization, random crops, keys) are ``vmap``-ed, so the
result equals a loop over lanes (tested). Layers are data in a lane (per-layer
one-hot loss weights and per-lane λ's); the forward runs up to the deepest layer of
the group.

With more than one device the lanes are sharded over a 1-D ``lanes`` mesh (padded to
a multiple of the device count with copies of the last lane); lanes are
independent, so the result equals the single-device one (tested on 8 CPU devices).

Non-finite values: a lane whose objective or iterate becomes NaN/inf stops where it
was (its last finite iterate is kept, its ``finite`` flag is cleared) and the
other lanes go on; :func:`invert` warns naming the images.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from cnnvis_jax import parallel
from cnnvis_jax.errors import InputError
from cnnvis_jax.inversion import presets as presets_mod
from cnnvis_jax.inversion.presets import Plan
from cnnvis_jax.model import Model, check_images
from cnnvis_jax.preimage import canvas as canvas_mod
from cnnvis_jax.preimage import engine, updates
from cnnvis_jax.preimage.priors import alpha_norm, project_pixel_norm, tv_beta
from cnnvis_jax.progress import progress_bar
from cnnvis_jax.rules import model_for_input_gradients

LANES = "lanes"
"""The mesh axis lanes are sharded over."""

__all__ = [
    "LANES",
    "InversionResult",
    "check_target",
    "energy_terms",
    "input_mean",
    "invert",
    "invert_images",
    "invert_layers",
    "resolve_plan",
]


class InversionResult(NamedTuple):
    """Reconstructions of one layer (numpy arrays).

    Attributes:
      images: float32 (R, N, H, W, 3) in [0, 1] units, *not* clipped (CVPR'15 has
        no box constraint); clip for display.
      feature_error: float32 (R, N), ``Σ mask(Φ(x*) − Φ0)² / ‖mask Φ0‖²`` against
        the target that was inverted.
      energy: float32 (R, N, steps), the objective E at every step (with the
        plan's data weight C; the feature error is without it).
      finite: bool (R, N), False where the lane hit non-finite values (it kept its
        last finite iterate).
      layer: canonical layer name.
      plan: the :class:`Plan` that ran.
    """

    images: np.ndarray
    feature_error: np.ndarray
    energy: np.ndarray
    finite: np.ndarray
    layer: str
    plan: Plan

    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """``(images (N, H, W, 3), feature_error (N,))`` of the best restart per image
        (lowest feature error among finite restarts)."""
        err = np.where(self.finite, self.feature_error, np.inf)
        pick = np.argmin(err, axis=0)
        n = np.arange(self.images.shape[1])
        return self.images[pick, n], self.feature_error[pick, n]


# --- helpers ----------------------------------------------------------------------------


def input_mean(model: Model) -> np.ndarray:
    """The model's input mean in [0, 1] RGB units, float32 (3,)."""
    contract = model.input
    return np.asarray(contract.mean, np.float32) / np.float32(contract.value_scale)


def resolve_plan(
    model: Model, layer: str, preset: Any = "mahendran2016", steps: int | None = None
) -> Plan:
    """A :class:`Plan` for ``layer`` from a preset name, a preset object or a plan."""
    if isinstance(preset, str):
        preset = presets_mod.preset(preset)
    plan = preset if isinstance(preset, Plan) else preset.plan(model, layer)
    return plan.with_steps(steps) if steps is not None else plan


def check_target(
    model: Model, layer: str, target: Any, mask: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate target features of ``layer`` and their mask.

    Returns ``(target float32 (N, *shape), mask float32 (N, *shape))``. A single
    target without the batch axis is accepted.

    Raises:
      InputError: wrong shape, non-finite values, or features that are zero within
        the mask (the normalized loss would divide by zero).
    """
    info = model.layer(layer)
    shape = tuple(info.shape)
    array = np.asarray(target, np.float32)
    if array.shape == shape:
        array = array[None]
    if array.ndim != len(shape) + 1 or array.shape[1:] != shape:
        raise InputError(
            f"target features have shape {tuple(np.shape(target))}, but layer {info.name!r} of "
            f"model {model.name!r} produces (N, {', '.join(map(str, shape))}); compute them "
            f"with model.apply(params, images, {info.name!r})."
        )
    if not np.all(np.isfinite(array)):
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(array))[:, 0]})
        raise InputError(
            f"target features of images {bad} contain NaN or inf; recompute them from finite images."
        )
    if mask is None:
        m = np.ones_like(array)
    else:
        m = np.asarray(mask, np.float32)
        if m.shape == shape:
            m = np.broadcast_to(m, array.shape)
        if m.shape != array.shape:
            raise InputError(
                f"mask has shape {tuple(np.shape(mask))}; it must be the layer's shape {shape} "
                f"or the target's {array.shape}."
            )
    norms = np.sqrt(np.sum((array * m).reshape(len(array), -1).astype(np.float64) ** 2, axis=1))
    zero = [int(i) for i in np.flatnonzero(norms == 0)]
    if zero:
        raise InputError(
            f"target features of images {zero} at layer {info.name!r} are all zero (within the "
            "mask), so the normalized loss ‖Φ−Φ0‖²/‖Φ0‖² would divide by zero; choose other "
            "images, another layer, or a mask that covers non-zero features."
        )
    return array, np.ascontiguousarray(m, np.float32)


def _structure(plan: Plan) -> Plan:
    """The plan without its per-lane numbers (what must be equal to share a program)."""
    return dataclasses.replace(plan, lambda_alpha=0.0, lambda_tv=0.0, data_weight=1.0, name="")


def _optimizer(plan: Plan, stage, size: tuple[int, int]):
    if plan.optimizer == "momentum":
        return updates.momentum_with_resets(stage.schedule, plan.momentum)
    scale = float(size[0] * size[1]) if plan.rate_scale_pixels else 1.0
    return updates.adagrad_momentum(stage.schedule, plan.momentum, scale)


def _initial_canvas(plan: Plan, key, shape) -> jax.Array:
    if plan.init == "gaussian":
        n = jax.random.normal(key, shape, jnp.float32)
        return plan.init_scale * n / jnp.linalg.norm(n)
    x = jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
    m = jnp.quantile(x, 0.95)
    return x / m * plan.init_scale / np.sqrt(3.0)


# --- the jitted core ---------------------------------------------------------------------


def _lane_math(model: Model, targets, masks, weights, lam_tv, lam_alpha, *, layers, plan):
    """(to_image, feature_loss, priors, crop, prior_terms) of the lanes; see
    :func:`_lanes_steps` and :func:`energy_terms`."""
    size = tuple(model.input.size)
    mean = jnp.asarray(input_mean(model))
    per_pixel = plan.convention == "ijcv16"

    def to_image(crop):
        return mean + crop / 255.0

    def feature_loss(images01):  # (L, H, W, 3) -> (L,)
        feats = model.apply(model.params, images01, layers)
        total = jnp.zeros((images01.shape[0],), jnp.float32)
        for name in layers:
            d = feats[name] - targets[name]
            axes = tuple(range(1, d.ndim))
            total = total + weights[name] * jnp.sum(masks[name] * d * d, axis=axes)
        return total

    def prior_terms(u):  # (L, Hc, Wc, 3) -> (λ_TV·TV^β (L,), λ_α·N_α (L,))
        if per_pixel:
            return (lam_tv * tv_beta(u, plan.beta, per_pixel=True),
                    lam_alpha * alpha_norm(u, plan.alpha, over="pixels", per_pixel=True))  # fmt: skip
        return lam_tv * tv_beta(u, plan.beta), lam_alpha * alpha_norm(u, plan.alpha)

    def priors(u):  # (L, Hc, Wc, 3) -> (L,)
        tv, alpha = prior_terms(u)
        return tv + alpha

    def crop(u, offsets):
        return jax.vmap(lambda v, o: canvas_mod.crop(v, o, size))(u, offsets)

    return to_image, feature_loss, priors, crop, prior_terms


@functools.partial(jax.jit, static_argnames=("plan", "has_init"))
def _lanes_start(model: Model, keys, init, *, plan, has_init) -> engine.State:
    """The lanes' engine state at the first step (canvases u, optimizer state)."""
    size = tuple(model.input.size)
    stage = plan.stages[0]
    J = int(stage.jitter)
    k_init, _ = jax.vmap(jax.random.split, out_axes=1)(keys)
    if has_init:
        u = jax.vmap(lambda v: canvas_mod.place(v, J))(init)
    else:
        shape = (size[0] + J - 1, size[1] + J - 1, 3)
        u = jax.vmap(lambda k: _initial_canvas(plan, k, shape))(k_init)
    return engine.start(u, _optimizer(plan, stage, size).init(u))


@functools.partial(jax.jit, static_argnames=("plan", "stage"))
def _lanes_enter(model: Model, state: engine.State, *, plan, stage) -> engine.State:
    """Start stage ``stage`` (> 0) from the centre of the previous one, fresh optimizer."""
    size = tuple(model.input.size)
    J, before = int(plan.stages[stage].jitter), int(plan.stages[stage - 1].jitter)
    u = jax.vmap(lambda v: canvas_mod.place(canvas_mod.centre(v, size, before), J))(state.params)
    return state._replace(params=u, opt=_optimizer(plan, plan.stages[stage], size).init(u))


@functools.partial(jax.jit, static_argnames=("layers", "plan", "stage"))
def _lanes_steps(model, keys, targets, masks, weights, lam_tv, lam_alpha, data_weight,
                 state: engine.State, steps, *, layers, plan, stage):  # fmt: skip
    """Steps ``steps`` (int (T,), numbered inside the stage) of stage ``stage`` for
    every lane, on the pre-image engine.

    Shapes: keys (L,) (or (L, 2) raw); targets/masks {layer: (L, *shape)}; weights
    {layer: (L,)} (1/‖mask Φ0‖²); lam_* and data_weight (C) (L,); state: the lanes'
    canvases u (L, Hc, Wc, 3) in u-units and optimizer state. Returns the new state
    and the energies (L, T).

    Lanes are independent, so each step differentiates the *sum* of the lanes'
    energies: one batched forward/backward gives every lane its own gradient. The
    optimizers are elementwise and the random crops, priors and initializations are
    vmapped per lane, so this equals a vmap of the single-lane loop. Step ``t`` of a
    stage uses the ``t``-th of the stage's step keys whatever the chunking, so running
    a stage in one call or in several gives the same lanes.
    """
    to_image, feature_loss, priors, crop, _ = _lane_math(
        model, targets, masks, weights, lam_tv, lam_alpha, layers=layers, plan=plan
    )
    size = tuple(model.input.size)
    st = plan.stages[stage]
    J = int(st.jitter)
    opt = _optimizer(plan, st, size)
    _, k_run = jax.vmap(jax.random.split, out_axes=1)(keys)
    step_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, stage), st.steps))(
        k_run
    )  # (L, steps)

    def energy(u, t):
        offsets = jax.vmap(lambda k: canvas_mod.jitter_origin(k, J))(step_keys[:, t])
        return data_weight * feature_loss(to_image(crop(u, offsets))) + priors(u), {}

    def update(g, state, u, t):
        moves, state = opt.update(plan.grad_scale * g, state)
        u = u + moves
        return (project_pixel_norm(u, plan.bound) if plan.bound is not None else u), state

    state, (e, _, _) = engine.scan(engine.Problem(energy, update), state, steps)
    return state, e


@functools.partial(jax.jit, static_argnames=("layers", "plan"))
def _lanes_finish(model, targets, masks, weights, u, *, layers, plan):
    """(images01 (L, H, W, 3), feature error (L,)) of the lanes' final canvases."""
    zeros = jnp.zeros((u.shape[0],), jnp.float32)
    to_image, feature_loss, _, _, _ = _lane_math(model, targets, masks, weights, zeros, zeros,
                                                 layers=layers, plan=plan)  # fmt: skip
    size = tuple(model.input.size)
    centre = jax.vmap(lambda v: canvas_mod.centre(v, size, int(plan.stages[-1].jitter)))(u)
    images = to_image(centre)
    return images, feature_loss(images)


# --- public API ---------------------------------------------------------------------------


def _run_group(model, lanes: dict, layers: tuple[str, ...], plan: Plan, has_init: bool, *,
               checkpoint=None, desc: str = "invert", timings=None):  # fmt: skip
    """Run one group of lanes: (images01, error, energy (L, steps), finite).

    Each stage runs in one call, or, with ``checkpoint`` (a file), in about 20 chunks
    over the whole schedule with the state saved after each; a later call with the
    same lanes resumes from it, and a pending Ctrl-C stops after a saved chunk
    (:mod:`cnnvis_jax.interrupt`).
    """
    from cnnvis_jax import checkpoint as checkpoint_mod

    plan = _structure(plan)
    n_lanes = int(lanes["lam_tv"].shape[0])
    size = parallel.devices_multiple(n_lanes)
    fingerprint = ""
    if checkpoint is not None:
        fingerprint = (checkpoint_mod.digest(model.params, lanes)
                       + repr((layers, plan, size)))  # fmt: skip
    # lanes are independent: shard them over the devices (padded with copies of the last)
    per_lane, replicated = parallel.shardings(parallel.device_mesh(LANES), P(LANES), None)
    lanes = parallel.put(jax.tree_util.tree_map(lambda a: parallel.pad_axis(a, size), lanes),
                         per_lane)  # fmt: skip
    fast = model_for_input_gradients(parallel.put(model, replicated))  # fast conv gradients
    args = (lanes["keys"], lanes["targets"], lanes["masks"], lanes["weights"],
            lanes["lam_tv"], lanes["lam_alpha"], lanes["data_weight"])  # fmt: skip
    state = _lanes_start(fast, lanes["keys"], lanes["init"], plan=plan, has_init=has_init)

    def enter(state, stage):
        return state if stage == 0 else _lanes_enter(fast, state, plan=plan, stage=stage)

    def advance(state, chunk):
        steps = jnp.arange(chunk.first, chunk.first + chunk.length, dtype=jnp.int32)
        return _lanes_steps(fast, *args, state, steps, layers=layers, plan=plan,
                            stage=chunk.phase)  # fmt: skip

    state, energy = engine.drive(
        advance, state, [st.steps for st in plan.stages], enter=enter,
        checkpoint=checkpoint, fingerprint=fingerprint, desc=desc, timings=timings,
    )  # fmt: skip
    images, error = _lanes_finish(fast, lanes["targets"], lanes["masks"], lanes["weights"],
                                  state.params, layers=layers, plan=plan)  # fmt: skip
    energy = energy if energy is not None else np.zeros((len(error), 0), np.float32)
    return (np.asarray(images)[:n_lanes], np.asarray(error)[:n_lanes], energy[:n_lanes],
            np.asarray(state.stopped_at)[:n_lanes] < 0)  # fmt: skip


def _init_u(model: Model, init: Any, n: int) -> np.ndarray:
    images = np.asarray(init, np.float32)
    if images.ndim == 3:
        images = images[None]
    check_images(images, model.input)
    if images.shape[0] != n:
        raise InputError(
            f"init has {images.shape[0]} images but the target has {n}; give one per target."
        )
    return (images - input_mean(model)) * 255.0


def invert_layers(
    model: Model,
    targets: dict[str, Any],
    *,
    preset: Any = "mahendran2016",
    key: jax.Array,
    restarts: int = 1,
    masks: dict[str, Any] | None = None,
    init: Any = None,
    steps: int | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    timings: list | None = None,
) -> dict[str, InversionResult]:
    """Invert several layers' targets at once: ``{layer: (N, *shape)}`` -> results.

    Every layer's targets must have the same N (the same images). Layers whose plans
    share canvas and schedule run in one program, vmapped over layers × restarts ×
    images. ``masks`` maps layers to masks (layer shape or target shape); ``init``
    float (N, H, W, 3) images in [0, 1] start the optimization instead of noise;
    ``steps`` rescales the schedules to that many steps (quick runs).

    ``checkpoint`` (a folder) makes the work resumable: each group's state is saved
    in ``group<k>.npz`` after each of about 20 chunks, a later call with the same
    arguments resumes and returns the same result, and the first Ctrl-C (or SIGTERM)
    stops after a saved chunk with :class:`cnnvis_jax.interrupt.Interrupted`. The
    files are kept (delete the folder once the result is stored).

    ``timings`` (a list) receives ``(first step, steps, seconds)`` per chunk of every
    group (see :func:`cnnvis_jax.preimage.engine.seconds_per_step`).
    """
    if not targets:
        raise InputError("no target layers given.")
    if restarts < 1:
        raise InputError(f"restarts must be at least 1, got {restarts}.")
    masks = masks or {}
    checked: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, target in targets.items():
        canonical = model.resolve(name)
        if canonical in checked:
            raise InputError(f"layer {canonical!r} is given twice.")
        checked[canonical] = check_target(model, canonical, target, masks.get(name))
    counts = {name: t.shape[0] for name, (t, _) in checked.items()}
    if len(set(counts.values())) != 1:
        raise InputError(f"every layer needs targets for the same images; got counts {counts}.")
    n = next(iter(counts.values()))
    init_u = None if init is None else _init_u(model, init, n)
    plans = {name: resolve_plan(model, name, preset, steps) for name in checked}
    groups: dict[Plan, list[str]] = {}
    for name in checked:
        groups.setdefault(_structure(plans[name]), []).append(name)
    order = {name: i for i, name in enumerate(model.layer_names)}
    results: dict[str, InversionResult] = {}
    with progress_bar(len(checked), "invert", enabled=progress, unit="layer") as bar:
        for structure, names in groups.items():
            names = sorted(names, key=order.__getitem__)
            group_layers = tuple(names)
            lanes_per_layer = restarts * n
            total = len(names) * lanes_per_layer
            lane_targets = {m: np.zeros((total, *model.layer(m).shape), np.float32) for m in names}
            lane_masks = {m: np.zeros_like(lane_targets[m]) for m in names}
            lane_weights = {m: np.zeros(total, np.float32) for m in names}
            lam_tv = np.zeros(total, np.float32)
            lam_alpha = np.zeros(total, np.float32)
            data_weight = np.zeros(total, np.float32)
            for i, name in enumerate(names):
                t, m = checked[name]
                sl = slice(i * lanes_per_layer, (i + 1) * lanes_per_layer)
                lane_targets[name][sl] = np.tile(t, (restarts,) + (1,) * (t.ndim - 1))
                lane_masks[name][sl] = np.tile(m, (restarts,) + (1,) * (m.ndim - 1))
                norm2 = np.sum((t * m).reshape(n, -1).astype(np.float64) ** 2, axis=1)
                lane_weights[name][sl] = np.tile(1.0 / norm2, restarts).astype(np.float32)
                lam_tv[sl] = plans[name].lambda_tv
                lam_alpha[sl] = plans[name].lambda_alpha
                data_weight[sl] = plans[name].data_weight
            layer_ids = np.repeat(np.asarray([order[m] for m in names]), lanes_per_layer)
            restart_ids = np.tile(np.repeat(np.arange(restarts), n), len(names))
            image_ids = np.tile(np.arange(n), restarts * len(names))
            keys = jax.vmap(
                lambda li, ri, ii: jax.random.fold_in(
                    jax.random.fold_in(jax.random.fold_in(key, li), ri), ii
                )
            )(jnp.asarray(layer_ids), jnp.asarray(restart_ids), jnp.asarray(image_ids))
            h, w = model.input.size
            lane_init = (
                np.zeros((total, h, w, 3), np.float32)
                if init_u is None
                else np.tile(init_u, (restarts * len(names), 1, 1, 1))
            )
            lanes = dict(
                keys=keys,
                targets=lane_targets,
                masks=lane_masks,
                weights=lane_weights,
                lam_tv=lam_tv,
                lam_alpha=lam_alpha,
                data_weight=data_weight,
                init=lane_init,
            )
            group_file = (
                None if checkpoint is None else Path(checkpoint) / f"group{len(results)}.npz"
            )
            images, error, energy, finite = _run_group(
                model,
                lanes,
                group_layers,
                structure,
                init_u is not None,
                checkpoint=group_file,
                timings=timings,
            )
            for i, name in enumerate(names):
                sl = slice(i * lanes_per_layer, (i + 1) * lanes_per_layer)
                results[name] = InversionResult(
                    images=images[sl].reshape(restarts, n, h, w, 3),
                    feature_error=error[sl].reshape(restarts, n),
                    energy=energy[sl].reshape(restarts, n, -1),
                    finite=finite[sl].reshape(restarts, n),
                    layer=name,
                    plan=plans[name],
                )
                bad = np.argwhere(~results[name].finite)
                if len(bad):
                    where = ", ".join(f"image {i} (restart {r})" for r, i in bad[:10])
                    warnings.warn(
                        f"inversion of layer {name!r}: {where} hit non-finite values; their "
                        "last finite iterate is kept and the other images are unaffected.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                bar.update(1)
    return results


def invert(
    model: Model,
    layer: str,
    target: Any,
    *,
    preset: Any = "mahendran2016",
    key: jax.Array,
    restarts: int = 1,
    mask: Any = None,
    init: Any = None,
    steps: int | None = None,
) -> InversionResult:
    """Invert target features (N, *shape) of one layer; see :func:`invert_layers`."""
    masks = None if mask is None else {layer: mask}
    out = invert_layers(
        model, {layer: target}, preset=preset, key=key, restarts=restarts, masks=masks,
        init=init, steps=steps,
    )  # fmt: skip
    return next(iter(out.values()))


def energy_terms(
    model: Model,
    layer: str,
    target: Any,
    canvas: Any,
    *,
    preset: Any = "mahendran2016",
    offset: tuple[int, int] = (0, 0),
    mask: Any = None,
) -> dict[str, np.ndarray]:
    """The terms of the energy E that :func:`invert` minimizes, by the loop's own code.

    ``canvas`` float (N, Hc, Wc, 3) (or one (Hc, Wc, 3)) is the inversion variable in
    the papers' units, ``u = (image01 − mean)·255`` with Hc ≥ H, Wc ≥ W (a jittered
    canvas is ``J − 1`` pixels larger); the data term sees its H × W crop at
    ``offset`` (row, column), the priors the whole canvas. ``target`` (N, *shape)
    and ``mask`` as for :func:`invert`; ``preset`` a name, a preset or a plan.

    Returns float32 (N,) arrays: ``feature_error`` (Σ mask(Φ − Φ0)²/‖mask Φ0‖²),
    ``data`` (C times it), ``tv`` (λ_TV·TV^β), ``alpha`` (λ_α·N_α) and ``total``
    (their sum, the value :attr:`InversionResult.energy` records at a step).
    """
    name = model.resolve(layer)
    plan = resolve_plan(model, name, preset)
    t, m = check_target(model, name, target, mask)
    u = jnp.asarray(np.asarray(canvas, np.float32))
    if u.ndim == 3:
        u = u[None]
    size = tuple(model.input.size)
    row, col = (int(v) for v in offset)
    if (u.ndim != 4 or u.shape[0] != t.shape[0] or u.shape[-1] != 3 or row < 0 or col < 0
            or u.shape[1] < size[0] + row or u.shape[2] < size[1] + col):  # fmt: skip
        raise InputError(
            f"canvas has shape {tuple(np.shape(canvas))}; it must be ({t.shape[0]}, Hc, Wc, 3) "
            f"with room for the {size[0]}x{size[1]} image at offset {(row, col)}."
        )
    n = t.shape[0]
    norm2 = np.sum((t * m).reshape(n, -1).astype(np.float64) ** 2, axis=1)
    weights = {name: jnp.asarray((1.0 / norm2).astype(np.float32))}
    lam_tv = jnp.full((n,), plan.lambda_tv, jnp.float32)
    lam_alpha = jnp.full((n,), plan.lambda_alpha, jnp.float32)
    to_image, feature_loss, _, crop, prior_terms = _lane_math(
        model, {name: jnp.asarray(t)}, {name: jnp.asarray(m)}, weights, lam_tv, lam_alpha,
        layers=(name,), plan=plan,
    )  # fmt: skip
    offsets = jnp.tile(jnp.asarray([[row, col]], jnp.int32), (n, 1))
    error = feature_loss(to_image(crop(u, offsets)))
    tv, alpha = prior_terms(u)
    data = jnp.float32(plan.data_weight) * error
    out = {"feature_error": error, "data": data, "tv": tv, "alpha": alpha,
           "total": data + tv + alpha}  # fmt: skip
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


@functools.lru_cache(maxsize=16)
def _feature_fn(layers: tuple[str, ...]):
    return jax.jit(lambda model, images: model.apply(model.params, images, layers))


def features_of(model: Model, images01: Any, layers: Sequence[str]) -> dict[str, np.ndarray]:
    """``{layer: float32 (N, *shape)}`` for images float (N, H, W, 3) in [0, 1]."""
    images = np.asarray(images01, np.float32)
    check_images(images, model.input)
    names = tuple(model.resolve(n) for n in layers)
    out = _feature_fn(names)(model, images)
    return {n: np.asarray(out[n]) for n in names}


def invert_images(
    model: Model,
    images01: Any,
    layers: Sequence[str] | str,
    *,
    preset: Any = "mahendran2016",
    key: jax.Array,
    restarts: int = 1,
    transform: Callable[[str, np.ndarray], np.ndarray] | None = None,
    steps: int | None = None,
    progress: bool = False,
) -> dict[str, InversionResult]:
    """Reconstruct ``images01`` (N, H, W, 3) from their own features at ``layers``.

    ``transform(layer, features) -> features`` (e.g. a perturbation) is applied to
    the targets before inverting.
    """
    if isinstance(layers, str):
        layers = (layers,)
    feats = features_of(model, images01, layers)
    if transform is not None:
        feats = {n: np.asarray(transform(n, f), np.float32) for n, f in feats.items()}
    return invert_layers(
        model, feats, preset=preset, key=key, restarts=restarts, steps=steps, progress=progress
    )
