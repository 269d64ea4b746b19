"""Weights in and out of zoo networks, in PyTorch's state-dict layout.

Files: ``.safetensors`` and ``.npz`` are read without any code execution; a
pickle-based ``.pth``/``.pt`` file only through ``torch.load(...,
weights_only=True)`` when torch is installed, and never otherwise.

Keys and layouts. A parameter's key is its NNX path joined with dots, the last part
renamed as torch names it: ``kernel``/``scale`` -> ``weight``, ``bias`` -> ``bias``,
``mean`` -> ``running_mean``, ``var`` -> ``running_var`` (``features/0/kernel`` <->
``features.0.weight``, ``bn1/scale`` <-> ``bn1.weight``). Since the zoo networks
mirror torchvision's module tree, these are torchvision's keys. Layouts:

* convolution kernel HWIO <-> torch OIHW (``w.transpose(2, 3, 1, 0)``; grouped
  convolutions the same, ``I`` being the per-group input channels);
* Linear kernel ``(in, out)`` <-> torch ``(out, in)`` (transpose);
* the first Linear after the convolutions of a network whose class sets
  ``torch_flatten_chw = {key: (C, H, W)}`` (AlexNet ``classifier.1``, VGG
  ``classifier.0``, CaffeNet ``fc6``) also gets its input columns permuted between
  torch's (C, H, W) flatten order and this NHWC forward's (H, W, C) order;
* BatchNorm ``scale, bias, mean, var`` <-> ``weight, bias, running_mean,
  running_var``; ``num_batches_tracked`` is dropped on import and not exported.

ConceptNet has no torch counterpart: its keys are its own paths in this naming
(``conv1.weight`` OIHW, ...) and it is *native* — its ``fc6.weight`` columns follow
the (H, W, C) flatten order of its own forward, with no permutation. Keys under a
class's ``torch_ignored_prefixes`` (GoogLeNet's ``aux1.``/``aux2.``) are dropped on
import.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from cnnvis_jax.errors import WeightsError

_RENAME = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}
_TORCH_SUFFIXES = (".pth", ".pt")


# --- reading files ------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a weights file into ``{key: array}`` (keys and layouts as stored).

    ``.safetensors`` and ``.npz`` (``allow_pickle=False``) are read directly; a
    ``.pth``/``.pt`` file needs torch and is read with ``weights_only=True`` (a
    checkpoint holding the state dict under ``"state_dict"``/``"model"`` is
    unwrapped). Raises :class:`WeightsError` naming the file and the problem when it
    is missing, truncated, corrupt, unsafe or of an unknown format.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise WeightsError(f"weights file {path} {what}; check the --weights path.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix == ".npz":
        return _read_npz(path)
    if suffix in _TORCH_SUFFIXES:
        return _read_torch(path)
    raise WeightsError(
        f"weights file {path} has unknown format {suffix or '(no suffix)'!r}; use "
        ".safetensors, .npz, or .pth/.pt (read with torch)."
    )


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as e:  # safetensors raises its own error types for bad files
        raise WeightsError(
            f"weights file {path} is not a readable safetensors file "
            f"({type(e).__name__}: {e}); it may be truncated or corrupt: re-download or "
            "re-export it."
        ) from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise WeightsError(
                    f"weights file {path} holds a single array, not named arrays; save "
                    "it with np.savez(path, **state_dict)."
                )
            return {name: archive[name] for name in archive.files}
    except WeightsError:
        raise
    except Exception as e:  # zipfile, zlib, format and pickle refusals
        raise WeightsError(
            f"weights file {path} is not a readable npz archive ({type(e).__name__}: "
            f"{e}); it may be truncated or corrupt, or hold pickled objects (refused): "
            "re-export it with np.savez."
        ) from None


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise WeightsError(
            f"weights file {path} is a pickle-based PyTorch file, which cannot be read "
            "safely without torch (only torch.load(weights_only=True) restricts what "
            "unpickling may run). Install torch, or convert it once where torch is "
            'installed: python -c "from cnnvis_jax.weights import convert_to_safetensors; '
            f"convert_to_safetensors('{path}', '{path.with_suffix('.safetensors')}')\"."
        ) from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"weights file {path} could not be read by torch.load(weights_only=True) "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); it may be "
            "truncated, corrupt, or hold objects other than tensors (refused for safety)."
        ) from None
    return {k: _to_numpy(v, k, path) for k, v in _unwrap_checkpoint(obj, path).items()}


def _unwrap_checkpoint(obj: Any, path: Path) -> Mapping[str, Any]:
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(hasattr(v, "shape") for v in obj.values()):
            return obj
        if isinstance(obj, Mapping):
            inner = next(
                (obj[k] for k in ("state_dict", "model_state_dict", "model") if k in obj), None
            )
            if isinstance(inner, Mapping):
                obj = inner
                continue
        break
    found = f"keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
    raise WeightsError(
        f"weights file {path} does not hold a state dict (a mapping of names to tensors); "
        f"found {found}. Save model.state_dict() instead."
    )


def _to_numpy(value: Any, key: str, path: Path | None = None) -> np.ndarray:
    """An array from a numpy array, a torch tensor (any device, bfloat16 -> float32)."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return tensor.numpy()
    try:
        return np.asarray(value)
    except Exception as e:
        where = f" in {path}" if path else ""
        raise WeightsError(
            f"value of key {key!r}{where} is not an array ({type(value).__name__}: {e})."
        ) from None


# --- key/layout mapping ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where one torch-style key lives in an NNX module and how its layout differs."""

    path: tuple
    shape: tuple[int, ...]  # NNX shape
    torch_shape: tuple[int, ...]
    dtype: Any
    kind: str  # "kernel" (transpose) or "plain"
    flatten_chw: tuple[int, int, int] | None


def torch_key(path: tuple) -> str:
    """Torch-style key of an NNX variable path (``("features", 0, "kernel")`` -> ``features.0.weight``)."""
    *parents, leaf = (str(p) for p in path)
    return ".".join([*parents, _RENAME.get(leaf, leaf)])


def _variable_value(variable):
    getter = getattr(variable, "get_value", None)
    return getter() if getter is not None else variable.value


def _torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    if kind != "kernel" or len(shape) < 2:
        return shape
    if len(shape) == 2:
        return (shape[1], shape[0])
    return (shape[-1], shape[-2], *shape[:-2])


def _slots(module: nnx.Module) -> dict[str, _Slot]:
    """Torch key -> :class:`_Slot` for every Param and BatchStat of ``module``."""
    flatten = dict(getattr(type(module), "torch_flatten_chw", None) or {})
    state = nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))
    slots: dict[str, _Slot] = {}
    for path, variable in nnx.to_flat_state(state):
        value = _variable_value(variable)
        shape = tuple(int(d) for d in value.shape)
        kind = "kernel" if str(path[-1]) == "kernel" else "plain"
        key = torch_key(path)
        if key in slots:
            raise WeightsError(
                f"{type(module).__name__} has two variables with torch key {key!r} "
                f"({slots[key].path} and {path}); rename one of them."
            )
        prefix = key.rsplit(".", 1)[0]
        chw = tuple(flatten[prefix]) if kind == "kernel" and prefix in flatten else None
        if chw is not None and (len(shape) != 2 or int(np.prod(chw)) != shape[0]):
            raise WeightsError(
                f"{type(module).__name__}.torch_flatten_chw[{prefix!r}] = {chw} does not fit "
                f"its kernel of shape {shape}."
            )
        slots[key] = _Slot(path, shape, _torch_shape(shape, kind), value.dtype, kind, chw)
    return slots


def _to_torch_layout(array: np.ndarray, slot: _Slot) -> np.ndarray:
    if slot.kind != "kernel" or array.ndim < 2:
        return array
    if array.ndim == 2:
        weight = array.T
        if slot.flatten_chw is not None:
            c, h, w = slot.flatten_chw
            weight = weight.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(weight.shape[0], -1)
        return weight
    n = array.ndim
    return array.transpose(n - 1, n - 2, *range(n - 2))


def _to_nnx_layout(array: np.ndarray, slot: _Slot) -> np.ndarray:
    if slot.kind != "kernel" or array.ndim < 2:
        return array
    if array.ndim == 2:
        if slot.flatten_chw is not None:
            c, h, w = slot.flatten_chw
            array = array.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(array.shape[0], -1)
        return array.T
    n = array.ndim
    return array.transpose(*range(2, n), 1, 0)


# --- export -------------------------------------------------------------------------


def export_state_dict(module: nnx.Module, name: str | None = None) -> dict[str, np.ndarray]:
    """``module``'s parameters and batch statistics as a torch-style state dict.

    Keys and layouts as in the module docstring (a torchvision network loads it with
    ``load_state_dict``); values are C-contiguous numpy arrays. Exact inverse of
    :func:`load_torch_state_dict`. ``name`` (the zoo name) only labels errors; the
    layout comes from the module itself.
    """
    state = nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))
    values = {torch_key(path): _variable_value(v) for path, v in nnx.to_flat_state(state)}
    abstract = [k for k, v in values.items() if not hasattr(v, "__array__")]
    if abstract:
        raise WeightsError(
            f"{name or type(module).__name__} has abstract parameters ({abstract[0]}, ...), "
            "as made by nnx.eval_shape; export needs concrete weights (use "
            "state_dict_shapes for the keys and shapes alone)."
        )
    return {
        key: np.ascontiguousarray(_to_torch_layout(np.asarray(values[key]), slot))
        for key, slot in _slots(module).items()
    }


def state_dict_shapes(module: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Torch-style key -> torch-layout shape; works on abstract modules too."""
    return {key: slot.torch_shape for key, slot in _slots(module).items()}


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: dict[str, str]
) -> Path:
    """Write ``tensors`` (contiguous numpy arrays) and ``metadata`` as a safetensors file,
    atomically (:func:`cnnvis_jax.report.files.write_bytes`: process 0 alone in a run of
    several processes)."""
    from safetensors.numpy import save

    from cnnvis_jax.report.files import write_bytes

    return write_bytes(path, save(dict(tensors), metadata=metadata))


def save_safetensors(module: nnx.Module, name: str, path: str | os.PathLike) -> Path:
    """Write :func:`export_state_dict` of ``module`` to ``path`` (safetensors), atomically.

    The metadata records ``format = "pt"`` (torch layout) and ``cnnvis.network = name``.
    """
    metadata = {"format": "pt", "cnnvis.network": str(name)}
    return write_safetensors(path, export_state_dict(module, name), metadata)


def convert_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy any readable weights file (e.g. a ``.pth``, with torch) to safetensors, as is."""
    arrays = {k: np.ascontiguousarray(v) for k, v in read_state_dict(src).items()}
    return write_safetensors(dst, arrays, {"format": "pt"})


# --- import -------------------------------------------------------------------------


def _clean(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    arrays = {str(k): _to_numpy(v, str(k)) for k, v in state_dict.items()}
    arrays = {k: v for k, v in arrays.items() if not k.endswith("num_batches_tracked")}
    if arrays and all(k.startswith("module.") for k in arrays):  # saved from DataParallel
        arrays = {k[len("module.") :]: v for k, v in arrays.items()}
    return arrays


def _problems(slots: dict[str, _Slot], arrays: dict[str, np.ndarray], strict: bool) -> list[str]:
    lines = []
    missing = [k for k in slots if k not in arrays]
    unexpected = [k for k in arrays if k not in slots]
    if strict and missing:
        listed = ", ".join(f"{k} {slots[k].torch_shape}" for k in missing)
        lines.append(f"missing keys ({len(missing)}): {listed}")
    if strict and unexpected:
        listed = ", ".join(f"{k} {tuple(arrays[k].shape)}" for k in unexpected)
        lines.append(f"unexpected keys ({len(unexpected)}): {listed}")
    shared = [k for k in slots if k in arrays]
    bad_shape = [k for k in shared if tuple(arrays[k].shape) != slots[k].torch_shape]
    if bad_shape:
        listed = ", ".join(
            f"{k} expected {slots[k].torch_shape} got {tuple(arrays[k].shape)}" for k in bad_shape
        )
        lines.append(f"wrong shapes ({len(bad_shape)}): {listed}")
    bad_dtype = [k for k in shared if not np.issubdtype(arrays[k].dtype, np.floating)]
    if bad_dtype:
        listed = ", ".join(f"{k} {arrays[k].dtype}" for k in bad_dtype)
        lines.append(f"non-float dtypes ({len(bad_dtype)}, expected floating point): {listed}")
    if strict and slots and len(missing) == len(slots):
        lines.append("none of the model's keys is in the weights: are they for another network?")
    return lines


def _pretrained_variant(name: str) -> dict[str, Any]:
    """The variant torchvision uses with its pretrained weights of network ``name``."""
    from cnnvis_jax.zoo import googlenet

    return dict({"googlenet": googlenet.PRETRAINED_VARIANT}.get(name, {}))


# A class count no layer of a zoo network has otherwise: the keys with this dimension
# in a module built for it are the ones whose shape depends on ``num_classes``.
_PROBE_CLASSES = 9973


@functools.lru_cache(maxsize=32)
def _logits_keys(name: str, variant: tuple) -> tuple[str, ...]:
    """Keys whose shape depends on ``num_classes`` (found on one abstract module)."""
    from cnnvis_jax.zoo import registry

    init = registry.entry(name).init
    slots = _slots(
        nnx.eval_shape(lambda: init(num_classes=_PROBE_CLASSES, seed=0, **dict(variant)))
    )
    return tuple(k for k, slot in slots.items() if _PROBE_CLASSES in slot.torch_shape)


def infer_num_classes(name: str, state_dict: Mapping[str, Any], **variant) -> int | None:
    """Number of classes of zoo network ``name`` that ``state_dict`` was saved from.

    Read from the logits layer's weight (``(num_classes, in)``) or bias; ``None``
    when the network has no classifier or the key is absent.
    """
    from cnnvis_jax.zoo import registry

    e = registry.entry(name)
    if e.num_classes is None:
        return None
    for prefix in (e.logits, *e.aliases.get(e.logits, ())):  # the logits layer's own key
        shape = tuple(getattr(state_dict.get(f"{prefix}.weight"), "shape", ()))
        if len(shape) == 2:
            return int(shape[0])
    keys = _logits_keys(name, tuple(sorted(variant.items())))
    for key in sorted(keys, key=lambda k: not k.endswith("weight")):
        if key in state_dict:
            shape = tuple(getattr(state_dict[key], "shape", ()))
            if shape:
                return int(shape[0])
    return None


def load_torch_state_dict(
    module_or_name: nnx.Module | str,
    state_dict: Mapping[str, Any],
    *,
    strict: bool = True,
    name: str | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    **variant,
) -> nnx.Module:
    """Put a torch-style state dict (numpy arrays or torch tensors) into an NNX module.

    ``module_or_name``: a module (updated in place, mode unchanged; an abstract one
    from ``nnx.eval_shape`` becomes concrete when the weights cover it), or a zoo name:
    then a module is built with ``num_classes`` inferred from the logits weight
    unless given and ``variant`` over the torchvision pretrained defaults (GoogLeNet:
    ``transform_input=True``), and returned in evaluation mode (when the weights
    cover every variable, nothing is randomly initialized first). Layout conversion
    as in the module docstring; ``num_batches_tracked``, a ``module.`` prefix on
    every key, and the class's ``torch_ignored_prefixes`` are dropped. Values are
    cast to the parameter dtype.

    Raises :class:`WeightsError` listing *all* problems at once: missing and
    unexpected keys (only when ``strict``), wrong shapes (expected vs got, torch
    layout) and non-float dtypes (always).
    """
    arrays = _clean(state_dict)
    if isinstance(module_or_name, str):
        from cnnvis_jax.zoo import registry

        name = module_or_name
        registry.entry(name)  # unknown names fail here, listing the valid ones
        variant = {**_pretrained_variant(name), **variant}
        if num_classes is None:
            num_classes = infer_num_classes(name, arrays, **variant)
        module = _zoo_module(name, seed, num_classes, variant, abstract=True)
    else:
        if num_classes is not None or variant:
            raise WeightsError(
                "num_classes and variant arguments apply only when a zoo name is given; "
                "build the module with them instead."
            )
        module = module_or_name
    label = name or type(module).__name__
    ignored = tuple(getattr(type(module), "torch_ignored_prefixes", ()) or ())
    arrays = {k: v for k, v in arrays.items() if not (ignored and k.startswith(ignored))}
    slots = _slots(module)
    problems = _problems(slots, arrays, strict)
    if problems:
        raise WeightsError(
            f"weights do not fit model {label!r}:\n  "
            + "\n  ".join(problems)
            + "\nUse weights exported from the same network and variant (num_classes, "
            "options), or strict=False to skip missing and unexpected keys."
        )
    if isinstance(module_or_name, str) and not _fills(module, slots, arrays):
        module = _zoo_module(name, seed, num_classes, variant, abstract=False)
    _assign(module, slots, arrays)
    return module


def _zoo_module(name: str, seed: int, num_classes, variant, *, abstract: bool) -> nnx.Module:
    """Zoo network ``name`` in evaluation mode; shapes only when ``abstract``."""
    from cnnvis_jax.zoo import registry

    def init():
        return registry.init_module(name, seed=seed, num_classes=num_classes, **variant)

    module = nnx.eval_shape(init) if abstract else init()
    module.eval()
    return module


def _fills(module: nnx.Module, slots: dict[str, _Slot], arrays: Mapping[str, Any]) -> bool:
    """Whether ``arrays`` replace every variable of (abstract) ``module``."""
    total = len(nnx.to_flat_state(nnx.state(module)))
    return total == len(slots) and all(k in arrays for k in slots)


def _assign(module: nnx.Module, slots: dict[str, _Slot], arrays: Mapping[str, Any]) -> None:
    state = nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))
    by_path = {slot.path: (key, slot) for key, slot in slots.items()}
    chosen, values = [], []
    for path, variable in nnx.to_flat_state(state):
        key, slot = by_path[path]
        if key in arrays:
            chosen.append((path, variable))
            values.append(np.ascontiguousarray(_to_nnx_layout(np.asarray(arrays[key]), slot),
                                               slot.dtype))  # fmt: skip
    placed = jax.device_put(values)  # one transfer for all, not one dispatch per array
    updated = [(path, variable.replace(v)) for (path, variable), v in zip(chosen, placed)]
    nnx.update(module, nnx.from_flat_state(updated))


def load_model(
    name: str,
    weights_path: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    num_classes: int | None = None,
    **variant,
):
    """Zoo network ``name`` as a :class:`cnnvis_jax.Model`.

    With ``weights_path`` (safetensors, npz, or .pth with torch), the weights are
    loaded strictly and ``num_classes`` is inferred from the file's logits layer
    unless given; GoogLeNet defaults to ``transform_input=True`` as torchvision does
    for its pretrained weights (pass ``transform_input=False`` for weights trained
    without it). Without weights: random initialization from ``seed``, with a warning.
    """
    from cnnvis_jax.zoo import registry

    registry.entry(name)
    if weights_path is None:
        warnings.warn(
            f"model {name!r} has random weights: pictures of an untrained network mean "
            "little. Pass weights (--weights FILE) for a trained one.",
            stacklevel=2,
        )
        kwargs = dict(variant) if num_classes is None else {**variant, "num_classes": num_classes}
        return registry.random_model(name, seed=seed, warn=False, **kwargs)
    module = load_torch_state_dict(
        name, read_state_dict(weights_path), seed=seed, num_classes=num_classes, **variant
    )
    return registry.as_model(module, name)


__all__ = [
    "convert_to_safetensors",
    "export_state_dict",
    "infer_num_classes",
    "load_model",
    "load_torch_state_dict",
    "read_state_dict",
    "save_safetensors",
    "state_dict_shapes",
    "torch_key",
]
