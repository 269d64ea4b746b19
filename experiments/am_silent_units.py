"""Can units that are silent on the validation data be activated at all?

Two checks for units of the default model whose centre neuron is 0 on every
validation image:

* an exact upper bound for conv1 (a single linear filter): the largest
  pre-activation any image in [0, 1] can give is ``sum(max(w * lo, w * hi)) + b``
  with ``lo``/``hi`` the normalized input range (padding is 0 in normalized space,
  inside that range, so the bound holds at every position); a unit whose bound is
  below 0 is provably dead;
* an unregularized search for the others: pixels through a sigmoid, Adam (0.1),
  ``--steps`` steps from ``--restarts`` random starts per unit, maximizing the
  centre neuron's pre-activation; the best value over the restarts is reported.

Run: ``python -m experiments.am_silent_units --layer conv2_pre --units 0 5 10``.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax


def conv1_upper_bounds(model) -> np.ndarray:
    """Exact max of conv1's pre-activation over all images in [0, 1], per unit."""
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_flatten_with_path(model.params)[0]
    }
    kernel = next(v for k, v in flat.items() if k.startswith("conv1/kernel"))
    bias = next(v for k, v in flat.items() if k.startswith("conv1/bias"))
    mean, std = np.asarray(model.input.mean), np.asarray(model.input.std)
    lo, hi = (0.0 - mean) / std, (1.0 - mean) / std  # per input channel
    return np.maximum(kernel * lo[:, None], kernel * hi[:, None]).sum(axis=(0, 1, 2)) + bias


def best_pre_activation(model, layer: str, units, *, steps: int, restarts: int, seed: int):
    """Best centre-neuron value of ``layer`` found per unit (unregularized ascent)."""
    units = jnp.repeat(jnp.asarray(units), restarts)
    h, w = model.input.size
    z = jax.random.normal(jax.random.key(seed), (len(units), h, w, 3)) * 2.0

    def score(z):
        act = model.apply(model.params, jax.nn.sigmoid(z), (layer,))[layer]
        return act[jnp.arange(len(units)), act.shape[1] // 2, act.shape[2] // 2, units]

    opt = optax.adam(0.1)
    state = opt.init(z)

    @jax.jit
    def step(z, state):
        grad = jax.grad(lambda z: score(z).sum())(z)
        update, state = opt.update(-grad, state, z)
        return optax.apply_updates(z, update), state

    for _ in range(steps):
        z, state = step(z, state)
    return np.asarray(score(z)).reshape(-1, restarts).max(axis=1)


def main(argv=None) -> dict:
    from cnnvis_jax.default import default_run_dir
    from cnnvis_jax.train import load_trained

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(default_run_dir() / "weights.safetensors"))
    p.add_argument("--layer", default="conv2_pre")
    p.add_argument("--units", type=int, nargs="+", default=[0, 5, 10])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--restarts", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    model = load_trained(args.weights)
    bounds = conv1_upper_bounds(model)
    best = best_pre_activation(
        model, args.layer, args.units, steps=args.steps, restarts=args.restarts, seed=args.seed
    )
    record = {
        "conv1_provably_dead": [int(u) for u in np.flatnonzero(bounds <= 0)],
        "conv1_upper_bounds": {int(u): float(bounds[u]) for u in np.flatnonzero(bounds <= 0)},
        "layer": args.layer,
        "best_pre_activation": {int(u): float(v) for u, v in zip(args.units, best)},
    }
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
