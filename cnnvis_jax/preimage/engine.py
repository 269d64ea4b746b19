"""The pre-image engine: minimize an energy over image parameters, many lanes at once.

Activation maximization, MFV's centre-biased canvas, regularized inversion and
adversarial search are one problem (Mahendran & Vedaldi 2016): find image parameters
that minimize an energy, a feature term plus image priors. This module is the one
loop they all run on; each family supplies only its :class:`Problem`:

* ``energy(params, i) -> (energy (L,), aux)``: the energies of the ``L`` *lanes*
  (independent problems: units, seeds, restarts, images, sweep variants) at step
  ``i``, from parameters whose leaves have the lane axis first. The engine
  differentiates their sum, so one batched forward/backward gives every lane its own
  gradient. ``aux`` is a dict; optional entries ``score`` (lane-leading array, lower
  is better), ``keep`` (the pytree to keep at the best score) and ``record`` (the
  array recorded per step).
* ``update(grad, opt, params, i) -> (params, opt)``: the update rule (an optax
  :class:`~optax.GradientTransformation` from :mod:`cnnvis_jax.preimage.updates`,
  followed by the family's post steps: projections, blur, denoising).

Per step and lane the engine keeps the best-so-far item (when the state holds a
``best_score``) and freezes a lane whose energy, gradient or new parameters stop
being finite at its last finite parameters (``stopped_at`` = that step); the other
lanes go on. Steps run in a :func:`jax.lax.scan`.

:func:`drive` runs a schedule of *phases* (redirected-ReLU steps, MFV octaves,
inversion stages) in chunks, with a progress bar, resumable checkpoints and a
graceful Ctrl-C, for every family the same way.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax import parallel

__all__ = [
    "Chunk",
    "Problem",
    "State",
    "chunks",
    "drive",
    "scan",
    "seconds_per_step",
    "start",
    "step",
]


class State(NamedTuple):
    """The engine's state; every array leaf has the lane axis ``L`` first.

    Attributes:
      params: the parameters being optimized (a pytree).
      opt: the update rule's state (0-d leaves are shared by all lanes, e.g. optax's
        step counts; every other leaf is per lane).
      best: the item kept at the lowest score so far (``()`` when not tracked).
      best_score: the lowest score so far, shaped like the ``score`` aux (``()``
        when not tracked).
      stopped_at: int32 (L,), the step at which the lane stopped on a non-finite
        value, -1 while it runs.
    """

    params: Any
    opt: Any
    best: Any
    best_score: Any
    stopped_at: jax.Array


class Problem(NamedTuple):
    """What a family supplies: ``energy(params, i)`` and ``update(grad, opt, params, i)``
    (see the module docstring)."""

    energy: Callable[[Any, jax.Array], tuple[jax.Array, dict]]
    update: Callable[[Any, Any, Any, jax.Array], tuple[Any, Any]]


def start(params: Any, opt: Any, *, best: Any = (), best_score: Any = ()) -> State:
    """The state before the first step (``L`` from the first parameter leaf)."""
    lanes = jax.tree_util.tree_leaves(params)[0].shape[0]
    return State(params, opt, best, best_score, jnp.full((lanes,), -1, jnp.int32))


def _lane_finite(tree: Any, lanes: int) -> jax.Array:
    """bool (L,): every value of the lane is finite."""
    ok = jnp.ones((lanes,), bool)
    for leaf in jax.tree_util.tree_leaves(tree):
        if jnp.ndim(leaf) and leaf.shape[0] == lanes:
            ok = ok & jnp.all(jnp.isfinite(leaf).reshape(lanes, -1), axis=1)
    return ok


def _choose(mask: jax.Array, new: Any, old: Any) -> Any:
    """``new`` where the lane-leading ``mask`` ((L,), or (L, B) per item) holds, else
    ``old``; 0-d leaves (shared by all lanes, e.g. optax's counts) are taken from ``new``."""

    def pick(n, o):
        if jnp.ndim(n) == 0:
            return n
        return jnp.where(mask.reshape(mask.shape + (1,) * (jnp.ndim(n) - mask.ndim)), n, o)

    return jax.tree_util.tree_map(pick, new, old)


def step(problem: Problem, state: State, i: jax.Array):
    """One step of every lane. Returns ``(state, (energy (L,), active (L,), record))``;
    ``active`` is False for lanes that had stopped or stopped at this step."""

    def total(params):
        energy, aux = problem.energy(params, i)
        return jnp.sum(energy), (energy, aux)

    (_, (energy, aux)), grad = jax.value_and_grad(total, has_aux=True)(state.params)
    params, opt = problem.update(grad, state.opt, state.params, i)
    lanes = energy.shape[0]
    finite = jnp.isfinite(energy) & _lane_finite(grad, lanes) & _lane_finite(params, lanes)
    running = state.stopped_at < 0
    active = finite & running
    best, best_score = state.best, state.best_score
    if "score" in aux and not isinstance(best_score, tuple):  # best-so-far tracked
        score = aux["score"]
        better = active.reshape((-1,) + (1,) * (score.ndim - 1)) & (score < best_score)
        best = _choose(better, aux["keep"], best)
        best_score = jnp.where(better, score, best_score)
    new = State(
        params=_choose(active, params, state.params),
        opt=_choose(active, opt, state.opt),
        best=best,
        best_score=best_score,
        stopped_at=jnp.where(running & ~finite, jnp.asarray(i, jnp.int32), state.stopped_at),
    )
    return new, (energy, active, aux.get("record", ()))


def scan(problem: Problem, state: State, steps: jax.Array):
    """Run the steps numbered ``steps`` (int (T,)). Returns ``(state, (energy (L, T),
    active (L, T), record (L, T, ...)))``."""
    state, (energy, active, record) = jax.lax.scan(functools.partial(step, problem), state, steps)
    lane_first = functools.partial(jnp.moveaxis, source=0, destination=1)
    return state, (lane_first(energy), lane_first(active),
                   jax.tree_util.tree_map(lane_first, record))  # fmt: skip


# --- the driver -------------------------------------------------------------------------


class Chunk(NamedTuple):
    """Steps ``[first, first + length)`` of phase ``phase``, global steps from ``start``;
    ``opens``: the chunk begins its phase."""

    phase: int
    first: int
    length: int
    start: int
    opens: bool


def chunks(lengths: Sequence[int], size: int) -> list[Chunk]:
    """The chunks of at most ``size`` steps that run phases of ``lengths`` steps in
    order (a chunk never spans two phases)."""
    out, start = [], 0
    for phase, n in enumerate(int(v) for v in lengths):
        for first in range(0, n, max(int(size), 1)):
            length = min(int(size), n - first)
            out.append(Chunk(phase, first, length, start + first, first == 0))
        start += n
    return out


def drive(
    advance: Callable[[Any, Chunk], tuple[Any, jax.Array]],
    state: Any,
    lengths: Sequence[int],
    *,
    enter: Callable[[Any, int], Any] | None = None,
    chunked: bool = False,
    checkpoint: str | os.PathLike | None = None,
    fingerprint: str = "",
    desc: str = "optimize",
    progress: bool = False,
    timings: list | None = None,
) -> tuple[Any, np.ndarray | None]:
    """Run phases of ``lengths`` steps: ``advance(state, chunk) -> (state, record)``
    per chunk, ``enter(state, phase) -> state`` before a phase's first chunk (a
    stage's fresh optimizer, an octave's zoom).

    Chunks are one per phase, or with ``chunked`` / ``checkpoint`` about 20 of one
    length (:func:`cnnvis_jax.checkpoint.even_chunk`). With ``checkpoint`` (a
    ``.npz`` file) the state and the records so far are saved after each chunk; a
    later call with the same ``fingerprint`` resumes (the state's shapes at the saved
    phase are rebuilt by replaying ``enter``) and returns the same result as an
    uninterrupted run, and the first Ctrl-C / SIGTERM stops after a saved chunk with
    :class:`cnnvis_jax.interrupt.Interrupted`.

    With ``timings`` (a list) the run is chunked, each chunk is waited for, and
    ``(first step, steps, seconds)`` is appended per chunk (the first chunk's seconds
    include compiling; see :func:`seconds_per_step`).

    Returns ``(state, records concatenated on axis 1)`` (None when no step ran).
    """
    import time

    from cnnvis_jax import checkpoint as checkpoint_mod
    from cnnvis_jax import interrupt
    from cnnvis_jax.progress import progress_bar

    lengths = [int(n) for n in lengths]
    total = sum(lengths)
    split = chunked or checkpoint is not None or timings is not None
    size = checkpoint_mod.even_chunk(lengths) if split else total
    plan = chunks(lengths, size)
    enter = enter or (lambda s, _: s)
    records: list = []
    done = 0
    if checkpoint is not None:
        mark = f"{fingerprint}/chunks{size}"
        raw = checkpoint_mod.load_arrays(checkpoint, mark)
        if raw is not None:
            like = state
            for phase in range(int(raw["phase"]) + 1):  # the shapes at the saved phase
                if lengths[phase] > 0:  # (a phase without steps is never entered)
                    like = enter(like, phase)
            restored = checkpoint_mod.tree_from(raw, like, checkpoint)
            state = jax.tree_util.tree_map(_placed_like, like, restored)
            done = int(raw["done"])
            records = [raw["record"]] if "record" in raw else []
    guard = interrupt.graceful(enabled=checkpoint is not None)
    with guard, progress_bar(total, desc, enabled=progress, unit="step") as bar:
        bar.update(done)
        for chunk in plan:
            if chunk.start + chunk.length <= done:  # ran before the checkpoint
                continue
            clock = time.perf_counter()
            if chunk.opens:
                state = enter(state, chunk.phase)
            state, record = advance(state, chunk)
            records.append(record)
            if timings is not None:
                jax.block_until_ready(record)
                timings.append((chunk.start, chunk.length, time.perf_counter() - clock))
            bar.update(chunk.length)
            if checkpoint is not None:
                records = [np.concatenate(parallel.to_host(records), axis=1)]
                host = parallel.to_host(state)  # every process takes part in the gather
                checkpoint_mod.save_arrays(  # process 0 writes
                    checkpoint,
                    {**checkpoint_mod.tree_arrays(host), "record": records[0],
                     "done": chunk.start + chunk.length, "phase": chunk.phase},
                    mark,
                )  # fmt: skip
                interrupt.check(desc)
    if not records:
        return state, None
    return state, np.concatenate(parallel.to_host(records), axis=1)


def seconds_per_step(timings: Sequence[tuple[int, int, float]]) -> float:
    """The median seconds per step of the chunks :func:`drive` timed, without the
    first chunk (which compiled) when there are others; the median also discounts a
    later phase's first chunk, which compiles that phase's program."""
    rows = list(timings)[1:] or list(timings)
    if not rows:
        return float("nan")
    return float(np.median([seconds / max(steps, 1) for _, steps, seconds in rows]))


def _placed_like(ref: Any, value: np.ndarray) -> jax.Array:
    """``value`` on the devices (and sharding) of ``ref``."""
    sharding = getattr(ref, "sharding", None)
    return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)
