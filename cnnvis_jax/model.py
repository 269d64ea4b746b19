"""The `Model` abstraction every method runs on.

A :class:`Model` is a frozen dataclass registered as a pytree whose only child is
``params``. It holds a pure function

    apply_fn(params, x, layers) -> {layer: activation}

over *normalized* NHWC inputs, the :class:`InputContract` that turns images in
[0, 1] RGB into those inputs, and a catalog of :class:`LayerInfo` (output shape and
receptive field, both computed by tracing the function, never typed by hand).

Methods call :meth:`Model.apply` with images in [0, 1], NHWC, float. Activations of
spatial layers are NHWC ``(N, H, W, C)``; of fully connected layers ``(N, C)``.

Wrapping never edits the user's code:

* :func:`from_function` wraps ``fn(params, x) -> dict | array``.
* :func:`from_nnx` wraps any Flax NNX module; layers are sub-module paths whose
  outputs are captured on a merged copy of the module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnvis_jax.errors import InputError, did_you_mean
from cnnvis_jax.receptive_field import ReceptiveField, compute_receptive_fields

ApplyFn = Callable[[Any, jax.Array, tuple[str, ...]], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class InputContract:
    """How images in [0, 1] RGB NHWC become the network's input.

    ``x = (images * value_scale - mean) / std`` per RGB channel, then the channel
    axis is reversed when ``channel_order == "BGR"``. ``mean``/``std`` are given in
    RGB order and in the ``value_scale`` units.

    Attributes:
      size: (height, width) the network expects.
      fixed_size: whether other sizes are refused (True when a fully connected
        layer fixes the spatial size; fully convolutional models accept any size).
    """

    size: tuple[int, int]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    value_scale: float = 1.0
    channel_order: str = "RGB"
    fixed_size: bool = True

    def __post_init__(self):
        if self.channel_order not in ("RGB", "BGR"):
            raise InputError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}.")

    def normalize(self, images: jax.Array) -> jax.Array:
        """Map images in [0, 1] RGB, shape (N, H, W, 3), to network input."""
        mean = jnp.asarray(self.mean, images.dtype)
        std = jnp.asarray(self.std, images.dtype)
        x = (images * self.value_scale - mean) / std
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        return x

    def denormalize(self, x: jax.Array) -> jax.Array:
        """Inverse of :meth:`normalize`: network input back to [0, 1] RGB."""
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        mean = jnp.asarray(self.mean, x.dtype)
        std = jnp.asarray(self.std, x.dtype)
        return (x * std + mean) / self.value_scale

    def with_size(self, size: tuple[int, int]) -> InputContract:
        return dataclasses.replace(self, size=tuple(size))


TORCHVISION = InputContract(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
"""torchvision's ImageNet preprocessing."""

CAFFE = InputContract(
    size=(227, 227),
    mean=(123.0, 117.0, 104.0),
    std=(1.0, 1.0, 1.0),
    value_scale=255.0,
    channel_order="BGR",
)
"""Caffe reference models: BGR, 0-255, minus the BGR mean (104, 117, 123)."""


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One tap point of a model.

    Attributes:
      name: canonical name (survey names such as ``conv5`` where they apply).
      shape: activation shape without the batch axis, ``(H, W, C)`` or ``(C,)``,
        at the model's input size.
      receptive_field: size/stride/offset in input pixels, ``None`` when every
        output sees the whole image (fully connected, global pooling).
      aliases: other accepted names (e.g. torchvision module names).
    """

    name: str
    shape: tuple[int, ...]
    receptive_field: ReceptiveField | None
    aliases: tuple[str, ...] = ()

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3

    @property
    def channels(self) -> int:
        return self.shape[-1]


@dataclasses.dataclass(frozen=True)
class Model:
    """A network as methods see it. See the module docstring for the contract.

    Attributes:
      name: model name (zoo name or user's).
      apply_fn: ``(params, x_normalized, layers) -> {layer: activation}``; must be
        pure and hashable (a module-level function or a closure made once).
      params: parameter pytree (the only pytree child).
      input: the :class:`InputContract`.
      layers: the layer catalog, in forward order.
      class_names: names of the output classes, or ``None`` when the model has no
        classifier (class-level methods refuse such models).
      logits_layer: name of the pre-softmax class-score layer, or ``None``.
    """

    name: str
    apply_fn: ApplyFn
    params: Any
    input: InputContract
    layers: tuple[LayerInfo, ...]
    class_names: tuple[str, ...] | None = None
    logits_layer: str | None = None

    # --- names -----------------------------------------------------------------
    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def resolve(self, name: str) -> str:
        """Canonical name of a layer given its name or an alias."""
        for layer in self.layers:
            if name == layer.name or name in layer.aliases:
                return layer.name
        valid = [n for layer in self.layers for n in (layer.name, *layer.aliases)]
        raise InputError(f"model {self.name!r} has no layer {name!r}; " + did_you_mean(name, valid))

    def layer(self, name: str) -> LayerInfo:
        canonical = self.resolve(name)
        return next(layer for layer in self.layers if layer.name == canonical)

    def check_unit(self, layer: str, unit: int) -> None:
        """Raise :class:`InputError` unless ``unit`` indexes a channel of ``layer``."""
        info = self.layer(layer)
        if not 0 <= int(unit) < info.channels:
            raise InputError(
                f"unit {unit} is out of range for layer {info.name!r} of model "
                f"{self.name!r}: valid units are 0..{info.channels - 1}."
            )

    def check_class(self, index: int) -> None:
        if self.class_names is None or self.logits_layer is None:
            raise InputError(
                f"model {self.name!r} has no classifier, so class-level methods do "
                "not apply; choose a unit of a feature layer instead."
            )
        if not 0 <= int(index) < len(self.class_names):
            raise InputError(
                f"class {index} is out of range for model {self.name!r}: valid "
                f"classes are 0..{len(self.class_names) - 1}."
            )

    # --- forward -----------------------------------------------------------------
    def apply(
        self, params: Any, images: jax.Array, layers: Sequence[str] | str
    ) -> dict[str, jax.Array]:
        """Activations of ``layers`` for ``images`` in [0, 1], NHWC float.

        Returns a dict keyed by the names as given (aliases stay aliases). The
        forward pass stops at the deepest requested layer.
        """
        if isinstance(layers, str):
            layers = (layers,)
        requested = tuple(layers)
        canonical = tuple(dict.fromkeys(self.resolve(n) for n in requested))
        check_images(images, self.input)
        out = self.apply_fn(params, self.input.normalize(images), canonical)
        return {n: out[self.resolve(n)] for n in requested}

    def __call__(self, images: jax.Array, layers: Sequence[str] | str | None = None):
        """:meth:`apply` with the model's own params; all layers by default."""
        return self.apply(self.params, images, layers or self.layer_names)

    def replace(self, **changes) -> Model:
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    Model,
    data_fields=["params"],
    meta_fields=["name", "apply_fn", "input", "layers", "class_names", "logits_layer"],
)


# --- input checks ---------------------------------------------------------------


def check_images(images: Any, contract: InputContract | None = None) -> None:
    """Validate an image batch: rank 4 NHWC, 3 channels, floating dtype, finite.

    Shape and dtype checks work under tracing; the finiteness check runs only on
    concrete arrays. Raises :class:`InputError` naming the problem and the fix.
    """
    shape = getattr(images, "shape", None)
    dtype = getattr(images, "dtype", None)
    if shape is None or dtype is None:
        raise InputError(
            f"images must be an array of shape (N, H, W, 3), got {type(images).__name__}."
        )
    if len(shape) != 4:
        raise InputError(
            f"images must have rank 4 (N, H, W, 3), got shape {tuple(shape)}; add a "
            "batch axis with images[None] for a single image."
        )
    if shape[-1] != 3:
        hint = (
            " The batch looks channels-first (NCHW); transpose it with x.transpose(0, 2, 3, 1)."
            if shape[1] == 3
            else " Convert grey or RGBA images to RGB first."
        )
        raise InputError(f"images must have 3 RGB channels last, got shape {tuple(shape)}.{hint}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise InputError(
            f"images must be floating point in [0, 1], got dtype {dtype}; convert "
            "uint8 images with images.astype('float32') / 255."
        )
    if contract is not None and contract.fixed_size and tuple(shape[1:3]) != tuple(contract.size):
        raise InputError(
            f"images are {shape[1]}x{shape[2]} but the model expects "
            f"{contract.size[0]}x{contract.size[1]}; resize or crop them first "
            "(cnnvis_jax.data.resize_to_contract)."
        )
    if not isinstance(images, jax.core.Tracer):
        arr = np.asarray(images)
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise InputError(
                f"images contain {bad} non-finite values (NaN or inf); clean the "
                "input (e.g. np.nan_to_num) before calling the model."
            )


# --- building models ------------------------------------------------------------


def build_model(
    name: str,
    apply_fn: ApplyFn,
    params: Any,
    input: InputContract,
    layer_names: Sequence[str],
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
    class_names: Sequence[str] | None = None,
    logits_layer: str | None = None,
) -> Model:
    """Make a :class:`Model`, computing every layer's shape and receptive field.

    Shapes come from ``jax.eval_shape`` at ``input.size``; receptive fields from
    :func:`cnnvis_jax.receptive_field.compute_receptive_fields`, which follows the
    traced computation.
    """
    layer_names = tuple(layer_names)
    if len(set(layer_names)) != len(layer_names):
        raise InputError(f"layer names of model {name!r} repeat: {layer_names}.")
    aliases = {k: tuple(v) for k, v in (aliases or {}).items()}
    unknown = set(aliases) - set(layer_names)
    if unknown:
        raise InputError(f"aliases name unknown layers {sorted(unknown)} in model {name!r}.")
    h, w = input.size
    example = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    shapes = jax.eval_shape(lambda p, x: apply_fn(p, x, layer_names), params, example)
    missing = [n for n in layer_names if n not in shapes]
    if missing:
        raise InputError(f"apply_fn of model {name!r} did not return layers {missing}.")
    fields: dict = {}

    def trace_fields(p):  # params may be abstract (ShapeDtypeStruct): trace them too
        fields.update(compute_receptive_fields(lambda x: apply_fn(p, x, layer_names), (1, h, w, 3)))
        return 0

    jax.eval_shape(trace_fields, params)
    infos = tuple(
        LayerInfo(
            name=n,
            shape=tuple(int(d) for d in shapes[n].shape[1:]),
            receptive_field=fields.get(n),
            aliases=aliases.get(n, ()),
        )
        for n in layer_names
    )
    if logits_layer is not None and logits_layer not in layer_names:
        raise InputError(f"logits layer {logits_layer!r} is not a layer of model {name!r}.")
    return Model(
        name=name,
        apply_fn=apply_fn,
        params=params,
        input=input,
        layers=infos,
        class_names=tuple(class_names) if class_names is not None else None,
        logits_layer=logits_layer,
    )


def from_function(
    fn: Callable[[Any, jax.Array], Mapping[str, jax.Array] | jax.Array],
    params: Any,
    *,
    input: InputContract,
    name: str = "function",
    layer_names: Sequence[str] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    class_names: Sequence[str] | None = None,
    logits_layer: str | None = None,
) -> Model:
    """Wrap a plain JAX function ``fn(params, x) -> {name: activation}`` (or one array).

    ``x`` is the normalized input (see :class:`InputContract`). A function that
    returns a single array gets one layer named ``"output"``. Under ``jit``, XLA
    removes the work for layers that are not requested.
    """

    def as_dict(params, x):
        out = fn(params, x)
        return out if isinstance(out, Mapping) else {"output": out}

    if layer_names is None:
        h, w = input.size
        example = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
        layer_names = tuple(jax.eval_shape(as_dict, params, example))

    def apply_fn(params, x, layers):
        out = as_dict(params, x)
        return {n: out[n] for n in layers}

    return build_model(
        name,
        apply_fn,
        params,
        input,
        layer_names,
        aliases=aliases,
        class_names=class_names,
        logits_layer=logits_layer,
    )


class _StopForward(Exception):
    """Raised inside a captured forward once every requested layer is recorded."""


class _Recorder:
    """Stands in for a sub-module: calls it and records its output."""

    def __init__(self, inner, name, record, wanted):
        self.inner, self.name, self.record, self.wanted = inner, name, record, wanted

    def __call__(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if self.name in self.wanted:
            self.record[self.name] = out
            if self.wanted <= self.record.keys():
                raise _StopForward
        return out


def _get_child(parent, key: str):
    return parent[int(key)] if key.isdigit() else getattr(parent, key)


def _set_child(parent, key: str, value) -> None:
    if key.isdigit():
        parent[int(key)] = value
    else:
        object.__setattr__(parent, key, value)


def from_nnx(
    module,
    *,
    input: InputContract,
    layers: Sequence[str],
    name: str | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    class_names: Sequence[str] | None = None,
    logits_layer: str | None = None,
    call: Callable[[Any, jax.Array], Any] | None = None,
) -> Model:
    """Wrap any Flax NNX module without editing it.

    ``layers`` are dotted sub-module paths (``"features.3"``, ``"block1.conv"``);
    the layer is the output of that sub-module's call. ``call(module, x)`` runs the
    forward (default ``module(x)``). The module is split once into graph definition
    and state; each forward merges a fresh copy, so the user's module is untouched.
    Put the module in evaluation mode (``module.eval()``) first if it has dropout or
    batch norm.
    """
    from flax import nnx

    graphdef, state = nnx.split(module)
    layers = tuple(layers)
    for path in layers:  # fail early with a clear message
        node = module
        for key in path.split("."):
            try:
                node = _get_child(node, key)
            except (AttributeError, IndexError, KeyError, TypeError):
                raise InputError(
                    f"module {type(module).__name__} has no sub-module {path!r} "
                    f"(failed at {key!r})."
                ) from None
    call = call or (lambda m, x: m(x))

    def apply_fn(params, x, requested):
        copy = nnx.merge(graphdef, params)
        record: dict[str, jax.Array] = {}
        wanted = set(requested)
        for path in requested:
            *parents, last = path.split(".")
            parent = copy
            for key in parents:
                parent = _get_child(parent, key)
            _set_child(parent, last, _Recorder(_get_child(parent, last), path, record, wanted))
        try:
            call(copy, x)
        except _StopForward:
            pass
        return {n: record[n] for n in requested}

    return build_model(
        name or type(module).__name__,
        apply_fn,
        state,
        input,
        layers,
        aliases=aliases,
        class_names=class_names,
        logits_layer=logits_layer,
    )
