"""Network Dissection of several layers at once: pass 1 (thresholds), pass 2 (tally),
scoring, with checkpoints so an interrupted run resumes where it stopped.

Both passes stream the data set in a fixed batch shape (the last batch padded and
masked), share one forward per batch among all requested layers, and shard images
over the device mesh. With ``checkpoint=DIR`` the pass-1 state (each unit's top
values, merged over devices) and the partial tallies are written to ``DIR`` every
``checkpoint_every`` batches (atomically); a later call with the same arguments
continues from there, a call with different arguments starts over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cnnvis_jax import parallel
from cnnvis_jax.dissection import _mesh
from cnnvis_jax.dissection import thresholds as th
from cnnvis_jax.dissection.labels import LabelLayout, label_layout, load_labelled
from cnnvis_jax.dissection.scoring import MODES, Counts, Scores, score
from cnnvis_jax.dissection.tally import CONTRACTIONS, compiled_tally, resolve_contraction
from cnnvis_jax.dissection.upsample import layer_matrices
from cnnvis_jax.errors import InputError
from cnnvis_jax.features import load_batch, prefetched
from cnnvis_jax.model import Model
from cnnvis_jax.progress import progress_bar

COUNT_KEYS = ("both", "units", "units_cat_lite", "units_cat_original")
PREPROCESS = ("model", "lite")
LITE_MEAN = (124.6901, 118.6897, 109.5388)
"""NetDissect-Lite's RGB mean on 0-255 values (it subtracts the BGR mean
[109.5388, 118.6897, 124.6901] in BGR order, then flips back to RGB)."""
LITE_STD = 255.0 * 0.224
"""NetDissect-Lite divides by 255 * 0.224 = 57.12 for every channel."""


def with_lite_preprocessing(model: Model) -> Model:
    """``model`` fed as NetDissect-Lite feeds its networks: ``(x - LITE_MEAN) / 57.12``
    on 0-255 RGB values (instead of the model's own normalization)."""
    contract = dataclasses.replace(
        model.input, mean=LITE_MEAN, std=(LITE_STD,) * 3, value_scale=255.0, channel_order="RGB"
    )
    return model.replace(input=contract)


@dataclasses.dataclass
class LayerResult:
    """One layer: its thresholds (pass 1), counts (pass 2) and scores."""

    layer: str
    thresholds: th.Thresholds
    counts: Counts
    scores: Scores

    def summary(self, layout: LabelLayout) -> dict[str, Any]:
        s = self.scores
        per_cat = {
            c: int(np.sum(s.detector & (s.category == i))) for i, c in enumerate(layout.categories)
        }
        return {
            "units": int(len(s.score)),
            "detectors": int(s.detector.sum()),
            "unique": dict(s.unique),
            "concepts": int(sum(s.unique.values())),
            "detectors_per_category": per_cat,
            "constant_units": [int(u) for u in np.nonzero(self.thresholds.constant)[0]],
        }


@dataclasses.dataclass
class Dissection:
    """Result of :func:`dissect`: per-layer results plus the settings used."""

    layers: dict[str, LayerResult]
    layout: LabelLayout
    mode: str
    quantile: float
    iou_threshold: float
    images: int
    skipped: tuple[str, ...] = ()

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{layer: {units, detectors, unique: {category: n}, ...}}``."""
        return {name: r.summary(self.layout) for name, r in self.layers.items()}

    def rescore(self, mode: str | None = None, iou_threshold: float | None = None) -> Dissection:
        """The same counts scored with another mode or IoU threshold (thresholds are
        the pass-1 ones; the lite read-out differs from the exact one only there)."""
        mode = mode or self.mode
        t = self.iou_threshold if iou_threshold is None else iou_threshold
        layers = {
            n: dataclasses.replace(r, scores=score(r.counts, self.layout, mode, t))
            for n, r in self.layers.items()
        }
        return dataclasses.replace(self, layers=layers, mode=mode, iou_threshold=t)


# --- checks ----------------------------------------------------------------------------


def spatial_layers(model: Model, layers: Sequence[str] | str) -> tuple[str, ...]:
    """Canonical names of ``layers``; each must have a spatial map."""
    if isinstance(layers, str):
        layers = [n.strip() for n in layers.split(",") if n.strip()]
    if not layers:
        raise InputError("no layers given; name at least one convolutional layer (e.g. conv5).")
    out = []
    for name in layers:
        info = model.layer(name)
        if not info.spatial:
            raise InputError(
                f"layer {info.name!r} has no spatial map (shape {info.shape}); pixel-level "
                "dissection needs a convolutional layer with an (H, W, C) output."
            )
        if info.name not in out:
            out.append(info.name)
    return tuple(out)


def _order(source: Any, indices: Sequence[int] | None) -> np.ndarray:
    order = (
        np.arange(len(source), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
    )
    if order.ndim != 1 or order.size == 0:
        raise InputError("no images to dissect: the data set (or the index list) is empty.")
    if order.min() < 0 or order.max() >= len(source):
        raise InputError(f"image indices must be in 0..{len(source) - 1}.")
    if order.max() >= th.NO_IMAGE:
        raise InputError(f"image indices must be below {th.NO_IMAGE}; split the data set.")
    return order


def _describe_source(source: Any) -> str:
    if type(source).__repr__ is not object.__repr__:
        return repr(source)
    root = getattr(source, "root", "")
    return f"{type(source).__name__}:{root}:{getattr(source, 'split', '')}:{len(source)}"


def _params_digest(model: Model) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(model.params):
        a = np.asarray(leaf)
        h.update(str((a.shape, a.dtype)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# --- checkpoints -----------------------------------------------------------------------


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_suffix(".tmp.npz")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _load_npz(path: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None  # a torn or foreign file: start the pass again
    if str(data.get("fingerprint", "")) != fingerprint:
        return None
    return data


# --- pass 1 ----------------------------------------------------------------------------


def compute_thresholds(
    model: Model,
    source: Any,
    layers: Sequence[str],
    *,
    quantile: float = 0.005,
    readout: str = "exact",
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    top_images: int = 8,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 25,
    fingerprint: str = "",
    on_checkpoint: Callable[[str, int], None] | None = None,
    progress: bool = True,
) -> dict[str, th.Thresholds]:
    """Pass 1 over ``source``: per-unit thresholds of every layer (see
    :mod:`~cnnvis_jax.dissection.thresholds`).

    Returns ``{layer: Thresholds}``.
    """
    layers = spatial_layers(model, layers)
    quantile = th.check_quantile(quantile)
    if readout not in th.READOUTS:
        raise InputError(f"readout must be one of {th.READOUTS}, got {readout!r}.")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}.")
    order = _order(source, indices)
    n = len(order)
    devices = _mesh.devices()
    size = parallel.devices_multiple(batch_size)
    specs = th.layer_specs(model, layers, n, quantile, size // devices, top_images)
    path = Path(checkpoint) / "pass1.npz" if checkpoint is not None else None
    saved = _load_npz(path, fingerprint) if path is not None else None
    done = 0
    if saved is not None:
        done = int(saved["done"])
        merged = {
            name: {k: saved[f"{name}/{k}"] for k in ("top", "lo", "hi", "img_v", "img_i")}
            for name in layers
        }
        host = {name: th.spread(merged[name], specs[name], devices) for name in layers}
    else:
        host = {name: th.init_state(specs[name], devices) for name in layers}
    mesh = _mesh.mesh()
    split = parallel.shardings(mesh, _mesh.SPLIT)[0]
    replicated = parallel.shardings(mesh, None)[0]
    state = jax.device_put(host, split) if split is not None else jax.device_put(host)
    placed = parallel.put(model, replicated)
    step = th.compiled_step(layers, devices)

    def save(done_now: int) -> None:
        if path is None:
            return
        local = jax.device_get(state)
        arrays = {"fingerprint": np.array(fingerprint), "done": np.array(done_now)}
        for name in layers:
            merged_now = th.merge_devices(local[name], specs[name])
            for k in ("top", "lo", "hi", "img_v", "img_i"):
                arrays[f"{name}/{k}"] = merged_now[k]
        _save_npz(path, arrays)
        if on_checkpoint is not None:
            on_checkpoint("thresholds", done_now)

    starts = list(range(done, n, size))

    def prepare(start):
        chunk = order[start : start + size]
        valid = np.zeros(size, bool)
        valid[: len(chunk)] = True
        chunk = parallel.pad_axis(chunk, size)
        return start, chunk, valid, load_batch(source, chunk)["image"]

    with progress_bar(n, f"thresholds {','.join(layers)}", enabled=progress) as bar:
        bar.update(done)
        for k, (start, chunk, valid, images) in enumerate(prefetched(prepare, starts)):
            state = step(
                placed,
                parallel.put(images, split),
                parallel.put(chunk.astype(np.int32), split),
                parallel.put(valid, split),
                state,
            )
            bar.update(int(valid.sum()))
            if (k + 1) % checkpoint_every == 0 and start + size < n:
                save(start + size)
    local = jax.device_get(state)
    out = {}
    for name in layers:
        merged = th.merge_devices(local[name], specs[name])
        h, w, _ = model.layer(name).shape
        out[name] = th.finish(name, merged, n * h * w, quantile, readout)
    if path is not None:
        save(n)
    return out


# --- pass 2 ----------------------------------------------------------------------------


def _zero_counts(model: Model, layers, layout: LabelLayout) -> dict[str, Any]:
    n_cat, n_lab = len(layout.categories), layout.num_labels
    acc: dict[str, Any] = {
        "labels": np.zeros(n_lab, np.int64),
        "images": np.zeros((), np.int64),
        "category_images": np.zeros(n_cat, np.int64),
    }
    for name in layers:
        u = model.layer(name).channels
        acc[name] = {
            "both": np.zeros((u, n_lab), np.int64),
            "units": np.zeros(u, np.int64),
            "units_cat_lite": np.zeros((u, n_cat), np.int64),
            "units_cat_original": np.zeros((u, n_cat), np.int64),
        }
    return acc


def _add(acc, part) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add(acc[key], value)
        else:
            acc[key] += np.asarray(value, np.int64)


def _flatten(acc, prefix="") -> dict[str, np.ndarray]:
    out = {}
    for key, value in acc.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def compute_tally(
    model: Model,
    source: Any,
    layout: LabelLayout,
    thresholds: dict[str, th.Thresholds],
    *,
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    contraction: str = "auto",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 25,
    fingerprint: str = "",
    on_checkpoint: Callable[[str, int], None] | None = None,
    progress: bool = True,
) -> dict[str, Counts]:
    """Pass 2 over ``source``: the fused tally of every layer of ``thresholds``
    (see :mod:`~cnnvis_jax.dissection.tally`). Returns ``{layer: Counts}``."""
    layers = tuple(thresholds)
    if contraction not in CONTRACTIONS:
        raise InputError(f"contraction must be one of {CONTRACTIONS}, got {contraction!r}.")
    contraction = resolve_contraction(contraction)
    order = _order(source, indices)
    n = len(order)
    devices = _mesh.devices()
    size = parallel.devices_multiple(batch_size)
    acc = _zero_counts(model, layers, layout)
    path = Path(checkpoint) / "tally.npz" if checkpoint is not None else None
    saved = _load_npz(path, fingerprint) if path is not None else None
    done = 0
    if saved is not None:
        done = int(saved["done"])
        flat = _flatten(acc)
        for key in flat:
            flat[key][...] = saved[key]
    mesh = _mesh.mesh()
    split = parallel.shardings(mesh, _mesh.SPLIT)[0]
    replicated = parallel.shardings(mesh, None)[0]
    placed = parallel.put(model, replicated)
    thr = parallel.put(
        {k: np.asarray(t.values, np.float32) for k, t in thresholds.items()}, replicated
    )
    taps = {}
    for name in layers:
        h, w, _ = model.layer(name).shape
        taps[name] = layer_matrices((h, w), layout.seg_size)
    taps = parallel.put(taps, replicated)
    labelcat = parallel.put(layout.labelcat(), replicated)
    step = compiled_tally(layers, contraction, devices)

    def save(done_now: int) -> None:
        if path is None:
            return
        arrays = {"fingerprint": np.array(fingerprint), "done": np.array(done_now)}
        arrays.update(_flatten(acc))
        _save_npz(path, arrays)
        if on_checkpoint is not None:
            on_checkpoint("tally", done_now)

    def prepare(start):
        chunk = order[start : start + size]
        valid = np.zeros(size, bool)
        valid[: len(chunk)] = True
        chunk = parallel.pad_axis(chunk, size)
        return start, valid, load_labelled(source, chunk, layout)

    pending = None
    with progress_bar(n, f"tally {','.join(layers)}", enabled=progress) as bar:
        bar.update(done)
        for k, (start, valid, batch) in enumerate(prefetched(prepare, list(range(done, n, size)))):
            result = step(
                placed,
                parallel.put(batch["image"], split),
                parallel.put(valid, split),
                parallel.put(batch["pixel"], split),
                parallel.put(batch["scalar"], split),
                thr,
                taps,
                labelcat,
            )
            if pending is not None:  # add the previous batch while this one computes
                _add(acc, jax.device_get(pending))
            pending = result
            bar.update(int(valid.sum()))
            if (k + 1) % checkpoint_every == 0 and start + size < n:
                _add(acc, jax.device_get(pending))
                pending = None
                save(start + size)
        if pending is not None:
            _add(acc, jax.device_get(pending))
    if path is not None:
        save(n)
    return {
        name: Counts(
            both=acc[name]["both"],
            units=acc[name]["units"],
            units_cat_lite=acc[name]["units_cat_lite"],
            units_cat_original=acc[name]["units_cat_original"],
            labels=acc["labels"].copy(),
            images=int(acc["images"]),
            category_images=acc["category_images"].copy(),
        )
        for name in layers
    }


# --- both passes -----------------------------------------------------------------------


def dissect(
    model: Model,
    source: Any,
    layers: Sequence[str] | str,
    *,
    mode: str = "lite",
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    readout: str | None = None,
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    categories: Sequence[str] | None = None,
    zero_scalar: bool = False,
    top_images: int = 8,
    contraction: str = "auto",
    preprocess: str = "model",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 25,
    on_checkpoint: Callable[[str, int], None] | None = None,
    progress: bool = True,
) -> Dissection:
    """Network Dissection of ``layers`` of ``model`` on a labelled ``source``.

    Args:
      model: the network.
      source: a concept data set (``ConceptSet``, ``BrodenSource``,
        :class:`~cnnvis_jax.dissection.labels.ArrayConceptSource`).
      layers: spatial layer names (or one comma-separated string).
      mode: ``"lite"`` (NetDissect-Lite's denominator and quantile read-out) or
        ``"original"`` (NetDissect's image-has-category denominator, exact
        order-statistic threshold).
      quantile: top fraction of activations above the threshold (0.005).
      iou_threshold: IoU at which a unit counts as a detector (0.04).
      readout: override the threshold read-out (``"exact"`` or ``"lite"``).
      batch_size: images per step (rounded up to a multiple of the device count).
      indices: the images to use (default all).
      categories: categories to score (default all of the data set).
      zero_scalar: score image-level label 0 as NetDissect-Lite does (a texture).
      top_images: images kept per unit for the report (by per-image maximum).
      contraction: ``"auto"``, ``"segment"`` or ``"einsum"`` (see tally).
      preprocess: ``"model"`` (the model's own input normalization, right for the
        networks of this package) or ``"lite"`` (NetDissect-Lite's, for networks
        trained with it; see :func:`with_lite_preprocessing`).
      checkpoint: folder for resumable state (``pass1.npz``, ``tally.npz``).
      checkpoint_every: batches between checkpoints.
      on_checkpoint: called as ``(stage, images_done)`` after each checkpoint.
      progress: show progress bars.

    Raises:
      InputError: unknown/fully connected layers, an unlabelled data set, a missing
        category, bad quantile/threshold/mode.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
    layers = spatial_layers(model, layers)
    quantile = th.check_quantile(quantile)
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise InputError(f"the IoU threshold must be in [0, 1], got {iou_threshold!r}.")
    if int(top_images) != top_images or top_images < 1:
        raise InputError(f"top_images must be a positive integer, got {top_images!r}.")
    if checkpoint_every < 1:
        raise InputError(f"checkpoint_every must be >= 1, got {checkpoint_every}.")
    readout = readout or ("lite" if mode == "lite" else "exact")
    if preprocess not in PREPROCESS:
        raise InputError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}.")
    if preprocess == "lite":
        model = with_lite_preprocessing(model)
    layout = label_layout(source, categories, zero_scalar=zero_scalar)
    order = _order(source, indices)
    if checkpoint is not None:
        Path(checkpoint).mkdir(parents=True, exist_ok=True)
    base = {
        "model": model.name,
        "params": _params_digest(model) if checkpoint is not None else "",
        "source": _describe_source(source),
        "indices": hashlib.sha256(order.tobytes()).hexdigest()[:16],
        "layers": list(layers),
        "quantile": quantile,
        "readout": readout,
        "top_images": int(top_images),
        "preprocess": preprocess,
    }
    fp1 = json.dumps(base, sort_keys=True)
    thresholds = compute_thresholds(
        model,
        source,
        layers,
        quantile=quantile,
        readout=readout,
        batch_size=batch_size,
        indices=order,
        top_images=top_images,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        fingerprint=fp1,
        on_checkpoint=on_checkpoint,
        progress=progress,
    )
    fp2 = json.dumps({**base, "layout": layout.describe()}, sort_keys=True)
    counts = compute_tally(
        model,
        source,
        layout,
        thresholds,
        batch_size=batch_size,
        indices=order,
        contraction=contraction,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        fingerprint=fp2,
        on_checkpoint=on_checkpoint,
        progress=progress,
    )
    results = {
        name: LayerResult(
            name, thresholds[name], counts[name], score(counts[name], layout, mode, iou_threshold)
        )
        for name in layers
    }
    return Dissection(
        layers=results,
        layout=layout,
        mode=mode,
        quantile=quantile,
        iou_threshold=float(iou_threshold),
        images=len(order),
        skipped=tuple(getattr(source, "skipped", ())),
    )
