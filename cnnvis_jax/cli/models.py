"""``cnnvis models`` (the zoo, one model's layers) and ``cnnvis data`` (generate, inspect)."""

from __future__ import annotations

import json
from pathlib import Path


def cmd_models(args) -> int:
    from cnnvis_jax.catalog import NAMED, ZOO

    if not args.name:
        rows = sorted(ZOO.items()) + list(NAMED.items())
        if args.json:
            print(json.dumps(dict(rows), indent=2))
        else:
            width = max(len(n) for n, _ in rows)
            print("\n".join(f"{n:<{width}}  {d}" for n, d in rows))
        return 0
    from cnnvis_jax.models import catalog

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


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the zoo, or one model's layers and receptive fields")
    p.add_argument("name", nargs="?", help="a zoo model name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models, needs_cache=False)


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


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="generate/export the concept set; inspect a data set")
    dsub = p.add_subparsers(dest="data_command", required=True)
    g = dsub.add_parser("generate", help="write the concept set as TFDS or a Broden directory")
    g.add_argument("--out", required=True)
    g.add_argument("--format", choices=("tfds", "broden"), default="broden")
    g.add_argument("--train", type=int, default=1000, help="training images")
    g.add_argument("--val", type=int, default=200, help="validation images (tfds)")
    g.add_argument("--image-size", type=int, default=64)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_data_generate, needs_cache=False)
    i = dsub.add_parser("inspect", help="validate a data set fully and print its summary")
    i.add_argument("dataset", help="concepts | broden:DIR | folder:DIR | tfds:DIR | skimage")
    i.add_argument("--quiet", action="store_true")
    i.set_defaults(func=cmd_data_inspect, needs_cache=False)


def add_commands(sub) -> None:
    _add_models(sub)
    _add_data(sub)
