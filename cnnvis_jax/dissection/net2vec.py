"""Net2Vec (Fong & Vedaldi, CVPR'18): concepts as weighted combinations of units.

Segmentation: for every concept c, ``M_hat = sigmoid(up(sum_k w_kc I_k + b_c))`` with
``I_k = [A_k > T_k]`` the binarized activations (the dissection's top-quantile
thresholds) and ``up`` PIL's bilinear upsampling to the segmentation size. All
concepts train at once as one (units x concepts) matrix ``W`` and a bias vector. The
loss of concept c, over the images of a batch that contain c only, is

    -(1 / B_c) sum_images sum_pixels [a_c M M_hat + (1 - a_c)(1 - M)(1 - M_hat)]

with ``a_c = 1 - mean fraction of pixels of c`` (over training images containing c).
Optimizer: optax SGD, learning rate 1e-4, momentum 0.9, batch 16 (the paper's).

Evaluation: set IoU on the validation images, ``sum |(M_hat > 0.5) & M| / sum
|(M_hat > 0.5) | M|``, against the best single unit chosen on the training images
(the unit with the best set IoU of ``up(A_k) > T_k``, from the dissection tally).

Classification: ``s_c = mean_pixels(sum_k w_kc I_k) + b_c`` with a logistic loss whose
positives and negatives weigh half each (balanced); evaluated by average precision
against the best single unit's ``mean_pixels(I_k)`` (chosen on train).

The binarized activations and labels of the training and validation images are kept
in memory (bits and small integers), as Net2Vec trains for many epochs.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnvis_jax import checkpoint as checkpoint_mod
from cnnvis_jax import interrupt
from cnnvis_jax.dissection.dissect import compute_tally, compute_thresholds, spatial_layers
from cnnvis_jax.dissection.labels import LabelLayout, label_layout, load_labelled
from cnnvis_jax.dissection.thresholds import float32_below
from cnnvis_jax.dissection.upsample import layer_matrices, upsample
from cnnvis_jax.errors import InputError
from cnnvis_jax.features import to_model_input
from cnnvis_jax.model import Model
from cnnvis_jax.prng import raw_key
from cnnvis_jax.progress import progress_bar


@dataclasses.dataclass
class Net2VecResult:
    """Concept embeddings of one layer and their comparison with single units.

    Attributes:
      layer: the layer.
      concepts: label numbers (C,) of the segmentation concepts.
      names: their names.
      weights: float32 (U, C); bias: float32 (C,).
      alpha: float64 (C,) the loss weights.
      loss: float64 (epochs,) mean training loss per epoch.
      set_iou: float64 (C,) Net2Vec's set IoU on validation.
      single_unit: int (C,) best single unit (chosen on train).
      single_iou: float64 (C,) its set IoU on validation.
      cls_concepts, cls_names: image-level classification concepts (label numbers).
      cls_weights (U, K), cls_bias (K,), cls_loss (epochs,), cls_ap (K,),
      cls_single_unit (K,), cls_single_ap (K,): the classification variant.
    """

    layer: str
    concepts: np.ndarray
    names: tuple[str, ...]
    weights: np.ndarray
    bias: np.ndarray
    alpha: np.ndarray
    loss: np.ndarray
    set_iou: np.ndarray
    single_unit: np.ndarray
    single_iou: np.ndarray
    cls_concepts: np.ndarray
    cls_names: tuple[str, ...]
    cls_weights: np.ndarray
    cls_bias: np.ndarray
    cls_loss: np.ndarray
    cls_ap: np.ndarray
    cls_single_unit: np.ndarray
    cls_single_ap: np.ndarray

    def rows(self) -> list[dict[str, Any]]:
        """One row per segmentation concept (the comparison table)."""
        return [
            {
                "concept": self.names[i],
                "label": int(self.concepts[i]),
                "alpha": float(self.alpha[i]),
                "single_unit": int(self.single_unit[i]),
                "single_iou": float(self.single_iou[i]),
                "net2vec_iou": float(self.set_iou[i]),
            }
            for i in range(len(self.concepts))
        ]

    def save(self, out_dir) -> Path:
        """Write ``net2vec.csv``, ``net2vec.json``, ``net2vec.png`` and ``index.html``
        into ``out_dir`` (:func:`write_net2vec`); returns the folder."""
        write_net2vec(out_dir, self)
        return Path(out_dir)

    def summary(self) -> dict[str, Any]:
        better = self.set_iou > self.single_iou
        cls_better = self.cls_ap > self.cls_single_ap
        return {
            "layer": self.layer,
            "concepts": len(self.concepts),
            "mean_single_iou": float(np.mean(self.single_iou)) if len(self.concepts) else 0.0,
            "mean_net2vec_iou": float(np.mean(self.set_iou)) if len(self.concepts) else 0.0,
            "net2vec_better": int(better.sum()),
            "classification_concepts": len(self.cls_concepts),
            "mean_single_ap": float(np.mean(self.cls_single_ap)) if len(self.cls_ap) else 0.0,
            "mean_net2vec_ap": float(np.mean(self.cls_ap)) if len(self.cls_ap) else 0.0,
            "classification_better": int(cls_better.sum()),
            "final_loss": float(self.loss[-1]) if len(self.loss) else None,
        }


# --- data --------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("layer",))
def _indicators(model: Model, images, thresholds, *, layer: str):
    act = model.apply(model.params, to_model_input(model, images), (layer,))[layer]
    return act > thresholds


def collect(
    model: Model,
    source: Any,
    layer: str,
    thresholds: np.ndarray,
    layout: LabelLayout,
    indices: np.ndarray,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """``{"bits": bool (N, h, w, U), "pixel": int32 (N, Ly, P), "scalar": int32 (N, S)}``."""
    bits, pix, sca = [], [], []
    thr = jnp.asarray(thresholds, jnp.float32)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        padded = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[-1])])
        batch = load_labelled(source, padded, layout)
        bits.append(np.asarray(_indicators(model, batch["image"], thr, layer=layer))[: len(chunk)])
        pix.append(batch["pixel"][: len(chunk)])
        sca.append(batch["scalar"][: len(chunk)])
    return {
        "bits": np.concatenate(bits),
        "pixel": np.concatenate(pix),
        "scalar": np.concatenate(sca),
    }


def concept_masks(pix: jax.Array, concepts: jax.Array) -> jax.Array:
    """bool (B, P, C): pixels carrying each concept in any layer."""
    return jnp.any(pix[:, :, :, None] == concepts[None, None, None, :], axis=1)


def presence(pix: np.ndarray, sca: np.ndarray, concepts: np.ndarray) -> np.ndarray:
    """bool (N, C): images containing each concept (any pixel or image-level label)."""
    out = np.zeros((len(pix), len(concepts)), bool)
    for i, c in enumerate(concepts.tolist()):
        out[:, i] = (pix == c).any(axis=(1, 2)) | (sca == c).any(axis=1)
    return out


# --- segmentation ------------------------------------------------------------------------


def seg_logits(params, bits, rows, cols):
    """(B, sh, sw, C) logits of ``bits`` (B, h, w, U) under ``params = (W, b)``."""
    w, b = params
    z = jnp.einsum("bhwu,uc->bhwc", bits.astype(jnp.float32), w)
    return upsample(z, rows, cols) + b


def seg_loss(params, bits, pix, concepts, alpha, rows, cols):
    """Net2Vec's weighted loss summed over concepts (each over images containing it)."""
    prob = jax.nn.sigmoid(seg_logits(params, bits, rows, cols))
    b = prob.shape[0]
    prob = prob.reshape(b, -1, prob.shape[-1])
    m = concept_masks(pix, concepts).astype(jnp.float32)
    per = alpha * m * prob + (1 - alpha) * (1 - m) * (1 - prob)
    per_image = -jnp.sum(per, axis=1)  # (B, C)
    contains = (jnp.sum(m, axis=1) > 0).astype(jnp.float32)
    count = jnp.sum(contains, axis=0)
    return jnp.sum(jnp.sum(per_image * contains, 0) / jnp.maximum(count, 1.0))


@functools.partial(jax.jit, static_argnames=("optimizer", "batch"))
def _seg_epoch(params, opt_state, key, bits, pix, concepts, alpha, rows, cols, *, optimizer, batch):
    n = bits.shape[0]
    steps = n // batch
    order = jax.random.permutation(key, n)[: steps * batch].reshape(steps, batch)

    def step(carry, idx):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(seg_loss)(
            params, bits[idx], pix[idx], concepts, alpha, rows, cols
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
    return params, opt_state, jnp.mean(losses)


@jax.jit
def _seg_counts(params, bits, pix, concepts, rows, cols):
    pred = seg_logits(params, bits, rows, cols) > 0
    pred = pred.reshape(pred.shape[0], -1, pred.shape[-1])
    m = concept_masks(pix, concepts)
    return jnp.sum(pred & m, axis=(0, 1)), jnp.sum(pred | m, axis=(0, 1))


def set_iou(params, data, concepts, rows, cols, batch: int = 64) -> np.ndarray:
    """float64 (C,) set IoU of the segmentation embeddings over ``data``."""
    inter = np.zeros(len(concepts), np.int64)
    union = np.zeros(len(concepts), np.int64)
    for s in range(0, len(data["bits"]), batch):
        i, u = _seg_counts(params, data["bits"][s : s + batch], data["pixel"][s : s + batch],
                           concepts, rows, cols)  # fmt: skip
        inter += np.asarray(i, np.int64)
        union += np.asarray(u, np.int64)
    return inter / np.maximum(union, 1)


# --- classification ------------------------------------------------------------------------


def cls_scores(params, bits):
    w, b = params
    pooled = jnp.mean(bits.astype(jnp.float32), axis=(1, 2))  # (B, U)
    return pooled @ w + b


def cls_loss(params, bits, target):
    """Balanced logistic loss: positives and negatives weigh half each, per concept."""
    s = cls_scores(params, bits)
    t = target.astype(jnp.float32)
    pos = jnp.maximum(jnp.sum(t, 0), 1.0)
    neg = jnp.maximum(jnp.sum(1 - t, 0), 1.0)
    weight = 0.5 * t / pos + 0.5 * (1 - t) / neg
    return jnp.sum(weight * optax.sigmoid_binary_cross_entropy(s, t))


@functools.partial(jax.jit, static_argnames=("optimizer", "batch"))
def _cls_epoch(params, opt_state, key, bits, target, *, optimizer, batch):
    n = bits.shape[0]
    steps = n // batch
    order = jax.random.permutation(key, n)[: steps * batch].reshape(steps, batch)

    def step(carry, idx):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(cls_loss)(params, bits[idx], target[idx])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
    return params, opt_state, jnp.mean(losses)


def average_precision(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """float64 (C,) average precision of ``scores`` (N, C) for boolean ``target`` (N, C)."""
    out = np.zeros(scores.shape[1])
    for c in range(scores.shape[1]):
        order = np.lexsort((np.arange(len(scores)), -scores[:, c]))
        hits = target[order, c].astype(np.float64)
        if hits.sum() == 0:
            continue
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        out[c] = float(np.sum(precision * hits) / hits.sum())
    return out


# --- driver ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _sgd(learning_rate: float, momentum: float) -> optax.GradientTransformation:
    """One optimizer object per setting, so the jitted epochs are reused across calls."""
    return optax.sgd(learning_rate, momentum=momentum)


def _phase_state(phase: str, tree, key, losses, base=None) -> dict[str, np.ndarray]:
    """A training phase's (``seg`` or ``cls``) resumable state as named arrays:
    ``tree`` = (params, optimizer state), the PRNG key, the losses so far (after the
    arrays of ``base``, e.g. the finished phase's)."""
    state = checkpoint_mod.tree_arrays(tree, phase)
    return {**(base or {}), **state, f"{phase}_key": np.asarray(key),
            f"{phase}_losses": np.asarray(losses)}  # fmt: skip


def _resumed(saved: dict, phase: str, tree, key, checkpoint):
    """``(losses, key, tree)`` of ``phase`` from :func:`_phase_state` arrays in
    ``saved``, or ``([], key, tree)`` when the phase has not started."""
    losses = [float(v) for v in saved.get(f"{phase}_losses", [])]
    if not losses:
        return losses, key, tree
    restored = checkpoint_mod.tree_from(saved, tree, checkpoint, phase)
    return losses, jnp.asarray(saved[f"{phase}_key"]), restored


def net2vec(
    model: Model,
    train_source: Any,
    val_source: Any,
    layer: str,
    *,
    quantile: float = 0.005,
    epochs: int = 30,
    batch_size: int = 16,
    learning_rate: float = 1e-4,
    momentum: float = 0.9,
    cls_learning_rate: float = 0.05,
    min_images: int = 5,
    categories: Any = None,
    key: Any = 0,
    progress: bool = True,
    checkpoint: Any = None,
) -> Net2VecResult:
    """Train and evaluate Net2Vec embeddings for one layer (see the module docstring).

    Args:
      model: the network.
      train_source, val_source: labelled data sets (same vocabulary and layout).
      layer: a spatial layer.
      quantile: top fraction for the binarizing thresholds (on ``train_source``).
      epochs, batch_size, learning_rate, momentum: SGD settings (the paper's by default).
      cls_learning_rate: SGD learning rate of the classification variant.
      min_images: concepts need this many training images containing them.
      categories: categories whose labels are concepts (default all).
      key: PRNG key (or int seed) of the shuffling.
      checkpoint: a ``.npz`` file for resumable state: the embeddings, optimizer
        states and losses are saved every few seconds between epochs
        (:class:`~cnnvis_jax.checkpoint.Periodic`), a call with the same arguments
        resumes after the last saved epoch with the same result, and inside such a
        call Ctrl-C / SIGTERM stop after the current epoch with
        :class:`~cnnvis_jax.interrupt.Interrupted`.

    Raises:
      InputError: a fully connected layer, unlabelled data, no concept with enough
        images, or bad settings.
    """
    (layer,) = spatial_layers(model, [layer])
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("min_images", min_images)):
        if int(value) != value or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}.")
    if not learning_rate > 0 or not 0 <= momentum < 1:
        raise InputError("learning_rate must be > 0 and momentum in [0, 1).")
    layout = label_layout(train_source, categories)
    val_layout = label_layout(val_source, categories)
    if val_layout.seg_size != layout.seg_size:
        raise InputError("training and validation data differ in segmentation size.")
    n_train, n_val = len(train_source), len(val_source)
    if n_train < batch_size:
        raise InputError(
            f"the training set has {n_train} images, fewer than one batch ({batch_size})."
        )
    thr = compute_thresholds(model, train_source, [layer], quantile=quantile, progress=progress)
    thresholds = float32_below(thr[layer].values)
    # one bar over the work after the thresholds: reading the images (2), the
    # segmentation epochs, the single-unit tallies (2) and the classification epochs
    total = 2 + epochs + 2 + epochs
    guard = interrupt.graceful(enabled=checkpoint is not None)
    with guard, progress_bar(total, f"net2vec {layer}", enabled=progress, unit="step") as bar:
        bar.set_postfix_str("reading images")
        train = collect(model, train_source, layer, thresholds, layout, np.arange(n_train))
        val = collect(model, val_source, layer, thresholds, layout, np.arange(n_val))
        bar.update(2)
        bar.set_postfix_str("segmentation epochs")
        pixel_labels = np.unique(train["pixel"])
        pixel_labels = pixel_labels[(pixel_labels > 0) & layout.scored()[pixel_labels]]
        present = presence(train["pixel"], train["scalar"], pixel_labels)
        concepts = pixel_labels[present.sum(0) >= min_images]
        if len(concepts) == 0:
            raise InputError(
                f"no pixel-level concept occurs in {min_images} or more training images; use "
                "more images or lower min_images."
            )
        h, w, n_units = model.layer(layer).shape
        rows, cols = layer_matrices((h, w), layout.seg_size)
        # alpha = 1 - mean concept-pixel fraction over training images containing it
        frac = np.zeros(len(concepts))
        for i, c in enumerate(concepts.tolist()):
            has = (train["pixel"] == c).any(axis=1)  # (N, P)
            rows_c = has.any(axis=1)
            frac[i] = has[rows_c].mean()
        alpha = 1.0 - frac
        key = raw_key(key)
        optimizer = _sgd(float(learning_rate), float(momentum))
        params = (
            jnp.zeros((n_units, len(concepts)), jnp.float32),
            jnp.zeros(len(concepts), jnp.float32),
        )
        opt_state = optimizer.init(params)
        dev = {k: jnp.asarray(v) for k, v in train.items()}
        cj, aj = jnp.asarray(concepts, jnp.int32), jnp.asarray(alpha, jnp.float32)
        mark = ""
        if checkpoint is not None:
            mark = checkpoint_mod.digest(model.params, thresholds, concepts, train["bits"])
            mark += repr((layer, epochs, batch_size, learning_rate, momentum, cls_learning_rate,
                          min_images, np.asarray(key).tolist(), n_train, n_val))  # fmt: skip
        saver = checkpoint_mod.Periodic(checkpoint, mark)
        saved = saver.load() or {}
        losses, key, (params, opt_state) = _resumed(saved, "seg", (params, opt_state), key,
                                                    checkpoint)  # fmt: skip
        bar.update(len(losses))
        for _ in range(len(losses), epochs):
            key, sub = jax.random.split(key)
            params, opt_state, loss = _seg_epoch(
                params, opt_state, sub, dev["bits"], dev["pixel"], cj, aj, rows, cols,
                optimizer=optimizer, batch=int(batch_size),
            )  # fmt: skip
            losses.append(float(loss))
            bar.update(1)
            saver.step(functools.partial(_phase_state, "seg", (params, opt_state), key, losses),
                       "net2vec",
                       force=len(losses) == epochs)  # fmt: skip
        seg_saved = _phase_state("seg", (params, opt_state), key, losses)
        bar.set_postfix_str("best single units")
        iou = set_iou(params, val, cj, rows, cols)
        # best single unit on train, evaluated on val, from the dissection tally
        single = {}
        for name, src in (("train", train_source), ("val", val_source)):
            counts = compute_tally(model, src, layout, thr, progress=False)[layer]
            lab = concepts
            both = counts.both[:, lab].astype(np.float64)
            single[name] = both / np.maximum(
                counts.units[:, None] + counts.labels[None, lab] - both, 1
            )
            bar.update(1)
        bar.set_postfix_str("classification epochs")
        best_unit = single["train"].argmax(axis=0)
        single_iou = single["val"][best_unit, np.arange(len(concepts))]
        # classification variant (pixel and image-level concepts)
        cls = np.unique(np.concatenate([train["pixel"].ravel(), train["scalar"].ravel()]))
        cls = cls[(cls > 0) & layout.scored()[np.clip(cls, 0, None)]]
        target_train = presence(train["pixel"], train["scalar"], cls)
        keep = (target_train.sum(0) >= min_images) & (target_train.sum(0) <= n_train - min_images)
        cls = cls[keep]
        target_train = target_train[:, keep]
        target_val = presence(val["pixel"], val["scalar"], cls)
        cls_opt = _sgd(float(cls_learning_rate), float(momentum))
        cparams = (jnp.zeros((n_units, len(cls)), jnp.float32), jnp.zeros(len(cls), jnp.float32))
        cstate = cls_opt.init(cparams)
        cls_losses, key, (cparams, cstate) = _resumed(saved, "cls", (cparams, cstate), key,
                                                      checkpoint)  # fmt: skip
        bar.update(len(cls_losses))
        tt = jnp.asarray(target_train)
        for _ in range(len(cls_losses), epochs if len(cls) else 0):
            key, sub = jax.random.split(key)
            cparams, cstate, loss = _cls_epoch(
                cparams, cstate, sub, dev["bits"], tt, optimizer=cls_opt, batch=int(batch_size)
            )
            cls_losses.append(float(loss))
            bar.update(1)
            saver.step(functools.partial(_phase_state, "cls", (cparams, cstate), key, cls_losses,
                                         seg_saved), "net2vec")  # fmt: skip
        val_scores = np.asarray(cls_scores(cparams, jnp.asarray(val["bits"])))
        cls_ap = average_precision(val_scores, target_val)
        pooled_train = train["bits"].mean(axis=(1, 2))
        pooled_val = val["bits"].mean(axis=(1, 2))
        cls_single_unit = np.zeros(len(cls), np.int64)
        cls_single_ap = np.zeros(len(cls))
        for i in range(len(cls)):
            aps = average_precision(pooled_train, np.repeat(target_train[:, i : i + 1], n_units, 1))
            cls_single_unit[i] = int(np.argmax(aps))
            cls_single_ap[i] = average_precision(
                pooled_val[:, cls_single_unit[i] : cls_single_unit[i] + 1], target_val[:, i : i + 1]
            )[0]
    return Net2VecResult(
        layer=layer,
        concepts=concepts,
        names=tuple(layout.names[c] for c in concepts),
        weights=np.asarray(params[0]),
        bias=np.asarray(params[1]),
        alpha=alpha,
        loss=np.asarray(losses),
        set_iou=iou,
        single_unit=best_unit,
        single_iou=single_iou,
        cls_concepts=cls,
        cls_names=tuple(layout.names[c] for c in cls),
        cls_weights=np.asarray(cparams[0]),
        cls_bias=np.asarray(cparams[1]),
        cls_loss=np.asarray(cls_losses),
        cls_ap=cls_ap,
        cls_single_unit=cls_single_unit,
        cls_single_ap=cls_single_ap,
    )


def write_net2vec(out, result: Net2VecResult) -> dict[str, Any]:
    """``net2vec.csv`` (table), ``net2vec.json`` (summary + rows + classification),
    ``net2vec.png`` (set IoU single unit vs combination per concept), ``index.html``."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnvis_jax.report.files import save_figure, write_csv, write_json, write_text
    from cnnvis_jax.report.html import esc, page, table

    out = Path(out)
    rows = result.rows()
    write_csv(out / "net2vec.csv", rows,
              ["concept", "label", "alpha", "single_unit", "single_iou", "net2vec_iou"])  # fmt: skip
    cls_rows = [
        {"concept": n, "single_unit": int(u), "single_ap": float(s), "net2vec_ap": float(a)}
        for n, u, s, a in zip(
            result.cls_names, result.cls_single_unit, result.cls_single_ap, result.cls_ap
        )
    ]
    record = {"summary": result.summary(), "segmentation": rows, "classification": cls_rows,
              "loss": result.loss.tolist(), "classification_loss": result.cls_loss.tolist()}  # fmt: skip
    write_json(out / "net2vec.json", record)
    order = np.argsort(-result.set_iou, kind="stable")
    fig, ax = plt.subplots(figsize=(max(5.0, 0.3 * len(order) + 1.5), 3.4))
    x = np.arange(len(order))
    ax.bar(x - 0.2, result.single_iou[order], 0.4, label="best single unit")
    ax.bar(x + 0.2, result.set_iou[order], 0.4, label="Net2Vec combination")
    ax.set_xticks(x, [result.names[i] for i in order], rotation=90, fontsize=7)
    ax.set(ylabel="set IoU (validation)", title=f"{result.layer}: single unit vs Net2Vec")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "net2vec.png")
    s = result.summary()
    body = (
        f"<p>{esc(json.dumps(s))}</p>"
        '<figure><img src="net2vec.png" alt="set IoU per concept"></figure>'
        "<h2>Segmentation (set IoU on validation)</h2>"
        + table(
            ["concept", "single unit", "single IoU", "Net2Vec IoU"],
            [
                (
                    r["concept"],
                    r["single_unit"],
                    f"{r['single_iou']:.4f}",
                    f"{r['net2vec_iou']:.4f}",
                )
                for r in rows
            ],
        )  # fmt: skip
        + "<h2>Classification (average precision on validation)</h2>"
        + table(
            ["concept", "single unit", "single AP", "Net2Vec AP"],
            [
                (r["concept"], r["single_unit"], f"{r['single_ap']:.4f}", f"{r['net2vec_ap']:.4f}")
                for r in cls_rows
            ],
        )  # fmt: skip
    )
    write_text(out / "index.html", page(f"Net2Vec: {result.layer}", body))
    return record
