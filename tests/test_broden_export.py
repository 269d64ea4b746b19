"""Broden-format export: files parse with csv and decode back to the source labels."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from PIL import Image

from cnnvis_jax.data import broden_export
from cnnvis_jax.data.broden_export import (
    decode_label_png,
    downsample_labels,
    encode_label_png,
    export_broden,
)
from cnnvis_jax.data.concepts import ConceptSet
from cnnvis_jax.data.types import Label, Vocabulary
from cnnvis_jax.errors import DataError, InputError


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _header(path):
    with open(path, newline="") as f:
        return next(csv.reader(f))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    src = ConceptSet(14, split="val", seed=2, image_size=48)
    out = export_broden(src, tmp_path_factory.mktemp("broden"))
    return src, out


def test_files_and_headers(exported):
    src, out = exported
    cats = list(src.vocabulary.categories)
    assert _header(out / "index.csv") == ["image", "split", "ih", "iw", "sh", "sw", *cats]
    assert _header(out / "category.csv") == ["name", "first", "last", "count", "frequency"]
    assert _header(out / "label.csv") == [
        "number",
        "name",
        "category",
        "frequency",
        "coverage",
        "syns",
    ]
    for c in cats:
        assert _header(out / f"c_{c}.csv") == ["code", "number", "name", "frequency", "coverage"]
    rows = _read(out / "index.csv")
    assert len(rows) == 14
    assert all(
        r["split"] == "val" and (r["ih"], r["iw"], r["sh"], r["sw"]) == ("48", "48", "24", "24")
        for r in rows
    )


def test_images_and_masks_round_trip(exported):
    src, out = exported
    vocab = src.vocabulary
    for i, row in enumerate(_read(out / "index.csv")):
        sample = src[i]
        image = np.asarray(Image.open(out / "images" / row["image"]))
        np.testing.assert_array_equal(image, sample["image"])  # lossless
        for cat, mask in sample["pixel"].items():
            (path,) = row[cat].split(";")
            rgb = np.asarray(Image.open(out / "images" / path).convert("RGB"))
            assert rgb.shape == (24, 24, 3) and not rgb[..., 2].any()
            decoded = decode_label_png(rgb)
            np.testing.assert_array_equal(decoded, downsample_labels(mask[0], (24, 24)))
            np.testing.assert_array_equal(decoded, mask[0, 1::2, 1::2])  # nearest, even size
        scene = [int(v) for v in row["scene"].split(";")]
        assert tuple(scene) == sample["scalar"]["scene"]
        assert vocab.label(scene[0]).category == "scene"


def test_statistics_match_the_exported_labels(exported):
    src, out = exported
    vocab = src.vocabulary
    rows = _read(out / "index.csv")
    masks = {c: [] for c in vocab.categories}
    for row in rows:
        for c in vocab.categories:
            cell = row[c]
            if re.fullmatch(r"[0-9;]+", cell):
                masks[c].append(np.full((24, 24), int(cell), np.int32))
            else:
                rgb = np.asarray(Image.open(out / "images" / cell).convert("RGB"))
                masks[c].append(decode_label_png(rgb))
    labels = {int(r["number"]): r for r in _read(out / "label.csv")}
    assert sorted(labels) == [lab.number for lab in vocab.labels]
    for lab in vocab.labels:
        (c,) = lab.categories
        present = [m for m in masks[c] if (m == lab.number).any()]
        row = labels[lab.number]
        assert row["name"] == lab.name and row["syns"] == lab.name
        assert row["category"] == f"{c}({len(present)})"
        assert int(row["frequency"]) == len(present)
        cover = np.mean([(m == lab.number).mean() for m in present]) if present else 0.0
        assert float(row["coverage"]) == pytest.approx(cover, rel=1e-5)
    for cat_row in _read(out / "category.csv"):
        c = cat_row["name"]
        members = [lab.number for lab in vocab.in_category(c)]
        assert (int(cat_row["first"]), int(cat_row["last"])) == (min(members), max(members))
        assert int(cat_row["count"]) == len(members)
        assert int(cat_row["frequency"]) == sum(m.any() for m in masks[c])
        codes = _read(out / f"c_{c}.csv")
        assert [int(r["code"]) for r in codes] == list(range(1, len(members) + 1))
        assert [int(r["number"]) for r in codes] == members
        for r in codes:
            assert int(r["frequency"]) == int(labels[int(r["number"])]["frequency"])


def test_png_codec_and_downsampling():
    labels = np.array([[0, 1, 255], [256, 1197, 65535]])
    rgb = encode_label_png(labels)
    assert rgb.dtype == np.uint8 and not rgb[..., 2].any()
    np.testing.assert_array_equal(decode_label_png(rgb), labels)
    with pytest.raises(InputError):
        encode_label_png(np.array([70000]))
    m = np.arange(7 * 9).reshape(7, 9)
    d = downsample_labels(m, (3, 4))  # odd sizes: nearest at output pixel centres
    rows = np.floor((np.arange(3) + 0.5) * 7 / 3).astype(int)
    cols = np.floor((np.arange(4) + 0.5) * 9 / 4).astype(int)
    np.testing.assert_array_equal(d, m[rows][:, cols])


class _Tiny:
    """A hand-made source: two-layer parts, half-size masks, an empty category."""

    vocabulary = Vocabulary(
        categories=("object", "part", "color"),
        labels=(
            Label(1, "red-c", ("color",)),
            Label(2, "thing", ("object",)),
            Label(3, "knob", ("part",)),
            Label(4, "lid", ("part",)),
        ),
    )
    class_names = ("thing",)

    def __len__(self):
        return 2

    def __getitem__(self, i):
        part = np.zeros((2, 5, 5), np.int32)
        part[0, :2] = 3
        part[1, 1:3] = 4 if i == 0 else 0
        return {
            "image": np.full((11, 10, 3), 40 * i, np.uint8),
            "pixel": {
                "object": np.full((1, 11, 10), 2, np.int32),  # image size -> halved
                "part": part,  # already (5, 5)
                "color": np.zeros((1, 5, 5), np.int32),  # no label: empty cell
            },
            "scalar": {},
            "target": 0,
            "index": i,
        }


def test_multi_layer_and_half_size_masks(tmp_path):
    out = export_broden(_Tiny(), tmp_path, split_of=lambda i: "train" if i == 0 else "val")
    rows = _read(out / "index.csv")
    assert [r["split"] for r in rows] == ["train", "val"]
    assert (rows[0]["sh"], rows[0]["sw"]) == ("5", "5")
    assert rows[0]["part"] == "concepts/image_000000_part_1.png;concepts/image_000000_part_2.png"
    assert rows[1]["part"] == "concepts/image_000001_part_1.png"  # empty layer skipped
    assert rows[0]["color"] == ""
    layer2 = decode_label_png(
        np.asarray(Image.open(out / "images" / rows[0]["part"].split(";")[1]))
    )
    assert (layer2[1:3] == 4).all() and (layer2[[0, 3, 4]] == 0).all()
    labels = {r["name"]: r for r in _read(out / "label.csv")}
    assert labels["knob"]["frequency"] == "2" and float(labels["knob"]["coverage"]) == 0.4
    assert labels["lid"]["category"] == "part(1)" and labels["red-c"]["frequency"] == "0"
    cats = {r["name"]: r for r in _read(out / "category.csv")}
    assert cats["color"]["frequency"] == "0" and cats["part"]["frequency"] == "2"


def test_errors(tmp_path, exported):
    class NoVocab:
        vocabulary = None

        def __len__(self):
            return 1

    with pytest.raises(InputError, match="vocabulary"):
        export_broden(NoVocab(), tmp_path / "a")
    src, out = exported
    with pytest.raises(InputError, match="overwrite"):
        export_broden(src, out)
    with pytest.raises(InputError, match="0..13"):
        export_broden(src, tmp_path / "b", indices=[0, 14])

    class Bad(_Tiny):
        def __getitem__(self, i):
            s = super().__getitem__(i)
            s["pixel"]["object"][0, 0, 0] = 3  # a part label in the object category
            return s

    with pytest.raises(DataError, match="label 3"):
        export_broden(Bad(), tmp_path / "c")
    assert broden_export.segmentation_size((227, 227)) == (113, 113)


def test_subset_and_fixed_split(tmp_path):
    src = ConceptSet(30, seed=5, image_size=32)
    out = export_broden(src, tmp_path, indices=[29, 3], split_of="val", dataset="synth")
    rows = _read(out / "index.csv")
    assert [r["image"] for r in rows] == ["synth/train_000029.png", "synth/train_000003.png"]
    assert all(r["split"] == "val" for r in rows)
    img = np.asarray(Image.open(out / "images" / rows[0]["image"]))
    np.testing.assert_array_equal(img, src[29]["image"])
