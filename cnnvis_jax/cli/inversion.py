"""``cnnvis invert`` and ``cnnvis train-decoder``.

``cnnvis invert --model M [--weights W] --layer L [--images PATHS | --dataset
concepts --count N] --method regularized|upconv [--preset P] [--perturb
binarize|dropout|drop-least] --out DIR`` writes ``DIR/reconstructions.png``
(originals over reconstructions), one PNG per reconstruction and
``DIR/results.json``::

    {"layer", "method", "preset", "perturbation", "normalized_feature_error",
     "normalized_image_error", "images": [{index, normalized_feature_error,
     normalized_image_error, finite, file}], "non_finite": [...]}

(the two errors at the top are means over the images with finite results).
``--method upconv`` uses ``--decoder FILE`` or the cached decoder of the model
and layer (``<cache>/decoders/<model>-<weights hash>/<layer>/``), training it
first when it is missing. ``cnnvis train-decoder --model M --layer L --out DIR``
trains (or resumes) one decoder into DIR.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from cnnvis_jax.errors import InputError

IMPORTANCE_IMAGES = 256
"""Concept-set training images whose mean activations rank units for drop-least."""


def _images(args, model) -> tuple[np.ndarray, list]:
    from cnnvis_jax.data import open_dataset
    from cnnvis_jax.data.imageio import load_images
    from cnnvis_jax.features import load_batch, to_model_input

    if args.images:
        u8 = load_images(args.images, model.input.size)
        names = [str(p) for p in args.images]
    else:
        count = args.count if args.count is not None else 8
        if count < 1:
            raise InputError(f"--count must be at least 1, got {count}.")
        source = open_dataset(args.dataset, count=count, size=model.input.size)
        count = min(count, len(source))
        u8 = load_batch(source, np.arange(count))["image"]
        names = list(range(count))
    return np.asarray(to_model_input(model, u8)), names


def _importance(model, layer: str) -> dict:
    from cnnvis_jax.data.concepts import ConceptSet
    from cnnvis_jax.features import to_model_input
    from cnnvis_jax.inversion.perturb import unit_importance
    from cnnvis_jax.inversion.regularized import features_of

    source = ConceptSet(IMPORTANCE_IMAGES, split="train", image_size=max(model.input.size))
    images = np.asarray(to_model_input(model, source.batch(np.arange(IMPORTANCE_IMAGES))["image"]))
    return {layer: unit_importance(features_of(model, images, (layer,))[layer])}


def cmd_invert(args) -> int:
    import jax

    from cnnvis_jax.cli.common import load_model_arg, same_run
    from cnnvis_jax.inversion.cache import cached_decoder
    from cnnvis_jax.inversion.perturb import make_perturbation
    from cnnvis_jax.inversion.reconstruction import reconstruction
    from cnnvis_jax.inversion.regularized import features_of, invert_layers, resolve_plan
    from cnnvis_jax.inversion.upconv import decode
    from cnnvis_jax.report.files import strict, warn_non_finite, write_json

    if args.images and args.count is not None:
        raise InputError("give either --images or --dataset/--count, not both.")
    if args.restarts < 1:
        raise InputError(f"--restarts must be at least 1, got {args.restarts}.")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}.")
    model = load_model_arg(args)
    layer = model.resolve(args.layer)
    images, names = _images(args, model)
    out = Path(args.out)
    run = {k: v for k, v in sorted(vars(args).items())
           if k not in ("func", "quiet", "overwrite", "out", "needs_cache")}  # fmt: skip
    same_run(out / "run.json", run, overwrite=args.overwrite)  # other arguments: refused
    checkpoint = out / ".invert-checkpoint"
    if args.overwrite:
        shutil.rmtree(checkpoint, ignore_errors=True)
    write_json(out / "run.json", run)
    key = jax.random.key(args.seed)
    importance = _importance(model, layer) if args.perturb == "drop-least" else None
    transform = make_perturbation(
        args.perturb, key=jax.random.fold_in(key, 1), importance=importance
    )
    original = features_of(model, images, (layer,))[layer]
    target = original if transform is None else np.asarray(transform(layer, original))
    if args.method == "regularized":
        plan = resolve_plan(model, layer, args.preset, args.steps)
        result = invert_layers(
            model, {layer: target}, preset=plan, key=key, restarts=args.restarts,
            progress=not args.quiet, checkpoint=checkpoint,
        )[layer]  # fmt: skip
        estimates, _ = result.best()
        done = reconstruction(model, layer, images, estimates, method=args.method,
                              perturbation=args.perturb, finite=result.finite.any(axis=0),
                              names=names, preset=args.preset, steps=plan.steps)  # fmt: skip
    else:
        decoder = cached_decoder(model, layer, args.decoder, progress=not args.quiet)
        done = reconstruction(model, layer, images, decode(decoder, target), method=args.method,
                              perturbation=args.perturb, names=names)  # fmt: skip
    done.save(out)
    warn_non_finite(strict(done.record())[1], out / "results.json", f"layer {layer}")
    shutil.rmtree(checkpoint, ignore_errors=True)
    record = done.summary()
    if record["non_finite"]:
        print(
            f"cnnvis: images {record['non_finite']} hit non-finite values; their last finite "
            "iterate is saved.",
            file=sys.stderr,
        )
    print(
        f"{layer} ({args.method}, {record['perturbation']}): feature error "
        f"{record['normalized_feature_error']:.4f}, image error "
        f"{record['normalized_image_error']:.4f}; wrote {out / 'results.json'}"
        if done.ok.any()
        else f"{layer}: every image hit non-finite values; wrote {out / 'results.json'}"
    )
    return 0


def cmd_train_decoder(args) -> int:
    from cnnvis_jax.cli.common import given_or_default, load_model_arg
    from cnnvis_jax.inversion.io import read_record
    from cnnvis_jax.inversion.train import DecoderConfig, train_decoder

    defaults = DecoderConfig(layer=args.layer)
    steps = given_or_default("steps", args.steps, defaults.steps)
    batch_size = given_or_default("batch-size", args.batch_size, defaults.batch_size)
    model = load_model_arg(args)
    config = DecoderConfig(
        layer=model.resolve(args.layer),
        steps=steps,
        batch_size=batch_size,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    train_decoder(model, config, args.out, progress=not args.quiet)
    record = read_record(args.out)["training"]
    print(
        f"{config.layer} decoder: loss {record['first_loss']:.4f} -> {record['final_loss']:.4f} "
        f"in {record['seconds']:.0f} s; wrote {Path(args.out) / 'decoder.safetensors'}"
    )
    return 0


def add_commands(sub) -> None:
    from cnnvis_jax.catalog import INVERSION_PRESETS as PRESETS
    from cnnvis_jax.catalog import PERTURBATIONS
    from cnnvis_jax.cli.common import add_dataset_arg, add_model_args

    p = sub.add_parser("invert", help="network inversion: regularized (Mahendran) or UpconvNet")
    add_model_args(p)
    p.add_argument("--layer", required=True, help="layer name (conv5) or torchvision alias")
    p.add_argument("--images", nargs="+", help="image files to reconstruct")
    add_dataset_arg(p)
    p.add_argument("--count", type=int, help="use the first N images of the data set (default 8)")
    p.add_argument("--method", choices=("regularized", "upconv"), default="regularized")
    p.add_argument("--preset", choices=tuple(PRESETS), default="mahendran2016")
    p.add_argument("--perturb", choices=PERTURBATIONS, help="perturb the features first")
    p.add_argument(
        "--decoder", help="decoder file or folder (upconv; default: cached, trained once)"
    )
    p.add_argument("--steps", type=int, help="rescale the preset's schedule to N steps")
    p.add_argument("--restarts", type=int, default=1, help="random restarts (best kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (PNGs, results.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds from a run with other arguments")  # fmt: skip
    p.set_defaults(func=cmd_invert)

    t = sub.add_parser("train-decoder", help="train an UpconvNet decoder for one layer")
    add_model_args(t)
    t.add_argument("--layer", required=True)
    t.add_argument("--out", required=True, help="run folder (a rerun resumes it)")
    t.add_argument("--steps", type=int, help="training steps (default 400)")
    t.add_argument("--batch-size", type=int, help="images per step (default 32)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train_decoder)
