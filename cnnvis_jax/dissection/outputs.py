"""Files of a dissection: per-layer ``tally.csv`` and HTML report, ``summary.json``,
``run.json`` and the detectors-per-category plot across layers.

Layout of ``out``::

    summary.json                {layer: {units, detectors, unique: {category: n}, ...}}
    run.json                    settings, data set, layout, images, skipped files
    detectors.csv               detectors (and unique detectors) per category per layer
    detectors.png               the same as a plot (when more than one layer)
    <layer>/tally.csv           NetDissect-Lite's columns, units by decreasing score
                                (``unit`` from 0; ``netdissect_unit``, its number, from 1)
    <layer>/index.html          "k/U units covering m concepts", bar graph, unit list
    <layer>/bargraph.svg        detector units per label, grouped by category
    <layer>/units/unitNNNN.jpg  unit NNNN's (from 0) top images (segmentation size) with its mask
    <layer>/compose.json        with compositional explanations (``compose=``): each unit's
                                best formula, its IoU, the best single concept and the gain
                                (tally.csv and index.html then carry them too)
"""

from __future__ import annotations

import csv
import functools
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from cnnvis_jax.dissection.compose import GAIN, ComposeResult
from cnnvis_jax.dissection.dissect import Dissection
from cnnvis_jax.dissection.labels import LabelLayout
from cnnvis_jax.dissection.scoring import tally_fields, tally_rows
from cnnvis_jax.dissection.thresholds import NO_IMAGE, Thresholds, float32_below
from cnnvis_jax.dissection.upsample import layer_matrices, upsample
from cnnvis_jax.features import load_batch, to_model_input
from cnnvis_jax.model import Model
from cnnvis_jax.report.files import save_figure, write_bytes, write_csv, write_json, write_text
from cnnvis_jax.report.html import esc, page
from cnnvis_jax.report.svg import bar_chart

CATEGORY_COLORS = {
    "object": "#1f77b4",
    "scene": "#2ca02c",
    "part": "#ff7f0e",
    "material": "#8c564b",
    "texture": "#9467bd",
    "color": "#d62728",
}


def _color(category: str) -> str:
    return CATEGORY_COLORS.get(category, "#7f7f7f")


# --- files -----------------------------------------------------------------------------


COMPOSE_FIELDS = (
    "compose-formula",
    "compose-length",
    "compose-iou",
    "compose-atomic-label",
    "compose-atomic-iou",
    "compose-gain",
)
"""tally.csv's columns of a compositional explanation (:mod:`~cnnvis_jax.dissection.compose`):
the best formula, its length and set IoU, the best single concept, its set IoU, and the
gain (formula IoU minus single-concept IoU)."""


def write_tally_csv(
    path: Path, result, layout: LabelLayout, mode: str, compose: ComposeResult | None = None
) -> Path:
    """NetDissect-Lite's tally.csv for one layer, plus :data:`COMPOSE_FIELDS` with
    ``compose``."""
    rows = tally_rows(result.counts, layout, result.scores, mode)
    fields = tally_fields(layout)
    if compose is not None:
        records = compose.records()
        for row in rows:
            r = records[row["unit"]]
            row.update(zip(COMPOSE_FIELDS, (r["formula"], r["length"], r["iou"],
                                            r["atomic_label"], r["atomic_iou"], r["gain"])))  # fmt: skip
        fields += list(COMPOSE_FIELDS)
    return write_csv(path, rows, fields)


def run_record(d: Dissection, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "mode": d.mode,
        "quantile": d.quantile,
        "iou_threshold": d.iou_threshold,
        "images": d.images,
        "layout": d.layout.describe(),
        "layers": list(d.layers),
        "thresholds": {
            n: {
                "readout": r.thresholds.readout,
                "constant_units": [int(u) for u in np.nonzero(r.thresholds.constant)[0]],
            }
            for n, r in d.layers.items()
        },
        "skipped": list(d.skipped),
        **(extra or {}),
    }


# --- top images with masks ---------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("layer",))
def _layer_acts(model: Model, images, *, layer: str):
    return model.apply(model.params, to_model_input(model, images), (layer,))[layer]


@jax.jit
def _unit_masks(maps, rows, cols, thresholds):
    up = upsample(maps[..., None], rows, cols)[..., 0]
    peak = jnp.max(maps, axis=(1, 2))
    return (up > thresholds[:, None, None]) & (peak > thresholds)[:, None, None]


def top_image_masks(
    model: Model,
    source: Any,
    layer: str,
    th: Thresholds,
    seg_size: tuple[int, int],
    chunk: int = 64,
    features: np.ndarray | None = None,
    order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each unit's top images and their masks (``th``: the layer's pass-1 thresholds).

    With ``features`` (float32 (N, h, w, U) kept from pass 1, rows in ``order``, the
    dissected source indices) no forward runs; otherwise the top images are run
    through the model again.

    Returns ``(pictures uint8 (M, H, W, 3), slot int (U, k), masks bool (U, k, sh,
    sw))``: the M distinct top images, which of them fills each unit's slot (-1:
    no image, when there are fewer images than k; its mask is empty).
    """
    index = th.top_images
    n_units, k = index.shape
    real = index != NO_IMAGE
    unique = np.unique(index[real])
    h, w, _ = model.layer(layer).shape
    rows, cols = layer_matrices((h, w), seg_size)
    pics, acts = [], []
    if features is not None:
        row_of = np.full(int(np.max(order)) + 1, -1, np.int64)
        row_of[np.asarray(order, np.int64)] = np.arange(len(order))
        acts = [features[row_of[unique]]]
        pics = [load_batch(source, unique)["image"]] if len(unique) else []
    else:
        for start in range(0, len(unique), chunk):
            part = unique[start : start + chunk]
            padded = np.concatenate([part, np.full(chunk - len(part), part[-1])])
            batch = load_batch(source, padded)["image"]
            pics.append(np.asarray(batch[: len(part)]))
            acts.append(np.asarray(_layer_acts(model, batch, layer=layer))[: len(part)])
    pics = np.concatenate(pics) if pics else np.zeros((0, 1, 1, 3), np.uint8)
    acts = np.concatenate(acts) if acts else np.zeros((0, h, w, n_units), np.float32)
    pos = np.searchsorted(unique, np.where(real, index, unique[0] if len(unique) else 0))
    maps = acts[pos, :, :, np.arange(n_units)[:, None]]  # (U, k, h, w)
    thr = np.repeat(float32_below(np.where(np.isfinite(th.values), th.values, 3e38)), k)
    masks = np.asarray(_unit_masks(maps.reshape(n_units * k, h, w), rows, cols, thr))
    masks = masks.reshape(n_units, k, *seg_size) & real[..., None, None]
    return pics.astype(np.uint8), np.where(real, pos, -1), masks


@functools.partial(jax.jit, static_argnames="gap")
def _strips(pictures, slot, masks, gap: int):
    """uint8 (U, H, k * (W + gap) - gap, 3): tile ``[u, j]`` is ``pictures[slot[u, j]]``
    (uint8 (M, H, W, 3)) dimmed to 30% outside ``masks[u, j]`` (bool (U, k, H, W))
    with the mask's outline in yellow, the k tiles of a unit side by side on white."""
    dim = ((pictures.astype(jnp.uint16) * 77) >> 8).astype(jnp.uint8)
    p = jnp.pad(masks, [(0, 0), (0, 0), (1, 1), (1, 1)])
    edge = masks & ~(p[..., :-2, 1:-1] & p[..., 2:, 1:-1] & p[..., 1:-1, :-2] & p[..., 1:-1, 2:])
    tiles = jnp.where(masks[..., None], pictures[slot], dim[slot])
    tiles = jnp.where(edge[..., None], jnp.array([255, 230, 0], jnp.uint8), tiles)
    n_units, k, hh, ww, _ = tiles.shape
    tiles = jnp.pad(tiles, [(0, 0), (0, 0), (0, 0), (0, gap), (0, 0)], constant_values=255)
    strip = tiles.transpose(0, 2, 1, 3, 4).reshape(n_units, hh, k * (ww + gap), 3)
    return strip[:, :, : k * (ww + gap) - gap]


def unit_strips(
    pictures: np.ndarray, slot: np.ndarray, masks: np.ndarray, gap: int = 2
) -> np.ndarray:
    """uint8 (U, sh, k * (sw + gap) - gap, 3): per unit its top images resized to the
    segmentation size, dimmed to 30% outside the mask with its outline in yellow, side
    by side on white (empty slots black). ``pictures``, ``slot``, ``masks`` as
    :func:`top_image_masks` returns them."""
    small = pictures
    if pictures.shape[1:3] != masks.shape[2:]:
        small = small_pictures(pictures, masks.shape[2:])[:-1]
    small = np.concatenate([small, np.zeros((1, *small.shape[1:]), np.uint8)])  # empty slot
    return np.asarray(_strips(small, np.where(slot < 0, len(pictures), slot), masks, gap))


def _jpeg(image: np.ndarray) -> bytes:
    """uint8 ``image`` encoded as a JPEG (quality 90)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def unit_pictures(
    model: Model,
    source: Any,
    layer: str,
    th: Thresholds,
    seg_size: tuple[int, int],
    *,
    features: np.ndarray | None = None,
    order: np.ndarray | None = None,
) -> tuple[bytes, ...]:
    """Per unit of ``layer``, the JPEG of its top images with its mask
    (:func:`unit_strips` of :func:`top_image_masks`), drawn from ``th`` (pass 1) alone:
    no count of pass 2 is needed, so :func:`~cnnvis_jax.dissection.dissect.dissect`
    draws them while pass 2 runs. ``features`` and ``order`` as in
    :func:`top_image_masks`."""
    pics, slot, masks = top_image_masks(
        model, source, layer, th, seg_size, features=features, order=order
    )
    small = small_pictures(pics, masks.shape[2:])[:-1]  # resized once for all units
    encoded: list[bytes] = []
    with ThreadPoolExecutor(2) as pool:  # JPEG encoding releases the GIL
        for start in range(0, slot.shape[0], 64):
            part = slice(start, start + 64)
            encoded.extend(pool.map(_jpeg, unit_strips(small, slot[part], masks[part])))
    return tuple(encoded)


def small_pictures(pictures: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (M + 1, h, w, 3): ``pictures`` (M, H, W, 3) resized (bilinear) to
    ``size`` = (h, w), plus a black last row for empty slots."""
    sh, sw = size
    small = np.zeros((len(pictures) + 1, sh, sw, 3), np.uint8)
    for i, im in enumerate(pictures):
        small[i] = np.asarray(Image.fromarray(im).resize((sw, sh), Image.BILINEAR))
    return small


# --- figures -----------------------------------------------------------------------------


def bargraph(path: Path, result, layout: LabelLayout) -> Path:
    """Detector units per label, grouped by category (NetDissect's bar graph), as SVG;
    a layer without detectors gets a chart saying so."""
    s = result.scores
    bars = []
    for ci, c in enumerate(layout.categories):
        labels = s.label[s.detector & (s.category == ci)]
        counts = np.bincount(labels, minlength=layout.num_labels)
        for lab in np.argsort(-counts, kind="stable"):
            if counts[lab] == 0:
                break
            bars.append((c, layout.names[lab], int(counts[lab])))
    colors = {c: _color(c) for c in layout.categories}
    chart = bar_chart(bars, colors, title=f"{result.layer}: detector units per label",
                      ylabel="units", empty="no detectors")  # fmt: skip
    return write_text(path, chart)


def detectors_plot(path: Path, d: Dissection) -> Path:
    """Unique detectors per category across layers (the survey's figure), plus
    detector units per category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(d.layers)
    summary = d.summary()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in (
        (axes[0], "unique", "unique detectors"),
        (axes[1], "detectors_per_category", "detector units"),
    ):
        for c in d.layout.categories:
            ax.plot(layers, [summary[n][key][c] for n in layers], "o-", color=_color(c), label=c)
        ax.set(
            xlabel="layer",
            ylabel="count",
            title=f"{title} per category (IoU >= {d.iou_threshold:g})",
        )
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


# --- HTML ----------------------------------------------------------------------------------

_SORT_SCRIPT = """<script>
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v || a.cells[col].textContent;
      var y = b.cells[col].dataset.v || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? r : -r;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
</script>"""


def compose_html(compose: ComposeResult) -> str:
    """The report's paragraph on compositional explanations (escaped)."""
    summary = compose.summary()
    text = (
        f"Compositional explanations (Mu & Andreas 2020): {summary['units_gaining']}/"
        f"{summary['units']} units gain \u2265 {GAIN:g} IoU from a formula of up to "
        f"{compose.length} concepts (AND, OR, AND NOT; beam {compose.beam}) over their best "
        f"single concept; mean IoU {summary['mean_iou']:.4f} vs {summary['mean_atomic_iou']:.4f}. "
        "These IoUs are set IoUs over all pixels (|unit \u2229 formula| / |unit \u222a "
        "formula|), not the category-normalized IoU of the label column."
    )
    return f"<h3>{esc('Compositional explanations')}</h3><p>{esc(text)}</p>"


def layer_html(
    result,
    layout: LabelLayout,
    d: Dissection,
    with_pictures: bool,
    compose: ComposeResult | None = None,
) -> str:
    s, th = result.scores, result.thresholds
    summary = result.summary(layout)
    n_units = len(s.score)
    header = (
        f"{summary['detectors']}/{n_units} units covering {summary['concepts']} concepts "
        f"with IoU \u2265 {d.iou_threshold:g}"
    )
    unique = ", ".join(f"{c} {n}" for c, n in summary["unique"].items())
    parts = [
        f"<h2>{esc(header)}</h2>",
        f"<p>{esc(f'mode {d.mode}, quantile {d.quantile:g}, {d.images} images; unique detectors: {unique}')}</p>",
        '<figure><img src="bargraph.svg" alt="detector units per label"></figure>',
    ]
    if summary["constant_units"]:
        shown = ", ".join(str(u) for u in summary["constant_units"])
        parts.append(f"<p>{esc(f'constant units (no threshold, never detectors): {shown}')}</p>")
    if compose is not None:
        parts.append(compose_html(compose))
    head = ["unit", "label", "category", "IoU", "detector", "threshold"]
    if compose is not None:
        head += [f"formula (\u2264 {compose.length} concepts)", "formula IoU", "gain"]
    if with_pictures:
        head.append("top images (mask overlaid)")
    rows = []
    for u in s.order.tolist():
        cat = layout.categories[s.category[u]]
        cells = [
            f'<td data-v="{u}">{u}</td>',
            f"<td>{esc(layout.names[s.label[u]])}</td>",
            f'<td><span style="color:{_color(cat)}">{esc(cat)}</span></td>',
            f'<td data-v="{s.score[u]:.6f}">{esc(f"{s.score[u]:.4f}")}</td>',
            f"<td>{'yes' if s.detector[u] else 'no'}</td>",
            f"<td>{esc('constant' if th.constant[u] else f'{th.values[u]:.4g}')}</td>",
        ]
        if compose is not None:
            cells += [
                f"<td>{esc(compose.text(u))}</td>",
                f'<td data-v="{compose.iou[u]:.6f}">{esc(f"{compose.iou[u]:.4f}")}</td>',
                f'<td data-v="{compose.gain[u]:.6f}">{esc(f"{compose.gain[u]:+.4f}")}</td>',
            ]
        if with_pictures:
            src = f"units/unit{u:04d}.jpg"
            cells.append(f'<td><img src="{esc(src)}" alt="{esc(f"unit {u}")}"></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head_html = "".join(f"<th>{esc(h)}</th>" for h in head)
    parts.append(
        '<p>Click a column header to sort.</p><table class="sortable"><thead><tr>'
        f"{head_html}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    parts.append(_SORT_SCRIPT)
    return page(f"Network Dissection: {result.layer}", "".join(parts))


def write_outputs(
    out: str | Path,
    d: Dissection,
    *,
    model: Model | None = None,
    source: Any = None,
    extra: dict[str, Any] | None = None,
    compose: dict[str, ComposeResult] | None = None,
) -> dict[str, Path]:
    """Write every file of ``d`` under ``out`` (see the module docstring).

    ``model`` and ``source`` (those dissected) are needed for the top-image pictures;
    without them the reports list the units without pictures. ``compose`` ({layer:
    :class:`~cnnvis_jax.dissection.compose.ComposeResult`}) adds each layer's
    compositional explanations to its tally.csv, report and ``compose.json``.
    """
    compose = compose or {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    paths["summary"] = out / "summary.json"
    write_json(paths["summary"], d.summary())
    paths["run"] = out / "run.json"
    write_json(paths["run"], run_record(d, extra))
    pictures = model is not None and source is not None
    for name, result in d.layers.items():
        folder = out / name
        composed = compose.get(name)
        paths[f"{name}/tally"] = write_tally_csv(
            folder / "tally.csv", result, d.layout, d.mode, composed
        )
        if composed is not None:
            paths[f"{name}/compose"] = composed.save(folder / "compose.json")
        bargraph(folder / "bargraph.svg", result, d.layout)
        drawn = pictures or result.pictures is not None
        if drawn:
            jpegs = result.pictures
            if jpegs is None:
                jpegs = unit_pictures(
                    model, source, name, result.thresholds, d.layout.seg_size,
                    features=None if d.features is None else d.features.get(name),
                    order=d.order,
                )  # fmt: skip
            for u, data in enumerate(jpegs):
                write_bytes(folder / "units" / f"unit{u:04d}.jpg", data)
        paths[f"{name}/html"] = folder / "index.html"
        write_text(paths[f"{name}/html"], layer_html(result, d.layout, d, drawn, composed))
    if len(d.layers) > 1:  # a plot across layers
        paths["plot"] = detectors_plot(out / "detectors.png", d)
    summary = d.summary()
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(
        ["layer", "units", "detectors", "concepts"]
        + [f"unique-{c}" for c in d.layout.categories]
        + [f"detectors-{c}" for c in d.layout.categories]
    )
    for name in d.layers:
        s = summary[name]
        writer.writerow(
            [name, s["units"], s["detectors"], s["concepts"]]
            + [s["unique"][c] for c in d.layout.categories]
            + [s["detectors_per_category"][c] for c in d.layout.categories]
        )
    paths["detectors_csv"] = write_text(out / "detectors.csv", buffer.getvalue())
    return paths
