"""Net2Vec: on a planted concept (red or green squares, seen by two different units)
the loss decreases and the combination beats the best single unit; the weighted
loss matches its formula; the classification variant and the files."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnvis_jax.data.types import Label, Vocabulary
from cnnvis_jax.dissection import ArrayConceptSource
from cnnvis_jax.dissection.net2vec import average_precision, net2vec, seg_loss
from cnnvis_jax.dissection.upsample import layer_matrices
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import InputContract, from_function


def colour_apply(params, x):
    """2x2 average pool of [red-ness, green-ness, blue, brightness]: 16 px -> 8x8x4."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maps = jnp.stack([r - (g + b) / 2, g - (r + b) / 2, b, (r + g + b) / 3], -1) * params["s"]
    n, h, w, c = maps.shape
    return {
        "conv1": maps.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4)),
        "fc": maps[:, 0, 0],
    }


def colour_model():
    return from_function(colour_apply, {"s": jnp.float32(1.0)}, input=InputContract(size=(16, 16)),
                         name="colour")  # fmt: skip


def planted(n, seed):
    """Noise images; 3/4 of them get a red and a green 4x4 square (label 1 'rg' covers
    both) at even positions, with varying intensity."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, 16, 16, 3)).astype(np.uint8)
    masks = np.zeros((n, 1, 16, 16), np.int32)
    for i in range(n):
        if i % 4 == 3:
            continue
        spots = rng.choice(16, size=2, replace=False)
        for channel, spot in zip((0, 1), spots):
            y, x = 4 * (spot // 4), 4 * (spot % 4)
            images[i, y : y + 4, x : x + 4] = 20
            images[i, y : y + 4, x : x + 4, channel] = rng.integers(150, 256)
            masks[i, 0, y : y + 4, x : x + 4] = 1
    vocab = Vocabulary(("object",), (Label(1, "rg", ("object",)),))
    return ArrayConceptSource(images, {"object": masks}, {}, vocab)


def test_planted_concept_combination_beats_single_unit(tmp_path):
    model = colour_model()
    res = net2vec(model, planted(64, 0), planted(32, 1), "conv1", quantile=0.05, epochs=15,
                  learning_rate=0.01, min_images=3, progress=False)  # fmt: skip
    assert res.names == ("rg",)
    assert res.weights.shape == (4, 1) and res.bias.shape == (1,)
    assert res.loss[-1] < res.loss[0]
    assert res.single_unit[0] in (0, 1)  # the red or the green unit
    assert res.set_iou[0] >= res.single_iou[0]
    assert res.set_iou[0] > 0.6 and res.single_iou[0] < 0.55
    # both colour units get positive weight
    assert res.weights[0, 0] > 0 and res.weights[1, 0] > 0
    # alpha = 1 - mean concept fraction over images containing it (32 of 256 pixels)
    assert res.alpha[0] == pytest.approx(1 - 32 / 256)
    # classification: presence of rg is predicted at least as well as by one unit
    assert list(res.cls_names) == ["rg"]
    assert res.cls_ap[0] >= res.cls_single_ap[0] - 1e-9 and res.cls_loss[-1] < res.cls_loss[0]
    assert res.save(tmp_path) == tmp_path
    record = json.loads((tmp_path / "net2vec.json").read_text())
    assert (tmp_path / "net2vec.csv").read_text().startswith("concept,label,alpha,single_unit")
    assert json.loads((tmp_path / "net2vec.json").read_text())["summary"]["concepts"] == 1
    assert record["segmentation"][0]["concept"] == "rg"
    assert (tmp_path / "net2vec.png").is_file() and (tmp_path / "index.html").is_file()


def test_loss_matches_formula():
    rng = np.random.default_rng(0)
    bits = jnp.asarray(rng.random((3, 4, 4, 5)) > 0.7)
    pix = jnp.asarray(rng.choice([0, 2, 3], (3, 1, 64)).astype(np.int32))
    pix = pix.at[2].set(0)  # image 2 contains no concept: it does not count
    concepts = jnp.asarray([2, 3], jnp.int32)
    alpha = jnp.asarray([0.8, 0.6], jnp.float32)
    params = (jnp.asarray(rng.standard_normal((5, 2)), jnp.float32), jnp.asarray([0.1, -0.2]))
    rows, cols = layer_matrices((4, 4), (8, 8))
    got = float(seg_loss(params, bits, pix, concepts, alpha, rows, cols))
    want = 0.0
    b = np.asarray(bits, np.float64)
    w, bias = np.asarray(params[0], np.float64), np.asarray(params[1], np.float64)
    rr, cc = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
    for ci, c in enumerate([2, 3]):
        total, count = 0.0, 0
        for n in range(3):
            m = (np.asarray(pix[n, 0]) == c).astype(np.float64)
            if m.sum() == 0:
                continue
            z = rr @ (b[n] @ w[:, ci]) @ cc.T + bias[ci]
            p = (1 / (1 + np.exp(-z))).reshape(-1)
            a = float(alpha[ci])
            total += -np.sum(a * m * p + (1 - a) * (1 - m) * (1 - p))
            count += 1
        want += total / count
    assert got == pytest.approx(want, rel=1e-5)
    grads = jax.grad(seg_loss)(params, bits, pix, concepts, alpha, rows, cols)
    assert np.all(np.isfinite(np.asarray(grads[0])))


def test_average_precision():
    scores = np.array([[0.9], [0.8], [0.3], [0.1]])
    target = np.array([[True], [False], [True], [False]])
    assert average_precision(scores, target)[0] == pytest.approx((1 + 2 / 3) / 2)


def test_bad_inputs():
    model = colour_model()
    with pytest.raises(InputError, match="no spatial map"):
        net2vec(model, planted(32, 0), planted(16, 1), "fc", progress=False)
    with pytest.raises(InputError, match="epochs"):
        net2vec(model, planted(32, 0), planted(16, 1), "conv1", epochs=0, progress=False)
    with pytest.raises(InputError, match="min_images"):
        net2vec(model, planted(32, 0), planted(16, 1), "conv1", min_images=1000, quantile=0.05,
                epochs=1, progress=False)  # fmt: skip
