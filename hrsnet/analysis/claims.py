"""The report's claims, one function per kind (``hrsnet.profiles.CLAIM_KINDS``), decided by the runs.

A profile declares which claims to decide and for which networks (``ClaimSpec``: kind, networks,
reading); nothing here names a network. Each function returns the claim's rows: the report's words
quoted, what is computed per seed, its mean and 95% Student-t interval over seeds, the verdict
(supported or contradicted only when the interval lies entirely on one side of 0), and for a claim
that compares two networks the probability of improvement P(A better) (Bouthillier et al. 2021);
a claim left open gets the number of seeds that would decide it at 80% power
(``stats.seeds_needed``). A claim whose networks have no finished runs is kept as a row whose
verdict is "left out" and whose note says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .. import rundir
from ..profiles import CLAIM_KINDS, ClaimSpec
from . import stats
from .paper import CLAIMED_PARAMETER_PAIR, parameter_table
from .stats import network_label
from .tables import markdown_table, seeds_text

PARAMETER_TOLERANCE = 0.15
MIN_SLOPE_EPOCHS = 2
LEFT_OUT = "left out"
CLAIM_COLUMNS = [
    "kind",
    "main",
    "a",
    "b",
    "networks",
    "reading",
    "claim",
    "quote",
    "statistic",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "verdict",
    "direction",
    "p_better",
    "p_better_low",
    "p_better_high",
    "improvement",
    "p_better_seeds",
    "seeds_needed",
    "effect_size",
    "note",
    "unit",
    "per_seed",
]


@dataclass(frozen=True)
class ClaimText:
    """What a claim kind says: the statement ({a} and {b}: the networks' labels), the report's own
    words, which way of the per-seed statistic supports it (``lower``, ``higher``, ``either``: two-sided,
    ``fits``: a deterministic count), whether it compares two networks (then P(A better) is shown),
    and the figure kinds that show it."""

    statement: str
    quote: str
    where: str
    direction: str
    compares: bool
    figure_kinds: tuple[str, ...]
    better: str = "P({a} better)"  # what P(A better) means for this kind, in words
    short: str = ""  # the claim in a few words, for the summary


CLAIM_TEXTS = {
    "lower_loss_small_c": ClaimText(
        "{a} has a lower training loss than {b} at the smallest C",
        "Initially, the HRSNet model displayed a markedly lower training loss at the lower C values when "
        "compared to HRNet.",
        "Results, Quantitative Results",
        "lower",
        True,
        ("training_loss",),
        "P({a} lower)",
        "lower training loss at the smallest C",
    ),
    "gap_closes": ClaimText(
        "The training-loss gap between {a} and {b} closes as C grows",
        "However, this advantage diminished, and performance between the two models converged as the "
        "parameter C was increased to its highest tested value of 30.",
        "Results, Quantitative Results",
        "higher",
        True,
        ("training_loss",),
        "P(gap larger at the smallest C)",
        "the loss gap closing as C grows",
    ),
    "lower_loss": ClaimText(
        "{a} reaches a lower training loss than {b}",
        "We also analyzed the loss of original HRNet implementation vs our implementation and observed that "
        "our implementation leads to lower overall loss, which is because of the use of preactivated residual "
        "units.",
        "Results, Quantitative Results",
        "lower",
        True,
        ("training_loss",),
        "P({a} lower)",
        "lower training loss over all C",
    ),
    "overfitting": ClaimText(
        "At the largest C the validation loss rises while the training loss falls ({networks})",
        "Although the overall loss is very low, the validation loss for higher C values are higher, which "
        "implies that the model is overfitting.",
        "Results, Quantitative Results",
        "higher",
        False,
        ("train_vs_val",),
        short="overfitting at the largest C",
    ),
    "more_accurate": ClaimText(
        "{a} is more accurate than {b}",
        "The newer HRSNet lead to lower loss values than HRNet and gave better accuracy as well.",
        "Conclusion",
        "higher",
        True,
        ("accuracy",),
        "P({a} more accurate)",
        "higher test accuracy",
    ),
    "parameters": ClaimText(
        "About 13M parameters for {a} and about 43M for {b} at the same C",
        "the downside of this larger network is that, it contains around 43 million trainable parameters as "
        "compared to only 13 million trainable parameters of our HRNet implementation for the same value of C.",
        "Proposed Method",
        "fits",
        False,
        (),
        short="13M vs 43M parameters",
    ),
    "differs": ClaimText(
        "{a} and {b} differ",
        "the modularized blocks uses skip connection from the 1st to the last block in each stage. This "
        "creates stage independence and hence each stage is responsible for learning only its residual "
        "features.",
        "Proposed Method (the stage skip; the released code computes none)",
        "either",
        True,
        ("training_loss", "accuracy"),
        "P({a} > {b})",
        "a difference between the two networks",
    ),
}


@dataclass
class ClaimInputs:
    """What every claim function reads: the runs, their finished rows (stats.run_table), and the
    parameter counts for the parameter claim (None: computed on the meta device when needed)."""

    runs: list[Any]
    finished: pd.DataFrame
    architecture: pd.DataFrame | None = None


def _networks_text(networks: Sequence[str], last: str = ", ") -> str:
    labels = [network_label(name) for name in networks]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + last + labels[-1]


def _statement(spec: ClaimSpec) -> str:
    a = network_label(spec.networks[0])
    b = network_label(spec.networks[1]) if len(spec.networks) > 1 else ""
    return CLAIM_TEXTS[spec.kind].statement.format(a=a, b=b, networks=_networks_text(spec.networks))


def _row(
    spec: ClaimSpec,
    statistic: str,
    unit: str,
    per_seed: pd.Series | None,
    supported: bool,
    contradicted: bool,
    note: str,
    label: str = "",
) -> dict[str, Any]:
    """One row of the claims table from the per-seed statistic (index: seed)."""
    text = CLAIM_TEXTS[spec.kind]
    per_seed = per_seed if per_seed is not None else pd.Series(dtype=float)
    ci = stats.mean_ci(per_seed)
    verdict = stats.verdict(supported, contradicted, ci.n)
    improvement = stats.probability_of_improvement(per_seed, text.direction) if text.compares else None
    needed = stats.seeds_needed(per_seed) if verdict.startswith("not decided") else None
    return {
        "kind": spec.kind,
        "a": spec.networks[0],
        "b": spec.networks[1] if len(spec.networks) > 1 else "",
        "networks": " ".join(spec.networks),
        "reading": spec.reading,
        "claim": _statement(spec) + (f": {label}" if label else ""),
        "quote": text.quote,
        "statistic": statistic,
        "value": ci.mean,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "n": ci.n,
        "verdict": verdict,
        "direction": text.direction,
        "p_better": improvement.p if improvement else math.nan,
        "p_better_low": improvement.low if improvement else math.nan,
        "p_better_high": improvement.high if improvement else math.nan,
        "improvement": improvement.decision if improvement and improvement.n else "",
        "p_better_seeds": f"{improvement.wins} of {improvement.n}" if improvement and improvement.n else "",
        "seeds_needed": needed.text if needed else "",
        "effect_size": needed.effect_size if needed else math.nan,
        "note": note,
        "unit": unit,
        "per_seed": " ".join(f"{int(seed)}:{value:.6g}" for seed, value in per_seed.items()),
    }


def _left_out(spec: ClaimSpec, why: str) -> dict[str, Any]:
    row = _row(spec, "", "", None, False, False, why)
    return {**row, "verdict": LEFT_OUT, "n": 0, "seeds_needed": ""}


def _unavailable(spec: ClaimSpec, data: ClaimInputs) -> str | None:
    """Why the claim cannot be decided from these runs (a network without finished runs), or None."""
    missing = stats.missing_networks(data.finished, spec.networks)
    if missing:
        return f"no finished runs of {_networks_text(missing, ' or ')}"
    if not stats.common_widths(data.finished, *spec.networks):
        return f"no C at which {_networks_text(spec.networks)} all have finished runs"
    return None


def _seed_matrix(finished: pd.DataFrame, a: str, b: str | None, metric: str, widths: list[int]) -> pd.DataFrame:
    """seed x C of a's metric (minus b's, matched by seed), only seeds with a finite value at every C."""
    columns = {}
    for width in widths:
        values = stats.by_seed(finished, a, width, metric)
        if b is not None:
            values = values - stats.by_seed(finished, b, width, metric)  # aligns on the seed index
        columns[width] = values
    return pd.DataFrame(columns, columns=widths).dropna().sort_index()


def _dropped(finished: pd.DataFrame, networks: Iterable[str], widths: Iterable[int], kept: pd.Index) -> str:
    cells = finished[finished["network"].isin(list(networks)) & finished["C"].isin(list(widths))]
    dropped = sorted(set(cells["seed"]) - set(kept))
    return (
        f"; seeds left out (a run missing or without a finite value): {', '.join(map(str, dropped))}" if dropped else ""
    )


def _widths_text(widths: Iterable[int]) -> str:
    return "{" + ", ".join(str(int(width)) for width in widths) + "}"


def _side(interval: stats.Interval, direction: str) -> tuple[bool, bool]:
    """(supported, contradicted) by where the interval lies: below 0 supports "lower", above 0
    "higher"; "either" is supported by either side and never contradicted. NaN decides nothing."""
    below, above = bool(interval.high < 0), bool(interval.low > 0)
    if direction == "lower":
        return below, above
    if direction == "higher":
        return above, below
    return below or above, False


RULES = {
    "lower": "supported if the interval is below 0, contradicted if above",
    "higher": "supported if the interval is above 0, contradicted if below",
    "either": "a difference if the interval excludes 0 (either side); an interval around 0 shows none at this "
    "number of seeds, it does not show the two are equal",
}


# --- one function per claim kind ------------------------------------------------------------------


def lower_loss_small_c(spec: ClaimSpec, data: ClaimInputs) -> list[dict[str, Any]]:
    """a - b final training loss (as released) per seed at the smallest C both have; claimed below 0."""
    if why := _unavailable(spec, data):
        return [_left_out(spec, why)]
    a, b = spec.networks[:2]
    width = stats.common_widths(data.finished, a, b)[0]
    differences = _seed_matrix(data.finished, a, b, "final_train_loss", [width])[width]
    interval = stats.mean_ci(differences)
    statistic = (
        f"final training loss (as the released notebooks measured it), {network_label(a)} - {network_label(b)} "
        f"per seed, at the smallest C (C={width})"
    )
    note = RULES["lower"] + _dropped(data.finished, (a, b), [width], differences.index)
    return [_row(spec, statistic, "loss", differences, *_side(interval, "lower"), note)]


def gap_closes(spec: ClaimSpec, data: ClaimInputs) -> list[dict[str, Any]]:
    """Per seed, gap(smallest C) - gap(largest C) with gap = b - a final training loss; claimed above 0."""
    if why := _unavailable(spec, data):
        return [_left_out(spec, why)]
    a, b = spec.networks[:2]
    widths = stats.common_widths(data.finished, a, b)
    statistic = (
        f"per seed, gap(smallest C) - gap(largest C), gap = {network_label(b)} - {network_label(a)} "
        "final training loss (as released)"
    )
    if len(widths) < 2:
        note = f"needs finished runs of both networks at two widths or more; have C in {_widths_text(widths)}"
        return [_row(spec, statistic, "loss", None, False, False, note)]
    ends = [widths[0], widths[-1]]
    gaps = _seed_matrix(data.finished, b, a, "final_train_loss", ends)
    closing = gaps[ends[0]] - gaps[ends[1]]
    interval = stats.mean_ci(closing)
    statistic = statistic.replace("smallest C", f"C={ends[0]}").replace("largest C", f"C={ends[1]}")
    note = RULES["higher"] + " (a larger gap at small C)" + _dropped(data.finished, (a, b), ends, gaps.index)
    return [_row(spec, statistic, "loss", closing, *_side(interval, "higher"), note)]


def _mean_over_widths(spec: ClaimSpec, data: ClaimInputs, metric: str, unit: str, label: str = "") -> dict[str, Any]:
    """Per seed, the mean over the shared C of a - b on ``metric``, decided in the kind's direction."""
    a, b = spec.networks[:2]
    direction = CLAIM_TEXTS[spec.kind].direction
    widths = stats.common_widths(data.finished, a, b)
    matrix = _seed_matrix(data.finished, a, b, metric, widths)
    per_seed = matrix.mean(axis=1)
    interval = stats.mean_ci(per_seed)
    statistic = (
        f"per seed, mean over C in {_widths_text(widths)} of {stats.METRICS[metric].label}, "
        f"{network_label(a)} - {network_label(b)}"
    )
    note = (
        RULES[direction] + "; a seed counts only with every C" + _dropped(data.finished, (a, b), widths, matrix.index)
    )
    return _row(spec, statistic, unit, per_seed, *_side(interval, direction), note, label)


def lower_loss(spec: ClaimSpec, data: ClaimInputs) -> list[dict[str, Any]]:
    """a - b final training loss (as released), per seed averaged over C; claimed below 0."""
    if why := _unavailable(spec, data):
        return [_left_out(spec, why)]
    return [_mean_over_widths(spec, data, "final_train_loss", "loss")]


def more_accurate(spec: ClaimSpec, data: ClaimInputs) -> list[dict[str, Any]]:
    """a - b test top-1 of the last-epoch model, per seed averaged over C; claimed above 0."""
    if why := _unavailable(spec, data):
        return [_left_out(spec, why)]
    return [_mean_over_widths(spec, data, "top1_last", "accuracy (fraction)")]


def differs(spec: ClaimSpec, data: ClaimInputs) -> list[dict[str, Any]]:
    """a - b, per seed averaged over C, on the final training loss and on test top-1; two-sided."""
    if why := _unavailable(spec, data):
        return [_left_out(spec, why)]
    return [
        _mean_over_widths(spec, data, "final_train_loss", "loss", "training loss"),
        _mean_over_widths(spec, data, "top1_last", "accuracy (fraction)", "test top-1"),
    ]


def last_half_slopes(history: pd.DataFrame) -> tuple[float, float]:
    """Slopes per epoch (``scipy.stats.linregress``) of validation and training loss over the last half
    of the epochs where both are finite (the last ceil(k/2), at least 2); NaN with fewer than 2 such epochs."""
    rows = stats.clean_history(history)
    rows = rows.assign(train=stats.released_training_loss(rows)).dropna(subset=["epoch", "train", "val_loss"])
    if len(rows) < MIN_SLOPE_EPOCHS:
        return math.nan, math.nan
    window = rows.tail(max(MIN_SLOPE_EPOCHS, math.ceil(len(rows) / 2)))
    return (
        float(scipy_stats.linregress(window["epoch"], window["val_loss"]).slope),
        float(scipy_stats.linregress(window["epoch"], window["train"]).slope),
    )


def overfitting(spec: ClaimSpec, data: ClaimInputs) -> list[dict[str, Any]]:
    """At the largest C all the networks share, per seed the mean over them of the validation-loss slope
    (last half of the epochs); supported if its interval is above 0 and the training slope's below 0."""
    if why := _unavailable(spec, data):
        return [_left_out(spec, why)]
    networks = list(spec.networks)
    width = stats.common_widths(data.finished, *networks)[-1]
    slopes = []
    for run in data.runs:
        if stats.run_state(run) in rundir.FINISHED_STATES and int(run.width) == width and run.arch in networks:
            val_slope, train_slope = last_half_slopes(getattr(run, "history", None))
            slopes.append({"seed": int(run.seed), "network": run.arch, "val": val_slope, "train": train_slope})
    slopes = pd.DataFrame(slopes, columns=["seed", "network", "val", "train"])
    # a seed counts only with a slope for every network, so each seed averages the same networks
    val = slopes.pivot(index="seed", columns="network", values="val").reindex(columns=networks).dropna()
    train = slopes.pivot(index="seed", columns="network", values="train").reindex(columns=networks).dropna()
    val_seeds, train_ci = val.mean(axis=1), stats.mean_ci(train.mean(axis=1))
    val_ci = stats.mean_ci(val_seeds)
    statistic = (
        f"at the largest C (C={width}), per seed, mean over {_networks_text(networks)} of the validation-loss "
        "slope per epoch (linregress over each run's last half of epochs, at least 2)"
    )
    train_text = (
        f"training-loss slope {stats.format_estimate(train_ci.mean, train_ci.low, train_ci.high, 'loss', True)} "
        f"over {seeds_text(train_ci.n)}"
        if train_ci.n
        else "no training-loss slope"
    )
    note = (
        f"{train_text}; supported if the validation slope's interval is above 0 and the training slope's below 0, "
        "contradicted if the validation slope's is below 0" + _dropped(data.finished, networks, [width], val.index)
    )
    supported = bool(val_ci.low > 0) and bool(train_ci.high < 0)
    return [_row(spec, statistic, "loss per epoch", val_seeds, supported, bool(val_ci.high < 0), note)]


def parameters(spec: ClaimSpec, data: ClaimInputs) -> list[dict[str, Any]]:
    """Whether one C gives a about 13M and b about 43M parameters (each within PARAMETER_TOLERANCE)."""
    a, b = spec.networks[:2]
    claimed = dict(zip((a, b), CLAIMED_PARAMETER_PAIR))
    table = data.architecture if data.architecture is not None else parameter_table((a, b))
    counts = table.pivot_table(index="C", columns="network", values="parameters (M)", aggfunc="first")
    statistic = (
        f"largest {network_label(b)} / {network_label(a)} parameter ratio at the same C (claimed "
        f"{claimed[b]:.0f}/{claimed[a]:.0f} = {claimed[b] / claimed[a]:.2f}); fits if {network_label(a)} is within "
        f"±{PARAMETER_TOLERANCE:.0%} of {claimed[a]:.0f}M and {network_label(b)} of {claimed[b]:.0f}M at one C"
    )
    row = {**_row(spec, statistic, "ratio", None, False, False, ""), "n": pd.NA, "seeds_needed": ""}
    if not {a, b} <= set(counts.columns) or counts[[a, b]].dropna().empty:
        note = f"the architecture table has no C with both {network_label(a)} and {network_label(b)}"
        return [{**row, "verdict": stats.verdict(False, False, None), "note": note}]
    counts = counts[[a, b]].dropna()
    ratio = counts[b] / counts[a]
    fits = [
        int(width)
        for width in counts.index
        if all(abs(counts.loc[width, name] / claimed[name] - 1) <= PARAMETER_TOLERANCE for name in (a, b))
    ]
    note = (
        f"deterministic (no seeds, no interval). C in {_widths_text(counts.index)}: "
        f"{network_label(a)} {counts[a].min():.1f}M to {counts[a].max():.1f}M, "
        f"{network_label(b)} {counts[b].min():.1f}M to {counts[b].max():.1f}M, "
        f"ratio {ratio.min():.2f}x to {ratio.max():.2f}x; "
        + (f"both claims fit at C={', '.join(map(str, fits))}" if fits else "no C fits both claims")
    )
    return [{**row, "value": float(ratio.max()), "verdict": stats.verdict(bool(fits), not fits, None), "note": note}]


CLAIM_FUNCTIONS: dict[str, Callable[[ClaimSpec, ClaimInputs], list[dict[str, Any]]]] = {
    "lower_loss_small_c": lower_loss_small_c,
    "gap_closes": gap_closes,
    "lower_loss": lower_loss,
    "overfitting": overfitting,
    "more_accurate": more_accurate,
    "parameters": parameters,
    "differs": differs,
}
if set(CLAIM_FUNCTIONS) != set(CLAIM_KINDS) or set(CLAIM_TEXTS) != set(CLAIM_KINDS):
    raise ImportError("hrsnet.analysis.claims needs one function and one text per hrsnet.profiles.CLAIM_KINDS entry")


def claims_table(
    runs: Iterable[Any], claims: Iterable[ClaimSpec], architecture: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per claim of the profile (two for ``differs``), in the profile's order; ``main`` is True
    for the first claim of each kind, False for a second reading (the same kind for other networks,
    e.g. the text's HRSNet). ``architecture``:
    parameter counts ("network", "C", "parameters (M)") for the parameter claim (computed when None)."""
    runs = list(runs)
    data = ClaimInputs(runs, stats.finished_runs(stats.run_table(runs)), architecture)
    rows, kinds = [], set()
    for spec in claims:
        if spec.kind not in CLAIM_FUNCTIONS:
            raise ValueError(f"unknown claim kind {spec.kind!r}; allowed: {', '.join(CLAIM_FUNCTIONS)}")
        # the first claim of a kind is its main reading; later ones (other networks) are second readings
        rows += [{**row, "main": spec.kind not in kinds} for row in CLAIM_FUNCTIONS[spec.kind](spec, data)]
        kinds.add(spec.kind)
    table = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    table["n"] = table["n"].astype("Int64")
    return table


# --- readable forms ---------------------------------------------------------------------------------


def value_text(entry: Any) -> str:
    """A claim row's value with its interval ("+0.9 pp [-38.1, 39.8]", "1.20x")."""
    return stats.format_estimate(entry.value, entry.ci_low, entry.ci_high, entry.unit or "loss", difference=True)


def improvement_text(entry: Any) -> str:
    """P(A better) [95% CI] of a row that compares two networks, else ""."""
    p = entry.p_better
    if p is None or not isinstance(p, float) or not math.isfinite(p):
        return ""
    return f"{p:.2f} [{entry.p_better_low:.2f}, {entry.p_better_high:.2f}]"


def is_main(entry: Any) -> bool:
    """Whether a claims row is its kind's main reading (tables without "main": no reading text)."""
    main = getattr(entry, "main", None)
    if isinstance(main, (bool, np.bool_)):
        return bool(main)
    return not (isinstance(entry.reading, str) and entry.reading)


def reading_text(entry: Any) -> str:
    """ "main", or the second reading's text."""
    if is_main(entry):
        return "main"
    return str(entry.reading) if isinstance(entry.reading, str) and entry.reading else "second reading"


def left_out_lines(claims: pd.DataFrame) -> list[str]:
    """'claim (reading): left out, why' for every claim the runs cannot decide at all."""
    return [
        f"{entry.claim}"
        + (f" ({entry.reading})" if reading_text(entry) != "main" else "")
        + f": left out, {entry.note}"
        for entry in claims.itertuples(index=False)
        if entry.verdict == LEFT_OUT
    ]


def claims_markdown(claims: pd.DataFrame) -> str:
    """claims_table as a table (value as mean [95% interval], P(A better), seeds to decide), the claims
    left out as lines below it."""
    rows = [
        {
            "claim": entry.claim,
            "reading": reading_text(entry),
            "statistic": entry.statistic,
            "value [95% CI]": value_text(entry),
            "P(A better) [95% CI]": improvement_text(entry),
            "seeds": "" if pd.isna(entry.n) else str(entry.n),
            "verdict": entry.verdict,
            "seeds to decide": entry.seeds_needed,
            "note": entry.note,
        }
        for entry in claims.itertuples(index=False)
        if entry.verdict != LEFT_OUT
    ]
    table = markdown_table(pd.DataFrame(rows)) if rows else "(no claim could be decided: see below)"
    left_out = "".join(f"\n- {line}" for line in left_out_lines(claims))
    return (
        "Each claim decided by a per-seed statistic and its 95% Student-t interval over seeds (finished runs "
        "only): supported or contradicted only when the interval lies entirely on one side of 0; fewer than 2 "
        "seeds decide nothing. P(A better): the share of seeds in which A (the first network) is better, with "
        "its exact 95% interval. Seeds to decide: at the observed effect, the seeds a paired t-test needs for "
        "80% power.\n\n" + table + "\n" + left_out + ("\n" if left_out else "")
    )


def write_claims(claims: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """claims.csv and claims.md into ``out_dir``."""
    return stats.write_frame(claims, claims_markdown(claims), out_dir, "claims")


def per_seed_values(entry: Any) -> dict[int, float]:
    """The per-seed statistic a claims row was decided on ({seed: value})."""
    text = entry.per_seed if isinstance(entry.per_seed, str) else ""
    return {int(seed): float(value) for seed, value in (item.split(":") for item in text.split())}
