"""The training engine: the one training step, the Trainer's epoch loop, checkpoints, CUDA
graphs, seed packing, torchrun processes and evaluation. Imports only the library below it
(models, data, runtime, config, rundir); hrsnet.runs opens, locks and launches its runs."""
