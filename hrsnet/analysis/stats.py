"""Seeds and statistics: every claim of the report decided by a 95% Student-t interval over seeds.

A run record is duck-typed (``hrsnet.rundir.Run`` fits once it carries ``seed``): ``arch``, ``width``,
``seed``, ``status.state``, ``history`` (a DataFrame with ``rundir.HISTORY_COLUMNS``, NaN allowed) and
``test_metrics`` (``{"last": {...} | None, "best": {...} | None}`` or None).

Rules, in every table:

- Only finished runs (complete, early-stopped, diverged) count; the others are left out and counted.
- A value that is missing or not finite (a diverged run's final training loss, its last-model test
  metrics) leaves out that run for that metric only; every row gives its own n.
- Networks are compared per seed: the same seed gives every network the same split and data order,
  so differences are paired by seed (never by position) and only seeds present on both sides count.
- Intervals and tests come from scipy.stats. With fewer than 2 values the sd and interval are NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .. import rundir
from ..models import list_models
from .paper import CLAIMED_MILLIONS, parameter_table
from .tables import markdown_table, seeds_text

CONFIDENCE = 0.95
NETWORK_ORDER = tuple(list_models())
NETWORK_NAMES = {"hrnet_official": "original HRNet", "hrnet": "HRNet", "hrsnet": "HRSNet"}
# run_table's metric columns, in words.
METRICS = {
    "top1_last": "test top-1, last-epoch model",
    "top5_last": "test top-5, last-epoch model",
    "top1_best": "test top-1, best-validation model",
    "top5_best": "test top-5, best-validation model",
    "final_train_loss": "final training loss",
    "best_val_loss": "best validation loss",
    "epochs": "epochs run",
}
ACCURACY_METRICS = ("top1_last", "top5_last", "top1_best", "top5_best")
# Paired comparisons (a, b): the difference a - b per seed.
COMPARISONS = (("hrsnet", "hrnet"), ("hrnet", "hrnet_official"))
CLAIMED_PARAMETERS_M = CLAIMED_MILLIONS
PARAMETER_TOLERANCE = 0.15
MIN_SLOPE_EPOCHS = 2

RUN_COLUMNS = ["network", "C", "seed", "state", "finished", *METRICS, "run_id"]
SUMMARY_COLUMNS = [
    "network",
    "C",
    "metric",
    "n",
    "mean",
    "sd",
    "ci_low",
    "ci_high",
    "finished",
    "unfinished",
    "unfinished_states",
]
PAIRED_COLUMNS = [
    "comparison",
    "C",
    "metric",
    "n_pairs",
    "mean_difference",
    "sd",
    "ci_low",
    "ci_high",
    "p_ttest",
    "p_wilcoxon",
    "seeds",
]
CLAIM_COLUMNS = ["claim", "statistic", "value", "ci_low", "ci_high", "n", "verdict", "note", "unit"]
CURVE_COLUMNS = ["epoch", "n", "mean", "sd", "ci_low", "ci_high"]


# --- intervals and the verdict ------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """Mean, sample sd and t-interval of the finite values; n counts them."""

    n: int
    mean: float
    sd: float
    low: float
    high: float


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t interval (``scipy.stats.t.interval``) of the finite values."""
    x = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    sd = float(x.std(ddof=1))
    if sd == 0.0:  # t.interval rejects scale 0; identical values give a zero-width interval
        return Interval(int(x.size), mean, 0.0, mean, mean)
    low, high = stats.t.interval(confidence, x.size - 1, loc=mean, scale=stats.sem(x))
    return Interval(int(x.size), mean, sd, float(low), float(high))


def verdict(supported: bool, contradicted: bool, n: int | None) -> str:
    """One claim's verdict. ``n``: seeds behind the interval, None for a deterministic count.
    Fewer than 2 seeds decide nothing (no interval); otherwise the interval decides or leaves it open."""
    if supported and contradicted:
        raise ValueError("a claim cannot be both supported and contradicted")
    if n is not None and (n < 2 or not (supported or contradicted)):
        return f"not decided ({seeds_text(n)})"
    if supported:
        return "supported"
    return "contradicted" if contradicted else "not decided"


def _below(interval: Interval, bound: float = 0.0) -> bool:
    return bool(interval.high < bound)  # NaN compares False: no interval, no decision


def _above(interval: Interval, bound: float = 0.0) -> bool:
    return bool(interval.low > bound)


# --- one row per run ----------------------------------------------------------------------------


def _state(run: Any) -> str:
    return getattr(getattr(run, "status", None), "state", None) or "unknown"


def _number(value: Any) -> float:
    """A finite float, else NaN (test_metrics.json stores NaN as the string "nan")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _history(history: pd.DataFrame | None) -> pd.DataFrame:
    """A history sorted by epoch, its numbers as floats (non-finite as NaN)."""
    if history is None or len(history) == 0:
        return pd.DataFrame(columns=rundir.HISTORY_COLUMNS, dtype=float)
    history = history.copy()
    for column in history.columns:
        values = pd.to_numeric(history[column], errors="coerce").astype(float)
        history[column] = values.where(np.isfinite(values))
    return history.sort_values("epoch").reset_index(drop=True)


def _run_row(run: Any) -> dict[str, Any]:
    try:
        seed = int(run.seed)
    except (AttributeError, TypeError):
        raise AttributeError(f"run record {getattr(run, 'run_id', run)!r} has no seed") from None
    metrics = getattr(run, "test_metrics", None) or {}
    last, best = metrics.get("last") or {}, metrics.get("best") or {}
    history = _history(getattr(run, "history", None))
    train = history["train_loss"] if "train_loss" in history else pd.Series(dtype=float)
    val = history["val_loss"].dropna() if "val_loss" in history else pd.Series(dtype=float)
    state = _state(run)
    return {
        "network": run.arch,
        "C": int(run.width),
        "seed": seed,
        "state": state,
        "finished": state in rundir.FINISHED_STATES,
        "top1_last": _number(last.get("top1")),
        "top5_last": _number(last.get("top5")),
        "top1_best": _number(best.get("top1")),
        "top5_best": _number(best.get("top5")),
        # the last epoch's loss: a run that diverged has none, rather than an earlier, flattering one
        "final_train_loss": _number(train.iloc[-1]) if len(train) else math.nan,
        "best_val_loss": float(val.min()) if len(val) else math.nan,
        "epochs": len(history),
        "run_id": getattr(run, "run_id", ""),
    }


def _sorted(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Sorted by ``by``, networks in NETWORK_ORDER (others after them, by name)."""
    if frame.empty:
        return frame.reset_index(drop=True)
    others = sorted(set(frame["network"]) - set(NETWORK_ORDER))
    order = {arch: index for index, arch in enumerate([*NETWORK_ORDER, *others])}

    def key(column: pd.Series) -> pd.Series:
        return column.map(order) if column.name == "network" else column

    return frame.sort_values(by, key=key, kind="stable").reset_index(drop=True)


def run_table(runs: Iterable[Any]) -> pd.DataFrame:
    """One row per run, finished or not: network, C, seed, state, test top-1/top-5 of the last and
    best-validation model (fractions), final training loss, best validation loss, epochs run."""
    table = pd.DataFrame([_run_row(run) for run in runs], columns=RUN_COLUMNS)
    table = table.astype({"C": int, "seed": int, "finished": bool, "epochs": int})
    return _sorted(table, ["network", "C", "seed"])


def _finished(table: pd.DataFrame) -> pd.DataFrame:
    """The finished runs; a second finished run of the same network, C and seed would be counted twice."""
    finished = table.loc[table["finished"].astype(bool)]
    twice = finished[finished.duplicated(["network", "C", "seed"], keep=False)]
    if len(twice):
        first = twice.iloc[0]
        raise ValueError(
            f"{len(twice)} finished runs share network, C and seed (e.g. {first['network']} "
            f"C={first['C']} seed {first['seed']}: {', '.join(map(str, twice['run_id']))}); "
            "pass the runs of one protocol"
        )
    return finished


# --- per network and C ---------------------------------------------------------------------------


def summary_table(runs: Iterable[Any]) -> pd.DataFrame:
    """Per network, C and metric: n (finished runs with a finite value), mean, sd and 95% t-interval;
    ``finished``/``unfinished`` count the cell's runs (unfinished ones are left out)."""
    table = run_table(runs)
    _finished(table)
    rows = []
    for (network, width), cell in table.groupby(["network", "C"], sort=False):
        done = cell.loc[cell["finished"]]
        states = cell.loc[~cell["finished"], "state"].value_counts()
        unfinished = ", ".join(f"{count} {state}" for state, count in states.items())
        for metric in METRICS:
            ci = mean_ci(done[metric])
            rows.append(
                {
                    "network": network,
                    "C": width,
                    "metric": metric,
                    "n": ci.n,
                    "mean": ci.mean,
                    "sd": ci.sd,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "finished": len(done),
                    "unfinished": int(len(cell) - len(done)),
                    "unfinished_states": unfinished,
                }
            )
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary["metric_order"] = summary["metric"].map(list(METRICS).index)
    return _sorted(summary, ["network", "C", "metric_order"]).drop(columns="metric_order")


# --- paired by seed ------------------------------------------------------------------------------


def _by_seed(finished: pd.DataFrame, network: str, width: int, metric: str) -> pd.Series:
    cell = finished[(finished["network"] == network) & (finished["C"] == width)]
    return cell.set_index("seed")[metric].astype(float)


def _pairs(finished: pd.DataFrame, a: str, b: str, width: int, metric: str) -> tuple[pd.Series, pd.Series]:
    """a's and b's values at C for the seeds where both are finite, aligned by seed."""
    joined = pd.concat(
        [_by_seed(finished, a, width, metric).rename("a"), _by_seed(finished, b, width, metric).rename("b")],
        axis=1,
        join="inner",
    ).dropna()
    joined = joined.sort_index()
    return joined["a"], joined["b"]


def _comparison_name(a: str, b: str) -> str:
    return f"{NETWORK_NAMES.get(a, a)} - {NETWORK_NAMES.get(b, b)}"


def _common_widths(finished: pd.DataFrame, *networks: str) -> list[int]:
    widths = [set(finished.loc[finished["network"] == network, "C"]) for network in networks]
    return sorted(set.intersection(*widths)) if widths else []


def _p_values(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """Two-sided paired t-test and Wilcoxon signed-rank p (NaN below 2 pairs, or when every difference is 0)."""
    difference = (a - b).to_numpy()
    if len(difference) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: scipy's own NaN or inf is the answer
        p_t = float(stats.ttest_rel(a.to_numpy(), b.to_numpy()).pvalue)
    if not np.any(difference != 0):
        return p_t, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small-sample and ties notices
        try:
            p_w = float(stats.wilcoxon(difference).pvalue)
        except ValueError:
            p_w = math.nan
    return p_t, p_w


def paired_differences(runs: Iterable[Any]) -> pd.DataFrame:
    """Per C and metric, HRSNet - HRNet and HRNet - original HRNet, matched by seed: n pairs, mean
    difference, sd, 95% t-interval, two-sided ``ttest_rel`` p and ``wilcoxon`` p, and the seeds used."""
    finished = _finished(run_table(runs))
    rows = []
    for a, b in COMPARISONS:
        for width in _common_widths(finished, a, b):
            for metric in METRICS:
                left, right = _pairs(finished, a, b, width, metric)
                ci = mean_ci(left - right)
                p_t, p_w = _p_values(left, right)
                rows.append(
                    {
                        "comparison": _comparison_name(a, b),
                        "C": width,
                        "metric": metric,
                        "n_pairs": ci.n,
                        "mean_difference": ci.mean,
                        "sd": ci.sd,
                        "ci_low": ci.low,
                        "ci_high": ci.high,
                        "p_ttest": p_t,
                        "p_wilcoxon": p_w,
                        "seeds": " ".join(str(s) for s in left.index),
                    }
                )
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


# --- the report's claims -------------------------------------------------------------------------


def _seed_matrix(finished: pd.DataFrame, a: str, b: str | None, metric: str, widths: list[int]) -> pd.DataFrame:
    """seed x C of a's metric (minus b's, matched by seed), only seeds with a finite value at every C."""
    columns = {}
    for width in widths:
        values = _by_seed(finished, a, width, metric)
        if b is not None:
            values = values - _by_seed(finished, b, width, metric)  # aligns on the seed index
        columns[width] = values
    matrix = pd.DataFrame(columns, columns=widths)
    return matrix.dropna().sort_index()


def _left_out(finished: pd.DataFrame, networks: Iterable[str], widths: Iterable[int], kept: pd.Index) -> str:
    cells = finished[finished["network"].isin(list(networks)) & finished["C"].isin(list(widths))]
    dropped = sorted(set(cells["seed"]) - set(kept))
    return (
        f"; seeds left out (a run missing or without a finite value): {', '.join(map(str, dropped))}" if dropped else ""
    )


def _claim(
    claim: str, statistic: str, unit: str, interval: Interval | None, supported: bool, contradicted: bool, note: str
) -> dict[str, Any]:
    interval = interval if interval is not None else Interval(0, math.nan, math.nan, math.nan, math.nan)
    return {
        "claim": claim,
        "statistic": statistic,
        "value": interval.mean,
        "ci_low": interval.low,
        "ci_high": interval.high,
        "n": interval.n,
        "verdict": verdict(supported, contradicted, interval.n),
        "note": note,
        "unit": unit,
    }


def _widths_text(widths: Iterable[int]) -> str:
    return "{" + ", ".join(str(int(width)) for width in widths) + "}"


def _claim_lower_loss_small_c(finished: pd.DataFrame) -> dict[str, Any]:
    claim, unit = "HRSNet's training loss is lower than HRNet's, most at small C", "loss"
    widths = _common_widths(finished, "hrsnet", "hrnet")
    if not widths:
        return _claim(
            claim,
            "final training loss, HRSNet - HRNet per seed, at the smallest C",
            unit,
            None,
            False,
            False,
            "no finished runs of both HRNet and HRSNet at one C",
        )
    width = widths[0]
    differences = _seed_matrix(finished, "hrsnet", "hrnet", "final_train_loss", [width])[width]
    ci = mean_ci(differences)
    return _claim(
        claim,
        f"final training loss, HRSNet - HRNet per seed, at the smallest C (C={width})",
        unit,
        ci,
        _below(ci),
        _above(ci),
        "supported if the interval is below 0, contradicted if above"
        + _left_out(finished, ("hrsnet", "hrnet"), [width], differences.index),
    )


def _claim_gap_closes(finished: pd.DataFrame) -> dict[str, Any]:
    claim, unit = "The gap closes as C grows", "loss"
    statistic = "per seed, gap(smallest C) - gap(largest C), gap = HRNet - HRSNet final training loss"
    widths = _common_widths(finished, "hrsnet", "hrnet")
    if len(widths) < 2:
        return _claim(
            claim,
            statistic,
            unit,
            None,
            False,
            False,
            f"needs finished HRNet and HRSNet runs at two widths or more; have C in {_widths_text(widths)}",
        )
    ends = [widths[0], widths[-1]]
    gaps = _seed_matrix(finished, "hrnet", "hrsnet", "final_train_loss", ends)
    ci = mean_ci(gaps[ends[0]] - gaps[ends[1]])
    statistic = statistic.replace("smallest C", f"C={ends[0]}").replace("largest C", f"C={ends[1]}")
    return _claim(
        claim,
        statistic,
        unit,
        ci,
        _above(ci),
        _below(ci),
        "supported if the interval is above 0 (a larger gap at small C), contradicted if below"
        + _left_out(finished, ("hrsnet", "hrnet"), ends, gaps.index),
    )


def _claim_mean_over_widths(
    finished: pd.DataFrame, claim: str, a: str, b: str, metric: str, what: str, unit: str, lower_is_claimed: bool
) -> dict[str, Any]:
    """A claim decided by, per seed, the mean over the shared C of ``metric`` of ``a`` minus ``b``."""
    widths = _common_widths(finished, a, b)
    statistic = f"per seed, mean over C in {_widths_text(widths)} of {what}, {NETWORK_NAMES[a]} - {NETWORK_NAMES[b]}"
    matrix = _seed_matrix(finished, a, b, metric, widths)
    ci = mean_ci(matrix.mean(axis=1)) if widths else None
    claimed, opposite = ("below", "above") if lower_is_claimed else ("above", "below")
    note = (
        f"supported if the interval is {claimed} 0, contradicted if {opposite}; a seed counts only with every C"
        if widths
        else "no C with finished runs of both networks"
    )
    below, above = (ci is not None and _below(ci)), (ci is not None and _above(ci))
    supported, contradicted = (below, above) if lower_is_claimed else (above, below)
    return _claim(
        claim, statistic, unit, ci, supported, contradicted, note + _left_out(finished, (a, b), widths, matrix.index)
    )


def _claim_preactivation(finished: pd.DataFrame) -> dict[str, Any]:
    return _claim_mean_over_widths(
        finished,
        "The pre-activated HRNet reaches a lower training loss than the original",
        "hrnet",
        "hrnet_official",
        "final_train_loss",
        "final training loss",
        "loss",
        lower_is_claimed=True,
    )


def last_half_slopes(history: pd.DataFrame) -> tuple[float, float]:
    """Slopes per epoch (``scipy.stats.linregress``) of validation and training loss over the last half
    of the epochs where both are finite (the last ceil(k/2), at least 2); NaN with fewer than 2 such epochs."""
    rows = _history(history).dropna(subset=["epoch", "train_loss", "val_loss"])
    if len(rows) < MIN_SLOPE_EPOCHS:
        return math.nan, math.nan
    window = rows.tail(max(MIN_SLOPE_EPOCHS, math.ceil(len(rows) / 2)))
    return (
        float(stats.linregress(window["epoch"], window["val_loss"]).slope),
        float(stats.linregress(window["epoch"], window["train_loss"]).slope),
    )


def _claim_overfitting(runs: list[Any], finished: pd.DataFrame) -> dict[str, Any]:
    claim, unit = "Validation loss rises at high C (overfitting) while training loss falls", "loss per epoch"
    statistic = (
        "at the largest C, per seed, mean over the networks of the validation-loss slope "
        "(linregress over each run's last half of epochs, at least 2)"
    )
    if finished.empty:
        return _claim(claim, statistic, unit, None, False, False, "no finished runs")
    width = int(finished["C"].max())
    networks = [
        network
        for network in _sorted(finished, ["network"])["network"].unique()
        if ((finished["network"] == network) & (finished["C"] == width)).any()
    ]
    slopes = []
    for run in runs:
        if _state(run) in rundir.FINISHED_STATES and int(run.width) == width and run.arch in networks:
            val_slope, train_slope = last_half_slopes(getattr(run, "history", None))
            slopes.append({"seed": int(run.seed), "network": run.arch, "val": val_slope, "train": train_slope})
    slopes = pd.DataFrame(slopes, columns=["seed", "network", "val", "train"])
    # a seed counts only with a slope for every network, so each seed averages the same networks
    val = slopes.pivot(index="seed", columns="network", values="val").reindex(columns=networks).dropna()
    train = slopes.pivot(index="seed", columns="network", values="train").reindex(columns=networks).dropna()
    val_ci, train_ci = mean_ci(val.mean(axis=1)), mean_ci(train.mean(axis=1))
    supported = _above(val_ci) and _below(train_ci)
    statistic = statistic.replace("the largest C", f"the largest C (C={width}, {', '.join(networks)})")
    train_text = (
        f"training-loss slope {format_estimate(train_ci.mean, train_ci.low, train_ci.high, unit, True)} "
        f"over {seeds_text(train_ci.n)}"
        if train_ci.n
        else "no training-loss slope"
    )
    note = (
        f"{train_text}; supported if the validation slope's interval is above 0 and the training slope's "
        "below 0, contradicted if the validation slope's is below 0" + _left_out(finished, networks, [width], val.index)
    )
    return _claim(claim, statistic, unit, val_ci, supported, _below(val_ci), note)


def _claim_accuracy(finished: pd.DataFrame) -> dict[str, Any]:
    return _claim_mean_over_widths(
        finished,
        "HRSNet is more accurate than HRNet",
        "hrsnet",
        "hrnet",
        "top1_last",
        "test top-1 (last-epoch model)",
        "accuracy (fraction)",
        lower_is_claimed=False,
    )


def _architecture_table() -> pd.DataFrame:
    """Our parameter counts for HRNet and HRSNet at C in {2, 18, 30} (models on the meta device: no memory)."""
    return parameter_table(("hrnet", "hrsnet"))


def _claim_parameters(architecture: pd.DataFrame | None) -> dict[str, Any]:
    claim = "About 13M parameters for HRNet vs about 43M for HRSNet at the same C"
    if architecture is None:
        architecture = _architecture_table()
    counts = architecture.pivot_table(index="C", columns="network", values="parameters (M)", aggfunc="first")
    row = {
        "claim": claim,
        "statistic": "largest HRSNet / HRNet parameter ratio at the same C (claimed 43/13 = "
        f"{43 / 13:.2f}); fits if HRNet is within ±{PARAMETER_TOLERANCE:.0%} of 13M and HRSNet of 43M at one C",
        "ci_low": math.nan,
        "ci_high": math.nan,
        "n": pd.NA,
        "unit": "ratio",
    }
    if not {"hrnet", "hrsnet"} <= set(counts.columns) or counts[["hrnet", "hrsnet"]].dropna().empty:
        return {
            **row,
            "value": math.nan,
            "verdict": verdict(False, False, None),
            "note": "the architecture table has no C with both HRNet and HRSNet",
        }
    counts = counts[["hrnet", "hrsnet"]].dropna()
    ratio = counts["hrsnet"] / counts["hrnet"]
    fits = [
        int(width)
        for width in counts.index
        if all(
            abs(counts.loc[width, network] / claimed - 1) <= PARAMETER_TOLERANCE
            for network, claimed in CLAIMED_PARAMETERS_M.items()
        )
    ]
    note = (
        f"deterministic (no seeds, no interval). C in {_widths_text(counts.index)}: "
        f"HRNet {counts['hrnet'].min():.1f}M to {counts['hrnet'].max():.1f}M, "
        f"HRSNet {counts['hrsnet'].min():.1f}M to {counts['hrsnet'].max():.1f}M, "
        f"ratio {ratio.min():.2f}x to {ratio.max():.2f}x; "
        + (f"both claims fit at C={', '.join(map(str, fits))}" if fits else "no C fits both claims")
    )
    return {**row, "value": float(ratio.max()), "verdict": verdict(bool(fits), not fits, None), "note": note}


def claims_table(runs: Iterable[Any], architecture: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per claim of the report: what is computed per seed, its mean and 95% t-interval, the
    number of seeds, and the verdict (see ``verdict``). ``architecture``: ``architecture_table()``'s
    DataFrame for the parameter claim (computed for hrnet and hrsnet when None)."""
    runs = list(runs)
    finished = _finished(run_table(runs))
    rows = [
        _claim_lower_loss_small_c(finished),
        _claim_gap_closes(finished),
        _claim_preactivation(finished),
        _claim_overfitting(runs, finished),
        _claim_accuracy(finished),
        _claim_parameters(architecture),
    ]
    table = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    table["n"] = table["n"].astype("Int64")
    return table


# --- curves for the figures ----------------------------------------------------------------------


def curve_band(runs: Iterable[Any], arch: str, width: int, column: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per epoch, mean and t-interval of ``column`` over the finished runs (seeds) of ``arch`` at C=width
    that have that epoch with a finite value; n says how many (runs stop at different epochs)."""
    histories = []
    for run in runs:
        if run.arch == arch and int(run.width) == int(width) and _state(run) in rundir.FINISHED_STATES:
            history = _history(getattr(run, "history", None))
            if column in history and len(history):
                histories.append(history[["epoch", column]])
    if not histories:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    stacked = pd.concat(histories).dropna(subset=["epoch"])
    rows = []
    for epoch, group in stacked.groupby("epoch", sort=True):
        ci = mean_ci(group[column], confidence)
        rows.append(
            {"epoch": int(epoch), "n": ci.n, "mean": ci.mean, "sd": ci.sd, "ci_low": ci.low, "ci_high": ci.high}
        )
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


# --- readable tables and files ---------------------------------------------------------------------


def _significant(value: float, sign: bool = False) -> str:
    """Three significant digits, trailing zeros kept (0.910, 1.10), no bare trailing point."""
    text = f"{value:+#.3g}" if sign else f"{value:#.3g}"
    return text[:-1] if text.endswith(".") else text


def format_estimate(mean: float, low: float, high: float, unit: str, difference: bool = False) -> str:
    """ "77.7% [72.1, 83.3]" for accuracies (percentage points for differences), "0.512 [0.430, 0.594]"
    for losses, "6.0 [5.2, 6.8]" for epochs; the bracket is left out when there is no interval."""
    if not math.isfinite(mean):
        return ""
    if unit == "ratio":
        return f"{mean:.2f}x"
    if unit.startswith("accuracy"):
        text = f"{100 * mean:+.1f} pp" if difference else f"{100 * mean:.1f}%"
        bracket = f" [{100 * low:.1f}, {100 * high:.1f}]"
    elif unit == "epochs":
        text = f"{mean:+.1f}" if difference else f"{mean:.1f}"
        bracket = f" [{low:.1f}, {high:.1f}]"
    else:
        text = _significant(mean, sign=difference)
        bracket = f" [{_significant(low)}, {_significant(high)}]"
    return text + (bracket if math.isfinite(low) and math.isfinite(high) else "")


def _metric_unit(metric: str) -> str:
    return "accuracy (fraction)" if metric in ACCURACY_METRICS else "loss" if "loss" in metric else "epochs"


def _p_text(p: float) -> str:
    if not math.isfinite(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def summary_markdown(summary: pd.DataFrame) -> str:
    """summary_table as one row per network and C, each metric as mean [95% interval]."""
    rows = []
    for (network, width), cell in summary.groupby(["network", "C"], sort=False):
        first = cell.iloc[0]
        seeds = str(first["finished"]) + (f" ({first['unfinished_states']} left out)" if first["unfinished"] else "")
        row = {"network": network, "C": int(width), "seeds (finished)": seeds}
        for entry in cell.itertuples(index=False):
            text = format_estimate(entry.mean, entry.ci_low, entry.ci_high, _metric_unit(entry.metric))
            row[METRICS[entry.metric]] = text + (f" (n={entry.n})" if entry.n != first["finished"] and text else "")
        rows.append(row)
    table = markdown_table(pd.DataFrame(rows)) if rows else "(no runs)"
    return (
        "Mean [95% Student-t interval] over seeds, finished runs only (complete, early-stopped, diverged); "
        "unfinished runs are left out and counted. A metric with fewer values than seeds (a diverged run) "
        "gives its n. Standard deviations are in summary.csv.\n\n" + table + "\n"
    )


def paired_markdown(paired: pd.DataFrame) -> str:
    """paired_differences with each difference as mean [95% interval] and its p-values."""
    rows = [
        {
            "comparison": entry.comparison,
            "C": int(entry.C),
            "metric": METRICS.get(entry.metric, entry.metric),
            "pairs": int(entry.n_pairs),
            "mean difference [95% CI]": format_estimate(
                entry.mean_difference, entry.ci_low, entry.ci_high, _metric_unit(entry.metric), difference=True
            ),
            "paired t p": _p_text(entry.p_ttest),
            "Wilcoxon p": _p_text(entry.p_wilcoxon),
        }
        for entry in paired.itertuples(index=False)
    ]
    table = markdown_table(pd.DataFrame(rows)) if rows else "(no pairs: no C with finished runs of both networks)"
    return (
        "Differences matched by seed (only seeds finished on both sides, with finite values), mean "
        "[95% Student-t interval]; accuracies in percentage points. p: two-sided paired t-test and Wilcoxon "
        "signed-rank test (below 6 pairs the Wilcoxon p cannot fall under 0.05).\n\n" + table + "\n"
    )


def claims_markdown(claims: pd.DataFrame) -> str:
    """claims_table with the value as mean [95% interval]."""
    rows = [
        {
            "claim": entry.claim,
            "statistic": entry.statistic,
            "value [95% CI]": format_estimate(entry.value, entry.ci_low, entry.ci_high, entry.unit, difference=True),
            "seeds": "" if pd.isna(entry.n) else str(entry.n),
            "verdict": entry.verdict,
            "note": entry.note,
        }
        for entry in claims.itertuples(index=False)
    ]
    return (
        "Each claim decided by a per-seed statistic and its 95% Student-t interval over seeds (finished runs "
        "only; summary.md counts the runs left out): supported or contradicted only when the interval lies "
        "entirely on one side of 0; fewer than 2 seeds decide nothing.\n\n" + markdown_table(pd.DataFrame(rows)) + "\n"
    )


def write_statistics(
    runs: Iterable[Any], out_dir: str | Path, architecture: pd.DataFrame | None = None
) -> dict[str, Path]:
    """summary, paired and claims as .csv (raw numbers, accuracies as fractions) and .md (readable),
    each written atomically into ``out_dir``; returns {file name: path}."""
    runs = list(runs)
    out_dir = Path(out_dir)
    summary, paired = summary_table(runs), paired_differences(runs)
    claims = claims_table(runs, architecture)
    outputs = {
        "summary": (summary, summary_markdown(summary)),
        "paired": (paired, paired_markdown(paired)),
        "claims": (claims, claims_markdown(claims)),
    }
    paths = {}
    for name, (frame, markdown) in outputs.items():
        csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
        rundir.atomic_write(csv_path, lambda stream, frame=frame: frame.to_csv(stream, index=False))
        rundir.atomic_write(md_path, lambda stream, text=markdown: stream.write(text))
        paths[csv_path.name], paths[md_path.name] = csv_path, md_path
    return paths
