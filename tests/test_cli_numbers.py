"""Numbers mean what they say: every count, step, epoch and size option refuses 0 and
negative values with one line naming the option, before any work; accepted values are
honoured (a property test over the training options)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnvis_jax.cli import main

MODEL = ["--model", "conceptnet"]
COUNTS = [
    (["am", *MODEL, "--layer", "conv1", "--units", "0"], "--steps"),
    (["mfv", *MODEL, "--class", "0"], "--facets"),
    (["mfv", *MODEL, "--class", "0"], "--per-facet"),
    (["mfv", *MODEL, "--class", "0"], "--images"),
    (["mfv", *MODEL, "--class", "0"], "--steps"),
    (["deconv", *MODEL, "--layer", "conv1", "--units", "0"], "--top"),
    (["deconv", *MODEL, "--layer", "conv1", "--units", "0"], "--count"),
    (["deconv", *MODEL, "--layer", "conv1", "--units", "0"], "--batch-size"),
    (["invert", *MODEL, "--layer", "conv1"], "--count"),
    (["invert", *MODEL, "--layer", "conv1"], "--steps"),
    (["invert", *MODEL, "--layer", "conv1"], "--restarts"),
    (["train-decoder", *MODEL, "--layer", "conv1"], "--steps"),
    (["train-decoder", *MODEL, "--layer", "conv1"], "--batch-size"),
    (["diagnose", *MODEL], "--count"),
    (["diagnose", *MODEL], "--batch-size"),
    (["dissect", *MODEL, "--layer", "conv1"], "--count"),
    (["dissect", *MODEL, "--layer", "conv1"], "--top"),
    (["dissect", *MODEL, "--layer", "conv1"], "--batch-size"),
    (["net2vec", *MODEL, "--layer", "conv1"], "--epochs"),
    (["net2vec", *MODEL, "--layer", "conv1"], "--batch-size"),
    (["net2vec", *MODEL, "--layer", "conv1"], "--train-count"),
    (["net2vec", *MODEL, "--layer", "conv1"], "--val-count"),
    (["train"], "--epochs"),
    (["train"], "--train-size"),
    (["train"], "--val-size"),
    (["train"], "--batch-size"),
]


@pytest.mark.parametrize("command, option", COUNTS, ids=[f"{c[0]} {o}" for c, o in COUNTS])
@pytest.mark.parametrize("value", [0, -3])
def test_zero_or_negative_is_one_line_naming_the_option(command, option, value, tmp_path,
                                                        capsys):  # fmt: skip
    code = main([*command, option, str(value), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("cnnvis: error:") and len(err.strip().splitlines()) == 1, err
    assert option in err, err
    assert not any((tmp_path / "o").glob("*.json")), "work was done before the check"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(epochs=st.integers(-2, 40), train_size=st.integers(-2, 5000),
       val_size=st.integers(-2, 300), batch_size=st.integers(-2, 64))  # fmt: skip
def test_training_numbers_are_honoured_or_refused(epochs, train_size, val_size, batch_size,
                                                  tmp_path, monkeypatch, capsys):  # fmt: skip
    import cnnvis_jax.train as train_module

    seen = {}

    def fake_train(config, out, progress):
        seen["config"] = config
        return {"val_accuracy": 0.5, "epochs": config.epochs, "seconds": 0.0}

    monkeypatch.setattr(train_module, "train", fake_train)
    args = ["train", "--out", str(tmp_path / "run"), "--epochs", str(epochs), "--train-size",
            str(train_size), "--val-size", str(val_size), "--batch-size", str(batch_size)]  # fmt: skip
    code = main(args)
    err = capsys.readouterr().err
    valid = min(epochs, train_size, val_size, batch_size) >= 1 and batch_size <= train_size
    if valid:
        assert code == 0, err
        c = seen["config"]
        assert (c.epochs, c.train_size, c.val_size, c.batch_size) == (
            epochs, train_size, val_size, batch_size)  # fmt: skip
    else:
        assert code == 2 and "config" not in seen
        assert err.startswith("cnnvis: error:") and len(err.strip().splitlines()) == 1, err
