"""Default training recipe: wall time and validation accuracy (target >= 90% in
<= 5 minutes on a 2-core CPU). Run: ``python -m benchmarks.bench_training``."""

from __future__ import annotations

import tempfile

from benchmarks.common import save


def main() -> dict:
    from cnnvis_jax.train import TrainConfig, train

    config = TrainConfig()
    with tempfile.TemporaryDirectory() as run_dir:
        metrics = train(config, run_dir, progress=False, report=False)
    record = {
        "benchmark": "default training",
        "config": config.to_json(),
        "val_accuracy": metrics["val_accuracy"],
        "seconds": metrics["seconds"],
        "history": [
            {k: h[k] for k in ("epoch", "val_accuracy", "seconds")} for h in metrics["history"]
        ],
        "target": ">= 0.90 validation accuracy in <= 300 s",
    }
    save("training", record)
    return record


if __name__ == "__main__":
    main()
