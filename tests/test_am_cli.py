"""`cnnvis am` and `cnnvis mfv`: files written, bad input exits with status 2."""

import json

import numpy as np
import pytest
from PIL import Image

from cnnvis_jax.cli import main


def test_am_command_writes_grid_units_and_results(trained_run, tmp_path, capsys):
    weights = str(trained_run / "weights.safetensors")
    out = tmp_path / "am"
    args = ["am", "--model", "conceptnet", "--weights", weights, "--layer", "conv3",
            "--units", "0:3", "--preset", "yosinski1", "--steps", "4", "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(args) == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["unit"] for r in records] == [0, 1, 2]
    for r in records:
        assert set(r) >= {"unit", "start_activation", "best_activation", "final_activation"}
        assert r["best_activation"] >= r["start_activation"]
        assert Image.open(out / f"unit_{r['unit']:04d}.png").size == (64, 64)
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[0] > 2 * 128 and grid.shape[1] > 2 * 128  # 2 x 2 tiles of 128 px
    assert main(args) == 0  # a rerun with the same arguments reuses the files
    assert "reusing" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "conv9", "--units", "0"], "no layer 'conv9'"),
        (["--layer", "conv1", "--units", "0:60"], r"0\.\.47"),
        (["--layer", "fc8", "--units", "0", "--position", "1,1"], "fully connected"),
        (["--layer", "conv5", "--units", "0", "--position", "9,0"], "outside layer 'conv5'"),
        (["--layer", "conv1", "--units", "0", "--preset", "deepdream"], "unknown preset"),
        (["--layer", "conv1", "--units", "0", "--preset", "dgn"], "needs --generator"),
        (["--layer", "conv1", "--units", "0", "--preset", "accentuate"], "needs --image"),
        (["--layer", "conv1", "--units", "0", "--image", "x.png"], "applies to --preset accentu"),
    ],
)
def test_am_bad_input_exits_2(trained_run, tmp_path, capsys, extra, message):
    weights = str(trained_run / "weights.safetensors")
    args = ["am", "--model", "conceptnet", "--weights", weights, "--steps", "2",
            "--out", str(tmp_path / "x"), "--quiet", *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnvis: error:") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err


def test_am_maco_and_accentuate_from_the_command_line(trained_run, tmp_path):
    weights = str(trained_run / "weights.safetensors")
    common = ["am", "--model", "conceptnet", "--weights", weights, "--layer", "conv3",
              "--units", "0:2", "--steps", "3", "--quiet"]  # fmt: skip
    assert main([*common, "--preset", "maco", "--out", str(tmp_path / "maco")]) == 0
    assert Image.open(tmp_path / "maco" / "unit_0000.png").size == (128, 128)  # the canvas
    assert (tmp_path / "maco" / "transparency.png").exists()
    picture = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 90, 3), np.uint8)).save(picture)
    out = tmp_path / "accent"
    assert main([*common, "--preset", "accentuate", "--image", str(picture),
                 "--out", str(out)]) == 0  # fmt: skip
    records = json.loads((out / "results.json").read_text())
    assert [r["start"] for r in records] == [f"image {picture}"] * 2
    assert Image.open(out / "unit_0001.png").size == (64, 64)


def test_mfv_command_writes_facets(trained_run, tmp_path):
    weights = str(trained_run / "weights.safetensors")
    out = tmp_path / "mfv"
    args = ["mfv", "--model", "conceptnet", "--weights", weights, "--class", "fish",
            "--facets", "3", "--per-facet", "4", "--images", "240", "--steps", "5",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert Image.open(out / "facets.png").size[0] > 3 * 64
    facets = [json.loads((out / f"facet_{f:02d}.json").read_text()) for f in range(3)]
    assert sum(f["size"] for f in facets) >= 6
    assert all(f["class_name"] == "fish" and 1 <= len(f["members"]) <= 4 for f in facets)
    diversity = json.loads((out / "diversity.json").read_text())["diversity"]
    assert set(diversity) >= {"conv1", "conv5", "fc7"}
    assert all(0.0 <= v <= 2.0 for v in diversity.values())
    bad = ["mfv", "--model", "conceptnet", "--weights", weights, "--class", "unicorn",
           "--out", str(out)]  # fmt: skip
    assert main(bad) == 2


def test_am_dgn_with_a_saved_decoder_end_to_end(trained_run, trained_conceptnet, tmp_path):
    """A decoder saved by the inversion module is DGN-AM's generator from the CLI."""
    from cnnvis_jax.inversion import DecoderConfig, train_decoder

    decoder_dir = tmp_path / "decoder_fc6"
    config = DecoderConfig(layer="fc6", steps=2, batch_size=8, checkpoint_every=0)
    train_decoder(trained_conceptnet, config, decoder_dir, progress=False)
    weights = str(trained_run / "weights.safetensors")
    out = tmp_path / "dgn"
    args = ["am", "--model", "conceptnet", "--weights", weights, "--layer", "fc8",
            "--units", "0:2", "--preset", "dgn", "--generator", str(decoder_dir),
            "--steps", "6", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["unit"] for r in records] == [0, 1]
    for r in records:
        assert np.isfinite(r["final_activation"])
        assert r["best_activation"] >= r["start_activation"]
        assert Image.open(out / f"unit_{r['unit']:04d}.png").size == (64, 64)


def test_nan_weights_give_strict_json_with_null_and_a_warning(trained_run, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    from cnnvis_jax.train.snapshots import read_metadata

    source = trained_run / "weights.safetensors"
    tensors = load_file(str(source))
    key = next(k for k in tensors if k.startswith("conv1") and k.endswith("weight"))
    tensors[key] = np.full_like(tensors[key], np.nan)
    broken = tmp_path / "nan.safetensors"
    save_file(tensors, str(broken), metadata=read_metadata(source))
    out = tmp_path / "am"
    args = ["am", "--model", "conceptnet", "--weights", str(broken), "--layer", "conv2",
            "--units", "0:2", "--preset", "yosinski1", "--steps", "2", "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(args) == 0

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    records = json.loads((out / "results.json").read_text(), parse_constant=refuse)
    assert records[0]["start_activation"] is None
    assert "start_activation" in records[0]["non_finite_fields"]
    err = capsys.readouterr().err
    assert "non-finite value(s)" in err and "layer conv2" in err


def test_units_ending_at_zero_restart_from_data_or_are_marked_silent(trained_conceptnet, tmp_path):
    """A unit whose render ends at 0 starts again from the data image driving it most
    (ending above 0); one silent on every data image is reported as such."""
    from cnnvis_jax.am import natural_starts, objectives_for_units, preset, render, restart_silent
    from cnnvis_jax.data import open_dataset

    model = trained_conceptnet
    units = list(range(8))
    objectives = objectives_for_units(model, "conv4", units, "neuron")
    source = open_dataset("concepts", split="val", count=256, size=model.input.size)
    natural = natural_starts(model, objectives, source)
    # brute force: the first image with the largest value, per unit
    acts = np.concatenate([
        np.asarray(model.apply(model.params, np.stack([source[i]["image"] for i in range(s, s + 64)])
                               .astype(np.float32) / 255.0, ("conv4",))["conv4"])
        for s in range(0, 256, 64)])  # fmt: skip
    h, w = acts.shape[1:3]
    centre = acts[:, h // 2, w // 2, :8]
    np.testing.assert_array_equal(natural.index, centre.argmax(axis=0))
    np.testing.assert_allclose(natural.value, centre.max(axis=0), rtol=1e-5, atol=1e-6)
    recipe = preset("lucid")
    result = render(model, objectives, recipe, key=0, steps=4)
    zero = result._replace(
        best_activation=np.zeros_like(result.best_activation)
    )  # all "ended at 0"
    fixed, starts = restart_silent(model, objectives, recipe, zero, source, key=0, steps=4,
                                   checkpoint=tmp_path / "restart.npz")  # fmt: skip
    assert set(starts) == set(range(8))
    for k in range(8):
        if natural.live[k]:
            assert starts[k]["start"] == f"data image {natural.index[k]}"
            assert fixed.best_activation[k, 0] > 0
        else:
            assert starts[k]["start"] == "silent" and fixed.best_activation[k, 0] == 0
    assert natural.live.any()
