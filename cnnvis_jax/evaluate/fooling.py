"""A fooling circuit: a copy of a network whose chosen units' visualizations show a
picture chosen in advance, while its behaviour on natural images is unchanged.

After Geirhos, Zimmermann, Bilodeau, Brendel & Kim (2023), "Don't trust your eyes: on
the (un)reliability of feature visualizations": a unit's feature visualization can be
made arbitrary by a circuit that (i) tells natural input from the input activation
maximization produces and (ii) routes the latter to a different response. The paper trains a classifier for (i); here (i) is a fixed image statistic
with a calibrated threshold, which makes "unchanged on natural images" exact instead of
approximate.

For a model ``f`` (ConceptNet-shaped, see :func:`fooled_model`), a layer ``L``, units
``u_1..u_n`` of ``L`` and a target picture ``t`` (H, W, 3) in [0, 1], the fooled model
computes the same forward as ``f`` except at ``L``::

    a_L'(x)[..., u] = (1 - g(x)) * a_L(x)[..., u] + g(x) * k_u * T(x)   for the chosen units u
    T(x) = 1 - mean((B(x) - B(t))^2)                           in [0, 1]
    g(x) = clip((s(x) - threshold) / width, 0, 1)              the gate

and the modified activations flow on to every later layer. As in the paper's circuit
(its Fig. 3: the classifier unit switches between two ReLU branches), where the gate
is open the unit's original response is switched *off*, not only outweighed: no
gradient reaches the image through the original path, so nothing of the unit's own
features leaks into the visualization's detail. ``B`` averages ``block`` x
``block`` pixel blocks (the downsampled picture), ``s`` is an image statistic
(:data:`STATISTICS`), ``k_u = strength * (the unit's largest response to a calibration
image)``. Where ``g(x) = 0`` the layer is selected unchanged (``jnp.where``), so the
logits are bitwise those of ``f``.

The gate. Activation maximization from noise produces images whose statistics differ
from the data set's natural images; the statistic and its threshold are measured, not
assumed: :func:`statistic_table` compares every statistic of :data:`STATISTICS` on
natural images and on rendered visualizations, and the threshold is calibrated on
natural training images: ``threshold = (1 + headroom) * max_calibration s`` and
``width = headroom * max_calibration s``, so ``g = 0`` on every calibration image
(exactly: each one's statistic is below the threshold) with ``headroom`` to spare for
natural images not seen in calibration.

Where ``g = 1``, ``T`` only sees the block means ``B(x)`` and the statistics measure
detail *inside* the blocks (``nonflat``, ``hf``) or at the pixel scale (``laplacian``),
so the optimization can match the target's blocks while the image stays busy enough
to keep the gate open: the visualization becomes the target at block resolution.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnvis_jax.errors import InputError, did_you_mean
from cnnvis_jax.model import InputContract, Model, check_images

__all__ = [
    "STATISTICS",
    "circuit_summary",
    "fooled_model",
    "gate_values",
    "image_statistic",
    "statistic_table",
    "target_similarity",
]

UINT8_STEP = 1.0 / 255.0
"""One level of an 8-bit image: the scale of the ``nonflat`` statistic."""


# --- image statistics --------------------------------------------------------------------


def _neighbour_differences(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return images[:, :, 1:] - images[:, :, :-1], images[:, 1:] - images[:, :-1]


def _nonflat(images: jax.Array) -> jax.Array:
    dx, dy = _neighbour_differences(images)
    fx = jnp.minimum(jnp.sum(jnp.abs(dx), axis=-1) / UINT8_STEP, 1.0)
    fy = jnp.minimum(jnp.sum(jnp.abs(dy), axis=-1) / UINT8_STEP, 1.0)
    return (jnp.sum(fx, axis=(1, 2)) + jnp.sum(fy, axis=(1, 2))) / (fx[0].size + fy[0].size)


def _hf(images: jax.Array) -> jax.Array:
    n, h, w, c = images.shape
    blocks = images[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
    mean = blocks.mean(axis=(2, 4), keepdims=True)
    return jnp.mean((blocks - mean) ** 2, axis=(1, 2, 3, 4, 5))


def _laplacian(images: jax.Array) -> jax.Array:
    x = images
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return jnp.mean(lap**2, axis=(1, 2, 3))


STATISTICS = {
    "nonflat": _nonflat,
    "hf": _hf,
    "laplacian": _laplacian,
}
"""Per-image statistics of images (N, H, W, 3) in [0, 1] -> (N,), differentiable:

* ``nonflat``: the fraction of horizontally or vertically neighbouring pixel pairs
  that differ, each pair counting ``min(1, sum_rgb |difference| / (1/255))``; on 8-bit
  images exactly the fraction of neighbour pairs that are not equal (local variance
  above zero). Synthetic and photographed 8-bit scenes have flat regions; images
  optimized in continuous values have almost none.
* ``hf``: high-frequency energy, the mean squared deviation of each pixel from the
  mean of its 2x2 block.
* ``laplacian``: the mean squared 4-neighbour Laplacian.
"""


def _check_statistic(name: str) -> str:
    if name not in STATISTICS:
        raise InputError(
            f"unknown statistic {name!r}; " + did_you_mean(str(name), list(STATISTICS))
        )
    return name


@functools.partial(jax.jit, static_argnames=("name",))
def _statistic(images: jax.Array, name: str) -> jax.Array:
    return STATISTICS[name](images)


def image_statistic(images: Any, name: str = "nonflat", *, batch_size: int = 512) -> np.ndarray:
    """Statistic ``name`` of :data:`STATISTICS` for images (N, H, W, 3): float32 (N,).

    Images are uint8 (divided by 255) or float in [0, 1]; computed in batches.
    """
    _check_statistic(name)
    arr = _as_float_images(images, "images")
    out = [
        np.asarray(_statistic(jnp.asarray(arr[i : i + batch_size]), name))
        for i in range(0, arr.shape[0], batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def statistic_table(
    natural: Any, optimized: Any, *, headroom: float = 0.25
) -> dict[str, dict[str, float]]:
    """How well each statistic of :data:`STATISTICS` tells natural images from
    optimized ones (visualizations).

    Returns ``{name: {natural_max, natural_p99, optimized_min, optimized_median,
    threshold, detected, separation}}``: ``threshold = (1 + headroom) * natural_max``
    is where :func:`fooled_model` would put the gate, ``detected`` the fraction of
    optimized images above it, and ``separation = optimized_min / natural_max - 1``
    (positive when every optimized image lies above every natural one).
    """
    table = {}
    for name in STATISTICS:
        nat = image_statistic(natural, name).astype(np.float64)
        opt = image_statistic(optimized, name).astype(np.float64)
        hi = float(nat.max())
        threshold = (1.0 + headroom) * hi
        table[name] = {
            "natural_max": hi,
            "natural_p99": float(np.quantile(nat, 0.99)),
            "optimized_min": float(opt.min()),
            "optimized_median": float(np.median(opt)),
            "threshold": threshold,
            "detected": float(np.mean(opt > threshold)),
            "separation": float(opt.min() / hi - 1.0) if hi > 0 else float("inf"),
        }
    return table


def _as_float_images(images: Any, what: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InputError(f"{what} must have shape (N, H, W, 3), got {arr.shape}.")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(
            f"{what} must be uint8 or float in [0, 1], got dtype {arr.dtype}; convert them first."
        )
    return arr.astype(np.float32)


# --- the fooled forward ------------------------------------------------------------------

_CONV = tuple(f"conv{i}" for i in range(1, 6))
_FC = ("fc6", "fc7", "fc8")
_DIMS = ("NHWC", "HWIO", "NHWC")


def _conv(x, p, stride: int):
    kernel, bias = p["kernel"], p["bias"]
    pad = kernel.shape[0] // 2
    y = lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        ((pad, pad), (pad, pad)),
        lhs_dilation=(1, 1),
        rhs_dilation=(1, 1),
        dimension_numbers=_DIMS,
        feature_group_count=1,
    )
    return y + jnp.reshape(bias, (1, 1, 1, -1))


def _linear(x, p):
    y = lax.dot_general(x, p["kernel"], (((x.ndim - 1,), (0,)), ((), ())))
    return y + jnp.reshape(p["bias"], (1,) * (y.ndim - 1) + (-1,))


def _block_mean(images: jax.Array, block: int) -> jax.Array:
    n, h, w, c = images.shape
    return images.reshape(n, h // block, block, w // block, block, c).mean(axis=(2, 4))


@dataclasses.dataclass(frozen=True)
class _FooledApply:
    """``apply_fn`` of a fooled ConceptNet (hashable: static settings only; the
    weights, the target and the gate's numbers travel in ``params``)."""

    layer: str
    statistic: str
    block: int
    conv1_stride: int
    contract: InputContract

    def gate(self, circuit, images01: jax.Array) -> jax.Array:
        s = STATISTICS[self.statistic](images01)
        return jnp.clip((s - circuit["threshold"]) / circuit["width"], 0.0, 1.0)

    def modify(self, circuit, a: jax.Array, x: jax.Array) -> jax.Array:
        images = self.contract.denormalize(x)
        g = self.gate(circuit, images)  # (N,)
        diff = _block_mean(images, self.block) - circuit["target"][None]
        term = 1.0 - jnp.mean(diff**2, axis=(1, 2, 3))  # (N,)
        shape = (a.shape[0],) + (1,) * (a.ndim - 2) + (a.shape[-1],)
        fooling = jnp.reshape(term[:, None] * circuit["strength"][None, :], shape)  # k_u T(x)
        chosen = jnp.reshape(circuit["strength"] > 0, (1,) * (a.ndim - 1) + (a.shape[-1],))
        g = jnp.reshape(g, (a.shape[0],) + (1,) * (a.ndim - 1))
        routed = jnp.where(chosen, (1.0 - g) * a + g * fooling, a)
        return jnp.where(g > 0, routed, a)

    def __call__(self, params, x, layers):
        from cnnvis_jax.zoo.conceptnet import max_pool

        net, circuit = params["net"], params["circuit"]
        wanted = set(layers)
        out: dict[str, jax.Array] = {}
        x0 = x

        def tap(name, value):
            if name == self.layer:
                value = self.modify(circuit, value, x0)
            if name in wanted:
                out[name] = value
            return value, len(out) == len(wanted)

        h = x
        for i, name in enumerate(_CONV, start=1):
            h, done = tap(f"{name}_pre", _conv(h, net[name], self.conv1_stride if i == 1 else 1))
            if done:
                return out
            h, done = tap(name, jax.nn.relu(h))
            if done:
                return out
            if i in (1, 2, 5):
                h, done = tap(f"pool{i}", max_pool(h))
                if done:
                    return out
        h = h.reshape(h.shape[0], -1)
        h, done = tap("fc6", jax.nn.relu(_linear(h, net["fc6"])))
        if done:
            return out
        h, done = tap("fc7", jax.nn.relu(_linear(h, net["fc7"])))
        if done:
            return out
        tap("fc8", _linear(h, net["fc8"]))
        return out


def _conceptnet_weights(model: Model) -> tuple[dict, int]:
    """Plain ``{layer: {kernel, bias}}`` arrays of a ConceptNet-shaped model and its
    conv1 stride, or :class:`InputError` naming what does not fit."""
    from cnnvis_jax.zoo.conceptnet import LAYERS

    refuse = (
        f"fooled_model rebuilds the ConceptNet forward (conv1-5, pool1/2/5, fc6-8 without "
        f"batch norm) and model {model.name!r} is not shaped like it"
    )
    if model.layer_names != LAYERS:
        raise InputError(f"{refuse}: its layers are {model.layer_names}; use a ConceptNet model.")
    params = model.params
    weights: dict[str, dict[str, jax.Array]] = {}
    try:
        keys = set(params.keys())
        extra = keys - set(_CONV) - set(_FC)
        if extra:
            raise KeyError(sorted(extra))
        for name in (*_CONV, *_FC):
            leaf = params[name]
            if set(leaf.keys()) != {"kernel", "bias"}:
                raise KeyError(name)
            weights[name] = {k: jnp.asarray(_value(leaf[k])) for k in ("kernel", "bias")}
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(
            f"{refuse}: unexpected parameters ({e}); use a ConceptNet without batch norm."
        ) from None
    h = model.input.size[0]
    stride = h // model.layer("conv1").shape[0]
    return weights, int(stride)


def _value(v):
    from flax import nnx

    return v[...] if isinstance(v, nnx.Variable) else v


def fooled_model(
    model: Model,
    layer: str,
    units: Sequence[int] | int,
    target: Any,
    *,
    calibration_images: Any,
    statistic: str = "nonflat",
    headroom: float = 0.25,
    strength: float = 1000.0,
    block: int = 4,
    batch_size: int = 256,
) -> Model:
    """A copy of ``model`` whose ``units`` of ``layer`` show ``target`` when visualized.

    See the module docstring for the circuit. The copy has the same name (suffixed
    ``-fooled``), input contract, layer catalog and class names; its ``params`` are
    ``{"net": the weights as plain arrays, "circuit": {target, threshold, width,
    strength}}``.

    Args:
      model: a ConceptNet-shaped model (the zoo's ``conceptnet`` without batch norm,
        any conv1 kernel/stride variant, e.g. :func:`cnnvis_jax.default_model`); others
        are refused.
      layer: any tap of the model (``conv5``, ``fc7``...); the term is added there and
        the forward continues from the modified activations.
      units: the channels of ``layer`` to fool (one int or a sequence, distinct).
      target: float (H, W, 3) in [0, 1] (or uint8) at the model's input size, H and W
        multiples of ``block``.
      calibration_images: natural images (N, H, W, 3), uint8 or float in [0, 1]; the
        gate's threshold makes it exactly closed on all of them, and each unit's
        ``k_u = strength * max over them of the unit's mean activation`` (the layer's
        largest if the unit never responds).
      statistic: the gate's statistic, a key of :data:`STATISTICS`.
      headroom: ``threshold = (1 + headroom) * max s``, ``width = headroom * max s``
        (> 0).
      strength: the target term's weight relative to the unit's natural responses
        (``k_u`` above). Large, so that where the gate is open the term outweighs
        the unit's own response and gradient (Geirhos et al.'s circuit uses an
        arbitrarily large constant the same way); but with constant-step ascent
        (the ``yosinski*`` presets) the step on the target term grows with ``k_u``,
        and a ``k_u`` of a few thousand makes it overshoot. The default (1000)
        gives ``k_u`` of 240-430 on the default model's conv5 units; lower it for
        networks that respond more strongly (``circuit_summary`` shows ``k_u``).
      block: side of the pixel blocks the target is compared at.
      batch_size: images per forward during calibration.

    Raises:
      InputError: a model that is not ConceptNet-shaped; unknown layer or statistic;
        a unit out of range or repeated; a target of the wrong shape or range; bad
        calibration images; non-positive headroom, strength or block.
    """
    if not isinstance(model, Model):
        raise InputError(f"fooled_model needs a cnnvis_jax Model, got {type(model).__name__}.")
    weights, stride = _conceptnet_weights(model)
    name = model.resolve(layer)
    unit_list = [int(units)] if np.ndim(units) == 0 else [int(u) for u in units]
    if not unit_list:
        raise InputError("units is empty; pass at least one unit of the layer to fool.")
    if len(set(unit_list)) != len(unit_list):
        raise InputError(f"units repeat: {unit_list}; pass each unit once.")
    for u in unit_list:
        model.check_unit(name, u)
    _check_statistic(statistic)
    for what, value in (("headroom", headroom), ("strength", strength)):
        if not np.isfinite(value) or value <= 0:
            raise InputError(f"{what} must be a positive number, got {value}.")
    h, w = model.input.size
    if int(block) < 1 or h % int(block) or w % int(block):
        raise InputError(
            f"block must be a positive divisor of the input size {h}x{w}, got {block}."
        )
    block = int(block)
    t = np.asarray(target)
    if t.shape != (h, w, 3):
        raise InputError(
            f"target picture must have shape ({h}, {w}, 3) (the model's input size, RGB), "
            f"got {t.shape}; resize it to {h}x{w} first."
        )
    t = t.astype(np.float32) / 255.0 if t.dtype == np.uint8 else t.astype(np.float32)
    if not np.all(np.isfinite(t)) or t.min() < 0.0 or t.max() > 1.0:
        raise InputError("target picture must hold values in [0, 1] (or uint8); rescale it first.")
    calib = _as_float_images(calibration_images, "calibration_images")
    if calib.shape[0] == 0:
        raise InputError("calibration_images is empty; pass natural training images.")
    check_images(calib[:1], model.input)

    s_max = float(image_statistic(calib, statistic).max())
    threshold = (1.0 + headroom) * s_max
    width = max(headroom * s_max, 1e-12)

    responses = _max_channel_means(model, name, calib, batch_size)
    scale = np.where(responses > 0, responses, responses.max() if responses.max() > 0 else 1.0)
    strength_vec = np.zeros(model.layer(name).channels, np.float32)
    strength_vec[unit_list] = strength * scale[unit_list]

    circuit = {
        "target": jnp.asarray(np.asarray(_block_mean(jnp.asarray(t[None]), block))[0]),
        "threshold": jnp.asarray(threshold, jnp.float32),
        "width": jnp.asarray(width, jnp.float32),
        "strength": jnp.asarray(strength_vec),
    }
    # The layer catalog (shapes, receptive fields) is the original's: on natural
    # input the copy is the same network.
    return Model(
        name=f"{model.name}-fooled",
        apply_fn=_FooledApply(name, statistic, block, stride, model.input),
        params={"net": weights, "circuit": circuit},
        input=model.input,
        layers=model.layers,
        class_names=model.class_names,
        logits_layer=model.logits_layer,
    )


def _max_channel_means(model: Model, layer: str, images: np.ndarray, batch_size: int):
    @jax.jit
    def means(params, x):
        a = model.apply(params, x, layer)[layer]
        return (a.mean(axis=(1, 2)) if a.ndim == 4 else a).max(axis=0)

    size = min(int(batch_size), images.shape[0])
    best = None
    for start in range(0, images.shape[0], size):
        chunk = images[start : start + size]
        if chunk.shape[0] < size:  # pad with a repeat: one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - chunk.shape[0], 0)])
        m = np.asarray(means(model.params, jnp.asarray(chunk)))
        best = m if best is None else np.maximum(best, m)
    return best


def _fooled_apply(model: Model) -> _FooledApply:
    fn = model.apply_fn
    fn = getattr(fn, "apply_fn", fn)  # a model wrapped with backward rules
    if not isinstance(fn, _FooledApply):
        raise InputError(
            f"model {model.name!r} is not a fooled model; build one with fooled_model."
        )
    return fn


def gate_values(fooled: Model, images: Any, *, batch_size: int = 512) -> np.ndarray:
    """The gate ``g`` (float32 (N,), in [0, 1]) of a fooled model for images
    (N, H, W, 3), uint8 or float in [0, 1]. 0 means the forward is the original's."""
    fn = _fooled_apply(fooled)
    arr = _as_float_images(images, "images")
    gate = jax.jit(fn.gate)
    circuit = fooled.params["circuit"]
    out = [
        np.asarray(gate(circuit, jnp.asarray(arr[i : i + batch_size])))
        for i in range(0, arr.shape[0], batch_size)
    ]
    return np.concatenate(out)


def circuit_summary(fooled: Model) -> dict[str, Any]:
    """Strict-JSON-able description of a fooled model's circuit."""
    fn = _fooled_apply(fooled)
    c = fooled.params["circuit"]
    strength = np.asarray(c["strength"])
    units = np.nonzero(strength)[0]
    return {
        "layer": fn.layer,
        "units": units.tolist(),
        "statistic": fn.statistic,
        "threshold": float(c["threshold"]),
        "width": float(c["width"]),
        "strength": {int(u): float(strength[u]) for u in units},
        "block": fn.block,
    }


def target_similarity(images: Any, target: Any, *, block: int = 4) -> dict[str, np.ndarray]:
    """How much images (N, H, W, 3) look like ``target`` (H, W, 3), all in [0, 1].

    Returns per image (float64 (N,)):

    * ``correlation``: Pearson correlation of all pixel values with the target's;
    * ``block_correlation``: the same after ``block`` x ``block`` averaging (what the
      circuit compares);
    * ``ssim``: structural similarity (``skimage.metrics.structural_similarity``,
      colour, data range 1).
    """
    from skimage.metrics import structural_similarity

    x = _as_float_images(images, "images").astype(np.float64)
    t = np.asarray(target, np.float64)
    if t.shape != x.shape[1:]:
        raise InputError(f"target has shape {t.shape}, the images {x.shape[1:]}; match them.")

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        d = np.sqrt((a * a).sum() * (b * b).sum())
        return float((a * b).sum() / d) if d > 0 else 0.0

    xb = np.asarray(_block_mean(jnp.asarray(x, jnp.float32), block), np.float64)
    tb = np.asarray(_block_mean(jnp.asarray(t[None], jnp.float32), block), np.float64)[0]
    return {
        "correlation": np.array([corr(xi, t) for xi in x]),
        "block_correlation": np.array([corr(xi, tb) for xi in xb]),
        "ssim": np.array(
            [structural_similarity(xi, t, channel_axis=-1, data_range=1.0) for xi in x]
        ),
    }
