"""``cnnvis atlas``: the activation atlas of a layer, and optionally its neuron groups.

``cnnvis atlas --model M [--weights W] --layer conv4 [--grid 16] [--images 1000]
[--points 8000] [--min-points 5] [--category object] [--preset lucid] [--steps 128]
[--seed 0] [--groups K] [--dataset concepts] --out DIR`` writes

* ``DIR/atlas.png``: the G x G grid, each cell's rendered direction captioned with
  the concept that dominates its activations and, when another, the distinctive
  concept (the one they over-represent most) with its lift, e.g. ``sky · car x3.1``
  (grey: too few points);
* ``DIR/layout.png``: the t-SNE layout of the activations coloured by concept, with
  the grid over it;
* ``DIR/cells.json``: per rendered cell ``{row, col, points, concept, concept_share,
  distinctive, lift, activation, direction_norm}``;
* ``DIR/results.json``: counts, layout diagnostics, cells per (majority) concept and
  per distinctive concept, settings and seconds per phase (collect, layout, render,
  figure, and groups with ``--groups``);
* with ``--groups K``: ``DIR/groups.png`` (each NMF group of the same activations
  rendered, then its top image regions) and ``DIR/groups.json`` (per group its
  concept, distinctive concept and lift, channels and regions);
* ``DIR/run.json``: the arguments. A rerun with the same arguments reuses the files;
  other arguments into the same folder are refused unless ``--overwrite``.

See :mod:`cnnvis_jax.atlas` for the method. Bad arguments (unknown layer, a grid
with more cells than activations, ``--groups`` outside 1..channels) stop before any
work with one line and exit status 2.
"""

from __future__ import annotations

import time
from pathlib import Path

from cnnvis_jax.errors import InputError

__all__ = ["add_commands", "cmd_atlas"]


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InputError(f"--{name} must be at least 1, got {value}.")


def cmd_atlas(args) -> int:
    from cnnvis_jax.atlas import (
        activation_atlas,
        check_atlas,
        check_groups,
        neuron_groups,
        render_groups,
        save_groups,
    )
    from cnnvis_jax.atlas.collect import pixel_category
    from cnnvis_jax.cli.common import load_model_arg, start_run
    from cnnvis_jax.data import open_dataset

    for name in ("grid", "images", "points", "min_points", "steps"):
        _positive(name.replace("_", "-"), getattr(args, name))
    model = load_model_arg(args)
    info = model.layer(args.layer)
    planned = check_atlas(model, info.name, grid=args.grid, images=args.images,
                          points=args.points, min_points=args.min_points,
                          recipe=args.preset, steps=args.steps)  # fmt: skip
    if args.groups is not None:
        check_groups(model, info.name, args.groups, planned)
    source = open_dataset(args.dataset, count=args.images, size=model.input.size)
    if args.images > len(source):
        raise InputError(
            f"--dataset {args.dataset} has {len(source)} images, fewer than --images "
            f"{args.images}; lower --images to at most {len(source)}."
        )
    pixel_category(source, args.category)
    out = Path(args.out)
    run = {"command": "atlas", "model": args.model, "weights": args.weights, "layer": info.name,
           "grid": args.grid, "images": args.images, "points": args.points,
           "min_points": args.min_points, "category": args.category, "preset": args.preset,
           "steps": args.steps, "seed": args.seed, "groups": args.groups,
           "dataset": args.dataset}  # fmt: skip
    done = ("atlas.png", "layout.png", "cells.json", "results.json")
    if args.groups is not None:
        done += ("groups.png", "groups.json")
    if start_run(out, run, overwrite=args.overwrite, done=done, checkpoint=out / ".none"):
        return 0
    atlas = activation_atlas(
        model, source, info.name, grid=args.grid, images=args.images, points=args.points,
        min_points=args.min_points, category=args.category, recipe=args.preset,
        steps=args.steps, seed=args.seed, progress=not args.quiet,
    )  # fmt: skip
    if args.groups is not None:
        start = time.perf_counter()
        groups = neuron_groups(model, source, info.name, args.groups, seed=args.seed,
                               samples=atlas.samples)  # fmt: skip
        rendered = render_groups(model, groups, args.preset, key=args.seed, steps=args.steps,
                                 progress=not args.quiet)  # fmt: skip
        save_groups(out, groups, rendered.images[:, 0], atlas.names,
                    extra={"preset": args.preset, "steps": atlas.settings["steps"]})  # fmt: skip
        group_seconds = time.perf_counter() - start
    atlas.save(out, more_seconds={"groups": group_seconds} if args.groups is not None else None)
    summary = atlas.summary()
    concepts, distinct = (
        ", ".join(f"{k} {v}" for k, v in list(summary[key].items())[:6])
        for key in ("cells_per_concept", "cells_per_distinctive_concept")
    )
    print(f"{info.name}: {summary['cells_rendered']} of {args.grid * args.grid} cells rendered "
          f"from {summary['points']} activations; cells per concept: {concepts}; per "
          f"distinctive concept: {distinct}")  # fmt: skip
    wrote = ["atlas.png", "layout.png", "cells.json", "results.json"]
    if args.groups is not None:
        wrote += ["groups.png", "groups.json"]
    print(f"wrote {', '.join(str(out / name) for name in wrote)}")
    return 0


def add_commands(sub) -> None:
    from cnnvis_jax.cli.common import add_dataset_arg, add_model_args

    p = sub.add_parser("atlas", help="activation atlas of a layer (and NMF neuron groups)")
    add_model_args(p)
    p.add_argument("--layer", required=True, help="layer name (conv4) or alias")
    p.add_argument("--grid", type=int, default=16, help="cells per side G (default 16)")
    p.add_argument("--images", type=int, default=1000,
                   help="data images read (default: %(default)s)")  # fmt: skip
    p.add_argument("--points", type=int, default=8000,
                   help="activation vectors sampled over their positions (default: %(default)s)")  # fmt: skip
    p.add_argument("--min-points", type=int, default=5,
                   help="fewest points a cell needs to be rendered (default: %(default)s)")  # fmt: skip
    p.add_argument("--category", default="object",
                   help="concept category labelling the points: object, part, texture, color "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--preset", default="lucid",
                   help="rendering preset: lucid, distill, yosinski1..4, simonyan (default: "
                   "%(default)s)")  # fmt: skip
    p.add_argument("--steps", type=int, default=128,
                   help="render steps per cell (default %(default)s, Lucid's atlas)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--groups", type=int, metavar="K",
                   help="also factor the activations into K NMF neuron groups (groups.png)")  # fmt: skip
    add_dataset_arg(p)
    p.add_argument("--out", required=True,
                   help="output folder (atlas.png, layout.png, cells.json, results.json)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds from a run with other arguments")  # fmt: skip
    p.set_defaults(func=cmd_atlas)
