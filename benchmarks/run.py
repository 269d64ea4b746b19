"""Run every benchmark and write results/*.json (figures go to RESULTS.md)."""

from __future__ import annotations

from benchmarks import bench_concepts, bench_deconv, bench_features, bench_training


def main() -> None:
    for bench in (bench_concepts, bench_features, bench_deconv, bench_training):
        print(f"== {bench.__name__}")
        bench.main()


if __name__ == "__main__":
    main()
