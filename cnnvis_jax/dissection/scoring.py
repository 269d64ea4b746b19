"""IoU scores, labels and detectors from the tally counts (host, float64).

``IoU[u, l] = both[u, l] / (units_cat[u, cat(l)] + labels[l] - both[u, l] + 1e-10)``
with ``cat(l)`` the label's primary category and ``units_cat`` the mode's
denominator (``lite``: NetDissect-Lite's; ``original``: NetDissect's, see
:mod:`~cnnvis_jax.dissection.tally`). As in NetDissect-Lite, each unit gets the best
label of every category and its overall label is the best of those; a unit is a
*detector* when that score is >= the IoU threshold (0.04), and a category's *unique
detectors* are the distinct labels of the detectors labelled in it.

Ties are broken as NetDissect-Lite breaks them: within a category the smallest label
number wins, and label 0 (which belongs to the last category of the data set's own
order) is the label of a category where every IoU is 0; between categories the one
later in the data set's order wins.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnvis_jax.dissection.labels import LabelLayout
from cnnvis_jax.errors import InputError

MODES = ("lite", "original")
EPS = 1e-10


@dataclasses.dataclass
class Counts:
    """Tally of one layer (int64 numpy): both (U, L), units (U,), units_cat_lite and
    units_cat_original (U, C), labels (L,), images, category_images (C,)."""

    both: np.ndarray
    units: np.ndarray
    units_cat_lite: np.ndarray
    units_cat_original: np.ndarray
    labels: np.ndarray
    images: int
    category_images: np.ndarray

    def units_cat(self, mode: str) -> np.ndarray:
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
        return self.units_cat_lite if mode == "lite" else self.units_cat_original


@dataclasses.dataclass
class Scores:
    """Labels of one layer's units.

    Attributes:
      iou: float64 (U, L) (0 for labels that are not scored).
      category_label: int (C, U) best label of each category per unit.
      category_score: float64 (C, U) its IoU.
      label: int (U,) best label overall; category: int (U,) its category index;
      score: float64 (U,) its IoU.
      detector: bool (U,) score >= iou_threshold.
      order: int (U,) units by decreasing score (ties: smaller unit first).
      unique: {category: number of distinct detector labels}.
      iou_threshold: the detector threshold.
    """

    iou: np.ndarray
    category_label: np.ndarray
    category_score: np.ndarray
    label: np.ndarray
    category: np.ndarray
    score: np.ndarray
    detector: np.ndarray
    order: np.ndarray
    unique: dict[str, int]
    iou_threshold: float


def iou_matrix(counts: Counts, layout: LabelLayout, mode: str) -> np.ndarray:
    """float64 (U, L) IoU of every unit and label (0 where the label is not scored)."""
    scored = layout.scored()
    cat = np.where(scored, layout.label_category, 0)
    denominator_cat = counts.units_cat(mode)[:, cat].astype(np.float64)
    both = counts.both.astype(np.float64)
    iou = both / (denominator_cat + counts.labels[None, :] - both + EPS)
    return np.where(scored[None, :], iou, 0.0)


def score(counts: Counts, layout: LabelLayout, mode: str, iou_threshold: float = 0.04) -> Scores:
    """Best labels, detectors and unique detectors (see the module docstring)."""
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise InputError(f"the IoU threshold must be in [0, 1], got {iou_threshold!r}.")
    iou = iou_matrix(counts, layout, mode)
    n_cat = len(layout.categories)
    member = layout.label_category[None, :] == np.arange(n_cat)[:, None]  # (C, L)
    per_cat = np.where(member[:, None, :], iou[None], 0.0)  # (C, U, L)
    category_label = per_cat.argmax(axis=2)
    category_score = np.take_along_axis(per_cat, category_label[..., None], 2)[..., 0]
    rank = np.asarray(layout.source_order or range(n_cat))
    # the best category; among equal scores the one latest in the data set's order
    best_cat = np.lexsort((rank[:, None].repeat(iou.shape[0], 1), category_score), axis=0)[-1]
    units = np.arange(iou.shape[0])
    label = category_label[best_cat, units]
    best = category_score[best_cat, units]
    detector = best >= iou_threshold
    order = np.lexsort((units, -best))
    unique = {}
    for ci, c in enumerate(layout.categories):
        unique[c] = len({int(label[u]) for u in units if detector[u] and best_cat[u] == ci})
    return Scores(
        iou=iou,
        category_label=category_label,
        category_score=category_score,
        label=label,
        category=best_cat,
        score=best,
        detector=detector,
        order=order,
        unique=unique,
        iou_threshold=float(iou_threshold),
    )


def tally_rows(counts: Counts, layout: LabelLayout, scores: Scores, mode: str) -> list[dict]:
    """NetDissect-Lite's tally.csv rows (units by decreasing score).

    ``unit`` numbers units from 0, as every other file and command of this package
    does; ``netdissect_unit`` (the second column) is NetDissect-Lite's own number, from
    1, for comparing with its files."""
    ucat = counts.units_cat(mode)
    rows = []
    for u in scores.order.tolist():
        row = {
            "unit": u,
            "netdissect_unit": u + 1,
            "category": layout.categories[scores.category[u]],
            "label": layout.names[scores.label[u]],
            "score": float(scores.score[u]),
        }
        for ci, c in enumerate(layout.categories):
            lab = int(scores.category_label[ci, u])
            row[f"{c}-label"] = layout.names[lab]
            row[f"{c}-truth"] = int(counts.labels[lab])
            row[f"{c}-activation"] = int(ucat[u, layout.label_category[lab]])
            row[f"{c}-intersect"] = int(counts.both[u, lab])
            row[f"{c}-iou"] = float(scores.category_score[ci, u])
        rows.append(row)
    return rows


def tally_fields(layout: LabelLayout) -> list[str]:
    """tally.csv's columns: NetDissect-Lite's, in its order, with ``netdissect_unit``
    (its 1-based unit number) after ``unit`` (0-based)."""
    fields = ["unit", "netdissect_unit", "category", "label", "score"]
    for c in layout.categories:
        fields += [f"{c}-label", f"{c}-truth", f"{c}-activation", f"{c}-intersect", f"{c}-iou"]
    return fields
