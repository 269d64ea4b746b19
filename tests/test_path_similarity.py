"""Path similarity (Geirhos et al. 2023): rank correlation, curves, verdict, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from cnnvis_jax.errors import InputError
from cnnvis_jax.evaluate.path import (
    PathSimilarity,
    activation_patterns,
    default_layers,
    path_check,
    path_similarity,
    plot_path_similarity,
    ranks,
    spearman,
    spearman_matrix,
    top_images,
)
from cnnvis_jax.model import InputContract, from_function

SIZE = 16


def _tiny_model():
    """lin: a 1x1 linear map of the colour with zero-sum columns (pattern = W^T
    (mean colour - 0.5) for images of mean 0.5 +- d); conv: 3x3 ReLU conv on it;
    fc: a linear read-out of the averaged conv."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    w = jax.random.normal(k1, (3, 12))
    w = w - w.mean(axis=0, keepdims=True)  # columns sum to zero: W^T 1 = 0
    params = {
        "w": w,
        "k": jax.random.normal(k2, (3, 3, 12, 8)) * 0.3,
        "fc": jax.random.normal(k3, (8, 5)),
    }

    def fn(p, x):
        lin = jnp.einsum("nhwc,cd->nhwd", x, p["w"])
        conv = jax.nn.relu(
            jax.lax.conv_general_dilated(
                lin, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        )
        return {"lin": lin, "conv": conv, "fc": conv.mean(axis=(1, 2)) @ p["fc"]}

    contract = InputContract(size=(SIZE, SIZE), mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0))
    return from_function(fn, params, input=contract, name="tiny", layer_names=("lin", "conv", "fc"))


def _natural(n=48, seed=0):
    """Images of a few colour families with texture: mean colour 0.5 + d, d per family."""
    rng = np.random.default_rng(seed)
    families = rng.uniform(-0.3, 0.3, size=(4, 3))
    fam = np.arange(n) % 4
    base = 0.5 + families[fam] + rng.normal(0, 0.03, size=(n, 3))
    texture = rng.normal(0, 0.05, size=(n, SIZE, SIZE, 1))
    return np.clip(base[:, None, None, :] + texture, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    return _tiny_model()


def test_spearman_identical_and_reversed():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 20)), jnp.float32)
    np.testing.assert_allclose(np.asarray(spearman(x, x)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(spearman(x, -x)), -1.0, atol=1e-6)
    # a monotone transformation keeps the ranks
    np.testing.assert_allclose(np.asarray(spearman(x, jnp.exp(3 * x))), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.diag(np.asarray(spearman_matrix(x, x))), 1.0, atol=1e-6)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 5, size=(4, 15)).astype(np.float32)  # many ties
    b = rng.integers(0, 4, size=(3, 15)).astype(np.float32)
    got = np.asarray(spearman_matrix(jnp.asarray(a), jnp.asarray(b)))
    want = np.array([[stats.spearmanr(ai, bj).statistic for bj in b] for ai in a])
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ranks(jnp.asarray(a))), stats.rankdata(a, axis=-1))


def test_constant_pattern_correlates_zero():
    x = jnp.asarray([[1.0, 2.0, 3.0, 4.0]])
    assert float(spearman(jnp.zeros((1, 4)), x)[0]) == 0.0


def test_patterns_are_spatial_means(tiny):
    images = _natural(6)
    got = activation_patterns(tiny, images, ("conv", "fc"))
    acts = tiny(jnp.asarray(images), ("conv", "fc"))
    np.testing.assert_allclose(got["conv"], np.asarray(acts["conv"]).mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(got["fc"], np.asarray(acts["fc"]), rtol=1e-5)
    assert default_layers(tiny, "conv") == ("lin", "conv")
    assert default_layers(tiny, "fc") == ("lin", "conv", "fc")


def test_top_images_themselves_pass(tiny):
    natural = _natural()
    top, _, _ = top_images(tiny, "conv", 3, natural, 8)
    res = path_check(tiny, "conv", 3, top, natural, k=8, n_random=24, key=0)
    assert isinstance(res, PathSimilarity)
    assert res.layers == ("lin", "conv")
    assert res.passed and res.failing_layers == ()
    assert np.all(res.s_top > res.s_random)
    # visualizations == top images: the mean includes the K self pairs (1 each)
    k = 8
    np.testing.assert_allclose(res.s_vis, 1 / k + (1 - 1 / k) * res.s_top, atol=1e-5)
    summary = res.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["passed"] is True and len(summary["layers"]) == 2


def test_reversed_pattern_fails(tiny):
    natural = _natural()
    top, _, _ = top_images(tiny, "conv", 3, natural, 8)
    random = natural[np.arange(1, 48, 2)]
    # 1 - x reverses the colour offset d, so the `lin` pattern W^T d becomes -W^T d
    res = path_similarity(tiny, "conv", 3, 1.0 - top, top, random)
    assert not res.passed
    assert "lin" in res.failing_layers
    assert res.s_vis[0] < -0.5 < res.s_random[0]
    assert res.margin[0] < 0


def test_plot_writes_png(tiny, tmp_path):
    natural = _natural()
    top, _, _ = top_images(tiny, "conv", 3, natural, 8)
    res = path_similarity(tiny, "conv", 3, top[:2], top, natural[-16:])
    bad = path_similarity(tiny, "conv", 3, 1.0 - top, top, natural[-16:])
    out = plot_path_similarity([res, bad], tmp_path / "curves.png", titles=["ok", "bad"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "curves.png.partial").exists()


def test_top_images_order(tiny):
    natural = _natural()
    top, index, values = top_images(tiny, "conv", 2, natural, 5, batch_size=7)
    means = activation_patterns(tiny, natural, "conv")["conv"][:, 2]
    np.testing.assert_array_equal(index, np.argsort(-means, kind="stable")[:5])
    np.testing.assert_allclose(values, means[index], rtol=1e-5)
    np.testing.assert_array_equal(top, natural[index])


def test_standardized_patterns_equal_manual_z_scores(tiny):
    natural = _natural()
    top, _, _ = top_images(tiny, "conv", 3, natural, 8)
    vis, random = 1.0 - top[:3], natural[np.arange(1, 48, 2)]
    res = path_similarity(tiny, "conv", 3, vis, top, random, patterns="standardized")
    assert res.patterns == "standardized" and res.summary()["patterns"] == "standardized"
    for i, layer in enumerate(("lin", "conv")):
        pv, pt, pr = (activation_patterns(tiny, x, layer)[layer] for x in (vis, top, random))
        mean, std = pr.mean(0), pr.std(0)
        z = [np.where(std > 0, (p - mean) / np.where(std > 0, std, 1), 0) for p in (pv, pt, pr)]
        rho = lambda a, b: np.mean([[stats.spearmanr(x, y)[0] for y in b] for x in a])  # noqa: E731
        np.testing.assert_allclose(res.s_vis[i], rho(z[0], z[1]), atol=2e-5)
        np.testing.assert_allclose(res.s_random[i], rho(z[2], z[1]), atol=2e-5)
    raw = path_similarity(tiny, "conv", 3, vis, top, random)
    assert raw.patterns == "raw" and not np.allclose(raw.s_random, res.s_random)


def test_tolerance_moves_the_verdict_by_the_margin(tiny):
    natural = _natural()
    top, _, _ = top_images(tiny, "conv", 3, natural, 8)
    random = natural[np.arange(1, 48, 2)]
    strict = path_similarity(tiny, "conv", 3, 1.0 - top, top, random)
    assert not strict.passed
    worst = float(-np.min(strict.margin))
    below = path_similarity(tiny, "conv", 3, 1.0 - top, top, random, tolerance=worst * 0.99)
    above = path_similarity(tiny, "conv", 3, 1.0 - top, top, random, tolerance=worst * 1.01)
    assert not below.passed and above.passed and above.failing_layers == ()
    np.testing.assert_array_equal(above.s_vis, strict.s_vis)
    assert above.summary()["rule"] == f"s_vis >= s_random - {worst * 1.01:g} at every layer"


@pytest.mark.parametrize(
    "call, words",
    [
        (
            lambda m, x: path_similarity(m, "conv", 8, x[:1], x[:4], x[4:8]),
            "unit 8 is out of range",
        ),
        (lambda m, x: path_similarity(m, "conv9", 0, x[:1], x[:4], x[4:8]), "no layer 'conv9'"),
        (lambda m, x: path_similarity(m, "conv", 0, x[:1], x[:1], x[4:8]), "at least 2 top"),
        (lambda m, x: path_similarity(m, "conv", 0, x[:1, :8], x[:4], x[4:8]), "visualizations"),
        (
            lambda m, x: path_similarity(m, "conv", 0, x[:1], x[:4], x[4:8], layers=("fc",)),
            "comes after",
        ),  # fmt: skip
        (lambda m, x: top_images(m, "conv", 0, x[:3], 5), "at least k=5 natural images"),
        (lambda m, x: path_check(m, "conv", 0, x[:1], x[:10], k=4, n_random=8), "k + n_random"),
        (
            lambda m, x: path_similarity(m, "conv", 0, x[:1], x[:4], x[4:8], patterns="z"),
            "patterns must be one of",
        ),
        (
            lambda m, x: path_similarity(
                m, "conv", 0, x[:1], x[:4], x[4:5], patterns="standardized"
            ),
            "at least 2 random images",
        ),
        (
            lambda m, x: path_similarity(m, "conv", 0, x[:1], x[:4], x[4:8], tolerance=-0.1),
            "tolerance must be a finite number",
        ),
    ],
)
def test_bad_input_raises_one_line(tiny, call, words):
    with pytest.raises(InputError) as info:
        call(tiny, _natural(12))
    message = str(info.value)
    assert words in message and "\n" not in message
