"""'The default model': trained once into the cache, then loaded; --model/--weights."""

import functools
import json

import pytest

import cnnvis_jax.train as train_pkg
from cnnvis_jax import models
from cnnvis_jax.default import default_model, default_run_dir
from cnnvis_jax.errors import InputError, WeightsError

TINY = dict(epochs=1, train_size=64, val_size=32, batch_size=32, snapshot_epochs=(1,))


@pytest.fixture
def tiny_recipe(monkeypatch, tmp_path):
    """Point the cache at an empty folder and shrink the default recipe."""
    monkeypatch.setenv("CNNVIS_CACHE", str(tmp_path))
    monkeypatch.setattr(train_pkg, "TrainConfig", functools.partial(train_pkg.TrainConfig, **TINY))
    calls = []
    real_train = train_pkg.train
    monkeypatch.setattr(train_pkg, "train", lambda *a, **k: calls.append(a) or real_train(*a, **k))
    return tmp_path, calls


def test_default_is_trained_once_then_loaded(tiny_recipe):
    cache, calls = tiny_recipe
    model = default_model(progress=False)
    assert len(calls) == 1
    assert model.name == "conceptnet" and len(model.class_names) == 12
    run = default_run_dir()
    assert run.parent == cache and (run / "weights.safetensors").exists()
    assert not run.with_name(run.name + ".partial").exists()
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1
    again = models.load("default")
    assert len(calls) == 1  # cached
    assert again.layer_names == model.layer_names


def test_trained_file_loads_through_model_and_weights(tiny_recipe):
    default_model(progress=False)
    weights = default_run_dir() / "weights.safetensors"
    model = models.load("conceptnet", weights=str(weights))
    assert model.class_names[0] == "airplane"
    with pytest.raises(InputError, match="--weights goes with a zoo model name"):
        models.load("default", weights=str(weights))


def test_zoo_model_without_weights_warns():
    with pytest.warns(UserWarning, match="random weights"):
        model = models.load("conceptnet")
    assert model.layer("fc8").shape == (10,)


def test_unknown_model_and_bad_weights(tmp_path):
    with pytest.raises(InputError, match="unknown model 'vgg17'.*vgg16"):
        models.load("vgg17")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 5)
    with pytest.raises(WeightsError):
        models.load("conceptnet", weights=str(bad))
