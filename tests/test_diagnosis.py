"""Design diagnosis: planted dead units, filters of known frequency, the aliasing of
known signals (and the polyphase dense map against a stride-1 evaluation), the
record/figure, and `cnnvis diagnose`."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from PIL import Image

from cnnvis_jax.cli import main
from cnnvis_jax.data.concepts import ConceptSet
from cnnvis_jax.deconv import (
    aliasing,
    dead_units,
    diagnose,
    diagnosis_record,
    filter_spectrum,
    first_layer_filters,
)
from cnnvis_jax.deconv.diagnosis import (
    default_dead_layers,
    dense_map,
    first_strided_layer,
    layer_kernel,
)
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import InputContract, from_function

DN = ("NHWC", "HWIO", "NHWC")
PLAIN = InputContract(size=(16, 16))  # images in [0, 1] enter unchanged


class ArraySource:
    """A random-access source over uint8 images (N, H, W, 3)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index], "target": -1}


def random_images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# --- dead units -------------------------------------------------------------------------


def planted_apply(params, x):
    """conv 3x3 (4 units) -> ReLU -> fc (3 units) -> ReLU."""
    c = lax.conv_general_dilated(x, params["w"], (1, 1), "SAME", dimension_numbers=DN)
    conv1 = jax.nn.relu(c + params["b"])
    fc1 = jax.nn.relu(conv1.reshape(x.shape[0], -1) @ params["v"] + params["c"])
    return {"conv1": conv1, "fc1": fc1}


def planted_model():
    """Unit 2 of conv1 has zero weights and a negative bias; unit 3 negative weights
    and bias on non-negative images: both can never fire. fc1 unit 1 is dead the
    same way; units 0, 1 of conv1 and 0, 2 of fc1 have positive weights."""
    w = np.zeros((3, 3, 3, 4), np.float32)
    w[..., 0] = 0.1
    w[..., 1] = np.random.default_rng(1).uniform(0.0, 0.2, (3, 3, 3))
    w[..., 3] = -0.3
    b = np.array([0.0, -0.5, -1.0, -0.01], np.float32)
    v = np.full((16 * 16 * 4, 3), 0.01, np.float32)
    v[:, 1] = -0.01
    c = np.array([0.0, 0.0, -0.5], np.float32)
    params = {k: jnp.asarray(a) for k, a in dict(w=w, b=b, v=v, c=c).items()}
    return from_function(planted_apply, params, input=PLAIN, name="planted")


def test_dead_units_finds_planted_units_and_matches_brute_force():
    model = planted_model()
    images = random_images(11, 16)
    images[3] = 0  # a black image: unit 1 (bias -0.5) stays silent on it
    result = dead_units(model, ArraySource(images), ["conv1", "fc1"], batch_size=4, progress=False)
    assert list(result) == ["conv1", "fc1"]
    assert result["conv1"].dead.tolist() == [2, 3]
    assert result["fc1"].dead.tolist() == [1]
    acts = model.apply(model.params, jnp.asarray(images, jnp.float32) / 255, ["conv1", "fc1"])
    for name, act in acts.items():
        act = np.asarray(act).reshape(len(images), -1, act.shape[-1])
        per_image = act.max(axis=1)
        np.testing.assert_allclose(result[name].max_activation, per_image.max(axis=0), rtol=1e-6)
        np.testing.assert_allclose(result[name].active_fraction, (per_image > 0).mean(axis=0))
        assert result[name].images == 11
    assert 0 < result["conv1"].active_fraction[1] < 1  # the padded last batch is masked


def test_dead_units_on_a_trained_network_with_a_planted_unit(trained_conceptnet):
    def plant(path, leaf):
        name = jax.tree_util.keystr(path)
        if "conv2" in name and "kernel" in name:
            return leaf.at[..., 5].set(0.0)
        if "conv2" in name and "bias" in name:
            return leaf.at[5].set(-1.0)
        return leaf

    params = jax.tree_util.tree_map_with_path(plant, trained_conceptnet.params)
    model = trained_conceptnet.replace(params=params)
    source = ConceptSet(24, split="val")
    result = dead_units(model, source, batch_size=16, progress=False)
    assert tuple(result) == default_dead_layers(model) == (
        "conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7",
    )  # fmt: skip
    assert 5 in result["conv2"].dead
    assert result["conv2"].max_activation[5] == 0
    baseline = dead_units(trained_conceptnet, source, ["conv2"], batch_size=16, progress=False)
    assert 5 not in baseline["conv2"].dead


# --- filter spectra ---------------------------------------------------------------------------


def cosine_filters(frequencies, size=21):
    """(size, size, 3, F) filters cos(2 pi f x) along x, the same in every channel."""
    x = np.arange(size) - size // 2
    rows = [np.cos(2 * np.pi * f * x)[None, :].repeat(size, 0) for f in frequencies]
    return np.stack(rows, -1)[:, :, None, :].repeat(3, 2)


def test_filter_spectrum_bands_of_known_frequencies():
    filters = cosine_filters([0.0, 0.04, 0.1875, 0.4])
    spec = filter_spectrum(filters, stride=2)
    np.testing.assert_allclose(spec.fractions.sum(axis=1), 1.0, atol=1e-9)
    assert spec.dominant.tolist() == ["low", "low", "mid", "high"]
    low, mid, high = (
        spec.fractions[:, 0] + spec.fractions[:, 1],
        spec.fractions[:, 2],
        spec.fractions[:, 3],
    )
    assert low[0] > 0.85 and low[1] > 0.85
    assert mid[2] > 0.8 and high[3] > 0.9
    # above the stride-2 Nyquist (0.25 per axis) only the 0.4 filter; at stride 4 also 0.1875
    assert spec.above_nyquist[3] > 0.9 and spec.above_nyquist[:3].max() < 0.1  # box leakage
    at4 = filter_spectrum(filters, stride=4).above_nyquist
    assert at4[2] > 0.8 and at4[3] > 0.9 and at4[:2].max() < 0.1
    np.testing.assert_allclose(spec.rms, np.sqrt(np.mean(filters**2, axis=(0, 1, 2))))


def test_filter_spectrum_rejects_bad_filters():
    with pytest.raises(InputError, match="kh, kw"):
        filter_spectrum(np.zeros((3, 3, 3)))
    with pytest.raises(InputError, match="stride"):
        filter_spectrum(np.zeros((3, 3, 3, 2)), stride=0)


def test_first_layer_filters_and_layer_kernels(trained_conceptnet):
    name, filters, stride = first_layer_filters(trained_conceptnet)
    assert (name, filters.shape, stride) == ("conv1_pre", (5, 5, 3, 48), 2)
    np.testing.assert_array_equal(
        layer_kernel(trained_conceptnet, trained_conceptnet.params, "conv1"), filters
    )
    assert layer_kernel(trained_conceptnet, trained_conceptnet.params, "pool1") is None
    assert layer_kernel(trained_conceptnet, trained_conceptnet.params, "fc7").shape == (256, 256)


# --- aliasing ---------------------------------------------------------------------------------


def sampler(stride):
    """A model whose layer ``sampled`` keeps every ``stride``-th pixel (1x1 identity conv)."""
    eye = jnp.eye(3, dtype=jnp.float32)[None, None]

    def apply(params, x):
        y = lax.conv_general_dilated(x, params, (stride, stride), "VALID", dimension_numbers=DN)
        return {"sampled": y}

    return from_function(apply, eye, input=InputContract(size=(32, 32)), name=f"sample{stride}")


def grating(frequency, n=2, size=32):
    x = np.arange(size)
    row = 0.5 + 0.4 * np.cos(2 * np.pi * frequency * x)
    image = np.broadcast_to(row[None, :, None], (size, size, 3))
    return np.round(np.broadcast_to(image, (n, size, size, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize(
    "stride, frequency, aliased",
    [(2, 2 / 32, False), (2, 6 / 32, False), (2, 12 / 32, True),
     (4, 2 / 32, False), (4, 6 / 32, True), (4, 12 / 32, True)],
)  # fmt: skip
def test_aliasing_of_gratings(stride, frequency, aliased):
    """A grating below the stride's Nyquist frequency 1/(2s) is not aliased, one above is."""
    result = aliasing(
        sampler(stride), ArraySource(grating(frequency)), batch_size=2, progress=False
    )
    assert (result.layer, result.stride, result.images) == ("sampled", stride, 2)
    if aliased:
        assert result.fraction > 0.95
    else:
        assert result.fraction < 0.05
    assert result.spectrum.shape == (32, 32)
    np.testing.assert_allclose(result.spectrum.sum(), 1.0)


@pytest.mark.parametrize("stride", [2, 4])
def test_aliasing_of_white_noise_is_one_minus_inverse_stride_squared(stride):
    source = ArraySource(random_images(6, 32, seed=stride))
    result = aliasing(sampler(stride), source, batch_size=4, progress=False)
    assert result.fraction == pytest.approx(1 - 1 / stride**2, abs=0.03)
    assert result.per_unit.shape == (3,)


def test_dense_map_equals_the_stride_one_layer_inside_the_image():
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.standard_normal((3, 3, 3, 5)), jnp.float32)

    def conv(stride):
        def apply(params, x):
            y = lax.conv_general_dilated(x, params, (stride, stride), ((1, 1), (1, 1)),
                                         dimension_numbers=DN)  # fmt: skip
            return {"conv": jax.nn.relu(y)}

        return from_function(apply, w, input=PLAIN)

    images = jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32)
    dense = jax.jit(lambda x: dense_map(conv(2), x, "conv", 2))(images)
    direct = conv(1).apply(w, images, "conv")["conv"]
    assert dense.shape == direct.shape == (2, 16, 16, 5)
    # at the border a shifted input meets zero padding (top, left) or replicated edges
    np.testing.assert_allclose(dense[:, 2:-2, 2:-2], direct[:, 2:-2, 2:-2], rtol=1e-5, atol=1e-5)


def test_aliasing_layer_choice_and_errors(trained_conceptnet):
    assert first_strided_layer(trained_conceptnet).name == "conv1"
    with pytest.raises(InputError, match="stride"):
        aliasing(sampler(1), ArraySource(grating(0.1)), progress=False)
    with pytest.raises(InputError, match="not spatial"):
        aliasing(trained_conceptnet, ConceptSet(4, split="val"), "fc7", progress=False)
    with pytest.raises(InputError, match="no strided layer"):
        first_strided_layer(sampler(1))


# --- the whole diagnosis ------------------------------------------------------------------------


def test_diagnose_record_and_figure(trained_conceptnet, tmp_path):
    result = diagnose(trained_conceptnet, ConceptSet(16, split="val"), batch_size=8, progress=False)
    out = result.save(tmp_path)
    record, png = out / "diagnosis.json", out / "diagnosis.png"
    data = json.loads(record.read_text())
    assert data == json.loads(json.dumps(diagnosis_record(result)))
    assert set(data["dead_units"]) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"}
    filters = data["first_layer_filters"]
    assert filters["layer"] == "conv1_pre" and filters["stride"] == 2
    assert sum(filters["dominant_band_count"].values()) == 48
    assert sum(filters["mean_band_fraction"].values()) == pytest.approx(1.0, abs=1e-3)
    assert data["aliasing"]["layer"] == "conv1" and 0 < data["aliasing"]["fraction"] < 1
    picture = np.asarray(Image.open(png))
    assert picture.ndim == 3 and picture.shape[0] > 200


def test_cli_diagnose(capsys, tmp_path):
    with pytest.warns(UserWarning, match="random weights"):
        code = main(["diagnose", "--model", "conceptnet", "--count", "8", "--batch-size", "8",
                     "--layers", "conv1,conv5", "--quiet", "--out", str(tmp_path)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "dead units: conv1" in out and "aliasing of conv1 (stride 2)" in out
    data = json.loads((tmp_path / "diagnosis.json").read_text())
    assert list(data["dead_units"]) == ["conv1", "conv5"]
    assert data["aliasing"]["images"] == 8
    assert (tmp_path / "diagnosis.png").exists()


def test_cli_diagnose_bad_arguments(capsys, tmp_path):
    with pytest.warns(UserWarning, match="random weights"):
        code = main(["diagnose", "--model", "conceptnet", "--count", "4", "--layer", "conv9",
                     "--quiet", "--out", str(tmp_path)])  # fmt: skip
    assert code == 2 and "conv9" in capsys.readouterr().err
    assert main(["diagnose", "--count", "0", "--out", str(tmp_path)]) == 2
    assert "--count" in capsys.readouterr().err
