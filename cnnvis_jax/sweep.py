"""Optimization variants as an experiment: a preset, a grid over its numbers and update
rules, several seeds; the objective against steps and seconds, and a table.

A *grid* is ``"name=v1,v2 name=v3 ..."``; the variants are every combination, in grid
order. What a name changes:

* activation maximization (:func:`sweep_am`, a :class:`~cnnvis_jax.am.recipe.Recipe`):
  ``optimizer`` (``adam``, ``sgd``, ``progress`` (Yosinski's step of predicted gain),
  ``normalized`` (``lr / mean|g|``, DGN-AM), ``lbfgs``), ``lr`` (the rule's step: Adam's,
  SGD's and L-BFGS's learning rate, ``progress``'s desired gain, ``normalized``'s start
  rate), ``steps``, ``redirect_steps``, and the numbers of the preset's own priors and
  post steps (``l2``, ``alpha_weight``, ``alpha``, ``tv``, ``tv_beta``, ``decay``,
  ``blur``, ``small_norm``, ``small_contribution``; :func:`am_fields` lists a preset's);
* inversion (:func:`sweep_inversion`, a :class:`~cnnvis_jax.inversion.presets.Plan`):
  ``lambda_tv``, ``lambda_alpha``, ``data_weight``, ``alpha``, ``beta``, ``momentum``,
  ``grad_scale``, ``lr_scale`` (multiplies every learning rate of the schedule) and
  ``steps``.

Variants that share a structure (numbers only differ) render in one vmapped program
(AM) or reuse one compiled program (inversion). Seconds are measured per chunk of the
pre-image engine, compilation excluded (:func:`cnnvis_jax.preimage.engine.seconds_per_step`);
variants rendered together share their program's time equally. A variant *reaches* the
best final value when its mean curve (over seeds and units / images) comes within 5%
of the best variant's final mean: at least 0.95 times it when maximizing, at most
1/0.95 times it when minimizing.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cnnvis_jax.errors import InputError

__all__ = [
    "SweepResult",
    "am_fields",
    "am_variants",
    "inversion_fields",
    "inversion_variants",
    "parse_grid",
    "sweep_am",
    "sweep_inversion",
]

OPTIMIZERS = ("adam", "sgd", "progress", "normalized", "lbfgs")
REACH = 0.95


def parse_grid(text: str) -> dict[str, tuple[str, ...]]:
    """``"optimizer=adam,sgd lr=0.01,0.05"`` -> ``{"optimizer": ("adam", "sgd"), ...}``.

    Raises:
      InputError: an empty grid, a term without ``=``, a name without values, a name
        given twice.
    """
    grid: dict[str, tuple[str, ...]] = {}
    for term in str(text).split():
        name, sep, values = term.partition("=")
        items = tuple(v for v in values.split(",") if v)
        if not sep or not name or not items:
            raise InputError(
                f"grid term {term!r} is not NAME=V1,V2; e.g. --grid 'optimizer=adam,sgd lr=0.01,0.05'."
            )
        if name in grid:
            raise InputError(
                f"grid name {name!r} is given twice; list its values once: {name}=A,B."
            )
        grid[name] = items
    if not grid:
        raise InputError("the grid is empty; give NAME=V1,V2 terms, e.g. 'lr=0.01,0.05'.")
    return grid


def _combinations(grid: dict[str, tuple[str, ...]]) -> list[dict[str, str]]:
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*grid.values())]


def _number(name: str, value: str, kind=float):
    try:
        number = kind(value)
    except ValueError:
        raise InputError(f"{name}={value!r} is not a number.") from None
    if not np.isfinite(number):
        raise InputError(f"{name}={value!r} must be finite.")
    return number


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InputError(f"{name}={value!r} must be a whole number.") from None
    if number < 1:
        raise InputError(f"{name} must be at least 1, got {value}.")
    return number


def _label(settings: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items())


# --- activation maximization ------------------------------------------------------------

_AM_NUMBERS = {
    # name: (class name, field)
    "l2": ("L2", "weight"),
    "alpha_weight": ("AlphaNorm", "weight"),
    "alpha": ("AlphaNorm", "alpha"),
    "tv": ("TotalVariation", "weight"),
    "tv_beta": ("TotalVariation", "beta"),
    "decay": ("Decay", "rate"),
    "blur": ("Blur", "radius"),
    "small_norm": ("SmallNorm", "percentile"),
    "small_contribution": ("SmallContribution", "percentile"),
}


def am_fields(recipe) -> tuple[str, ...]:
    """The grid names a recipe has (see the module docstring)."""
    present = {type(x).__name__ for x in (*recipe.penalties, *recipe.post)}
    own = [n for n, (cls, _) in _AM_NUMBERS.items() if cls in present]
    return ("optimizer", "lr", "steps", "redirect_steps", *own)


def _optimizer(name: str, lr: float | None):
    from cnnvis_jax.am import optimizers as opt

    if name not in OPTIMIZERS:
        raise InputError(f"optimizer={name!r} is not one of {', '.join(OPTIMIZERS)}.")
    if name == "adam":
        return opt.Adam(0.05 if lr is None else lr)
    if name == "sgd":
        return opt.Ascent("constant", lr=1.0 if lr is None else lr)
    if name == "progress":
        return opt.Ascent("progress", max_lr=1e8, desired=2.0 if lr is None else lr)
    if name == "normalized":
        return opt.NormalizedAscent(8.0 if lr is None else lr, 1e-10)
    return opt.LBFGS(1.0 if lr is None else lr)


def _set_lr(optimizer, lr: float):
    from cnnvis_jax.am import optimizers as opt
    from cnnvis_jax.am._tree import replace

    if isinstance(optimizer, opt.Ascent):
        return replace(optimizer, **({"lr": lr} if optimizer.policy == "constant" else
                                     {"desired": lr}))  # fmt: skip
    if isinstance(optimizer, opt.NormalizedAscent):
        return replace(optimizer, start_lr=lr)
    return replace(optimizer, lr=lr)


def _am_variant(recipe, settings: dict[str, str]):
    from cnnvis_jax.am._tree import replace

    lr = _number("lr", settings["lr"]) if "lr" in settings else None
    if "optimizer" in settings:
        recipe = replace(recipe, optimizer=_optimizer(settings["optimizer"], lr))
    elif lr is not None:
        recipe = replace(recipe, optimizer=_set_lr(recipe.optimizer, lr))
    if "steps" in settings:
        recipe = recipe.with_steps(_positive_int("steps", settings["steps"]))
    if "redirect_steps" in settings:
        redirect = _number("redirect_steps", settings["redirect_steps"], int)
        recipe = replace(recipe, redirect_steps=max(redirect, 0))
    for name, value in settings.items():
        if name not in _AM_NUMBERS:
            continue
        cls, field = _AM_NUMBERS[name]
        number = _number(name, value)

        def edit(items, cls=cls, field=field, number=number):
            return tuple(replace(x, **{field: number}) if type(x).__name__ == cls else x
                         for x in items)  # fmt: skip

        recipe = replace(recipe, penalties=edit(recipe.penalties), post=edit(recipe.post))
    return recipe


def am_variants(recipe, grid: dict[str, tuple[str, ...]]) -> list[tuple[dict[str, str], Any]]:
    """``[(settings, recipe), ...]``, one per combination of ``grid`` on ``recipe``.

    Raises:
      InputError: a name the recipe does not have (the message names its fields), a
        value that is not a number or an update rule, an MFV centre-bias recipe.
    """
    if recipe.center is not None:
        raise InputError(
            f"preset {recipe.name!r} runs MFV's centre-bias octaves, whose update is fixed; "
            "sweep another preset (lucid, yosinski1..4, simonyan, dgn)."
        )
    _check_names(f"preset {recipe.name!r}", am_fields(recipe), grid)
    return [(s, _am_variant(recipe, s)) for s in _combinations(grid)]


def _check_names(what: str, fields: tuple[str, ...], grid: dict[str, tuple[str, ...]]) -> None:
    unknown = [n for n in grid if n not in fields]
    if unknown:
        raise InputError(f"{what} has no field {unknown[0]!r}; its fields are {', '.join(fields)}.")


def _groups(items: Sequence[Any]) -> list[list[int]]:
    """Indices of the items grouped by pytree structure (numbers only differ)."""
    groups: dict[Any, list[int]] = {}
    for k, item in enumerate(items):
        groups.setdefault(jax.tree_util.tree_structure(item), []).append(k)
    return list(groups.values())


def sweep_am(
    model,
    objectives,
    recipe,
    grid: dict[str, tuple[str, ...]] | str,
    *,
    key: jax.Array | int = 0,
    seeds: int = 1,
    steps: int | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
) -> SweepResult:
    """Render ``objectives`` (U) with every variant of ``grid`` on ``recipe`` (a
    :class:`~cnnvis_jax.am.recipe.Recipe` or preset name; ``steps`` overrides its
    step count) from ``seeds`` starts each.

    ``checkpoint`` (a folder) keeps each finished group of variants and the state of
    the one in progress (:func:`cnnvis_jax.am.render.render`'s checkpoint): a later
    call with the same arguments resumes, and Ctrl-C stops at a saved point.

    Returns a :class:`SweepResult` (maximization: the curves are the objective per
    step on the transformed images, the finals the recipe's output activation)."""
    from cnnvis_jax.am.presets import preset
    from cnnvis_jax.am.render import render

    recipe = preset(recipe) if isinstance(recipe, str) else recipe
    recipe = recipe.with_steps(steps) if steps is not None else recipe
    grid = parse_grid(grid) if isinstance(grid, str) else grid
    if int(seeds) < 1:
        raise InputError(f"seeds must be at least 1, got {seeds}.")
    variants = am_variants(recipe, grid)
    rows: list[dict[str, Any]] = [{} for _ in variants]
    for g, members in enumerate(_groups([r for _, r in variants])):
        recipes = [variants[k][1] for k in members]

        def run(render_checkpoint, recipes=recipes, members=members):
            timings: list = []
            result = render(model, objectives, recipes, key=key, seeds=seeds, progress=progress,
                            desc=f"sweep {len(members)} variant(s)", timings=timings,
                            checkpoint=render_checkpoint)  # fmt: skip
            per_step = _measured(timings) / len(members)
            value = (result.best_activation if recipes[0].output == "best"
                     else result.final_activation)  # fmt: skip
            return [{"curves": result.trajectory[i, ..., 0].reshape(-1, result.trajectory.shape[-2]),
                     "final": value[i, ..., 0],
                     "seconds_per_step": np.asarray(per_step),
                     "images": result.images[i, 0, :, 0]} for i in range(len(members))]  # fmt: skip

        mark = (f"{_digest(model, objectives, recipes, key)} seeds={seeds} "
                f"{[variants[k][0] for k in members]} {jax.tree_util.tree_structure(recipes)} "
                f"{jax.tree_util.tree_structure(objectives)}")  # layers, kinds: static fields  # fmt: skip
        for k, row in zip(members, _group_rows(checkpoint, g, mark, run)):
            rows[k] = row
    return SweepResult(
        family="am",
        goal="max",
        labels=tuple(_label(s) for s, _ in variants),
        settings=tuple(s for s, _ in variants),
        curves=tuple(r["curves"] for r in rows),
        final=tuple(r["final"] for r in rows),
        seconds_per_step=tuple(float(r["seconds_per_step"]) for r in rows),
        images=tuple(r["images"] for r in rows),
    )


def _measured(timings) -> float:
    """Seconds per step of a run's timed chunks; NaN (unknown) when fewer than two
    chunks ran (a run resumed near its end, or one that compiled in its only chunk)."""
    from cnnvis_jax.preimage.engine import seconds_per_step

    return seconds_per_step(timings) if len(timings) >= 2 else float("nan")


def _digest(*trees) -> str:
    from cnnvis_jax.checkpoint import digest

    return digest(*[getattr(t, "params", t) for t in trees])


def _group_rows(checkpoint, group: int, mark: str, run) -> list[dict[str, np.ndarray]]:
    """The rows of variant group ``group``: from ``checkpoint/group_XX.npz`` when a
    finished run with fingerprint ``mark`` is there, else ``run(state)`` (``state``: a
    path for the run's own resumable state, or None without a checkpoint), saved."""
    from cnnvis_jax.checkpoint import load_arrays, save_arrays

    if checkpoint is None:
        return run(None)
    folder = Path(checkpoint)
    done = folder / f"group_{group:02d}.npz"
    saved = load_arrays(done, mark)
    if saved is not None:
        count = int(saved["count"])
        return [{k: saved[f"{i}/{k}"] for k in ("curves", "final", "seconds_per_step", "images")}
                for i in range(count)]  # fmt: skip
    state = folder / f"group_{group:02d}-state"  # the run's own checkpoint (file or folder)
    rows = run(state)
    arrays = {f"{i}/{k}": np.asarray(v) for i, row in enumerate(rows) for k, v in row.items()}
    save_arrays(done, {**arrays, "count": len(rows)}, mark)
    if state.is_dir():
        shutil.rmtree(state)
    state.unlink(missing_ok=True)
    return rows


# --- inversion ----------------------------------------------------------------------------

_PLAN_NUMBERS = ("lambda_tv", "lambda_alpha", "data_weight", "alpha", "beta", "momentum",
                 "grad_scale")  # fmt: skip


def inversion_fields(plan) -> tuple[str, ...]:
    """The grid names of an inversion plan (see the module docstring)."""
    return (*_PLAN_NUMBERS, "lr_scale", "steps")


def _plan_variant(plan, settings: dict[str, str]):
    from cnnvis_jax.inversion.presets import Stage

    changes = {n: _number(n, v) for n, v in settings.items() if n in _PLAN_NUMBERS}
    if "data_weight" in changes and not changes["data_weight"] > 0:
        raise InputError(f"data_weight must be positive, got {settings['data_weight']}.")
    plan = dataclasses.replace(plan, **changes)
    if "lr_scale" in settings:
        scale = _number("lr_scale", settings["lr_scale"])
        if not scale > 0:
            raise InputError(f"lr_scale must be positive, got {settings['lr_scale']}.")
        stages = tuple(Stage(tuple((lr * scale, n) for lr, n in st.schedule), st.jitter)
                       for st in plan.stages)  # fmt: skip
        plan = dataclasses.replace(plan, stages=stages)
    if "steps" in settings:
        plan = plan.with_steps(_positive_int("steps", settings["steps"]))
    return plan


def inversion_variants(plan, grid: dict[str, tuple[str, ...]]) -> list[tuple[dict[str, str], Any]]:
    """``[(settings, plan), ...]``, one per combination of ``grid`` on ``plan``.

    Raises:
      InputError: a name the plan does not have (the message names its fields) or a
        value that is not a number.
    """
    _check_names(f"inversion preset {plan.name!r}", inversion_fields(plan), grid)
    return [(s, _plan_variant(plan, s)) for s in _combinations(grid)]


def sweep_inversion(
    model,
    layer: str,
    images01,
    preset: Any,
    grid: dict[str, tuple[str, ...]] | str,
    *,
    key: jax.Array,
    seeds: int = 1,
    steps: int | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> SweepResult:
    """Reconstruct ``images01`` (N, H, W, 3) from their features at ``layer`` with
    every variant of ``grid`` on ``preset`` (name, preset or plan; ``steps`` rescales
    its schedule), ``seeds`` restarts each. Returns a :class:`SweepResult` (minimization: the curves are the
    energy per step, the finals the feature error). ``checkpoint`` as for
    :func:`sweep_am`."""
    from cnnvis_jax.inversion.regularized import features_of, invert_layers, resolve_plan

    name = model.resolve(layer)
    grid = parse_grid(grid) if isinstance(grid, str) else grid
    if int(seeds) < 1:
        raise InputError(f"seeds must be at least 1, got {seeds}.")
    variants = inversion_variants(resolve_plan(model, name, preset, steps), grid)
    target = features_of(model, images01, [name])[name]
    rows = []
    for g, (_, plan) in enumerate(variants):

        def run(folder, plan=plan):
            timings: list = []
            result = invert_layers(model, {name: target}, preset=plan, key=key, restarts=seeds,
                                   timings=timings, checkpoint=folder)[name]  # fmt: skip
            return [{"curves": result.energy.reshape(-1, result.energy.shape[-1]),
                     "final": result.feature_error,
                     "seconds_per_step": np.asarray(_measured(timings)),
                     "images": np.clip(result.images[0], 0.0, 1.0)}]  # fmt: skip

        mark = f"{_digest(model, target, key)} seeds={seeds} {plan!r}"
        rows.extend(_group_rows(checkpoint, g, mark, run))
    curves = [r["curves"] for r in rows]
    final = [r["final"] for r in rows]
    per_step = [float(r["seconds_per_step"]) for r in rows]
    images = [r["images"] for r in rows]
    return SweepResult(
        family="invert",
        goal="min",
        labels=tuple(_label(s) for s, _ in variants),
        settings=tuple(s for s, _ in variants),
        curves=tuple(curves),
        final=tuple(final),
        seconds_per_step=tuple(per_step),
        images=tuple(images),
    )


# --- the result ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Per variant (in grid order): its label and settings, the objective per step
    for every seed and unit / image ``curves`` float32 (S·U, steps), the final values
    ``final`` (S, U), the measured ``seconds_per_step`` and the first seed's images
    (U, H, W, 3). ``goal`` is ``"max"`` (AM) or ``"min"`` (inversion)."""

    family: str
    goal: str
    labels: tuple[str, ...]
    settings: tuple[dict[str, str], ...]
    curves: tuple[np.ndarray, ...]
    final: tuple[np.ndarray, ...]
    seconds_per_step: tuple[float, ...]
    images: tuple[np.ndarray, ...]

    def _mean_curve(self, k: int) -> np.ndarray:  # over seeds and units / images
        curve = np.asarray(self.curves[k], np.float64)
        with np.errstate(all="ignore"):
            return np.nanmean(np.where(np.isfinite(curve), curve, np.nan), axis=0)

    def table(self) -> list[dict[str, Any]]:
        """One row per variant: final mean and standard deviation (over seeds and
        units / images), curve end, seconds per step and in total, and the step and
        seconds at which the mean curve reaches the best variant's final curve value
        (None when it never does)."""
        ends = [float(self._mean_curve(k)[-1]) for k in range(len(self.labels))]
        finite = [e for e in ends if np.isfinite(e)]
        best = (max(finite) if self.goal == "max" else min(finite)) if finite else float("nan")
        if self.goal == "max":
            bar = REACH * best if best >= 0 else best / REACH
        else:
            bar = best / REACH if best >= 0 else REACH * best
        rows = []
        for k, label in enumerate(self.labels):
            curve = self._mean_curve(k)
            hit = curve >= bar if self.goal == "max" else curve <= bar
            step = int(np.argmax(hit)) + 1 if np.any(hit) else None
            per = self.seconds_per_step[k]
            timed = bool(np.isfinite(per))
            final = np.asarray(self.final[k], np.float64)
            rows.append({
                "variant": label,
                **self.settings[k],
                "final_mean": float(np.nanmean(final)),
                "final_std": float(np.nanstd(final)),
                "curve_end": ends[k],
                "steps": int(curve.shape[0]),
                "seconds_per_step": per if timed else None,
                "seconds": per * int(curve.shape[0]) if timed else None,
                "steps_to_reach": step,
                "seconds_to_reach": per * step if (timed and step is not None) else None,
            })  # fmt: skip
        return rows

    def fastest(self) -> str | None:
        """The variant that reaches the best final value in the fewest seconds."""
        reached = [r for r in self.table() if r["seconds_to_reach"] is not None]
        return min(reached, key=lambda r: r["seconds_to_reach"])["variant"] if reached else None

    def summary(self) -> dict[str, Any]:
        return {"family": self.family, "goal": self.goal, "reach": REACH,
                "fastest": self.fastest(), "variants": self.table()}  # fmt: skip

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``results.json`` (:meth:`summary`), ``table.csv``, ``curves.png``
        (mean and spread against steps and against seconds) and ``variant_XX.png`` (the
        first seed's images per variant) into ``out_dir``; returns the folder."""
        from cnnvis_jax.report.files import save_figure, write_csv, write_json
        from cnnvis_jax.report.grid import image_grid, save_png

        out = Path(out_dir)
        rows = self.table()
        write_json(out / "results.json", self.summary())
        write_csv(out / "table.csv", rows)
        save_figure(self._figure(), out / "curves.png")
        for k, images in enumerate(self.images):
            scale = max(1, 128 // max(images.shape[1], 1))
            save_png(image_grid(images, labels=[self.labels[k]] + [""] * (len(images) - 1),
                                scale=scale), out / f"variant_{k:02d}.png")  # fmt: skip
        return out

    def _figure(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
        for k, label in enumerate(self.labels):
            curve = np.asarray(self.curves[k], np.float64)
            curve = np.where(np.isfinite(curve), curve, np.nan)
            with np.errstate(all="ignore"):
                mean, spread = np.nanmean(curve, axis=0), np.nanstd(curve, axis=0)
            steps = np.arange(1, len(mean) + 1)
            for ax, x in ((by_step, steps), (by_time, steps * self.seconds_per_step[k])):
                ax.plot(x, mean, label=label)
                ax.fill_between(x, mean - spread, mean + spread, alpha=0.2)
        what = "objective" if self.goal == "max" else "energy"
        by_step.set(xlabel="step", ylabel=f"{what} (mean, ±1 sd over seeds and units)")
        by_time.set(xlabel="seconds (compilation excluded)", ylabel=what)
        by_step.legend(fontsize=7)
        fig.tight_layout()
        return fig
