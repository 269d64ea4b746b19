"""`cnnvis deconv`: contract on a tiny setting, bad arguments, and --units parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cnnvis_jax.cli import main
from cnnvis_jax.deconv import parse_units
from cnnvis_jax.errors import InputError
from cnnvis_jax.models import catalog

TINY = ["--model", "conceptnet", "--dataset", "concepts", "--count", "24", "--quiet"]


def run_cli(capsys, *argv):
    with pytest.warns(UserWarning, match="random weights"):
        code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_deconv_writes_figure_and_results(capsys, tmp_path):
    code, out, err = run_cli(
        capsys, "deconv", *TINY, "--layer", "conv5", "--units", "0:3", "--top", "4",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    assert "conv5" in out and "results.json" in out
    picture = np.asarray(Image.open(tmp_path / "conv5.png"))
    assert picture.ndim == 3 and picture.shape[2] == 3
    assert picture.shape[1] > picture.shape[0] > 100  # 3 rows of 2 * 4 + 1 tiles
    record = json.loads((tmp_path / "results.json").read_text())
    assert list(record) == ["0", "1", "2"]
    rf = catalog("conceptnet").layer("conv5").receptive_field
    for entries in record.values():
        assert len(entries) == 4
        assert all(set(e) == {"image_index", "activation", "position", "box"} for e in entries)
        activations = [e["activation"] for e in entries]
        assert activations == sorted(activations, reverse=True)
        indices = [e["image_index"] for e in entries]
        assert len(set(indices)) == 4 and all(0 <= i < 24 for i in indices)
        for e in entries:
            row, col = e["position"]
            assert 0 <= row < 8 and 0 <= col < 8
            assert tuple(e["box"]) == rf.box(row, col, (64, 64))


def test_deconv_fully_connected_layer_and_guided_center(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "deconv", *TINY, "--layer", "fc7", "--units", "1,5", "--top", "2",
        "--rule", "guided", "--pool", "center", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "results.json").read_text())
    assert list(record) == ["1", "5"]
    for entries in record.values():
        assert [e["position"] for e in entries] == [None, None]
        assert [e["box"] for e in entries] == [[0, 0, 64, 64]] * 2
    assert (tmp_path / "fc7.png").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--layer", "conv5", "--units", "0:200", "--top", "4"], "unit 96 is out of range"),
        (["--layer", "conv5", "--units", "a", "--top", "4"], "'a' is not an integer"),
        (["--layer", "conv9", "--units", "0", "--top", "4"], "no layer 'conv9'"),
        (["--layer", "conv5", "--units", "0", "--top", "30"], "has 24 images, fewer than the 30"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, "deconv", *TINY, *argv, "--out", str(tmp_path))
    assert code == 2
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize(
    ("spec", "units"),
    [("3", (3,)), ("0:4", (0, 1, 2, 3)), ("1,5,9", (1, 5, 9)), (" 0:2 , 7", (0, 1, 7))],
)
def test_parse_units(spec, units):
    assert parse_units(spec, 16) == units


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("x", "'x' is not an integer"),
        ("1.5", "'1.5' is not an integer"),
        ("-1", "negative"),
        ("3:1", "range '3:1' is empty"),
        ("2:2", "is empty"),
        ("1:", "needs a start and a stop"),
        ("0:2:1", "needs a start and a stop"),
        ("1,,2", "empty item"),
        ("1,1", "unit 1 more than once"),
        ("0:3,2", "unit 2 more than once"),
        ("14:17", "unit 16 is out of range; the layer has 16 units"),
    ],
)
def test_parse_units_errors(spec, message):
    with pytest.raises(InputError, match=message):
        parse_units(spec, 16)


def test_a_unit_silent_on_the_data_is_a_grey_labelled_row(trained_conceptnet, tmp_path):
    from cnnvis_jax.data import open_dataset
    from cnnvis_jax.deconv import deconv_layer
    from cnnvis_jax.deconv.figures import layer_figure

    model = trained_conceptnet
    source = open_dataset("concepts", count=16, size=model.input.size)
    result = deconv_layer(model, source, "conv3", [0, 1], k=3, batch_size=8, progress=False)
    silent = result.topk._replace(values=result.topk.values * np.array([[0.0], [1.0]]))
    both = layer_figure(model, silent, result.projection, result.patches)
    normal = layer_figure(model, result.topk, result.projection, result.patches)
    assert both.shape == normal.shape
    half = both.shape[0] // 2
    assert not np.array_equal(both[:half], normal[:half])  # the silent unit's row changed
    np.testing.assert_array_equal(both[half:], normal[half:])  # the live unit's did not
    colours, counts = np.unique(both[:half].reshape(-1, 3), axis=0, return_counts=True)
    assert tuple(colours[counts.argmax()]) in ((127, 127, 127), (128, 128, 128))  # grey tiles
    summary = result._replace(topk=silent).summary()
    assert summary["silent_units"] == [0] and summary["units"] == [0, 1]
    assert result.save(tmp_path) == tmp_path
    png = tmp_path / "conv3.png"
    assert (tmp_path / "results.json").is_file()
    assert np.array_equal(np.asarray(Image.open(png)), result.figure)
