"""``cnnvis dissect`` and ``cnnvis net2vec``.

``cnnvis dissect --model M [--weights W] --dataset concepts|broden:DIR --layers
conv1,conv5 [--mode lite|original] [--quantile 0.005] [--iou 0.04] --out DIR`` writes
the files of :mod:`~cnnvis_jax.dissection.outputs` and ``timings.json`` (seconds per
phase: model load, dissection, report); pass-1 results and partial tallies
are checkpointed under ``DIR/checkpoint`` so a rerun of the same command resumes
(or reuses a finished run). ``--compose N [--beam B]`` also searches each unit's best
formula of up to N concepts (AND, OR, AND NOT; :mod:`~cnnvis_jax.dissection.compose`)
and adds it to tally.csv, the report and ``<layer>/compose.json``.

``cnnvis net2vec --model M --dataset ... --layer L --out DIR`` trains the Net2Vec
embeddings on the training split and compares them with the best single unit on the
validation split (``net2vec.csv``, ``net2vec.json``, ``net2vec.png``, ``index.html``).
"""

from __future__ import annotations

from pathlib import Path

from cnnvis_jax.errors import InputError


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InputError(f"--{name} must be at least 1, got {value}.")


def open_labelled(spec: str, split: str | None, count: int | None, skip_bad_masks: bool = False):
    """The labelled source of ``--dataset``: the concept set (``split`` default val)
    or a Broden directory (``split`` default all rows)."""
    from cnnvis_jax.data import open_dataset, parse_dataset

    kind, path = parse_dataset(spec)
    if kind == "broden":
        from cnnvis_jax.data.broden import BrodenSource

        return BrodenSource(path, split=split, on_error="skip" if skip_bad_masks else "raise")
    if kind != "concepts":
        raise InputError(
            f"dataset {spec!r} has no concept labels; dissection needs --dataset concepts "
            "or broden:DIR."
        )
    return open_dataset(spec, split=split, count=count)


def read_thresholds(path: str):
    """float64 (U,) thresholds from a ``.npy`` file (no pickles)."""
    import numpy as np

    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(
            f"cannot read thresholds from {path!r} ({e}); give a .npy file of one float per unit."
        ) from None
    if values.dtype.kind not in "fiu" or values.ndim != 1:
        raise InputError(
            f"{path!r} holds a {values.dtype} array of shape {values.shape}; thresholds are one "
            "number per unit (a 1-D float array)."
        )
    return values.astype(np.float64)


def cmd_dissect(args) -> int:
    import time

    import numpy as np

    from cnnvis_jax import distributed
    from cnnvis_jax.cli.common import load_model_arg
    from cnnvis_jax.dissection.dissect import dissect, dissection_model, spatial_layers
    from cnnvis_jax.dissection.outputs import write_outputs
    from cnnvis_jax.report.files import write_json

    _positive("count", args.count)
    _positive("batch-size", args.batch_size)
    _positive("top", args.top)
    _positive("checkpoint-every", args.checkpoint_every)
    if args.compose is not None:
        from cnnvis_jax.dissection.compose import DEFAULT_BEAM, check_search

        try:
            check_search(args.compose, DEFAULT_BEAM if args.beam is None else args.beam)
        except InputError as e:
            raise InputError(f"--compose/--beam: {e}") from None
    elif args.beam is not None:
        raise InputError("--beam is the beam width of --compose; add --compose N (e.g. 3).")
    if args.feature_memory is not None and args.feature_memory < 0:
        raise InputError(f"--feature-memory must be >= 0 (MB), got {args.feature_memory}.")
    clock = [time.perf_counter()]
    seconds = {}

    def lap(phase: str) -> None:
        clock.append(time.perf_counter())
        seconds[phase] = clock[-1] - clock[-2]

    model = load_model_arg(args)
    lap("load_model")
    layers = spatial_layers(model, args.layers)
    given = None
    if args.thresholds:
        if len(layers) != 1:
            raise InputError(
                "--thresholds gives one layer's thresholds; dissect one layer with it."
            )
        given = {layers[0]: read_thresholds(args.thresholds)}
    source = open_labelled(args.dataset, args.split, args.count, args.skip_bad_masks)
    indices = None
    if args.count is not None and args.count < len(source):
        indices = np.arange(args.count)
    categories = [c.strip() for c in args.categories.split(",")] if args.categories else None
    out = Path(args.out)
    result = dissect(
        model,
        source,
        layers,
        mode=args.mode,
        quantile=args.quantile,
        iou_threshold=args.iou,
        batch_size=args.batch_size,
        indices=indices,
        categories=categories,
        zero_scalar=args.zero_scalar,
        top_images=args.top,
        contraction=args.contraction,
        engine=args.engine,
        preprocess=args.preprocess,
        thresholds=given,
        feature_memory=None if args.feature_memory is None else args.feature_memory << 20,
        pictures=not args.no_pictures,
        checkpoint=out / "checkpoint",
        checkpoint_every=args.checkpoint_every,
        progress=not args.quiet,
    )
    lap("dissect")
    if not distributed.is_primary():  # process 0 writes the run's files
        return 0
    extra = {"model": model.name, "weights": args.weights, "dataset": args.dataset}
    composed = None
    if args.compose is not None:
        from cnnvis_jax.dissection.compose import DEFAULT_BEAM, compose_layers

        beam = DEFAULT_BEAM if args.beam is None else args.beam
        composed = compose_layers(model, source, layers, length=args.compose, beam=beam,
                                  dissection=result, progress=not args.quiet)  # fmt: skip
        extra["compose"] = {"length": args.compose, "beam": beam}
        lap("compose")
    model = dissection_model(model, source, layers, args.preprocess)
    write_outputs(
        out,
        result,
        model=model if not args.no_pictures else None,
        source=source,
        extra=extra,
        compose=composed,
    )
    lap("report")
    write_json(out / "timings.json", {"seconds": seconds})
    for name, s in result.summary().items():
        unique = ", ".join(f"{c} {n}" for c, n in s["unique"].items())
        print(f"{name}: {s['detectors']}/{s['units']} units covering {s['concepts']} concepts "
              f"with IoU >= {result.iou_threshold:g} ({unique})")  # fmt: skip
    for name, c in (composed or {}).items():
        s = c.summary()
        print(f"{name}: {s['units_gaining']}/{s['units']} units gain >= {s['min_gain']:g} IoU "
              f"from a formula of up to {c.length} concepts (mean set IoU "
              f"{s['mean_iou']:.4f} vs {s['mean_atomic_iou']:.4f} for single concepts)")  # fmt: skip
    if result.skipped:
        print(f"skipped {len(result.skipped)} bad mask file(s); see {out / 'run.json'}")
    print(f"wrote {out / 'summary.json'} and per-layer tally.csv / index.html")
    return 0


def cmd_net2vec(args) -> int:
    from cnnvis_jax.cli.common import load_model_arg, start_run
    from cnnvis_jax.dissection.net2vec import net2vec, write_net2vec

    for name in ("epochs", "batch_size", "train_count", "val_count"):
        _positive(name.replace("_", "-"), getattr(args, name))
    model = load_model_arg(args)
    from cnnvis_jax.data import parse_dataset

    concepts = parse_dataset(args.dataset)[0] == "concepts"
    if not concepts and (args.train_count or args.val_count):
        raise InputError("--train-count/--val-count apply to the concept set only.")
    out = Path(args.out)
    run = {key: getattr(args, key) for key in ("model", "weights", "dataset", "layer", "quantile",
           "epochs", "batch_size", "lr", "momentum", "train_count", "val_count", "seed")}  # fmt: skip
    checkpoint = out / ".net2vec-checkpoint.npz"
    if start_run(out, run, overwrite=args.overwrite, done=("net2vec.json",),
                 checkpoint=checkpoint):  # fmt: skip
        return 0
    train = open_labelled(args.dataset, "train", (args.train_count or 2000) if concepts else None)
    val = open_labelled(args.dataset, "val", (args.val_count or 1000) if concepts else None)
    result = net2vec(
        model,
        train,
        val,
        args.layer,
        quantile=args.quantile,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        momentum=args.momentum,
        key=args.seed,
        progress=not args.quiet,
        checkpoint=checkpoint,
    )
    record = write_net2vec(args.out, result)
    checkpoint.unlink(missing_ok=True)
    s = record["summary"]
    print(f"{result.layer}: Net2Vec set IoU {s['mean_net2vec_iou']:.4f} vs best single unit "
          f"{s['mean_single_iou']:.4f} over {s['concepts']} concepts (better for "
          f"{s['net2vec_better']}); wrote {Path(args.out) / 'net2vec.csv'}")  # fmt: skip
    return 0


def add_commands(sub) -> None:
    """Add ``dissect`` and ``net2vec`` to the ``cnnvis`` sub-command parser."""
    from cnnvis_jax.cli.common import add_dataset_arg, add_model_args

    p = sub.add_parser("dissect", help="Network Dissection: label units with concepts (IoU)")
    add_model_args(p)
    add_dataset_arg(p)
    p.add_argument("--layers", required=True, help="comma-separated layers, e.g. conv1,conv5")
    p.add_argument("--mode", choices=("lite", "original"), default="lite",
                   help="IoU denominator and threshold read-out (default: %(default)s)")  # fmt: skip
    p.add_argument("--quantile", type=float, default=0.005, help="top activation fraction")
    p.add_argument("--iou", type=float, default=0.04, help="detector IoU threshold")
    p.add_argument("--split", help="data set split (concepts: default val; Broden: all)")
    p.add_argument("--count", type=int, help="use the first N images")
    p.add_argument("--categories", help="comma-separated categories to score (default all)")
    p.add_argument("--zero-scalar", action="store_true",
                   help="score image-level label 0 as a texture (NetDissect-Lite's quirk)")  # fmt: skip
    p.add_argument("--skip-bad-masks", action="store_true",
                   help="skip missing/corrupt Broden mask files (listed in run.json)")  # fmt: skip
    p.add_argument("--top", type=int, default=8, help="top images per unit in the report")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step (default: chosen per model and device, 32 for "
                   "224-px images on CPU)")  # fmt: skip
    p.add_argument("--engine", choices=("auto", "sparse", "dense"), default="auto",
                   help="sparse: host counts where units can fire (CPU default); dense: all "
                   "on device (accelerators)")  # fmt: skip
    p.add_argument("--contraction", choices=("auto", "segment", "einsum"), default="auto",
                   help="the dense engine's label contraction")  # fmt: skip
    p.add_argument(
        "--preprocess",
        choices=("model", "lite"),
        default="model",
        help="input normalization: the model's own, or NetDissect-Lite's (x-mean)/57.12",
    )
    p.add_argument("--thresholds", metavar="FILE.npy",
                   help="per-unit thresholds to use instead of pass 1's (one layer; e.g. "
                   "NetDissect-Lite's quantile.npy)")  # fmt: skip
    p.add_argument("--feature-memory", type=int, metavar="MB",
                   help="host memory for keeping pass-1 activations so pass 2 needs no second "
                   "forward (default 1024; 0: always two forwards)")  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=25, help="batches between checkpoints")
    p.add_argument("--no-pictures", action="store_true", help="reports without top images")
    p.add_argument("--compose", type=int, metavar="N",
                   help="also find each unit's best formula of up to N concepts (1..10; AND, "
                   "OR, AND NOT; Mu & Andreas 2020), e.g. 3")  # fmt: skip
    p.add_argument("--beam", type=int, metavar="B",
                   help="formulas kept per unit in the --compose search (default 5)")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder (a rerun resumes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_dissect)

    q = sub.add_parser("net2vec", help="Net2Vec: concepts as combinations of units")
    add_model_args(q)
    add_dataset_arg(q)
    q.add_argument("--layer", required=True)
    q.add_argument("--quantile", type=float, default=0.005)
    q.add_argument("--epochs", type=int, default=30)
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("--lr", type=float, default=1e-4)
    q.add_argument("--momentum", type=float, default=0.9)
    q.add_argument("--train-count", type=int, help="concept set training images (default 2000)")
    q.add_argument("--val-count", type=int, help="concept set validation images (default 1000)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.add_argument("--quiet", action="store_true")
    q.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds from a run with other arguments")  # fmt: skip
    q.set_defaults(func=cmd_net2vec)
