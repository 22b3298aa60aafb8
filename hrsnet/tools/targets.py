"""The performance targets, read off the files scripts/gpu_session.sh leaves in its output folder.

``python -m hrsnet bench --targets FOLDER`` prints each target with the measured number, what it
must reach and the verdict (met, missed, or not measured: with why), then what the other files
say (the CUDA tests, gpucheck's failures, the loop, memory), as a Markdown table to paste.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bench import PLAIN, TIMM_PEER, read_bench_csv

# The files the script leaves (at most 8, no folders), by what they hold.
FILES = {
    "versions": "versions.txt",
    "pytest": "pytest_cuda.txt",
    "gpucheck": "gpucheck.csv",
    "loop": "loop.csv",
    "bench": "targets.csv",
    "estimate": "estimate.csv",
    "memory": "memory.csv",
    "log": "run.log",
}
# hrsnet.engine.cudagraphs.GRAPHS_WIN_MEASURED becomes True when loop.csv's `graphs` row runs at
# least this many times the `eager` row's images/s on its timed epoch (a 10% margin: one
# measurement, so a smaller gain could be noise).
GRAPHS_WIN_SPEEDUP = 1.10


@dataclass(frozen=True)
class Target:
    name: str
    what: str
    at_least: float | None = None
    at_most: float | None = None

    def verdict(self, value: float) -> str:
        if not math.isfinite(value):
            return "not measured"
        ok = (self.at_least is None or value >= self.at_least) and (self.at_most is None or value <= self.at_most)
        return "met" if ok else "missed"

    @property
    def required(self) -> str:
        return f">= {self.at_least:g}" if self.at_least is not None else f"<= {self.at_most:g}"


TARGETS = {
    "batch16_vs_plain": Target("batch16_vs_plain", "batch 16: our fastest path / our plain fp32 path", at_least=3),
    "batch16_vs_timm": Target("batch16_vs_timm", "batch 16: our fastest path / timm AMP + channels_last", at_least=2),
    "batch128_vs_timm": Target(
        "batch128_vs_timm", "batch 128: hrnet_official C=18 fastest / timm AMP + channels_last", at_least=1.5
    ),
    "c30_flop_utilisation": Target(
        "c30_flop_utilisation", "C=30 at batch 128: achieved / bf16 peak TFLOP/s", at_least=0.15
    ),
    "paper_profile_minutes": Target(
        "paper_profile_minutes", "every run of the profile estimated (paper), at the epoch limit (minutes)", at_most=60
    ),
}


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as stream:
        return [row for row in csv.DictReader(stream) if None not in row.values()]


def _peer_ratio(rows, setting: str) -> tuple[float, float, str]:
    """(fastest of ours / plain, fastest of ours / timm, detail) of the peer rows at ``setting``."""
    peer = [row for row in rows if row["group"] == "peer" and row["setting"] == setting]
    ours = [row for row in peer if row["model"] != TIMM_PEER and row["variant"] != PLAIN.name]
    plain = [row for row in peer if row["variant"] == PLAIN.name]
    timm = [row for row in peer if row["model"] == TIMM_PEER]
    if not ours:
        return math.nan, math.nan, f"no peer rows at setting {setting} in {FILES['bench']}"
    best = max(ours, key=lambda row: float(row["train_images_per_second"]))
    rate = float(best["train_images_per_second"])
    detail = f"{best['variant']} {rate:.0f} img/s at batch {best['batch_size']}"
    vs_plain = rate / float(plain[0]["train_images_per_second"]) if plain else math.nan
    vs_timm = rate / float(timm[0]["train_images_per_second"]) if timm else math.nan
    if plain:
        detail += f"; plain {float(plain[0]['train_images_per_second']):.0f}"
    if timm:
        detail += f"; timm {float(timm[0]['train_images_per_second']):.0f}"
    return vs_plain, vs_timm, detail


def read_targets(folder: str | Path) -> list[dict[str, Any]]:
    """One row per target (several for the C=30 utilisation: one per network measured): name,
    what, measured value, required, verdict, detail."""
    folder = Path(folder)
    rows: list[dict[str, Any]] = []

    def add(key: str, value: float, detail: str, what: str | None = None) -> None:
        target = TARGETS[key]
        rows.append(
            {
                "target": key,
                "what": what or target.what,
                "measured": value,
                "required": target.required,
                "verdict": target.verdict(value),
                "detail": detail,
            }
        )

    bench_path = folder / FILES["bench"]
    bench = read_bench_csv(bench_path) if bench_path.exists() else []
    vs_plain, vs_timm, detail = _peer_ratio(bench, "paper")
    add("batch16_vs_plain", vs_plain, detail)
    add("batch16_vs_timm", vs_timm, detail)
    add("batch128_vs_timm", _peer_ratio(bench, "throughput")[1], _peer_ratio(bench, "throughput")[2])
    # The grid's rows at the throughput setting with a peak: C=30 on a GPU (the widest C measured).
    c30 = [
        row
        for row in bench
        if row["group"] == "grid" and row["setting"] == "throughput" and math.isfinite(float(row["flop_utilisation"]))
    ]
    for model, width in sorted({(row["model"], int(row["width"])) for row in c30}):
        cell = [row for row in c30 if (row["model"], int(row["width"])) == (model, width)]
        best = max(cell, key=lambda row: float(row["flop_utilisation"]))
        add(
            "c30_flop_utilisation",
            float(best["flop_utilisation"]),
            f"{float(best['achieved_tflops']):.3g} of {float(best['peak_tflops']):g} TFLOP/s, {best['variant']}, "
            f"batch {best['batch_size']}",
            what=f"{model} C={width} at batch 128: achieved / bf16 peak TFLOP/s",
        )
    if not c30:
        add("c30_flop_utilisation", math.nan, f"no C=30 throughput row with a peak in {FILES['bench']}")
    estimate = _read_csv(folder / FILES["estimate"])
    minutes = [float(row["run_minutes"]) for row in estimate]
    complete = bool(estimate) and all(math.isfinite(value) for value in minutes)
    released = sum(float(row["minutes_released"]) for row in estimate) if complete else math.nan
    add(
        "paper_profile_minutes",
        sum(minutes) if complete else math.nan,
        f"{len(estimate)} runs; {released:.0f} minutes at the authors' epoch counts"
        if complete
        else f"{sum(math.isfinite(v) for v in minutes)} of {len(estimate)} runs estimated in {FILES['estimate']}",
    )
    return rows


def graphs_decision(folder: str | Path) -> str:
    """What loop.csv says about GRAPHS_WIN_MEASURED."""
    loop = {row["setting"]: row for row in _read_csv(Path(folder) / FILES["loop"])}
    if "graphs" not in loop or "eager" not in loop:
        return f"GRAPHS_WIN_MEASURED: undecided ({FILES['loop']} lacks the eager or the graphs row)"
    ratio = float(loop["graphs"]["images_per_second"]) / float(loop["eager"]["images_per_second"])
    epoch = loop["graphs"].get("timed_epochs", "?")
    decided = ratio >= GRAPHS_WIN_SPEEDUP
    return (
        f"GRAPHS_WIN_MEASURED = {decided}: graphs run {ratio:.2f}x eager in the real loop (epoch {epoch}; "
        f"needs >= {GRAPHS_WIN_SPEEDUP:g}x)"
    )


def other_findings(folder: str | Path) -> list[str]:
    """One line each: the CUDA tests' result, gpucheck's and memory.csv's failures, the loop."""
    folder = Path(folder)
    lines = []
    pytest_text = folder / FILES["pytest"]
    if pytest_text.exists():
        last = [line for line in pytest_text.read_text().splitlines() if line.strip()]
        lines.append(f"CUDA tests: {last[-1] if last else '(empty)'}")
    else:
        lines.append(f"CUDA tests: {FILES['pytest']} missing")
    for key in ("gpucheck", "memory"):
        checks = _read_csv(folder / FILES[key])
        if not checks:
            lines.append(f"{FILES[key]}: missing or empty")
            continue
        failed = sorted({f"{row['check']} / {row['case']}" for row in checks if row["status"] == "fail"})
        passed = len({(row["check"], row["case"]) for row in checks if row["status"] == "pass"})
        lines.append(
            f"{FILES[key]}: {passed} cases passed, " + (f"FAILED: {'; '.join(failed)}" if failed else "none failed")
        )
        for row in checks:
            if row["metric"] == "peak_gib":
                lines.append(f"  peak memory {row['case']}: {float(row['value']):.2f} GiB")
    for row in _read_csv(folder / FILES["loop"]):
        lines.append(
            f"loop {row['setting']}: {float(row['images_per_second']):.0f} img/s, x{float(row['speedup']):.2f} "
            f"(epoch {row.get('timed_epochs', '?')}; epoch 1 took {float(row.get('first_epoch_seconds', 'nan')):.1f} s)"
        )
    lines.append(graphs_decision(folder))
    return lines


def format_targets(folder: str | Path) -> str:
    """The targets as a Markdown table, then the other findings."""
    rows = read_targets(folder)
    table = ["| target | measured | required | verdict | detail |", "|---|---|---|---|---|"]
    for row in rows:
        value = f"{row['measured']:.3g}" if math.isfinite(row["measured"]) else "-"
        table.append(f"| {row['what']} | {value} | {row['required']} | {row['verdict']} | {row['detail']} |")
    return "\n".join(table + [""] + other_findings(folder))
