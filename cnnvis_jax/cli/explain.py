"""``cnnvis explain``: one class decision explained by the concepts of a layer (CRP).

``cnnvis explain --model M [--weights W] --image FILE [--class NAME|INDEX] --layer L
[--top 6] [--rule R] [--dataset D] [--images 1000] [--refs 6] --out DIR`` writes
``DIR/explanation.png`` (the image, its relevance map, and per top concept its
conditional heatmap, its share of the layer's relevance and its reference patches
chosen by relevance maximization over ``--images`` images of ``--dataset``) and
``DIR/explanation.json``. ``--class`` defaults to the predicted class; ``--refs 0``
skips the reference images. See :mod:`cnnvis_jax.crp`.
"""

from __future__ import annotations

from pathlib import Path

from cnnvis_jax.errors import InputError

__all__ = ["add_commands", "cmd_explain"]


def cmd_explain(args) -> int:
    import numpy as np

    from cnnvis_jax.cli.common import class_index, load_model_arg, writable_folder
    from cnnvis_jax.crp import check_rule, explain, top_relevance, write_explanation
    from cnnvis_jax.data.imageio import load_images

    if not Path(args.image).is_file():
        raise InputError(f"--image {args.image!r} is not a file; give an image path.")
    for name, value in (("--top", args.top), ("--images", args.images)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}.")
    if args.refs < 0:
        raise InputError(f"--refs must be 0 (no reference images) or more, got {args.refs}.")
    out = writable_folder(args.out, "--out")
    model = load_model_arg(args)
    if model.logits_layer is None:
        raise InputError(f"model {args.model!r} has no class scores; explain needs a classifier.")
    info = model.layer(args.layer)
    target = None if args.klass is None else class_index(model, args.klass)
    if args.top > info.channels:
        raise InputError(f"--top {args.top} exceeds the {info.channels} channels of "
                         f"{info.name}; lower it.")  # fmt: skip
    check_rule(args.rule)
    rule = args.rule
    image = load_images([args.image], model.input.size)[0].astype(np.float32) / 255.0
    patches = None
    if args.refs:
        from cnnvis_jax.data import open_dataset
        from cnnvis_jax.deconv import crop_patches

        source = open_dataset(args.dataset, split="train", count=args.images,
                              size=model.input.size)  # fmt: skip
        if len(source) < args.refs:
            raise InputError(f"--refs {args.refs} exceeds the {len(source)} images of "
                             f"{args.dataset}; lower it.")  # fmt: skip
        refs = top_relevance(model, source, info.name, k=args.refs, rule=rule,
                             progress=not args.quiet)  # fmt: skip
        patches = crop_patches(source, refs, model).images
    explanation = explain(model, image, target, info.name, top=args.top, rule=rule,
                          reference_patches=patches)  # fmt: skip
    write_explanation(explanation, out)
    e = explanation
    names = model.class_names
    predicted = names[e.predicted] if names else str(e.predicted)
    print(f"{e.class_name} (p={e.probability:.3f}, predicted {predicted})")
    for u, r, s in zip(e.units, e.relevance, e.share):
        print(f"  {e.layer}:{int(u)}  relevance {float(r):.4g}  share {100 * float(s):.1f}%")
    print(f"wrote {out / 'explanation.png'} and {out / 'explanation.json'}")
    return 0


def add_commands(sub) -> None:
    from cnnvis_jax.cli.common import add_dataset_arg, add_model_args

    p = sub.add_parser("explain", help="explain a class decision by a layer's concepts (CRP)")
    add_model_args(p)
    p.add_argument("--image", required=True, help="the image to explain")
    p.add_argument("--class", dest="klass",
                   help="class name or index (default: the predicted class)")  # fmt: skip
    p.add_argument("--layer", required=True, help="layer whose channels are the concepts")
    p.add_argument("--top", type=int, default=6, help="concepts shown (default %(default)s)")
    p.add_argument("--rule", default="epsilon_plus_flat",
                   help="an LRP composite (epsilon_plus_flat, epsilon_gamma_box, ...) or a "
                   "ReLU rule (gradient, guided, ...) (default %(default)s)")  # fmt: skip
    add_dataset_arg(p)
    p.add_argument("--images", type=int, default=1000,
                   help="data images searched for reference images (default %(default)s)")  # fmt: skip
    p.add_argument("--refs", type=int, default=6,
                   help="reference images per concept, 0 for none (default %(default)s)")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder (explanation.png, .json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_explain)
