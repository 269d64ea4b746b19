"""Training monitoring: snapshots, the stability rule, projections of the same units at
every epoch (against direct projections), the record/figure and `cnnvis monitor`."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from cnnvis_jax.cli import main
from cnnvis_jax.data.concepts import ConceptSet
from cnnvis_jax.deconv import monitor_record, monitor_run, project
from cnnvis_jax.deconv.monitor import cosine, snapshot_paths, stable_from
from cnnvis_jax.errors import InputError
from cnnvis_jax.train import load_trained

SOURCE_SIZE = 24


@pytest.fixture(scope="module")
def source():
    return ConceptSet(SOURCE_SIZE, split="val")


@pytest.fixture(scope="module")
def monitored(trained_run, source):
    """Monitoring of conv2 (units 0, 3, 7; top 2) and fc7 (3 random active units)."""
    model, conv2 = monitor_run(trained_run, source, ["conv2"], [0, 3, 7], k=2, progress=False)
    _, fc7 = monitor_run(trained_run, source, ["fc7"], n_units=3, seed=1, progress=False)
    return model, conv2, fc7


def test_snapshot_paths(trained_run, tmp_path):
    found = snapshot_paths(trained_run)
    assert [e for e, _ in found] == [1, 2]
    assert [p.name for _, p in found] == ["epoch_001.safetensors", "epoch_002.safetensors"]
    with pytest.raises(InputError, match="does not exist"):
        snapshot_paths(tmp_path / "missing")
    (tmp_path / "snapshots").mkdir()
    shutil.copy(found[0][1], tmp_path / "snapshots" / "epoch_003.safetensors")
    with pytest.raises(InputError, match="1 snapshot"):
        snapshot_paths(tmp_path)


def test_stable_from_and_cosine():
    epochs = (1, 2, 5, 8)
    assert stable_from(epochs, [0.5, 0.95, 0.97, 1.0], 0.9) == 2
    assert stable_from(epochs, [0.95, 0.96, 0.99, 1.0], 0.9) == 1
    assert stable_from(epochs, [0.5, 0.95, 0.8, 1.0], 0.9) == 8  # dips again at epoch 5
    assert stable_from(epochs, [0.9, 0.9, 0.9, 1.0], 0.9) == 1  # the threshold counts
    assert stable_from(epochs, [0.95, 0.95, float("nan"), 1.0], 0.9) == 8
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    np.testing.assert_allclose(cosine(a, b), [1.0, -1.0, 0.0])


def test_monitor_equals_direct_projections_at_each_epoch(trained_run, source, monitored):
    model, monitoring, _ = monitored
    assert monitoring.epochs == (1, 2)
    mon = monitoring.layers["conv2"]
    assert mon.units == (0, 3, 7)
    assert mon.projections.shape == (2, 3, 2, 64, 64, 3)
    assert mon.patches.shape[:2] == (3, 2)
    images = np.asarray(source.batch(mon.image_index.reshape(-1))["image"], np.float32) / 255
    for t, (_, path) in enumerate(snapshot_paths(trained_run)):
        params = load_trained(path).params
        for u, unit in enumerate(mon.units):
            direct = project(model, params, images[2 * u : 2 * u + 2], "conv2", unit,
                             positions=mon.position[u])  # fmt: skip
            np.testing.assert_allclose(mon.projections[t, u], direct.projections[0], atol=1e-5)
            np.testing.assert_allclose(mon.activation[t, u], direct.values[0], rtol=1e-5)
    final = mon.projections[-1].reshape(3, 2, -1)
    for t in range(2):
        flat = mon.projections[t].reshape(3, 2, -1)
        expected = np.sum(flat * final, -1) / np.maximum(
            np.linalg.norm(flat, axis=-1) * np.linalg.norm(final, axis=-1), 1e-30
        )
        np.testing.assert_allclose(mon.projection_similarity[t], expected, rtol=1e-4, atol=1e-6)


def test_filter_similarity_compares_the_units_weights(trained_run, monitored):
    _, monitoring, fc7 = monitored
    first, last = (load_trained(p).params for _, p in snapshot_paths(trained_run))
    mon = monitoring.layers["conv2"]
    k0, k1 = (
        np.asarray(jax.tree_util.tree_leaves(p["conv2"]["kernel"])[0])[..., list(mon.units)]
        for p in (first, last)
    )
    expected = [
        k0[..., i].ravel()
        @ k1[..., i].ravel()
        / (np.linalg.norm(k0[..., i]) * np.linalg.norm(k1[..., i]))
        for i in range(3)
    ]
    np.testing.assert_allclose(mon.filter_similarity[0], expected, rtol=1e-5)
    np.testing.assert_allclose(mon.filter_similarity[1], 1.0, rtol=1e-6)
    # fc7: random active units (positive final top activation), no spatial position
    layer = fc7.layers["fc7"]
    assert len(layer.units) == 3 and np.all(layer.activation[-1] > 0)
    assert np.all(layer.position == -1)


def test_record_and_figure(monitored, tmp_path):
    model, monitoring, _ = monitored
    out = monitoring.save(tmp_path, model=model)
    png, record_path = out / "monitor.png", out / "monitor.json"
    record = json.loads(record_path.read_text())
    assert record == json.loads(json.dumps(monitor_record(monitoring)))
    assert record["epochs"] == [1, 2] and record["reference_epoch"] == 2
    (summary,) = record["summary"]
    assert summary["layer"] == "conv2"
    assert summary["projection_stable_from"] in (1, 2)
    assert summary["filter_similarity"]["2"] == pytest.approx(1.0)
    entries = record["layers"]["conv2"]["top_images"]
    assert list(entries) == ["0", "3", "7"] and len(entries["3"]) == 2
    picture = np.asarray(Image.open(png))
    assert picture.shape[1] >= 3 * 48  # two epochs and a patch per row
    assert picture.shape[0] >= 6 * 48  # 3 units x 2 images


def test_monitor_bad_input(trained_run, source):
    with pytest.raises(InputError, match="out of range"):
        monitor_run(trained_run, source, ["conv1"], [48], progress=False)
    with pytest.raises(InputError, match="no layer"):
        monitor_run(trained_run, source, ["conv9"], progress=False)
    with pytest.raises(InputError, match="threshold"):
        monitor_run(trained_run, source, ["conv1"], threshold=2.0, progress=False)
    with pytest.raises(InputError, match="rule"):
        monitor_run(trained_run, source, ["conv1"], rule="lrp", progress=False)
    with pytest.raises(InputError, match="n_units"):
        monitor_run(trained_run, source, ["conv1"], n_units=0, progress=False)


def test_cli_monitor(trained_run, tmp_path, capsys):
    code = main(["monitor", "--run", str(trained_run), "--layer", "conv1", "--layers", "conv5",
                 "--units", "0:2", "--count", "16", "--quiet", "--out", str(tmp_path)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "conv1: projections stable from epoch" in out and "conv5:" in out
    record = json.loads((tmp_path / "monitor.json").read_text())
    assert [s["layer"] for s in record["summary"]] == ["conv1", "conv5"]
    assert record["images_searched"] == 16
    assert record["layers"]["conv5"]["units"] == [0, 1]
    assert (tmp_path / "monitor.png").exists()


def test_cli_monitor_bad_arguments(trained_run, tmp_path, capsys):
    assert (
        main(["monitor", "--run", str(tmp_path), "--layer", "conv1", "--out", str(tmp_path)]) == 2
    )
    assert "snapshot" in capsys.readouterr().err
    assert main(["monitor", "--run", str(trained_run), "--out", str(tmp_path)]) == 2
    assert "--layer" in capsys.readouterr().err
    code = main(["monitor", "--run", str(trained_run), "--layer", "conv1", "--units", "40:50",
                 "--out", str(tmp_path)])  # fmt: skip
    assert code == 2 and "out of range" in capsys.readouterr().err


def test_cli_monitor_default_run_from_any_folder(trained_run, tmp_path, monkeypatch, capsys):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(trained_run, cache / "conceptnet-default")  # as if make demo trained it
    monkeypatch.setenv("CNNVIS_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # not the folder the run was trained from
    code = main(["monitor", "--run", "default", "--layer", "conv1", "--units", "0", "--count",
                 "8", "--quiet", "--out", str(tmp_path / "m")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (
        json.loads((tmp_path / "m" / "monitor.json").read_text())["summary"][0]["layer"] == "conv1"
    )
