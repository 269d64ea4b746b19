"""``cnnvis evaluate``: render a layer's units with several presets and score them.

``cnnvis evaluate --model M [--weights W] --layer L --units 0:16 --presets
yosinski3,lucid,maco,dgn [--seeds 2] [--steps N] [--dataset D] [--images 2000]
[--generator FILE] [--transfer W1,W2] --out DIR`` writes ``DIR/table.csv`` (one row
per preset: activation ratio, plausibility, diversity, transferability, path-check
pass rate), ``DIR/panel.png`` (the visualizations with their scores) and
``DIR/results.json`` (every score per unit and visualization, the path-similarity
curves, timings). Units are maximized before their ReLU where the model has that
tap (as the survey does) and scored after it. See :mod:`cnnvis_jax.evaluate` for
the formulas. ``dgn`` needs
``--generator`` (a decoder from ``cnnvis train-decoder``); ``maco`` takes its
spectrum from ``--dataset``; ``--transfer`` (weights of other ConceptNets trained on
the same data) scores class visualizations (``--layer fc8``) by the probability the
other networks give the class.
"""

from __future__ import annotations

from pathlib import Path

from cnnvis_jax.errors import InputError

__all__ = ["add_commands", "cmd_evaluate"]


def _presets(text: str) -> list[str]:
    from cnnvis_jax.catalog import AM_PRESETS

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise InputError(f"--presets {text!r} must name distinct presets, e.g. 'lucid,maco'.")
    for name in names:
        if name not in AM_PRESETS:
            from cnnvis_jax.errors import did_you_mean

            raise InputError(
                f"unknown preset {name!r} in --presets; " + did_you_mean(name, AM_PRESETS)
            )
        if name in ("accentuate", "mfv-center", "mfv-mean"):
            raise InputError(
                f"--presets {name} does not render a unit from scratch (it starts from given "
                "or facet images); use cnnvis am / cnnvis mfv for it."
            )
    return names


def cmd_evaluate(args) -> int:
    from cnnvis_jax.cli.common import load_model_arg, start_run
    from cnnvis_jax.data import open_dataset
    from cnnvis_jax.deconv import parse_units
    from cnnvis_jax.evaluate.panel import compare_presets

    presets = _presets(args.presets)
    for name, value in (("--seeds", args.seeds), ("--images", args.images), ("--k", args.k)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}.")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}.")
    if "dgn" in presets and not args.generator:
        raise InputError(
            "--presets dgn needs --generator PATH (a decoder from cnnvis train-decoder)."
        )
    transfer_paths = [p.strip() for p in (args.transfer or "").split(",") if p.strip()]
    for path in transfer_paths:
        if not Path(path).is_file():
            raise InputError(f"--transfer weights file {path!r} does not exist; fix the path.")
    model = load_model_arg(args)
    info = model.layer(args.layer)
    units = parse_units(args.units, info.channels)
    if transfer_paths and info.name != model.logits_layer:
        raise InputError(
            f"--transfer scores class visualizations; use --layer {model.logits_layer} "
            f"(got {info.name}) or drop --transfer."
        )
    source = open_dataset(args.dataset, split="train", count=args.images, size=model.input.size)
    out = Path(args.out)
    run = {"model": args.model, "weights": args.weights, "layer": info.name, "units": list(units),
           "presets": presets, "seeds": args.seeds, "steps": args.steps, "seed": args.seed,
           "dataset": args.dataset, "images": args.images, "k": args.k,
           "generator": args.generator, "transfer": transfer_paths}  # fmt: skip
    if start_run(out, run, overwrite=args.overwrite, done=("table.csv", "results.json"),
                 checkpoint=out / ".none"):  # fmt: skip
        return 0
    generator = spectrum = None
    if "dgn" in presets:
        from cnnvis_jax.am.generator import load_generator

        generator = load_generator(args.generator, model)
    if "maco" in presets:
        from cnnvis_jax.cli.am import maco_spectrum

        spectrum = maco_spectrum(args.dataset, model)
    transfer = []
    if transfer_paths:
        from cnnvis_jax.train import load_trained

        transfer = [load_trained(p) for p in transfer_paths]
    panel = compare_presets(
        model, info.name, units, presets, source, seeds=args.seeds, steps=args.steps,
        key=args.seed, k=min(args.k, len(source)), n_random=min(64, len(source)),
        generator=generator, spectrum=spectrum, transfer_models=transfer,
        progress=not args.quiet,
    )  # fmt: skip
    panel.save(out)
    for row in panel.table():
        cells = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in row.items() if k != "preset")  # fmt: skip
        print(f"{row['preset']}: {cells}")
    print(f"wrote {out / 'table.csv'}, {out / 'panel.png'} and {out / 'results.json'}")
    return 0


def add_commands(sub) -> None:
    from cnnvis_jax.cli.common import add_dataset_arg, add_model_args

    p = sub.add_parser("evaluate", help="render units with several presets and score them")
    add_model_args(p)
    p.add_argument("--layer", required=True, help="layer name (conv5, fc8) or alias")
    p.add_argument("--units", required=True, help="units: '3', '0:16' (end exclusive), '1,5,9'")
    p.add_argument("--presets", default="yosinski3,lucid,maco",
                   help="comma-separated AM presets (default: %(default)s)")  # fmt: skip
    p.add_argument("--seeds", type=int, default=2, help="visualizations per unit (diversity)")
    p.add_argument("--steps", type=int, help="override every preset's step count")
    p.add_argument("--seed", type=int, default=0)
    add_dataset_arg(p)
    p.add_argument("--images", type=int, default=2000,
                   help="data images searched for each unit's top images (default: %(default)s)")  # fmt: skip
    p.add_argument("--k", type=int, default=16, help="top natural images per unit (default 16)")
    p.add_argument("--generator", help="decoder file for the dgn preset (cnnvis train-decoder)")
    p.add_argument("--transfer", help="comma-separated weights of other models (class layers)")
    p.add_argument(
        "--out", required=True, help="output folder (table.csv, panel.png, results.json)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds from a run with other arguments")  # fmt: skip
    p.set_defaults(func=cmd_evaluate)
