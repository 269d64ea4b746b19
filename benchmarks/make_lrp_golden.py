"""Golden LRP relevance maps from zennit, for the parity tests of cnnvis_jax.lrp.

Regenerate (needs torch and zennit; torchvision is not needed)::

    python benchmarks/make_lrp_golden.py            # writes tests/golden/lrp_alexnet/

The networks are torchvision's AlexNet, written out here with torchvision's module
structure and state-dict keys (``features.0`` ... ``classifier.6``), and a tiny
conv/batch-norm network; their weights come from a numpy recipe
(:func:`alexnet_state_dict`, :func:`tiny_bn_state_dict`) that the tests rerun
without torch, so no weight file is stored. The images are numpy-made too
(:func:`golden_images`). For every composite in :data:`ALEXNET_COMPOSITES` /
:data:`TINY_COMPOSITES` the relevance zennit assigns to the normalized input is
saved (NHWC; per-pixel sums for the single-rule composites, see :data:`FULL_MAPS`),
computed with the target's logit as the output relevance (``attr_output = one_hot
* output``), for the targets of :func:`golden_targets`.

zennit runs in float64 (network, input and bounds) and the maps are stored as
float32: in float32, zennit's maps on AlexNet differ from its own float64 maps by up
to 5e-3 (EpsilonPlusFlat) and 3e-2 (LRP-0, epsilon) of their maximum, the rounding
of CPU convolutions amplified by near-zero denominators, while a float32 map
rounded from float64 is exact to 6e-8. The float32 error of zennit's own maps is
printed, per composite, when the files are written.

The numpy helpers import nothing beyond numpy, so the tests can load this file by
path; torch and zennit are imported only where used.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import types
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "tests" / "golden" / "lrp_alexnet"
WEIGHT_SEED = 20240611
IMAGE_SEED = 7
IMAGE_SIZE = 224
BIAS_SCALE = 0.05
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
EPSILON_SINGLE = 0.25
"""The epsilon of the single-rule ``epsilon`` composite (large enough to matter)."""

ALEXNET_COMPOSITES = (
    "epsilon_plus_flat",
    "epsilon_gamma_box",
    "zero",
    "epsilon",
    "gamma",
    "zplus",
)
"""zennit's two main composites (its own classes, with its defaults), then one rule
at every conv and dense layer (LRP-0, epsilon = :data:`EPSILON_SINGLE`, gamma = 0.25,
z-plus) and Pass at ReLUs. The single-rule maps leave AlexNet's AdaptiveAvgPool2d
unruled: at 224 px it is the identity, which the JAX network does not compute,
and zennit's Norm there scales each relevance by ``x / (x + 1e-6)``, which LRP-0
amplifies to 2e-4 of the map's maximum (in the main composites: 2e-7)."""

FULL_MAPS = (
    "epsilon_plus_flat",
    "epsilon_gamma_box",
    *("epsilon_gamma_box_merged", "epsilon_gamma_box_pass", "epsilon_plus_flat_merged"),
)
"""Composites stored as full (N, H, W, 3) maps; the others as per-pixel sums
(N, H, W), which keeps the golden files small."""

TINY_COMPOSITES = ("epsilon_gamma_box_merged", "epsilon_gamma_box_pass", "epsilon_plus_flat_merged")
"""On the tiny batch-norm network: batch norms merged into the convolutions
(zennit's SequentialMergeBatchNorm canonizer, see :func:`merge_batch_norm_canonizer`)
or passed (no canonizer)."""

# torchvision AlexNet: (key, torch shape) of every parameter, in module order.
ALEXNET_SHAPES = (
    ("features.0", (64, 3, 11, 11)),
    ("features.3", (192, 64, 5, 5)),
    ("features.6", (384, 192, 3, 3)),
    ("features.8", (256, 384, 3, 3)),
    ("features.10", (256, 256, 3, 3)),
    ("classifier.1", (4096, 9216)),
    ("classifier.4", (4096, 4096)),
    ("classifier.6", (1000, 4096)),
)
TINY_SHAPES = (("conv1", (8, 3, 3, 3)), ("conv2", (16, 8, 3, 3)), ("fc", (10, 64)))
TINY_SIZE = 16


# --- numpy recipes (no torch) ------------------------------------------------------


def he_layers(shapes, seed: int) -> dict[str, np.ndarray]:
    """Weights ~ N(0, 2 / fan_in) (He), biases ~ N(0, BIAS_SCALE^2), float32, torch layout."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in shapes:
        fan_in = int(np.prod(shape[1:]))
        weight = rng.standard_normal(shape, dtype=np.float32) * np.float32((2.0 / fan_in) ** 0.5)
        state[f"{key}.weight"] = weight
        state[f"{key}.bias"] = rng.standard_normal(shape[0], dtype=np.float32) * np.float32(
            BIAS_SCALE
        )
    return state


def alexnet_state_dict(seed: int = WEIGHT_SEED) -> dict[str, np.ndarray]:
    """torchvision AlexNet's state dict (keys and shapes) with He-normal weights and
    small nonzero biases drawn from ``numpy.random.default_rng(seed)``."""
    return he_layers(ALEXNET_SHAPES, seed)


def tiny_bn_state_dict(seed: int = WEIGHT_SEED) -> dict[str, np.ndarray]:
    """The tiny network's state dict: He-normal conv/dense weights, small biases and
    batch norms (``bn1``, ``bn2``) with random affine parameters and statistics."""
    state = he_layers(TINY_SHAPES, seed)
    rng = np.random.default_rng(seed + 1)
    for key, channels in (("bn1", 8), ("bn2", 16)):
        state[f"{key}.weight"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
        state[f"{key}.weight"][::3] *= -1  # negative scales flip a merged kernel's signs
        state[f"{key}.bias"] = (rng.standard_normal(channels) * 0.2).astype(np.float32)
        state[f"{key}.running_mean"] = (rng.standard_normal(channels) * 0.2).astype(np.float32)
        state[f"{key}.running_var"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    return state


def golden_targets(logits: np.ndarray) -> np.ndarray:
    """One target per image: the top class of even images, the bottom class (a
    negative logit, where gamma's negative branch acts) of odd ones."""
    top, bottom = logits.argmax(axis=1), logits.argmin(axis=1)
    return np.where(np.arange(len(logits)) % 2 == 0, top, bottom).astype(np.int64)


def golden_images(count: int = 2, size: int = IMAGE_SIZE, seed: int = IMAGE_SEED) -> np.ndarray:
    """``count`` smooth random RGB images in [0, 1], (N, size, size, 3) float32: a
    coarse random grid upsampled 8x plus fine noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.0, 1.0, (count, size // 8, size // 8, 3))
    smooth = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    noise = rng.normal(0.0, 0.05, (count, size, size, 3))
    return np.clip(smooth + noise, 0.0, 1.0).astype(np.float32)


def normalize(images: np.ndarray) -> np.ndarray:
    """torchvision's preprocessing of [0, 1] RGB NHWC images."""
    return (images - MEAN) / STD


def input_bounds() -> tuple[np.ndarray, np.ndarray]:
    """(low, high): the normalized images of 0 and 1 per channel (z-box bounds)."""
    return (0.0 - MEAN) / STD, (1.0 - MEAN) / STD


# --- torch networks and zennit ------------------------------------------------------


def _import_zennit():
    """zennit, importable without torchvision: zennit's torchvision canonizers import
    two ResNet block classes, which these networks never contain, so stand-ins serve
    while zennit is imported (and are removed again from ``sys.modules``)."""
    stand_ins = {}
    try:
        import torchvision  # noqa: F401
    except Exception:
        vision = types.ModuleType("torchvision")
        models = types.ModuleType("torchvision.models")
        resnet = types.ModuleType("torchvision.models.resnet")
        resnet.Bottleneck = type("Bottleneck", (), {})
        resnet.BasicBlock = type("BasicBlock", (), {})
        vision.models, models.resnet = models, resnet
        stand_ins = {
            "torchvision": vision,
            "torchvision.models": models,
            "torchvision.models.resnet": resnet,
        }
        sys.modules.update(stand_ins)
    try:
        import zennit.canonizers
        import zennit.composites
        import zennit.core
        import zennit.rules
        import zennit.types
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return zennit


def torch_alexnet(state: dict[str, np.ndarray]):
    """torchvision's AlexNet (same modules, same keys) with ``state`` loaded, in eval
    mode: the torchvision stand-in of ``benchmarks/peers/netdissect_lite.py``
    (``TORCHVISION_MODELS``), the one torch definition the benchmarks share."""
    import importlib.util

    import torch

    path = Path(__file__).resolve().parent / "peers" / "netdissect_lite.py"
    spec = importlib.util.spec_from_file_location("netdissect_lite_peer", path)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    namespace: dict = {}
    exec(compile(peer.TORCHVISION_MODELS, str(path), "exec"), namespace)  # noqa: S102
    net = namespace["alexnet"]()
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    return net.eval()


def torch_tiny_bn(state: dict[str, np.ndarray]):
    """conv1-bn1-ReLU-maxpool-conv2-bn2-ReLU-avgpool(2)-flatten-fc, 16x16 input."""
    import torch
    from torch import nn

    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(3, 8, 3, padding=1))
    net.add_module("bn1", nn.BatchNorm2d(8))
    net.add_module("relu1", nn.ReLU())
    net.add_module("pool1", nn.MaxPool2d(2))
    net.add_module("conv2", nn.Conv2d(8, 16, 3, padding=1))
    net.add_module("bn2", nn.BatchNorm2d(16))
    net.add_module("relu2", nn.ReLU())
    net.add_module("pool2", nn.AdaptiveAvgPool2d(2))
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc", nn.Linear(64, 10))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    net.load_state_dict(tensors, strict=False)  # num_batches_tracked keeps its default
    return net.eval()


def merge_batch_norm_canonizer():
    """zennit's SequentialMergeBatchNorm, with the merged batch norm's ``eps`` set to 0
    while merged, as zennit's current source does: the release 0.5.1 keeps ``eps``, so
    its merged network divides by ``sqrt(1 + eps)`` at each batch norm (2e-5 of the
    tiny network's maps) instead of computing the original network."""
    zennit = _import_zennit()

    class ExactMergeBatchNorm(zennit.canonizers.SequentialMergeBatchNorm):
        def register(self, linears, batch_norm):
            super().register(linears, batch_norm)
            self.original_eps = batch_norm.eps
            batch_norm.eps = 0.0

        def remove(self):
            super().remove()
            self.batch_norm.eps = self.original_eps

    return ExactMergeBatchNorm()


def zennit_composite(name: str, dtype=None):
    """The zennit composite for one entry of ALEXNET_COMPOSITES / TINY_COMPOSITES
    (z-box bounds in ``dtype``, default float32)."""
    import torch

    zennit = _import_zennit()
    composites, rules = zennit.composites, zennit.rules
    dtype = dtype or torch.float32
    low, high = (torch.tensor(b, dtype=dtype).reshape(1, 3, 1, 1) for b in input_bounds())
    merge = [merge_batch_norm_canonizer()]
    if name in ("epsilon_plus_flat", "epsilon_plus_flat_merged"):
        return composites.EpsilonPlusFlat(canonizers=merge if name.endswith("merged") else None)
    if name.startswith("epsilon_gamma_box"):
        canonizers = merge if name.endswith("merged") else None
        return composites.EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    single = {
        "zero": rules.Epsilon(epsilon=0.0),
        "epsilon": rules.Epsilon(epsilon=EPSILON_SINGLE),
        "gamma": rules.Gamma(gamma=0.25),
        "zplus": rules.ZPlus(),
    }[name]
    layer_map = [
        (zennit.types.Activation, rules.Pass()),
        (zennit.types.Convolution, single),
        (torch.nn.Linear, single),
    ]
    return composites.LayerMapComposite(layer_map)


def zennit_relevance(
    net, images: np.ndarray, targets: np.ndarray, name: str, *, double: bool = True
) -> np.ndarray:
    """zennit's relevance (N, H, W, 3) at the normalized input of ``net`` for the
    [0, 1] RGB ``images``, starting from the target logits; computed in float64
    (``double``, the network is converted in place) or float32, returned as float32."""
    import torch

    dtype = torch.float64 if double else torch.float32
    net.to(dtype)
    x = torch.from_numpy(np.ascontiguousarray(normalize(images).transpose(0, 3, 1, 2)))
    with zennit_composite(name, dtype).context(net) as modified:
        x = x.to(dtype).requires_grad_(True)
        out = modified(x)
        seed = torch.nn.functional.one_hot(torch.from_numpy(targets).long(), out.shape[1])
        (grad,) = torch.autograd.grad(out, x, grad_outputs=seed.to(dtype) * out.detach())
    return grad.numpy().transpose(0, 2, 3, 1).astype(np.float32)


def float32_error(net, images, targets, name: str, reference: np.ndarray) -> float:
    """max |zennit float32 - reference| / max |reference| (reference: float64 maps)."""
    maps = zennit_relevance(net, images, targets, name, double=False)
    return float(np.abs(maps - reference).max() / np.abs(reference).max())


def torch_logits(net, images: np.ndarray) -> np.ndarray:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(normalize(images).transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return net(x).numpy()


def make(out_dir: Path = GOLDEN_DIR) -> dict[str, Path]:
    """Compute and write ``alexnet.npz`` and ``tiny_bn.npz`` to ``out_dir``."""
    import torch

    _import_zennit()
    torch.manual_seed(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": np.array(torch.__version__),
        "zennit": np.array(importlib.metadata.version("zennit")),
        "weight_seed": np.array(WEIGHT_SEED),
        "image_seed": np.array(IMAGE_SEED),
    }
    written = {}
    jobs = (
        ("alexnet", torch_alexnet(alexnet_state_dict()), golden_images(), ALEXNET_COMPOSITES),
        (
            "tiny_bn",
            torch_tiny_bn(tiny_bn_state_dict()),
            golden_images(2, TINY_SIZE),
            TINY_COMPOSITES,
        ),
    )
    for label, net, images, names in jobs:
        logits = torch_logits(net.float(), images)
        targets = golden_targets(logits)
        arrays = {}
        for name in names:
            maps = zennit_relevance(net, images, targets, name)
            error = float32_error(net, images, targets, name, maps)
            print(f"{label} {name}: zennit float32 vs float64, max error / max |R| = {error:.1e}")
            arrays[name] = maps if name in FULL_MAPS else maps.sum(axis=-1)
        path = out_dir / f"{label}.npz"
        np.savez_compressed(
            path, targets=targets, logits=logits.astype(np.float32), **arrays, **meta
        )
        written[label] = path
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): targets {targets.tolist()}")
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR, help="output folder")
    make(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
