"""MACO (Fel et al. 2023) and Feature Accentuation (Hamblin et al. 2024) on the render
engine: crops as TensorFlow's crop_and_resize, the box schedule, the phase-only image
keeps the given amplitude spectrum, the data set's spectrum, views averaged, the
transparency map equals the accumulated image gradient, the anchor's tie, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_am_helpers import tiny_model

from cnnvis_jax import am
from cnnvis_jax.am._tree import replace
from cnnvis_jax.am.params import _COLOR, Maco, natural_spectrum
from cnnvis_jax.am.transforms import Crops, Run, crop_and_resize, maco_transforms
from cnnvis_jax.errors import InputError

MODEL = tiny_model()


def _tf_crop_and_resize(image, box, size, outside):
    """TensorFlow's documented crop_and_resize for one image and box, point by point."""
    h, w, c = image.shape
    top, left, bottom, right = box
    out = np.empty((*size, c))
    for i in range(size[0]):
        y = top * (h - 1) + i * (bottom - top) * (h - 1) / (size[0] - 1)
        for j in range(size[1]):
            x = left * (w - 1) + j * (right - left) * (w - 1) / (size[1] - 1)
            if not (0 <= y <= h - 1 and 0 <= x <= w - 1):
                out[i, j] = outside
                continue
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = int(np.ceil(y)), int(np.ceil(x))
            dy, dx = y - y0, x - x0
            upper = image[y0, x0] * (1 - dx) + image[y0, x1] * dx
            lower = image[y1, x0] * (1 - dx) + image[y1, x1] * dx
            out[i, j] = upper * (1 - dy) + lower * dy
    return out


def test_crop_and_resize_matches_tensorflows_definition():
    rng = np.random.default_rng(0)
    images = rng.random((2, 12, 10, 3)).astype(np.float32)
    boxes = np.array(
        [
            [[0.0, 0.0, 1.0, 1.0], [0.2, 0.1, 0.7, 0.55], [-0.2, 0.3, 0.4, 1.3]],
            [[0.5, 0.5, 0.6, 0.62], [0.05, 0.0, 0.95, 0.4], [0.3, -0.1, 0.9, 0.5]],
        ],
        np.float32,
    )
    got = np.asarray(crop_and_resize(jnp.asarray(images), jnp.asarray(boxes), (7, 9), 0.5))
    for b in range(2):
        for n in range(3):
            want = _tf_crop_and_resize(images[b], boxes[b, n], (7, 9), 0.5)
            np.testing.assert_allclose(got[b, n], want, atol=1e-5)


@pytest.mark.parametrize("fraction, expected", [(0.0, 0.5), (0.5, 0.275), (1.0, 0.05)])
def test_crop_sides_follow_the_box_schedule(fraction, expected):
    # a horizontal ramp reveals each crop's width: last column minus first column
    ramp = np.broadcast_to(np.linspace(0, 1, 65, dtype=np.float32)[None, :, None], (65, 65, 3))
    crops = Crops(views=400, center_sd=0.0)(
        jax.random.key(1), jnp.asarray(ramp[None]), Run(jnp.float32(fraction), (8, 8))
    )
    assert crops.shape == (400, 8, 8, 3)
    widths = np.asarray(crops[:, 0, -1, 0] - crops[:, 0, 0, 0])
    clipped = max(expected, 0.05)
    assert abs(np.median(widths) - clipped) < 0.02
    assert widths.min() >= 0.05 - 1e-6


def test_maco_image_keeps_the_given_amplitude_spectrum():
    rng = np.random.default_rng(0)
    magnitude = rng.random((3, 16, 9)).astype(np.float32) + 0.5
    param = Maco(magnitude)
    assert param.canvas == (16, 16)
    phase = param.init(jax.random.key(0), 2, MODEL.input)
    assert phase.shape == (2, 3, 16, 9)
    image = np.asarray(param.to_image(phase, MODEL.input), np.float64)
    assert image.shape == (2, 16, 16, 3) and 0 < image.min() and image.max() < 1
    linear = np.log(image) - np.log1p(-image)  # undo the sigmoid
    decorrelated = linear @ np.linalg.inv(_COLOR.T.astype(np.float64))
    spectrum = np.abs(np.fft.rfft2(np.moveaxis(decorrelated, -1, 1), axes=(-2, -1)))
    # columns 1..W/2-1 are free of irfft2's Hermitian projection: there the amplitude
    # is the magnitude times one factor per image (the standardizations)
    ratio = spectrum[..., 1:-1] / magnitude[None, ..., 1:-1]
    for b in range(2):
        np.testing.assert_allclose(ratio[b], ratio[b].mean(), rtol=1e-3)


def test_natural_spectrum_of_known_images():
    flat = np.full((3, 8, 8, 3), 0.25, np.float32)
    spectrum = natural_spectrum(flat, (8, 8))
    assert spectrum.shape == (3, 8, 5)
    off_dc = spectrum.copy()
    off_dc[:, 0, 0] = 0
    np.testing.assert_allclose(off_dc, 0, atol=1e-5)
    assert np.all(spectrum[:, 0, 0] != 0)
    # a vertical grating of 2 cycles per 8 pixels peaks at column 2
    grating = 0.5 + 0.25 * np.cos(2 * np.pi * 2 * np.arange(8) / 8)
    images = np.broadcast_to(grating[None, None, :, None], (2, 8, 8, 3)).astype(np.float32)
    spectrum = natural_spectrum(images, (8, 8))
    off_dc = spectrum.copy()
    off_dc[:, 0, 0] = 0
    assert np.all(off_dc.reshape(3, -1).argmax(-1) == 2)
    with pytest.raises(InputError, match="even width"):
        natural_spectrum(images, (8, 7))


def _maco(crops=4, steps=6):
    spectrum = natural_spectrum(np.random.default_rng(0).random((4, 16, 16, 3)), (32, 32))
    recipe = am.preset("maco", spectrum=spectrum)
    return replace(recipe, transforms=maco_transforms(crops)).with_steps(steps)


def test_maco_renders_a_canvas_with_transparency_and_ascends():
    # crops of the whole canvas: the objective optimized is the clean one
    whole = Crops(views=2, center_sd=0.0, size_sd=0.0, box_start=1.0, box_end=1.0)
    recipe = replace(_maco(), transforms=(whole,))
    result = am.render(MODEL, [am.channel("conv2", u) for u in (0, 2)], recipe, key=3)
    assert result.images.shape == (2, 1, 32, 32, 3)
    assert result.transparency.shape == (2, 1, 32, 32, 3)
    assert np.all(result.transparency >= 0)
    assert np.all(result.transparency.reshape(2, -1).max(-1) > 0)
    assert np.all(result.stopped_at == -1)
    assert np.all(result.final_activation > result.start_activation)
    again = am.render(MODEL, [am.channel("conv2", u) for u in (0, 2)], recipe, key=3)
    np.testing.assert_array_equal(again.images, result.images)
    np.testing.assert_array_equal(again.transparency, result.transparency)


def test_identical_views_average_to_the_single_view_objective():
    same = Crops(views=3, center_sd=0.0, size_sd=0.0, box_start=1.0, box_end=1.0)
    one = Crops(views=1, center_sd=0.0, size_sd=0.0, box_start=1.0, box_end=1.0)
    base = am.Recipe(name="v", steps=3, param=am.Pixel("unit", None, 10.0),
                     optimizer=am.Adam(0.05), output="last")  # fmt: skip
    three = am.render(MODEL, am.channel("conv2", 1), replace(base, transforms=(same,)), key=0)
    single = am.render(MODEL, am.channel("conv2", 1), replace(base, transforms=(one,)), key=0)
    np.testing.assert_allclose(three.trajectory, single.trajectory, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(three.images, single.images, rtol=1e-5, atol=1e-6)


def test_transparency_is_the_accumulated_image_gradient():
    recipe = am.Recipe(name="t", steps=1, param=am.Pixel("unit", None, 10.0),
                       optimizer=am.Adam(0.05), output="last", transparency=True)  # fmt: skip
    objective = am.channel("conv2", 2)
    result = am.render(MODEL, objective, recipe, key=5)
    start = jnp.asarray(result.start_images[0])

    def score(images):
        return jnp.sum(objective(MODEL.apply(MODEL.params, images, ("conv2",))))

    expected = np.abs(np.asarray(jax.grad(score)(start)))
    np.testing.assert_allclose(result.transparency[0], expected, rtol=1e-4, atol=1e-7)


def test_accentuation_starts_with_no_pull_and_stays_closer_to_its_image():
    image = np.random.default_rng(1).random((1, 16, 16, 3)).astype(np.float32) * 0.8 + 0.1
    objective = am.channel("conv2", 3)
    tied = am.preset("accentuate").with_steps(12)
    assert tied.anchor is not None
    strong = replace(tied, anchor=replace(tied.anchor, weight=50.0))
    free = replace(tied, anchor=replace(tied.anchor, weight=0.0))
    runs = [am.render(MODEL, objective, r, key=2, init_images=image) for r in (strong, free)]
    # at the start the image is its anchor: the distance's gradient is zero, so the
    # first update is the same whatever the weight
    np.testing.assert_allclose(runs[0].trajectory[0, :2], runs[1].trajectory[0, :2], rtol=1e-5)
    moved = [float(np.abs(r.final_images - r.start_images).mean()) for r in runs]
    assert moved[0] < moved[1]
    assert runs[1].final_activation[0, 0] > runs[1].start_activation[0, 0]


def test_bad_input_for_maco_and_accentuation():
    with pytest.raises(InputError, match="amplitude spectrum"):
        am.preset("maco")
    with pytest.raises(InputError, match="init_images"):
        am.render(MODEL, am.channel("conv2", 0), am.preset("accentuate").with_steps(2))
    wrong = np.full((1, 20, 20, 3), 0.5, np.float32)
    with pytest.raises(InputError, match="16"):
        am.render(MODEL, am.channel("conv2", 0), am.preset("accentuate").with_steps(2),
                  init_images=wrong)  # fmt: skip
    with pytest.raises(InputError, match="diversity"):
        am.render(MODEL, am.diversity("conv2"), _maco(), batch=2)
    with pytest.raises(InputError, match="random phase"):
        am.render(MODEL, am.channel("conv2", 0), _maco(), init_images=wrong[:, :16, :16])
