"""Neuron groups: a non-negative factorization of a layer's activations (Lucid's
"building blocks").

After a ReLU every spatial activation vector is non-negative, so the matrix ``A``
(P, C) of vectors sampled over a data set (:func:`cnnvis_jax.atlas.collect.collect`)
factors as ``A ~ F @ D`` with non-negative factors ``F`` (P, k) and groups ``D``
(k, C) (scikit-learn's ``NMF``, ``nndsvda`` start, ``random_state=seed``). Each row
of ``D`` is a group: a direction in channel space, a blend of units that fire
together. Groups are scaled to unit length (the factors take the scale, so ``F @ D``
is unchanged) and ordered by their total factor, the most used first.

:func:`render_groups` renders every group as an :func:`cnnvis_jax.am.direction`
objective in one vmapped render; a group's *top regions* are the receptive-field
windows (:func:`cnnvis_jax.deconv.topk.field_boxes`) of the sampled positions where
its factor is largest, one per image. A group's concepts are those of the sampled
positions it dominates (its factor is the largest there): the majority one and the
distinctive one, the concept they over-represent most
(:func:`cnnvis_jax.atlas.labels.distinctive`).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cnnvis_jax.atlas.collect import Samples, collect, planned_points
from cnnvis_jax.atlas.directions import ATLAS_STEPS, COSINE_POWER, check_recipe
from cnnvis_jax.atlas.labels import MIN_COUNT, distinctive, majority
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model

__all__ = [
    "NeuronGroups",
    "check_groups",
    "factorize",
    "neuron_groups",
    "render_groups",
    "save_groups",
]

TOP_REGIONS = 6
"""Top image regions kept per group."""
NMF_MAX_ITER = 400


@dataclasses.dataclass(frozen=True)
class NeuronGroups:
    """k neuron groups of one layer (numpy arrays; P sampled positions, C channels).

    Attributes:
      layer: canonical layer name.
      components: float32 (k, C) non-negative groups, unit length, most used first.
      factors: float32 (P, k) each sampled position's factor per group
        (``samples.vectors ~ factors @ components``).
      samples: the :class:`~cnnvis_jax.atlas.collect.Samples` factorized.
      relative_error: ``|A - F D|_F / |A|_F`` of the factorization.
      converged: whether NMF met its tolerance within its iterations.
      top: int64 (k, m) indices into the samples of each group's top positions (the
        largest factors, one per image, decreasing); m <= :data:`TOP_REGIONS`.
      top_factor: float32 (k, m) their factors.
      patches: float32 (k, m, Sh, Sw, 3) in [0, 1], the receptive-field window of each
        top position (the field's full size, padded with 0.5 outside the image).
      boxes: int32 (k, m, 4) the clipped windows ``(top, left, bottom, right)`` in
        model input pixels.
      label: int32 (k,) the majority concept label of the positions each group
        dominates (its factor is the largest there), 0 = none.
      share: float32 (k,) the fraction of those positions carrying ``label``.
      distinctive: int32 (k,) the label with the largest lift among those held by at
        least ``min_count`` of those positions (0 = none qualifies).
      lift: float32 (k,) its lift ``(share of the group's positions carrying it) /
        (share of all P sampled positions carrying it)`` (0 where ``distinctive`` is 0).
    """

    layer: str
    components: np.ndarray
    factors: np.ndarray
    samples: Samples
    relative_error: float
    converged: bool
    top: np.ndarray
    top_factor: np.ndarray
    patches: np.ndarray
    boxes: np.ndarray
    label: np.ndarray
    share: np.ndarray
    distinctive: np.ndarray
    lift: np.ndarray

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    def records(self, names: dict[int, str]) -> list[dict[str, Any]]:
        """Per group: ``{group, concept, concept_share, distinctive, lift, mass,
        top_channels, top_regions}`` with ``names`` mapping label numbers to names
        (strict-JSON ready; ``distinctive`` is "none" when no concept qualifies)."""
        mass = self.factors.sum(axis=0)
        out = []
        for g in range(self.k):
            channels = np.argsort(-self.components[g], kind="stable")[:5]
            out.append({
                "group": g,
                "concept": names.get(int(self.label[g]), "none"),
                "concept_share": float(self.share[g]),
                "distinctive": (names.get(int(self.distinctive[g]), "none")
                                if self.distinctive[g] else "none"),
                "lift": float(self.lift[g]),
                "mass": float(mass[g] / max(mass.sum(), 1e-12)),
                "top_channels": [{"unit": int(c), "weight": float(self.components[g, c])}
                                 for c in channels],
                "top_regions": [{"image": int(self.samples.image_index[i]),
                                 "position": [int(v) for v in self.samples.position[i]],
                                 "factor": float(f), "box": [int(b) for b in box]}
                                for i, f, box in zip(self.top[g], self.top_factor[g],
                                                     self.boxes[g])],
            })  # fmt: skip
        return out


def save_groups(out_dir: str | os.PathLike, groups: NeuronGroups, rendered: np.ndarray | None,
                names: dict[int, str], *, extra: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write ``groups.png`` (per group: its rendered image, when given, and its top
    regions; the first tile captioned with the group's majority concept, then its
    distinctive one and lift when they differ) and ``groups.json``
    (``extra``, ``relative_error``, ``converged`` and :meth:`NeuronGroups.records`)
    into ``out_dir`` atomically. ``rendered``: float32 (k, H, W, 3) or None.
    Returns the folder."""
    from cnnvis_jax.atlas.figures import Caption, groups_picture
    from cnnvis_jax.report.files import write_json
    from cnnvis_jax.report.grid import save_png

    out = Path(out_dir)
    records = groups.records(names)
    captions = [Caption(r["concept"], r["distinctive"], r["lift"], f"{r['group']}: ")
                for r in records]  # fmt: skip
    save_png(groups_picture(rendered, groups.patches, captions), out / "groups.png")
    write_json(out / "groups.json", {**(extra or {}), "layer": groups.layer, "k": groups.k,
                                     "relative_error": groups.relative_error,
                                     "converged": groups.converged, "groups": records})  # fmt: skip
    return out


def check_groups(model: Model, layer: str, k: int, planned: int) -> None:
    """Validate a request for ``k`` groups of ``layer`` from ``planned`` sampled
    positions (:func:`~cnnvis_jax.atlas.collect.planned_points`) before any work.

    Raises:
      InputError: unknown layer; a layer before its ReLU (``*_pre``, negative
        activations); ``k`` below 1 or above the layer's channels or the sampled
        positions.
    """
    info = model.layer(layer)
    if info.name.endswith("_pre"):
        raise InputError(
            f"layer {info.name!r} is before its ReLU and has negative activations; NMF needs "
            f"non-negative ones: use --layer {info.name[: -len('_pre')]}."
        )
    if int(k) < 1 or int(k) > info.channels:
        raise InputError(
            f"--groups {k} is out of range for layer {info.name!r}: choose 1..{info.channels} "
            "(at most one group per channel)."
        )
    if int(k) > planned:
        raise InputError(
            f"--groups {k} exceeds the {planned} sampled positions; use more --images or "
            "--points, or fewer groups."
        )


def factorize(activations: np.ndarray, k: int, *, seed: int = 0,
              max_iter: int = NMF_MAX_ITER) -> tuple[np.ndarray, np.ndarray, float, bool]:  # fmt: skip
    """NMF of non-negative ``activations`` (P, C) into ``k`` groups (see the module
    docstring).

    Returns:
      ``(components, factors, relative_error, converged)``: float32 (k, C) unit-length
      groups, most used first; float32 (P, k) factors; ``|A - F D|_F / |A|_F``; whether
      NMF met its tolerance.

    Raises:
      InputError: negative or non-finite activations; ``k`` outside ``1..min(P, C)``.
    """
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    a = np.asarray(activations, np.float64)
    if a.ndim != 2 or not np.all(np.isfinite(a)):
        raise InputError(f"activations must be a finite (P, C) matrix, got shape {a.shape}.")
    if a.size and a.min() < 0:
        raise InputError(
            f"activations have negative values (min {a.min():.3g}); NMF needs non-negative "
            "ones: use a layer after its ReLU."
        )
    if not 1 <= int(k) <= min(a.shape):
        raise InputError(f"k must be in 1..{min(a.shape)} for a {a.shape} matrix, got {k}.")
    model = NMF(n_components=int(k), init="nndsvda", random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported as `converged`
        factors = model.fit_transform(a)
    components = model.components_
    scale = np.linalg.norm(components, axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    components = components / scale[:, None]
    factors = factors * scale[None, :]
    order = np.argsort(-factors.sum(axis=0), kind="stable")
    components, factors = components[order], factors[:, order]
    error = np.linalg.norm(a - factors @ components) / max(np.linalg.norm(a), 1e-12)
    converged = model.n_iter_ < max_iter
    return components.astype(np.float32), factors.astype(np.float32), float(error), converged


def _top_positions(factor: np.ndarray, image_index: np.ndarray, m: int) -> np.ndarray:
    """int64 (<= m,) positions with the largest ``factor``, one per image, in
    decreasing order (ties: the earlier position)."""
    order = np.argsort(-factor, kind="stable")
    _, first = np.unique(image_index[order], return_index=True)
    return order[np.sort(first)][:m]


def _region_images(model: Model, source: Any, indices: np.ndarray) -> np.ndarray:
    """float32 (M, H, W, 3) images of ``source`` at ``indices`` at the model's input size."""
    import jax.numpy as jnp

    from cnnvis_jax.features import load_batch, to_model_input

    batch = load_batch(source, np.asarray(indices, np.int64))
    return np.asarray(to_model_input(model, jnp.asarray(batch["image"])), np.float32)


def neuron_groups(
    model: Model,
    source: Any,
    layer: str,
    k: int,
    *,
    images: int = 500,
    points: int = 20000,
    seed: int = 0,
    top: int = TOP_REGIONS,
    category: str = "object",
    num_labels: int | None = None,
    min_count: int = MIN_COUNT,
    samples: Samples | None = None,
    progress: bool = False,
) -> NeuronGroups:
    """``k`` neuron groups of ``layer`` over the first ``images`` images of ``source``.

    Args:
      model: the network.
      source: the data source (concept masks, when it has them, label the groups).
      layer: a layer after a ReLU.
      k: number of groups.
      images, points, seed, category: the sample
        (:func:`~cnnvis_jax.atlas.collect.collect`).
      top: top regions per group.
      num_labels: label numbers of the source (default its vocabulary's).
      min_count: fewest of a group's positions a concept needs to be its distinctive
        one.
      samples: already collected samples of ``layer`` to factorize instead of
        collecting (``images``/``points`` are then ignored).
      progress: show a progress bar.

    Returns:
      A :class:`NeuronGroups`.

    Raises:
      InputError: see :func:`check_groups`; ``top`` or ``min_count`` below 1.
    """
    from cnnvis_jax.deconv.topk import cut_windows, field_boxes

    if int(top) < 1:
        raise InputError(f"top must be at least 1, got {top}.")
    if int(min_count) < 1:
        raise InputError(f"min_count must be at least 1, got {min_count}.")
    if samples is None:
        check_groups(model, layer, k, planned_points(model, layer, images, points))
        samples = collect(model, source, layer, images=images, points=points, seed=seed,
                          category=category, progress=progress)  # fmt: skip
    else:
        check_groups(model, layer, k, len(samples.vectors))
    components, factors, error, converged = factorize(samples.vectors, k, seed=seed)
    tops = [_top_positions(factors[:, g], samples.image_index, int(top)) for g in range(k)]
    m = min(len(t) for t in tops)
    top_index = np.stack([t[:m] for t in tops]).astype(np.int64)
    top_factor = np.take_along_axis(factors.T, top_index, axis=1)
    unique, inverse = np.unique(samples.image_index[top_index.reshape(-1)], return_inverse=True)
    pictures = _region_images(model, source, unique)[inverse.reshape(-1)]
    positions = samples.position[top_index.reshape(-1)]
    clipped, full = field_boxes(model, samples.layer, positions)
    patches = cut_windows(pictures, clipped, full)
    if num_labels is None:
        vocabulary = getattr(source, "vocabulary", None)
        num_labels = vocabulary.num_labels if vocabulary is not None else 1
    dominant = np.argmax(factors, axis=1)
    dominant[factors.max(axis=1) <= 0] = -1
    num_labels = max(int(num_labels), 1)
    label, share = majority(samples.label, dominant, k, num_labels)
    special, lift = distinctive(samples.label, dominant, k, num_labels, min_count=min_count)
    return NeuronGroups(
        layer=samples.layer,
        components=components,
        factors=factors,
        samples=samples,
        relative_error=error,
        converged=converged,
        top=top_index,
        top_factor=top_factor.astype(np.float32),
        patches=patches.reshape(k, m, *patches.shape[1:]),
        boxes=clipped.reshape(k, m, 4).astype(np.int32),
        label=label,
        share=share,
        distinctive=special,
        lift=lift,
    )


def render_groups(
    model: Model,
    groups: NeuronGroups,
    recipe: Any = "lucid",
    *,
    key: Any = 0,
    steps: int | None = ATLAS_STEPS,
    cosine_power: float = COSINE_POWER,
    progress: bool = False,
):
    """Every group rendered as an :func:`~cnnvis_jax.am.direction` objective, all in one
    vmapped render (:func:`~cnnvis_jax.atlas.directions.render_directions`).

    Returns:
      The :class:`~cnnvis_jax.am.RenderResult`, leading axis (k,): ``images`` float32
      (k, 1, H, W, 3).
    """
    from cnnvis_jax.atlas.directions import render_directions

    return render_directions(model, groups.layer, groups.components, check_recipe(recipe),
                             key=key, steps=steps, cosine_power=cosine_power,
                             progress=progress, desc=f"groups {groups.layer}")  # fmt: skip
