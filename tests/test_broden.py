"""Tests of the Broden reader on tiny directories written in tmp_path."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnvis_jax.data.broden import BrodenSource, format_summary, validate
from cnnvis_jax.data.imageio import read_label_png
from cnnvis_jax.errors import DataError, InputError

IH, IW, SH, SW = 8, 10, 4, 5
CATEGORY_ORDER = ("color", "object", "part", "material", "scene", "texture")

# number, name, label.csv category cell
LABELS = [
    (1, "black-c", "color(3)"),
    (2, "red-c", "color(2)"),
    (3, "person", "object(2)"),
    (4, "fabric", "material(3);object(1)"),  # two categories, primary material
    (5, "glass", "material(2);object(2)"),  # tie: category.csv order -> object
    (6, "street-s", "scene(1)"),
    (7, "striped", "texture(1)"),
    (300, "car", "object(1)"),  # > 255: needs the G channel
    (513, "wheel", "part(1)"),  # R=1, G=2
    (514, "door", "part(1)"),
]
# c_<cat>.csv coverage per label; glass has more coverage as material
COVERAGE = {(5, "material"): 0.4, (5, "object"): 0.1}


def _mask(rng, labels):
    """(SH, SW) int32 array drawn from ``labels``."""
    return rng.choice(np.asarray(labels, np.int32), size=(SH, SW)).astype(np.int32)


def _write_mask(path: Path, mask: np.ndarray, rng) -> None:
    rgb = np.zeros((*mask.shape, 3), np.uint8)
    rgb[..., 0] = mask % 256
    rgb[..., 1] = mask // 256
    rgb[..., 2] = rng.integers(0, 256, size=mask.shape)  # blue is unused
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, "RGB").save(path)


def write_broden(root: Path, *, columns=None, seed: int = 0) -> list[dict]:
    """Write a small valid Broden directory; return the expected contents per row.

    Six images: RGB PNG, JPEG, grey (mode L) and RGBA files; categories object,
    part (two layers on one row), color, material (pixel level), scene, texture
    (image level, with a scene label 0 on one row); labels above 255.
    """
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    specs = [
        # image, split, mode, {category: value}; value = list of label sets (masks)
        # or a tuple of ints (image-level)
        (
            "ade20k/a1.png",
            "train",
            "RGB",
            {
                "object": [[0, 3, 300]],
                "part": [[0, 513], [0, 514]],
                "color": [[1, 2]],
                "scene": (6,),
            },
        ),
        (
            "ade20k/a2.png",
            "train",
            "L",
            {"object": [[4, 5, 0]], "material": [[4, 5]], "scene": (0,)},
        ),
        ("dtd/d1.jpg", "train", "RGB", {"texture": (7,), "color": [[1]]}),
        ("pascal/p1.png", "val", "RGBA", {"object": [[300, 0]], "part": [[513, 514, 0]]}),
        ("os/o1.png", "val", "RGB", {"material": [[5, 0]], "color": [[2, 1]]}),
        ("ade20k/a3.png", "train", "RGB", {"scene": (6, 0)}),
    ]
    for n, (rel, split, mode, cells) in enumerate(specs):
        pixels = rng.integers(0, 256, size=(IH, IW, 3), dtype=np.uint8)
        path = images / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "L":
            grey = pixels[..., 0]
            Image.fromarray(grey, "L").save(path)
            expected_image = np.repeat(grey[..., None], 3, axis=-1)
        elif mode == "RGBA":
            alpha = rng.integers(0, 256, size=(IH, IW, 1), dtype=np.uint8)
            Image.fromarray(np.concatenate([pixels, alpha], -1), "RGBA").save(path)
            expected_image = pixels
        elif rel.endswith(".jpg"):
            Image.fromarray(pixels, "RGB").save(path, quality=95)
            expected_image = None  # lossy
        else:
            Image.fromarray(pixels, "RGB").save(path)
            expected_image = pixels
        index_cells, pixel, scalar = {}, {}, {}
        for cat, value in cells.items():
            if isinstance(value, tuple):
                index_cells[cat] = ";".join(str(v) for v in value)
                scalar[cat] = value
            else:
                layers, names = [], []
                for k, labels in enumerate(value):
                    mask = _mask(rng, labels)
                    mask.flat[: len(labels)] = labels  # every label occurs
                    name = f"{Path(rel).parent}/{Path(rel).stem}_{cat}_{k}.png"
                    _write_mask(images / name, mask, rng)
                    layers.append(mask)
                    names.append(name)
                index_cells[cat] = ";".join(names)
                pixel[cat] = np.stack(layers)
        rows.append(
            {
                "image": rel,
                "split": split,
                "cells": index_cells,
                "pixel": pixel,
                "scalar": scalar,
                "expected_image": expected_image,
                "n": n,
            }
        )
    columns = list(columns or ["image", "split", "ih", "iw", "sh", "sw", *CATEGORY_ORDER])
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            meta = {
                "image": r["image"],
                "split": r["split"],
                "ih": IH,
                "iw": IW,
                "sh": SH,
                "sw": SW,
            }
            w.writerow([meta[c] if c in meta else r["cells"].get(c, "") for c in columns])
    with open(root / "category.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "first", "last", "count", "frequency"])
        for cat in CATEGORY_ORDER:
            w.writerow([cat, "", "", sum(cat in c for _, _, c in LABELS), 1])
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for number, name, cat in LABELS:
            w.writerow([number, name, cat, 2, 0.25, ""])
    for cat in CATEGORY_ORDER:
        with open(root / f"c_{cat}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["code", "number", "name", "frequency", "coverage"])
            w.writerow([0, 0, "-", 0, 0])
            code = 0
            for number, name, cell in LABELS:
                if f"{cat}(" in cell:
                    code += 1
                    w.writerow([code, number, name, 1, COVERAGE.get((number, cat), 0.2)])
    return rows


@pytest.fixture
def broden(tmp_path):
    root = tmp_path / "broden"
    rows = write_broden(root)
    return root, rows


def _rewrite_index(root: Path, edit) -> None:
    """Apply ``edit(header, rows) -> (header, rows)`` to index.csv (lists of str)."""
    with open(root / "index.csv", newline="") as f:
        data = list(csv.reader(f))
    header, rows = edit(data[0], data[1:])
    with open(root / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def _set_cell(root: Path, row: int, column: str, value: str) -> None:
    def edit(header, rows):
        rows[row][header.index(column)] = value
        return header, rows

    _rewrite_index(root, edit)


# --- reading -------------------------------------------------------------------


def _check_round_trip(source: BrodenSource, rows: list[dict]) -> None:
    assert len(source) == len(rows)
    for i, expected in enumerate(rows):
        sample = source[i]
        assert sample["index"] == i
        assert sample["target"] == -1
        image = sample["image"]
        assert image.dtype == np.uint8 and image.shape == (IH, IW, 3)
        if expected["expected_image"] is not None:
            np.testing.assert_array_equal(image, expected["expected_image"])
        assert set(sample["pixel"]) == set(expected["pixel"])
        for cat, masks in expected["pixel"].items():
            got = sample["pixel"][cat]
            assert got.dtype == np.int32 and got.shape == masks.shape
            np.testing.assert_array_equal(got, masks)
        assert sample["scalar"] == expected["scalar"]


def test_round_trip(broden):
    root, rows = broden
    source = BrodenSource(root)
    _check_round_trip(source, rows)
    # multi-layer part and labels > 255 (G channel)
    part = source[0]["pixel"]["part"]
    assert part.shape == (2, SH, SW)
    assert 513 in part[0] and 514 in part[1]
    assert 300 in source[0]["pixel"]["object"]
    assert source.image_size == (IH, IW)
    assert source.segmentation_size == (SH, SW)
    assert source.splits == ("train", "val")
    assert source.class_names == ()
    assert source.categories == ("object", "scene", "part", "material", "texture", "color")
    assert source.category_levels["part"] == "pixel"
    assert source.category_levels["scene"] == "image"


def test_columns_in_another_order(tmp_path):
    shuffled = ["sw", "texture", "image", "part", "ih", "scene", "color", "split"]
    shuffled += ["sh", "material", "iw", "object"]
    rows = write_broden(tmp_path / "b", columns=shuffled)
    _check_round_trip(BrodenSource(tmp_path / "b"), rows)


def test_blue_channel_ignored_and_g_channel_used(tmp_path):
    path = tmp_path / "m.png"
    rgb = np.array([[[1, 2, 255], [44, 1, 7], [0, 0, 0]]], np.uint8)
    Image.fromarray(rgb, "RGB").save(path)
    np.testing.assert_array_equal(read_label_png(path), [[513, 300, 0]])


def test_vocabulary_primary_categories(broden):
    root, _ = broden
    vocab = BrodenSource(root, primary="count").vocabulary
    assert [lab.number for lab in vocab.labels] == [n for n, _, _ in LABELS]
    fabric = vocab.by_name("fabric")
    assert fabric.categories == ("material", "object")  # largest count first
    assert fabric.frequency == 2 and fabric.coverage == pytest.approx(0.25)
    assert vocab.by_name("glass").categories == ("material", "object")  # tie -> later (Lite)
    assert vocab.label(513).category == "part"
    assert vocab.num_labels == 515
    prim = vocab.primary_categories()
    assert prim[300] == vocab.categories.index("object")
    assert prim[0] == -1 and prim[100] == -1
    # coverage rule (NetDissect-Lite, the default): glass covers more as material
    by_cov = BrodenSource(root).vocabulary
    assert by_cov.by_name("glass").categories == ("material", "object")
    assert {lab.name for lab in vocab.in_category("object")} == {"person", "fabric", "glass", "car"}


def test_category_codes(broden):
    root, _ = broden
    codes = BrodenSource(root).category_codes("object")
    assert codes.codes == (1, 2, 3, 4)
    assert codes.numbers == (3, 4, 5, 300)
    assert codes.number_of(4) == 300 and codes.code_of(300) == 4 and codes.code_of(1) == 0
    lookup = codes.lookup()
    assert lookup.shape == (301,) and lookup[300] == 4 and lookup[1] == 0
    with pytest.raises(InputError, match="code 9"):
        codes.number_of(9)
    with pytest.raises(InputError, match="'objet'"):
        BrodenSource(root).category_codes("objet")


def test_scalar_zero_kept_and_flagged(broden):
    root, _ = broden
    source = BrodenSource(root)
    assert source[1]["scalar"]["scene"] == (0,)
    assert source[5]["scalar"]["scene"] == (6, 0)
    assert source.zero_scalar_rows["scene"] == (1, 5)
    assert source.zero_scalar_rows["texture"] == ()
    summary = source.validate(progress=False)
    assert summary["zero_scalar"] == {"scene": 2}


def test_split_and_category_filters(broden):
    root, rows = broden
    val = BrodenSource(root, split="val")
    assert len(val) == 2 and val.splits == ("train", "val")
    assert val.row(0).image == "pascal/p1.png"
    texture = BrodenSource(root, categories=["texture"])
    assert len(texture) == 1 and texture.dropped_rows == 5
    assert texture.categories == ("texture",)
    sample = texture[0]
    assert sample["scalar"] == {"texture": (7,)} and sample["pixel"] == {}
    assert [lab.name for lab in texture.vocabulary.labels] == ["striped"]
    parts = BrodenSource(root, categories=["part", "object"])
    assert parts.categories == ("object", "part")
    assert set(parts[0]["pixel"]) == {"object", "part"}
    with pytest.raises(InputError, match="split 'test'"):
        BrodenSource(root, split="test")
    with pytest.raises(InputError, match="'objects'.*Did you mean 'object'"):
        BrodenSource(root, categories=["objects"])


def test_indexing_and_iteration(broden):
    root, rows = broden
    source = BrodenSource(root)
    assert source[-1]["index"] == len(rows) - 1
    with pytest.raises(IndexError):
        source[len(rows)]
    assert [s["index"] for s in source] == list(range(len(rows)))
    assert source.image_path(2) == root / "images" / "dtd/d1.jpg"


def test_mixed_cell_goes_to_both(broden):
    root, rows = broden
    mask_path = rows[0]["cells"]["object"]
    _set_cell(root, 0, "object", f"{mask_path};4")
    source = BrodenSource(root)
    assert source.category_levels["object"] == "pixel+image"
    sample = source[0]
    assert sample["scalar"]["object"] == (4,)
    np.testing.assert_array_equal(sample["pixel"]["object"], rows[0]["pixel"]["object"])


def test_validate_summary(broden):
    root, _ = broden
    summary = validate(root, progress=False)
    assert summary["images"] == 6
    assert summary["splits"] == {"train": 4, "val": 2}
    assert summary["labels_per_category"]["object"] == 4
    assert summary["labels_seen"]["part"] == 2
    assert summary["labels_seen"]["scene"] == 1
    assert summary["levels"]["texture"] == "image"
    assert summary["rows_with_data"]["color"] == 3
    assert summary["files_checked"] == 6 + 11  # images + masks
    assert summary["skipped"] == 0 and summary["errors"] == []
    assert summary["labels_outside_category"] == {}
    text = format_summary(summary)
    assert "6 images" in text and "train 4, val 2" in text and "8x10" in text
    assert "part" in text and "pixel" in text
    single = BrodenSource(root).validate(progress=False, workers=1)
    assert single == summary


# --- missing files and malformed CSV --------------------------------------------------


@pytest.mark.parametrize("name", ["index.csv", "category.csv", "label.csv", "c_part.csv"])
def test_missing_file_is_named(broden, name):
    root, _ = broden
    (root / name).unlink()
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        BrodenSource(root)


def test_missing_root_and_images(tmp_path, broden):
    with pytest.raises(DataError, match="does not exist"):
        BrodenSource(tmp_path / "nowhere")
    root, _ = broden
    os.rename(root / "images", root / "pictures")
    with pytest.raises(DataError, match="images/ folder missing"):
        BrodenSource(root)


def test_missing_header_column(broden):
    root, _ = broden

    def edit(header, rows):
        k = header.index("sh")
        return header[:k] + header[k + 1 :], [r[:k] + r[k + 1 :] for r in rows]

    _rewrite_index(root, edit)
    with pytest.raises(DataError, match=r"index\.csv line 1: missing column\(s\) \['sh'\]"):
        BrodenSource(root)


def test_category_column_missing_or_unknown(broden):
    root, _ = broden

    def drop_texture(header, rows):
        k = header.index("texture")
        return header[:k] + header[k + 1 :], [r[:k] + r[k + 1 :] for r in rows]

    _rewrite_index(root, drop_texture)
    with pytest.raises(DataError, match=r"missing column\(s\) \['texture'\]"):
        BrodenSource(root)
    _rewrite_index(root, lambda h, rows: (h + ["texture", "shape"], [r + ["", ""] for r in rows]))
    with pytest.raises(DataError, match=r"\['shape'\] are not categories listed in category\.csv"):
        BrodenSource(root)


def test_wrong_number_of_fields(broden):
    root, _ = broden
    _rewrite_index(root, lambda h, rows: (h, rows[:2] + [rows[2] + ["extra"]] + rows[3:]))
    with pytest.raises(DataError, match=r"index\.csv line 4: 13 fields but the header has 12"):
        BrodenSource(root)


@pytest.mark.parametrize("column,value", [("ih", "8.5"), ("sw", "abc"), ("iw", ""), ("sh", "0")])
def test_bad_size_fields(broden, column, value):
    root, _ = broden
    _set_cell(root, 1, column, value)
    with pytest.raises(DataError, match=rf"index\.csv line 3, column '{column}'"):
        BrodenSource(root)


def test_image_level_label_out_of_range(broden):
    root, _ = broden
    _set_cell(root, 2, "texture", "999")
    with pytest.raises(DataError, match=r"line 4, column 'texture': label 999 is not defined"):
        BrodenSource(root)
    _set_cell(root, 2, "texture", "-3")
    with pytest.raises(DataError, match="label -3"):
        BrodenSource(root)
    _set_cell(root, 2, "texture", "8")  # a gap between defined labels
    with pytest.raises(DataError, match=r"valid: 0 for none, 1\.\.7, 300, 513\.\.514"):
        BrodenSource(root)


def test_label_csv_errors(broden):
    root, _ = broden
    path = root / "label.csv"
    good = path.read_text()
    path.write_text(good + "8,thing,shape(2),1,0.1,\n")
    with pytest.raises(DataError, match=r"label\.csv line 12, column 'category': category 'shape'"):
        BrodenSource(root)
    path.write_text(good + "3,again,object(1),1,0.1,\n")
    with pytest.raises(DataError, match="label 3 is already defined on line 4"):
        BrodenSource(root)
    path.write_text(good + "x,bad,object(1),1,0.1,\n")
    with pytest.raises(DataError, match=r"label\.csv line 12, column 'number'"):
        BrodenSource(root)
    path.write_text(good + "9,bad,object(many),1,0.1,\n")
    with pytest.raises(DataError, match=r"label\.csv line 12, column 'category'"):
        BrodenSource(root)
    path.write_text(good.replace("number,name,category", "number,title,category"))
    with pytest.raises(DataError, match=r"label\.csv line 1: missing column\(s\) \['name'\]"):
        BrodenSource(root)


def test_code_file_with_undefined_label(broden):
    root, _ = broden
    with open(root / "c_color.csv", "a") as f:
        f.write("3,77,ghost,1,0.1\n")
    with pytest.raises(DataError, match=r"c_color\.csv line 5, column 'number': label 77"):
        BrodenSource(root)


def test_category_csv_errors(broden):
    root, _ = broden
    with open(root / "category.csv", "a") as f:
        f.write("object,,,1,1\n")
    with pytest.raises(DataError, match=r"category\.csv line 8.*listed twice"):
        BrodenSource(root)


# --- per-file errors (at read time and in validate) ------------------------------------


def test_mask_label_out_of_range(broden):
    root, rows = broden
    rel = rows[4]["cells"]["material"]
    bad = np.full((SH, SW), 777, np.int32)
    _write_mask(root / "images" / rel, bad, np.random.default_rng(1))
    source = BrodenSource(root)
    with pytest.raises(DataError) as info:
        source[4]
    msg = str(info.value)
    assert "index.csv line 6, column 'material'" in msg and rel in msg and "777" in msg
    with pytest.raises(DataError, match="777"):
        source.validate(progress=False)


def test_mask_size_mismatch(broden):
    root, rows = broden
    rel = rows[0]["cells"]["color"]
    _write_mask(root / "images" / rel, np.ones((SH + 1, SW), np.int32), np.random.default_rng(2))
    with pytest.raises(DataError) as info:
        BrodenSource(root)[0]
    msg = str(info.value)
    assert rel in msg and f"is {SH + 1}x{SW}" in msg and f"sh x sw is {SH}x{SW}" in msg


def test_image_size_mismatch(broden):
    root, rows = broden
    Image.new("RGB", (IW, IH + 2)).save(root / "images" / rows[3]["image"])
    with pytest.raises(DataError, match=rf"pascal/p1\.png' is {IH + 2}x{IW}.*ih x iw is {IH}x{IW}"):
        BrodenSource(root)[3]


def test_greyscale_mask_refused(broden):
    root, rows = broden
    rel = rows[0]["cells"]["color"]
    Image.new("L", (SW, SH)).save(root / "images" / rel)
    with pytest.raises(DataError, match="mode 'L'"):
        BrodenSource(root)[0]


def test_missing_and_corrupt_masks_raise_or_skip(broden):
    root, rows = broden
    part0, part1 = rows[0]["cells"]["part"].split(";")
    (root / "images" / part1).unlink()
    (root / "images" / rows[4]["cells"]["color"]).write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    source = BrodenSource(root)
    with pytest.raises(DataError, match=rf"line 2, column 'part'.*{part1}.*does not exist"):
        source[0]
    with pytest.raises(DataError, match="corrupt or not a PNG"):
        source[4]
    with pytest.raises(DataError, match=r"does not exist"):
        BrodenSource(root, check_files=True)

    skipping = BrodenSource(root, on_error="skip")
    sample = skipping[0]
    assert sample["pixel"]["part"].shape == (1, SH, SW)  # the good layer stays
    np.testing.assert_array_equal(sample["pixel"]["part"][0], rows[0]["pixel"]["part"][0])
    assert "color" not in skipping[4]["pixel"] and "material" in skipping[4]["pixel"]
    assert len(skipping.skipped) == 2 and part1 in skipping.skipped[0]

    with pytest.raises(DataError, match=part1):
        validate(root, progress=False)
    summary = validate(root, on_error="skip", progress=False)
    assert summary["skipped"] == 2 and len(summary["errors"]) == 2
    text = format_summary(summary)
    assert "skipped (bad files): 2" in text and part1 in text


def test_missing_image(broden):
    root, rows = broden
    (root / "images" / rows[2]["image"]).unlink()
    with pytest.raises(DataError, match=r"line 4, column 'image'.*dtd/d1\.jpg.*does not exist"):
        BrodenSource(root, on_error="skip")[2]  # images always raise


# --- unsafe paths: refused before anything is opened -----------------------------------


@pytest.fixture
def open_spy(monkeypatch):
    """Record every path given to PIL.Image.open."""
    opened: list[str] = []
    real_open = Image.open

    def spy(fp, *args, **kwargs):
        opened.append(os.fspath(fp) if isinstance(fp, (str, os.PathLike)) else repr(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    return opened


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    _write_mask(secret, np.zeros((SH, SW), np.int32), np.random.default_rng(3))
    return secret


def test_dotdot_path_refused(broden, tmp_path, open_spy):
    root, _ = broden
    _secret(tmp_path)
    _set_cell(root, 0, "color", "../../outside/secret.png")
    with pytest.raises(
        DataError, match=r"line 2, column 'color'.*'\.\./\.\./outside/secret\.png'.*'\.\.'"
    ):
        BrodenSource(root)
    _set_cell(root, 0, "color", "")
    _set_cell(root, 0, "image", "ade20k/../../../outside/secret.png")
    with pytest.raises(DataError, match=r"line 2, column 'image'"):
        BrodenSource(root)
    assert not any("secret" in p for p in open_spy)


def test_absolute_path_refused(broden, tmp_path, open_spy):
    root, _ = broden
    secret = _secret(tmp_path)
    _set_cell(root, 3, "object", str(secret))
    with pytest.raises(DataError, match=r"line 5, column 'object': absolute file path"):
        BrodenSource(root)
    _set_cell(root, 3, "object", "C:\\data\\x.png")
    with pytest.raises(DataError, match="line 5, column 'object'"):
        BrodenSource(root)
    assert not any("secret" in p for p in open_spy)


def test_symlink_escape_refused_and_never_opened(broden, tmp_path, open_spy):
    root, rows = broden
    secret = _secret(tmp_path)
    link = root / "images" / "ade20k" / "link.png"
    link.symlink_to(secret)
    _set_cell(root, 0, "color", "ade20k/link.png")
    source = BrodenSource(root)  # parsing opens nothing
    with pytest.raises(DataError, match=r"line 2, column 'color'.*symbolic link.*outside images/"):
        source[0]
    with pytest.raises(DataError, match="symbolic link"):
        BrodenSource(root, on_error="raise", check_files=True)
    skipping = BrodenSource(root, on_error="skip")
    assert "color" not in skipping[0]["pixel"] and len(skipping.skipped) == 1
    summary = validate(root, on_error="skip", progress=False)
    assert summary["skipped"] == 1
    # a linked folder on the way out is caught the same way
    (root / "images" / "out").symlink_to(secret.parent, target_is_directory=True)
    _set_cell(root, 0, "color", "out/secret.png")
    with pytest.raises(DataError, match="symbolic link"):
        BrodenSource(root)[0]
    assert open_spy, "the spy must see the ordinary reads"
    assert not any("secret" in p or "link.png" in p or "/out/" in p for p in open_spy)


def test_symlink_inside_images_allowed(broden):
    root, rows = broden
    (root / "images" / "ade20k" / "alias.png").symlink_to(root / "images" / rows[0]["image"])
    _set_cell(root, 0, "image", "ade20k/alias.png")
    np.testing.assert_array_equal(BrodenSource(root)[0]["image"], rows[0]["expected_image"])


def test_images_folder_may_be_a_link(tmp_path):
    real = tmp_path / "real"
    rows = write_broden(real)
    root = tmp_path / "linked"
    root.mkdir()
    for f in real.iterdir():
        if f.name != "images":
            (root / f.name).write_bytes(f.read_bytes())
    (root / "images").symlink_to(real / "images", target_is_directory=True)
    _check_round_trip(BrodenSource(root, check_files=True), rows)


def test_on_error_and_primary_arguments_checked(broden):
    root, _ = broden
    with pytest.raises(InputError, match="on_error"):
        BrodenSource(root, on_error="ignore")
    with pytest.raises(InputError, match="primary"):
        BrodenSource(root, primary="frequency")
    with pytest.raises(InputError, match="on_error"):
        BrodenSource(root).validate(on_error="warn")
