"""The experiment grids (profiles) and their runs: the one place they are defined.

run_all.sh asks ``python -m hrsnet runs --profile P`` for the list, the training notebook
rebuilds each run's TrainConfig from (profile, arch, width), and the figures notebook asks
which runs a profile expects, so missing ones can be listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .data import default_data_dir
from .models import list_models


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    cost: str
    widths: tuple[int, ...]
    settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    networks: tuple[str, ...] = tuple(list_models())
    # Every network x C trains each seed; the same seed gives every network the same split and
    # data order, so comparisons between networks are paired by seed. Seed 0 is the default
    # setting, so its run ids are those of the single-seed runs before seeds existed.
    seeds: tuple[int, ...] = (0,)

    def seed_list(self, count: int | None = None) -> tuple[int, ...]:
        """The profile's seeds, or the first ``count`` seeds (0, 1, ...) when a count is given."""
        if count is None:
            return self.seeds
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"the number of seeds must be a whole number >= 1; got {count!r}")
        return tuple(range(count))


PROFILES: dict[str, Profile] = {
    "paper": Profile(
        "paper",
        "the released notebooks' protocol: CIFAR-100 at 224x224, SGD lr 0.005 momentum 0.9, "
        "batch 16, at most 25 epochs, early stopping (patience 2); 3 networks x C in {2, 18, 30}, 3 seeds",
        "27 runs; GPU hours (see the benchmark's --estimate paper); impractical on a CPU",
        widths=(2, 18, 30),
        seeds=(0, 1, 2),
        settings=dict(dataset="cifar100", image_size=224, batch_size=16, epochs=25, patience=2),
    ),
    "quick": Profile(
        "quick",
        "a CPU-sized version: offline digits (or CIFAR-100 if its files are present) at 32x32, "
        "288 training images, batch 16, at most 3 epochs, early stopping (patience 2); "
        "3 networks x C in {2, 8}, 3 seeds",
        "18 runs, about 8 minutes on 2 CPU cores (run_all.sh --jobs 2)",
        widths=(2, 8),
        seeds=(0, 1, 2),
        # Batch 16 as in the paper: 18 steps an epoch. Fewer steps leave BatchNorm's running
        # statistics so far behind that the (eval-mode) validation loss spikes and patience 2
        # stops runs at epoch 3 before they learn (seen with 10 steps an epoch).
        # 3 epochs: the 10-minute budget on 2 CPU cores. Measured with 6 epochs: 16 min 21 s, of
        # which training steps (about 2.1 s per packed 3-seed step with two jobs, a cost
        # dominated by the fixed-width stage-1 and head convolutions) are three quarters; the
        # seed-mean validation accuracy was 42-68% after epoch 3 and 69-83% after epoch 6
        # (chance: 10%).
        settings=dict(
            dataset="digits", image_size=32, batch_size=16, epochs=3, patience=2, train_subset=288, val_subset=144
        ),
    ),
    "smoke": Profile(
        "smoke",
        "a plumbing check: digits at 32x32, 64 training images, 2 epochs; 3 networks at C=1",
        "3 runs, about a minute on 2 CPU cores",
        widths=(1,),
        settings=dict(
            dataset="digits",
            image_size=32,
            batch_size=16,
            epochs=2,
            patience=2,
            train_subset=64,
            val_subset=32,
            test_subset=64,
        ),
    ),
}
PROFILE_NAMES = (*PROFILES, "auto")


def resolve_profile(name: str) -> tuple[str, str]:
    """(profile name, why): ``auto`` is ``paper`` with a CUDA GPU, else ``quick``."""
    if name not in PROFILE_NAMES:
        raise ValueError(f"profile must be one of {', '.join(PROFILE_NAMES)}; got {name!r}")
    if name != "auto":
        return name, "asked for"
    if torch.cuda.is_available():
        return "paper", f"auto: a CUDA GPU is visible ({torch.cuda.get_device_name(0)})"
    return "quick", "auto: no CUDA GPU is visible, so the CPU-sized profile"


def cifar100_present(data_dir: str | Path | None) -> bool:
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    return all((folder / "cifar-100-python" / name).exists() for name in ("train", "test", "meta"))


def run_config(
    profile: str,
    arch: str,
    width: int,
    results_dir: str | Path = "results",
    data_dir: str | Path | None = None,
    **overrides: Any,
) -> TrainConfig:
    """The TrainConfig of one run of ``profile``; ``overrides`` (TrainConfig fields; None keeps the
    profile's value) change single settings."""
    spec = PROFILES[resolve_profile(profile)[0]]
    settings = dict(spec.settings)
    if spec.name == "quick" and cifar100_present(data_dir):
        settings["dataset"] = "cifar100"
    settings.update({key: value for key, value in overrides.items() if value is not None})
    settings.update(
        arch=arch, width=width, results_dir=str(results_dir), data_dir=str(data_dir) if data_dir is not None else None
    )
    return TrainConfig.from_settings(settings)


def profile_runs(
    profile: str,
    results_dir: str | Path = "results",
    data_dir: str | Path | None = None,
    only: str | None = None,
    seeds: int | None = None,
    **overrides: Any,
) -> list[TrainConfig]:
    """Every run of ``profile`` (networks x widths x seeds; ``seeds`` = N takes seeds 0..N-1
    instead of the profile's), optionally only those whose run id or arch is ``only``."""
    spec = PROFILES[resolve_profile(profile)[0]]
    runs = [
        run_config(spec.name, arch, width, results_dir, data_dir, **{**overrides, "seed": seed})
        for arch in spec.networks
        for width in spec.widths
        for seed in spec.seed_list(seeds)
    ]
    if only is not None:
        selected = [run for run in runs if only in (run.run_id, run.arch)]
        if not selected:
            choices = sorted({run.arch for run in runs}) + [run.run_id for run in runs]
            raise ValueError(f"--only {only!r} matches no run of profile {spec.name}; choose from {', '.join(choices)}")
        runs = selected
    return runs


def describe_profiles() -> str:
    return "\n".join(f"  {p.name:6s} {p.description} [{p.cost}]" for p in PROFILES.values())
