"""``cnnvis am`` and ``cnnvis mfv``: activation maximization from the command line.

``cnnvis am --model M [--weights W] --layer L --units 0:16 --preset P [--steps N]
[--seed S] --out DIR`` writes ``DIR/grid.png`` (the units in a labelled grid),
``DIR/unit_XXXX.png`` per unit, ``DIR/results.json`` (a list of ``{unit,
start_activation, best_activation, final_activation, stopped_at_step, start}``) and
``DIR/run.json`` (the arguments). A unit that ends at or below 0 from the random start
is rendered again from the data image (``--dataset``, first 256 validation images)
that drives it most, ``start`` saying ``"data image I"`` (with ``data_image`` and
``data_max``); a unit at most 0 on all of them is ``"silent"`` and the grid shows a
grey tile labelled "silent on data" (see :mod:`cnnvis_jax.am.silent`), or "dead
(proven)" when interval arithmetic shows that no image can activate it
(``proven_dead`` in results.json; :mod:`cnnvis_jax.bounds`). A rerun with the same
arguments reuses the files, or resumes an interrupted render; other arguments are
refused unless ``--overwrite``. ``--preset maco`` takes its amplitude spectrum from
256 training images of ``--dataset`` (canvas twice the model's input) and also writes
``transparency.png``; ``--preset accentuate --image FILE`` accentuates each unit in
that image (resized to the model's input).

``cnnvis mfv --model M --class C --facets K --out DIR`` writes ``DIR/facets.png``
(top row: each facet's mean image; bottom row: its visualization), one
``DIR/facet_XX.json`` per facet and ``DIR/diversity.json`` (facet diversity of the
class per layer). Like ``am`` it resumes an interrupted render and refuses other
arguments into the same folder unless ``--overwrite``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cnnvis_jax.errors import InputError

__all__ = ["add_commands", "cmd_am", "cmd_mfv"]


def _position(text: str | None):
    if text is None:
        return None
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"--position {text!r} must be 'ROW,COL', e.g. '3,4'.") from None


def _silent_label(unit: int, record: dict) -> str:
    return f"{unit} dead (proven)" if record.get("proven_dead") else f"{unit} silent on data"


def _unit_label(unit: int, value: float, names) -> str:
    name = f" {names[unit]}" if names is not None and unit < len(names) else ""
    return f"{unit}{name} {value:.3g}"


def cmd_am(args) -> int:
    from cnnvis_jax.am.presets import preset
    from cnnvis_jax.am.render import objectives_for_units, render
    from cnnvis_jax.cli.common import load_model_arg, start_run
    from cnnvis_jax.deconv import parse_units
    from cnnvis_jax.report.files import strict, warn_non_finite

    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}.")
    if args.preset == "dgn" and not args.generator:
        raise InputError(
            "--preset dgn needs --generator PATH (a decoder from cnnvis train-decoder)."
        )
    if args.preset not in ("dgn", "maco"):
        preset(args.preset)  # an unknown preset fails before the model loads
    if (args.preset == "accentuate") != (args.image is not None):
        raise InputError(
            "--preset accentuate needs --image FILE (the image to accentuate)"
            if args.image is None
            else "--image applies to --preset accentuate; drop it or use that preset."
        )
    model = load_model_arg(args)
    init_images = None
    if args.image is not None:
        from cnnvis_jax.data.imageio import load_images

        init_images = load_images([args.image], model.input.size).astype(np.float32) / 255.0
    info = model.layer(args.layer)
    units = parse_units(args.units, info.channels)
    position = _position(args.position)
    out = Path(args.out)
    run = {
        "model": args.model,
        "weights": args.weights,
        "layer": info.name,
        "units": list(units),
        "preset": args.preset,
        "steps": args.steps,
        "seed": args.seed,
        "objective": args.objective,
        "position": list(position) if position else None,
        "generator": args.generator,
        "dataset": args.dataset,
        "image": args.image,
    }
    checkpoint = out / ".render-checkpoint.npz"
    if start_run(out, run, overwrite=args.overwrite, done=("grid.png", "results.json"),
                 checkpoint=checkpoint):  # fmt: skip
        return 0
    generator = None
    if args.preset == "dgn":
        from cnnvis_jax.am.generator import load_generator

        generator = load_generator(args.generator, model)
    spectrum = maco_spectrum(args.dataset, model) if args.preset == "maco" else None
    recipe = preset(args.preset, generator=generator, spectrum=spectrum)
    kind = args.objective or recipe.objective
    objectives = objectives_for_units(model, info.name, units, kind, position)
    result = render(
        model,
        objectives,
        recipe,
        key=args.seed,
        steps=args.steps,
        progress=not args.quiet,
        desc=f"{args.preset} {info.name}",
        checkpoint=checkpoint,
        init_images=init_images,
    )
    value = "best_activation" if recipe.output == "best" else "final_activation"
    result, starts = _restart_silent(args, model, objectives, recipe, result, value, out)
    names = model.class_names if info.name == model.logits_layer else None
    first = {"start": "random"} if args.image is None else {"start": f"image {args.image}"}
    records = [{"unit": int(u), **starts.get(k, first)} for k, u in enumerate(units)]
    rows = result.summary()
    for unit, row in zip(units, rows):
        if row["stopped_at_step"] is not None:
            print(f"cnnvis: warning: unit {unit}: the objective became non-finite at step "
                  f"{row['stopped_at_step']}; that unit was stopped (its last finite image is "
                  "kept), the others ran on.", file=sys.stderr)  # fmt: skip
    silent = [r["start"] == "silent" for r in records]
    if any(silent):  # silent on the data: are they dead for every image?
        from cnnvis_jax.deconv.figures import proven_dead

        dead = proven_dead(model, info.name, [u for u, q in zip(units, silent) if q])
        for record in records:
            if record["start"] == "silent":
                record["proven_dead"] = None if dead is None else record["unit"] in dead
    labels = [_silent_label(u, r) if quiet else _unit_label(u, row[value], names)
              for u, row, r, quiet in zip(units, rows, records, silent)]  # fmt: skip
    result.save(out, names=[f"unit_{u:04d}" for u in units], labels=labels, records=records,
                hidden=silent)  # fmt: skip
    warn_non_finite(strict(rows)[1], out / "results.json", f"layer {info.name}")
    if result.transparency is not None:
        from cnnvis_jax.report.grid import image_grid, save_png

        save_png(image_grid(transparency_tiles(result.transparency[:, 0]), labels=labels),
                 out / "transparency.png")  # fmt: skip
    checkpoint.unlink(missing_ok=True)
    (out / ".restart-checkpoint.npz").unlink(missing_ok=True)
    stopped = sum(r["stopped_at_step"] is not None for r in rows)
    print(
        f"{info.name}: {len(units)} units with {args.preset} ({int(result.trajectory.shape[-2])} "
        f"steps){f', {stopped} stopped on non-finite values' if stopped else ''}; wrote "
        f"{out / 'grid.png'} and {out / 'results.json'}"
    )
    return 0


def maco_spectrum(dataset: str, model, count: int = 256) -> np.ndarray:
    """MACO's amplitude spectrum from ``count`` training images of ``dataset`` for a
    canvas twice the model's input size (float32 (3, 2H, W + 1))."""
    from cnnvis_jax.am.params import natural_spectrum
    from cnnvis_jax.data import open_dataset

    source = open_dataset(dataset, split="train", count=count, size=model.input.size)
    images = np.stack([source[i]["image"] for i in range(min(count, len(source)))])
    h, w = model.input.size
    return natural_spectrum(images, (2 * h, 2 * w))


def transparency_tiles(transparency: np.ndarray) -> np.ndarray:
    """(U, H, W, 3) accumulated image gradients as grey tiles in [0, 1]: the mean
    over colours, each tile divided by its maximum (black: never touched)."""
    grey = np.asarray(transparency, np.float64).mean(-1)
    peak = grey.reshape(len(grey), -1).max(-1)[:, None, None]
    grey = np.where(peak > 0, grey / np.where(peak > 0, peak, 1.0), 0.0)
    return np.repeat(grey[..., None], 3, -1).astype(np.float32)


def _restart_silent(args, model, objectives, recipe, result, value: str, out: Path):
    """:func:`cnnvis_jax.am.silent.restart_silent` on the first 256 validation images
    of ``--dataset``, when some unit ended at or below 0 (not for recipes that cannot
    start from a data image: MACO's random phase, accentuation's given image)."""
    from cnnvis_jax.am.params import Maco
    from cnnvis_jax.am.silent import restart_silent
    from cnnvis_jax.data import open_dataset

    if np.all(getattr(result, value)[:, 0] > 0):
        return result, {}
    if isinstance(recipe.param, Maco) or recipe.anchor is not None:
        return result, {}
    source = open_dataset(args.dataset, split="val", count=256, size=model.input.size)
    return restart_silent(model, objectives, recipe, result, source, key=args.seed,
                          steps=args.steps, value=value, progress=not args.quiet,
                          checkpoint=out / ".restart-checkpoint.npz")  # fmt: skip


def add_am(sub) -> None:
    from cnnvis_jax.catalog import AM_PRESETS as PRESETS
    from cnnvis_jax.cli.common import add_dataset_arg, add_model_args

    p = sub.add_parser("am", help="activation maximization: images that drive units high")
    add_model_args(p)
    p.add_argument("--layer", required=True, help="layer name (conv5, fc8) or alias")
    p.add_argument("--units", required=True, help="units: '3', '0:16' (end exclusive), '1,5,9'")
    p.add_argument("--preset", default="yosinski3", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--steps", type=int, help="override the preset's step count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--objective",
        choices=("neuron", "channel"),
        help="neuron (one position, default centre) or channel (mean over positions); "
        "default from the preset",
    )
    p.add_argument("--position", help="ROW,COL of the neuron objective in the layer's map")
    p.add_argument("--generator", help="decoder file for --preset dgn (from cnnvis train-decoder)")
    p.add_argument("--image", help="image file to accentuate (--preset accentuate)")
    add_dataset_arg(p)  # silent units restart from its images; MACO's spectrum comes from it
    p.add_argument(
        "--out", required=True, help="output folder (grid.png, unit_XXXX.png, results.json)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds from a run with other arguments")  # fmt: skip
    p.set_defaults(func=cmd_am)


def cmd_mfv(args) -> int:
    from cnnvis_jax.am.mfv import MFVResult, facet_diversity, facets, render_facets
    from cnnvis_jax.cli.common import class_index, load_model_arg, start_run
    from cnnvis_jax.data import open_dataset

    for name in ("facets", "per_facet", "images", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    if args.preset not in ("mfv-mean", "mfv-center"):
        raise InputError(f"--preset for mfv must be mfv-mean or mfv-center, got {args.preset!r}.")
    model = load_model_arg(args)
    index = class_index(model, args.class_)
    out = Path(args.out)
    run = {
        key: getattr(args, key)
        for key in (
            "model",
            "weights",
            "facets",
            "per_facet",
            "layer",
            "images",
            "preset",
            "steps",
            "seed",
            "dataset",
        )  # fmt: skip
    }
    run["class"] = index
    checkpoint = out / ".facets-checkpoint.npz"
    if start_run(out, run, overwrite=args.overwrite, done=("facets.png", "diversity.json"),
                 checkpoint=checkpoint):  # fmt: skip
        return 0
    source = open_dataset(args.dataset, split="train", count=args.images, size=model.input.size)
    found = facets(
        model,
        source,
        index,
        k=args.facets,
        layer=args.layer,
        per_facet=args.per_facet,
        limit=args.images,
        seed=args.seed,
        progress=not args.quiet,
    )
    result = render_facets(model, found, recipe=args.preset, key=args.seed, steps=args.steps,
                           progress=not args.quiet, checkpoint=checkpoint)  # fmt: skip
    layers = [layer.name for layer in model.layers if not layer.name.endswith("_pre")]
    layers = [n for n in layers if n.startswith(("conv", "fc"))] or list(model.layer_names)
    diversity = facet_diversity(model, source, found.indices, layers, k=args.facets, seed=args.seed)
    MFVResult(found, result, model.class_names[index], diversity).save(out)
    k = len(found.mean_images)
    checkpoint.unlink(missing_ok=True)
    print(
        f"class {model.class_names[index]!r}: {k} facets from {found.indices.size} images; "
        f"wrote {out / 'facets.png'}, facet_XX.json and diversity.json"
    )
    return 0


def add_mfv(sub) -> None:
    from cnnvis_jax.cli.common import add_dataset_arg, add_model_args

    p = sub.add_parser("mfv", help="multifaceted feature visualization of a class")
    add_model_args(p)
    p.add_argument("--class", dest="class_", required=True, help="class name or index")
    p.add_argument("--facets", type=int, default=10, help="number of facets K (default 10)")
    p.add_argument("--per-facet", type=int, default=15, help="images averaged per facet")
    p.add_argument("--layer", default="fc7", help="embedding layer (default fc7)")
    p.add_argument("--images", type=int, default=2000, help="training images to scan")
    p.add_argument("--preset", default="mfv-mean", help="mfv-mean (default) or mfv-center")
    p.add_argument("--steps", type=int, help="override the preset's total step count")
    p.add_argument("--seed", type=int, default=0)
    add_dataset_arg(p)
    p.add_argument("--out", required=True, help="output folder (facets.png, facet_XX.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds from a run with other arguments")  # fmt: skip
    p.set_defaults(func=cmd_mfv)


def add_commands(sub) -> None:
    """Add ``am`` and ``mfv`` to the ``cnnvis`` subcommands."""
    add_am(sub)
    add_mfv(sub)
