"""Dissection outputs, the ``cnnvis dissect``/``net2vec`` commands, interruption and
resume, and every bad-input case."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import importlib  # noqa: E402

from test_dissection_tally import make_source, tiny_apply, tiny_model, vocabulary  # noqa: E402

from cnnvis_jax.cli import main  # noqa: E402
from cnnvis_jax.data.types import Label, Vocabulary  # noqa: E402
from cnnvis_jax.dissection import ArrayConceptSource, dissect, label_layout  # noqa: E402

dissect_module = importlib.import_module("cnnvis_jax.dissection.dissect")
from cnnvis_jax.errors import DataError, InputError  # noqa: E402
from cnnvis_jax.model import InputContract, from_function  # noqa: E402

Q = 0.05


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def source():
    return make_source()


def test_outputs_have_lite_columns_summary_and_escaped_html(tiny, source, tmp_path):
    vocab = vocabulary()
    labels = list(vocab.labels)
    labels[3] = Label(4, "<b>car&co</b>", ("object",))
    src = ArrayConceptSource(source.images, source.pixel, source.scalar,
                             Vocabulary(vocab.categories, tuple(labels)))  # fmt: skip
    d = dissect(tiny, src, "conv1,conv2", quantile=Q, batch_size=8, iou_threshold=0.0,
                progress=False)  # fmt: skip
    assert d.save(tmp_path, model=tiny, source=src) == tmp_path
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"conv1", "conv2"}
    for name, s in summary.items():
        assert s["units"] == tiny.layer(name).channels
        assert set(s["unique"]) == {"object", "scene", "part", "texture", "color"}
        assert s["detectors"] == s["units"]  # IoU threshold 0: every unit detects
    with open(tmp_path / "conv2" / "tally.csv") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert header[:5] == ["unit", "netdissect_unit", "category", "label", "score"]
    assert header[5:10] == ["object-label", "object-truth", "object-activation",
                           "object-intersect", "object-iou"]  # fmt: skip
    assert sorted(int(r["unit"]) for r in rows) == [0, 1, 2, 3, 4]  # as everywhere else
    assert all(int(r["netdissect_unit"]) == int(r["unit"]) + 1 for r in rows)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    res = d.layers["conv2"]
    first = int(rows[0]["unit"])
    assert rows[0]["label"] == d.layout.names[res.scores.label[first]]
    html = (tmp_path / "conv2" / "index.html").read_text()
    assert "<b>car&co</b>" not in html
    assert "units covering" in html and "sortable" in html
    assert (tmp_path / "conv2" / "units" / "unit0000.jpg").is_file()
    assert (tmp_path / "detectors.png").is_file()  # two layers: the plot across them
    svg = (tmp_path / "conv1" / "bargraph.svg").read_text()
    assert svg.startswith("<svg") and "detector units per label" in svg
    # detectors per category are consistent with the scores
    assert sum(summary["conv2"]["detectors_per_category"].values()) == summary["conv2"]["detectors"]
    orig = d.rescore(mode="original", iou_threshold=0.04)
    assert orig.mode == "original" and orig.iou_threshold == 0.04
    for name, layer in orig.layers.items():  # same counts, scored again
        assert np.array_equal(layer.counts.both, d.layers[name].counts.both)
        assert np.array_equal(layer.scores.detector, layer.scores.score >= 0.04)


def test_pictures_drawn_during_pass_2_equal_those_drawn_at_save(tiny, source, tmp_path):
    kw = dict(quantile=Q, batch_size=8, progress=False)
    drawn = dissect(tiny, source, "conv1,conv2", pictures=True, **kw)
    later = dissect(tiny, source, "conv1,conv2", **kw)
    for name in ("conv1", "conv2"):
        assert later.layers[name].pictures is None
        jpegs = drawn.layers[name].pictures
        assert len(jpegs) == tiny.layer(name).channels
        assert all(j[:2] == b"\xff\xd8" for j in jpegs)  # JPEG
    drawn.save(tmp_path / "a", model=tiny, source=source)
    drawn.save(tmp_path / "b")  # the pictures travel with the result
    later.save(tmp_path / "c", model=tiny, source=source)
    for u in range(tiny.layer("conv2").channels):
        name = f"conv2/units/unit{u:04d}.jpg"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
    assert "units/unit0000.jpg" in (tmp_path / "b" / "conv2" / "index.html").read_text()


def test_interrupted_run_resumes_to_the_same_result(tiny, source, tmp_path):
    kw = dict(quantile=Q, batch_size=8, checkpoint_every=1, progress=False)
    fresh = dissect(tiny, source, "conv1,conv2", **kw)
    calls = []

    def interrupt(stage, done):
        calls.append((stage, done))
        if stage == "tally" and done == 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dissect(tiny, source, "conv1,conv2", checkpoint=tmp_path, on_checkpoint=interrupt, **kw)
    assert ("thresholds", 37) in calls and calls[-1] == ("tally", 16)
    resumed_calls = []
    resumed = dissect(tiny, source, "conv1,conv2", checkpoint=tmp_path,
                      on_checkpoint=lambda s, n: resumed_calls.append((s, n)), **kw)  # fmt: skip
    # pass 1 was reused, the tally went on from image 16
    assert resumed_calls[0] == ("thresholds", 37)
    assert resumed_calls[1] == ("tally", 24)
    for name in ("conv1", "conv2"):
        a, b = fresh.layers[name], resumed.layers[name]
        np.testing.assert_array_equal(a.thresholds.values, b.thresholds.values)
        np.testing.assert_array_equal(a.thresholds.top_images, b.thresholds.top_images)
        np.testing.assert_array_equal(a.counts.both, b.counts.both)
        np.testing.assert_array_equal(a.counts.units_cat_lite, b.counts.units_cat_lite)
    # interrupted inside pass 1: resumes pass 1 from its checkpoint
    calls.clear()

    def interrupt1(stage, done):
        calls.append((stage, done))
        if stage == "thresholds" and done == 16:
            raise KeyboardInterrupt

    other = tmp_path / "p1"
    with pytest.raises(KeyboardInterrupt):
        dissect(tiny, source, "conv1,conv2", checkpoint=other, on_checkpoint=interrupt1, **kw)
    again = dissect(tiny, source, "conv1,conv2", checkpoint=other, **kw)
    np.testing.assert_array_equal(again.layers["conv1"].thresholds.values,
                                  fresh.layers["conv1"].thresholds.values)  # fmt: skip
    np.testing.assert_array_equal(
        again.layers["conv2"].counts.both, fresh.layers["conv2"].counts.both
    )
    # different arguments start over instead of reusing the checkpoint
    changed = dissect(tiny, source, "conv1,conv2", checkpoint=other, **{**kw, "quantile": 0.1})
    assert not np.array_equal(changed.layers["conv1"].thresholds.values,
                              fresh.layers["conv1"].thresholds.values)  # fmt: skip


def test_lite_preprocessing(tiny):
    from cnnvis_jax.dissection import with_lite_preprocessing

    lite = with_lite_preprocessing(tiny)
    x = jnp.asarray(np.random.default_rng(0).random((1, 16, 16, 3)), jnp.float32)
    want = (np.asarray(x) * 255 - np.array([124.6901, 118.6897, 109.5388])) / 57.12
    np.testing.assert_allclose(np.asarray(lite.input.normalize(x)), want, rtol=1e-5, atol=1e-5)
    assert lite.params is tiny.params and tiny.input.mean == (0.0, 0.0, 0.0)


def test_constant_unit_is_reported_not_thresholded(source):
    def apply(params, x):
        out = tiny_apply(params, x)
        conv1 = out["conv1"].at[..., 2].set(params["c"])  # unit 2 is constant
        return {"conv1": conv1}

    base = tiny_model()
    params = {**base.params, "c": jnp.float32(0.25)}
    model = from_function(apply, params, input=InputContract(size=(16, 16)), name="const")
    d = dissect(model, source, "conv1", quantile=Q, batch_size=8, iou_threshold=0.0,
                progress=False)  # fmt: skip
    r = d.layers["conv1"]
    assert r.thresholds.constant.tolist() == [False, False, True, False]
    assert np.isinf(r.thresholds.values[2])
    assert r.counts.units[2] == 0 and r.counts.both[2].sum() == 0
    assert d.summary()["conv1"]["constant_units"] == [2]


def test_bad_inputs(tiny, source):
    with pytest.raises(InputError, match="no spatial map"):
        dissect(tiny, source, "fc", progress=False)
    with pytest.raises(InputError, match="no layer"):
        dissect(tiny, source, "conv9", progress=False)
    with pytest.raises(InputError, match="no category 'material'"):
        dissect(tiny, source, "conv1", categories=["material"], progress=False)
    with pytest.raises(InputError, match="pixel-level"):
        label_layout(source, ["scene", "texture"])
    with pytest.raises(InputError, match="quantile"):
        dissect(tiny, source, "conv1", quantile=0.7, progress=False)
    with pytest.raises(InputError, match="IoU threshold"):
        dissect(tiny, source, "conv1", iou_threshold=2.0, progress=False)
    with pytest.raises(InputError, match="mode"):
        dissect(tiny, source, "conv1", mode="fancy", progress=False)
    with pytest.raises(InputError, match="preprocess"):
        dissect(tiny, source, "conv1", preprocess="caffe", progress=False)
    with pytest.raises(InputError, match="empty"):
        dissect(tiny, source, "conv1", indices=[], progress=False)

    class Unlabelled:
        vocabulary = None

        def __len__(self):
            return 3

    with pytest.raises(InputError, match="no concept labels"):
        dissect(tiny, Unlabelled(), "conv1", progress=False)
    no_texture = ArrayConceptSource(source.images, source.pixel, {"scene": source.scalar["scene"]},
                                    vocabulary())  # fmt: skip
    layout = label_layout(no_texture, ["object", "scene", "part", "color"])
    assert "texture" not in layout.categories
    # label 0 belongs to the last category of the data set's order (NetDissect-Lite)
    zero = label_layout(no_texture, ["object", "scene", "part", "color"], zero_scalar=True)
    assert zero.categories[zero.label_category[0]] == zero.categories[-1]


def test_bad_mask_files_are_named_or_skipped(tiny, tmp_path):
    from cnnvis_jax.data.broden import BrodenSource
    from cnnvis_jax.data.broden_export import export_broden

    made = make_source(n=12, seg=16)
    scalar = {"scene": made.scalar["scene"], "texture": np.maximum(made.scalar["texture"], 0)}
    src = ArrayConceptSource(made.images, made.pixel, scalar, vocabulary())
    # Broden stores masks at half the image size: 16 px images -> 8 px masks
    export_broden(src, tmp_path / "b")
    broden = BrodenSource(tmp_path / "b")
    row = broden.row(5)
    victim = row.masks["part"][0]
    (tmp_path / "b" / "images" / victim).write_bytes(b"not a png")
    with pytest.raises(DataError, match=victim.split("/")[-1]):
        dissect(
            tiny, BrodenSource(tmp_path / "b"), "conv1", quantile=Q, batch_size=8, progress=False
        )
    skipping = BrodenSource(tmp_path / "b", on_error="skip")
    d = dissect(tiny, skipping, "conv1", quantile=Q, batch_size=8, progress=False)
    assert len(d.skipped) == 1 and victim.split("/")[-1] in d.skipped[0]
    assert d.layers["conv1"].counts.images == 12


@pytest.mark.filterwarnings("ignore:model 'conceptnet' has random weights")
def test_cli_dissect_and_resume(tmp_path, capsys, monkeypatch):
    args = ["dissect", "--model", "conceptnet", "--dataset", "concepts",
            "--layers", "conv5", "--count", "32", "--batch-size", "16", "--top", "3",
            "--checkpoint-every", "1", "--no-pictures", "--quiet"]  # fmt: skip
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    assert main(args + ["--out", str(out_a)]) == 0
    text = capsys.readouterr().out
    assert "conv5:" in text and "units covering" in text
    summary = json.loads((out_a / "summary.json").read_text())
    assert summary["conv5"]["units"] == 96 and list(summary) == ["conv5"]
    assert (out_a / "conv5" / "tally.csv").is_file() and (out_a / "conv5" / "index.html").is_file()
    # a run killed after its 3rd checkpoint, then rerun with the same arguments
    real = dissect_module._save_npz
    calls = {"n": 0}

    def dying(path, arrays):
        real(path, arrays)
        calls["n"] += 1
        if calls["n"] == 3:  # pass 1 done, tally at image 16 of 32
            raise KeyboardInterrupt

    monkeypatch.setattr(dissect_module, "_save_npz", dying)
    assert main(args + ["--out", str(out_b)]) == 130
    monkeypatch.setattr(dissect_module, "_save_npz", real)
    assert (out_b / "checkpoint" / "tally.npz").is_file()
    assert main(args + ["--out", str(out_b)]) == 0
    assert json.loads((out_b / "summary.json").read_text()) == summary
    assert (out_b / "conv5" / "tally.csv").read_text() == (
        out_a / "conv5" / "tally.csv"
    ).read_text()
    # bad arguments: exit status 2 with one line
    bad = ["dissect", "--model", "conceptnet", "--out", str(tmp_path / "c"), "--quiet"]
    assert main(bad + ["--layers", "fc6"]) == 2
    assert "no spatial map" in capsys.readouterr().err
    assert main(bad + ["--layers", "conv5", "--dataset", "folder:" + str(tmp_path)]) == 2
    assert "no concept labels" in capsys.readouterr().err


def test_trained_conceptnet(trained_conceptnet):
    """On a trained ConceptNet: every unit gets a threshold inside its range (or is
    reported constant), and the scores agree with the counts."""
    from cnnvis_jax.data import ConceptSet

    source = ConceptSet(64, split="val")
    d = dissect(trained_conceptnet, source, "conv5", batch_size=32, progress=False)
    r = d.layers["conv5"]
    th = r.thresholds
    live = ~th.constant
    assert np.all((th.values[live] >= th.minimum[live]) & (th.values[live] <= th.maximum[live]))
    assert np.all(np.isinf(th.values[~live]))
    assert r.counts.images == 64 and r.counts.units[live].sum() > 0
    s = r.scores
    u = int(s.order[0])
    lab = int(s.label[u])
    cat = d.layout.label_category[lab]
    denominator = r.counts.units_cat_lite[u, cat] + r.counts.labels[lab] - r.counts.both[u, lab]
    assert s.score[u] == pytest.approx(r.counts.both[u, lab] / denominator)
    assert d.summary()["conv5"]["detectors"] == int((s.score >= 0.04).sum())


def test_unit_strips_dim_outside_the_mask_and_outline_it():
    from cnnvis_jax.dissection.outputs import unit_strips

    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)  # already at mask size
    slot = np.array([[0, 2], [1, -1]])
    masks = np.zeros((2, 2, 8, 8), bool)
    masks[0, 0, 2:6, 2:6] = True
    masks[0, 1] = True
    masks[1, 0, 0, 0] = True
    strips = unit_strips(pictures, slot, masks, gap=1)
    assert strips.shape == (2, 8, 17, 3)
    t00, t01, t10, t11 = strips[0, :, :8], strips[0, :, 9:], strips[1, :, :8], strips[1, :, 9:]
    assert (strips[:, :, 8] == 255).all()  # the gap is white
    assert np.array_equal(t00[3:5, 3:5], pictures[0, 3:5, 3:5])  # inside: unchanged
    assert np.array_equal(t00[0], (pictures[0, 0].astype(np.uint16) * 77 >> 8).astype(np.uint8))
    assert (t00[2, 2:6] == (255, 230, 0)).all() and (t00[2:6, 5] == (255, 230, 0)).all()
    assert (t01[0] == (255, 230, 0)).all() and np.array_equal(t01[3:5, 3:5], pictures[2, 3:5, 3:5])
    assert (t10[0, 0] == (255, 230, 0)).all()
    assert (t11 == 0).all()  # an empty slot is black


@pytest.fixture
def broden_dir(tmp_path):
    from cnnvis_jax.data.broden_export import export_broden

    made = make_source(n=12, seg=16)
    scalar = {"scene": made.scalar["scene"], "texture": np.maximum(made.scalar["texture"], 0)}
    export_broden(ArrayConceptSource(made.images, made.pixel, scalar, vocabulary()), tmp_path / "b")
    return tmp_path / "b"


def _edit_index(root: Path, line: int, **fields) -> None:
    with open(root / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[line].update({k: str(v) for k, v in fields.items()})
    with open(root / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_broden_images_of_mixed_sizes_are_refused_before_any_forward(tiny, broden_dir):
    from PIL import Image

    from cnnvis_jax.data.broden import BrodenSource

    row = BrodenSource(broden_dir).row(3)
    Image.new("RGB", (20, 20)).save(broden_dir / "images" / row.image)
    _edit_index(broden_dir, 3, ih=20, iw=20)
    with pytest.raises(
        InputError, match=r"differ in size: 16x16 \(11 images\), 20x20 \(1 images\)"
    ):
        dissect(tiny, BrodenSource(broden_dir), "conv1", quantile=Q, progress=False)


def test_mask_label_missing_from_label_table_is_named(tiny, broden_dir):
    from PIL import Image

    from cnnvis_jax.data.broden import BrodenSource
    from cnnvis_jax.data.broden_export import encode_label_png

    victim = BrodenSource(broden_dir).row(4).masks["object"][0]
    mask = np.zeros((8, 8), np.int64)
    mask[2:4, 2:4] = 99  # label.csv defines 1..13
    Image.fromarray(encode_label_png(mask)).save(broden_dir / "images" / victim)
    with pytest.raises(DataError, match=rf"{victim.split('/')[-1]}.*label\(s\) 99 not defined"):
        dissect(tiny, BrodenSource(broden_dir), "conv1", quantile=Q, batch_size=8, progress=False)


def test_images_with_empty_mask_cells_have_no_labels_of_that_category(tiny, broden_dir):
    """An empty index.csv cell: the image has no label of the category (as in
    NetDissect-Lite); equal to blanking those masks in the arrays."""
    from cnnvis_jax.data.broden import BrodenSource

    whole = BrodenSource(broden_dir)
    samples = [whole[i] for i in range(len(whole))]
    pixel = {c: np.stack([x["pixel"][c] for x in samples]) for c in ("object", "part", "color")}
    pixel["part"][[2, 7]] = 0
    scalar = {
        c: np.array([(tuple(x["scalar"].get(c, ())) + (-1, -1))[:2] for x in samples])
        for c in ("scene", "texture")
    }
    images = np.stack([x["image"] for x in samples])
    arrays = ArrayConceptSource(images, pixel, scalar, whole.vocabulary)
    for line in (2, 7):
        _edit_index(broden_dir, line, part="")
    broden = BrodenSource(broden_dir)
    assert "part" not in broden[2]["pixel"] and "part" in broden[3]["pixel"]
    a = dissect(tiny, broden, "conv2", quantile=Q, batch_size=8, progress=False)
    b = dissect(tiny, arrays, "conv2", quantile=Q, batch_size=8, progress=False)
    assert a.layers["conv2"].counts.units.sum() > 0
    for key in ("both", "units", "units_cat_lite", "units_cat_original", "labels"):
        np.testing.assert_array_equal(getattr(a.layers["conv2"].counts, key),
                                      getattr(b.layers["conv2"].counts, key), err_msg=key)  # fmt: skip
