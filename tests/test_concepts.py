"""Tests of the embedded concept set generator (cnnvis_jax.data.concepts)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from cnnvis_jax.data import concepts, shapes, textures
from cnnvis_jax.data.concepts import (
    CLASS_NAMES,
    COLOR_NAMES,
    FACETS,
    PART_NAMES,
    PIXEL_CATEGORIES,
    SCENE_CLASS_NAMES,
    SCENE_NAMES,
    TEXTURE_NAMES,
    ConceptSet,
    concept_vocabulary,
    generate_batch,
)
from cnnvis_jax.data.types import Vocabulary
from cnnvis_jax.errors import InputError


@pytest.fixture(scope="module")
def big():
    """1200 training images at 64x64 (generated once for the statistics tests)."""
    return generate_batch(0, "train", np.arange(1200), 64)


def _same(a: dict, b: dict, i: int, j: int) -> bool:
    if not np.array_equal(a["image"][i], b["image"][j]):
        return False
    if any(not np.array_equal(a["pixel"][c][i], b["pixel"][c][j]) for c in PIXEL_CATEGORIES):
        return False
    return bool(
        a["scalar"]["scene"][i, 0] == b["scalar"]["scene"][j, 0]
        and a["object_class"][i] == b["object_class"][j]
        and a["facet"][i] == b["facet"][j]
    )


# ----------------------------------------------------------------------------- contract


def test_vocabulary_numbering_and_names():
    vocab = concept_vocabulary()
    assert isinstance(vocab, Vocabulary)
    numbers = [lab.number for lab in vocab.labels]
    assert numbers == list(range(1, len(numbers) + 1))
    names = [lab.name for lab in vocab.labels]
    assert len(set(names)) == len(names)
    assert vocab.categories == ("object", "scene", "part", "texture", "color")
    colors = vocab.in_category("color")
    assert [lab.number for lab in colors] == list(range(1, 12))
    assert [lab.name for lab in colors] == list(COLOR_NAMES)
    assert all(name.endswith("-c") for name in COLOR_NAMES) and len(COLOR_NAMES) == 11
    assert all(lab.name.endswith("-s") for lab in vocab.in_category("scene"))
    assert len(vocab.in_category("scene")) == len(SCENE_NAMES) >= 5
    objects = {lab.name for lab in vocab.in_category("object")}
    assert set(CLASS_NAMES) <= objects and {"sky", "wall", "floor", "water", "road"} <= objects
    assert len(CLASS_NAMES) >= 10 and len(TEXTURE_NAMES) >= 6
    assert {lab.name for lab in vocab.in_category("part")} == set(PART_NAMES)
    assert all(len(FACETS[c]) >= 2 for c in CLASS_NAMES)
    assert vocab.by_name("street-s").category == "scene"


def test_sample_and_batch_contract():
    src = ConceptSet(10, split="val", seed=3)
    assert len(src) == 10 and src.image_size == 64 and src.class_names == CLASS_NAMES
    assert src.vocabulary is concept_vocabulary()
    s = src[4]
    assert set(s) == {"image", "pixel", "scalar", "target", "index"}
    assert s["image"].shape == (64, 64, 3) and s["image"].dtype == np.uint8
    assert set(s["pixel"]) == set(PIXEL_CATEGORIES)
    for m in s["pixel"].values():
        assert m.shape == (1, 64, 64) and m.dtype == np.int32
    (scene,) = s["scalar"]["scene"]
    assert isinstance(scene, int) and concept_vocabulary().label(scene).category == "scene"
    assert s["index"] == 4 and 0 <= s["target"] < len(CLASS_NAMES)
    b = src.batch(np.array([4, 1]))
    assert b["image"].shape == (2, 64, 64, 3) and b["image"].dtype == np.uint8
    assert b["target"].shape == (2,) and b["target"].dtype == np.int32
    assert b["scalar"]["scene"].shape == (2, 1) and b["scalar"]["scene"].dtype == np.int32
    for m in b["pixel"].values():
        assert m.shape == (2, 1, 64, 64) and m.dtype == np.int32
    assert np.array_equal(b["image"][0], s["image"]) and b["target"][0] == s["target"]
    assert src.batch([])["image"].shape == (0, 64, 64, 3)


@pytest.mark.parametrize("size", [32, 37, 100])
def test_other_image_sizes(size):
    out = ConceptSet(6, image_size=size).batch(np.arange(6))
    assert out["image"].shape == (6, size, size, 3)
    assert out["pixel"]["object"].shape == (6, 1, size, size)
    assert (out["pixel"]["object"] > 0).all() and (out["pixel"]["color"] > 0).all()


def test_bad_arguments():
    with pytest.raises(InputError, match="0..9"):
        ConceptSet(10)[10]
    with pytest.raises(InputError, match="0..9"):
        ConceptSet(10).batch([3, -1])
    with pytest.raises(InputError):
        ConceptSet(10)["a"]
    with pytest.raises(InputError):
        ConceptSet(10).batch([[1, 2]])
    with pytest.raises(InputError, match="split"):
        ConceptSet(10, split="training")
    with pytest.raises(InputError, match="target"):
        ConceptSet(10, target="class")
    with pytest.raises(InputError, match="image_size"):
        ConceptSet(10, image_size=16)
    with pytest.raises(InputError, match="size"):
        ConceptSet(-1)
    with pytest.raises(InputError, match="seed"):
        ConceptSet(3, seed=-2)
    with pytest.raises(InputError):
        generate_batch(0, "train", np.array([0.5]))


# ----------------------------------------------------------------------------- determinism


def test_same_image_whatever_the_batch():
    a = generate_batch(7, "train", np.array([3, 150, 9, 40]))
    b = generate_batch(7, "train", np.array([40, 9]))
    c = generate_batch(7, "train", np.arange(160))  # several rasterization chunks
    assert _same(a, b, 3, 0) and _same(a, b, 2, 1)
    for i, j in ((0, 3), (1, 150), (2, 9), (3, 40)):
        assert _same(a, c, i, j)
    single = ConceptSet(200, seed=7)[150]
    assert np.array_equal(single["image"], a["image"][1])


def test_seeds_and_splits_differ():
    idx = np.arange(8)
    a = generate_batch(0, "train", idx)
    b = generate_batch(1, "train", idx)
    v = generate_batch(0, "val", idx)
    for other in (b, v):
        assert sum(np.array_equal(a["image"][i], other["image"][i]) for i in idx) == 0


# sha256 prefixes of generate_batch(0, "train", [0, 1, 12345], 64) images and masks,
# the first two uniforms of two keys, and the 64x64 texture atlas.
GOLDEN = ("e7b2e256bcf0fa36", "d35bfd04e4768576")
GOLDEN_UNIFORMS = [[0.175415616018, 0.473215822114], [0.816530253276, 0.182774111101]]
GOLDEN_ATLAS = "7b74868f4d772b05"


def test_golden_values():
    """The images are a function of (seed, split, index) only: pinned here so that a
    change of the generator (or a platform difference) is noticed."""
    out = generate_batch(0, "train", np.array([0, 1, 12345]), 64)
    digest = hashlib.sha256(out["image"].tobytes()).hexdigest()[:16]
    labels = hashlib.sha256(
        b"".join(out["pixel"][c].tobytes() for c in PIXEL_CATEGORIES)
    ).hexdigest()[:16]
    assert (digest, labels) == GOLDEN
    keys = textures.stream_keys(0, 0, np.array([0, 5]))
    assert textures.uniforms(keys, 0, 2).round(12).tolist() == GOLDEN_UNIFORMS
    atlas = hashlib.sha256(textures.texture_atlas(64).tobytes()).hexdigest()[:16]
    assert atlas == GOLDEN_ATLAS


def test_stream_refill_matches_direct_values():
    keys = textures.stream_keys(5, 1, np.array([42]))
    direct = textures.uniforms(keys, 0, 300)[0].tolist()
    stream = shapes.Stream(keys, textures.uniforms(keys, 0, 10)[0].tolist())
    assert [stream.u() for _ in range(300)] == direct


# ----------------------------------------------------------------------------- masks


def _reference_top(geo: np.ndarray, size: int) -> np.ndarray:
    """Topmost primitive of every pixel by direct point-in-shape tests."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    top = np.full((size, size), -1)
    for k, g in enumerate(geo):
        kind, x0, y0, x1, y1 = g[:5]
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        dx, dy = (xx - cx) / rx, (yy - cy) / ry
        if kind == shapes.RECT:
            inside = (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
        elif kind == shapes.ELLIPSE:
            inside = dx * dx + dy * dy <= 1
        else:
            inside = (np.abs(dy) <= 1) & (dx**4 + dy**4 <= 1)
        vx, vy = g[5::2], g[6::2]
        mx, my = vx.mean(), vy.mean()
        for i in range(4):
            j = (i + 1) % 4
            a, b = vy[j] - vy[i], vx[i] - vx[j]
            c = -(a * vx[i] + b * vy[i])
            if a * mx + b * my + c > 0:
                a, b, c = -a, -b, -c
            inside &= a * xx + b * yy + c <= 0
        top[inside] = k
    return top


def test_rasterizer_matches_point_in_shape_reference():
    rng = np.random.default_rng(0)
    size = 40
    for trial in range(30):
        prims = [shapes._rect(0, 0.0, 0.0, 1.0, 1.0)]
        for _ in range(12):
            kind = rng.integers(4)
            u0, v0 = rng.uniform(-0.2, 0.8, 2)
            u1, v1 = u0 + rng.uniform(0.05, 0.6), v0 + rng.uniform(0.05, 0.6)
            if kind == 3:  # convex polygon: triangle or quadrilateral around a centre
                n = 3 + rng.integers(2)
                ang = np.sort(rng.uniform(0, 2 * np.pi, n))
                r = rng.uniform(0.05, 0.4)
                cu, cv = rng.uniform(0, 1, 2)
                pts = [v for a in ang for v in (cu + r * np.cos(a), cv + r * np.sin(a))]
                prims.append(shapes._poly(0, *pts))
            elif kind == 2 and rng.random() < 0.5:  # clipped ellipse
                cut = rng.uniform(v0, v1)
                prims.append(
                    shapes._clip_ell(
                        0,
                        (u0 + u1) / 2,
                        (v0 + v1) / 2,
                        (u1 - u0) / 2,
                        (v1 - v0) / 2,
                        -1,
                        -1,
                        2,
                        -1,
                        2,
                        cut,
                        -1,
                        cut,
                    )
                )
            else:
                prims.append(shapes._rect(0, u0, v0, u1, v1, int(kind) % 3))
        frame = (0.0, 0.0, 1.0, 1.0, float(trial % 2))
        params = [
            {
                "prims": prims,
                "prim_ent": list(range(len(prims))),
                "frames": [frame],
                "prim_frame": [0] * len(prims),
                "ents": [(0, -1, k % 11, 0, 0, 0, 0, k) for k in range(len(prims))],
            }
        ]
        out = {
            "image": np.empty((1, size, size, 3), np.uint8),
            "pixel": {c: np.empty((1, 1, size, size), np.int32) for c in PIXEL_CATEGORIES},
            "instance": np.empty((1, size, size), np.int32),
        }
        concepts._rasterize(params, size, out, 0)
        arr = np.array([p[1:] for p in prims])
        geo = concepts._pixel_geometry(arr, np.tile(frame, (len(prims), 1)), size)
        np.testing.assert_array_equal(out["instance"][0], _reference_top(geo, size))


def test_colour_mask_names_the_pixel_colour(big):
    color = big["pixel"]["color"][:, 0]
    named = textures.nearest_color(big["image"][:60]) + 1
    np.testing.assert_array_equal(named, color[:60])
    assert (color > 0).all()


def test_objects_are_made_of_parts_and_regions_label_the_rest(big):
    vocab = concept_vocabulary()
    obj, part = big["pixel"]["object"][:, 0], big["pixel"]["part"][:, 0]
    inst = big["instance"]
    classes = np.array([vocab.by_name(n).number for n in CLASS_NAMES])
    on_object = inst > 0
    assert (part[on_object] > 0).all()  # every visible object pixel has a part
    assert np.isin(obj[on_object], classes).all()
    assert not np.isin(obj[~on_object], classes).any()  # background regions
    # on the background only building windows carry a part
    window = vocab.by_name("window").number
    building = vocab.by_name("building").number
    bg_parts = part[~on_object]
    assert np.isin(bg_parts, [0, window]).all()
    assert (obj[~on_object][bg_parts == window] == building).all()
    # the main object (instance 1) carries the target class
    main_class = np.array([np.bincount(o[i == 1]).argmax() for o, i in zip(obj, inst)])
    np.testing.assert_array_equal(main_class, classes[big["object_class"]])


def test_main_object_is_the_largest_visible(big):
    counts = np.stack([(big["instance"] == k).sum((1, 2)) for k in range(1, 5)], axis=1)
    assert (counts[:, 0] > counts[:, 1:].max(axis=1)).all()
    assert counts[:, 0].min() >= 0.05 * 64 * 64
    assert (counts[:, 1:] > 0).any(axis=1).mean() > 0.4  # many images have others
    assert (counts[:, 3] == 0).all()  # at most three objects


def test_textures_show_in_the_image(big):
    """Solid parts have one colour value; textured regions vary."""
    solid_checked = textured_checked = 0
    for n in range(150):
        img = big["image"][n].reshape(-1, 3)
        tex = big["pixel"]["texture"][n, 0].reshape(-1)
        part = big["pixel"]["part"][n, 0].reshape(-1)
        inst = big["instance"][n].reshape(-1)
        for k in range(1, inst.max() + 1):
            for p in np.unique(part[inst == k]):
                sel = (inst == k) & (part == p)
                t = np.unique(tex[sel])
                assert len(t) == 1  # one fill per part
                values = np.unique(img[sel], axis=0)
                if t[0] == 0:
                    assert len(values) == 1
                    solid_checked += 1
        for t in np.unique(tex):
            name = concept_vocabulary().label(int(t)).name if t else "solid"
            sel = tex == t
            if t and name != "blotchy" and sel.sum() >= 150:
                assert len(np.unique(img[sel], axis=0)) >= 2
                textured_checked += 1
    assert solid_checked > 50 and textured_checked > 50


def test_masks_are_single_layer_and_cover_the_image(big):
    for c in PIXEL_CATEGORIES:
        assert big["pixel"][c].shape[1] == 1
    assert (big["pixel"]["object"] > 0).all() and (big["pixel"]["color"] > 0).all()
    vocab = concept_vocabulary()
    for c in PIXEL_CATEGORIES:
        allowed = [0] + [lab.number for lab in vocab.in_category(c)]
        assert np.isin(big["pixel"][c], allowed).all()


def test_occlusion_later_objects_cover_earlier():
    """A front object's pixels are labelled with it, not with what it hides."""
    out = generate_batch(0, "train", np.arange(400))
    params_front = 0
    for n in range(400):
        keys = textures.stream_keys(0, 0, np.array([n]))
        p = shapes.draw_image(shapes.Stream(keys, textures.uniforms(keys, 0, 160)[0].tolist()), 64)
        inst_of_prim = [p["ents"][e][7] for e in p["prim_ent"]]
        if inst_of_prim[-1] > 1:  # an object drawn after the main one
            params_front += 1
            assert (out["instance"][n] == inst_of_prim[-1]).any()
    assert params_front > 20


# ----------------------------------------------------------------------------- statistics


def _chi2(table: np.ndarray) -> tuple[float, int]:
    table = table[table.sum(1) > 0][:, table.sum(0) > 0].astype(float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum()), (table.shape[0] - 1) * (
        table.shape[1] - 1
    )


def test_everything_appears(big):
    vocab = concept_vocabulary()
    assert (np.bincount(big["object_class"], minlength=len(CLASS_NAMES)) > 50).all()
    assert (np.bincount(big["scene_class"], minlength=len(SCENE_NAMES)) > 80).all()
    for c in PIXEL_CATEGORIES:
        present = np.unique(big["pixel"][c])
        missing = [lab.name for lab in vocab.in_category(c) if lab.number not in present]
        assert not missing, (c, missing)
    scenes = set(big["scalar"]["scene"][:, 0].tolist())
    assert scenes == {lab.number for lab in vocab.in_category("scene")}
    for k, cls in enumerate(CLASS_NAMES):
        facets = set(big["facet"][big["object_class"] == k].tolist())
        assert facets == set(range(len(FACETS[cls])))


def test_colour_and_texture_independent_of_class(big):
    """Dominant colour and texture of the main object vs its class: chi-square stays
    far below its 0.1% critical value (~df + 3.1 sqrt(2 df)) for independent draws."""
    inst = big["instance"]
    cls = big["object_class"]
    for cat in ("color", "texture"):
        m = big["pixel"][cat][:, 0]
        dominant = np.array([np.bincount(x[i == 1]).argmax() for x, i in zip(m, inst)])
        labels = np.unique(dominant)
        table = np.zeros((len(CLASS_NAMES), len(labels)), int)
        np.add.at(table, (cls, np.searchsorted(labels, dominant)), 1)
        stat, df = _chi2(table)
        assert stat < df + 3.1 * np.sqrt(2 * df), (cat, stat, df)
        assert len(labels) >= (11 if cat == "color" else 10)
    # ...while the scene does depend on the background layout
    obj = big["pixel"]["object"][:, 0]
    sky = concept_vocabulary().by_name("sky").number
    has_sky = (obj == sky).any(axis=(1, 2))
    indoor = np.isin(
        big["scene_class"], [SCENE_NAMES.index("living_room-s"), SCENE_NAMES.index("corridor-s")]
    )
    assert not has_sky[indoor].any() and has_sky[~indoor].all()


def test_scene_target():
    obj = ConceptSet(20, seed=4)
    scn = ConceptSet(20, seed=4, target="scene")
    assert scn.class_names == SCENE_CLASS_NAMES
    a, b = obj.batch(np.arange(20)), scn.batch(np.arange(20))
    assert np.array_equal(a["image"], b["image"])
    vocab = concept_vocabulary()
    names = [vocab.label(int(n)).name for n in b["scalar"]["scene"][:, 0]]
    assert [SCENE_CLASS_NAMES[t] + "-s" for t in b["target"]] == names
