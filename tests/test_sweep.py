"""Optimization sweeps: the grid's syntax and names, variants built from a preset, the
table's reach / fastest logic on a constructed case, AM and inversion sweeps on tiny
networks (variants of one structure in one render), files, and the command's bad input."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from test_am_helpers import tiny_model

from cnnvis_jax import am, sweep
from cnnvis_jax.cli import main
from cnnvis_jax.errors import InputError

MODEL = tiny_model()


@pytest.mark.parametrize("text, match", [
    ("", "grid is empty"),
    ("lr", "is not NAME=V1,V2"),
    ("lr=", "is not NAME=V1,V2"),
    ("lr=0.1 lr=0.2", "given twice"),
])  # fmt: skip
def test_bad_grids_are_one_clear_error(text, match):
    with pytest.raises(InputError, match=match):
        sweep.parse_grid(text)


def test_grid_names_the_fields_a_preset_has():
    assert sweep.parse_grid("optimizer=adam,sgd lr=0.01") == {"optimizer": ("adam", "sgd"),
                                                              "lr": ("0.01",)}  # fmt: skip
    recipe = am.preset("yosinski3")
    assert {"decay", "blur", "lr", "optimizer", "steps"} <= set(sweep.am_fields(recipe))
    with pytest.raises(InputError, match="has no field 'tv'; its fields are optimizer, lr"):
        sweep.am_variants(recipe, {"tv": ("1",)})
    with pytest.raises(InputError, match="not one of adam, sgd"):
        sweep.am_variants(recipe, {"optimizer": ("rmsprop",)})
    with pytest.raises(InputError, match="is not a number"):
        sweep.am_variants(recipe, {"decay": ("lots",)})
    with pytest.raises(InputError, match="centre-bias"):
        sweep.am_variants(am.preset("mfv-center"), {"lr": ("1",)})


def test_variants_change_what_their_names_say():
    recipe = am.preset("yosinski3")
    variants = sweep.am_variants(recipe, sweep.parse_grid("optimizer=adam,lbfgs lr=0.1 decay=0.5"))
    (s1, r1), (s2, r2) = variants
    assert s1 == {"optimizer": "adam", "lr": "0.1", "decay": "0.5"}
    assert isinstance(r1.optimizer, am.Adam) and r1.optimizer.lr == 0.1
    assert isinstance(r2.optimizer, am.LBFGS) and r2.optimizer.lr == 0.1
    assert [op.rate for op in r1.post if isinstance(op, am.Decay)] == [0.5]
    ((_, r3),) = sweep.am_variants(recipe, {"lr": ("3",)})  # keeps the rule, sets its rate
    assert r3.optimizer.policy == "constant" and r3.optimizer.lr == 3.0
    assert sweep.am_variants(recipe, {"steps": ("7",)})[0][1].steps == 7


def _constructed(goal):
    ramp = np.linspace(0.0, 1.0, 10)[None]
    return sweep.SweepResult(
        family="am", goal=goal, labels=("slow", "fast", "low"),
        settings=({"v": "slow"}, {"v": "fast"}, {"v": "low"}),
        curves=(ramp, np.minimum(2 * ramp, 1.0), 0.5 * ramp),
        final=(np.ones((1, 1)), np.ones((1, 1)), np.full((1, 1), 0.5)),
        seconds_per_step=(0.1, 0.3, 0.01), images=(np.zeros((1, 4, 4, 3)),) * 3,
    )  # fmt: skip


def test_reach_and_fastest_on_a_constructed_case():
    rows = _constructed("max").table()
    # best final curve value 1.0: 'slow' reaches 0.95 at step 10 (0.1 s each: 1 s),
    # 'fast' (2 x 0.111 per step) at step 6 (0.3 s each: 1.8 s), 'low' never
    assert [r["steps_to_reach"] for r in rows] == [10, 6, None]
    assert rows[0]["seconds_to_reach"] == pytest.approx(1.0)
    assert rows[1]["seconds_to_reach"] == pytest.approx(1.8)
    assert _constructed("max").fastest() == "slow"


def test_am_sweep_runs_variants_and_writes_strict_files(tmp_path):
    objectives = am.objectives_for_units(MODEL, "conv2", [0, 1], "channel")
    base = am.Recipe(name="t", steps=8, param=am.Pixel("unit", None, 10.0),
                     optimizer=am.Adam(0.05), post=(am.ClipParams(),))  # fmt: skip
    result = sweep.sweep_am(MODEL, objectives, base, "optimizer=adam,sgd lr=0.05,0.2",
                            key=0, seeds=2)  # fmt: skip
    assert len(result.labels) == 4 and result.curves[0].shape == (4, 8)
    assert result.final[0].shape == (2, 2) and result.images[0].shape == (2, 16, 16, 3)
    assert all(np.isfinite(s) and s > 0 for s in result.seconds_per_step)
    # the variants that differ only in numbers rendered in one program, the same
    # result as alone
    alone = am.render(MODEL, objectives, sweep.am_variants(base, {"lr": ("0.2",)})[0][1], key=0,
                      seeds=2)  # fmt: skip
    np.testing.assert_allclose(result.final[1], alone.best_activation[0, :, :, 0], rtol=1e-5)
    result.save(tmp_path)
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["family"] == "am" and len(record["variants"]) == 4
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "table.csv").read_text().startswith("variant,optimizer,lr,")
    assert sorted(p.name for p in tmp_path.glob("variant_*.png"))[-1] == "variant_03.png"


def test_inversion_sweep_lowers_the_error_with_more_steps():
    from test_inversion_regularized import tiny_apply  # noqa: F401  (the tiny network)

    from cnnvis_jax.model import InputContract, from_function

    rng = np.random.default_rng(0)
    params = {"w1": 0.5 * rng.standard_normal((3, 3, 3, 4)).astype(np.float32),
              "b1": np.full((4,), 0.05, np.float32),
              "w2": 0.1 * rng.standard_normal((6 * 6 * 4, 5)).astype(np.float32)}  # fmt: skip
    model = from_function(tiny_apply, params, name="tiny", input=InputContract(
        size=(12, 12), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))  # fmt: skip
    images = rng.uniform(0.1, 0.9, (2, 12, 12, 3)).astype(np.float32)
    result = sweep.sweep_inversion(model, "conv", images, "mahendran2016",
                                   "steps=4,40 lr_scale=1", key=jax.random.key(0))  # fmt: skip
    short, long = result.table()
    assert long["final_mean"] < short["final_mean"] and result.goal == "min"
    with pytest.raises(InputError, match="has no field 'optimizer'; its fields are lambda_tv"):
        sweep.sweep_inversion(model, "conv", images, "mahendran2016", "optimizer=adam",
                              key=jax.random.key(0))  # fmt: skip


@pytest.mark.parametrize("grid, match", [
    ("", "the grid is empty"),
    ("tv=1,2", "has no field 'tv'"),
])  # fmt: skip
def test_the_command_refuses_a_bad_grid_in_one_line(tmp_path, capsys, grid, match):
    code = main(["sweep", "--model", "default", "--preset", "lucid", "--layer", "conv5",
                 "--units", "0:2", "--grid", grid, "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1


def test_am_sweep_resumes_from_its_checkpoint(tmp_path):
    objectives = am.objectives_for_units(MODEL, "conv2", [0, 1], "channel")
    base = am.Recipe(name="t", steps=6, param=am.Pixel("unit", None, 10.0),
                     optimizer=am.Adam(0.05), post=(am.ClipParams(),))  # fmt: skip
    grid = "optimizer=adam,sgd lr=0.1"
    whole = sweep.sweep_am(MODEL, objectives, base, grid, key=0, checkpoint=tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["group_00.npz", "group_01.npz"]
    (tmp_path / "c" / "group_01.npz").unlink()  # as if stopped during the second group
    again = sweep.sweep_am(MODEL, objectives, base, grid, key=0, checkpoint=tmp_path / "c")
    for a, b in zip(whole.curves + whole.final + whole.images,
                    again.curves + again.final + again.images):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    assert again.seconds_per_step[0] == whole.seconds_per_step[0]  # group 0 was reused
    other = sweep.sweep_am(
        MODEL, objectives, base, "optimizer=adam,sgd lr=0.3", key=0, checkpoint=tmp_path / "c"
    )  # other settings: not reused
    assert not np.array_equal(other.final[0], whole.final[0])


def test_an_untimed_variant_has_no_seconds_and_is_never_the_fastest():
    result = _constructed("max")
    result = dataclasses.replace(result, seconds_per_step=(float("nan"), 0.3, 0.01))
    rows = result.table()
    assert rows[0]["steps_to_reach"] == 10 and rows[0]["seconds_to_reach"] is None
    assert rows[0]["seconds_per_step"] is None and rows[0]["seconds"] is None
    assert result.fastest() == "fast"
    with pytest.raises(InputError, match="must be a whole number"):
        sweep.am_variants(am.preset("yosinski3"), {"steps": ("1.5",)})
