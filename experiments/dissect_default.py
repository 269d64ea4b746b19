"""Network Dissection of the default ConceptNet (conv1..conv5) on the concept set,
detectors per category per layer, and Net2Vec against the best single unit.

The survey's finding to compare with: colour detectors dominate low layers, object
and part detectors grow toward conv5 (Bau et al. 2017). The default model is loaded
from the cache (``cnnvis train`` / ``default_model()`` makes it).

Run: ``python -m experiments.dissect_default [--images 2000] [--out DIR]``; writes the
dissection outputs under ``DIR/dissection`` and Net2Vec's under ``DIR/net2vec``, and
prints the tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cnnvis_jax.data import ConceptSet
from cnnvis_jax.default import cache_dir
from cnnvis_jax.dissection import dissect
from cnnvis_jax.dissection.net2vec import net2vec, write_net2vec
from cnnvis_jax.dissection.outputs import write_outputs
from cnnvis_jax.train import load_trained

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="validation images to dissect")
    p.add_argument("--net2vec-train", type=int, default=2000)
    p.add_argument("--net2vec-val", type=int, default=1000)
    p.add_argument("--net2vec-layer", default="conv5")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--out", default="experiments/results/dissect_default")
    args = p.parse_args(argv)
    weights = cache_dir() / "conceptnet-default" / "weights.safetensors"
    model = load_trained(weights)
    out = Path(args.out)
    source = ConceptSet(args.images, split="val")
    start = time.perf_counter()
    result = dissect(
        model, source, LAYERS, mode="lite", checkpoint=out / "dissection" / "checkpoint"
    )
    seconds = time.perf_counter() - start
    write_outputs(out / "dissection", result, model=model, source=source)
    summary = result.summary()
    cats = result.layout.categories
    print(
        f"dissection of {args.images} images in {seconds:.0f} s ({args.images / seconds:.1f} img/s)"
    )
    print(
        f"{'layer':<7}{'units':>6}{'det':>5}{'conc':>6}  " + "  ".join(f"{c[:7]:>7}" for c in cats)
    )
    for name in LAYERS:
        s = summary[name]
        cells = "  ".join(f"{s['detectors_per_category'][c]:>3}/{s['unique'][c]:<3}" for c in cats)
        print(f"{name:<7}{s['units']:>6}{s['detectors']:>5}{s['concepts']:>6}  {cells}")
    print("(cells: detector units / unique concepts)")
    start = time.perf_counter()
    n2v = net2vec(
        model,
        ConceptSet(args.net2vec_train, split="train"),
        ConceptSet(args.net2vec_val, split="val"),
        args.net2vec_layer,
        epochs=args.epochs,
    )
    record = write_net2vec(out / "net2vec", n2v)
    print(f"Net2Vec {args.net2vec_layer} in {time.perf_counter() - start:.0f} s:")
    print(json.dumps(record["summary"], indent=2))
    top = sorted(record["segmentation"], key=lambda r: -r["net2vec_iou"])[:12]
    for r in top:
        print(f"  {r['concept']:<14} single u{r['single_unit']:<3} {r['single_iou']:.3f}  "
              f"net2vec {r['net2vec_iou']:.3f}")  # fmt: skip
    final = {"dissection": summary, "dissection_seconds": seconds, "net2vec": record["summary"]}
    (out / "findings.json").write_text(json.dumps(final, indent=2))
    return final


if __name__ == "__main__":
    main()
