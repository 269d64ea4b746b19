"""Parameterizations, transforms and regularizer steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cnnvis_jax import am
from cnnvis_jax.am.params import COLOR_CORRELATION, rfft2d_freqs
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import InputContract
from cnnvis_jax.preimage.priors import gaussian_blur, tv_denoise

C16 = InputContract(size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))
RNG = np.random.default_rng(1)


def test_fourier_round_trip_and_scaling():
    f = am.Fourier()
    images = jnp.asarray(RNG.uniform(0.05, 0.95, size=(2, 16, 16, 3)), jnp.float32)
    params = jax.jit(lambda x: f.from_image(x, C16))(images)
    assert params.shape == (2, 2, 3, 16, 9)
    np.testing.assert_allclose(jax.jit(lambda p: f.to_image(p, C16))(params), images, atol=2e-5)
    # Lucid's scaling: 1 / max(f, 1/max(h, w)) * sqrt(h w); the DC term is max(h, w) * sqrt(h w)
    scale = np.asarray(f.spectrum_scale(16, 16))
    np.testing.assert_allclose(scale[0, 0], 16 * 16.0, rtol=1e-6)
    freqs = rfft2d_freqs(16, 16)
    np.testing.assert_allclose(scale[1:, 1:], np.sqrt(256) / freqs[1:, 1:], rtol=1e-5)
    # colour matrix normalized by its largest column norm
    linear = am.Fourier(decorrelate=True, sigmoid=False)
    unit = jnp.zeros((1, 2, 3, 16, 9)).at[0, 0, 0, 0, 0].set(1.0)
    pixel = np.asarray(jax.jit(lambda p: linear.to_image(p, C16))(unit))[0, 0, 0]
    mix = COLOR_CORRELATION / np.linalg.norm(COLOR_CORRELATION, axis=0).max()
    # a unit DC coefficient of channel 0 is a flat image of 16 * 16 / 256 / 4 = 0.25 before mixing
    np.testing.assert_allclose(pixel, 0.25 * mix[:, 0], rtol=1e-5)
    # white spectrum at sd 0.01: pixel std ~ the spectrum-weighted sd (not exploding)
    start = jax.jit(lambda k: f.to_image(f.init(k, 4, C16), C16))(jax.random.PRNGKey(0))
    assert 0.3 < float(start.mean()) < 0.7 and float(start.std()) < 0.2


def test_pixel_spaces_round_trip_and_clip():
    images = jnp.asarray(RNG.uniform(size=(1, 16, 16, 3)), jnp.float32)
    for space in ("unit", "caffe", "input"):
        p = am.Pixel(space)
        np.testing.assert_allclose(p.to_image(p.from_image(images, C16), C16), images, atol=1e-5)
        wild = p.from_image(images * 3 - 1, C16)
        clipped = np.asarray(p.to_image(p.clip(wild, C16), C16))
        assert clipped.min() >= -1e-5 and clipped.max() <= 1 + 1e-5
    caffe = am.Pixel("caffe").from_image(jnp.full((1, 1, 1, 3), 0.5), C16)
    np.testing.assert_allclose(np.ravel(caffe), 127.5 - np.array([127.5, 102.0, 76.5]), rtol=1e-6)
    with pytest.raises(InputError, match="space"):
        am.Pixel("bgr")


def test_generator_clips_codes():
    def decoder(params, h):
        return jax.nn.sigmoid(h @ params).reshape(h.shape[0], 4, 4, 3)

    g = am.Generator(decoder, jnp.ones((5, 48)), np.zeros(5), np.full(5, 2.0), 5)
    h = g.init(jax.random.PRNGKey(0), 3, C16)
    assert h.shape == (3, 5) and float(h.min()) >= 0 and float(h.max()) <= 2
    assert g.to_image(h, C16).shape == (3, 4, 4, 3)
    with pytest.raises(InputError, match="codes"):
        g.init(jax.random.PRNGKey(0), 1, C16, images=np.zeros((1, 16, 16, 3)))
    lower, upper = am.code_bounds(RNG.uniform(size=(50, 5)))
    assert np.all(lower == 0) and np.all(upper > 0.8)


def test_transforms_shapes_determinism_and_identity():
    x = jnp.asarray(RNG.uniform(size=(2, 16, 16, 3)), jnp.float32)
    key = jax.random.PRNGKey(3)
    chain = am.lucid_transforms()

    @jax.jit
    def run(k, x):
        out = am.transforms.apply_chain(chain, k, x)
        grad = jax.grad(lambda x: am.transforms.apply_chain(chain, k, x).sum())(x)
        identity = (am.Scale((1.0,))(k, x), am.Rotate((0.0,))(k, x))
        return out, grad, identity, am.Rotate((90.0,))(k, x), am.Jitter(4)(k, x)

    out, grad, identity, rot, crops = run(key, x)
    assert out.shape == (2, 16 + 24 - 8 - 4, 16 + 24 - 8 - 4, 3)
    np.testing.assert_array_equal(out, run(key, x)[0])
    assert not np.allclose(out, run(jax.random.PRNGKey(4), x)[0])
    assert float(jnp.abs(grad).sum()) > 0
    for same in identity:
        np.testing.assert_allclose(same, x, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rot)[0, 3, 5], np.asarray(x)[0, 5, 12], atol=1e-5)
    crops = np.asarray(crops)
    for b in range(2):  # every jittered image is a window of its source
        hits = [
            np.allclose(crops[b], np.asarray(x)[b, i : i + 12, j : j + 12])
            for i in range(5)
            for j in range(5)
        ]
        assert any(hits)
    assert am.distill_transforms()[0] == am.Pad(16, 0.5)


def test_blur_matches_scipy_and_steps():
    x = RNG.normal(size=(1, 12, 10, 3)).astype(np.float32)
    grad = RNG.normal(size=x.shape).astype(np.float32)
    blur = am.Blur(1.0, every=4)
    assert blur.width == 4

    @jax.jit
    def run(x, grad):
        return (
            gaussian_blur(x, 0.5, 2),
            gaussian_blur(x, 1.0, 4),
            blur(x, None, jnp.asarray(1), None),
            am.SmallNorm(50.0)(x, None, 0, None),
            am.SmallContribution(90.0)(x, grad, 0, None),
        )

    half, one, same, small, kept = (np.asarray(a) for a in run(x, grad))
    for sigma, ours in ((0.5, half), (1.0, one)):
        for c in range(3):
            want = gaussian_filter(x[0, :, :, c].astype(np.float64), sigma, mode="reflect")
            np.testing.assert_allclose(ours[0, :, :, c], want, atol=1e-5)
    np.testing.assert_array_equal(same, x)  # step 1 is not a blur step (every 4)
    assert (np.linalg.norm(small, axis=-1) == 0).mean() == pytest.approx(0.5, abs=0.02)
    benefit = np.abs((grad * -x).sum(-1))
    survivors = np.linalg.norm(kept, axis=-1) > 0
    assert survivors.mean() == pytest.approx(0.1, abs=0.02)
    assert benefit[survivors].min() >= benefit[~survivors].max()


def test_tv_denoise_smooths_more_with_smaller_weight():
    x = jnp.asarray(RNG.uniform(0, 255, size=(2, 16, 16, 3)), jnp.float32)
    x = x.at[1].set(7.0)  # a flat image stays flat

    def tv(u):
        return np.abs(np.diff(u, axis=1)).sum() + np.abs(np.diff(u, axis=2)).sum()

    run = jax.jit(tv_denoise)
    weak, strong = np.asarray(run(x, 1.0)), np.asarray(run(x, 0.01))
    assert tv(strong[0]) < tv(weak[0]) < tv(np.asarray(x[0]))
    np.testing.assert_allclose(strong[0].mean(), float(x[0].mean()), rtol=1e-3)
    np.testing.assert_allclose(strong[1], 7.0, atol=1e-4)


def test_zoom_by_axes_equals_the_two_dimensional_taps():
    x = jnp.asarray(RNG.uniform(size=(4, 13, 10, 3)), jnp.float32)
    inverse = jnp.asarray([0.9, 1.0, 1.1, 1.04], jnp.float32)
    matrices = jnp.eye(2)[None] * inverse[:, None, None]
    np.testing.assert_allclose(
        am.transforms._zoom(x, inverse), am.transforms._resample(x, matrices), atol=1e-6
    )
