"""``cnnvis train``: train ConceptNet on the embedded concept set."""

from __future__ import annotations

from pathlib import Path

from cnnvis_jax.cli.common import given_or_default


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
        shuffle_labels=args.shuffle_labels,
    )
    metrics = train(config, args.out, progress=not args.quiet)
    print(
        f"val_accuracy {metrics['val_accuracy']:.4f} after {metrics['epochs']} epochs "
        f"in {metrics['seconds']:.0f} s; report: {Path(args.out) / 'report' / 'index.html'}"
    )
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train ConceptNet on the embedded concept set")
    p.add_argument("--out", required=True, help="run directory (a rerun resumes it)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--no-dropout", action="store_true", help="train without dropout")
    p.add_argument("--batchnorm", action="store_true", help="BatchNorm after every conv")
    p.add_argument("--shuffle-labels", action="store_true",
                   help="train on shuffled labels (the data randomization sanity check)")  # fmt: skip
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
