"""The survey's claims, each checked against what the stages measured.

``findings(records)`` returns one entry per claim whose data exists:

    {"claim": str, "held": bool, "statistic": str,
     "values": [{"path": "<stage>/record.json#data.a.b", "value": number}, ...]}

Every number in ``statistic`` is one of ``values``, and each value is read from the
stage record named by its path (tests check both), so the table never states a
number that is not in the JSON beside the report. Nothing is tuned until a claim
holds: where it does not hold on this model, ``held`` is False and the numbers say by
how much.
"""

from __future__ import annotations

from typing import Any


class _Values:
    """Reads numbers out of the stage records and remembers where they came from."""

    def __init__(self, records: dict[str, dict]):
        self.records, self.used = records, []

    def __call__(self, stage: str, *keys) -> Any:
        value = self.records[stage]["data"]
        for k in keys:
            value = value[k]
        path = f"{stage}/record.json#data." + ".".join(str(k) for k in keys)
        self.used.append({"path": path, "value": value})
        return value


def _claim(records, fn) -> dict | None:
    values = _Values(records)
    try:
        out = fn(values)
    except (KeyError, IndexError, TypeError, ZeroDivisionError):
        return None  # the stage did not measure it (skipped or not run)
    if out is None:
        return None
    claim, held, statistic = out
    return {"claim": claim, "held": bool(held), "statistic": statistic, "values": values.used}


def _colour_low(v) -> tuple:
    layer = list(v.records["dissection"]["data"]["layers"])[0]
    counts = {c: v("dissection", "layers", layer, "detectors_per_category", c)
              for c in v.records["dissection"]["data"]["categories"]}  # fmt: skip
    others = max(n for c, n in counts.items() if c != "color")
    shown = ", ".join(f"{c} {n}" for c, n in counts.items())
    return (
        "Colour detectors dominate the lowest layer (Bau et al. 2017).",
        counts["color"] > 0 and counts["color"] >= others,
        f"{layer} detector units per category: {shown}",
    )


def _objects_grow(v) -> tuple:
    layers = list(v.records["dissection"]["data"]["layers"])
    first, last = layers[0], layers[-1]
    count = {(layer, c): v("dissection", "layers", layer, "detectors_per_category", c)
             for layer in (first, last) for c in ("object", "part")}  # fmt: skip
    a = count[first, "object"] + count[first, "part"]
    b = count[last, "object"] + count[last, "part"]
    shown = "; ".join(
        f"object {count[layer, 'object']} + part {count[layer, 'part']} at {layer}"
        for layer in (first, last)
    )
    return ("Object and part detectors grow toward the last layer.", b > a,
            f"detector units: {shown}")  # fmt: skip


def _fields_grow(v) -> tuple:
    names = v.records["network"]["data"]["surveyed"]
    sizes = [v("network", "layers", n, "rf_size", 0) for n in names]
    return (
        "Receptive fields grow with depth.",
        all(b > a for a, b in zip(sizes, sizes[1:])),
        "receptive field (px): " + ", ".join(f"{n} {s}" for n, s in zip(names, sizes)),
    )


def _reconstruction_blurs(v) -> tuple:
    data = v.records["inversion"]["data"]
    preset = next(iter(data["pixel_error"]))
    layers = list(data["pixel_error"][preset])
    first = v("inversion", "pixel_error", preset, layers[0])
    last = v("inversion", "pixel_error", preset, layers[-1])
    return (
        "Reconstructions from deeper layers are further from the image (Mahendran & Vedaldi).",
        last > first,
        f"{preset} pixel error: {first} from {layers[0]}, {last} from {layers[-1]}",
    )


def _net2vec(v) -> tuple:
    single = v("dissection", "net2vec", "mean_single_iou")
    combined = v("dissection", "net2vec", "mean_net2vec_iou")
    layer = v.records["dissection"]["data"]["net2vec"]["layer"]
    return (
        "A concept is better represented by a combination of units (Net2Vec).",
        combined > single,
        f"{layer} mean set IoU: single best unit {single}, Net2Vec {combined}",
    )


def _am_beats_natural(v) -> tuple:
    preset = v.records["am"]["data"]["presets"][0]
    above = v("am", "above_natural", preset)
    total = v("am", "units_drawn")
    median = v("am", "median_ratio", preset)
    return (
        "Activation maximization finds inputs that excite a unit more than any natural image.",
        above > total / 2,
        f"{preset}: {above} of {total} units above their best natural image (median ratio {median})",
    )


def _low_layers_first(v) -> tuple | None:
    summary = v.records["monitoring"]["data"]["summary"]
    first = v("monitoring", "summary", 0, "projection_stable_from")
    last = v("monitoring", "summary", len(summary) - 1, "projection_stable_from")
    if first is None or last is None:
        return None  # a layer never settled: nothing to compare
    a, b = summary[0]["layer"], summary[-1]["layer"]
    return (
        "Low layers converge first during training (Zeiler & Fergus).",
        first <= last,
        f"projections stable from epoch {first} at {a}, epoch {last} at {b}",
    )


def _decoder_beats_regularized(v) -> tuple:
    layer = next(iter(v.records["decoders"]["data"]["pixel_error"]))
    preset = next(iter(v.records["inversion"]["data"]["pixel_error"]))
    learned = v("decoders", "pixel_error", layer)
    regularized = v("inversion", "pixel_error", preset, layer)
    return (
        "The learned decoder (UpconvNet) reconstructs better than the regularized method.",
        learned < regularized,
        f"{layer} pixel error: UpconvNet {learned}, {preset} {regularized}",
    )


def _variant_unique(v, name: str) -> int:
    return v("conditions", "variants", name, "unique_total_last")


def _initializations(v) -> tuple | None:
    variants = v.records["conditions"]["data"]["variants"]
    seeds = [n for n in ("baseline", "seed1", "seed2") if n in variants]
    if len(seeds) < 2:
        return None
    counts = [_variant_unique(v, n) for n in seeds]
    mean = sum(counts) / len(counts)
    spread = max(counts) - min(counts)
    layer = variants[seeds[0]]["last_layer"]
    return (
        "Different random initializations give similar interpretability.",
        mean > 0 and spread <= 0.25 * mean,
        f"unique detectors at {layer}: "
        + ", ".join(f"{n} {c}" for n, c in zip(seeds, counts))
        + " (similar: spread at most a quarter of the mean)",
    )


def _no_dropout(v) -> tuple:
    get = {(n, c): v("conditions", "variants", n, "unique_last", c)
           for n in ("baseline", "no_dropout") for c in ("texture", "object")}  # fmt: skip
    return (
        "Without dropout a network has more texture and fewer object detectors.",
        get["no_dropout", "texture"] > get["baseline", "texture"]
        and get["no_dropout", "object"] < get["baseline", "object"],
        "unique texture / object detectors: baseline "
        f"{get['baseline', 'texture']} / {get['baseline', 'object']}, no dropout "
        f"{get['no_dropout', 'texture']} / {get['no_dropout', 'object']}",
    )


def _batchnorm(v) -> tuple:
    base, bn = _variant_unique(v, "baseline"), _variant_unique(v, "batchnorm")
    return (
        "Batch normalization lowers interpretability.",
        bn < base,
        f"unique detectors at the last layer: baseline {base}, batch normalization {bn}",
    )


def _stride_aliases(v) -> tuple:
    arms = v.records["conditions"]["data"]["first_layer"]
    small = "conv1_7x7_stride2" if "conv1_7x7_stride2" in arms else "baseline"
    large = v("conditions", "first_layer", "conv1_11x11_stride4", "aliasing_fraction")
    other = v("conditions", "first_layer", small, "aliasing_fraction")
    return (
        "A large first-layer stride aliases (ZFNet's 7x7 stride 2 against AlexNet's 11x11 "
        "stride 4).",
        large > other,
        f"aliasing fraction of the first layer's output: conv1_11x11_stride4 {large}, "
        f"{small} {other}",
    )


def _adversarial(v) -> tuple:
    name = v.records["robustness"]["data"]["strongest"]
    rate = v("robustness", "attacks", name, "success_rate")
    levels = v("robustness", "attacks", name, "grey_levels")
    return (
        "Imperceptibly small perturbations change the network's decision (adversarial examples).",
        rate > 0.5,
        f"PGD within {levels} grey levels per pixel changes the prediction of a fraction "
        f"{rate} of the images",
    )


CLAIMS = (_colour_low, _objects_grow, _fields_grow, _reconstruction_blurs, _net2vec,
          _am_beats_natural, _low_layers_first, _decoder_beats_regularized, _initializations,
          _no_dropout, _batchnorm, _stride_aliases, _adversarial)  # fmt: skip


def findings(records: dict[str, dict]) -> list[dict]:
    """The claims whose data ``records`` ({stage: record}) hold (see the module doc)."""
    return [f for fn in CLAIMS if (f := _claim(records, fn)) is not None]
