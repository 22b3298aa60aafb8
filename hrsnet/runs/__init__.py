"""Runs as units of work: the lock of a run, the checks before it, its lifecycle (open, train,
finish) and the launcher that picks the plain, packed or torchrun path (``fit``, ``fit_seeds``)."""

from .launch import fit, fit_seeds

__all__ = ["fit", "fit_seeds"]
