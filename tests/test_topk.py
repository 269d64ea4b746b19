"""Streaming top-k: equality with a brute-force pass (tie order, padded last batch),
fully connected layers, receptive-field patches, errors, and sharded == unsharded."""

from __future__ import annotations

import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eight_devices import run_on_eight_devices
from jax import lax

from cnnvis_jax.deconv import crop_patches, field_boxes, project, project_top, top_activations
from cnnvis_jax.errors import InputError
from cnnvis_jax.features import extract_features
from cnnvis_jax.model import InputContract, from_function

DN = ("NHWC", "HWIO", "NHWC")


def tiny_apply(params, x):
    """conv 3x3 (4) -> ReLU -> max-pool 2x2/2 -> conv 3x3 (5) -> ReLU -> fc (6)."""
    c1 = lax.conv_general_dilated(x, params["w1"], (1, 1), "SAME", dimension_numbers=DN)
    a1 = jax.nn.relu(c1 + params["b1"])
    p1 = lax.reduce_window(a1, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    c2 = lax.conv_general_dilated(p1, params["w2"], (1, 1), "SAME", dimension_numbers=DN)
    a2 = jax.nn.relu(c2 + params["b2"])
    fc = a2.reshape(a2.shape[0], -1) @ params["w3"]
    return {"conv1": a1, "conv2": a2, "fc": fc}


def tiny_model():
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(0.5 * rng.standard_normal((3, 3, 3, 4)), jnp.float32),
        "b1": jnp.full((4,), 0.05),
        "w2": jnp.asarray(0.5 * rng.standard_normal((3, 3, 4, 5)), jnp.float32),
        "b2": jnp.full((5,), 0.05),
        "w3": jnp.asarray(0.1 * rng.standard_normal((8 * 8 * 5, 6)), jnp.float32),
    }
    return from_function(tiny_apply, params, input=InputContract(size=(16, 16)), name="tiny")


class ArraySource:
    """A random-access source over uint8 images (N, H, W, 3)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index], "target": -1}

    def batch(self, indices):
        indices = np.asarray(indices)
        return {"image": self.images[indices], "target": np.full(len(indices), -1, np.int32)}


def array_source(n: int = 21) -> ArraySource:
    """Random images with exact ties built in: image 9 repeats image 2; images 7, 12
    and 15 are black (constant maps: every position ties, and the images tie)."""
    images = np.random.default_rng(3).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    images[9] = images[2]
    images[[7, 12, 15]] = 0
    return ArraySource(images)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def source():
    return array_source()


def brute_force(model, source, layer, units, k):
    """Top-k from all features at once: per image max, first row-major argmax, then
    sorted by (larger value, smaller index, smaller position)."""
    feats = extract_features(model, source, [layer], batch_size=4, progress=False)[layer]
    n = feats.shape[0]
    values, index, position = [], [], []
    for unit in units:
        if feats.ndim == 4:
            maps = feats[..., unit].reshape(n, -1)
            best, where = maps.max(1), maps.argmax(1)
        else:
            best, where = feats[:, unit], np.zeros(n, int)
        order = np.lexsort((where, np.arange(n), -best))[:k]
        values.append(best[order])
        index.append(order)
        width = feats.shape[2] if feats.ndim == 4 else 1
        pos = np.stack([where[order] // width, where[order] % width], -1)
        position.append(pos if feats.ndim == 4 else np.full((k, 2), -1))
    return np.array(values), np.array(index), np.array(position)


@pytest.mark.parametrize(
    ("layer", "units", "k", "batch"),
    [("conv2", [0, 1, 2, 3, 4], 21, 4), ("conv1", [3, 1], 5, 4), ("conv2", [2], 4, 64)],
)
def test_top_k_equals_brute_force(tiny, source, layer, units, k, batch):
    top = top_activations(tiny, source, layer, units, k=k, batch_size=batch, progress=False)
    values, index, position = brute_force(tiny, source, layer, units, k)
    np.testing.assert_array_equal(top.image_index, index)
    np.testing.assert_array_equal(top.position, position)
    np.testing.assert_allclose(top.values, values, rtol=1e-6)
    assert top.layer == layer and top.units == tuple(units)
    for row in top.image_index:  # one entry per image: masked padding never repeats one
        assert len(set(row.tolist())) == k


def test_ties_are_ordered_by_index_then_position(tiny, source):
    top = top_activations(tiny, source, "conv1", [0], k=21, batch_size=4, progress=False)
    ranks = {int(i): r for r, i in enumerate(top.image_index[0])}
    assert top.values[0, ranks[2]] == top.values[0, ranks[9]] and ranks[2] < ranks[9]
    black = [ranks[7], ranks[12], ranks[15]]
    assert black == sorted(black) and black == list(range(black[0], black[0] + 3))
    for r in black:  # constant map: the first position wins
        assert tuple(top.position[0, r]) == (0, 0)


def test_tie_order_does_not_depend_on_stream_order(tiny, source):
    forward = top_activations(tiny, source, "conv1", [0, 2], k=21, batch_size=4, progress=False)
    backward = top_activations(
        tiny, source, "conv1", [0, 2], k=21, batch_size=4, indices=np.arange(21)[::-1],
        progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(backward.image_index, forward.image_index)
    np.testing.assert_array_equal(backward.position, forward.position)


def test_all_units_by_default_and_indices(tiny, source):
    top = top_activations(tiny, source, "conv2", k=2, batch_size=8, progress=False)
    assert top.units == (0, 1, 2, 3, 4) and top.values.shape == (5, 2)
    subset = [20, 3, 9, 11]
    top = top_activations(tiny, source, "conv2", [1], k=4, indices=subset, progress=False)
    assert sorted(top.image_index[0].tolist()) == sorted(subset)


def test_fully_connected_layer(tiny, source):
    top = top_activations(tiny, source, "fc", [0, 5], k=6, batch_size=4, progress=False)
    values, index, _ = brute_force(tiny, source, "fc", [0, 5], 6)
    np.testing.assert_array_equal(top.image_index, index)
    np.testing.assert_allclose(top.values, values, rtol=1e-6)
    assert (top.position == -1).all()
    patches = crop_patches(source, top, tiny)
    assert patches.images.shape == (2, 6, 16, 16, 3)
    assert (patches.boxes == [0, 0, 16, 16]).all()


def test_errors(tiny, source):
    small = ArraySource(source.images[:3])
    with pytest.raises(InputError, match="has 3 images, fewer than the 4 top images"):
        top_activations(tiny, small, "conv2", [0], k=4, progress=False)
    with pytest.raises(InputError, match="has 2 images, fewer than the 3"):
        top_activations(tiny, source, "conv2", [0], k=3, indices=[0, 1], progress=False)
    with pytest.raises(InputError, match="unit 7 is out of range"):
        top_activations(tiny, source, "conv2", [0, 7], k=3, progress=False)
    with pytest.raises(InputError, match="positive integer"):
        top_activations(tiny, source, "conv2", [0], k=0, progress=False)
    with pytest.raises(InputError, match="no layer"):
        top_activations(tiny, source, "conv3", [0], k=1, progress=False)


# --- patches and projections of the top images ----------------------------------------------


def test_crop_patches_are_the_receptive_field_windows(tiny, source):
    top = top_activations(tiny, source, "conv2", [0, 3], k=5, batch_size=8, progress=False)
    patches = crop_patches(source, top, tiny, fill=-1.0)
    rf = tiny.layer("conv2").receptive_field
    assert patches.images.shape == (2, 5, *rf.size, 3)
    for u in range(2):
        for j in range(5):
            r, c = top.position[u, j]
            assert tuple(patches.boxes[u, j]) == rf.box(r, c, (16, 16))
            top_, left, _, _ = rf.box(r, c)
            image = source.images[top.image_index[u, j]].astype(np.float32) / 255.0
            expected = np.full((*rf.size, 3), -1.0, np.float32)
            for y in range(rf.size[0]):
                for x in range(rf.size[1]):
                    if 0 <= top_ + y < 16 and 0 <= left + x < 16:
                        expected[y, x] = image[top_ + y, left + x]
            np.testing.assert_allclose(patches.images[u, j], expected, atol=1e-6)
    larger = crop_patches(source, top, tiny, image_size=(32, 32))
    assert larger.images.shape == (2, 5, 2 * rf.size[0], 2 * rf.size[1], 3)
    np.testing.assert_array_equal(larger.boxes, patches.boxes)
    clipped, full = field_boxes(tiny, "conv2", np.array([[0, 0], [7, 7]]))
    assert full.tolist() == [[-3, -3, 5, 5], [11, 11, 19, 19]]
    assert clipped.tolist() == [[0, 0, 5, 5], [11, 11, 16, 16]]


def test_project_top_recomputes_the_top_values(tiny, source):
    top = top_activations(tiny, source, "conv2", [1, 4], k=3, batch_size=8, progress=False)
    out = project_top(tiny, source, top, batch_size=4, progress=False)
    assert out.projections.shape == (2, 3, 16, 16, 3)
    np.testing.assert_allclose(out.values, top.values, rtol=1e-6)
    np.testing.assert_array_equal(out.positions, top.position)
    images = source.images[top.image_index[0]].astype(np.float32) / 255.0
    direct = project(tiny, tiny.params, images, "conv2", [1], positions=top.position[0])
    np.testing.assert_allclose(out.projections[0], direct.projections[0], rtol=1e-5, atol=1e-6)


# --- sharded == unsharded -----------------------------------------------------------------------

CHILD = """
import sys
import numpy as np
import jax
sys.path.insert(0, {tests!r})
from test_topk import array_source, tiny_model
from cnnvis_jax.deconv import project, project_top, top_activations

assert jax.device_count() == 8, jax.devices()
model, source = tiny_model(), array_source()
top = top_activations(model, source, "conv2", k=5, batch_size=3, progress=False)
images = source.images[:5].astype(np.float32) / 255.0
proj = project(model, model.params, images, "conv2", [0, 2, 4])
fc = project(model, model.params, images, "fc", [1, 3])
pt = project_top(model, source, top, batch_size=6, progress=False)
np.savez({out!r}, values=top.values, index=top.image_index, position=top.position,
         proj=proj.projections, proj_pos=proj.positions, proj_val=proj.values,
         fc=fc.projections, top_proj=pt.projections)
"""


def test_sharded_equals_unsharded(tiny, source, tmp_path):
    out = tmp_path / "sharded.npz"
    code = textwrap.dedent(CHILD).format(tests=str(Path(__file__).parent), out=str(out))
    run_on_eight_devices(code)
    sharded = np.load(out)
    assert jax.device_count() == 1
    top = top_activations(tiny, source, "conv2", k=5, batch_size=3, progress=False)
    np.testing.assert_array_equal(sharded["index"], top.image_index)
    np.testing.assert_array_equal(sharded["position"], top.position)
    np.testing.assert_allclose(sharded["values"], top.values, rtol=1e-6)
    images = source.images[:5].astype(np.float32) / 255.0
    proj = project(tiny, tiny.params, images, "conv2", [0, 2, 4])
    np.testing.assert_array_equal(sharded["proj_pos"], proj.positions)
    np.testing.assert_allclose(sharded["proj_val"], proj.values, rtol=1e-6)
    np.testing.assert_allclose(sharded["proj"], proj.projections, rtol=1e-5, atol=1e-6)
    fc = project(tiny, tiny.params, images, "fc", [1, 3])
    np.testing.assert_allclose(sharded["fc"], fc.projections, rtol=1e-5, atol=1e-6)
    pt = project_top(tiny, source, top, batch_size=6, progress=False)
    np.testing.assert_allclose(sharded["top_proj"], pt.projections, rtol=1e-5, atol=1e-6)
