"""Dissection passes: the fused tally equals a slow per-image NetDissect-Lite loop
(exactly, both contractions, both denominators, image-level labels, label 0), pass-1
thresholds equal numpy's order statistics, upsampling matches PIL, several layers in
one pass equal separate passes, and 8 sharded devices equal one."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eight_devices import run_on_eight_devices
from jax import lax
from PIL import Image

from cnnvis_jax.data.types import Label, Vocabulary
from cnnvis_jax.dissection import (
    ArrayConceptSource,
    compute_tally,
    compute_thresholds,
    dissect,
    label_layout,
    layer_matrices,
    lite_quantile,
    upsample,
)
from cnnvis_jax.features import extract_features
from cnnvis_jax.model import InputContract, from_function

DN = ("NHWC", "HWIO", "NHWC")


def tiny_apply(params, x):
    """conv 3x3/2 (4, tanh) -> conv 3x3/2 (5, tanh): 16 px -> 8x8x4 -> 4x4x5."""
    c1 = lax.conv_general_dilated(x, params["w1"], (2, 2), "SAME", dimension_numbers=DN)
    a1 = jnp.tanh(c1 + params["b1"])
    c2 = lax.conv_general_dilated(a1, params["w2"], (2, 2), "SAME", dimension_numbers=DN)
    a2 = jnp.tanh(c2 + params["b2"])
    return {"conv1": a1, "conv2": a2, "fc": a2.reshape(a2.shape[0], -1)[:, :3]}


def tiny_model():
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32),
        "b1": jnp.asarray(0.1 * rng.standard_normal(4), jnp.float32),
        "w2": jnp.asarray(0.5 * rng.standard_normal((3, 3, 4, 5)), jnp.float32),
        "b2": jnp.asarray(0.1 * rng.standard_normal(5), jnp.float32),
    }
    return from_function(tiny_apply, params, input=InputContract(size=(16, 16)), name="tiny")


def vocabulary():
    spec = [
        (1, "red-c", ("color",)),
        (2, "green-c", ("color",)),
        (3, "blue-c", ("color",)),
        (4, "car", ("object",)),
        (5, "wheel", ("part", "object")),  # primary category: part
        (6, "tree", ("object",)),
        (7, "door", ("part",)),
        (8, "window", ("part",)),
        (10, "street-s", ("scene",)),
        (11, "field-s", ("scene",)),
        (12, "striped", ("texture",)),
        (13, "dotted", ("texture",)),
    ]
    labels = tuple(Label(n, name, cats) for n, name, cats in spec)
    return Vocabulary(categories=("object", "scene", "part", "texture", "color"), labels=labels)


def make_source(n=37, seed=1, seg=12):
    """Random images with blocky labels: object (1 layer), part (2 layers), color
    (1 layer) at seg x seg; scene (1 slot) and texture (2 slots, with zeros) image-level."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    k = 3 if seg % 3 == 0 else 2
    blocks = lambda choices, layers: np.repeat(  # noqa: E731
        np.repeat(rng.choice(choices, (n, layers, seg // k, seg // k)), k, axis=2), k, axis=3
    )
    pixel = {
        "object": blocks([0, 4, 5, 6], 1),
        "part": blocks([0, 0, 5, 7, 8], 2),
        "color": blocks([1, 2, 3], 1),
    }
    scalar = {
        "scene": rng.choice([10, 11], (n, 1)),
        "texture": rng.choice([-1, 0, 12, 13], (n, 2)),
    }
    return ArrayConceptSource(images, pixel, scalar, vocabulary())


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def source():
    return make_source()


Q = 0.05
BATCH = 8


@pytest.fixture(scope="module")
def thresholds(tiny, source):
    return compute_thresholds(
        tiny, source, ("conv1", "conv2"), quantile=Q, batch_size=BATCH, progress=False
    )


_REFERENCES = {}


def cached_reference(model, source, layer, values, zero_scalar):
    key = (layer, zero_scalar)
    if key not in _REFERENCES:
        _REFERENCES[key] = reference_tally(model, source, layer, values, zero_scalar)
    return _REFERENCES[key]


def reference_tally(model, source, layer, thresholds, zero_scalar=False):
    """NetDissect-Lite's tally_job, image by image and unit by unit, with PIL."""
    vocab = source.vocabulary
    cats = ("object", "scene", "part", "texture", "color")
    num = vocab.num_labels
    labelcat = np.zeros((num, len(cats)))
    for lab in vocab.labels:
        labelcat[lab.number, cats.index(lab.categories[0])] = 1
    labelcat[0, cats.index(label_layout(source).categories[-1])] = 1
    acts = extract_features(model, source, [layer], progress=False)[layer]
    units = acts.shape[-1]
    out = {
        "both": np.zeros((units, num), np.int64),
        "units": np.zeros(units, np.int64),
        "units_cat_lite": np.zeros((units, len(cats)), np.int64),
        "units_cat_original": np.zeros((units, len(cats)), np.int64),
        "labels": np.zeros(num, np.int64),
    }
    for n in range(len(source)):
        sample = source[n]
        pixels = np.concatenate([sample["pixel"][c] for c in ("object", "part", "color")])
        sh, sw = pixels.shape[1:]
        scalars = [v for c in cats for v in sample["scalar"].get(c, ()) if v != 0 or zero_scalar]
        for s in scalars:
            out["labels"][s] += sh * sw
        tl = np.bincount(pixels.ravel(), minlength=num)
        tl[0] = 0
        out["labels"] += tl
        present = tl @ labelcat + sum((labelcat[s] for s in scalars), np.zeros(len(cats)))
        for u in range(units):
            fm = np.ascontiguousarray(acts[n, :, :, u])
            if fm.max() <= thresholds[u]:
                continue
            mask = np.array(Image.fromarray(fm).resize((sw, sh), resample=Image.BILINEAR))
            idx = np.argwhere(mask > thresholds[u])
            out["units"][u] += len(idx)
            bt = np.bincount(pixels[:, idx[:, 0], idx[:, 1]].ravel(), minlength=num)
            bt[0] = 0
            tally_cat = bt @ labelcat
            out["both"][u] += bt
            for s in scalars:
                tally_cat = tally_cat + labelcat[s]
                out["both"][u, s] += len(idx)
            out["units_cat_lite"][u] += len(idx) * (tally_cat > 0)
            out["units_cat_original"][u] += len(idx) * (present > 0)
    return out


@pytest.mark.parametrize(
    "engine, contraction", [("sparse", "auto"), ("dense", "segment"), ("dense", "einsum")]
)
@pytest.mark.parametrize("zero_scalar", [False, True])
def test_fused_tally_equals_per_image_reference(
    tiny, source, thresholds, engine, contraction, zero_scalar
):
    layers = ("conv1", "conv2")
    thr = thresholds
    layout = label_layout(source, zero_scalar=zero_scalar)
    assert layout.seg_size == (12, 12) and layout.layers == 4 and layout.slots == 3
    counts = compute_tally(
        tiny, source, layout, thr, batch_size=BATCH, contraction=contraction, engine=engine,
        progress=False,
    )  # fmt: skip
    for layer in layers:
        ref = cached_reference(tiny, source, layer, thr[layer].values, zero_scalar)
        got = counts[layer]
        assert got.images == len(source)
        assert ref["units"].sum() > 0 and ref["both"].sum() > 0
        for key in ("both", "units", "units_cat_lite", "units_cat_original", "labels"):
            np.testing.assert_array_equal(getattr(got, key), ref[key], err_msg=f"{layer} {key}")


@pytest.mark.parametrize("engine", ["sparse", "dense"])
def test_thresholds_are_order_statistics(tiny, source, thresholds, engine):
    q = Q
    acts = extract_features(tiny, source, ["conv1", "conv2"], progress=False)
    exact = compute_thresholds(
        tiny, source, ["conv1", "conv2"], quantile=q, batch_size=BATCH, engine=engine,
        progress=False,
    )  # fmt: skip
    for layer in ("conv1", "conv2"):
        np.testing.assert_array_equal(exact[layer].values, thresholds[layer].values)
    lite = compute_thresholds(
        tiny,
        source,
        ["conv1", "conv2"],
        quantile=q,
        batch_size=BATCH,
        readout="lite",
        engine=engine,
        progress=False,
    )
    for layer, a in acts.items():
        values = a.reshape(-1, a.shape[-1])
        m = len(values)
        k = int(np.ceil(q * m))
        for u in range(values.shape[1]):
            asc = np.sort(values[:, u])
            t = exact[layer].values[u]
            assert t == asc[m - k]  # the k-th largest
            rank = np.searchsorted(asc, t)
            assert abs(rank - (1 - q) * (m - 1)) <= 1.0  # numpy's quantile position
            lo, hi = np.quantile(asc, 1 - q), t
            assert asc[max(rank - 1, 0)] <= lo <= asc[min(rank + 1, m - 1)] and hi == t
        assert exact[layer].total == m
        np.testing.assert_array_equal(exact[layer].minimum, values.min(0))
        np.testing.assert_array_equal(exact[layer].maximum, values.max(0))
        # top images by per-image maximum (ties: smaller index)
        peaks = a.max(axis=(1, 2))
        for u in range(values.shape[1]):
            order = np.lexsort((np.arange(len(peaks)), -peaks[:, u]))[:8]
            np.testing.assert_array_equal(exact[layer].top_images[u], order)
    # NetDissect-Lite's table: ascending rank j at float32 j / (M - 1/2), numpy.interp
    flat = np.sort(acts["conv2"].reshape(-1, 5).astype(np.float64), axis=0)
    m = len(flat)
    pos = (np.arange(m, dtype=np.float32) / np.float32(m - 0.5)).astype(np.float64)
    want = [np.interp(lite_quantile(q), pos, flat[:, u]) for u in range(5)]
    np.testing.assert_allclose(lite["conv2"].values, want, rtol=1e-12, atol=1e-12)
    assert lite_quantile(0.005) == pytest.approx(0.994995, abs=1e-6)


def test_upsampling_matches_pil():
    rng = np.random.default_rng(3)
    for (h, w), (sh, sw) in [((8, 8), (64, 64)), ((7, 5), (113, 112)), ((16, 16), (10, 12))]:
        maps = (3 * rng.standard_normal((2, h, w, 3))).astype(np.float32)
        rows, cols = layer_matrices((h, w), (sh, sw))
        up = np.asarray(upsample(jnp.asarray(maps), rows, cols))
        for b in range(2):
            for u in range(3):
                ref = np.asarray(Image.fromarray(maps[b, :, :, u]).resize((sw, sh), Image.BILINEAR))
                np.testing.assert_allclose(up[b, :, :, u], ref, atol=1e-5, rtol=0)


def test_several_layers_equal_separate_passes(tiny, source, thresholds):
    """conv1 alone, with another batch size, equals conv1 of the two-layer pass."""
    layout = label_layout(source)
    both = compute_tally(tiny, source, layout, thresholds, batch_size=BATCH, progress=False)
    alone_thr = compute_thresholds(
        tiny, source, ["conv1"], quantile=Q, batch_size=3, progress=False
    )
    np.testing.assert_array_equal(alone_thr["conv1"].values, thresholds["conv1"].values)
    np.testing.assert_array_equal(alone_thr["conv1"].top_images, thresholds["conv1"].top_images)
    alone = compute_tally(tiny, source, layout, alone_thr, batch_size=3, progress=False)
    for key in ("both", "units", "units_cat_lite", "units_cat_original", "labels"):
        np.testing.assert_array_equal(getattr(alone["conv1"], key), getattr(both["conv1"], key))


COUNTS = ("both", "units", "units_cat_lite", "units_cat_original", "labels")


def dissected_arrays() -> dict[str, np.ndarray]:
    """Thresholds, top images and counts of ``conv1,conv2`` of the tiny model on
    :func:`make_source` with both engines, flat (``<engine><layer>/<field>``): what a
    child process run on other devices or processes saves for the parent to compare."""
    arrays = {}
    for engine in ("dense", "sparse"):
        d = dissect(tiny_model(), make_source(), "conv1,conv2", quantile=Q, batch_size=BATCH,
                    engine=engine, progress=False)  # fmt: skip
        for name, r in d.layers.items():
            arrays[engine + name + "/thr"] = r.thresholds.values
            arrays[engine + name + "/top"] = r.thresholds.top_images
            for key in COUNTS:
                arrays[engine + name + "/" + key] = getattr(r.counts, key)
    return arrays


def assert_equals_one_device(arrays, d) -> None:
    """:func:`dissected_arrays` from elsewhere equal the dissection ``d`` bit for bit."""
    for engine in ("dense", "sparse"):  # counts psummed over the mesh / gathered to the host
        for name, r in d.layers.items():
            key = engine + name + "/"
            np.testing.assert_array_equal(arrays[key + "thr"], r.thresholds.values)
            np.testing.assert_array_equal(arrays[key + "top"], r.thresholds.top_images)
            for field in COUNTS:
                np.testing.assert_array_equal(arrays[key + field], getattr(r.counts, field))


CHILD = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
import jax
assert jax.device_count() == 8, jax.devices()
from test_dissection_tally import dissected_arrays
np.savez({out!r}, **dissected_arrays())
"""


def test_sharded_equals_single_device(tiny, source, tmp_path):
    out = tmp_path / "sharded.npz"
    code = textwrap.dedent(CHILD).format(tests=str(Path(__file__).parent), out=str(out))
    run_on_eight_devices(code)
    assert jax.device_count() == 1
    d = dissect(tiny, source, "conv1,conv2", quantile=Q, batch_size=BATCH, progress=False)
    assert_equals_one_device(np.load(out), d)
    json.dumps(d.summary())
