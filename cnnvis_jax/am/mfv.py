"""Multifaceted Feature Visualization (Nguyen, Yosinski & Clune 2016).

:func:`facets` finds the facets of a class from its training images: embed every
image of the class with a high layer (fc7), reduce with PCA (``pca_dim``
components, default 50) and then t-SNE to 2-D (scikit-learn; perplexity
``min(30, (N - 1) / 3)``, PCA initialization, fixed seed), and cluster the 2-D
points with k-means into K facets (default 10; 10 restarts). Each facet is
represented by the mean of the ``per_facet`` images (default 15) closest to its
centroid in the t-SNE plane. The MFV release ships such mean images but not the
clustering code; these PCA and t-SNE settings are ours. The features are computed
with ``batch_size`` images per device, so the facets are the same, to the last bit,
on any number of devices or processes.

:func:`render_facets` runs one activation maximization per facet, each starting
from its facet's mean image, with center-bias regularization (``mfv-mean``).

:func:`facet_diversity` measures how multifaceted a class is at each layer: the
class's images are embedded by the layer (spatial maps averaged over positions,
each vector L2-normalized), clustered with k-means into K groups, and the diversity
is the mean pairwise cosine distance ``1 - cos`` between the K centroids (0: all
facets alike; larger: facets that differ more).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cnnvis_jax.errors import InputError
from cnnvis_jax.features import extract_features, iterate_batches
from cnnvis_jax.model import Model

__all__ = ["Facets", "MFVResult", "class_indices", "facet_diversity", "facets", "render_facets"]


class Facets(NamedTuple):
    """The facets of one class.

    Attributes:
      class_index: the class.
      layer: the embedding layer.
      indices: int64 (N,), the class's images (indices into the source).
      embedding: float32 (N, 2), their t-SNE coordinates.
      labels: int32 (N,), each image's facet.
      members: int64 (K, per_facet) source indices of the images closest to each
        centroid (-1 pads facets with fewer images).
      mean_images: float32 (K, H, W, 3) in [0, 1] at the model's size: the mean of
        each facet's members.
      sizes: int64 (K,), images per facet.
    """

    class_index: int
    layer: str
    indices: np.ndarray
    embedding: np.ndarray
    labels: np.ndarray
    members: np.ndarray
    mean_images: np.ndarray
    sizes: np.ndarray


def _one_thread():
    """scikit-learn's OpenMP loops on one thread: t-SNE's Barnes-Hut gradient spins
    for seconds per iteration when its threads compete with XLA's (40 s instead of
    0.1 s for 14 points on 2 busy cores), and one thread makes the result exact."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def _features_per_device(model: Model, source: Any, layers, indices, batch_size: int, **kw):
    """:func:`extract_features` with ``batch_size`` images on every device (the batch is
    ``batch_size`` times the device count). A row's features then come from the same
    per-device program whatever the number of devices or processes, so they are the
    same to the last bit, and so are the t-SNE and k-means that follow; with a batch
    split over the devices instead, the per-device shape (and XLA's blocking of the
    dense layers) would change with the device count, and with it the last bits."""
    import jax

    return extract_features(
        model, source, layers, batch_size=batch_size * jax.device_count(), indices=indices,
        **kw,
    )  # fmt: skip


def class_indices(
    source: Any, class_index: int, *, limit: int | None = None, batch_size: int = 256
):
    """Indices of the images of ``source`` whose ``target`` is ``class_index`` (among
    the first ``limit`` images)."""
    n = len(source) if limit is None else min(len(source), int(limit))
    found = []
    for idx, valid, batch in iterate_batches(source, batch_size, np.arange(n)):
        target = np.asarray(batch.get("target", np.full(len(idx), -1)))
        found.append(idx[valid & (target == class_index)])
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _model_images(model: Model, source: Any, indices: np.ndarray) -> np.ndarray:
    """float32 (N, H, W, 3) in [0, 1] at the model's size (bilinear resize if needed)."""
    from cnnvis_jax.features import load_batch

    images = load_batch(source, indices)["image"].astype(np.float32) / 255.0
    h, w = model.input.size
    if images.shape[1:3] != (h, w):
        import jax

        images = np.asarray(
            jax.image.resize(images, (len(images), h, w, 3), "bilinear", antialias=True)
        )
    return images


def facets(
    model: Model,
    source: Any,
    class_index: int,
    *,
    k: int = 10,
    layer: str = "fc7",
    per_facet: int = 15,
    limit: int | None = None,
    pca_dim: int = 50,
    perplexity: float = 30.0,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> Facets:
    """Facets of class ``class_index`` from the images of ``source`` (see the module
    docstring). ``limit`` scans only the first images of the source; ``batch_size``
    is the number of images per device.

    Raises:
      InputError: a class out of range, an unknown layer, fewer than ``2 k`` images
        of the class, ``k`` or ``per_facet`` below 1.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    model.check_class(class_index)
    info = model.layer(layer)
    if k < 1 or per_facet < 1:
        raise InputError(
            f"facets and per-facet images must be at least 1, got {k} and {per_facet}."
        )
    indices = class_indices(source, class_index, limit=limit)
    if indices.size < 2 * k:
        raise InputError(
            f"class {class_index} has {indices.size} images in the data set but {k} facets "
            f"need at least {2 * k}; use more images (--images) or fewer facets (--facets)."
        )
    feats = _features_per_device(
        model, source, [info.name], indices, batch_size, progress=progress
    )[info.name]
    feats = feats.reshape(len(indices), -1).astype(np.float64)
    n_comp = int(min(pca_dim, feats.shape[0] - 1, feats.shape[1]))
    reduced = PCA(n_components=n_comp, random_state=seed).fit_transform(feats)
    perp = float(min(perplexity, max(2.0, (len(indices) - 1) / 3.0)))
    with _one_thread():
        tsne = TSNE(2, perplexity=perp, init="pca", random_state=seed)
        embedding = tsne.fit_transform(reduced)
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(embedding)
    labels = km.labels_.astype(np.int32)
    members = np.full((k, per_facet), -1, np.int64)
    means = []
    for f in range(k):
        inside = np.flatnonzero(labels == f)
        dist = np.linalg.norm(embedding[inside] - km.cluster_centers_[f], axis=1)
        chosen = inside[np.argsort(dist, kind="stable")[:per_facet]]
        members[f, : chosen.size] = indices[chosen]
        means.append(_model_images(model, source, indices[chosen]).mean(axis=0))
    return Facets(
        class_index=int(class_index),
        layer=info.name,
        indices=indices.astype(np.int64),
        embedding=embedding.astype(np.float32),
        labels=labels,
        members=members,
        mean_images=np.stack(means).astype(np.float32),
        sizes=np.bincount(labels, minlength=k).astype(np.int64),
    )


def render_facets(
    model: Model,
    found: Facets,
    *,
    recipe: Any = "mfv-mean",
    key: Any = 0,
    steps: int | None = None,
    progress: bool = False,
    checkpoint: Any = None,
):
    """One activation maximization of the class score per facet, each starting from
    its facet's mean image (all facets in one vmapped call). Returns the
    :class:`~cnnvis_jax.am.render.RenderResult` with leading axis K.

    ``checkpoint``: a ``.npz`` file for resumable state (see
    :func:`~cnnvis_jax.am.render.render`)."""
    from cnnvis_jax.am.objectives import class_logit
    from cnnvis_jax.am.render import render

    objectives = [class_logit(found.class_index) for _ in range(len(found.mean_images))]
    return render(
        model,
        objectives,
        recipe,
        key=key,
        init_images=found.mean_images[:, None],
        steps=steps,
        progress=progress,
        desc=f"facets of class {found.class_index}",
        checkpoint=checkpoint,
    )


def facet_diversity(
    model: Model,
    source: Any,
    indices: np.ndarray,
    layers: list[str] | tuple[str, ...],
    *,
    k: int = 10,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """Mean pairwise cosine distance between the K k-means facet centroids of the
    images ``indices`` at each layer (see the module docstring); ``batch_size`` images
    per device."""
    from sklearn.cluster import KMeans

    indices = np.asarray(indices, np.int64)
    if indices.size < 2 * k:
        raise InputError(f"facet diversity with {k} facets needs at least {2 * k} images.")
    names = [model.layer(name).name for name in layers]
    feats = _features_per_device(
        model,
        source,
        names,
        indices,
        batch_size,
        reduce=lambda _, a: a.mean(axis=(1, 2)) if a.ndim == 4 else a,
        progress=False,
    )
    out = {}
    for name in names:
        f = feats[name].astype(np.float64)
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        with _one_thread():
            centres = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(f).cluster_centers_
        centres = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
        cos = centres @ centres.T
        iu = np.triu_indices(k, 1)
        out[name] = float(np.mean(1.0 - cos[iu]))
    return out


class MFVResult(NamedTuple):
    """Multifaceted feature visualization of one class: its facets, one rendering per
    facet (a :class:`~cnnvis_jax.am.render.RenderResult` with leading axis K), the
    class name and the facet diversity per layer (:func:`facet_diversity`, or None)."""

    facets: Facets
    rendered: Any
    class_name: str
    diversity: dict[str, float] | None = None

    def summary(self) -> list[dict[str, Any]]:
        """One row per facet: its class, size, members and activations."""
        found = self.facets
        return [{"class": int(found.class_index), "class_name": self.class_name, "facet": f,
                 "size": int(found.sizes[f]),
                 "members": [int(m) for m in found.members[f] if m >= 0], **row}
                for f, row in enumerate(self.rendered.summary())]  # fmt: skip

    def save(self, out_dir) -> Path:
        """Write ``facets.png`` (top row: each facet's mean image and size; bottom row:
        its visualization and activation), ``facet_XX.png`` / ``facet_XX.json`` per
        facet and, with a diversity, ``diversity.json``; returns the folder."""
        from cnnvis_jax.report.files import write_json
        from cnnvis_jax.report.grid import image_grid, save_png

        out = Path(out_dir)
        found, result = self.facets, self.rendered
        k = len(found.mean_images)
        top = [f"f{f} n={int(found.sizes[f])}" for f in range(k)]
        bottom = [f"f{f} {float(result.final_activation[f, 0]):.3g}" for f in range(k)]
        tiles = np.concatenate([found.mean_images, result.images[:, 0]])
        scale = max(1, 128 // max(tiles.shape[1], 1))
        save_png(image_grid(tiles, ncols=k, labels=top + bottom, scale=scale), out / "facets.png")
        for f, row in enumerate(self.summary()):
            write_json(out / f"facet_{f:02d}.json", row)
            save_png(result.images[f, 0], out / f"facet_{f:02d}.png")
        if self.diversity is not None:
            write_json(out / "diversity.json", {"class": int(found.class_index), "facets": k,
                                                "diversity": self.diversity})  # fmt: skip
        return out
