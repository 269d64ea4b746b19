"""The pre-image engine: lanes are independent (vmap == loop), non-finite lanes freeze,
best-so-far is the minimum seen, descent on a convex energy, resume == no resume across
phases that change the state's shape, and the update rules' closed forms."""

from __future__ import annotations

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnvis_jax import interrupt
from cnnvis_jax.preimage import engine, priors, updates

TARGETS = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 3, 2)), jnp.float32)


def _problem(targets, rule):
    """Lane l minimizes ||x_l - t_l||^2 + 0.1 TV(x_l); score = the data term."""

    def energy(x, i):
        data = jnp.sum((x - targets) ** 2, axis=(1, 2, 3))
        return data + 0.1 * priors.tv_beta(x, 2.0), {"score": data, "keep": x, "record": data}

    def update(g, opt, x, i):
        moves, opt = rule.update(g, opt, x)
        return optax.apply_updates(x, moves), opt

    return engine.Problem(energy, update)


def _run(targets, steps=12, rule=None):
    rule = rule or optax.adam(0.1)
    x0 = jnp.zeros_like(targets)
    state = engine.start(x0, rule.init(x0), best=x0,
                         best_score=jnp.full(targets.shape[:1], jnp.inf))  # fmt: skip
    return jax.jit(engine.scan, static_argnums=0)(_problem(targets, rule), state,
                                                  jnp.arange(steps))  # fmt: skip


def test_lanes_are_independent_vmap_equals_loop():
    state, (energy, active, record) = _run(TARGETS, rule=updates.ascent("progress", 1.0,
                                                                      10.0, 0.5))  # fmt: skip
    for lane in range(len(TARGETS)):
        solo, (e1, _, r1) = _run(TARGETS[lane : lane + 1], rule=updates.ascent("progress",
                                                                               1.0, 10.0, 0.5))  # fmt: skip
        np.testing.assert_allclose(state.params[lane], solo.params[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(energy[lane], e1[0], rtol=1e-6)
    assert energy.shape == (4, 12) and record.shape == (4, 12) and bool(jnp.all(active))


def test_descent_lowers_the_energy_and_best_is_the_minimum_seen():
    state, (energy, _, record) = _run(TARGETS, steps=30)
    assert np.all(np.asarray(energy[:, -1]) < np.asarray(energy[:, 0]))
    np.testing.assert_allclose(state.best_score, np.min(record, axis=1), rtol=1e-6)
    assert np.all(np.asarray(state.stopped_at) == -1)


def test_a_lane_that_turns_non_finite_freezes_and_the_others_go_on():
    bad = TARGETS.at[1].set(jnp.nan)
    state, (_, active, _) = _run(bad)
    good, _ = _run(TARGETS)
    assert int(state.stopped_at[1]) == 0 and not bool(jnp.any(active[1]))
    np.testing.assert_array_equal(state.params[1], np.zeros_like(TARGETS[1]))  # last finite
    for lane in (0, 2, 3):
        np.testing.assert_allclose(state.params[lane], good.params[lane], rtol=1e-6)
        assert int(state.stopped_at[lane]) == -1


def _grow(state, phase):
    """Entering phase p > 0 pads the canvas by one pixel a side (a shape change)."""
    if phase == 0:
        return state
    x = jnp.pad(state.params, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    rule = optax.adam(0.05)
    return state._replace(params=x, opt=rule.init(x))


_RUN = jax.jit(engine.scan, static_argnums=0)
_PROBLEMS: dict = {}


def _phased(tmp_path=None, stop_after=None):
    rule = optax.adam(0.05)
    calls = []

    def advance(state, chunk):
        if stop_after is not None and len(calls) == stop_after:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while a chunk runs
        calls.append(chunk)
        pad = (state.params.shape[1] - TARGETS.shape[1]) // 2
        if pad not in _PROBLEMS:  # one problem (and compiled program) per canvas size
            targets = jnp.pad(TARGETS, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
            _PROBLEMS[pad] = _problem(targets, rule)
        steps = jnp.arange(chunk.start, chunk.start + chunk.length)
        plain = state._replace(best=(), best_score=())
        new, (energy, _, _) = _RUN(_PROBLEMS[pad], plain, steps)
        return new, energy

    x0 = jnp.zeros_like(TARGETS)
    state = engine.start(x0, rule.init(x0))
    path = None if tmp_path is None else tmp_path / "state.npz"
    out = engine.drive(advance, state, [6, 4, 10], enter=_grow, checkpoint=path,
                       fingerprint="toy", chunked=True)  # fmt: skip
    return out, calls


def test_drive_resume_equals_an_uninterrupted_run(tmp_path):
    (reference, energy), calls = _phased()
    assert reference.params.shape == (4, 7, 7, 2) and energy.shape == (4, 20)
    assert len({c.length for c in calls}) == 1  # one chunk length: one compiled program
    with pytest.raises(interrupt.Interrupted):
        _phased(tmp_path, stop_after=4)
    (resumed, energy2), calls2 = _phased(tmp_path)
    assert calls2[0].start > 0  # the resumed run skipped what was saved
    np.testing.assert_array_equal(resumed.params, reference.params)
    np.testing.assert_array_equal(energy2, energy)


def test_update_rules_match_their_closed_forms():
    g = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 3, 1)), jnp.float32)
    sq = np.sum(np.asarray(g) ** 2, axis=(1, 2, 3))
    moves, _ = updates.ascent("progress", 1.0, 100.0, 2.0).update(g, ())
    rate = np.minimum(100.0, 2.0 / sq)[:, None, None, None]
    np.testing.assert_allclose(moves, -rate * np.asarray(g), rtol=1e-6)
    rule = updates.normalized_ascent(8.0, 0.0, 4)
    state = rule.init(g)
    for t in range(3):
        moves, state = rule.update(g, state)
        lr = 8.0 * (1 - t / 4)
        mean = np.mean(np.abs(np.asarray(g)), axis=(1, 2, 3))[:, None, None, None]
        np.testing.assert_allclose(moves, -lr / mean * np.asarray(g), rtol=1e-6)
    moves, _ = updates.sign_descent(0.1).update(g, updates.sign_descent(0.1).init(g))
    np.testing.assert_allclose(moves, -0.1 * np.sign(np.asarray(g)))


def test_tv_edge_conventions():
    u = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 4, 3)), jnp.float32)
    x = np.asarray(u)
    dy, dx = x[:, 1:, :-1] - x[:, :-1, :-1], x[:, :-1, 1:] - x[:, :-1, :-1]
    valid = np.sum((dy**2 + dx**2 + 1e-8) ** 0.75, axis=(1, 2, 3))
    np.testing.assert_allclose(priors.tv_beta(u, 1.5, edge="valid", eps=1e-8), valid, rtol=1e-5)
    d1 = np.concatenate([x[:, :, 1:] - x[:, :, :-1], np.zeros_like(x[:, :, :1])], axis=2)
    d2 = np.concatenate([x[:, 1:] - x[:, :-1], np.zeros_like(x[:, :1])], axis=1)
    full = np.sum((d1**2 + d2**2) ** 0.75, axis=(1, 2, 3))
    np.testing.assert_allclose(priors.tv_beta(u, 1.5), full, rtol=1e-5)
    with pytest.raises(ValueError, match="edge"):
        priors.tv_beta(u, 2.0, edge="wrap")


def test_a_phase_without_steps_is_never_entered_not_even_on_resume(tmp_path):
    def enter(state, phase):  # every entered phase appends a column (a shape change)
        return {"x": jnp.concatenate([state["x"], jnp.full((2, 1), float(phase))], axis=1)}

    def run(stop_after=None):
        seen = []

        def advance(state, chunk):
            if stop_after is not None and len(seen) == stop_after:
                os.kill(os.getpid(), signal.SIGINT)
            seen.append(chunk.phase)
            return {"x": state["x"] + chunk.length}, jnp.zeros((2, chunk.length))

        state, _ = engine.drive(advance, {"x": jnp.zeros((2, 1))}, [2, 0, 4], enter=enter,
                                checkpoint=tmp_path / "s.npz", fingerprint="zero")  # fmt: skip
        return state, seen

    with pytest.raises(interrupt.Interrupted):
        run(stop_after=3)  # one-step chunks: saved after step 4, inside phase 2
    state, seen = run()
    assert seen == [2, 2]  # the rest of phase 2 only
    # entered phases 0 and 2 (one column each), stepped 6 times
    np.testing.assert_array_equal(state["x"], [[6, 6, 6], [6, 6, 6]])
