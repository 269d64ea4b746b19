"""The ``cnnvis`` command: parse arguments, call the library, write files.

Conventions shared by every command: ``--model default`` (the cached trained
ConceptNet) or ``--model NAME [--weights FILE]``; ``--dataset concepts |
broden:DIR | folder:DIR``; ``--out DIR`` receives every file. Errors go to stderr
as one line naming the problem and the fix; exit status 2 for bad arguments or
input, 1 for other failures.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cnnvis_jax.errors import CnnvisError, InputError


# --- shared argument helpers ---------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="'default' (the trained ConceptNet, trained on first use) or a zoo name "
        "(see `cnnvis models`)",
    )
    p.add_argument("--weights", help="weights file (.safetensors, .npz, or .pth with torch)")


def add_dataset_arg(p: argparse.ArgumentParser, default: str = "concepts") -> None:
    p.add_argument(
        "--dataset",
        default=default,
        help="concepts | broden:DIR | folder:DIR (default: %(default)s)",
    )


def given_or_default(name: str, value: int | None, default: int) -> int:
    """``value`` of option ``--name`` when given (it must be >= 1: 0 is not "the
    default"), else ``default``."""
    if value is None:
        return default
    if value < 1:
        raise InputError(f"--{name} must be at least 1, got {value}; omit it for {default}.")
    return value


def load_model_arg(args):
    from cnnvis_jax.models import load

    return load(args.model, weights=args.weights)


# --- train -----------------------------------------------------------------------------
def cmd_train(args) -> int:
    from cnnvis_jax.train import TrainConfig, train

    defaults = TrainConfig()
    config = TrainConfig(
        epochs=given_or_default("epochs", args.epochs, defaults.epochs),
        train_size=given_or_default("train-size", args.train_size, defaults.train_size),
        val_size=given_or_default("val-size", args.val_size, defaults.val_size),
        batch_size=given_or_default("batch-size", args.batch_size, defaults.batch_size),
        seed=args.seed,
        data_seed=args.data_seed,
        dropout=not args.no_dropout,
        batchnorm=args.batchnorm,
        target=args.target,
        conv1_kernel=args.conv1_kernel,
        conv1_stride=args.conv1_stride,
        checkpoint_every=args.checkpoint_every,
        snapshot_epochs=tuple(args.snapshots) if args.snapshots else defaults.snapshot_epochs,
    )
    metrics = train(config, args.out, progress=not args.quiet)
    print(
        f"val_accuracy {metrics['val_accuracy']:.4f} after {metrics['epochs']} epochs "
        f"in {metrics['seconds']:.0f} s; report: {Path(args.out) / 'report' / 'index.html'}"
    )
    return 0


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train ConceptNet on the embedded concept set")
    p.add_argument("--out", required=True, help="run directory (a rerun resumes it)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--no-dropout", action="store_true", help="train without dropout")
    p.add_argument("--batchnorm", action="store_true", help="BatchNorm after every conv")
    p.add_argument("--target", choices=("object", "scene"), default="object")
    p.add_argument("--conv1-kernel", type=int, default=5)
    p.add_argument("--conv1-stride", type=int, default=2)
    p.add_argument("--train-size", type=int, help="training images per epoch")
    p.add_argument("--val-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--checkpoint-every", type=int, default=20, help="steps between checkpoints")
    p.add_argument("--snapshots", type=int, nargs="*", help="epochs whose weights are kept")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


# --- models ----------------------------------------------------------------------------
def cmd_models(args) -> int:
    from cnnvis_jax import zoo
    from cnnvis_jax.models import catalog

    if not args.name:
        rows = [(name, zoo.entry(name).description) for name in zoo.names()]
        rows += [
            ("default", "conceptnet trained by the default recipe (cached; trained on first use)"),
            ("vgg16-hed", "VGG16 conv1_1..conv5_3 with HED's ImageNet-initialized weights "
             "(`cnnvis weights get vgg16-hed`; no classifier)"),
        ]  # fmt: skip
        if args.json:
            print(json.dumps(dict(rows), indent=2))
        else:
            width = max(len(n) for n, _ in rows)
            print("\n".join(f"{n:<{width}}  {d}" for n, d in rows))
        return 0
    model = catalog("conceptnet" if args.name == "default" else args.name)
    records = []
    for layer in model.layers:
        rf = layer.receptive_field
        records.append(
            {
                "name": layer.name,
                "aliases": list(layer.aliases),
                "shape": list(layer.shape),
                "receptive_field": None
                if rf is None
                else {"size": list(rf.size), "stride": list(rf.stride), "offset": list(rf.offset)},
            }
        )
    if args.json:
        print(
            json.dumps(
                {"model": model.name, "input": list(model.input.size), "layers": records}, indent=2
            )
        )
        return 0
    print(f"{model.name}: input {model.input.size[0]}x{model.input.size[1]} RGB")
    print(f"{'layer':<16}{'shape':<18}{'rf size':>8}{'stride':>7}{'offset':>7}  aliases")
    for r in records:
        rf = r["receptive_field"]
        size, stride, offset = (
            (rf["size"][0], rf["stride"][0], rf["offset"][0]) if rf else ("image", "-", "-")
        )
        shape = "x".join(map(str, r["shape"]))
        print(
            f"{r['name']:<16}{shape:<18}{size!s:>8}{stride!s:>7}{offset!s:>7}  {','.join(r['aliases'])}"
        )
    return 0


def add_models(sub) -> None:
    p = sub.add_parser("models", help="list the zoo, or one model's layers and receptive fields")
    p.add_argument("name", nargs="?", help="a zoo model name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)


# --- data ------------------------------------------------------------------------------
def cmd_data_generate(args) -> int:
    from cnnvis_jax.data.broden_export import export_broden
    from cnnvis_jax.data.concepts import ConceptSet
    from cnnvis_jax.data.tfds_concepts import build_tfds

    out = Path(args.out)
    if args.format == "tfds":
        build_tfds(out, train=args.train, val=args.val, image_size=args.image_size, seed=args.seed)
        print(f"TFDS concept set (array_record) written under {out}")
    else:
        source = ConceptSet(args.train, split="train", seed=args.seed, image_size=args.image_size)
        export_broden(source, out)
        print(f"Broden-format concept set ({args.train} images) written to {out}")
    return 0


def cmd_data_inspect(args) -> int:
    from cnnvis_jax.data import inspect_dataset

    print(inspect_dataset(args.dataset, progress=not args.quiet))
    return 0


def add_data(sub) -> None:
    p = sub.add_parser("data", help="generate/export the concept set; inspect a data set")
    dsub = p.add_subparsers(dest="data_command", required=True)
    g = dsub.add_parser("generate", help="write the concept set as TFDS or a Broden directory")
    g.add_argument("--out", required=True)
    g.add_argument("--format", choices=("tfds", "broden"), default="broden")
    g.add_argument("--train", type=int, default=1000, help="training images")
    g.add_argument("--val", type=int, default=200, help="validation images (tfds)")
    g.add_argument("--image-size", type=int, default=64)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_data_generate)
    i = dsub.add_parser("inspect", help="validate a data set fully and print its summary")
    i.add_argument("dataset", help="concepts | broden:DIR | folder:DIR")
    i.add_argument("--quiet", action="store_true")
    i.set_defaults(func=cmd_data_inspect)


# --- deconv ----------------------------------------------------------------------------
def cmd_deconv(args) -> int:
    import numpy as np

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
    )
    png, record = save_outputs(args.out, result)
    print(f"{layer.name}: top {args.top} of {len(units)} units ({args.rule}, {args.pool}); "
          f"wrote {png} and {record}")  # fmt: skip
    return 0


def add_deconv(sub) -> None:
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
    p.set_defaults(func=cmd_deconv)


# --- entry point -----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnvis",
        description="See what convolutional networks learn (JAX).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_models(sub)
    add_data(sub)
    add_deconv(sub)
    # Each method family registers its own commands (small modules, one job each).
    from cnnvis_jax.am import commands as am_commands
    from cnnvis_jax.deconv import commands_monitor
    from cnnvis_jax.dissection import commands as dissection_commands
    from cnnvis_jax.hub import commands as hub_commands
    from cnnvis_jax.inversion import commands as inversion_commands
    from cnnvis_jax.survey import commands as survey_commands

    for family in (
        survey_commands,  # survey: every family on one network, one report
        am_commands,  # am, mfv
        inversion_commands,  # invert, train-decoder
        commands_monitor,  # monitor, diagnose
        dissection_commands,  # dissect, net2vec
        hub_commands,  # weights get, gallery
    ):
        family.add_commands(sub)
    return parser


def enable_compilation_cache() -> None:
    """Keep compiled XLA programs across runs (``<cache>/xla``): a rerun of a
    command starts in seconds instead of recompiling."""
    import jax

    from cnnvis_jax.default import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    enable_compilation_cache()
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"cnnvis: error: {e}", file=sys.stderr)
        return 2
    except CnnvisError as e:
        print(f"cnnvis: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cnnvis: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
