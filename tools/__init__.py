"""Command-line tools: ``ascend-bi`` and the benchmarks."""
