"""``cnnvis monitor`` (training monitoring) and ``cnnvis diagnose`` (design diagnosis).

``cnnvis monitor --run DIR --layer L [--layers L2,L3] [--units 0:8] --out DIR2``
writes ``DIR2/monitor.png`` and ``DIR2/monitor.json``;
``cnnvis diagnose --model M [--weights W] --out DIR`` writes ``DIR/diagnosis.png``
and ``DIR/diagnosis.json``. See :mod:`cnnvis_jax.deconv.monitor` and
:mod:`cnnvis_jax.deconv.diagnosis` for what is computed.
"""

from __future__ import annotations

import argparse

import numpy as np

from cnnvis_jax.errors import InputError

__all__ = ["add_commands", "cmd_diagnose", "cmd_monitor"]


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InputError(f"{name} must be at least 1, got {value}.")


def _layer_list(args) -> list[str]:
    names = list(args.layer or [])
    for item in args.layers or []:
        names += [n.strip() for n in item.split(",") if n.strip()]
    return names


def _source_and_indices(args, size):
    from cnnvis_jax.data import open_dataset

    source = open_dataset(args.dataset, count=args.count, size=size)
    indices = None
    if args.count is not None and args.count < len(source):
        indices = np.arange(args.count)
    return source, indices


def _run_folder(run: str, *, progress: bool):
    """``--run``: a training run folder, or ``default`` for the default model's run in
    the cache (where ``make demo`` and ``--model default`` train it; trained now if
    absent), from any working folder."""
    if run != "default":
        return run
    from cnnvis_jax.default import default_model, default_run_dir

    default_model(progress=progress)
    return default_run_dir()


def cmd_monitor(args) -> int:
    from cnnvis_jax.deconv.monitor import monitor_run, snapshot_paths
    from cnnvis_jax.deconv.units import parse_units
    from cnnvis_jax.train import load_trained

    for name in ("count", "top", "batch_size"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    layers = _layer_list(args)
    if not layers:
        raise InputError("name the layers to monitor with --layer conv1 (or --layers conv1,conv5).")
    units = parse_units(args.units) if args.units is not None else None
    run = _run_folder(args.run, progress=not args.quiet)
    final = load_trained(snapshot_paths(run)[-1][1])
    source, indices = _source_and_indices(args, final.input.size)
    model, monitoring = monitor_run(
        run,
        source,
        layers,
        units,
        k=args.top,
        rule=args.rule,
        pool=args.pool,
        threshold=args.threshold,
        batch_size=args.batch_size,
        indices=indices,
        progress=not args.quiet,
    )
    out = monitoring.save(args.out, model=model)
    for row in monitoring.summary()["summary"]:
        filters = row["filter_stable_from"]
        print(
            f"{row['layer']}: projections stable from epoch {row['projection_stable_from']}"
            + ("" if filters is None else f", filters from epoch {filters}")
        )
    print(f"wrote {out / 'monitor.png'} and {out / 'monitor.json'}")
    return 0


def cmd_diagnose(args) -> int:
    from cnnvis_jax.cli.common import load_model_arg
    from cnnvis_jax.deconv.diagnosis import diagnose

    for name in ("count", "batch_size"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    model = load_model_arg(args)
    layers = _layer_list(args) or None
    source, indices = _source_and_indices(args, model.input.size)
    result = diagnose(
        model,
        source,
        layers=layers,
        alias_layer=args.alias_layer,
        batch_size=args.batch_size,
        indices=indices,
        progress=not args.quiet,
    )
    out = result.save(args.out)
    summary = result.summary()
    dead = ", ".join(
        f"{name} {d['dead_count']}/{d['units']}" for name, d in summary["dead_units"].items()
    )
    print(f"dead units: {dead}")
    if "first_layer_filters" in summary:
        f = summary["first_layer_filters"]
        print(
            f"{f['layer']} filters: mean band energy {f['mean_band_fraction']}, dominant "
            f"{f['dominant_band_count']}"
        )
    a = summary["aliasing"]
    print(f"aliasing of {a['layer']} (stride {a['stride']}): {a['fraction']:.4f}")
    print(f"wrote {out / 'diagnosis.json'} and {out / 'diagnosis.png'}")
    return 0


def _add_data_args(p: argparse.ArgumentParser, count_help: str) -> None:
    from cnnvis_jax.cli.common import add_dataset_arg

    add_dataset_arg(p)
    p.add_argument("--count", type=int, help=count_help)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_commands(sub) -> None:
    """Add ``monitor`` and ``diagnose`` to the ``cnnvis`` subparsers ``sub``."""
    from cnnvis_jax.cli.common import add_model_args

    p = sub.add_parser(
        "monitor",
        help="training monitoring: projections of the same units at every saved epoch",
    )
    p.add_argument(
        "--run", required=True,
        help="run directory of `cnnvis train` (snapshots/), or 'default': the default model's "
        "run in the cache",
    )  # fmt: skip
    p.add_argument("--layer", action="append", help="layer to monitor (repeatable)")
    p.add_argument("--layers", action="append", help="comma-separated layers, e.g. conv1,conv5")
    p.add_argument(
        "--units",
        help="units for every layer: '3', '0:8', '1,5,9' (default: 8 random active units)",
    )
    p.add_argument("--top", type=int, default=1, help="top images per unit (default: 1)")
    p.add_argument(
        "--rule", choices=("deconvnet", "guided", "gradient"), default="deconvnet",
        help="backward rule at ReLUs (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--pool", choices=("switches", "center"), default="switches")
    p.add_argument(
        "--threshold", type=float, default=0.9,
        help="similarity to the final epoch from which a layer counts as stable (default 0.9)",
    )  # fmt: skip
    _add_data_args(p, "search the top images among the first N images (default: 2000)")
    p.add_argument("--out", required=True, help="output folder (monitor.png, monitor.json)")
    p.set_defaults(func=cmd_monitor)

    d = sub.add_parser(
        "diagnose",
        help="design diagnosis: dead units, first-layer filter frequencies, aliasing",
    )
    add_model_args(d)
    d.add_argument("--layer", action="append", help="layer checked for dead units (repeatable)")
    d.add_argument("--layers", action="append", help="comma-separated layers for dead units")
    d.add_argument("--alias-layer", help="strided layer for the aliasing measure (default: first)")
    _add_data_args(d, "use the first N images of the data set (default: 2000 concepts)")
    d.add_argument("--out", required=True, help="output folder (diagnosis.png, diagnosis.json)")
    d.set_defaults(func=cmd_diagnose)
