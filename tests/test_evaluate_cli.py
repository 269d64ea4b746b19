"""`cnnvis evaluate`: presets rendered and scored into one table, panel and results.json;
bad input exits with status 2 and one line before any rendering."""

import csv
import json
import re

import pytest
from PIL import Image

from cnnvis_jax.cli import main


def test_evaluate_writes_table_panel_and_results(trained_run, tmp_path):
    weights = str(trained_run / "weights.safetensors")
    out = tmp_path / "eval"
    args = ["evaluate", "--model", "conceptnet", "--weights", weights, "--layer", "conv3",
            "--units", "0:2", "--presets", "yosinski3,maco", "--seeds", "2", "--steps", "3",
            "--images", "48", "--k", "4", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["preset"] for r in rows] == ["yosinski3", "maco"]
    record = json.loads((out / "results.json").read_text())
    assert record["layer"] == "conv3" and record["feature_layer"] == "pool2"
    assert len(record["per_unit"]) == 4
    for unit in record["per_unit"]:
        assert len(unit["activation_ratio"]) == 2 and len(unit["plausibility"]) == 2
        assert unit["transferability"] is None
        assert set(unit["path"]) >= {"passed", "layers", "failing_layers"}
        if unit["completeness"] is not None:
            assert [entry["layer"] for entry in unit["completeness"]["layers"]] == ["pool2"]
    assert set(record["seconds"]) == {"references", "render", "scores"}
    assert Image.open(out / "panel.png").size[0] > 2 * 64
    assert main(args) == 0  # reused


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--presets", "lucid,lucid"], "distinct"),
        (["--presets", "deepdream"], "unknown preset"),
        (["--presets", "accentuate"], "from scratch"),
        (["--presets", "dgn"], "needs --generator"),
        (["--transfer", "nowhere.safetensors"], "does not exist"),
        (["--seeds", "0"], "--seeds must be at least 1"),
    ],
)
def test_evaluate_bad_input_exits_2(trained_run, tmp_path, capsys, extra, message):
    weights = str(trained_run / "weights.safetensors")
    args = ["evaluate", "--model", "conceptnet", "--weights", weights, "--layer", "conv3",
            "--units", "0", "--out", str(tmp_path / "x"), "--quiet", *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnvis: error:") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_transfer_needs_the_class_layer(trained_run, tmp_path, capsys):
    weights = str(trained_run / "weights.safetensors")
    args = ["evaluate", "--model", "conceptnet", "--weights", weights, "--layer", "conv3",
            "--units", "0", "--transfer", weights, "--out", str(tmp_path / "x"), "--quiet"]  # fmt: skip
    assert main(args) == 2
    assert "--layer fc8" in capsys.readouterr().err
