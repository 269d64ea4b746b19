"""The visualization scores on constructed cases with known answers: the top natural
images score 1 and random images 0 on plausibility, the top images' activation ratio
averages 1, identical visualizations have diversity 0, transferability is the softmax
of known logits; bad input is one clear error."""

import jax.numpy as jnp
import numpy as np
import pytest

from cnnvis_jax.data import open_dataset
from cnnvis_jax.errors import InputError
from cnnvis_jax.evaluate import scores
from cnnvis_jax.model import InputContract, from_function


@pytest.fixture(scope="module")
def refs(trained_conceptnet):
    source = open_dataset("concepts", split="val", count=96)
    return scores.natural_references(trained_conceptnet, source, "conv4", [0, 3, 5], k=6,
                                     n_random=20, seed=1)  # fmt: skip


def test_references_are_the_exact_top_images(trained_conceptnet, refs):
    assert refs.top_images.shape == (3, 6, 64, 64, 3) and refs.random_images.shape[0] == 20
    maxima = scores.unit_maxima(trained_conceptnet, "conv4", refs.units, refs.top_images[0])
    np.testing.assert_allclose(maxima[:, 0], refs.top_values[0], rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(refs.top_values, axis=1) <= 0)


def test_top_images_score_one_and_random_images_zero(trained_conceptnet, refs):
    ratio = scores.activation_ratio(trained_conceptnet, refs.top_images, refs)
    np.testing.assert_allclose(ratio.mean(1), 1.0, rtol=1e-5)
    plaus_top = scores.plausibility(trained_conceptnet, refs.top_images, refs)
    np.testing.assert_allclose(plaus_top.mean(1), 1.0, rtol=1e-4)
    rand = np.broadcast_to(refs.random_images, (3, *refs.random_images.shape))
    plaus_rand = scores.plausibility(trained_conceptnet, rand, refs)
    np.testing.assert_allclose(plaus_rand.mean(1), 0.0, atol=1e-4)
    # a flat grey picture is neither: its ratio is below the top images'
    grey = np.full((3, 1, 64, 64, 3), 0.5, np.float32)
    assert np.all(scores.activation_ratio(trained_conceptnet, grey, refs) < 1.0)


def test_diversity_of_identical_and_of_different_pictures(trained_conceptnet, refs):
    same = np.broadcast_to(refs.top_images[:, :1], (3, 4, 64, 64, 3))
    np.testing.assert_allclose(scores.diversity(trained_conceptnet, same, "conv3"), 0, atol=1e-6)
    assert np.all(scores.diversity(trained_conceptnet, refs.top_images, "conv3") > 0)
    assert scores.feature_layer(trained_conceptnet, "conv5") == "conv4"
    assert scores.feature_layer(trained_conceptnet, "fc8") == "fc7"


def test_transferability_is_the_softmax_of_the_class():
    contract = InputContract(size=(4, 4))

    def logits(params, x):
        mean = jnp.mean(x, axis=(1, 2))  # (N, 3)
        return {"fc8": mean @ params}

    weights = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    model = from_function(logits, weights, input=contract, logits_layer="fc8")
    images = np.zeros((2, 1, 4, 4, 3), np.float32)
    images[0, 0, ..., 0] = 1.0  # logits (2, 0, 0)
    images[1, 0, ..., 1] = 1.0  # logits (0, 1, 0)
    got = scores.transferability([model, model], [0, 2], images)
    e = np.exp
    np.testing.assert_allclose(got[0, 0], e(2) / (e(2) + 2), rtol=1e-6)
    np.testing.assert_allclose(got[1, 0], 1 / (2 + e(1)), rtol=1e-6)


def test_bad_input(trained_conceptnet, refs):
    small = open_dataset("concepts", split="val", count=5)
    with pytest.raises(InputError, match="fewer than the 6"):
        scores.natural_references(trained_conceptnet, small, "conv4", [0], k=6, n_random=3)
    with pytest.raises(InputError, match="same units"):
        scores.activation_ratio(trained_conceptnet, refs.top_images[:2], refs)
    with pytest.raises(InputError, match=r"need >= 2"):
        scores.diversity(trained_conceptnet, refs.top_images[:, :1], "conv3")
    with pytest.raises(InputError, match="no layer below"):
        scores.feature_layer(trained_conceptnet, "conv1")
    with pytest.raises(InputError, match="other models"):
        scores.transferability([], [0], refs.top_images)
