"""Training monitoring of the default model (Zeiler & Fergus 2014, Fig. 4).

The default ConceptNet run (``<cache>/conceptnet-default``, snapshots at epochs 1,
2, 5 and 8) is monitored with :func:`cnnvis_jax.deconv.monitor_run`: for every
layer conv1..conv5, fc6 and fc7, ``UNITS`` random units active with the final
weights, each unit's top image on the final weights (searched among the first
``--count`` validation images), and its DeconvNet projection at every snapshot.
The survey's claim to check: low layers converge within a few epochs, high layers
only late. The measured answer is each layer's projection and filter similarity
to the final epoch and the epoch from which it stays above ``THRESHOLD``.

Usage::

    python -m experiments.monitoring [--run DIR] [--out DIR2] [--count 1000]

writes ``DIR2/monitor.png`` and ``DIR2/monitor.json`` (default ``DIR2``:
``<cache>/experiments/monitoring``) and prints the summary table. The run must
exist (``cnnvis train --out DIR``, or the default model trained once by any
command using ``--model default``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnvis_jax.data import open_dataset
from cnnvis_jax.deconv import monitor_record, monitor_run
from cnnvis_jax.default import cache_dir, default_run_dir

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
UNITS = 16
THRESHOLD = 0.9
SEED = 0


def table(record: dict) -> str:
    """The summary as text: per layer the similarities by epoch and the stable epoch."""
    epochs = [str(e) for e in record["epochs"]]
    head = f"{'layer':<6} {'kind':<11}" + "".join(f"{'e' + e:>8}" for e in epochs) + "  stable"
    lines = [head]
    for row in record["summary"]:
        for kind in ("projection", "filter"):
            values = row[f"{kind}_similarity"]
            if values is None:
                continue
            cells = "".join(f"{values[e]:>8.3f}" if values[e] is not None else f"{'-':>8}"
                            for e in epochs)  # fmt: skip
            lines.append(f"{row['layer']:<6} {kind:<11}{cells}  {row[f'{kind}_stable_from']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=default_run_dir())
    parser.add_argument("--out", type=Path, default=cache_dir() / "experiments" / "monitoring")
    parser.add_argument("--count", type=int, default=1000, help="validation images searched")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    source = open_dataset("concepts", split="val", count=args.count)
    model, monitoring = monitor_run(
        args.run,
        source,
        LAYERS,
        n_units=UNITS,
        seed=SEED,
        threshold=THRESHOLD,
        progress=not args.quiet,
    )
    out = monitoring.save(args.out, model=model)
    png, record_path = out / "monitor.png", out / "monitor.json"
    print(table(monitor_record(monitoring)))
    print(f"wrote {png} and {record_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
