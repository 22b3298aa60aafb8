"""Tools the command line runs: the benchmark, time estimates, the GPU checks and the docs' generated tables."""
