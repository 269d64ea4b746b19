"""``cnnvis attack``: adversarial examples (FGSM, PGD) against a classifier.

``cnnvis attack --model M [--weights W] [--attack pgd|fgsm] [--epsilon 8] [--steps 10]
[--dataset concepts --count 64] [--seed 0] [--target CLASS] --out DIR`` attacks the
network's own prediction on each image (or, with ``--target``, pushes it into that class) within an L-inf ball of ``epsilon`` grey levels (of 255) and
writes ``DIR/results.json`` (success rate, margins, each image's classes) and
``DIR/examples.png`` (clean, adversarial, the perturbation magnified).
"""

from __future__ import annotations

from cnnvis_jax.errors import InputError


def cmd_attack(args) -> int:
    import jax
    import numpy as np

    from cnnvis_jax.cli.common import load_model_arg
    from cnnvis_jax.data import open_dataset
    from cnnvis_jax.robustness import attack, fgsm, pgd
    from cnnvis_jax.robustness.adversarial import target_index

    for name in ("count", "steps"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if not 0 < args.epsilon <= 255:
        raise InputError(
            f"--epsilon is in grey levels of 255 and must be in (0, 255], got {args.epsilon}."
        )
    settings = (fgsm(args.epsilon / 255) if args.attack == "fgsm"
                else pgd(args.epsilon / 255, steps=args.steps))  # fmt: skip
    model = load_model_arg(args)
    model.check_class(0)  # a classifier, else one line
    target = target_index(model, args.target) if args.target is not None else None
    source = open_dataset(args.dataset, count=args.count, size=tuple(model.input.size))
    n = min(args.count, len(source))
    images = np.stack([np.asarray(source[i]["image"], np.float32) / 255.0 for i in range(n)])
    result = attack(model, images, settings, key=jax.random.key(args.seed), target=target)
    result.save(args.out, class_names=model.class_names)
    outcome = ("the prediction changed" if target is None
               else f"the prediction became {model.class_names[target]!r}")  # fmt: skip
    print(
        f"{settings.name} within {args.epsilon:g}/255: {outcome} on "
        f"{result.success_rate:.1%} of {n} images; wrote {args.out}/results.json"
    )
    return 0


def add_commands(sub) -> None:
    from cnnvis_jax.cli.common import add_dataset_arg, add_model_args

    p = sub.add_parser("attack", help="adversarial examples (FGSM, PGD) and their success rate")
    add_model_args(p)
    add_dataset_arg(p)
    p.add_argument("--attack", choices=("pgd", "fgsm"), default="pgd")
    p.add_argument("--epsilon", type=float, default=8.0,
                   help="L-inf radius in grey levels of 255 (default 8)")  # fmt: skip
    p.add_argument("--steps", type=int, default=10, help="PGD's steps (default 10)")
    p.add_argument("--count", type=int, default=64, help="images attacked (default 64)")
    p.add_argument("--seed", type=int, default=0, help="PGD's random start")
    p.add_argument("--target", default=None,
                   help="push every image into this class (index or name; default: "
                        "untargeted, change each image's own prediction)")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder (results.json, examples.png)")
    p.add_argument("--quiet", action="store_true", help="(no progress bar to hide)")
    p.set_defaults(func=cmd_attack)
