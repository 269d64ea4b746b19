"""`cnnvis invert` and `cnnvis train-decoder`: contract on tiny settings, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cnnvis_jax.cli import main

MODEL = ["--model", "conceptnet", "--quiet"]


def run_cli(capsys, *argv):
    with pytest.warns(UserWarning, match="random weights"):
        code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_decoder")
    with pytest.warns(UserWarning, match="random weights"):
        code = main(["train-decoder", *MODEL, "--layer", "fc7", "--out", str(out),
                     "--steps", "2", "--batch-size", "8"])  # fmt: skip
    assert code == 0
    return out


def check_results(path, layer, method, perturbation, count):
    record = json.loads((path / "results.json").read_text())
    assert {"layer", "method", "perturbation", "normalized_feature_error",
            "normalized_image_error"} <= set(record)  # fmt: skip
    assert (record["layer"], record["method"], record["perturbation"]) == (
        layer,
        method,
        perturbation,
    )
    assert len(record["images"]) == count and record["non_finite"] == []
    assert np.isfinite(record["normalized_feature_error"]) and record["normalized_image_error"] >= 0
    picture = np.asarray(Image.open(path / "reconstructions.png"))
    # originals over reconstructions: 2 rows and N columns of 2x-enlarged 64 px tiles
    assert picture.shape[:2] == (2 * 130 + 2, count * 130 + 2)
    assert (path / "reconstruction_000.png").exists()
    return record


def test_invert_regularized_with_perturbation(capsys, tmp_path):
    code, out, err = run_cli(
        capsys, "invert", *MODEL, "--layer", "conv3", "--dataset", "concepts", "--count", "2",
        "--method", "regularized", "--preset", "mahendran2015", "--perturb", "binarize",
        "--steps", "3", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    assert "conv3" in out and "results.json" in out
    record = check_results(tmp_path, "conv3", "regularized", "binarize", 2)
    assert record["preset"] == "mahendran2015" and record["steps"] == 3


def test_invert_upconv_from_image_files(capsys, tmp_path, decoder_dir):
    files = []
    for i in range(2):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(np.full((40, 50, 3), 60 * i + 30, np.uint8)).save(path)
        files.append(str(path))
    code, _, err = run_cli(
        capsys, "invert", *MODEL, "--layer", "fc7", "--images", *files, "--method", "upconv",
        "--decoder", str(decoder_dir), "--perturb", "dropout", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0, err
    check_results(tmp_path / "out", "fc7", "upconv", "dropout", 2)


def test_train_decoder_output_and_foreign_decoder(capsys, tmp_path, decoder_dir):
    record = json.loads((decoder_dir / "decoder.json").read_text())
    assert record["layer"] == "fc7" and record["model_name"] == "conceptnet"
    code, _, err = run_cli(
        capsys, "invert", *MODEL, "--layer", "fc6", "--count", "1", "--method", "upconv",
        "--decoder", str(decoder_dir), "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 2
    assert "layer 'fc7' of model 'conceptnet'" in err and "not for layer 'fc6'" in err


def test_bad_arguments(capsys, tmp_path):
    code, _, err = run_cli(capsys, "invert", *MODEL, "--layer", "conv9", "--out", str(tmp_path))
    assert code == 2 and "conv9" in err
    code, _, err = run_cli(
        capsys, "invert", *MODEL, "--layer", "conv1", "--count", "0", "--out", str(tmp_path)
    )
    assert code == 2 and "--count" in err
