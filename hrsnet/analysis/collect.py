"""Collecting a profile's runs from their directories: those found, missing, unreadable, unfinished.

The figures, the tables and the statistics read runs only through this (and hrsnet.rundir): a
run whose files are damaged or whose config.json does not describe its run id is listed with
the reason and left out, never drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import rundir
from ..config import TrainConfig, setting_names
from ..data import DATASET_LABELS
from ..profiles import Profile, load_profile, profile_runs, resolve_profile
from ..rundir import Run
from .tables import seeds_text


def load_run(run_dir: Path) -> Run | None:
    """A run directory, read back, or None if it has no config yet."""
    run = rundir.read_run(run_dir)
    return run if run.config is not None else None


@dataclass(frozen=True)
class MissingRun:
    run_id: str
    arch: str
    width: int
    seed: int = 0


@dataclass
class RunCollection:
    """The runs a profile expects (every network x C x seed): those found, and the missing ones, with
    the loaded Profile (its networks, comparisons, claims and figures drive the report)."""

    profile: Profile
    runs: list[Run]
    missing: list[MissingRun] = field(default_factory=list)  # expected, no run directory yet
    unreadable: list[tuple[MissingRun, str]] = field(default_factory=list)  # (the run, why it was left out)
    seeds: tuple[int, ...] = ()  # the seeds expected per network x C (empty: those of the runs found)

    @property
    def name(self) -> str:
        """The profile's name (figures go to ``figures/<name>/``)."""
        return self.profile.name

    @property
    def partial(self) -> list[Run]:
        return [run for run in self.runs if not run.status.finished]

    @property
    def finished(self) -> list[Run]:
        return [run for run in self.runs if run.status.finished]

    @property
    def expected_seeds(self) -> tuple[int, ...]:
        return tuple(self.seeds) or tuple(sorted({run.seed for run in self.runs}))

    @property
    def expected_count(self) -> int:
        return len(self.runs) + len(self.missing) + len(self.unreadable)

    @property
    def seeds_text(self) -> str:
        """'3 seeds', or '3 seeds, 16/18 runs finished' while some are missing or unfinished."""
        text = seeds_text(len(self.expected_seeds))
        if len(self.finished) < self.expected_count:
            text += f", {len(self.finished)}/{self.expected_count} runs finished"
        return text

    @property
    def caption(self) -> str:
        datasets = sorted({DATASET_LABELS.get(run.dataset, run.dataset) for run in self.runs}) or ["no data"]
        sizes = sorted({run.image_size for run in self.runs})
        size = f", {'/'.join(str(s) for s in sizes)}px" if sizes else ""
        return f"{', '.join(datasets)}{size}, profile '{self.name}', {self.seeds_text}"

    def widths(self) -> list[int]:
        return sorted({run.width for run in self.runs} | {missing.width for missing in self.missing})

    def runs_of(self, arch: str, width: int) -> list[Run]:
        """Every seed's run of ``arch`` at C=width that was found, by seed."""
        return sorted((run for run in self.runs if run.arch == arch and run.width == width), key=lambda r: r.seed)

    def runs_of_network(self, arch: str) -> list[Run]:
        """Every run of ``arch`` that was found, any C."""
        return [run for run in self.runs if run.arch == arch]

    def cell_seeds_text(self, arch: str, width: int) -> str:
        """'3 seeds' when every expected seed of the cell finished, else 'seeds: 2/3 finished'."""
        expected = sum(1 for run in self.runs if run.arch == arch and run.width == width) + sum(
            1
            for missing in [*self.missing, *(run for run, _ in self.unreadable)]
            if missing.arch == arch and missing.width == width
        )
        done = sum(1 for run in self.runs_of(arch, width) if run.status.finished)
        return seeds_text(done) if done == expected else f"seeds: {done}/{expected} finished"

    def describe(self) -> str:
        """What is missing or unfinished, for the notebook's output."""
        lines = [f"{len(self.runs)} run(s) found for profile '{self.name}' ({self.seeds_text})"]
        lines += [f"  missing: {missing.run_id}" for missing in self.missing]
        lines += [f"  left out, unreadable: {run.run_id} ({why})" for run, why in self.unreadable]
        lines += [f"  {run.status.state}: {run.run_id} ({run.status.reason})" for run in self.partial]
        lines += [
            f"  diverged: {run.run_id} ({run.status.reason})" for run in self.runs if run.status.state == "diverged"
        ]
        return "\n".join(lines)


def collect_runs(
    results_dir: str | Path, profile: str | Path | Profile, data_dir: str | Path | None = None, seeds: int | None = None
) -> RunCollection:
    """Load the runs of ``profile`` (a name, ``auto``, a TOML file or a Profile; ``seeds`` = N: seeds
    0..N-1) from ``results_dir/runs``."""
    spec = profile if isinstance(profile, Profile) else load_profile(resolve_profile(profile)[0])
    runs, missing, unreadable = [], [], []
    configs = profile_runs(spec, results_dir, data_dir, seeds=seeds)
    for config in configs:
        expected = MissingRun(config.run_id, config.arch, config.width, config.seed)
        try:
            run = load_run(Path(results_dir) / "runs" / config.run_id)
        except rundir.RunFileError as error:  # left out of the figures, listed with its reason
            unreadable.append((expected, str(error)))
            continue
        if run is None:
            missing.append(expected)
        elif (edited := _config_disagrees(run)) is not None:
            unreadable.append((expected, edited))
        else:
            runs.append(run)
    seed_list = tuple(sorted({config.seed for config in configs}))
    return RunCollection(spec, runs, missing, unreadable, seed_list)


def _config_disagrees(run: Run) -> str | None:
    """Why a run's config.json does not describe its run id (a hand edit), or None if it does."""
    try:
        train = {key: value for key, value in run.config["train"].items() if key in setting_names()}
        run_id = TrainConfig.from_settings(train).run_id
    except (KeyError, TypeError, ValueError) as error:
        return f"{run.run_dir / rundir.CONFIG_FILE} is not a valid run config ({error})"
    if run_id != run.run_id:
        return f"{run.run_dir / rundir.CONFIG_FILE} describes run {run_id}, not {run.run_id} (edited by hand?)"
    return None
