"""The sparse engine's pieces: the host top-K equals a full sort across many merges
(ties, a NaN, padded images), the cell upsampling is PIL's bilinear bit for bit,
and layers that downsample fall back to the dense tally, which shrinks maps with PIL's
bilinear filter as NetDissect-Lite does."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_dissection_tally import BATCH, Q, make_source, reference_tally, tiny_model

from cnnvis_jax.dissection import compute_tally, compute_thresholds, label_layout
from cnnvis_jax.dissection import thresholds as th
from cnnvis_jax.dissection.sparse_tally import axis_cells, sparse_applies, upsampled_cells
from cnnvis_jax.dissection.sparse_thresholds import HostTopK


def test_host_top_k_is_exact_across_merges():
    rng = np.random.default_rng(4)
    units, batches, per = 3, 40, 50
    values = np.round(rng.standard_normal((batches, per, units)), 1).astype(np.float32)  # ties
    values[7, 3, 1] = np.inf
    spec = th.PassOneSpec(units=units, kept=37, buffer=0, top_images=4)
    state = HostTopK(spec)
    state.budget = 20  # merge often
    for b in range(batches):
        a = values[b]
        out = {
            "acts": a,
            "above": a > state.kth,
            "lo": a.reshape(5, 10, units).min(1),  # per image
            "peak": a.reshape(5, 10, units).max(1),
        }
        state.absorb(out, np.arange(5, dtype=np.int32) + 5 * b)
    merged = state.merged()
    flat = values.reshape(-1, units)
    want = -np.sort(-flat, axis=0)[: spec.kept].T
    np.testing.assert_array_equal(merged["top"][0], want)
    np.testing.assert_array_equal(merged["hi"][0], flat.max(0))
    np.testing.assert_array_equal(merged["lo"][0], flat.min(0))
    peaks = values.reshape(batches * 5, 10, units).max(1)
    for u in range(units):
        order = np.lexsort((np.arange(len(peaks)), -peaks[:, u]))[:4]
        np.testing.assert_array_equal(merged["img_i"][0, u], order)


@pytest.mark.parametrize("hw, seg", [((8, 8), (64, 64)), ((7, 5), (113, 112)), ((4, 6), (12, 12))])
def test_cell_upsampling_is_pil_bit_for_bit(hw, seg):
    rng = np.random.default_rng(3)
    acts = (3 * rng.standard_normal((2, *hw, 3))).astype(np.float32)
    rows, cols = axis_cells(hw[0], seg[0]), axis_cells(hw[1], seg[1])
    n, i, j, u = np.unravel_index(np.arange(acts.size), acts.shape)
    up, y, x, inside = upsampled_cells(acts, n, i, j, u, rows, cols)
    full = np.full((2, *seg, 3), np.nan, np.float32)
    k, ry, rx = np.nonzero(inside)
    full[n[k], y[k, ry], x[k, rx], u[k]] = up[k, ry, rx]
    assert not np.isnan(full).any()  # every output pixel belongs to exactly one cell
    assert inside.sum() == 2 * seg[0] * seg[1] * 3
    for b in range(2):
        for c in range(3):
            pil = Image.fromarray(acts[b, :, :, c]).resize(seg[::-1], Image.BILINEAR)
            np.testing.assert_array_equal(full[b, :, :, c], np.asarray(pil))


def test_downsampling_layers_use_the_dense_tally():
    assert axis_cells(16, 8) is None and axis_cells(8, 12) is not None
    tiny, source = tiny_model(), make_source(n=12, seg=6)  # conv1 8x8 -> 6x6 shrinks
    assert not sparse_applies(tiny, ("conv1",), (6, 6))
    assert sparse_applies(tiny, ("conv2",), (6, 6))
    thr = compute_thresholds(tiny, source, ["conv1", "conv2"], quantile=Q, progress=False)
    layout = label_layout(source)
    sparse = compute_tally(tiny, source, layout, thr, batch_size=BATCH, engine="sparse",
                           progress=False)  # fmt: skip
    dense = compute_tally(tiny, source, layout, thr, batch_size=BATCH, engine="dense",
                          progress=False)  # fmt: skip
    for name in ("conv1", "conv2"):
        for key in ("both", "units", "units_cat_lite", "units_cat_original", "labels"):
            np.testing.assert_array_equal(getattr(sparse[name], key), getattr(dense[name], key))
    ref = reference_tally(tiny, source, "conv1", thr["conv1"].values)  # PIL, image by image
    assert ref["units"].sum() > 0
    for key in ("both", "units", "units_cat_lite", "units_cat_original", "labels"):
        np.testing.assert_array_equal(getattr(sparse["conv1"], key), ref[key], err_msg=key)
