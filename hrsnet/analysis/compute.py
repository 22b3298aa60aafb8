"""What the runs cost and where they came from (NeurIPS checklist item 8; provenance), read from
each run's config.json ("environment", "resolved", "dataset") and history.csv (epoch_seconds,
val_seconds, checkpoint_seconds, images_per_second).

Every run found counts, failed and interrupted ones included (their completed epochs). Seeds trained
as one packed network share one training pass: each history records the pass's seconds, so each
seed is charged its share (the pass's seconds / the seeds packed). Time of an epoch that was
interrupted before it completed, of loading the data and of the final test is not recorded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from .stats import clean_history, network_label
from .tables import markdown_table

COST_COLUMNS = [
    "network",
    "C",
    "seed",
    "state",
    "device",
    "threads",
    "epochs",
    "train_seconds",
    "val_seconds",
    "checkpoint_seconds",
    "seconds",
    "images_per_second",
    "gpu_hours",
    "packed_seeds",
    "run_id",
]
PROVENANCE_FIELDS = {
    "git_commit": "commit",
    "git_modified": "tree modified",
    "python": "Python",
    "torch": "PyTorch",
    "numpy": "NumPy",
    "platform": "platform",
}


def _environment(run: Any) -> dict[str, Any]:
    return ((getattr(run, "config", None) or {}).get("environment")) or {}


def _resolved(run: Any) -> dict[str, Any]:
    return ((getattr(run, "config", None) or {}).get("resolved")) or {}


def device_text(environment: dict[str, Any]) -> str:
    """ "NVIDIA H100 80GB HBM3" on a GPU, "CPU (name), 4 threads" on a CPU, "" when not recorded."""
    device, name = str(environment.get("device") or ""), environment.get("device_name")
    if not device:
        return ""
    if device.startswith("cuda"):
        return str(name or device)
    threads = environment.get("cpu_threads")
    cpu = "CPU" if name in (None, "", "cpu") else f"CPU ({name})"
    return cpu + (f", {threads} thread{'' if threads == 1 else 's'}" if threads else "")


def _sum(history: pd.DataFrame, column: str) -> float:
    return float(np.nansum(history[column].to_numpy(dtype=float))) if column in history and len(history) else 0.0


def cost_table(runs: Iterable[Any]) -> pd.DataFrame:
    """One row per run: device, threads, epochs, seconds of training (its share of a packed pass),
    validation and checkpoint writes, their total, training images per second, GPU-hours on a GPU."""
    rows = []
    for run in runs:
        environment, resolved = _environment(run), _resolved(run)
        history = clean_history(getattr(run, "history", None))
        packed = max(1, int(resolved.get("packed_seeds") or 1))
        processes = max(1, int(resolved.get("processes") or 1))
        train = _sum(history, "epoch_seconds") / packed
        seen = (
            float(np.nansum((history["images_per_second"] * history["epoch_seconds"]).to_numpy(dtype=float)))
            if len(history)
            else 0.0
        )
        val, checkpoint = _sum(history, "val_seconds"), _sum(history, "checkpoint_seconds")
        seconds = train + val + checkpoint
        on_gpu = str(environment.get("device") or "").startswith("cuda")
        rows.append(
            {
                "network": run.arch,
                "C": int(run.width),
                "seed": int(run.seed),
                "state": getattr(getattr(run, "status", None), "state", ""),
                "device": device_text(environment) or "not recorded",
                "threads": environment.get("cpu_threads"),
                "epochs": len(history),
                "train_seconds": train,
                "val_seconds": val,
                "checkpoint_seconds": checkpoint,
                "seconds": seconds,
                "images_per_second": seen / train if train > 0 else math.nan,
                "gpu_hours": seconds * processes / 3600 if on_gpu else 0.0,
                "packed_seeds": packed,
                "run_id": getattr(run, "run_id", ""),
            }
        )
    return pd.DataFrame(rows, columns=COST_COLUMNS)


def _duration(seconds: float) -> str:
    """ "41 s", "12.5 min", "3.2 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def cost_summary(cost: pd.DataFrame) -> str:
    """One sentence: runs, epochs, time per device, GPU-hours, failed or unfinished runs included."""
    if cost.empty:
        return "No runs yet: nothing to cost."
    parts = []
    for device, rows in cost.groupby("device", sort=False):
        parts.append(
            f"{_duration(rows['seconds'].sum())} on {device}"
            + (f" ({len(rows)} runs)" if len(cost) > len(rows) else "")
        )
    unfinished = cost[~cost["state"].isin(["complete", "early-stopped", "diverged"])]
    gpu = cost["gpu_hours"].sum()
    text = (
        f"{len(cost)} runs, {int(cost['epochs'].sum())} epochs in all: training, validation and checkpoint writes "
        "took " + "; ".join(parts)
    )
    if gpu > 0:
        text += f"; {gpu:.2f} GPU-hours"
    if len(unfinished):
        states = unfinished["state"].value_counts()
        text += " (including " + ", ".join(f"{count} {state}" for state, count in states.items()) + " runs)"
    return text + "."


def cost_markdown(cost: pd.DataFrame) -> str:
    """The cost summary, then per network and C: runs, epochs, seconds and images per second."""
    if cost.empty:
        return cost_summary(cost) + "\n"
    cells = []
    for (network, width), rows in cost.groupby(["network", "C"], sort=False):
        cells.append(
            {
                "network": network_label(network),
                "C": int(width),
                "runs": len(rows),
                "device": ", ".join(sorted(set(rows["device"]))),
                "epochs": int(rows["epochs"].sum()),
                "training s": round(rows["train_seconds"].sum(), 1),
                "validation s": round(rows["val_seconds"].sum(), 1),
                "checkpoint s": round(rows["checkpoint_seconds"].sum(), 1),
                "images/s (training)": round(float(rows["images_per_second"].mean()), 1),
            }
        )
    packed = int(cost["packed_seeds"].max())
    note = (
        f" Seeds trained as one packed network ({packed} at most here) share one training pass; each is charged "
        "its share."
        if packed > 1
        else ""
    )
    return (
        cost_summary(cost)
        + " Read from each run's history.csv (epoch_seconds, val_seconds, checkpoint_seconds) and config.json; "
        "data loading, the final test and an epoch interrupted before it completed are not counted."
        + note
        + "\n\n"
        + markdown_table(pd.DataFrame(cells))
        + "\n"
    )


def counted(values: list[str]) -> str:
    """'a' when every run agrees, else 'a (12 runs), b (6 runs)'."""
    counts = pd.Series(values, dtype=object).value_counts(sort=True)
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{value} ({count} run{'s' if count != 1 else ''})" for value, count in counts.items())


def provenance(runs: Iterable[Any]) -> dict[str, str]:
    """Per field (commit, tree modified, versions, device and threads, platform), the runs' values,
    counted where they differ; "not recorded" where no run has it."""
    environments = [_environment(run) for run in runs]
    summary = {}
    for key, label in PROVENANCE_FIELDS.items():
        values = [environment.get(key) for environment in environments if environment.get(key) is not None]
        if key == "git_commit":
            values = [str(value)[:12] for value in values]
        if key == "git_modified":
            values = ["yes (uncommitted changes)" if value else "no" for value in values]
        summary[label] = counted([str(value) for value in values]) if values else "not recorded"
    devices = [device_text(environment) for environment in environments if device_text(environment)]
    summary["device"] = counted(devices) if devices else "not recorded"
    return summary


def reproducibility_text(runs: Iterable[Any]) -> str:
    """What a rerun reproduces, for the devices these runs used."""
    environments = [_environment(run) for run in runs]
    on_gpu = any(str(env.get("device") or "").startswith("cuda") for env in environments)
    text = (
        "**What reproduces.** A run is fixed by its settings and seed (its run id). On a CPU, the same machine "
        "with the same thread count gives the same history again, bitwise (a killed and resumed run is "
        "tested to repeat its uninterrupted history). Another CPU, another thread count or another PyTorch "
        "version rounds floats differently, and these networks amplify rounding over a run: a rerun there ends "
        "at other numbers, within the seed spread shown in this report, not on the same ones."
    )
    if on_gpu:
        text += (
            " On a GPU, cuDNN picks its algorithms at run time and some are not deterministic, so two runs of "
            "one seed differ like runs on two machines (`--deterministic` trades speed for repeatable kernels)."
        )
    return text


def provenance_markdown(runs: Iterable[Any]) -> str:
    runs = list(runs)
    lines = [f"- **{label}:** {value}" for label, value in provenance(runs).items()]
    return "\n".join(lines) + "\n\n" + reproducibility_text(runs) + "\n"
