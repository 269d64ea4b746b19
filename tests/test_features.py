"""Streaming feature extraction: equals a direct forward, pads and masks, compiles once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnvis_jax.errors import InputError
from cnnvis_jax.features import extract_features, iterate_batches, make_forward
from cnnvis_jax.model import InputContract, from_function


class ArraySource:
    """A minimal random-access source over an in-memory uint8 array."""

    vocabulary = None
    class_names = ()

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "pixel": {}, "scalar": {}, "target": -1, "index": i}


def conv_model(size=12):
    w = jax.random.normal(jax.random.key(0), (3, 3, 3, 4))

    def fn(params, x):
        dn = ("NHWC", "HWIO", "NHWC")
        y = jax.lax.conv_general_dilated(x, params, (1, 1), "SAME", dimension_numbers=dn)
        return {"conv": jax.nn.relu(y), "pooled": y.max(axis=(1, 2))}

    return from_function(fn, w, input=InputContract(size=(size, size)))


@pytest.fixture
def source():
    rng = np.random.default_rng(0)
    return ArraySource(rng.integers(0, 256, (11, 12, 12, 3), dtype=np.uint8))


def test_extract_equals_direct_forward_with_padded_last_batch(source):
    model = conv_model()
    feats = extract_features(model, source, ["conv", "pooled"], batch_size=4, progress=False)
    direct = model(jnp.asarray(source.images, jnp.float32) / 255.0, ["conv", "pooled"])
    assert feats["conv"].shape == (11, 12, 12, 4)
    np.testing.assert_allclose(feats["conv"], direct["conv"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats["pooled"], direct["pooled"], rtol=1e-5, atol=1e-6)


def test_subset_indices_keep_their_order(source):
    model = conv_model()
    idx = [7, 2, 9]
    feats = extract_features(model, source, ["pooled"], batch_size=2, indices=idx, progress=False)
    full = extract_features(model, source, ["pooled"], batch_size=5, progress=False)
    np.testing.assert_allclose(feats["pooled"], full["pooled"][idx], rtol=1e-6)


def test_batches_have_fixed_shape_and_mask(source):
    batches = list(iterate_batches(source, 4))
    assert [b[2]["image"].shape for b in batches] == [(4, 12, 12, 3)] * 3
    assert batches[-1][1].tolist() == [True, True, True, False]
    assert batches[-1][0].tolist() == [8, 9, 10, 10]


def test_forward_compiles_once(source):
    model = conv_model()
    forward = make_forward(model, ["conv"])
    for _, _, batch in iterate_batches(source, 4):
        forward(model.params, batch["image"])
    assert forward._cache_size() == 1


def test_resizes_sources_of_another_size():
    model = conv_model(size=12)
    small = ArraySource(np.full((3, 6, 6, 3), 200, np.uint8))
    feats = extract_features(model, small, ["conv"], batch_size=2, progress=False)
    expected = model(jnp.full((3, 12, 12, 3), 200 / 255.0), ["conv"])["conv"]
    np.testing.assert_allclose(feats["conv"], expected, rtol=1e-5, atol=1e-5)


def test_empty_and_bad_arguments(source):
    model = conv_model()
    with pytest.raises(InputError, match="empty"):
        extract_features(model, ArraySource(np.zeros((0, 12, 12, 3), np.uint8)), ["conv"])
    with pytest.raises(InputError, match="batch_size"):
        list(iterate_batches(source, 0))
    with pytest.raises(InputError, match="no layer 'fc9'"):
        extract_features(model, source, ["fc9"])
