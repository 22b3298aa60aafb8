"""Statistics over seeds: intervals that stay in their metric's range, paired differences, the
probability of improvement, the seeds a comparison would need, and Holm's correction.

A run record is duck-typed (``hrsnet.rundir.Run`` fits): ``arch``, ``width``, ``seed``,
``status.state``, ``history`` (a DataFrame with ``rundir.HISTORY_COLUMNS``, NaN allowed) and
``test_metrics`` (``{"last": {...} | None, "best": {...} | None}`` or None). No network is named
here: which networks are compared comes from the profile (``hrsnet.profiles.Profile``).

Rules, in every table:

- Only finished runs (complete, early-stopped, diverged) count; the others are left out and counted.
- A value that is missing or not finite (a diverged run's final training loss, its last-model test
  metrics) leaves out that run for that metric only; every row gives its own n.
- Networks are compared per seed: the same seed gives every network the same split and data order,
  so differences are paired by seed (never by position) and only seeds present on both sides count.

Intervals (95%, all from scipy.stats), see ``INTERVAL_METHODS``:

- accuracies (fractions in [0, 1]): Student-t interval of the logits, mapped back (values of exactly
  0 or 1 count as 0.001 or 0.999), so the interval stays within [0, 1];
- losses (positive): Student-t interval of the logarithms, mapped back, so it stays above 0;
- epochs run: the smallest and largest value;
- differences (paired by seed) and slopes: the plain Student-t interval of the per-seed values.

The point estimate is always the arithmetic mean over seeds. With fewer than 2 values there is no
interval.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from .. import rundir
from ..models import PRESETS, list_models
from .tables import markdown_table, seeds_text

CONFIDENCE = 0.95
LOGIT_MARGIN = 1e-3  # an accuracy of exactly 0 or 1 enters the logit as 0.001 or 0.999
IMPROVEMENT_THRESHOLD = 0.75  # P(A better) that counts as "A is better in most seeds" (Bouthillier et al. 2021)
POWER, ALPHA = 0.8, 0.05
MAX_SEEDS = 100  # the power analysis says "more than 100" beyond this
NO_EFFECT = 0.05  # an observed effect below 0.05 standard deviations: nothing to detect

INTERVAL_METHODS = {
    "logit": "Student-t interval of the logits, mapped back to [0, 1] (0 and 1 count as 0.001 and 0.999)",
    "log": "Student-t interval of the logarithms, mapped back (stays above 0)",
    "linear": "Student-t interval",
    "range": "smallest to largest value",
}


@dataclass(frozen=True)
class Metric:
    """One number per run: what it is called, its kind (``accuracy``: a fraction in [0, 1];
    ``loss``: positive; ``count``) and which way is better."""

    label: str
    kind: str
    higher_is_better: bool

    @property
    def scale(self) -> str:
        """How its interval over seeds is computed (INTERVAL_METHODS)."""
        return {"accuracy": "logit", "loss": "log", "count": "range"}[self.kind]

    @property
    def unit(self) -> str:
        return {"accuracy": "accuracy (fraction)", "loss": "loss", "count": "epochs"}[self.kind]


# run_table's metric columns. The final training loss is the one the released notebooks printed
# and plotted (history.csv's train_loss_tail; released_training_loss), the epoch mean beside it.
METRICS = {
    "top1_last": Metric("test top-1, last-epoch model", "accuracy", True),
    "top5_last": Metric("test top-5, last-epoch model", "accuracy", True),
    "top1_best": Metric("test top-1, best-validation model", "accuracy", True),
    "top5_best": Metric("test top-5, best-validation model", "accuracy", True),
    "final_train_loss": Metric("final training loss (as the released notebooks measured it)", "loss", False),
    "final_train_loss_mean": Metric("final training loss, epoch mean", "loss", False),
    "best_val_loss": Metric("best validation loss", "loss", False),
    "epochs": Metric("epochs run", "count", True),
}
ACCURACY_METRICS = tuple(name for name, metric in METRICS.items() if metric.kind == "accuracy")
# What the best-validation model's metrics repeat when it is the last epoch's model.
BEST_OF_LAST = {"top1_best": "top1_last", "top5_best": "top5_last"}

RUN_COLUMNS = ["network", "C", "seed", "state", "finished", *METRICS, "best_epoch", "run_id"]
SUMMARY_COLUMNS = [
    "network",
    "C",
    "metric",
    "n",
    "mean",
    "sd",
    "ci_low",
    "ci_high",
    "interval",
    "finished",
    "unfinished",
    "unfinished_states",
]
PAIRED_COLUMNS = [
    "comparison",
    "a",
    "b",
    "C",
    "metric",
    "n_pairs",
    "mean_difference",
    "sd",
    "ci_low",
    "ci_high",
    "p_ttest",
    "p_holm",
    "p_wilcoxon",
    "seeds",
]
CURVE_COLUMNS = ["epoch", "n", "mean", "sd", "ci_low", "ci_high"]


def network_label(name: str) -> str:
    """The network's label for readers (``hrsnet.models.PRESETS[name].label``), else its name."""
    preset = PRESETS.get(name)
    return preset.label if preset is not None else name


# --- intervals and the verdict ------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """Mean, sample sd and interval of the finite values; n counts them; ``method`` says how the
    interval was computed (INTERVAL_METHODS)."""

    n: int
    mean: float
    sd: float
    low: float
    high: float
    method: str = "linear"


def _finite_values(values: Iterable[float]) -> np.ndarray:
    x = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)
    return x[np.isfinite(x)]


def _t_interval(y: np.ndarray, confidence: float) -> tuple[float, float]:
    """Student-t interval (``scipy.stats.t.interval``) of the mean of ``y`` (at least 2 values)."""
    center = float(y.mean())
    if float(y.std(ddof=1)) == 0.0:  # t.interval rejects scale 0; identical values give a zero-width interval
        return center, center
    low, high = stats.t.interval(confidence, y.size - 1, loc=center, scale=stats.sem(y))
    return float(low), float(high)


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE, scale: str = "linear") -> Interval:
    """Mean of the finite values and their interval (``scale``: INTERVAL_METHODS): ``linear`` the
    Student-t interval; ``logit`` and ``log`` the Student-t interval of the transformed values, mapped
    back (for fractions in [0, 1] and positive numbers); ``range`` the smallest and largest value."""
    if scale not in INTERVAL_METHODS:
        raise ValueError(f"scale must be one of {', '.join(INTERVAL_METHODS)}; got {scale!r}")
    x = _finite_values(values)
    if x.size == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan, scale)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(1, mean, math.nan, math.nan, math.nan, scale)
    sd = float(x.std(ddof=1))
    if scale == "range":
        return Interval(int(x.size), mean, sd, float(x.min()), float(x.max()), scale)
    if scale == "logit":
        if x.min() < 0 or x.max() > 1:
            raise ValueError(f"a logit interval needs fractions in [0, 1]; got {x.min():g} to {x.max():g}")
        low, high = _t_interval(special.logit(np.clip(x, LOGIT_MARGIN, 1 - LOGIT_MARGIN)), confidence)
        low, high = float(special.expit(low)), float(special.expit(high))
    elif scale == "log":
        if x.min() <= 0:
            raise ValueError(f"a log interval needs positive values; got {x.min():g}")
        low, high = _t_interval(np.log(x), confidence)
        low, high = math.exp(low), math.exp(high)
    else:
        low, high = _t_interval(x, confidence)
    return Interval(int(x.size), mean, sd, low, high, scale)


def metric_interval(values: Iterable[float], metric: str, confidence: float = CONFIDENCE) -> Interval:
    """``mean_ci`` on the scale that keeps ``metric`` (a METRICS key) in its range."""
    return mean_ci(values, confidence, METRICS[metric].scale)


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


# --- probability of improvement, power, multiple comparisons -----------------------------------


@dataclass(frozen=True)
class Improvement:
    """P(A better than B) over paired seeds (Bouthillier et al. 2021, "probability of improvement"):
    the share of seeds where A is better, among the seeds where A and B differ, with its exact
    (Clopper-Pearson, ``scipy.stats.binomtest``) 95% interval. ``n`` counts those seeds, ``ties``
    the others."""

    p: float
    low: float
    high: float
    n: int
    ties: int

    @property
    def decision(self) -> str:
        """Decided against IMPROVEMENT_THRESHOLD only when the whole interval says so."""
        if self.n == 0 or not math.isfinite(self.low):
            return "not decided"
        threshold = IMPROVEMENT_THRESHOLD
        if self.low > threshold:
            return f"A better in most seeds (the interval lies above {threshold})"
        if self.high < 1 - threshold:
            return f"B better in most seeds (the interval lies below {1 - threshold:.2f})"
        if self.low > 0.5:
            return f"A better more often than not (the interval lies above 0.5, not above {threshold})"
        if self.high < 0.5:
            return f"B better more often than not (the interval lies below 0.5, not below {1 - threshold:.2f})"
        return "not decided (the interval includes 0.5)"

    @property
    def wins(self) -> int:
        return round(self.p * self.n) if self.n else 0

    @property
    def text(self) -> str:
        if self.n == 0:
            return ""
        return f"{self.p:.2f} [{self.low:.2f}, {self.high:.2f}]"


def probability_of_improvement(
    differences: Iterable[float], direction: str = "higher", confidence: float = CONFIDENCE
) -> Improvement:
    """P(A better) from per-seed differences A - B: ``direction`` "higher" (A better when A > B),
    "lower" (A better when A < B) or "either" (reported as P(A > B))."""
    if direction not in ("higher", "lower", "either"):
        raise ValueError(f"direction must be higher, lower or either; got {direction!r}")
    d = _finite_values(differences)
    if direction == "lower":
        d = -d
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    n = wins + losses
    if n == 0:
        return Improvement(math.nan, math.nan, math.nan, 0, int(d.size))
    interval = stats.binomtest(wins, n).proportion_ci(confidence, method="exact")
    return Improvement(wins / n, float(interval.low), float(interval.high), n, int(d.size) - n)


def paired_t_power(effect_size: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test (equivalently: of a 95% t-interval excluding 0) with ``n``
    pairs when the true mean difference is ``effect_size`` standard deviations (``scipy.stats.nct``)."""
    if n < 2:
        return math.nan
    df, noncentrality = n - 1, effect_size * math.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))


@dataclass(frozen=True)
class SeedsNeeded:
    """How many seeds (pairs) a paired comparison needs for ``power`` at the observed effect size."""

    seeds: int | None  # None: more than MAX_SEEDS, or no effect to detect
    effect_size: float  # observed mean / sd of the per-seed values
    text: str


def seeds_needed(
    values: Iterable[float], power: float = POWER, alpha: float = ALPHA, max_seeds: int = MAX_SEEDS
) -> SeedsNeeded:
    """From per-seed values (paired differences or a per-seed statistic), the smallest number of seeds
    whose two-sided t-test reaches ``power`` if the true effect were the observed mean / sd."""
    x = _finite_values(values)
    if x.size < 2:
        return SeedsNeeded(None, math.nan, "needs 2 seeds to estimate")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    if sd == 0.0:
        if mean == 0.0:
            return SeedsNeeded(None, 0.0, "no effect to detect (every seed gives 0)")
        return SeedsNeeded(int(x.size), math.inf, f"{x.size} (no spread between seeds)")
    effect = mean / sd
    if abs(effect) < NO_EFFECT:
        return SeedsNeeded(None, effect, f"no effect to detect (observed effect {effect:+.2f} sd)")
    for n in range(2, max_seeds + 1):
        if paired_t_power(effect, n, alpha) >= power:
            return SeedsNeeded(n, effect, f"about {n}")
    return SeedsNeeded(None, effect, f"more than {max_seeds}")


def holm(p_values: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjustment (family-wise error) of the finite p-values; NaN stays NaN and is
    not counted. Adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j)), p sorted ascending."""
    p = np.asarray(list(p_values), dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


# --- one row per run ----------------------------------------------------------------------------


def run_state(run: Any) -> str:
    return getattr(getattr(run, "status", None), "state", None) or "unknown"


def _number(value: Any) -> float:
    """A finite float, else NaN (test_metrics.json stores NaN as the string "nan")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def clean_history(history: pd.DataFrame | None) -> pd.DataFrame:
    """A history sorted by epoch, its numbers as floats (non-finite as NaN)."""
    if history is None or len(history) == 0:
        return pd.DataFrame(columns=rundir.HISTORY_COLUMNS, dtype=float)
    history = history.copy()
    for column in history.columns:
        values = pd.to_numeric(history[column], errors="coerce").astype(float)
        history[column] = values.where(np.isfinite(values))
    return history.sort_values("epoch").reset_index(drop=True)


RELEASED_LOSS = "train_loss_released"  # the column released_training_loss adds to a history


def released_training_loss(history: pd.DataFrame | None) -> pd.Series:
    """Per epoch, the training loss as the released notebooks computed it (``train_loss_tail``: the
    mean over the batches after the last multiple of 1,000), else the epoch mean (``train_loss``:
    histories from before that column, and epochs of a multiple of 1,000 batches, where the notebooks
    recorded nothing)."""
    history = clean_history(history)
    mean = history["train_loss"] if "train_loss" in history else pd.Series(np.nan, index=history.index)
    if "train_loss_tail" not in history:
        return mean.rename(RELEASED_LOSS)
    return history["train_loss_tail"].fillna(mean).rename(RELEASED_LOSS)


def has_released_loss(history: pd.DataFrame | None) -> bool:
    """Whether any epoch of the history has ``train_loss_tail`` (else the figures fall back to the mean)."""
    return (
        history is not None and "train_loss_tail" in history and clean_history(history)["train_loss_tail"].notna().any()
    )


def _run_row(run: Any) -> dict[str, Any]:
    try:
        seed = int(run.seed)
    except (AttributeError, TypeError):
        raise AttributeError(f"run record {getattr(run, 'run_id', run)!r} has no seed") from None
    metrics = getattr(run, "test_metrics", None) or {}
    last, best = metrics.get("last") or {}, metrics.get("best") or {}
    history = clean_history(getattr(run, "history", None))
    released = released_training_loss(history)
    mean = history["train_loss"] if "train_loss" in history else pd.Series(dtype=float)
    val = history["val_loss"].dropna() if "val_loss" in history else pd.Series(dtype=float)
    state = run_state(run)
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
        "final_train_loss": _number(released.iloc[-1]) if len(released) else math.nan,
        "final_train_loss_mean": _number(mean.iloc[-1]) if len(mean) else math.nan,
        "best_val_loss": float(val.min()) if len(val) else math.nan,
        "epochs": len(history),
        "best_epoch": _number(best.get("epoch")),
        "run_id": getattr(run, "run_id", ""),
    }


def _sorted(frame: pd.DataFrame, by: list[str], networks: Sequence[str] | None = None) -> pd.DataFrame:
    """Sorted by ``by``, networks in the given order (default: hrsnet.models' order), others after them."""
    if frame.empty:
        return frame.reset_index(drop=True)
    known = list(networks) if networks else list_models()
    others = sorted(set(frame["network"]) - set(known))
    order = {arch: index for index, arch in enumerate([*known, *others])}

    def key(column: pd.Series) -> pd.Series:
        return column.map(order) if column.name == "network" else column

    return frame.sort_values(by, key=key, kind="stable").reset_index(drop=True)


def run_table(runs: Iterable[Any], networks: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run, finished or not: network, C, seed, state, test top-1/top-5 of the last and
    best-validation model (fractions), final training loss (as released, and the epoch mean), best
    validation loss, epochs run, the best-validation epoch."""
    table = pd.DataFrame([_run_row(run) for run in runs], columns=RUN_COLUMNS)
    table = table.astype({"C": int, "seed": int, "finished": bool, "epochs": int})
    return _sorted(table, ["network", "C", "seed"], networks)


def finished_runs(table: pd.DataFrame) -> pd.DataFrame:
    """The finished rows of run_table; a second finished run of the same network, C and seed would be
    counted twice, so it is refused."""
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


def repeated_metrics(table: pd.DataFrame) -> dict[str, str]:
    """Metrics that repeat others for every finished run, with why: the best-validation model's
    accuracies when it is the last epoch's model everywhere (nothing stopped early or turned back),
    the epochs when every run went the same number."""
    finished = table.loc[table["finished"].astype(bool)]
    if finished.empty:
        return {}
    repeated = {}
    for best, last in BEST_OF_LAST.items():
        same = (finished[best] == finished[last]) | (finished[best].isna() & finished[last].isna())
        if same.all():
            repeated[best] = f"equal to '{METRICS[last].label}' for every run (the best validation epoch was the last)"
    same = (finished["final_train_loss_mean"] - finished["final_train_loss"]).abs() <= 1e-12
    if (same | (finished["final_train_loss_mean"].isna() & finished["final_train_loss"].isna())).all():
        repeated["final_train_loss_mean"] = (
            f"equal to '{METRICS['final_train_loss'].label}' for every run (fewer than 1,000 batches an epoch: "
            "the released measure is then the epoch mean)"
        )
    epochs = finished["epochs"].unique()
    if len(epochs) == 1:
        repeated["epochs"] = f"every run went {int(epochs[0])} epochs"
    return repeated


# --- per network and C ---------------------------------------------------------------------------


def summary_table(runs: Iterable[Any], networks: Sequence[str] | None = None) -> pd.DataFrame:
    """Per network, C and metric: n (finished runs with a finite value), mean, sd and interval (on the
    metric's scale, see ``INTERVAL_METHODS``); ``finished``/``unfinished`` count the cell's runs."""
    table = run_table(runs, networks)
    finished_runs(table)
    rows = []
    for (network, width), cell in table.groupby(["network", "C"], sort=False):
        done = cell.loc[cell["finished"]]
        states = cell.loc[~cell["finished"], "state"].value_counts()
        unfinished = ", ".join(f"{count} {state}" for state, count in states.items())
        for metric in METRICS:
            ci = metric_interval(done[metric], metric)
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
                    "interval": ci.method,
                    "finished": len(done),
                    "unfinished": int(len(cell) - len(done)),
                    "unfinished_states": unfinished,
                }
            )
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary["metric_order"] = summary["metric"].map(list(METRICS).index)
    return _sorted(summary, ["network", "C", "metric_order"], networks).drop(columns="metric_order")


# --- paired by seed ------------------------------------------------------------------------------


def by_seed(finished: pd.DataFrame, network: str, width: int, metric: str) -> pd.Series:
    """``metric`` of ``network`` at C=width per seed (index: seed), from finished_runs' rows."""
    cell = finished[(finished["network"] == network) & (finished["C"] == width)]
    return cell.set_index("seed")[metric].astype(float)


def pairs(finished: pd.DataFrame, a: str, b: str, width: int, metric: str) -> tuple[pd.Series, pd.Series]:
    """a's and b's values at C for the seeds where both are finite, aligned by seed."""
    joined = pd.concat(
        [by_seed(finished, a, width, metric).rename("a"), by_seed(finished, b, width, metric).rename("b")],
        axis=1,
        join="inner",
    ).dropna()
    joined = joined.sort_index()
    return joined["a"], joined["b"]


def comparison_name(a: str, b: str) -> str:
    return f"{network_label(a)} - {network_label(b)}"


def common_widths(finished: pd.DataFrame, *networks: str) -> list[int]:
    """The widths C at which every one of ``networks`` has a finished run."""
    widths = [set(finished.loc[finished["network"] == network, "C"]) for network in networks]
    return sorted(set.intersection(*widths)) if widths else []


def missing_networks(finished: pd.DataFrame, networks: Iterable[str]) -> list[str]:
    """Those of ``networks`` without a single finished run."""
    present = set(finished["network"])
    return [network for network in networks if network not in present]


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


def _pair_list(comparisons: Iterable[Any]) -> list[tuple[str, str]]:
    """(a, b) from hrsnet.profiles.Comparison objects or plain pairs."""
    return [tuple(getattr(item, "networks", item)) for item in comparisons]


def left_out_comparisons(runs: Iterable[Any], comparisons: Iterable[Any]) -> list[str]:
    """One line per comparison that has no pair to compare, saying why."""
    finished = finished_runs(run_table(runs))
    lines = []
    for a, b in _pair_list(comparisons):
        missing = missing_networks(finished, (a, b))
        if missing:
            names = " and ".join(network_label(name) for name in missing)
            lines.append(f"{comparison_name(a, b)}: left out, no finished runs of {names}")
        elif not common_widths(finished, a, b):
            lines.append(f"{comparison_name(a, b)}: left out, no C at which both have finished runs")
    return lines


def paired_differences(
    runs: Iterable[Any], comparisons: Iterable[Any], metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per comparison (a, b), C and metric, a - b matched by seed: n pairs, mean difference, sd, 95%
    t-interval, the two-sided ``ttest_rel`` p, that p Holm-adjusted over every row of the table, the
    ``wilcoxon`` p, and the seeds used. Comparisons without pairs are left out (left_out_comparisons)."""
    finished = finished_runs(run_table(runs))
    rows = []
    for a, b in _pair_list(comparisons):
        for width in common_widths(finished, a, b):
            for metric in metrics or METRICS:
                left, right = pairs(finished, a, b, width, metric)
                ci = mean_ci(left - right)
                p_t, p_w = _p_values(left, right)
                rows.append(
                    {
                        "comparison": comparison_name(a, b),
                        "a": a,
                        "b": b,
                        "C": width,
                        "metric": metric,
                        "n_pairs": ci.n,
                        "mean_difference": ci.mean,
                        "sd": ci.sd,
                        "ci_low": ci.low,
                        "ci_high": ci.high,
                        "p_ttest": p_t,
                        "p_holm": math.nan,
                        "p_wilcoxon": p_w,
                        "seeds": " ".join(str(s) for s in left.index),
                    }
                )
    table = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    table["p_holm"] = holm(table["p_ttest"])
    return table


# --- curves for the figures ----------------------------------------------------------------------


def curve_scale(column: str) -> str:
    """The interval scale of a history column: logit for accuracies, log for losses, else linear."""
    if column.endswith("_acc"):
        return "logit"
    if "loss" in column:
        return "log"
    return "linear"


def curve_band(runs: Iterable[Any], arch: str, width: int, column: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per epoch, mean and interval (``curve_scale``) of ``column`` over the finished runs (seeds) of
    ``arch`` at C=width that have that epoch with a finite value; n says how many (runs stop at
    different epochs). ``column`` may be RELEASED_LOSS (released_training_loss)."""
    histories = []
    for run in runs:
        if run.arch == arch and int(run.width) == int(width) and run_state(run) in rundir.FINISHED_STATES:
            history = clean_history(getattr(run, "history", None))
            if column == RELEASED_LOSS and len(history):
                history[RELEASED_LOSS] = released_training_loss(history)
            if column in history and len(history):
                histories.append(history[["epoch", column]])
    if not histories:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    stacked = pd.concat(histories).dropna(subset=["epoch"])
    rows = []
    for epoch, group in stacked.groupby("epoch", sort=True):
        ci = mean_ci(group[column], confidence, curve_scale(column))
        rows.append(
            {"epoch": int(epoch), "n": ci.n, "mean": ci.mean, "sd": ci.sd, "ci_low": ci.low, "ci_high": ci.high}
        )
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


# --- readable tables ---------------------------------------------------------------------------


def _significant(value: float, sign: bool = False) -> str:
    """Three significant digits, trailing zeros kept (0.910, 1.10), no bare trailing point."""
    text = f"{value:+#.3g}" if sign else f"{value:#.3g}"
    return text[:-1] if text.endswith(".") else text


def format_estimate(mean: float, low: float, high: float, unit: str, difference: bool = False) -> str:
    """ "77.7% [72.1, 83.3]" for accuracies (percentage points for differences), "0.512 [0.430, 0.594]"
    for losses, "3.0 [3, 3]" for epochs; the bracket is left out when there is no interval."""
    if not math.isfinite(mean):
        return ""
    if unit == "ratio":
        return f"{mean:.2f}x"
    if unit.startswith("accuracy"):
        text = f"{100 * mean:+.1f} pp" if difference else f"{100 * mean:.1f}%"
        bracket = f" [{100 * low:.1f}, {100 * high:.1f}]"
    elif unit == "epochs":
        text = f"{mean:+.1f}" if difference else f"{mean:.1f}"
        bracket = f" [{low:.0f}, {high:.0f}]" if not difference else f" [{low:.1f}, {high:.1f}]"
    else:
        text = _significant(mean, sign=difference)
        bracket = f" [{_significant(low)}, {_significant(high)}]"
    return text + (bracket if math.isfinite(low) and math.isfinite(high) else "")


def metric_unit(metric: str) -> str:
    return METRICS[metric].unit if metric in METRICS else "loss"


def p_text(p: float) -> str:
    if not math.isfinite(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _repeated_lines(repeated: dict[str, str]) -> str:
    return "".join(f"\n- *{METRICS[metric].label}* left out: {why}." for metric, why in repeated.items())


def summary_markdown(summary: pd.DataFrame, repeated: dict[str, str] | None = None) -> str:
    """summary_table as one row per network and C, each metric as mean [interval]; the metrics in
    ``repeated`` (repeated_metrics) are left out with a line saying why."""
    repeated = repeated or {}
    rows = []
    for (network, width), cell in summary.groupby(["network", "C"], sort=False):
        first = cell.iloc[0]
        seeds = str(first["finished"]) + (f" ({first['unfinished_states']} left out)" if first["unfinished"] else "")
        row = {"network": network_label(network), "C": int(width), "seeds (finished)": seeds}
        for entry in cell.itertuples(index=False):
            if entry.metric in repeated:
                continue
            text = format_estimate(entry.mean, entry.ci_low, entry.ci_high, metric_unit(entry.metric))
            row[METRICS[entry.metric].label] = text + (
                f" (n={entry.n})" if entry.n != first["finished"] and text else ""
            )
        rows.append(row)
    table = markdown_table(pd.DataFrame(rows)) if rows else "(no runs)"
    return (
        "Mean over seeds [95% interval], finished runs only (complete, early-stopped, diverged); unfinished runs "
        "are left out and counted. Accuracies: t-interval on the logit scale, losses: on the log scale, both "
        "mapped back, so they stay in range; epochs: smallest to largest. A metric with fewer values than "
        "seeds (a diverged run) gives its n. Standard deviations are in summary.csv."
        + _repeated_lines(repeated)
        + "\n\n"
        + table
        + "\n"
    )


def paired_markdown(paired: pd.DataFrame, repeated: dict[str, str] | None = None, left_out: Sequence[str] = ()) -> str:
    """paired_differences as an exploratory table: each difference as mean [95% t-interval], its
    paired t-test p and that p Holm-adjusted over every test in the table."""
    repeated = repeated or {}
    shown = paired[~paired["metric"].isin(list(repeated))]
    shown = shown.assign(p_holm=holm(shown["p_ttest"]))
    rows = [
        {
            "comparison": entry.comparison,
            "C": int(entry.C),
            "metric": METRICS[entry.metric].label if entry.metric in METRICS else entry.metric,
            "pairs": int(entry.n_pairs),
            "mean difference [95% CI]": format_estimate(
                entry.mean_difference, entry.ci_low, entry.ci_high, metric_unit(entry.metric), difference=True
            ),
            "paired t p": p_text(entry.p_ttest),
            "Holm-adjusted p": p_text(entry.p_holm),
        }
        for entry in shown.itertuples(index=False)
    ]
    table = markdown_table(pd.DataFrame(rows)) if rows else "(no pairs: no C with finished runs of both networks)"
    tests = int(np.isfinite(shown["p_ttest"].to_numpy(dtype=float)).sum())
    return (
        "**Exploratory.** Every declared comparison at every C and every metric, a - b matched by seed (only "
        "seeds finished on both sides, with finite values), mean [95% Student-t interval]; accuracies in "
        f"percentage points. p: two-sided paired t-test; Holm-adjusted over the {tests} tests in this table "
        "(family-wise error 5%). The claims above are the tests declared in advance; read these as leads."
        + _repeated_lines(repeated)
        + "".join(f"\n- {line}." for line in left_out)
        + "\n\n"
        + table
        + "\n"
    )


def write_frame(frame: pd.DataFrame, markdown: str, out_dir: str | Path, name: str) -> dict[str, Path]:
    """``name``.csv (raw numbers) and ``name``.md (readable), each written atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    rundir.atomic_write(csv_path, lambda stream: frame.to_csv(stream, index=False))
    rundir.atomic_write(md_path, lambda stream: stream.write(markdown))
    return {csv_path.name: csv_path, md_path.name: md_path}
