"""Numbers mean what they say: every count, step, epoch and size option refuses 0 and
negative values with one line naming the option, before any work; accepted values are
honoured (a property test over the training options)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
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


class _Captured(BaseException):
    """Raised by a stand-in for the library call: the command got this far."""


def _capture(monkeypatch, module, name: str, seen: dict) -> None:
    def stand_in(*args, **kwargs):
        seen.update(kwargs, args=args)
        raise _Captured

    monkeypatch.setattr(module, name, stand_in)


@pytest.fixture(scope="module")
def small_model():
    from cnnvis_jax.models import load

    with pytest.warns(UserWarning, match="random weights"):
        return load("conceptnet")


def _run_or_refused(argv, valid: bool, seen: dict, capsys) -> None:
    if valid:
        with pytest.raises(_Captured):
            main(argv)
    else:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("cnnvis: error:") and len(err.strip().splitlines()) == 1, err
        assert not seen, "the work started with a refused value"


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(command=st.sampled_from(["am", "deconv", "invert", "net2vec"]),
       steps=st.integers(-2, 3000), count=st.integers(-2, 90), batch=st.integers(-2, 128),
       top=st.integers(-2, 12))  # fmt: skip
@example(command="am", steps=7, count=1, batch=1, top=1)
@example(command="deconv", steps=1, count=5, batch=3, top=2)
@example(command="invert", steps=9, count=2, batch=1, top=2)
@example(command="net2vec", steps=3, count=20, batch=5, top=1)
def test_method_numbers_are_honoured_or_refused(command, steps, count, batch, top, small_model,
                                                tmp_path_factory, monkeypatch, capsys):  # fmt: skip
    """The value given reaches the library call unchanged, or the command refuses it
    in one line before any work."""
    from importlib import import_module

    render_module = import_module("cnnvis_jax.am.render")  # modules, not the functions
    deconv_module = import_module("cnnvis_jax.deconv")  # of the same names
    net2vec_module = import_module("cnnvis_jax.dissection.net2vec")
    inversion_module = import_module("cnnvis_jax.inversion.regularized")
    for name in ("common", "deconv", "inversion"):
        module = import_module(f"cnnvis_jax.cli.{name}")
        monkeypatch.setattr(module, "load_model_arg", lambda args: small_model, raising=False)
    out = str(tmp_path_factory.mktemp("numbers"))
    seen: dict = {}
    base = [command, "--model", "conceptnet", "--quiet", "--out", out]
    if command == "am":
        _capture(monkeypatch, render_module, "render", seen)
        argv = [*base, "--layer", "conv2", "--units", "0", "--steps", str(steps)]
        _run_or_refused(argv, steps >= 1, seen, capsys)
        assert not seen or seen["steps"] == steps
    elif command == "deconv":
        _capture(monkeypatch, deconv_module, "deconv_layer", seen)
        argv = [*base, "--layer", "conv2", "--units", "0", "--top", str(top), "--count",
                str(count), "--batch-size", str(batch)]  # fmt: skip
        _run_or_refused(argv, min(top, count, batch) >= 1, seen, capsys)
        if seen:
            assert (seen["k"], seen["batch_size"]) == (top, batch)
            assert seen["indices"] is None or len(seen["indices"]) == count
    elif command == "invert":
        _capture(monkeypatch, inversion_module, "invert_layers", seen)
        argv = [*base, "--layer", "conv2", "--count", str(min(count, 6)), "--steps", str(steps),
                "--restarts", str(min(top, 3))]  # fmt: skip
        _run_or_refused(argv, min(count, steps, top) >= 1, seen, capsys)
        if seen:
            assert seen["preset"].steps == steps and seen["restarts"] == min(top, 3)
            assert len(next(iter(seen["args"][1].values()))) == min(count, 6)
    else:
        _capture(monkeypatch, net2vec_module, "net2vec", seen)
        epochs = max(min(steps, 40), -2)
        argv = [*base, "--layer", "conv2", "--epochs", str(epochs), "--batch-size", str(batch),
                "--train-count", str(count + 10), "--val-count", str(count)]  # fmt: skip
        _run_or_refused(argv, min(epochs, batch, count) >= 1, seen, capsys)
        if seen:
            assert (seen["epochs"], seen["batch_size"]) == (epochs, batch)
            assert (len(seen["args"][1]), len(seen["args"][2])) == (count + 10, count)
