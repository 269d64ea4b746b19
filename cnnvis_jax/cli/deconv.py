"""``cnnvis deconv``: top images per unit, their projections and patches.

The pass over the data and the projections are checkpointed under
``DIR/.deconv-checkpoint``: a rerun of the same command resumes (Ctrl-C exits 130);
other arguments into the same folder are refused unless ``--overwrite``.
"""

from __future__ import annotations

from cnnvis_jax.cli.common import add_dataset_arg, add_model_args, load_model_arg
from cnnvis_jax.errors import InputError


def cmd_deconv(args) -> int:
    import shutil
    from pathlib import Path

    import numpy as np

    from cnnvis_jax.cli.common import start_run
    from cnnvis_jax.data import open_dataset
    from cnnvis_jax.deconv import deconv_layer, parse_units, save_outputs

    if args.count is not None and args.count < 1:
        raise InputError(f"--count must be at least 1, got {args.count}.")
    if args.top < 1:
        raise InputError(f"--top must be at least 1, got {args.top}.")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}.")
    model = load_model_arg(args)
    layer = model.layer(args.layer)
    units = parse_units(args.units, layer.channels)
    out = Path(args.out)
    run = {key: getattr(args, key) for key in ("model", "weights", "top", "rule", "pool",
                                               "dataset", "count", "batch_size")}  # fmt: skip
    run.update(layer=layer.name, units=list(units))
    checkpoint = out / ".deconv-checkpoint"
    if start_run(out, run, overwrite=args.overwrite, done=("results.json",),
                 checkpoint=checkpoint):  # fmt: skip
        return 0
    source = open_dataset(args.dataset, count=args.count, size=model.input.size)
    indices = None
    if args.count is not None and args.count < len(source):
        indices = np.arange(args.count)
    result = deconv_layer(
        model,
        source,
        layer.name,
        units,
        k=args.top,
        rule=args.rule,
        pool=args.pool,
        batch_size=args.batch_size,
        indices=indices,
        progress=not args.quiet,
        checkpoint=checkpoint,
    )
    png, record = save_outputs(args.out, result)
    shutil.rmtree(checkpoint, ignore_errors=True)
    print(f"{layer.name}: top {args.top} of {len(units)} units ({args.rule}, {args.pool}); "
          f"wrote {png} and {record}")  # fmt: skip
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser(
        "deconv",
        help="Zeiler & Fergus: top images per unit, their projections and patches",
    )
    add_model_args(p)
    p.add_argument("--layer", required=True, help="layer name (conv5) or torchvision alias")
    p.add_argument("--units", required=True, help="units: '3', '0:16' (end exclusive), '1,5,9'")
    p.add_argument("--top", type=int, default=9, help="top images per unit (default: 9)")
    p.add_argument(
        "--rule",
        choices=("deconvnet", "guided", "gradient"),
        default="deconvnet",
        help="backward rule at ReLUs (default: %(default)s)",
    )
    p.add_argument(
        "--pool",
        choices=("switches", "center"),
        default="switches",
        help="max-pool backward: the argmax (switches) or the window centre (ablation)",
    )
    add_dataset_arg(p)
    p.add_argument("--count", type=int, help="use the first N images of the data set")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help="output folder (<layer>.png, results.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds from a run with other arguments")  # fmt: skip
    p.set_defaults(func=cmd_deconv)
