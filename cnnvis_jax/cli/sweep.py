"""``cnnvis sweep``: optimization variants of a preset compared on equal terms.

``cnnvis sweep --model M [--weights W] --family am --preset lucid --layer conv5
--units 0:8 --grid "optimizer=adam,sgd,lbfgs lr=0.01,0.05" [--steps 256] [--seeds 3]
--out DIR`` renders every variant of the grid from ``--seeds`` starts; ``--family
invert --preset mahendran2016 --layer conv3 --images 4 --grid "lr_scale=0.5,1,2"``
reconstructs ``--images`` validation images of ``--dataset`` instead. Writes
``DIR/results.json`` (per variant: final mean and spread, seconds per step, steps and
seconds to reach the best final value; the fastest variant), ``DIR/table.csv``,
``DIR/curves.png`` (objective against steps and against seconds, mean and spread over
seeds) and ``DIR/variant_XX.png`` (each variant's images). See
:mod:`cnnvis_jax.sweep` for the grid's names. Finished groups of variants and the
one in progress are kept in ``DIR/.sweep-checkpoint``: rerunning the same command
after Ctrl-C resumes; other arguments into the same folder are refused unless
``--overwrite``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cnnvis_jax.errors import InputError

__all__ = ["add_commands", "cmd_sweep"]


def cmd_sweep(args) -> int:
    import jax
    import numpy as np

    from cnnvis_jax import sweep
    from cnnvis_jax.cli.common import load_model_arg, start_run

    for name in ("seeds", "images"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    grid = sweep.parse_grid(args.grid)
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}.")
    if args.family == "am":
        from cnnvis_jax.am.presets import preset

        if args.units is None:
            raise InputError("--family am needs --units (e.g. 0:8).")
        recipe = preset(args.preset)
        recipe = recipe.with_steps(args.steps) if args.steps is not None else recipe
        sweep.am_variants(recipe, grid)  # bad names or values fail before the model loads
    model = load_model_arg(args)
    info = model.layer(args.layer)
    out = Path(args.out)
    run = {k: v for k, v in sorted(vars(args).items())
           if k not in ("func", "quiet", "overwrite", "out", "needs_cache")}  # fmt: skip
    checkpoint = out / ".sweep-checkpoint"
    if start_run(out, run, overwrite=args.overwrite, done=("results.json", "curves.png"),
                 checkpoint=checkpoint):  # fmt: skip
        return 0
    if args.family == "am":
        from cnnvis_jax.am.render import objectives_for_units
        from cnnvis_jax.deconv import parse_units

        units = parse_units(args.units, info.channels)
        objectives = objectives_for_units(model, info.name, units, recipe.objective)
        result = sweep.sweep_am(model, objectives, recipe, grid, key=args.seed,
                                seeds=args.seeds, progress=not args.quiet,
                                checkpoint=checkpoint)  # fmt: skip
    else:
        from cnnvis_jax.data import open_dataset
        from cnnvis_jax.inversion.regularized import resolve_plan

        sweep.inversion_variants(resolve_plan(model, info.name, args.preset, args.steps), grid)
        source = open_dataset(args.dataset, split="val", count=args.images,
                              size=tuple(model.input.size))  # fmt: skip
        n = min(args.images, len(source))
        images = np.stack([np.asarray(source[i]["image"], np.float32) / 255.0 for i in range(n)])
        result = sweep.sweep_inversion(model, info.name, images, args.preset, grid,
                                       key=jax.random.key(args.seed), seeds=args.seeds,
                                       steps=args.steps, checkpoint=checkpoint)  # fmt: skip
    result.save(out)
    shutil.rmtree(checkpoint, ignore_errors=True)
    for row in result.table():
        reach = row["seconds_to_reach"]
        print(f"{row['variant']:<40} final {row['final_mean']:.4g} ± {row['final_std']:.2g}  "
              f"{row['seconds_per_step'] * 1e3:.1f} ms/step  reaches the best in "
              f"{'never' if reach is None else f'{reach:.2f} s'}")  # fmt: skip
    print(f"fastest to the best final value: {result.fastest()}; wrote {out / 'results.json'}")
    return 0


def add_commands(sub) -> None:
    """Add ``sweep`` to the ``cnnvis`` subcommands."""
    from cnnvis_jax.catalog import AM_PRESETS, INVERSION_PRESETS
    from cnnvis_jax.cli.common import add_dataset_arg, add_model_args

    p = sub.add_parser("sweep", help="optimization variants of a preset: curves and a table")
    add_model_args(p)
    p.add_argument("--family", choices=("am", "invert"), default="am")
    p.add_argument("--preset", required=True,
                   help=f"am: {', '.join(AM_PRESETS)}; invert: {', '.join(INVERSION_PRESETS)}")  # fmt: skip
    p.add_argument("--layer", required=True, help="layer name (conv5) or alias")
    p.add_argument("--units", help="am: units ('0:8', '1,5,9')")
    p.add_argument("--images", type=int, default=4, help="invert: validation images (default 4)")
    p.add_argument("--grid", required=True,
                   help="NAME=V1,V2 terms, e.g. 'optimizer=adam,sgd lr=0.01,0.05'")  # fmt: skip
    p.add_argument("--steps", type=int, help="steps of every variant (default the preset's)")
    p.add_argument("--seeds", type=int, default=2, help="starts per variant (default 2)")
    p.add_argument("--seed", type=int, default=0)
    add_dataset_arg(p)
    p.add_argument("--out", required=True, help="output folder (results.json, curves.png)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds from a run with other arguments")  # fmt: skip
    p.set_defaults(func=cmd_sweep)
