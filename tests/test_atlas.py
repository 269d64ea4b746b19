"""Neuron groups (NMF) and the activation atlas: planted NMF directions are recovered,
grid cells and concept labels match hand-built answers, collection streams exactly,
the whole atlas is deterministic, bad requests fail before any work, and the
``cnnvis atlas`` command writes its files (exit 2 with one line on bad input)."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from cnnvis_jax import atlas, zoo
from cnnvis_jax.data import ConceptSet
from cnnvis_jax.errors import InputError


@pytest.fixture(scope="module")
def model():
    return zoo.random_model("conceptnet", warn=False)


@pytest.fixture(scope="module")
def source():
    return ConceptSet(16, split="val")


class Untouchable:
    """A source that fails the test when read: errors must come before any work."""

    vocabulary = None

    def __len__(self):
        return 1000

    def __getitem__(self, index):
        raise AssertionError("the source was read before the request was validated")

    batch = __getitem__


# --- NMF groups ---------------------------------------------------------------------------


def _planted(seed=0, n=600, channels=12):
    """Activations ``F @ D`` from 3 planted non-negative directions on overlapping
    channel supports, with sparse exponential factors."""
    rng = np.random.default_rng(seed)
    directions = np.zeros((3, channels))
    directions[0, 0:5] = [3, 2, 1, 1, 0.5]
    directions[1, 4:9] = [1, 3, 2, 2, 1]
    directions[2, 8:12] = [2, 1, 3, 1]
    factors = rng.exponential(size=(n, 3)) * (rng.uniform(size=(n, 3)) < 0.5)
    return factors @ directions, directions / np.linalg.norm(directions, axis=1, keepdims=True)


def test_factorize_recovers_planted_directions():
    activations, planted = _planted()
    components, factors, error, converged = atlas.factorize(activations, 3, seed=0)
    assert components.shape == (3, 12) and factors.shape == (600, 3)
    assert converged and error < 0.02
    np.testing.assert_allclose(np.linalg.norm(components, axis=1), 1.0, rtol=1e-5)
    similarity = components @ planted.T  # (found, planted) cosines, all non-negative
    match = similarity.argmax(axis=1)
    assert sorted(match.tolist()) == [0, 1, 2]  # a permutation
    assert similarity.max(axis=1).min() > 0.99
    mass = factors.sum(axis=0)
    assert np.all(np.diff(mass) <= 0)  # most used group first
    np.testing.assert_allclose(factors @ components, activations, atol=0.1 * activations.max())


def test_factorize_refuses_negative_activations_and_bad_k():
    activations, _ = _planted()
    with pytest.raises(InputError, match="negative"):
        atlas.factorize(activations - 1.0, 3)
    with pytest.raises(InputError, match=r"k must be in 1\.\.12"):
        atlas.factorize(activations, 13)


# --- grid cells and labels ----------------------------------------------------------------


def test_assign_cells_puts_points_in_picture_rows_and_columns():
    points = np.array([[0.0, 0.0], [0.49, 0.51], [0.5, 0.5], [1.0, 1.0], [0.99, 0.01]])
    where = atlas.assign_cells(points, 2)
    # column = x bin; row 0 is the top (large y)
    assert where.tolist() == [[1, 0], [0, 0], [0, 1], [0, 1], [1, 1]]


def test_bin_cells_means_counts_labels_and_small_cells():
    # 3 points top-left, 2 bottom-right, 1 top-right
    points = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.9, 0.1], [0.8, 0.2], [0.9, 0.9]])
    vectors = np.array([[1, 0], [2, 0], [3, 3], [0, 4], [0, 6], [9, 9]], np.float32)
    labels = np.array([5, 5, 7, 2, 3, 1])
    cells = atlas.bin_cells(points, vectors, labels, 2, min_points=2, num_labels=8)
    assert cells.cell.tolist() == [[0, 0], [1, 1]]  # row-major; the 1-point cell dropped
    np.testing.assert_allclose(cells.direction, [[2, 1], [0, 5]])
    assert cells.count.tolist() == [3, 2]
    assert cells.label.tolist() == [5, 2]  # majority; a tie goes to the smaller number
    np.testing.assert_allclose(cells.share, [2 / 3, 1 / 2])
    assert cells.member.tolist() == [0, 0, 0, 1, 1, -1]
    assert cells.distinctive.tolist() == [0, 0]  # no label on 3 points of a cell
    np.testing.assert_array_equal(cells.lift, [0, 0])
    cells = atlas.bin_cells(points, vectors, labels, 2, min_points=2, num_labels=8, min_count=2)
    # cell 0: 5 on 2 of its 3 points, 2 of all 6 -> lift (2/3)/(2/6) = 2; 7 has 1 point
    assert cells.distinctive.tolist() == [5, 0]
    np.testing.assert_allclose(cells.lift, [2.0, 0.0])


def test_block_majority_labels_each_position_by_its_footprint():
    mask = np.zeros((8, 8), np.int32)
    mask[:4, :4] = 3  # top-left: all 3
    mask[:4, 4:] = 4
    mask[:4, 7] = 9  # top-right: 12 pixels of 4, 4 of 9
    mask[4:, :4] = 0  # bottom-left: none
    mask[4:, 4:6] = 6
    mask[4:, 6:] = 2  # bottom-right: 8 of 6, 8 of 2 (tie -> 2)
    labels = atlas.block_majority(mask[None, None], (2, 2), 10)
    assert labels.tolist() == [[[3, 4], [0, 2]]]
    # 7 pixels into 2 cells: footprints rows/cols 0..2 and 3..6
    odd = np.zeros((1, 1, 7, 7), np.int32)
    odd[0, 0, 3:, 3:] = 1
    odd[0, 0, :3, :] = 5
    assert atlas.block_majority(odd, (2, 2), 6).tolist() == [[[5, 5], [0, 1]]]
    with pytest.raises(InputError, match="smaller than the layer grid"):
        atlas.block_majority(np.zeros((1, 1, 2, 2), int), (4, 4), 3)


def test_majority_ignores_none_and_reports_share():
    labels = np.array([0, 0, 4, 1, 1, 3])
    groups = np.array([0, 0, 0, 1, 1, -1])
    label, share = atlas.majority(labels, groups, 3, 5)
    assert label.tolist() == [4, 1, 0]
    np.testing.assert_allclose(share, [1 / 3, 1.0, 0.0])


def test_distinctive_picks_the_most_over_represented_concept():
    # 30 points: group 0 (8), group 1 (10), group 2 (3, unlabelled), group 3 (empty),
    # 9 in no group (they count in the overall rates)
    labels = np.array([1, 1, 1, 1, 2, 2, 2, 5,
                       1, 1, 1, 3, 3, 3, 4, 4, 4, 0,
                       0, 0, 0,
                       1, 1, 1, 1, 1, 1, 3, 4, 2])  # fmt: skip
    groups = np.array([0] * 8 + [1] * 10 + [2] * 3 + [-1] * 9)
    label, share = atlas.majority(labels, groups, 4, 6)
    assert label.tolist() == [1, 1, 0, 0]  # the frequent concept 1 (13 of 30) everywhere
    special, lift = atlas.distinctive(labels, groups, 4, 6)
    # group 0: 2 holds 3 of its 8 points and 4 of all 30: (3/8) / (4/30) = 2.8125;
    # 5 (1 of 8, 1 of 30: lift 3.75) has fewer than min_count=3 points
    # group 1: 3 and 4 tie at (3/10) / (4/30) = 2.25 -> the smaller number
    assert special.tolist() == [2, 3, 0, 0]
    np.testing.assert_array_equal(lift, np.float32([2.8125, 2.25, 0, 0]))
    special, lift = atlas.distinctive(labels, groups, 4, 6, min_count=1)
    assert special.tolist() == [5, 3, 0, 0]
    np.testing.assert_array_equal(lift, np.float32([3.75, 2.25, 0, 0]))
    special, _ = atlas.distinctive(labels, groups, 4, 6, min_count=4)
    assert special.tolist() == [1, 0, 0, 0]  # only 1 keeps 4 points (lift 0.5 / (13/30))
    with pytest.raises(InputError, match="min_count must be at least 1"):
        atlas.distinctive(labels, groups, 4, 6, min_count=0)
    with pytest.raises(InputError, match=r"labels must be in 0\.\.4"):
        atlas.distinctive(labels, groups, 4, 5)


def test_captions_show_the_distinctive_concept_and_fit_the_tile():
    assert atlas.Caption("sky", "car", 3.14).text() == "sky · car x3.1"
    assert atlas.Caption("sky", "car", 3.14, "2: ").text(21) == "2: sky · car x3.1"
    assert atlas.Caption("sky", "sky", 1.2).text() == "sky"
    assert atlas.Caption("sky", "none", 0.0).text(10) == "sky"
    assert atlas.Caption("sky", "car", 3.14).text(10) == "sky/car x3"
    assert atlas.Caption("mountain", "skyscraper", 12.3).text(10) == "mo/sky x12"
    assert atlas.Caption("mountain", "skyscraper", 12.3).text(4) == "moun"


# --- collection -----------------------------------------------------------------------------


def test_collect_streams_exactly_and_labels_positions(model, source):
    first = atlas.collect(model, source, "conv4", images=7, points=100, seed=3, batch_size=3)
    again = atlas.collect(model, source, "conv4", images=7, points=100, seed=3, batch_size=8)
    for a, b in zip(first[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    assert first.vectors.shape == (100, 128) and first.grid == (8, 8)
    images = np.asarray(source.batch(np.arange(7))["image"], np.float32) / 255.0
    acts = np.asarray(model(images, "conv4")["conv4"])
    rows, cols = first.position.T
    np.testing.assert_allclose(first.vectors, acts[first.image_index, rows, cols], atol=1e-5)
    masks = source.batch(np.arange(7))["pixel"]["object"]
    expected = atlas.block_majority(masks, (8, 8), source.vocabulary.num_labels)
    np.testing.assert_array_equal(first.label, expected[first.image_index, rows, cols])
    assert np.all(first.label > 0)  # every pixel of the concept set has an object label
    other = atlas.collect(model, source, "conv4", images=7, points=100, seed=4)
    assert not np.array_equal(other.image_index * 64 + rows * 8 + cols,
                              first.image_index * 64 + rows * 8 + cols)  # fmt: skip


# --- the whole atlas ------------------------------------------------------------------------


TINY = dict(grid=3, images=12, points=100, min_points=2, steps=3, seed=1)


def test_atlas_is_deterministic_with_a_fixed_seed(model, source):
    a = atlas.activation_atlas(model, source, "conv4", **TINY)
    b = atlas.activation_atlas(model, source, "conv4", **TINY)
    np.testing.assert_array_equal(a.layout.points, b.layout.points)
    np.testing.assert_array_equal(a.cells.direction, b.cells.direction)
    np.testing.assert_array_equal(a.cells.label, b.cells.label)
    np.testing.assert_array_equal(a.images, b.images)
    m = len(a.cells.cell)
    assert 1 <= m <= 9 and a.images.shape == (m, 64, 64, 3)
    assert a.cells.count.sum() == (a.cells.member >= 0).sum()
    np.testing.assert_array_equal(a.cells.distinctive, b.cells.distinctive)
    records = a.cell_records()
    assert {r["concept"] for r in records} <= set(a.names.values())
    assert {r["distinctive"] for r in records} <= set(a.names.values()) | {"none"}
    assert a.layout.points.min() >= 0 and a.layout.points.max() <= 1


@pytest.mark.parametrize(
    "layer, overrides, message",
    [
        ("conv9", {}, "has no layer 'conv9'"),
        ("conv4", {"grid": 11, "points": 100}, r"11x11 grid has 121 cells but only 100"),
        ("conv4", {"grid": 10, "images": 1, "points": 500}, r"only 64 activations"),
        ("conv4", {"grid": 0}, "grid must be at least 1"),
        ("conv4", {"recipe": "maco"}, "cannot render a direction"),
    ],
)
def test_bad_atlas_requests_fail_before_reading_data(model, layer, overrides, message):
    args = {**TINY, **overrides}
    with pytest.raises(InputError, match=message) as error:
        atlas.activation_atlas(model, Untouchable(), layer, **args)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "layer, k, message",
    [
        ("conv4", 0, r"--groups 0 is out of range .* 1\.\.128"),
        ("conv4", 129, r"--groups 129 is out of range"),
        ("conv4_pre", 3, "before its ReLU"),
        ("conv9", 3, "has no layer"),
    ],
)
def test_bad_group_requests_fail_before_reading_data(model, layer, k, message):
    with pytest.raises(InputError, match=message):
        atlas.neuron_groups(model, Untouchable(), layer, k, images=10, points=100)


# --- the command ----------------------------------------------------------------------------


@pytest.fixture
def cnnvis():
    """The ``cnnvis`` command's entry point."""
    import cnnvis_jax.cli as cli

    assert "atlas" in cli.COMMAND_MODULES
    return cli.main


def test_cli_writes_atlas_layout_cells_and_groups(cnnvis, tmp_path, capsys):
    out = tmp_path / "atlas"
    args = ["atlas", "--model", "conceptnet", "--layer", "conv4", "--grid", "2", "--images",
            "10", "--points", "80", "--min-points", "2", "--steps", "2", "--groups", "2",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert cnnvis(args) == 0
    for name in ("atlas.png", "layout.png", "groups.png"):
        assert Image.open(out / name).size[0] > 64
    cells = json.loads((out / "cells.json").read_text())
    results = json.loads((out / "results.json").read_text())
    groups = json.loads((out / "groups.json").read_text())
    assert 1 <= len(cells) <= 4 and results["cells_rendered"] == len(cells)
    assert sum(c["points"] for c in cells) == results["points_in_rendered_cells"]
    assert set(results["seconds"]) == {"collect", "layout", "render", "figure", "groups"}
    assert results["settings"]["cosine_power"] == atlas.COSINE_POWER
    assert sum(results["cells_per_distinctive_concept"].values()) == len(cells)
    for cell in cells:
        assert cell["lift"] >= 0 and (cell["lift"] > 0) == (cell["distinctive"] != "none")
    assert len(groups["groups"]) == 2
    for group in groups["groups"]:
        assert group["lift"] >= 0 and (group["lift"] > 0) == (group["distinctive"] != "none")
        for region in group["top_regions"]:
            top, left, bottom, right = region["box"]
            assert 0 <= top < bottom <= 64 and 0 <= left < right <= 64
    assert "per distinctive concept" in capsys.readouterr().out
    assert cnnvis(args) == 0  # the same run: reused
    assert "already computed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--grid", "20"], r"20x20 grid has 400 cells .* lower --grid to at most 14"),
        (["--groups", "500"], "--groups 500 is out of range"),
        (["--layer", "conv9"], "has no layer 'conv9'"),
        (["--category", "scene"], "no pixel masks of category 'scene'"),
        (["--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(cnnvis, tmp_path, capsys, extra, message):
    args = ["atlas", "--model", "conceptnet", "--layer", "conv4", "--grid", "4", "--images", "4",
            "--points", "200", "--out", str(tmp_path / "x"), "--quiet", *extra]  # fmt: skip
    assert cnnvis(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("cnnvis: warning")]
    assert len(err) == 1 and err[0].startswith("cnnvis: error:")
    assert re.search(message, err[0]), err[0]
