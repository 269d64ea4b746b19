"""Scene layouts and object templates of the concept set (parameters only, no pixels).

A scene is a list of *primitives* drawn in order (later ones cover earlier ones).
Every primitive belongs to one *entity*: a background region (``sky``, ``road``...) or
one part of one object (the ``roof`` of a house). An entity carries the labels and
the look (colour, fill variant, texture offset, brightness jitter) shared by all its
primitives, so a part built from several primitives is seamless.

A primitive is a convex shape in a *frame* (an axis-aligned box of the image, possibly
mirrored left-right), in frame coordinates ``u`` (right) and ``v`` (down) in [0, 1]::

    (part, shape, u0, v0, u1, v1, x0, y0, x1, y1, x2, y2, x3, y3)

``shape`` fills the box ``[u0, u1] x [v0, v1]`` as a rectangle (``RECT``), an inscribed
ellipse (``ELLIPSE``) or a rounded rectangle (``ROUND``, a superellipse of power 4);
the four vertices, when not all zero, add a convex polygon the shape is clipped to
(triangles repeat their last vertex). A pure polygon is a ``RECT`` over its bounding box.

Object classes have several *facets* (distinct looks: a car from the side or the
front, a round or conical tree...). Every visible pixel of an object belongs to one of
its parts. Thin or tiny parts (``small``) are always solid-filled.

Everything is drawn from a :class:`Stream` of uniforms, so the parameters of image
``i`` depend only on its key.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from cnnvis_jax.data import textures

RECT, ELLIPSE, ROUND = 0, 1, 2
_NOV = (0.0,) * 8

CLASS_NAMES = (
    "airplane", "bird", "boat", "car", "chair", "fish",
    "flower", "house", "lamp", "mushroom", "person", "tree",
)  # fmt: skip
"""Object classes: the training targets (target = index in this tuple)."""

REGION_NAMES = (
    "sky", "grass", "ground", "water", "mountain", "building",
    "sidewalk", "road", "wall", "floor", "ceiling",
)  # fmt: skip
"""Background regions; object-category labels as in Broden."""

OBJECT_NAMES = CLASS_NAMES + REGION_NAMES

PART_NAMES = (
    "fuselage", "wing", "tail", "window", "engine",  # airplane
    "body", "head", "beak", "leg",  # bird (+ wing, tail)
    "hull", "mast", "sail", "cabin",  # boat (+ window)
    "wheel", "headlight",  # car (+ body, window)
    "seat", "back",  # chair (+ leg)
    "fin", "eye",  # fish (+ body, tail)
    "petal", "center", "stem", "leaf",  # flower
    "facade", "roof", "door", "chimney",  # house (+ window)
    "shade", "pole", "base", "cord", "bulb",  # lamp
    "cap", "spot",  # mushroom (+ stem)
    "torso", "arm", "hair",  # person (+ head, leg)
    "crown", "trunk",  # tree
)  # fmt: skip
"""Part labels (shared across classes where the name is shared)."""

SCENE_NAMES = (
    "field-s", "desert-s", "coast-s", "mountain-s",
    "street-s", "living_room-s", "corridor-s",
)  # fmt: skip
"""Scenes (image-level labels, Broden's ``-s`` suffix), by background layout."""

FACETS = {
    "airplane": ("side", "top"),
    "bird": ("perched", "flying"),
    "boat": ("sailboat", "motorboat"),
    "car": ("side", "front"),
    "chair": ("side", "front"),
    "fish": ("round", "long"),
    "flower": ("daisy", "tulip", "four-petal"),
    "house": ("gabled", "chimney", "tower"),
    "lamp": ("floor", "table", "pendant"),
    "mushroom": ("round-cap", "conical-cap"),
    "person": ("standing", "arms-up"),
    "tree": ("round", "conical", "clustered"),
}
"""Facet names of each class (``facet`` outputs index these tuples)."""

_PART = {name: i for i, name in enumerate(PART_NAMES)}
_REGION = {name: len(CLASS_NAMES) + i for i, name in enumerate(REGION_NAMES)}


class Stream:
    """Sequential uniforms in [0, 1) of one image's key.

    Starts from precomputed ``values`` (values 0..n-1 of the key's stream) and draws
    more from the same stream when they run out; ``u()`` returns the next one.
    """

    __slots__ = ("u",)

    def __init__(self, key: np.ndarray, values: list[float]):
        self.u = itertools.chain(values, self._more(key, len(values))).__next__

    @staticmethod
    def _more(key: np.ndarray, start: int):
        while True:
            yield from textures.uniforms(key, start, 64)[0].tolist()
            start += 64

    def uni(self, a: float, b: float) -> float:
        return a + (b - a) * self.u()

    def idx(self, n: int) -> int:
        return int(self.u() * n)

    def pick(self, seq):
        return seq[int(self.u() * len(seq))]

    def chance(self, p: float) -> bool:
        return self.u() < p


# ----------------------------------------------------------------------------- helpers


def _rect(p, u0, v0, u1, v1, shape=RECT):
    return (p, shape, u0, v0, u1, v1) + _NOV


def _ell(p, cu, cv, ru, rv):
    return (p, ELLIPSE, cu - ru, cv - rv, cu + ru, cv + rv) + _NOV


def _poly(p, *pts):
    xs, ys = pts[0::2], pts[1::2]
    if len(pts) == 6:
        pts = pts + pts[4:6]
    return (p, RECT, min(xs), min(ys), max(xs), max(ys)) + tuple(pts)


def _clip_ell(p, cu, cv, ru, rv, *pts):
    if len(pts) == 6:
        pts = pts + pts[4:6]
    return (p, ELLIPSE, cu - ru, cv - rv, cu + ru, cv + rv) + tuple(pts)


# Parts of a template: (part name, parent part index or -1, small).
# A part's colour differs from its parent's (so it stays visible on it).

# ----------------------------------------------------------------------------- classes
# Each template takes (stream, facet) and returns (aspect w/h, parts, primitives),
# primitives in drawing order in frame coordinates.


def _airplane(r: Stream, facet: int):
    if facet == 0:  # side view
        parts = (
            ("fuselage", -1, False),
            ("wing", 0, False),
            ("tail", 0, False),
            ("window", 0, True),
            ("engine", 1, True),
        )
        fin = r.uni(0.02, 0.1)
        prims = [
            _poly(2, 0.03, 0.56, 0.22, 0.56, 0.06, fin),
            _ell(0, 0.5, 0.56, 0.49, 0.13),
            _poly(2, 0.02, 0.58, 0.18, 0.58, 0.05, 0.7),
        ]
        n_windows = 3 + r.idx(4)
        for k in range(n_windows):
            cu = 0.58 + 0.07 * k
            prims.append(_ell(3, cu, 0.5, 0.018, 0.045))
        sweep = r.uni(0.0, 0.08)
        prims.append(_poly(1, 0.38, 0.6, 0.6, 0.6, 0.47 - sweep, 0.93, 0.37 - sweep, 0.93))
        prims.append(_ell(4, 0.53, 0.78, 0.05, 0.07))
        return 2.6, parts, prims
    parts = (
        ("fuselage", -1, False),
        ("wing", 0, False),
        ("tail", 0, False),
        ("window", 0, True),
        ("engine", 1, True),
    )
    sweep = r.uni(0.0, 0.12)
    root, tip = 0.34, 0.5 + sweep
    prims = [
        _poly(1, 0.5, root, 0.5, root + 0.2, 0.02, tip + 0.07, 0.02, tip),
        _poly(1, 0.5, root, 0.5, root + 0.2, 0.98, tip + 0.07, 0.98, tip),
        _poly(2, 0.5, 0.83, 0.5, 0.93, 0.31, 0.97, 0.31, 0.92),
        _poly(2, 0.5, 0.83, 0.5, 0.93, 0.69, 0.97, 0.69, 0.92),
        _ell(0, 0.5, 0.5, 0.075, 0.49),
        _ell(3, 0.5, 0.08, 0.035, 0.035),
        _ell(4, 0.3, tip - 0.05, 0.035, 0.07),
        _ell(4, 0.7, tip - 0.05, 0.035, 0.07),
    ]
    return 1.0, parts, prims


def _bird(r: Stream, facet: int):
    parts = (
        ("body", -1, False),
        ("head", 0, False),
        ("beak", 1, True),
        ("wing", 0, False),
        ("tail", 0, False),
        ("leg", 0, True),
    )
    if facet == 0:  # perched
        a = 0.9
        hr = r.uni(0.12, 0.15)
        prims = [
            _rect(5, 0.4, 0.7, 0.44, 0.98),
            _rect(5, 0.53, 0.7, 0.57, 0.98),
            _poly(4, 0.3, 0.5, 0.36, 0.66, 0.03, 0.92),
            _ell(0, 0.5, 0.56, 0.3, 0.2),
            _ell(1, 0.74, 0.33, hr / a, hr),
            _poly(2, 0.74 + hr / a - 0.02, 0.28, 0.74 + hr / a - 0.02, 0.38, 1.0, 0.33),
            _ell(3, 0.45, 0.55, 0.22, 0.1),
        ]
        return a, parts, prims
    a = 1.5  # flying
    up = r.uni(0.0, 0.1)
    prims = [
        _poly(3, 0.38, 0.5, 0.58, 0.5, 0.34, 0.02 + up),
        _poly(4, 0.26, 0.5, 0.0, 0.4, 0.0, 0.68),
        _ell(0, 0.48, 0.55, 0.3, 0.14),
        _ell(1, 0.8, 0.47, 0.12 / a, 0.12),
        _poly(2, 0.86, 0.42, 0.86, 0.51, 1.0, 0.47),
        _poly(3, 0.42, 0.6, 0.6, 0.6, 0.64, 0.98 - up),
    ]
    return a, parts, prims


def _boat(r: Stream, facet: int):
    if facet == 0:  # sailboat
        parts = (("hull", -1, False), ("mast", 0, True), ("sail", 1, False))
        boom = r.uni(0.66, 0.72)
        prims = [
            _rect(1, 0.485, 0.03, 0.515, boom + 0.04),
            _poly(2, 0.53, r.uni(0.04, 0.1), 0.53, boom, r.uni(0.86, 0.96), boom),
            _poly(2, 0.47, r.uni(0.12, 0.22), 0.47, boom, r.uni(0.08, 0.2), boom),
            _poly(0, 0.0, boom + 0.02, 1.0, boom + 0.02, 0.84, 0.97, 0.16, 0.97),
        ]
        return 0.95, parts, prims
    parts = (("hull", -1, False), ("cabin", 0, False), ("window", 1, True))
    top = r.uni(0.25, 0.35)
    prims = [
        _rect(1, 0.22, top, 0.62, 0.68, ROUND),
        _rect(2, 0.28, top + 0.1, 0.38, top + 0.22),
        _rect(2, 0.46, top + 0.1, 0.56, top + 0.22),
        _poly(0, 0.0, 0.56, 1.0, 0.5, 0.9, 0.95, 0.1, 0.95),
    ]
    return 1.8, parts, prims


def _car(r: Stream, facet: int):
    parts = (("body", -1, False), ("window", 0, False), ("wheel", 0, False), ("headlight", 0, True))
    if facet == 0:  # side view
        a = 2.0
        roof = r.uni(0.06, 0.14)
        wr = r.uni(0.15, 0.19)
        prims = [
            _rect(0, 0.0, 0.4, 1.0, 0.8, ROUND),
            _poly(0, 0.18, 0.42, 0.8, 0.42, 0.66, roof, 0.3, roof),
            _poly(1, 0.27, 0.4, 0.47, 0.4, 0.47, roof + 0.07, 0.33, roof + 0.07),
            _poly(1, 0.51, 0.4, 0.72, 0.4, 0.63, roof + 0.07, 0.51, roof + 0.07),
            _ell(2, 0.22, 0.8, wr / a, wr),
            _ell(2, 0.78, 0.8, wr / a, wr),
            _ell(3, 0.965, 0.52, 0.025, 0.06),
        ]
        return a, parts, prims
    a = 1.2  # front view
    roof = r.uni(0.04, 0.12)
    prims = [
        _rect(2, 0.1, 0.75, 0.26, 0.98),
        _rect(2, 0.74, 0.75, 0.9, 0.98),
        _rect(0, 0.04, 0.38, 0.96, 0.82, ROUND),
        _poly(0, 0.12, 0.4, 0.88, 0.4, 0.76, roof, 0.24, roof),
        _poly(1, 0.18, 0.38, 0.82, 0.38, 0.72, roof + 0.06, 0.28, roof + 0.06),
        _ell(3, 0.2, 0.56, 0.07 / a, 0.07),
        _ell(3, 0.8, 0.56, 0.07 / a, 0.07),
    ]
    return a, parts, prims


def _chair(r: Stream, facet: int):
    parts = (("seat", -1, False), ("back", 0, False), ("leg", 0, True))
    seat = r.uni(0.44, 0.52)
    if facet == 0:  # side view
        prims = [
            _rect(1, 0.1, 0.0, 0.24, seat + 0.05),
            _rect(2, 0.12, seat + 0.06, 0.2, 1.0),
            _rect(2, 0.8, seat + 0.06, 0.88, 1.0),
            _rect(0, 0.08, seat, 0.92, seat + 0.12),
        ]
        return 0.7, parts, prims
    prims = [
        _rect(2, 0.1, seat + 0.08, 0.18, 1.0),
        _rect(2, 0.82, seat + 0.08, 0.9, 1.0),
        _rect(1, 0.14, 0.0, 0.86, seat + 0.04, ROUND),
        _rect(0, 0.04, seat, 0.96, seat + 0.14),
    ]
    return 0.8, parts, prims


def _fish(r: Stream, facet: int):
    parts = (("body", -1, False), ("tail", 0, False), ("fin", 0, True), ("eye", 0, True))
    if facet == 0:  # round
        a = 1.4
        spread = r.uni(0.1, 0.2)
        prims = [
            _poly(1, 0.7, 0.5, 1.0, spread, 1.0, 1.0 - spread),
            _poly(2, 0.28, 0.3, 0.58, 0.3, 0.36, r.uni(0.0, 0.06)),
            _poly(2, 0.34, 0.7, 0.55, 0.7, 0.42, 0.93),
            _ell(0, 0.4, 0.5, 0.38, 0.36),
            _ell(3, 0.2, 0.42, 0.06 / a, 0.06),
        ]
        return a, parts, prims
    a = 2.8  # long
    prims = [
        _poly(1, 0.8, 0.5, 1.0, 0.2, 1.0, 0.8),
        _poly(2, 0.3, 0.4, 0.72, 0.4, 0.55, r.uni(0.05, 0.15)),
        _ell(0, 0.43, 0.5, 0.43, 0.2),
        _ell(3, 0.1, 0.45, 0.07 / a, 0.07),
    ]
    return a, parts, prims


# unit-circle directions (cos, sin) of 8 angles, written out exactly
_DIR8 = (
    (1.0, 0.0), (0.7071067811865476, 0.7071067811865476), (0.0, 1.0),
    (-0.7071067811865476, 0.7071067811865476), (-1.0, 0.0),
    (-0.7071067811865476, -0.7071067811865476), (0.0, -1.0),
    (0.7071067811865476, -0.7071067811865476),
)  # fmt: skip


def _flower(r: Stream, facet: int):
    parts = (("petal", -1, False), ("center", 0, False), ("stem", -1, True), ("leaf", 2, True))
    if facet == 0:  # daisy
        a = 0.6
        cv, ring, pr = 0.28, 0.17, r.uni(0.07, 0.09)
        prims = [_rect(2, 0.47, 0.3, 0.53, 1.0), _ell(3, 0.34, 0.7, 0.14, 0.045)]
        for dx, dy in _DIR8:
            prims.append(_ell(0, 0.5 + ring * dx / a, cv + ring * dy, pr / a, pr))
        prims.append(_ell(1, 0.5, cv, 0.09 / a, 0.09))
        return a, parts, prims
    if facet == 1:  # tulip
        a = 0.55
        cup = r.uni(0.2, 0.26)
        prims = [
            _rect(2, 0.47, 0.35, 0.53, 1.0),
            _poly(3, 0.47, 0.95, 0.47, 0.8, 0.1, 0.55),
            _poly(3, 0.53, 0.9, 0.53, 0.75, 0.9, 0.6),
            _clip_ell(0, 0.5, cup, 0.34, 0.22, -0.1, cup, 1.1, cup, 1.1, 0.6, -0.1, 0.6),
            _poly(0, 0.17, cup + 0.02, 0.4, cup + 0.02, 0.25, 0.03),
            _poly(0, 0.38, cup + 0.02, 0.62, cup + 0.02, 0.5, 0.0),
            _poly(0, 0.6, cup + 0.02, 0.83, cup + 0.02, 0.75, 0.03),
        ]
        return a, parts, prims
    a = 0.7  # four big petals
    cv, ring, pr = 0.3, 0.14, r.uni(0.11, 0.13)
    prims = [_rect(2, 0.47, 0.35, 0.53, 1.0), _ell(3, 0.65, 0.72, 0.14, 0.05)]
    for dx, dy in _DIR8[0::2]:
        prims.append(_ell(0, 0.5 + ring * dx / a, cv + ring * dy, pr / a, pr))
    prims.append(_ell(1, 0.5, cv, 0.08 / a, 0.08))
    return a, parts, prims


def _house(r: Stream, facet: int):
    parts = (
        ("facade", -1, False),
        ("roof", 0, False),
        ("door", 0, False),
        ("window", 0, True),
        ("chimney", 1, True),
    )
    if facet in (0, 1):  # gabled, with or without chimney
        a = 1.1
        eave, apex = r.uni(0.4, 0.5), r.uni(0.0, 0.08)
        dc = r.uni(0.3, 0.7)
        wc = r.uni(0.68, 0.76) if dc < 0.5 else r.uni(0.24, 0.32)
        wv = eave + r.uni(0.1, 0.16)
        prims = [
            _rect(0, 0.08, eave, 0.92, 1.0),
            _poly(1, 0.0, eave + 0.03, 1.0, eave + 0.03, 0.5, apex),
            _rect(2, dc - 0.08, 0.68, dc + 0.08, 1.0),
            _rect(3, wc - 0.09, wv, wc + 0.09, wv + 0.2),
        ]
        if facet == 1:
            c0 = r.uni(0.64, 0.72)
            c1 = c0 + 0.1
            slope = (eave + 0.03 - apex) / 0.5
            top = apex + 0.04
            prims.append(
                _poly(
                    4,
                    c0,
                    top,
                    c1,
                    top,
                    c1,
                    apex + slope * (c1 - 0.5) + 0.01,
                    c0,
                    apex + slope * (c0 - 0.5) + 0.01,
                )
            )
        return a, parts, prims
    a = 0.6  # tower with a flat roof
    rows = 2 + r.idx(2)
    prims = [_rect(0, 0.06, 0.1, 0.94, 1.0), _rect(1, 0.0, 0.02, 1.0, 0.11)]
    for k in range(rows):
        v0 = 0.18 + 0.2 * k
        prims.append(_rect(3, 0.2, v0, 0.42, v0 + 0.11))
        prims.append(_rect(3, 0.58, v0, 0.8, v0 + 0.11))
    prims.append(_rect(2, 0.4, 0.8, 0.6, 1.0))
    return a, parts, prims


def _lamp(r: Stream, facet: int):
    if facet == 0:  # floor lamp
        parts = (("shade", -1, False), ("pole", 0, True), ("base", 1, False))
        top = r.uni(0.0, 0.08)
        prims = [
            _rect(2, 0.15, 0.92, 0.85, 1.0, ROUND),
            _rect(1, 0.44, 0.28, 0.56, 0.94),
            _poly(0, 0.03, 0.34, 0.97, 0.34, 0.75, top, 0.25, top),
        ]
        return 0.4, parts, prims
    if facet == 1:  # table lamp
        parts = (("shade", -1, False), ("pole", 0, True), ("base", 1, False))
        top = r.uni(0.0, 0.1)
        prims = [
            _rect(2, 0.22, 0.84, 0.78, 1.0, ROUND),
            _rect(1, 0.43, 0.5, 0.57, 0.86),
            _poly(0, 0.02, 0.55, 0.98, 0.55, 0.76, top, 0.24, top),
        ]
        return 0.85, parts, prims
    parts = (("shade", -1, False), ("cord", 0, True), ("bulb", 0, True))  # pendant
    length = r.uni(0.3, 0.45)
    prims = [
        _rect(1, 0.48, 0.0, 0.52, length + 0.05),
        _ell(2, 0.5, length + 0.38, 0.12 / 0.8, 0.12),
        _poly(0, 0.03, length + 0.35, 0.97, length + 0.35, 0.62, length, 0.38, length),
    ]
    return 0.8, parts, prims


_SPOTS = ((0.3, 0.36), (0.5, 0.16), (0.69, 0.33), (0.45, 0.38), (0.62, 0.14), (0.36, 0.2))


def _mushroom(r: Stream, facet: int):
    parts = (("cap", -1, False), ("stem", 0, False), ("spot", 0, True))
    if facet == 0:  # round cap
        a = 1.15
        cv = r.uni(0.48, 0.56)
        prims = [
            _rect(1, 0.36, cv - 0.1, 0.64, 1.0, ROUND),
            _clip_ell(0, 0.5, cv, 0.5, cv, -0.1, -0.1, 1.1, -0.1, 1.1, cv, -0.1, cv),
        ]
        for k in range(r.idx(5)):
            su, sv = _SPOTS[k]
            sr = r.uni(0.045, 0.07)
            prims.append(_ell(2, su, sv * cv / 0.52, sr / a, sr))
        return a, parts, prims
    a = 0.85  # conical cap
    base = r.uni(0.5, 0.6)
    prims = [
        _rect(1, 0.4, base - 0.05, 0.6, 1.0),
        _poly(0, 0.0, base, 1.0, base, 0.5, 0.0),
    ]
    for k in range(r.idx(3)):
        su, sv = ((0.42, 0.42), (0.58, 0.3))[k]
        prims.append(_ell(2, su, sv * base / 0.55, 0.05 / a, 0.05))
    return a, parts, prims


def _person(r: Stream, facet: int):
    parts = (
        ("torso", -1, False),
        ("head", 0, False),
        ("arm", 0, True),
        ("leg", 0, False),
        ("hair", 1, True),
    )
    hair = r.chance(0.5)
    if facet == 0:  # standing, arms down
        a = 0.42
        hr = r.uni(0.09, 0.11)
        prims = [
            _rect(3, 0.28, 0.6, 0.47, 1.0),
            _rect(3, 0.53, 0.6, 0.72, 1.0),
            _rect(2, 0.04, 0.27, 0.2, r.uni(0.56, 0.64)),
            _rect(2, 0.8, 0.27, 0.96, r.uni(0.56, 0.64)),
            _rect(0, 0.19, 0.24, 0.81, 0.64, ROUND),
            _ell(1, 0.5, 0.13, hr / a, hr),
        ]
        cv = 0.13
    else:  # arms up, legs apart
        a = 0.6
        hr = r.uni(0.09, 0.11)
        prims = [
            _poly(3, 0.36, 0.6, 0.5, 0.6, 0.38, 1.0, 0.2, 1.0),
            _poly(3, 0.5, 0.6, 0.64, 0.6, 0.8, 1.0, 0.62, 1.0),
            _poly(2, 0.22, 0.32, 0.33, 0.32, 0.17, 0.02, 0.06, 0.02),
            _poly(2, 0.78, 0.32, 0.67, 0.32, 0.83, 0.02, 0.94, 0.02),
            _rect(0, 0.3, 0.27, 0.7, 0.64, ROUND),
            _ell(1, 0.5, 0.16, hr / a, hr),
        ]
        cv = 0.16
    if hair:
        ru = hr * 1.08 / a
        prims.append(
            _clip_ell(
                4, 0.5, cv, ru, hr * 1.08, -0.1, -0.1, 1.1, -0.1, 1.1, cv - 0.02, -0.1, cv - 0.02
            )
        )
    return a, parts, prims


def _tree(r: Stream, facet: int):
    parts = (("crown", -1, False), ("trunk", 0, False))
    if facet == 0:  # round crown
        cr = r.uni(0.3, 0.36)
        prims = [_rect(1, 0.42, 0.5, 0.58, 1.0), _ell(0, 0.5, cr, 0.48, cr)]
        return 0.85, parts, prims
    if facet == 1:  # conical crown
        w = r.uni(0.0, 0.08)
        prims = [
            _rect(1, 0.42, 0.76, 0.58, 1.0),
            _poly(0, 0.02 + w, 0.8, 0.98 - w, 0.8, 0.5, 0.3),
            _poly(0, 0.1 + w, 0.58, 0.9 - w, 0.58, 0.5, 0.12),
            _poly(0, 0.2 + w, 0.37, 0.8 - w, 0.37, 0.5, 0.0),
        ]
        return 0.62, parts, prims
    rr = r.uni(0.2, 0.25)  # clustered crown
    prims = [
        _rect(1, 0.44, 0.45, 0.56, 1.0),
        _ell(0, 0.27, 0.45, rr, rr),
        _ell(0, 0.73, 0.45, rr, rr),
        _ell(0, 0.5, 0.26, rr, rr),
    ]
    return 1.0, parts, prims


TEMPLATES: tuple[Callable, ...] = (
    _airplane, _bird, _boat, _car, _chair, _fish,
    _flower, _house, _lamp, _mushroom, _person, _tree,
)  # fmt: skip

# Mean fraction of its box an object of each facet covers (measured; used to size
# objects by visible area).
FILL = {
    "airplane": (0.28, 0.24),
    "bird": (0.29, 0.24),
    "boat": (0.44, 0.47),
    "car": (0.57, 0.62),
    "chair": (0.23, 0.52),
    "fish": (0.54, 0.36),
    "flower": (0.32, 0.27, 0.29),
    "house": (0.66, 0.68, 0.88),
    "lamp": (0.33, 0.49, 0.26),
    "mushroom": (0.54, 0.37),
    "person": (0.54, 0.38),
    "tree": (0.54, 0.4, 0.45),
}

# ----------------------------------------------------------------------------- scenes

# Colour and fill family choices of each region (repetition = weight).
_C = {name: i for i, name in enumerate(textures.COLOR_NAMES)}
_F = {name: i for i, name in enumerate(textures.FILL_NAMES)}


def _cols(*names):
    return tuple(_C[n + "-c"] for n in names)


def _fills(*names):
    return tuple(_F[n] for n in names)


REGION_LOOKS = {
    "sky": (
        _cols("blue", "blue", "blue", "white", "grey", "orange", "pink", "black"),
        _fills("solid", "solid", "solid", "blotchy", "blotchy", "flecked"),
    ),
    "grass": (
        _cols("green", "green", "green", "yellow", "brown"),
        _fills("flecked", "striped", "blotchy", "solid", "zigzagged"),
    ),
    "ground": (
        _cols("yellow", "yellow", "orange", "brown", "white", "grey"),
        _fills("solid", "wavy", "flecked", "blotchy"),
    ),
    "water": (
        _cols("blue", "blue", "blue", "green", "grey", "purple"),
        _fills("wavy", "zigzagged", "striped", "banded", "solid"),
    ),
    "mountain": (
        _cols("grey", "brown", "purple", "blue", "white", "green"),
        _fills("solid", "blotchy", "striped", "banded"),
    ),
    "building": (
        _cols("brown", "red", "grey", "white", "yellow", "orange", "pink"),
        _fills("grid", "solid", "banded", "striped", "chequered"),
    ),
    "sidewalk": (
        _cols("grey", "white", "brown", "red", "pink"),
        _fills("chequered", "grid", "solid"),
    ),
    "road": (_cols("grey", "grey", "black"), _fills("solid", "solid", "flecked")),
    "wall": (
        tuple(range(len(textures.COLOR_NAMES))),
        _fills("solid", "solid", "striped", "banded", "dotted", "grid", "chequered", "wavy"),
    ),
    "floor": (
        _cols("brown", "brown", "grey", "white", "black", "red", "orange"),
        _fills("chequered", "striped", "banded", "solid", "grid"),
    ),
    "ceiling": (_cols("white", "white", "grey", "yellow"), _fills("solid", "solid", "grid")),
}


class _Scene:
    """Accumulates entities and primitives of one image."""

    __slots__ = ("r", "offset", "ents", "prims", "prim_ent", "prim_frame", "frames", "used")

    def __init__(self, r: Stream, offset: int):
        self.r = r
        self.offset = offset  # texture offsets are drawn in [0, offset)
        self.ents: list[tuple] = []
        self.prims: list[tuple] = []
        self.prim_ent: list[int] = []
        self.prim_frame: list[int] = []
        self.frames: list[tuple] = [(0.0, 0.0, 1.0, 1.0, 0.0)]
        self.used: list[int] = []  # colours of the major background regions

    def look(self) -> tuple[int, int, int]:
        """Texture offsets (x, y) and brightness jitter of a new entity."""
        r = self.r
        return r.idx(self.offset), r.idx(self.offset), r.idx(2 * textures.MAX_JITTER + 1) - 10

    def region(
        self, name: str, major: bool = True, color: int = -1, part: int = -1, solid: bool = False
    ) -> int:
        """Adds a background-region entity; returns its index.

        Its colour is drawn from the region's choices, avoiding the colours of the major
        regions drawn so far; ``major`` regions add theirs to that list.
        """
        r = self.r
        colors, fills = REGION_LOOKS[name]
        if color < 0:
            free = [c for c in colors if c not in self.used]
            color = r.pick(free if free else colors)
        if major:
            self.used.append(color)
        if solid:
            variant = textures.SOLID
        else:
            variant = r.pick(textures.FAMILY_VARIANTS[r.pick(fills)])
        ox, oy, jit = self.look()
        self.ents.append((_REGION[name], part, color, variant, ox, oy, jit, 0))
        return len(self.ents) - 1

    def add(self, ent: int, *prims: tuple, frame: int = 0) -> None:
        for p in prims:
            self.prims.append(p)
            self.prim_ent.append(ent)
            self.prim_frame.append(frame)


def _field(s: _Scene) -> None:
    r = s.r
    sky = s.region("sky")
    s.add(sky, _rect(0, 0.0, 0.0, 1.0, 1.0))
    grass = s.region("grass")
    h, t = r.uni(0.35, 0.62), r.uni(-0.08, 0.08)
    s.add(grass, _poly(0, -0.01, h - t, 1.01, h + t, 1.01, 1.01, -0.01, 1.01))
    if r.chance(0.5):
        s.add(grass, _ell(0, r.uni(0.1, 0.9), h, r.uni(0.2, 0.4), r.uni(0.05, 0.14)))


def _desert(s: _Scene) -> None:
    r = s.r
    s.add(s.region("sky"), _rect(0, 0.0, 0.0, 1.0, 1.0))
    ground = s.region("ground")
    h, t = r.uni(0.45, 0.7), r.uni(-0.04, 0.04)
    s.add(ground, _poly(0, -0.01, h - t, 1.01, h + t, 1.01, 1.01, -0.01, 1.01))
    for _ in range(1 + r.idx(2)):
        s.add(ground, _ell(0, r.uni(0.0, 1.0), h + 0.02, r.uni(0.15, 0.35), r.uni(0.06, 0.16)))


def _coast(s: _Scene) -> None:
    r = s.r
    s.add(s.region("sky"), _rect(0, 0.0, 0.0, 1.0, 1.0))
    water = s.region("water")
    h = r.uni(0.3, 0.55)
    s.add(water, _rect(0, -0.01, h, 1.01, 1.01))
    beach = s.region("ground")
    b, t = r.uni(0.72, 0.9), r.uni(-0.12, 0.12)
    s.add(beach, _poly(0, -0.01, b - t, 1.01, b + t, 1.01, 1.01, -0.01, 1.01))


def _mountain(s: _Scene) -> None:
    r = s.r
    s.add(s.region("sky"), _rect(0, 0.0, 0.0, 1.0, 1.0))
    mountain = s.region("mountain")
    h = r.uni(0.5, 0.72)
    for _ in range(1 + r.idx(3)):
        peak, half = r.uni(-0.1, 1.1), r.uni(0.3, 0.6)
        s.add(
            mountain, _poly(0, peak - half, h + 0.02, peak + half, h + 0.02, peak, r.uni(0.1, 0.38))
        )
    grass = s.region("grass")
    s.add(grass, _rect(0, -0.01, h, 1.01, 1.01))


def _street(s: _Scene) -> None:
    r = s.r
    s.add(s.region("sky"), _rect(0, 0.0, 0.0, 1.0, 1.0))
    h = r.uni(0.45, 0.58)
    split = r.uni(0.35, 0.65)
    windows = []
    for u0, u1 in ((-0.01, split), (split, 1.01)):
        top = r.uni(0.06, 0.32)
        b = s.region("building")
        s.add(b, _rect(0, u0, top, u1, h))
        for k in range(r.idx(3)):
            wu = u0 + 0.06 + k * 0.16
            if wu + 0.08 < u1 - 0.03 and top + 0.05 + 0.1 < h - 0.04:
                windows.append((wu, top + 0.05))
    if windows:
        # the windows of a building are building pixels with the part label "window"
        ent = s.region("building", major=False, part=_PART["window"], solid=True)
        for wu, wv in windows:
            s.add(ent, _rect(0, wu, wv, wu + 0.08, wv + 0.1))
    s.add(s.region("sidewalk"), _rect(0, -0.01, h, 1.01, 1.01))
    road = s.region("road")
    w0, lean = r.uni(0.08, 0.25), r.uni(-0.1, 0.1)
    top = h + r.uni(0.04, 0.1)
    s.add(road, _poly(0, 0.5 + lean - w0, top, 0.5 + lean + w0, top, 1.35, 1.01, -0.35, 1.01))
    if r.chance(0.6):
        mark = s.region("road", major=False, color=r.pick(_cols("white", "yellow")), solid=True)
        s.add(
            mark, _poly(0, 0.5 + lean - 0.01, top, 0.5 + lean + 0.01, top, 0.53, 1.01, 0.47, 1.01)
        )


def _living_room(s: _Scene) -> None:
    r = s.r
    s.add(s.region("wall"), _rect(0, 0.0, 0.0, 1.0, 1.0))
    h = r.uni(0.55, 0.78)
    s.add(s.region("floor"), _rect(0, -0.01, h, 1.01, 1.01))


def _corridor(s: _Scene) -> None:
    r = s.r
    s.add(s.region("ceiling"), _rect(0, 0.0, 0.0, 1.0, 1.0))
    cu, cv = r.uni(0.4, 0.6), r.uni(0.38, 0.5)
    hw, hh = r.uni(0.12, 0.22), r.uni(0.12, 0.2)
    xl, xr, yt, yb = cu - hw, cu + hw, cv - hh, cv + hh
    side = s.region("wall")
    s.add(side, _poly(0, -0.01, -0.01, xl, yt, xl, yb, -0.01, 1.01))
    s.add(side, _poly(0, 1.01, -0.01, xr, yt, xr, yb, 1.01, 1.01))
    s.add(s.region("wall"), _rect(0, xl, yt, xr, yb))
    s.add(s.region("floor"), _poly(0, -0.01, 1.01, xl, yb, xr, yb, 1.01, 1.01))


LAYOUTS = (_field, _desert, _coast, _mountain, _street, _living_room, _corridor)

# ----------------------------------------------------------------------------- images

MAX_PRIMITIVES = 48
"""Most primitives one image may hold (the rasterizer's bit budget)."""

MAIN_AREA = (0.16, 0.3)
OTHER_AREA = (0.02, 0.05)
OTHER_COUNTS = (0, 0, 1, 1, 1, 2, 2)
"""Number of other (smaller) objects, drawn uniformly from this tuple."""
PART_SOLID = 0.2
"""Chance that a part that is not small is solid-filled."""
PART_INHERIT = 0.25
"""Chance that a part takes its parent part's texture (when the parent is textured)."""


def _place(r: Stream, cls: int, facet: int, area: float, aspect: float) -> tuple:
    """A frame (X0, Y0, W, H, mirror) in image units for an object whose visible area
    is about ``area`` (a fraction of the image) and whose box has the given aspect."""
    aspect *= r.uni(0.88, 1.12)
    box = area / FILL[CLASS_NAMES[cls]][facet]
    w = math.sqrt(box * aspect)  # correctly rounded everywhere, unlike ** 0.5
    h = box / w
    big = max(w, h)
    if big > 0.96:
        w, h = w * 0.96 / big, h * 0.96 / big
    x0 = r.uni(0.02, 0.98 - w)
    y0 = r.uni(0.02, 0.98 - h)
    return (x0, y0, w, h, 1.0 if r.chance(0.5) else 0.0)


def _object(
    s: _Scene, cls: int, facet: int, area: float, instance: int, exclude: list[int], budget: int
) -> tuple[list[tuple], int, int, int] | None:
    """Adds one object's entities and frame.

    Returns (primitives, first entity index, frame index, colour of its first part),
    or None, adding nothing, when it has more than ``budget`` primitives.
    """
    r = s.r
    aspect, parts, prims = TEMPLATES[cls](r, facet)
    if len(prims) > budget:
        return None
    frame = _place(r, cls, facet, area, aspect)
    base = len(s.ents)
    colors: list[int] = []
    fills: list[int] = []
    for name, parent, small in parts:
        banned = exclude if parent < 0 else exclude + [colors[parent]]
        free = [c for c in range(len(textures.COLOR_NAMES)) if c not in banned]
        color = r.pick(free)
        if small:
            variant = textures.SOLID
        elif parent >= 0 and fills[parent] != textures.SOLID and r.chance(PART_INHERIT):
            variant = fills[parent]
        elif r.chance(PART_SOLID):
            variant = textures.SOLID
        else:
            variant = r.pick(textures.FAMILY_VARIANTS[1 + r.idx(len(textures.TEXTURE_NAMES))])
        colors.append(color)
        fills.append(variant)
        ox, oy, jit = s.look()
        s.ents.append((cls, _PART[name], color, variant, ox, oy, jit, instance))
    s.frames.append(frame)
    return prims, base, len(s.frames) - 1, colors[0]


def draw_image(r: Stream, image_size: int) -> dict:
    """Parameters of one image from its stream.

    Returns a dict: ``scene`` (index into SCENE_NAMES), ``cls`` (main object's class),
    ``facet``, ``ents`` (tuples: object index into OBJECT_NAMES, part index into
    PART_NAMES or -1, colour, fill variant, texture offset x, y, brightness jitter,
    instance: 0 = background, 1 = main object, 2.. = other objects), ``prims``
    (primitive tuples as in the module docstring, the first one covering the whole
    image), ``prim_ent``, ``prim_frame`` (per primitive) and ``frames`` ((X0, Y0, W, H,
    mirror) in image units; frame 0 is the whole image).

    The main object is drawn with a visible area in MAIN_AREA (before clipping to the
    image), the others (0 to 2, any class) with areas in OTHER_AREA, behind it except
    possibly the last one; objects avoid the colours of the major background regions,
    a part avoids its parent part's colour, and other objects avoid the colour of the
    main object's first part.
    """
    s = _Scene(r, textures.max_offset(image_size))
    scene = r.idx(len(SCENE_NAMES))
    LAYOUTS[scene](s)
    cls = r.idx(len(CLASS_NAMES))
    facet = r.idx(len(FACETS[CLASS_NAMES[cls]]))
    n_others = r.pick(OTHER_COUNTS)
    front = r.chance(0.3)
    exclude = list(s.used)
    budget = MAX_PRIMITIVES - len(s.prims)
    main = _object(s, cls, facet, r.uni(*MAIN_AREA), 1, exclude, budget)
    assert main is not None  # a background and one object always fit
    budget -= len(main[0])
    layers = [main]
    for k in range(n_others):
        ocls = r.idx(len(CLASS_NAMES))
        ofacet = r.idx(len(FACETS[CLASS_NAMES[ocls]]))
        area = r.uni(*OTHER_AREA)
        other = _object(s, ocls, ofacet, area, 2 + k, exclude + [main[3]], budget)
        if other is None:
            break
        budget -= len(other[0])
        if front and k == n_others - 1:
            layers.append(other)
        else:
            layers.insert(len(layers) - 1, other)
    for prims, base, fid, _ in layers:
        for p in prims:
            s.prims.append(p)
            s.prim_ent.append(base + p[0])
            s.prim_frame.append(fid)
    return {
        "scene": scene,
        "cls": cls,
        "facet": facet,
        "ents": s.ents,
        "prims": s.prims,
        "prim_ent": s.prim_ent,
        "prim_frame": s.prim_frame,
        "frames": s.frames,
    }
