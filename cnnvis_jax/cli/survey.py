"""``cnnvis survey``: the survey on one network, one report.

``cnnvis survey [--model default] [--weights W] [--dataset concepts|broden:DIR|...]
[--quick | --full] [--only am,dissection [--rerun]] [--seed 0] --out DIR`` writes
``DIR/index.html`` and every figure, table and number beside it; a rerun of the same
command resumes (finished stages are kept; ``--rerun`` runs the selected ones again).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


def _run_dir(model_name: str):
    """The training run of ``--model default`` (the cached one), else None."""
    if model_name != "default":
        return None
    from cnnvis_jax.default import default_run_dir

    return default_run_dir()


def _at_size(model, size: int):
    """``model`` surveyed on ``size`` x ``size`` images (fully convolutional models)."""
    from cnnvis_jax.dissection.dissect import at_image_size
    from cnnvis_jax.errors import InputError

    if model.input.fixed_size and (size, size) != tuple(model.input.size):
        h, w = model.input.size
        raise InputError(
            f"--size: model {model.name!r} takes only {h}x{w} images (a fully connected "
            "layer fixes the size); omit --size."
        )
    return at_image_size(model, model.layer_names, size)


def cmd_survey(args) -> int:
    from cnnvis_jax.cli.common import load_model_arg
    from cnnvis_jax.data import open_dataset
    from cnnvis_jax.errors import InputError
    from cnnvis_jax.survey import FULL, QUICK, parse_only, run_survey

    if args.size is not None and args.size < 16:
        raise InputError(f"--size must be at least 16 pixels, got {args.size}.")
    only = parse_only(args.only) if args.only else None
    config = dataclasses.replace(FULL if args.full else QUICK, seed=args.seed)
    model = load_model_arg(args)
    if args.size is not None:
        model = _at_size(model, args.size)
    count = max(config.sample_images, config.deconv_images, config.dissection_images,
                config.diagnosis_images)  # fmt: skip
    source = open_dataset(args.dataset, count=count, size=tuple(model.input.size))
    result = run_survey(model, source, args.out, config, only=only, rerun=args.rerun,
                        run_dir=_run_dir(args.model), progress=not args.quiet)  # fmt: skip
    held = sum(f["held"] for f in result["findings"])
    print(
        f"{held}/{len(result['findings'])} of the survey's claims held; report: "
        f"{Path(args.out) / 'index.html'}"
    )
    return 0


def add_commands(sub) -> None:
    from cnnvis_jax.cli.common import add_dataset_arg, add_model_args
    from cnnvis_jax.survey.config import STAGES

    p = sub.add_parser("survey", help="the survey's methods on one network, one report")
    add_model_args(p)
    add_dataset_arg(p)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small settings (default)")
    size.add_argument("--full", action="store_true", help="paper-scale settings")
    p.add_argument("--only", help=f"stages to run, comma-separated: {','.join(STAGES)}")
    p.add_argument(
        "--rerun", action="store_true", help="run the selected stages again even if finished"
    )
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default %(default)s)")
    p.add_argument(
        "--size", type=int,
        help="image size for a fully convolutional model (e.g. 96 for vgg16-hed on a CPU; "
        "default: the model's own)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="the survey folder (index.html and files)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_survey)
