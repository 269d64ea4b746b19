"""scikit-image's bundled natural images as a data source (`--dataset skimage`)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnvis_jax.data import (
    SKIMAGE_NAMES,
    SkimageSource,
    inspect_dataset,
    open_dataset,
    parse_dataset,
    skimage_image,
)
from cnnvis_jax.errors import DataError, InputError


def test_default_source_has_the_twelve_images_as_rgb_uint8():
    source = SkimageSource(size=(48, 40))
    assert len(source) == 12 and source.names == SKIMAGE_NAMES
    assert source.names[:3] == ("astronaut", "chelsea", "coffee")
    assert source.class_names == () and source.vocabulary is None
    for i, sample in enumerate(source):
        assert sample["image"].shape == (48, 40, 3) and sample["image"].dtype == np.uint8
        assert sample["target"] == -1 and sample["index"] == i
        assert sample["pixel"] == {} and sample["scalar"] == {}
    assert np.array_equal(source[-1]["image"], source[11]["image"])
    with pytest.raises(IndexError):
        source[12]


def test_grey_binary_and_stereo_images_become_rgb():
    brick = skimage_image("brick")
    assert brick.shape == (512, 512, 3)
    assert np.array_equal(brick[..., 0], brick[..., 2])
    horse = skimage_image("horse")
    assert set(np.unique(horse)) == {0, 255}
    left, right = skimage_image("motorcycle_left"), skimage_image("motorcycle_right")
    assert left.shape == right.shape == (500, 741, 3) and not np.array_equal(left, right)
    coffee = SkimageSource(["coffee"])[0]["image"]  # no size: the original size
    assert coffee.shape == (400, 600, 3) and coffee.std() > 20


def test_dataset_spec_and_subsets():
    assert parse_dataset("skimage") == ("skimage", None)
    assert parse_dataset("skimage:camera,coins") == ("skimage", "camera,coins")
    source = open_dataset("skimage:camera, coins", size=(32, 32))
    assert source.names == ("camera", "coins") and source[1]["image"].shape == (32, 32, 3)
    assert len(open_dataset("skimage")) == 12
    summary = inspect_dataset("skimage:astronaut,chelsea")
    assert "astronaut: 512x512" in summary and "chelsea: 300x451" in summary


def test_bad_names_are_refused():
    with pytest.raises(InputError, match="Did you mean 'astronaut'"):
        SkimageSource(["astronot"])
    with pytest.raises(DataError, match="not one image"):
        open_dataset("skimage:stereo_motorcycle")
    with pytest.raises(DataError, match="expected uint8"):
        skimage_image("lfw_subset")
    with pytest.raises(InputError, match="at least one"):
        SkimageSource([])
    with pytest.raises(InputError, match="skimage"):
        parse_dataset("skimages")


def test_methods_stream_skimage_images():
    """A method streams the source like any other (resized to the model's input)."""
    import jax

    from cnnvis_jax.deconv import top_activations
    from cnnvis_jax.model import InputContract, from_function

    def forward(params, x):
        y = jax.lax.conv_general_dilated(
            x, params, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return {"conv1": jax.nn.relu(y)}

    kernel = jax.random.normal(jax.random.key(0), (3, 3, 3, 2))
    model = from_function(forward, kernel, input=InputContract(size=(16, 16)), name="tiny")
    source = open_dataset("skimage", size=(24, 24))  # resized to 16x16 on device
    top = top_activations(model, source, "conv1", [0, 1], k=3, batch_size=8, progress=False)
    assert top.image_index.shape == (2, 3)
    assert np.all((top.image_index >= 0) & (top.image_index < 12))
    assert np.all(np.diff(top.values, axis=1) <= 0)
