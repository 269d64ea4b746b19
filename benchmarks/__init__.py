"""Speed and memory benchmarks (run: ``make bench`` or ``python -m benchmarks.run``)."""
