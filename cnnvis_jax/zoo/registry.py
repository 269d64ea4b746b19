"""The zoo registry: names -> NNX networks with their input contract and taps.

Every zoo network is an NNX module whose ``__call__(x, layers=None)`` takes
normalized NHWC input and returns ``{tap: activation}`` for the requested taps,
stopping after the deepest one. :func:`as_model` turns such a module (trained or
not) into a :class:`cnnvis_jax.Model`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping

from flax import nnx

from cnnvis_jax.errors import InputError, did_you_mean
from cnnvis_jax.model import InputContract, Model, build_model


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """What the zoo knows about one network.

    Attributes:
      init: ``init(num_classes=..., seed=..., **variant) -> nnx.Module`` (random).
      input: the input contract.
      layers: canonical tap names in forward order.
      aliases: tap name -> other accepted names (torchvision module names).
      logits: the pre-softmax tap, or None for a network without classifier.
      num_classes: default number of classes.
      description: one line for ``cnnvis models``.
    """

    init: Callable[..., nnx.Module]
    input: InputContract
    layers: tuple[str, ...]
    aliases: Mapping[str, tuple[str, ...]]
    logits: str | None
    num_classes: int | None
    description: str


_ZOO: dict[str, ZooEntry] = {}


def register(name: str, entry: ZooEntry) -> None:
    _ZOO[name] = entry


def names() -> tuple[str, ...]:
    return tuple(sorted(_ZOO))


def entry(name: str) -> ZooEntry:
    if name not in _ZOO:
        raise InputError(f"unknown model {name!r}; " + did_you_mean(name, names()))
    return _ZOO[name]


def init_module(name: str, *, seed: int = 0, num_classes: int | None = None, **variant):
    """A randomly initialized NNX module of zoo network ``name``."""
    e = entry(name)
    kwargs = dict(variant)
    if e.num_classes is not None:
        kwargs["num_classes"] = num_classes or e.num_classes
    return e.init(seed=seed, **kwargs)


def as_model(
    module: nnx.Module,
    name: str,
    *,
    class_names=None,
    input: InputContract | None = None,
) -> Model:
    """Wrap a zoo module (any weights) as a :class:`Model` in evaluation mode."""
    e = entry(name)
    module.eval()
    graphdef, state = nnx.split(module)

    def apply_fn(params, x, layers):
        return nnx.merge(graphdef, params)(x, tuple(layers))

    model = build_model(
        name,
        apply_fn,
        state,
        input or e.input,
        e.layers,
        aliases=e.aliases,
        class_names=class_names,
        logits_layer=e.logits,
    )
    if class_names is None and e.logits is not None:
        count = model.layer(e.logits).channels
        model = model.replace(class_names=tuple(f"class_{i}" for i in range(count)))
    return model


def random_model(name: str, *, seed: int = 0, warn: bool = True, **variant) -> Model:
    """Zoo network ``name`` with random weights (warns: pictures mean little)."""
    if warn:
        warnings.warn(
            f"model {name!r} has random weights: pictures of an untrained network "
            "mean little. Pass weights (--weights FILE) for a trained one.",
            stacklevel=2,
        )
    return as_model(init_module(name, seed=seed, **variant), name)
