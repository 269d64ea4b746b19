"""A class decision explained by the concepts of one layer (CRP's per-prediction view).

:func:`top_relevance` is relevance maximization (Achtibat et al. 2023, Sec. "Relevance
maximization"): the reference images of a concept (channel) are the data set's images
in which it is most *relevant* for the network's own prediction, instead of those that
activate it most. It is the package's streaming top-k
(:func:`cnnvis_jax.deconv.top_activations`) ranking the sum over positions of the
relevance arriving at the layer (:class:`~cnnvis_jax.crp.relevance.LayerRelevance`),
each image explained for its predicted class; the recorded position is where that
relevance peaks, so the receptive-field crop shows the relevant part.

:func:`explain` takes one image and a class: the layer's channels ranked by their
relevance for the class, the top ones each with its conditional heatmap, its share of
the layer's total relevance and (given a :class:`~cnnvis_jax.deconv.TopK`) its
reference patches. :func:`write_explanation` draws it (``explanation.png``) and writes
``explanation.json`` (strict JSON).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cnnvis_jax.crp.relevance import LayerRelevance, concept_relevance
from cnnvis_jax.errors import InputError
from cnnvis_jax.model import Model

__all__ = ["Explanation", "explain", "top_relevance", "write_explanation"]


def top_relevance(
    model: Model,
    source: Any,
    layer: str,
    units: Sequence[int] | None = None,
    *,
    k: int = 9,
    rule: Any = "gradient",
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
):
    """Relevance maximization: per unit of ``layer``, the ``k`` images of ``source``
    with the largest summed relevance at the unit for their predicted class.

    Same arguments, result type (:class:`~cnnvis_jax.deconv.TopK`, ``values`` are
    relevances) and resumability as :func:`cnnvis_jax.deconv.top_activations`.

    Raises:
      InputError: a model without a classifier; as ``top_activations``.
    """
    from cnnvis_jax.deconv.topk import top_activations

    if model.logits_layer is None:
        raise InputError(
            f"model {model.name!r} has no logits layer; relevance maximization explains "
            "class decisions, so it needs a classifier."
        )
    return top_activations(model, source, layer, units, k=k, batch_size=batch_size,
                           indices=indices, progress=progress, checkpoint=checkpoint,
                           score=LayerRelevance(rule), reduce="sum")  # fmt: skip


class Explanation(NamedTuple):
    """One decision explained by the concepts (channels) of a layer (numpy arrays).

    Attributes:
      image: float32 (H, W, 3) in [0, 1].
      target: the explained class; ``class_name`` its name (or ``str(target)``).
      logit: the class score; ``probability`` its softmax probability.
      predicted: the model's predicted class.
      layer, rule: the conditioning layer and the backward rule.
      heatmap: float32 (H, W), the unconditional relevance map.
      units: int64 (n,), the top channels by relevance for the class.
      relevance: float32 (n,), their relevance (sum over positions of ``R_l``).
      share: float32 (n,), relevance / total relevance of the layer (may be negative).
      concept_heatmaps: float32 (n, H, W), their conditional heatmaps.
      references: float32 (n, r, h, w, 3) reference patches, or ``None``.
      labels: a label per unit (e.g. its dissection concept), or ``None``.
    """

    image: np.ndarray
    target: int
    class_name: str
    logit: float
    probability: float
    predicted: int
    layer: str
    rule: str
    heatmap: np.ndarray
    units: np.ndarray
    relevance: np.ndarray
    share: np.ndarray
    concept_heatmaps: np.ndarray
    references: np.ndarray | None
    labels: tuple[str, ...] | None

    def summary(self) -> dict[str, Any]:
        """Strict-JSON-able record (no arrays of pixels)."""
        return {
            "target": int(self.target),
            "class": self.class_name,
            "logit": float(self.logit),
            "probability": float(self.probability),
            "predicted": int(self.predicted),
            "layer": self.layer,
            "rule": self.rule,
            "heatmap_sum": float(self.heatmap.sum()),
            "concepts": [
                {
                    "unit": int(u),
                    "relevance": float(r),
                    "share": float(s),
                    **({"label": self.labels[i]} if self.labels else {}),
                }
                for i, (u, r, s) in enumerate(zip(self.units, self.relevance, self.share))
            ],
        }


def explain(
    model: Model,
    image: Any,
    target: int | None,
    layer: str,
    *,
    top: int = 6,
    rule: Any = "gradient",
    reference_patches: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
) -> Explanation:
    """Explain the class ``target`` (``None``: the predicted one) of ``image`` by the
    ``top`` most relevant channels of ``layer``.

    Args:
      model: a classifier.
      image: float (H, W, 3) in [0, 1] at the model's input size.
      target: class index, or ``None`` for the prediction.
      layer: the layer whose channels are the concepts.
      top: how many channels to show (1..channels).
      rule: backward rule (:func:`cnnvis_jax.crp.ruled`).
      reference_patches: float (C, r, h, w, 3), reference patches per channel of the
        layer (e.g. :func:`cnnvis_jax.deconv.crop_patches` of :func:`top_relevance`);
        the top channels' rows are kept.
      labels: one label per channel of the layer (e.g. dissection concepts), or None.

    Raises:
      InputError: ``top`` out of range, labels or patches of the wrong length, and as
        :func:`~cnnvis_jax.crp.concept_relevance`.
    """
    name = model.resolve(layer)
    channels = model.layer(name).channels
    if int(top) < 1 or int(top) > channels:
        raise InputError(f"top must be between 1 and {channels} (the channels of {name!r}), "
                         f"got {top}.")  # fmt: skip
    if labels is not None and len(labels) != channels:
        raise InputError(f"labels has {len(labels)} entries for the {channels} channels of "
                         f"{name!r}; give one per channel.")  # fmt: skip
    if reference_patches is not None and len(reference_patches) != channels:
        raise InputError(f"reference_patches has {len(reference_patches)} rows for the "
                         f"{channels} channels of {name!r}; give one row per channel.")  # fmt: skip
    arr = np.asarray(image, np.float32)
    if arr.ndim != 3:
        raise InputError(f"image must be one (H, W, 3) image, got shape {arr.shape}.")
    first = concept_relevance(model, arr[None], None if target is None else [int(target)],
                              name, rule=rule)  # fmt: skip
    channel = first.channel_relevance[0]
    units = np.argsort(-channel, kind="stable")[: int(top)].astype(np.int64)
    res = concept_relevance(model, arr[None], first.targets, name, rule=rule,
                            concepts=[int(u) for u in units])  # fmt: skip
    logits = res.logits[0].astype(np.float64)
    t = int(res.targets[0])
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    total = float(channel.sum())
    names = model.class_names
    return Explanation(
        image=arr,
        target=t,
        class_name=names[t] if names else str(t),
        logit=float(logits[t]),
        probability=float(probs[t]),
        predicted=int(np.argmax(logits)),
        layer=name,
        rule=res.rule,
        heatmap=res.heatmap[0],
        units=units,
        relevance=channel[units].astype(np.float32),
        share=(channel[units] / total if total != 0 else np.zeros(len(units))).astype(np.float32),
        concept_heatmaps=res.concept_heatmaps[0],
        references=None if reference_patches is None else np.asarray(reference_patches)[units],
        labels=None if labels is None else tuple(str(labels[u]) for u in units),
    )


def _heat_rgb(heat: np.ndarray, scale: float) -> np.ndarray:
    """A signed heatmap (H, W) as RGB in [0, 1]: red positive, blue negative, white 0."""
    v = np.clip(heat / scale, -1, 1) if scale > 0 else np.zeros_like(heat)
    rgb = np.ones((*heat.shape, 3), np.float32)
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    rgb[..., 1] -= pos + neg
    rgb[..., 2] -= pos
    rgb[..., 0] -= neg
    return np.clip(rgb, 0, 1)


def write_explanation(explanation: Explanation, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``explanation.png`` (the image, its heatmap, then one row per concept:
    conditional heatmap and reference patches) and ``explanation.json`` into ``out``.

    Each heatmap is scaled by its own largest magnitude (colour: red = relevance for
    the class, blue = against). Files are written atomically. Returns their paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnvis_jax.report.files import save_figure, write_json

    e = explanation
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(e.units)
    refs = 0 if e.references is None else e.references.shape[1]
    cols = 2 + refs
    fig, axes = plt.subplots(n + 1, cols, figsize=(1.7 * cols, 1.8 * (n + 1)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(e.image)
    axes[0, 0].set_title(f"{e.class_name} p={e.probability:.2f}", fontsize=7)
    axes[0, 1].imshow(_heat_rgb(e.heatmap, float(np.abs(e.heatmap).max())))
    axes[0, 1].set_title(f"relevance ({e.rule})", fontsize=7)
    for i in range(n):
        row = axes[i + 1]
        heat = e.concept_heatmaps[i]
        row[0].imshow(_heat_rgb(heat, float(np.abs(heat).max())))
        label = f" {e.labels[i]}" if e.labels else ""
        row[0].set_title(f"{e.layer}:{int(e.units[i])}{label}\n{100 * e.share[i]:.1f}%",
                         fontsize=7)  # fmt: skip
        for j in range(refs):
            row[2 + j].imshow(np.clip(e.references[i, j], 0, 1))
        if refs:
            row[2].set_title("reference images", fontsize=7, loc="left")
    fig.suptitle(f"{e.class_name}: top concepts of {e.layer}", fontsize=9)
    fig.tight_layout()
    png = save_figure(fig, folder / "explanation.png")
    write_json(folder / "explanation.json", e.summary())
    return {"figure": png, "json": folder / "explanation.json"}
