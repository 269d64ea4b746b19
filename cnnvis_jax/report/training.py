"""The training report: accuracy curves, sample images with their masks, and
first-layer filters, as PNGs and one HTML page (``DIR/report/index.html``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnnvis_jax.report.files import save_figure, write_json, write_text
from cnnvis_jax.report.grid import image_grid, label_colors, rescale_each, save_png
from cnnvis_jax.report.html import esc, figure, page, table

MASK_CATEGORIES = ("object", "part", "color", "texture")


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy and loss per epoch (train and validation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_accuracy"] for h in history], "s-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1), title="accuracy")
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return path


def sample_sheet(source, count: int = 8) -> tuple[np.ndarray, list[str]]:
    """Rows of [image, object, part, color, texture masks] for ``count`` samples.

    Returns the tiles (count * 5, H, W, 3) and their captions.
    """
    vocab = source.vocabulary
    colors = label_colors(vocab.num_labels)
    tiles, captions = [], []
    for i in range(min(count, len(source))):
        sample = source[i]
        image = sample["image"]
        scene = ",".join(vocab.label(n).name for n in sample["scalar"].get("scene", ()) if n)
        tiles.append(image)
        captions.append(scene or f"#{i}")
        for cat in MASK_CATEGORIES:
            mask = sample["pixel"].get(cat)
            if mask is None:
                tiles.append(np.zeros_like(image))
                captions.append(f"no {cat}")
                continue
            top = mask[0]
            if top.shape != image.shape[:2]:  # smaller masks (Broden: half size): nearest
                hh, ww = image.shape[:2]
                rows = (np.arange(hh) * top.shape[0]) // hh
                cols = (np.arange(ww) * top.shape[1]) // ww
                top = top[rows[:, None], cols[None, :]]
            tiles.append(colors[top])
            captions.append(cat)
    return np.stack(tiles), captions


def first_layer_filters(module) -> np.ndarray:
    """conv1 kernels as (C_out, k, k, 3) pictures, each rescaled to [0, 1]."""
    kernel = np.asarray(module.conv1.kernel[...])  # HWIO
    return rescale_each(kernel.transpose(3, 0, 1, 2))


def write_training_report(run_dir, metrics: dict[str, Any], module, val_set) -> Path:
    """Write ``run_dir/report/{curves,samples,filters}.png`` and ``index.html``."""
    out = Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(metrics["history"], out / "curves.png")
    tiles, captions = sample_sheet(val_set)
    save_png(
        image_grid(tiles, ncols=1 + len(MASK_CATEGORIES), labels=captions, scale=2),
        out / "samples.png",
    )
    filters = first_layer_filters(module)
    save_png(image_grid(filters, ncols=12, scale=6, pad=3), out / "filters.png")
    rows = [
        (
            h["epoch"],
            h["step"],
            f"{h['train_accuracy']:.3f}",
            f"{h['val_accuracy']:.3f}",
            f"{h['val_loss']:.3f}",
            f"{h['seconds']:.0f}",
        )
        for h in metrics["history"]
    ]
    body = (
        f"<p>Validation accuracy <b>{metrics['val_accuracy']:.3f}</b> after "
        f"{esc(metrics['epochs'])} epochs ({esc(metrics['steps'])} steps) in "
        f"{metrics['seconds']:.0f} s.</p>"
        + figure("curves.png", "accuracy and loss per epoch")
        + "<h2>Per epoch</h2>"
        + table(("epoch", "step", "train acc", "val acc", "val loss", "seconds"), rows)
        + "<h2>Validation images and their masks</h2>"
        + "<p>Each row: image (caption: scene), then object, part, colour and texture masks.</p>"
        + figure("samples.png", "samples with masks")
        + "<h2>First-layer filters</h2>"
        + figure("filters.png", "conv1 filters, each rescaled to [0, 1]")
        + "<h2>Classes</h2><p>"
        + esc(", ".join(metrics["class_names"]))
        + "</p>"
    )
    write_text(out / "index.html", page("ConceptNet training report", body))
    write_json(out / "report.json", {"files": ["curves.png", "samples.png", "filters.png"]})
    return out / "index.html"
