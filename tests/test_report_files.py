"""Atomic, strict JSON: non-finite numbers become null and are named; no partial file
is left behind."""

import json
import math

import numpy as np

from cnnvis_jax.report.files import strict, write_json


def test_strict_nulls_non_finite_numbers_and_names_them():
    value = {"a": 1.0, "b": float("nan"), "c": [np.float32(np.inf), 2], "d": {"e": -math.inf},
             "f": np.array([1.5, np.nan]), "g": np.int64(3)}  # fmt: skip
    clean, count = strict(value)
    assert count == 4
    assert clean == {"a": 1.0, "b": None, "c": [None, 2], "d": {"e": None, "non_finite_fields":
                     ["e"]}, "f": [1.5, None], "g": 3, "non_finite_fields": ["b"]}  # fmt: skip
    assert strict({"x": 1}) == ({"x": 1}, 0)


def test_write_json_is_strict_and_atomic(tmp_path):
    path = tmp_path / "sub" / "r.json"
    assert write_json(path, {"v": float("nan")}) == 1
    assert json.loads(path.read_text()) == {"v": None, "non_finite_fields": ["v"]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
