"""Tools the command line runs: the benchmark, time estimates and the GPU checks."""
