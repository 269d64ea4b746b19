"""Compositional explanations: planted units whose masks are formulas of concepts are
explained by those formulas with IoU 1; the counting algebra equals brute-force IoUs
on random masks; the unit and concept masks are the dissection's (same counts); the
formula forms; bad input; the ``--compose`` flag of ``cnnvis dissect``."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_dissection_tally import make_source, tiny_model, vocabulary  # noqa: E402

from cnnvis_jax.cli import main  # noqa: E402
from cnnvis_jax.data.types import Label, Vocabulary  # noqa: E402
from cnnvis_jax.dissection import (  # noqa: E402
    ArrayConceptSource,
    dissect,
    label_layout,
    load_labelled,
)
from cnnvis_jax.dissection.compose import (  # noqa: E402
    OPS,
    Formula,
    compose,
    compose_layers,
    concept_tables,
    extension_counts,
    formula_counts,
    set_iou,
    tables_from_masks,
)
from cnnvis_jax.dissection.outputs import COMPOSE_FIELDS  # noqa: E402
from cnnvis_jax.errors import InputError  # noqa: E402
from cnnvis_jax.model import InputContract, from_function  # noqa: E402

RED, BLUE, GREEN, WATER, SKY, GRASS, ROCK, STRIPED, DOTTED, COAST, FIELD = range(1, 12)
ROCK_NAME = "<i>rock&</i>"


def planted_vocabulary() -> Vocabulary:
    spec = [
        (RED, "red-c", "color"),
        (BLUE, "blue-c", "color"),
        (GREEN, "green-c", "color"),
        (WATER, "water", "object"),
        (SKY, "sky", "object"),
        (GRASS, "grass", "object"),
        (ROCK, ROCK_NAME, "object"),
        (STRIPED, "striped", "texture"),
        (DOTTED, "dotted", "texture"),
        (COAST, "coast-s", "scene"),
        (FIELD, "field-s", "scene"),
    ]
    labels = tuple(Label(n, name, (cat,)) for n, name, cat in spec)
    return Vocabulary(categories=("object", "scene", "texture", "color"), labels=labels)


def planted_source(n: int = 24, size: int = 16, seed: int = 3) -> ArrayConceptSource:
    """Blocky random labels, written into the image so that a model can read them:
    red = object, green = color, blue = texture + 16 * (scene - COAST + 1)."""
    rng = np.random.default_rng(seed)

    def blocks(values, p):
        cells = rng.choice(values, (n, 1, size // 4, size // 4), p=p)
        return np.repeat(np.repeat(cells, 4, axis=2), 4, axis=3)

    obj = blocks([WATER, SKY, GRASS, ROCK], [0.15, 0.15, 0.2, 0.5])
    color = blocks([RED, BLUE, GREEN], [0.3, 0.3, 0.4])
    texture = blocks([0, STRIPED, DOTTED], [0.4, 0.3, 0.3])
    scene = rng.choice([COAST, FIELD], (n, 1), p=[0.2, 0.8])
    blue = texture[:, 0] + 16 * (scene[:, :1, None] - COAST + 1)
    images = np.stack([obj[:, 0], color[:, 0], blue], axis=-1).astype(np.uint8)
    pixel = {"object": obj, "texture": texture, "color": color}
    return ArrayConceptSource(images, pixel, {"scene": scene}, planted_vocabulary())


PLANTED = [  # (formula, its mask from the labels the model reads)
    (Formula((WATER, SKY), ("or",)), lambda o, c, t, s: (o == WATER) | (o == SKY)),
    (Formula((WATER, RED), ("and not",)), lambda o, c, t, s: (o == WATER) & (c != RED)),
    (
        Formula((WATER, SKY, BLUE), ("or", "and not")),
        lambda o, c, t, s: ((o == WATER) | (o == SKY)) & (c != BLUE),
    ),
    (Formula((RED, STRIPED), ("and",)), lambda o, c, t, s: (c == RED) & (t == STRIPED)),
    (Formula((GRASS, COAST), ("or",)), lambda o, c, t, s: (o == GRASS) | (s == COAST)),
    (Formula((ROCK, RED), ("and not",)), lambda o, c, t, s: (o == ROCK) & (c != RED)),
    (Formula((SKY,)), lambda o, c, t, s: o == SKY),
]


def planted_apply(params, x):
    """One unit per planted formula: activation 1 on its mask, 0 elsewhere."""
    v = jnp.round(x * 255.0)
    o, c, b = v[..., 0], v[..., 1], v[..., 2]
    t, s = jnp.mod(b, 16), jnp.floor(b / 16) + COAST - 1
    units = [mask(o, c, t, s) for _, mask in PLANTED]
    return {"planted": params["scale"] * jnp.stack(units, axis=-1).astype(jnp.float32)}


def planted_model():
    params = {"scale": jnp.ones((), jnp.float32)}
    return from_function(planted_apply, params, input=InputContract(size=(16, 16)),
                         name="planted")  # fmt: skip


def membership(source: ArrayConceptSource, num_labels: int) -> np.ndarray:
    """bool (N, P, L) brute force: pixel p of image n carries label l (0 never)."""
    n = len(source)
    pix = np.concatenate([m.reshape(n, m.shape[1], -1) for m in source.pixel.values()], axis=1)
    out = np.zeros((n, pix.shape[2], num_labels), bool)
    for layer in range(pix.shape[1]):
        np.put_along_axis(out, pix[:, layer, :, None], True, axis=2)
    for s in source.scalar.values():
        for slot in s.T:
            out[np.arange(n)[slot >= 0], :, slot[slot >= 0]] = True
    out[..., 0] = False
    return out


# QUANTILE: every planted mask covers less than this fraction of the pixels, so the
# exact threshold (the K-th largest activation) is 0 and the unit's mask is its formula.
QUANTILE = 0.45


@pytest.fixture(scope="module")
def planted():
    source = planted_source()
    model = planted_model()
    d = dissect(model, source, "planted", quantile=QUANTILE, readout="exact", batch_size=8,
                progress=False)  # fmt: skip
    return model, source, d


def test_planted_formulas_are_recovered_with_iou_one(planted, tmp_path):
    model, source, d = planted
    result = compose(model, source, "planted", length=3, beam=5, dissection=d, batch_size=8,
                     progress=False)  # fmt: skip
    member = membership(source, d.layout.num_labels)
    obj, col, tex = (source.pixel[c][:, 0].reshape(len(source), -1)
                     for c in ("object", "color", "texture"))  # fmt: skip
    scene = np.broadcast_to(source.scalar["scene"], obj.shape)
    for u, (planted_formula, mask) in enumerate(PLANTED):
        want = mask(obj, col, tex, scene)
        assert 0 < want.mean() < QUANTILE  # the unit's mask is exactly its formula
        found = result.formulas[u]
        assert result.iou[u] == 1.0, (u, result.text(u))
        assert np.array_equal(found.mask(member), want), (u, result.text(u))
        assert len(found) <= len(planted_formula)
        beam_masks = [f.mask(member).tobytes() for f, _ in result.beams[u]]
        assert len(result.beams[u]) == 5 and len(set(beam_masks)) == 5  # distinct masks
        atomic = member[..., result.atomic_label[u]]
        union = (atomic | want).sum()
        assert result.atomic_iou[u] == pytest.approx((atomic & want).sum() / union)
    assert result.formulas[6] == Formula((SKY,)) and result.gain[6] == 0.0
    assert result.text(6) == "sky" and result.atomic_label[6] == SKY
    assert np.all(result.gain[:6] > 0.1)  # no single concept comes close
    # the files: tally.csv columns, compose.json, HTML with every name escaped
    d.save(tmp_path, compose={"planted": result})
    with open(tmp_path / "planted" / "tally.csv") as f:
        rows = {int(r["unit"]): r for r in csv.DictReader(f)}
    assert list(rows[0])[-len(COMPOSE_FIELDS) :] == list(COMPOSE_FIELDS)
    assert float(rows[3]["compose-iou"]) == 1.0 and rows[3]["compose-length"] == "2"
    assert rows[5]["compose-formula"] == f"{ROCK_NAME} AND NOT red-c"
    assert float(rows[5]["compose-gain"]) == pytest.approx(result.gain[5])
    record = json.loads((tmp_path / "planted" / "compose.json").read_text())
    assert record["summary"]["units_gaining"] == 6 and len(record["units"]) == len(PLANTED)
    assert Formula.from_tree(record["units"][2]["tree"]) == result.formulas[2]
    html = (tmp_path / "planted" / "index.html").read_text()
    assert ROCK_NAME not in html and "&lt;i&gt;rock&amp;&lt;/i&gt; AND NOT red-c" in html
    assert "Compositional explanations" in html and "6/7 units gain" in html


def test_length_one_is_the_best_single_concept(planted):
    model, source, d = planted
    result = compose(model, source, "planted", length=1, dissection=d, progress=False)
    assert all(f is None or len(f) == 1 for f in result.formulas)
    assert np.array_equal(result.iou, result.atomic_iou)
    assert [f.leaves[0] for f in result.formulas] == result.atomic_label.tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_counting_algebra_equals_brute_force_iou(seed):
    rng = np.random.default_rng(seed)
    n, side, units, width = 5, 4, 3, 4
    base = make_source(n=n, seed=seed, seg=6)
    pixel = {c: m[..., :side, :side] for c, m in base.pixel.items()}  # parts: 2 layers
    source = ArrayConceptSource(base.images, pixel, base.scalar, vocabulary())
    layout = label_layout(source)
    labelled = load_labelled(source, np.arange(n), layout)
    unit_masks = rng.random((n, side * side, units)) < 0.3
    tables = tables_from_masks(labelled["pixel"], labelled["scalar"], {"l": unit_masks}, layout)
    assert tables.images == n and tables.pixels.sum() == n * side * side
    member = membership(source, layout.num_labels)  # (N, P, L)
    concepts = np.flatnonzero(member.any(axis=(0, 1)))
    formulas = []
    for _ in range(units):
        row = []
        for _ in range(width - 1):
            k = int(rng.integers(1, 4))
            leaves = rng.choice(concepts, k, replace=False)
            row.append(Formula(tuple(leaves), tuple(str(op) for op in rng.choice(OPS, k - 1))))
        formulas.append(row + [None])  # an empty slot counts as an empty mask
    counts = formula_counts(tables, "l", formulas)
    unit_size = unit_masks.sum(axis=(0, 1))
    inter, size = extension_counts(
        counts.unit_formula,
        counts.formula,
        tables.unit_concept_counts("l"),
        tables.concept_sizes(),
        counts.unit_formula_concept,
        counts.formula_concept,
    )
    iou = set_iou(inter, size, unit_size[:, None, None, None])
    for u in range(units):
        m = unit_masks[..., u]
        for b, f in enumerate(formulas[u]):
            fm = np.zeros(m.shape, bool) if f is None else f.mask(member)
            assert counts.unit_formula[u, b] == (m & fm).sum()
            assert counts.formula[u, b] == fm.sum()
            for label in range(1, layout.num_labels):
                c = member[..., label]
                for k, g in enumerate((fm | c, fm & c, fm & ~c)):
                    assert inter[u, b, label, k] == (m & g).sum()
                    assert size[u, b, label, k] == g.sum()
                    union = (m | g).sum()
                    want = (m & g).sum() / union if union else 0.0
                    assert iou[u, b, label, k] == pytest.approx(want, abs=1e-15)


@pytest.mark.parametrize(("seg", "keep"), [(12, True), (4, True), (12, False)])
def test_masks_are_the_dissections(seg, keep):
    """Unit sizes, unit x concept and concept counts equal the dissection's tally
    (single-layer categories), whether the maps upsample on the host (seg 12) or on
    the device (seg 4: larger maps), with kept activations or a new forward."""
    tiny = tiny_model()
    source = make_source(n=21, seg=seg)
    cats = ("object", "scene", "color")  # one layer or slot each (the tally counts repeats twice)
    d = dissect(tiny, source, "conv1,conv2", quantile=0.3, categories=cats, batch_size=8,
                feature_memory=None if keep else 0, progress=False)  # fmt: skip
    assert (d.features is not None) == (keep and seg == 12)  # kept where the host upsamples
    tables = concept_tables(tiny, source, d, ("conv1", "conv2"), batch_size=8, progress=False)
    assert np.array_equal(tables.concept_sizes()[1:], d.layers["conv1"].counts.labels[1:])
    for name in ("conv1", "conv2"):
        counts = d.layers[name].counts
        assert counts.units.sum() > 0
        assert np.array_equal(tables.hits[name].unit_sizes(), counts.units)
        assert np.array_equal(tables.unit_concept_counts(name)[:, 1:], counts.both[:, 1:])


def test_formula_forms():
    names = ["", "water", "sky", "blue"]
    f = Formula((1, 2, 3), ("or", "and not"))
    assert f.text(names) == "(water OR sky) AND NOT blue" and len(f) == 3
    assert Formula((1,)).extend("or", 2).extend("and not", 3) == f
    tree = f.tree(names)
    assert tree["op"] == "AND" and tree["right"] == {
        "op": "NOT",
        "arg": {"label": 3, "name": "blue"},
    }
    assert Formula.from_tree(json.loads(json.dumps(tree))) == f
    longer = Formula((1, 2, 3, 2), ("and", "or", "and"))
    assert longer.text(names) == "((water AND sky) OR blue) AND sky"
    member = np.array([[0, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]], bool)
    assert f.mask(member).tolist() == [True, False, True, False]
    with pytest.raises(InputError, match="operator"):
        Formula((1, 2), ("xor",))
    with pytest.raises(InputError, match="one more concept"):
        Formula((1, 2))
    with pytest.raises(InputError, match="not a formula tree"):
        Formula.from_tree({"op": "OR", "left": {"label": 1}, "right": {"op": "NOT", "arg": {}}})


@pytest.mark.parametrize(
    ("length", "beam", "match"),
    [
        (0, 5, "length"),
        (11, 5, "length"),
        (2.5, 5, "length"),
        (True, 5, "length"),
        (3, 0, "beam"),
        (3, -1, "beam"),
    ],  # fmt: skip
)
def test_bad_length_or_beam_fails_before_any_work(length, beam, match):
    # neither a model nor a data set: the check comes first
    with pytest.raises(InputError, match=match) as info:
        compose(None, None, "conv5", length=length, beam=beam)
    assert "\n" not in str(info.value) and "use e.g." in str(info.value)


def test_bad_dissection_arguments(planted):
    model, source, d = planted
    tiny = tiny_model()
    other = dissect(tiny, make_source(n=9), "conv1", quantile=0.05, progress=False)
    with pytest.raises(InputError, match="not in the dissection"):
        compose_layers(tiny, make_source(n=9), "conv2", dissection=other, progress=False)
    with pytest.raises(InputError, match="settings of the dissection"):
        compose(model, source, "planted", dissection=d, quantile=0.1, progress=False)


@pytest.mark.filterwarnings("ignore:model 'conceptnet' has random weights")
def test_cli_compose_flag(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["dissect", "--model", "conceptnet", "--dataset", "concepts", "--layers", "conv5",
            "--count", "16", "--batch-size", "16", "--no-pictures", "--quiet"]  # fmt: skip
    assert main(args + ["--compose", "2", "--beam", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "conv5:" in text and "from a formula of up to 2 concepts" in text
    with open(out / "conv5" / "tally.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 96 and set(COMPOSE_FIELDS) <= set(rows[0])
    for r in rows:
        assert float(r["compose-iou"]) >= float(r["compose-atomic-iou"])
        assert float(r["compose-gain"]) == pytest.approx(
            float(r["compose-iou"]) - float(r["compose-atomic-iou"])
        )
        assert int(r["compose-length"]) <= 2
    record = json.loads((out / "conv5" / "compose.json").read_text())
    assert record["length"] == 2 and record["beam"] == 3 and len(record["units"]) == 96
    assert json.loads((out / "run.json").read_text())["compose"] == {"length": 2, "beam": 3}
    assert "compose" in json.loads((out / "timings.json").read_text())["seconds"]
    assert "Compositional explanations" in (out / "conv5" / "index.html").read_text()
    for bad, what in (
        (["--compose", "0"], "--compose"),
        (["--compose", "11"], "--compose"),
        (["--compose", "3", "--beam", "0"], "beam"),
        (["--beam", "3"], "--compose"),
    ):
        assert main(args + bad + ["--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert what in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad" / "summary.json").exists()
