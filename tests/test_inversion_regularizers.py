"""Inversion priors and optimizers: gradients, conventions, and the reference loops."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cnnvis_jax.preimage.priors import alpha_norm, forward_differences, project_pixel_norm, tv_beta
from cnnvis_jax.preimage.updates import adagrad_momentum, momentum_with_resets

alpha_norm_values = alpha_norm
alpha_norm_pixels = functools.partial(alpha_norm, over="pixels", per_pixel=True)


@pytest.fixture(scope="module")
def canvas():
    return np.random.default_rng(0).normal(size=(5, 6, 3))


def test_forward_differences_are_zero_at_the_last_row_and_column():
    u = jnp.arange(2 * 3 * 1, dtype=jnp.float32).reshape(2, 3, 1)  # rows 0,1,2 / 3,4,5
    d1, d2 = forward_differences(u)
    np.testing.assert_array_equal(d1[..., 0], [[1, 1, 0], [1, 1, 0]])
    np.testing.assert_array_equal(d2[..., 0], [[3, 3, 3], [0, 0, 0]])


def test_conventions_match_hand_computation(canvas):
    u = jnp.asarray(canvas, jnp.float32)
    d1 = np.concatenate([canvas[:, 1:], canvas[:, -1:]], 1) - canvas
    d2 = np.concatenate([canvas[1:], canvas[-1:]], 0) - canvas
    tv = np.sum(d1**2 + d2**2)
    np.testing.assert_allclose(tv_beta(u, 2.0), tv, rtol=1e-5)
    np.testing.assert_allclose(tv_beta(u, 2.0, per_pixel=True), tv / 30, rtol=1e-5)
    np.testing.assert_allclose(tv_beta(u, 1.0), np.sum(np.sqrt(d1**2 + d2**2)), rtol=1e-5)
    np.testing.assert_allclose(alpha_norm_values(u, 6.0), np.sum(canvas**6), rtol=1e-5)
    pixel = np.sum(canvas**2, axis=-1) ** 3
    np.testing.assert_allclose(alpha_norm_pixels(u, 6.0), pixel.sum() / 30, rtol=1e-5)


def test_pixel_norm_projection_caps_colour_norms(canvas):
    out = np.asarray(project_pixel_norm(jnp.asarray(canvas * 100), 160.0))
    norms = np.linalg.norm(out, axis=-1)
    assert norms.max() <= 160.0 * (1 + 1e-6)
    small = np.linalg.norm(canvas * 100, axis=-1) <= 160
    np.testing.assert_allclose(out[small], canvas[small] * 100, rtol=1e-6)


@pytest.mark.parametrize(
    ("fn", "order"),
    [
        (lambda u: tv_beta(u, 2.0), 2),
        # |d|^1.5 has no second derivative where the differences vanish (last pixel)
        (lambda u: tv_beta(u, 1.5, per_pixel=True), 1),
        (lambda u: alpha_norm_values(u, 6.0), 2),
        (lambda u: alpha_norm_pixels(u, 6.0), 2),
        (lambda u: alpha_norm_pixels(u, 3.0), 2),
    ],
    ids=["tv2", "tv1.5-pixel", "alpha-values", "alpha-pixels", "alpha3-pixels"],
)
def test_regularizer_gradients(fn, order, canvas):
    with jax.enable_x64(True):
        check_grads(fn, (jnp.asarray(canvas, jnp.float64),), order=order, modes=("rev",))


def reference_momentum(grads, schedule, mu):
    """deep-goggle's loop: lr per step, momentum reset whenever lr changes."""
    lrs = [lr for lr, n in schedule for _ in range(n)]
    v, prev, out = np.zeros_like(grads[0]), 0.0, []
    for t, g in enumerate(grads):
        lr = lrs[min(t, len(lrs) - 1)]
        if lr != prev:
            v, prev = 0 * v, lr
        v = mu * v - lr * g
        out.append(v.copy())
    return out


def reference_adagrad(grads, schedule, mu, scale):
    """nnpreimage's loop (useAdagrad): G = μG + g², v = μv − g/(1/lr + √G)."""
    lrs = [scale * lr for lr, n in schedule for _ in range(n)]
    v, G, prev, out = np.zeros_like(grads[0]), 0.0, 0.0, []
    for t, g in enumerate(grads):
        lr = lrs[min(t, len(lrs) - 1)]
        if lr != prev:
            v, prev = 0 * v, lr
        G = mu * G + g**2
        v = mu * v - g / (1 / lr + np.sqrt(G))
        out.append(v.copy())
    return out


def run_transform(tx, grads):
    state = tx.init(jnp.zeros_like(grads[0]))
    out = []
    for g in grads:
        u, state = tx.update(jnp.asarray(g), state)
        out.append(np.asarray(u))
    return out


def test_optimizers_match_the_reference_loops():
    grads = list(np.random.default_rng(1).normal(size=(9, 4)).astype(np.float32))
    schedule = ((0.5, 3), (0.05, 2), (0.005, 2))  # past the end the last rate stays
    for got, want in zip(
        run_transform(momentum_with_resets(schedule, 0.9), grads),
        reference_momentum(grads, schedule, 0.9),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    for got, want in zip(
        run_transform(adagrad_momentum(schedule, 0.9, 16.0), grads),
        reference_adagrad(grads, schedule, 0.9, 16.0),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
