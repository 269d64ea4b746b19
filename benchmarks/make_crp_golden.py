"""Golden concept relevance maps from zennit-crp, for the parity test of cnnvis_jax.crp.

Regenerate (needs torch, zennit and zennit-crp; torchvision is not needed)::

    python benchmarks/make_crp_golden.py      # writes tests/golden/lrp_alexnet/crp_conv5.npz

The network, its weights and the images are those of ``make_lrp_golden.py``
(torchvision's AlexNet written out, a numpy weight recipe). zennit-crp's
``CondAttribution`` with zennit's ``EpsilonPlusFlat`` explains each image's predicted
class (initial relevance: the class's logit, zennit-crp's default) conditioned on
single channels of ``features.10`` (conv5); the heatmaps (``attr.heatmap``: the input
relevance summed over colour channels) and the relevance recorded at ``features.10``
summed over positions are saved as float32, computed in float64.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_lrp_golden as recipe  # noqa: E402

LAYER = "features.10"
CONCEPTS = (0, 17, 101, 200)
"""conv5 channels whose conditional heatmaps are stored (fixed before any run)."""

OUT = recipe.GOLDEN_DIR / "crp_conv5.npz"


def import_crp():
    """zennit and zennit-crp's ``CondAttribution``, imported with the torchvision
    stand-ins of ``make_lrp_golden`` (zennit imports torchvision at load)."""
    zennit = recipe._import_zennit()
    from crp.attribution import CondAttribution

    return zennit, CondAttribution


def crp_maps(net, images: np.ndarray, targets: np.ndarray, *, double: bool = True):
    """(heatmaps (N, K, H, W), channel relevance at conv5 (N, C)) from zennit-crp."""
    import torch

    zennit, CondAttribution = import_crp()
    dtype = torch.float64 if double else torch.float32
    net.to(dtype)
    attribution = CondAttribution(net)
    composite = zennit.composites.EpsilonPlusFlat()
    x = torch.from_numpy(np.ascontiguousarray(recipe.normalize(images).transpose(0, 3, 1, 2)))
    heatmaps, channels = [], []
    for i in range(len(images)):
        sample = x[i : i + 1].to(dtype).requires_grad_(True)
        conditions = [{LAYER: [c], "y": [int(targets[i])]} for c in CONCEPTS]
        attr = attribution(sample, conditions, composite, record_layer=[LAYER])
        heatmaps.append(attr.heatmap.detach().numpy())
        full = attribution(sample, [{"y": [int(targets[i])]}], composite, record_layer=[LAYER])
        channels.append(full.relevances[LAYER].detach().sum(dim=(2, 3)).numpy()[0])
    return np.stack(heatmaps).astype(np.float32), np.stack(channels).astype(np.float32)


def make(out: Path = OUT) -> Path:
    import torch

    net = recipe.torch_alexnet(recipe.alexnet_state_dict())
    images = recipe.golden_images()
    targets = recipe.torch_logits(net.float(), images).argmax(axis=1)
    heatmaps, channels = crp_maps(net, images, targets)
    np.savez_compressed(
        out,
        targets=targets,
        concepts=np.asarray(CONCEPTS),
        heatmaps=heatmaps,
        channel_relevance=channels,
        torch=np.array(torch.__version__),
        zennit=np.array(importlib.metadata.version("zennit")),
        zennit_crp=np.array(importlib.metadata.version("zennit-crp")),
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): targets {targets.tolist()}")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output file")
    make(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
