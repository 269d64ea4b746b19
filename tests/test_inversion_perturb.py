"""Perturbations keep what they claim to keep; metrics."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from cnnvis_jax.errors import InputError
from cnnvis_jax.inversion import (
    binarize,
    drop_least,
    dropout,
    make_perturbation,
    normalized_error,
    normalized_image_error,
    unit_importance,
)
from cnnvis_jax.inversion.perturb import channel_group


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    f = np.maximum(rng.normal(size=(3, 4, 4, 6)), 0).astype(np.float32)  # ReLU-like
    f[2] = rng.normal(size=(4, 4, 6))  # signed (logit-like)
    return f


def norms(x):
    return np.sqrt(np.sum(np.asarray(x, np.float64) ** 2, axis=(1, 2, 3)))


def test_binarize_keeps_sign_pattern_and_norm(feats):
    b = np.asarray(binarize(feats))
    np.testing.assert_array_equal(np.sign(b), np.sign(feats))
    np.testing.assert_allclose(norms(b), norms(feats), rtol=1e-6)
    for i in range(3):  # one magnitude per image
        assert len(np.unique(np.abs(b[i][b[i] != 0]))) == 1


def test_dropout_zeroes_half_and_keeps_norm(feats):
    d = np.asarray(dropout(feats, jax.random.key(0)))
    np.testing.assert_allclose(norms(d), norms(feats), rtol=1e-6)
    dropped = (d == 0) & (feats != 0)
    kept = d != 0
    assert np.all(dropped.reshape(3, -1).sum(1) + kept.reshape(3, -1).sum(1) <= 96)
    # exactly half of the 96 positions are forced to zero
    assert np.all(
        (np.asarray(dropout(np.ones_like(feats), jax.random.key(1))) == 0).reshape(3, -1).sum(1)
        == 48
    )
    ratio = d[kept] / feats[kept]
    for i in range(3):
        r = (d[i] / np.where(feats[i] == 0, 1, feats[i]))[d[i] != 0]
        np.testing.assert_allclose(r, r[0], rtol=1e-5)  # one common scale
    assert ratio.min() > 1
    assert not np.array_equal(d, np.asarray(dropout(feats, jax.random.key(2))))


def test_drop_least_removes_least_active_units(feats):
    importance = unit_importance(feats[:2])
    assert importance.shape == (6,)
    d = np.asarray(drop_least(feats, importance))
    least = np.argsort(importance)[:3]
    assert np.all(d[..., least] == 0)
    np.testing.assert_allclose(norms(d), norms(feats), rtol=1e-6)
    with pytest.raises(InputError, match="one value per unit"):
        drop_least(feats, importance[:4])


def test_channel_group_and_factory(feats):
    g = np.asarray(channel_group(feats, 1, 3))
    assert np.all(g[..., :2] == 0) and np.all(g[..., 4:] == 0)
    np.testing.assert_array_equal(g[..., 2:4], feats[..., 2:4])
    assert make_perturbation(None) is None
    t = make_perturbation("dropout", key=jax.random.key(0))
    np.testing.assert_allclose(norms(t("conv", feats)), norms(feats), rtol=1e-6)
    with pytest.raises(InputError, match="binarize"):
        make_perturbation("shuffle")
    with pytest.raises(InputError, match="mean activations"):
        make_perturbation("drop-least")


def test_metrics():
    a = np.ones((2, 2, 2, 3), np.float32)
    b = a.copy()
    b[1] *= 0.5
    np.testing.assert_allclose(normalized_error(b, a), [0.0, 0.25])
    np.testing.assert_allclose(normalized_image_error(a * 2, a), [0.0, 0.0])  # clipped to 1
