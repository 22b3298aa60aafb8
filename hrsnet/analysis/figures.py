"""The report's figures and results table, from run directories only (see hrsnet.rundir).

What is drawn comes from the profile: each ``FigureSpec`` (name, kind, networks, title) is one
figure, drawn by the function of its kind (``FIGURE_PLOTTERS``); a network's colour is its position
in the profile's networks, its label ``hrsnet.models.PRESETS[name].label``. Curves are the mean over
the finished seeds with a 95% band (``stats.curve_band``: on the log scale for losses, the logit
scale for accuracies) over thin lines for the single seeds; final accuracies are points per seed
beside their mean and interval. Missing, partial, diverged and failed runs are drawn from whatever
epochs they have and marked as such; every title states the dataset, profile and seeds.

Figures are written as files in any process; where a notebook kernel runs (MPLBACKEND set by
ipykernel to the inline backend) that backend is kept, so a returned figure shows as an image.
"""

from __future__ import annotations

import datetime
import os
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

if not os.environ.get("MPLBACKEND"):  # a script or test: files only, no window; a kernel keeps its inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- after the backend is chosen
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from .. import data, rundir  # noqa: E402
from ..profiles import FIGURE_KINDS, FigureSpec, Profile  # noqa: E402
from ..provenance import git_commit  # noqa: E402
from ..rundir import Run  # noqa: E402
from . import claims as claim_rules  # noqa: E402
from . import compute, stats  # noqa: E402
from .collect import RunCollection, collect_runs, load_run  # noqa: E402
from .paper import RELEASED_NOTEBOOK_RESULTS, RELEASED_TRAINING_LOSS, is_paper_setting, released_text  # noqa: E402
from .stats import RELEASED_LOSS, network_label  # noqa: E402
from .tables import markdown_table, seeds_text  # noqa: E402

DATASET_LABELS = data.DATASET_LABELS
PALETTE = sns.color_palette("colorblind")
WIDTH_STYLES = ["-", "--", ":", "-."]


def network_colors(networks) -> dict[str, tuple[float, float, float]]:
    """A colour per network by its position in ``networks`` (the profile's), the same in every figure."""
    return {name: PALETTE[index % len(PALETTE)] for index, name in enumerate(networks)}


def _colors(collection: RunCollection) -> dict[str, tuple[float, float, float]]:
    present = [run.arch for run in collection.runs if run.arch not in collection.profile.networks]
    return network_colors([*collection.profile.networks, *dict.fromkeys(present)])


def run_label(run: Run) -> str:
    return f"{network_label(run.arch)}, C={run.width}"


# --- drawing helpers ------------------------------------------------------------------------

BAND_ALPHA = 0.22  # the 95% band around a mean curve
TITLE_WIDTH = 110  # characters per title line
SEED_LINE = dict(linewidth=0.8, alpha=0.35)  # one seed's curve, behind the mean


def _style() -> None:
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.15)
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 200,
            "savefig.bbox": "tight",
            "axes.titlesize": "medium",
            "legend.fontsize": "small",
        }
    )


def _values(run: Run, column: str) -> pd.Series:
    """A history column of a run, non-finite values as NaN; RELEASED_LOSS is the released training loss."""
    if column == RELEASED_LOSS:
        return stats.released_training_loss(run.history)
    return stats.clean_history(run.history)[column]


def _epochs(run: Run) -> pd.Series:
    return stats.clean_history(run.history)["epoch"]


def _epoch_axis(ax) -> None:
    """Epochs are whole numbers: no 2.5 on the axis."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mark_divergence(ax, run: Run, column: str, color, **kwargs) -> None:
    """An x where a diverged run's curve ends (its last finite value, at its last epoch)."""
    values = _values(run, column)
    last = values.last_valid_index()
    y = values[last] if last is not None else np.nan
    ax.plot(_epochs(run).iloc[-1], y, marker="x", color=color, markersize=9, mew=2, **kwargs)


def _plot_curve(ax, run: Run, column: str, color, linestyle: str = "-", label: str | None = None) -> None:
    if run.history.empty:
        return
    suffix = "" if run.status.finished and run.status.state != "diverged" else f" ({run.status.state})"
    ax.plot(
        _epochs(run),
        _values(run, column),
        color=color,
        linestyle=linestyle,
        marker="o",
        markersize=3,
        label=(label or run_label(run)) + suffix,
    )
    if run.status.state == "diverged":
        _mark_divergence(ax, run, column, color)


def _plot_seeds(
    ax, collection: RunCollection, arch: str, width: int, column: str, color, linestyle: str = "-", label: str = ""
) -> None:
    """One network x C over its seeds: thin lines for the single seeds, the mean over the finished
    seeds and its 95% interval (``stats.curve_band``) as a band. One seed: just its line."""
    runs = [run for run in collection.runs_of(arch, width) if not run.history.empty]
    if not runs:
        return
    if len(runs) == 1:
        _plot_curve(ax, runs[0], column, color, linestyle, label=label)
        return
    for run in runs:
        ax.plot(_epochs(run), _values(run, column), color=color, linestyle=linestyle, **SEED_LINE)
        if run.status.state == "diverged":
            _mark_divergence(ax, run, column, color, alpha=0.6)
    band = stats.curve_band(runs, arch, width, column)
    cell = collection.cell_seeds_text(arch, width)
    if band.empty:  # no seed finished yet: the single lines are all there is
        ax.plot([], [], color=color, linestyle=linestyle, label=f"{label} ({cell})")
        return
    epochs = band["epoch"].to_numpy(dtype=float)
    ax.plot(
        epochs,
        band["mean"].to_numpy(dtype=float),
        color=color,
        linestyle=linestyle,
        marker="o",
        markersize=3,
        label=f"{label} (mean, {cell})",
    )
    low, high = band["ci_low"].to_numpy(dtype=float), band["ci_high"].to_numpy(dtype=float)
    if np.isfinite(low).any():
        ax.fill_between(epochs, low, high, color=color, alpha=BAND_ALPHA, linewidth=0, gid=f"band:{arch}:C={width}")


def _log_scale_if_wide(ax) -> None:
    lines = [line.get_ydata() for line in ax.get_lines()]
    values = np.concatenate([np.asarray(v, dtype=float) for v in lines]) if lines else np.array([])
    values = values[np.isfinite(values) & (values > 0)]
    if values.size and values.max() / values.min() > 20:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 40, not 4 x 10^1
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))


def _legend(ax, below: bool = False, **kwargs) -> None:
    """The axes' legend; ``below``: under the axes, where it covers no curve or band."""
    if below:
        kwargs = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.2), "frameon": False, **kwargs}
    if any(not line.get_label().startswith("_") for line in ax.get_lines()) or ax.containers:
        ax.legend(**kwargs)


def _figure_legend(fig: plt.Figure, axes, ncol: int = 3, extra=()) -> None:
    """One legend for the whole figure, under its panels: every labelled line of ``axes`` once, then
    the ``extra`` (handle, label) pairs."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if not label.startswith("_") and label not in labels:
                handles.append(handle)
                labels.append(label)
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    if handles:
        fig.legend(
            handles, labels, loc="outside lower center", ncol=min(ncol, len(handles)), frameon=False, fontsize="small"
        )


def _multi_seed(collection: RunCollection) -> bool:
    return len(collection.expected_seeds) > 1


def _title(fig: plt.Figure, what: str, collection: RunCollection, curves: bool = False) -> None:
    """Every figure says what it shows, then on a second line the dataset, profile and seeds."""
    if curves and _multi_seed(collection):
        what += (
            "\nmean over seeds, shaded: its 95% interval (log scale for losses, logit for accuracies), "
            "thin: single seeds"
        )
    lines = [textwrap.fill(line, TITLE_WIDTH) for line in f"{what}\n{collection.caption}".splitlines()]
    fig.suptitle("\n".join(lines), fontsize="medium")


def _empty_note(ax, text: str = "no runs yet") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def _networks(collection: RunCollection, networks) -> list[str]:
    return list(networks) if networks else list(collection.profile.networks)


# --- the figures ------------------------------------------------------------------------------


def _epoch_mean_differs(collection: RunCollection, networks, widths) -> bool:
    """Whether the epoch mean differs anywhere from the released loss (it does not with fewer than
    1,000 batches an epoch: the tail is then the whole epoch)."""
    for width in widths:
        for arch in networks:
            for run in collection.runs_of(arch, width):
                released, mean = _values(run, RELEASED_LOSS), _values(run, "train_loss")
                if not np.allclose(released.to_numpy(float), mean.to_numpy(float), equal_nan=True, rtol=1e-9):
                    return True
    return False


def plot_training_loss(
    collection: RunCollection, networks=None, title: str = "Training loss", epoch_mean: bool = True
) -> plt.Figure:
    """Training loss vs epoch, one panel per C (mean over seeds, 95% band), as the released notebooks
    computed it (history.csv's train_loss_tail; the epoch mean for histories without it). ``epoch_mean``:
    also draw the epoch mean over seeds, dotted, where it differs."""
    _style()
    networks = _networks(collection, networks)
    colors = _colors(collection)
    widths = collection.widths() or [0]
    fig, axes = plt.subplots(
        1, len(widths), figsize=(max(7.5, 3.6 * len(widths)), 5.2), squeeze=False, layout="constrained"
    )
    draw_mean = epoch_mean and _epoch_mean_differs(collection, networks, widths)
    for ax, width in zip(axes[0], widths):
        for arch in networks:
            _plot_seeds(ax, collection, arch, width, RELEASED_LOSS, colors[arch], label=network_label(arch))
            differs = draw_mean and _epoch_mean_differs(collection, [arch], [width])
            band = stats.curve_band(collection.runs_of(arch, width), arch, width, "train_loss") if differs else None
            if band is not None and not band.empty:
                ax.plot(band["epoch"], band["mean"], color=colors[arch], linestyle=":", linewidth=1.2, label=None)
        if draw_mean:
            ax.plot([], [], color="gray", linestyle=":", label="dotted: epoch mean")
        if not ax.get_lines():
            _empty_note(ax)
        _log_scale_if_wide(ax)
        _epoch_axis(ax)
        ax.set(title=f"C = {width}", xlabel="epoch", ylabel="training loss (released measure)")
    _figure_legend(fig, axes[0])
    without = sum(1 for run in collection.runs if not stats.has_released_loss(run.history))
    what = f"{title}\n{RELEASED_TRAINING_LOSS}"
    if not draw_mean and epoch_mean and collection.runs:
        what += " (here equal to the epoch mean: fewer than 1,000 batches an epoch)"
    if without:
        what += f"\n{without} run(s) recorded before train_loss_tail existed: their epoch mean is drawn"
    _title(fig, what, collection, curves=True)
    return fig


def final_accuracy(collection: RunCollection, arch: str, width: int) -> tuple[list[tuple[int, float]], stats.Interval]:
    """Test top-1 of the last-epoch model per finished seed [(seed, top-1)], and their mean and 95%
    interval (``stats.metric_interval``: logit scale, so within [0, 1]); a seed without a value is left out."""
    table = stats.run_table(collection.runs_of(arch, width))
    done = table[table["finished"] & table["top1_last"].notna()]
    points = list(zip(done["seed"].astype(int), done["top1_last"].astype(float)))
    return points, stats.metric_interval(done["top1_last"], "top1_last")


def _draw_released(final, x: float, arch: str, width: int, drawn: bool) -> bool:
    """The released notebooks' number as a black diamond; a truncated print (``'%d %%'``) gets a bar up to
    the next whole percent, where its true value lies."""
    released = RELEASED_NOTEBOOK_RESULTS[(arch, width)]
    bar = [[0.0], [0.01]] if released.truncated else None
    final.errorbar(
        [x],
        [released.top1],
        yerr=bar,
        fmt="D",
        color="black",
        markersize=5,
        capsize=2,
        zorder=3,
        label=None if drawn else "released notebooks (1 run; bar: printed as a whole percent, truncated)",
    )
    return True


def plot_accuracy(collection: RunCollection, networks=None, title: str = "Accuracy") -> plt.Figure:
    """Validation accuracy per epoch (mean over seeds, 95% band; line style: C), and final test top-1 per
    C: a point per seed, their mean and 95% interval (logit scale), beside the released numbers (paper
    setting only). One legend under both panels."""
    _style()
    networks = _networks(collection, networks)
    colors = _colors(collection)
    fig, (curves, final) = plt.subplots(
        1, 2, figsize=(10.0, 5.6), gridspec_kw={"width_ratios": [1.2, 1]}, layout="constrained"
    )
    widths = collection.widths()
    for arch in networks:
        for index, width in enumerate(widths):
            _plot_seeds(
                curves,
                collection,
                arch,
                width,
                "val_acc",
                colors[arch],
                WIDTH_STYLES[index % len(WIDTH_STYLES)],
                label=f"{network_label(arch)}, C={width}",
            )
    if not curves.get_lines():
        _empty_note(curves)
    _epoch_axis(curves)
    curves.set(xlabel="epoch", ylabel="validation top-1", title="validation accuracy per epoch")

    slot = 0.8 / max(1, len(networks))
    positions = np.arange(len(widths))
    rng = np.random.default_rng(0)  # a fixed jitter: the same figure from the same runs
    released_drawn = seeds_drawn = False
    for offset, arch in enumerate(networks):
        color = colors[arch]
        mean_label = network_label(arch) + (" (mean, 95% CI)" if _multi_seed(collection) else "")
        for position, width in zip(positions, widths):
            x = position + (offset - (len(networks) - 1) / 2) * slot
            points, ci = final_accuracy(collection, arch, width)
            if points:
                values = np.array([value for _, value in points])
                jitter = rng.uniform(-0.12, 0.12, len(values)) * slot if len(values) > 1 else np.zeros(1)
                final.scatter(
                    x - 0.18 * slot + jitter,
                    values,
                    s=14,
                    color=color,
                    alpha=0.55,
                    edgecolor="none",
                    zorder=2,
                    gid=f"seeds:{arch}:C={width}",
                    label=None if seeds_drawn or len(values) < 2 else "single seeds",
                )
                seeds_drawn = seeds_drawn or len(values) > 1
                error = (
                    [[ci.mean - ci.low], [ci.high - ci.mean]] if np.isfinite(ci.low) and np.isfinite(ci.high) else None
                )
                final.errorbar(
                    [x + 0.12 * slot],
                    [ci.mean],
                    yerr=error,
                    fmt="o",
                    color=color,
                    markersize=6,
                    capsize=3,
                    zorder=3,
                    label=mean_label,
                )
                mean_label = None
            paper_runs = [r for r in collection.runs_of(arch, width) if is_paper_setting(r.dataset, r.image_size)]
            if (arch, width) in RELEASED_NOTEBOOK_RESULTS and paper_runs:
                released_drawn = _draw_released(final, x + 0.38 * slot, arch, width, released_drawn)
    if not final.collections and not final.lines:
        _empty_note(final, "no test results")
    final.set_xticks(positions, [f"C = {w}" for w in widths])
    final.set_xlim(-0.5, max(0.5, len(widths) - 0.5))
    final.set(
        ylabel="test top-1 (last-epoch model)",
        title=f"final test accuracy, {seeds_text(len(collection.expected_seeds))} per network x C",
        ylim=(0, 1.05),
    )
    suffix = " (mean over seeds, 95% interval)" if _multi_seed(collection) else ""
    handles = [
        (Line2D([], [], color=colors[arch], marker="o", markersize=4), network_label(arch) + suffix)
        for arch in networks
        if collection.runs_of_network(arch)
    ]
    handles += [
        (Line2D([], [], color="gray", linestyle=WIDTH_STYLES[i % len(WIDTH_STYLES)]), f"left: C = {width}")
        for i, width in enumerate(widths)
    ]
    if seeds_drawn:
        handles.append(
            (Line2D([], [], color="gray", marker="o", linestyle="", alpha=0.55, markersize=4), "single seeds")
        )
    if released_drawn:
        handles.append(
            (
                Line2D([], [], color="black", marker="D", linestyle="", markersize=4),
                "released notebooks (1 run; bar: printed as a whole percent, truncated)",
            )
        )
    _figure_legend(fig, [], ncol=3, extra=handles)
    _title(fig, title, collection, curves=True)
    return fig


def plot_train_vs_val(
    collection: RunCollection, networks=None, title: str = "Training vs validation loss"
) -> plt.Figure:
    """Training (as released) vs validation loss for every network x C (mean over seeds, 95% band):
    the overfitting the report discusses."""
    _style()
    networks = _networks(collection, networks) or list(collection.profile.networks)
    widths = collection.widths() or [0]
    fig, axes = plt.subplots(
        len(networks),
        len(widths),
        figsize=(max(7.0, 3.3 * len(widths)), 2.7 * len(networks) + 0.9),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    for row, arch in zip(axes, networks):
        for ax, width in zip(row, widths):
            runs = collection.runs_of(arch, width)
            if not runs or all(run.history.empty for run in runs):
                _empty_note(ax, "no epoch yet" if runs else "missing")
            else:
                _plot_seeds(ax, collection, arch, width, RELEASED_LOSS, PALETTE[0], label="train")
                _plot_seeds(ax, collection, arch, width, "val_loss", PALETTE[3], "--", label="validation")
                for run in runs:
                    best = (run.test_metrics or {}).get("best")
                    if best:
                        alpha = 1.0 if len(runs) == 1 else 0.5
                        ax.axvline(best["epoch"], color="gray", linewidth=0.8, linestyle=":", alpha=alpha)
                _log_scale_if_wide(ax)
            if len(collection.expected_seeds) > 1:
                state = collection.cell_seeds_text(arch, width)
            else:
                state = runs[0].status.state if runs else "missing"
            ax.set_title(f"{network_label(arch)}, C={width}: {state}", fontsize="small")
            _epoch_axis(ax)
            ax.set(xlabel="epoch", ylabel="loss")
    _figure_legend(fig, axes.flat, ncol=2)
    _title(fig, f"{title} (dotted lines: best validation epoch of each seed)", collection, curves=True)
    return fig


def class_accuracy(collection: RunCollection, arch: str) -> pd.DataFrame:
    """Per-class test accuracy of ``arch``: per C the mean over its seeds (each seed's per_class.csv),
    then the mean over the C that have one; ``seeds`` counts the runs behind each class's mean."""
    per_width = []
    for width in sorted({run.width for run in collection.runs if run.arch == arch}):
        tables = [run.per_class for run in collection.runs_of(arch, width) if run.per_class is not None]
        if tables:
            stacked = pd.concat(tables)
            per_width.append(
                stacked.groupby(["class_index", "class_name"], as_index=False).agg(
                    accuracy=("accuracy", "mean"), seeds=("accuracy", "size")
                )
            )
    if not per_width:
        return pd.DataFrame(columns=["class_index", "class_name", "accuracy", "seeds"])
    return (
        pd.concat(per_width)
        .groupby(["class_index", "class_name"], as_index=False)
        .agg(accuracy=("accuracy", "mean"), seeds=("seeds", "sum"))
        .sort_values(["accuracy", "class_index"], ascending=[False, True])
        .reset_index(drop=True)
    )


def plot_best_worst_classes(
    collection: RunCollection, arch: str, k: int = 5, title: str = "Highest and lowest test accuracy per class"
) -> plt.Figure:
    """The k best and k worst classes of a network (per-class accuracy averaged over seeds, then over C),
    with a test image of each (the report's Figures 8 and 9)."""
    _style()
    accuracy = class_accuracy(collection, arch)
    k = max(1, min(k, len(accuracy) // 2)) if len(accuracy) >= 2 else k
    examples = next((ex for run in collection.runs if run.arch == arch and (ex := run.examples()) is not None), None)
    fig, axes = plt.subplots(2, k, figsize=(max(6.0, 1.9 * k), 5.2), squeeze=False, layout="constrained")
    groups = [("highest", accuracy.head(k)), ("lowest", accuracy.tail(k).iloc[::-1])]
    for row, (which, rows) in zip(axes, groups):
        for ax, (_, entry) in zip(row, list(rows.iterrows()) + [(None, None)] * (k - len(rows))):
            ax.set_xticks([])
            ax.set_yticks([])
            if entry is None:
                ax.axis("off")
                continue
            if examples is not None:
                matches = np.flatnonzero(examples["labels"] == entry["class_index"])
                if matches.size:
                    ax.imshow(examples["images"][matches[0]], interpolation="nearest")
            ax.set_title(f"{entry['class_name']}\n{entry['accuracy']:.0%}", fontsize="small")
        row[0].set_ylabel(f"{which}\naccuracy")
    with_classes = [run for run in collection.runs if run.arch == arch and run.per_class is not None]
    widths = sorted({run.width for run in with_classes})
    seeds = sorted({run.seed for run in with_classes})
    if accuracy.empty:
        _empty_note(axes[0][0], "no test results")
    _title(
        fig,
        f"{network_label(arch)}: {title[:1].lower() + title[1:]},\n"
        f"mean over {seeds_text(len(seeds))} ({len(with_classes)} runs with per-class results), "
        f"then over C in {widths}",
        collection,
    )
    return fig


# The function that draws each figure kind of a profile (hrsnet.profiles.FIGURE_KINDS).
FIGURE_PLOTTERS = {
    "training_loss": plot_training_loss,
    "accuracy": plot_accuracy,
    "train_vs_val": plot_train_vs_val,
    "best_worst_classes": plot_best_worst_classes,
}
if set(FIGURE_PLOTTERS) != set(FIGURE_KINDS):
    raise ImportError("hrsnet.analysis.figures needs one plot function per hrsnet.profiles.FIGURE_KINDS entry")


def figure_stems(spec: FigureSpec) -> list[str]:
    """The file names (without suffix) one FigureSpec writes: one per network for per-network kinds."""
    if spec.kind == "best_worst_classes":
        return [f"{spec.name}_{arch}" for arch in spec.networks]
    return [spec.name]


def draw_figure(collection: RunCollection, spec: FigureSpec, k: int = 5) -> list[tuple[str, plt.Figure]]:
    """(file stem, Figure) for one FigureSpec of the profile."""
    title = spec.title or spec.name
    if spec.kind == "best_worst_classes":
        return [
            (stem, plot_best_worst_classes(collection, arch, k, title))
            for stem, arch in zip(figure_stems(spec), spec.networks)
        ]
    return [(spec.name, FIGURE_PLOTTERS[spec.kind](collection, spec.networks, title))]


def results_table(collection: RunCollection) -> pd.DataFrame:
    """One row per expected run (network x C x seed): size, how it ended, and its test accuracy beside
    the released numbers (paper setting only); missing and unreadable runs have a row that says so."""
    rows = []
    for run in collection.runs:
        metrics = run.test_metrics or {}
        last, best = metrics.get("last") or {}, metrics.get("best") or {}
        finite_val = stats.clean_history(run.history)["val_loss"].dropna() if not run.history.empty else pd.Series()
        paper_run = is_paper_setting(run.dataset, run.image_size)
        released = RELEASED_NOTEBOOK_RESULTS.get((run.arch, run.width)) if paper_run else None
        rows.append(
            {
                "network": run.arch,
                "C": run.width,
                "seed": run.seed,
                "dataset": run.dataset,
                "parameters (M)": round(run.parameters / 1e6, 2) if run.parameters else np.nan,
                "epochs run": run.epochs_run,
                "status": run.status.state,
                "stop reason": run.status.reason,
                "best val loss": float(finite_val.min()) if len(finite_val) else np.nan,
                "best epoch": best.get("epoch", np.nan),
                "test top-1 (last)": last.get("top1", np.nan),
                "test top-5 (last)": last.get("top5", np.nan),
                "test top-1 (best)": best.get("top1", np.nan),
                "test top-5 (best)": best.get("top5", np.nan),
                "released top-1": released.top1 if released else np.nan,
                "released (as printed)": released_text(released) if released else "",
                "released epochs": released.epochs if released else "",
            }
        )
    cost = compute.cost_table(collection.runs).set_index("run_id") if collection.runs else None
    for row, run in zip(rows, collection.runs):  # what each run cost (hrsnet.analysis.compute)
        spent = cost.loc[run.run_id]
        row.update(
            {
                "device": spent["device"],
                "seconds": round(float(spent["seconds"]), 1),
                "images/s": round(float(spent["images_per_second"]), 1),
            }
        )
    for missing in collection.missing:
        rows.append(
            {
                "network": missing.arch,
                "C": missing.width,
                "seed": missing.seed,
                "status": "missing",
                "stop reason": f"no run directory {missing.run_id}",
            }
        )
    for run, why in collection.unreadable:
        rows.append({"network": run.arch, "C": run.width, "seed": run.seed, "status": "unreadable", "stop reason": why})
    table = pd.DataFrame(rows)
    if not table.empty:
        order = {arch: index for index, arch in enumerate(collection.profile.networks)}
        table = table.sort_values(
            ["network", "C", "seed"],
            key=lambda s: s.map(lambda name: order.get(name, len(order))) if s.name == "network" else s,
            kind="stable",
        )
    return table.reset_index(drop=True)


REPORT_TITLE = "HRNet and HRSNet: reproduction report"
HEADER_FIELDS = ("profile", "dataset", "seeds", "device", "date", "git commit")


def _dataset_text(run: Run) -> str:
    label = DATASET_LABELS.get(run.dataset, run.dataset)
    sizes = (run.config or {}).get("dataset", {})
    counts = [
        f"{sizes[key]} {what}"
        for key, what in (("train_size", "train"), ("val_size", "validation"), ("test_size", "test"))
        if sizes.get(key)
    ]
    return f"{label} at {run.image_size}x{run.image_size}" + (f" ({' / '.join(counts)} images)" if counts else "")


def _utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def run_header(collection: RunCollection) -> dict[str, str]:
    """What a reader needs before any number: profile, dataset, seeds, device, date and git commit,
    read from the runs' config.json ("environment": device, commit and whether the tree was modified)."""
    runs = collection.runs
    seeds = collection.expected_seeds
    finished = len(collection.finished)
    seed_line = (
        f"{len(seeds)} per network x C ({', '.join(map(str, seeds))}); "
        f"{finished}/{collection.expected_count} runs finished"
    )
    if finished < collection.expected_count:
        seed_line += " (see 'Runs' below)"
    written = [
        (run.run_dir / rundir.HISTORY_FILE).stat().st_mtime
        for run in runs
        if (run.run_dir / rundir.HISTORY_FILE).exists()
    ]
    date = f"report made {_utc(time.time())}"
    if written:
        first, last = _utc(min(written)), _utc(max(written))
        date += f"; runs last written {first}" + ("" if first == last else f" to {last}")
    origin = compute.provenance(runs)
    figures_commit = git_commit()
    profile = collection.profile
    commit = f"runs: {origin['commit']}" if runs else "runs: none yet"
    if runs and origin["tree modified"] not in ("no", "not recorded"):
        commit += f" (tree modified: {origin['tree modified']})"
    return {
        "title": REPORT_TITLE,
        "profile": f"{profile.name}" + (f": {profile.description}" if profile.description else ""),
        "dataset": compute.counted([_dataset_text(run) for run in runs]) if runs else "no runs yet",
        "seeds": seed_line,
        "device": origin["device"] if runs else "no runs yet",
        "date": date,
        "git commit": commit + (f"; figures: {figures_commit[:12]}" if figures_commit else ""),
    }


def header_markdown(header: dict[str, str]) -> str:
    """The report's opening: its title, then one line per field of ``run_header``."""
    lines = [f"# {header.get('title', REPORT_TITLE)}", ""]
    lines += [f"- **{name}:** {header[name]}" for name in HEADER_FIELDS if name in header]
    return "\n".join(lines) + "\n"


@dataclass
class FigureReport:
    """Everything make_all_figures wrote for one profile, and the tables behind it."""

    figures: list[Path]
    table: pd.DataFrame
    collection: RunCollection
    statistics: dict[str, Path] = field(default_factory=dict)  # the .csv / .md files written
    header: dict[str, str] = field(default_factory=dict)  # run_header: profile, dataset, seeds, device, ...
    figure_specs: dict[str, FigureSpec] = field(default_factory=dict)  # file stem -> the spec that drew it
    summary: pd.DataFrame | None = None
    paired: pd.DataFrame | None = None
    claims: pd.DataFrame | None = None
    cost: pd.DataFrame | None = None
    repeated: dict[str, str] = field(default_factory=dict)  # stats.repeated_metrics: metrics left out of tables
    left_out_comparisons: list[str] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        return next(iter(self.statistics.values())).parent if self.statistics else Path(".")

    def _statistics_text(self, name: str) -> str:
        path = self.statistics.get(name)
        return path.read_text() if path else ""

    @property
    def header_markdown(self) -> str:
        """The report's title and what it was made from (figures.json's "header")."""
        return header_markdown(self.header)

    @property
    def claims_markdown(self) -> str:
        """The claims table: each claim of the profile, its statistic, interval and verdict."""
        return self._statistics_text("claims.md")

    @property
    def summary_markdown(self) -> str:
        """Per network and C, each metric's mean and interval over seeds."""
        return self._statistics_text("summary.md")

    @property
    def paired_markdown(self) -> str:
        """The profile's comparisons, matched by seed (exploratory, Holm-adjusted)."""
        return self._statistics_text("paired.md")

    @property
    def markdown(self) -> str:
        return results_markdown(self.table, self.collection)

    def figures_of(self, kind: str) -> list[Path]:
        """The written figures of one FigureSpec kind, in the profile's order."""
        return [
            path
            for path in self.figures
            if self.figure_specs.get(path.stem, None) and self.figure_specs[path.stem].kind == kind
        ]


def results_markdown(table: pd.DataFrame, collection: RunCollection) -> str:
    """The results table as Markdown, under a line naming the dataset and profile; columns empty for
    every run (the released numbers outside the paper's setting) are left out."""
    if not table.empty:
        empty = [column for column in table.columns if table[column].replace("", np.nan).isna().all()]
        table = table.drop(columns=empty)
    return f"Results, {collection.caption}\n\n{markdown_table(table)}"


def save_figure(fig: plt.Figure, path_without_suffix: Path, pdf: bool = True) -> Path:
    """The figure as PNG (and PDF unless ``pdf`` is False), then closed; returns the PNG's path."""
    path_without_suffix.parent.mkdir(parents=True, exist_ok=True)
    png = path_without_suffix.with_suffix(".png")
    fig.savefig(png)
    if pdf:
        fig.savefig(path_without_suffix.with_suffix(".pdf"))
    plt.close(fig)
    return png


def write_statistics(collection: RunCollection, out_dir: str | Path, architecture: pd.DataFrame | None = None):
    """summary, paired, claims and cost as .csv (raw numbers, accuracies as fractions) and .md (readable)
    into ``out_dir``; returns (files written, summary, paired, claims, cost, repeated metrics, comparisons
    left out)."""
    runs, profile = collection.runs, collection.profile
    summary = stats.summary_table(runs, profile.networks)
    repeated = stats.repeated_metrics(stats.run_table(runs))
    paired = stats.paired_differences(runs, profile.comparisons)
    left_out = stats.left_out_comparisons(runs, profile.comparisons)
    claims = claim_rules.claims_table(runs, profile.claims, architecture)
    cost = compute.cost_table(runs)
    paths = {}
    paths.update(stats.write_frame(summary, stats.summary_markdown(summary, repeated), out_dir, "summary"))
    paths.update(stats.write_frame(paired, stats.paired_markdown(paired, repeated, left_out), out_dir, "paired"))
    paths.update(claim_rules.write_claims(claims, out_dir))
    paths.update(stats.write_frame(cost, compute.cost_markdown(cost), out_dir, "cost"))
    return paths, summary, paired, claims, cost, repeated, left_out


def make_all_figures(
    results_dir: str | Path,
    figures_dir: str | Path,
    profile: str | Path | Profile,
    data_dir: str | Path | None = None,
    k: int = 5,
    seeds: int | None = None,
    architecture: pd.DataFrame | None = None,
    pdf: bool = True,
) -> FigureReport:
    """Every figure the profile declares, the results table and the statistics into
    ``figures_dir/<profile>/``; ``seeds``: None for the profile's seeds, N for seeds 0..N-1;
    ``architecture``: parameter counts for the parameter claim (computed when None)."""
    collection = collect_runs(results_dir, profile, data_dir, seeds=seeds)
    out = Path(figures_dir) / collection.name
    figures, specs = [], {}
    for spec in collection.profile.figures:
        for stem, fig in draw_figure(collection, spec, k):
            figures.append(save_figure(fig, out / stem, pdf))
            specs[stem] = spec
    table = results_table(collection)
    rundir.atomic_write(out / "results_table.csv", lambda stream: table.to_csv(stream, index=False))
    rundir.atomic_write(
        out / "results_table.md", lambda stream: stream.write(results_markdown(table, collection) + "\n")
    )
    header = run_header(collection)
    paths, summary, paired, claims, cost, repeated, left_out = write_statistics(collection, out, architecture)
    rundir.write_json(
        out / "figures.json",
        {
            "profile": collection.name,
            "caption": collection.caption,
            "seeds": list(collection.expected_seeds),
            "header": header,
            "figures": [p.name for p in figures],
            "figure_kinds": {stem: spec.kind for stem, spec in specs.items()},
            "missing": [m.run_id for m in collection.missing],
            "partial": [r.run_id for r in collection.partial],
            "unreadable": {run.run_id: why for run, why in collection.unreadable},
        },
    )
    return FigureReport(
        figures, table, collection, paths, header, specs, summary, paired, claims, cost, repeated, left_out
    )


def plot_run_curves(run_dir: str | Path) -> plt.Figure:
    """Loss and accuracy of one run per epoch (the training notebook's closing display)."""
    _style()
    run = load_run(Path(run_dir))
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(8, 3.2), layout="constrained")
    if run is None or run.history.empty:
        _empty_note(loss, "no epoch yet")
        return fig
    _plot_curve(loss, run, "train_loss", PALETTE[0], label="train")
    _plot_curve(loss, run, "val_loss", PALETTE[3], "--", label="validation")
    _log_scale_if_wide(loss)
    _plot_curve(acc, run, "train_acc", PALETTE[0], label="train")
    _plot_curve(acc, run, "val_acc", PALETTE[3], "--", label="validation")
    loss.set(xlabel="epoch", ylabel="loss")
    acc.set(xlabel="epoch", ylabel="top-1", ylim=(0, 1))
    _epoch_axis(loss)
    _epoch_axis(acc)
    _legend(loss)
    _legend(acc)
    fig.suptitle(
        f"{run_label(run)}, seed {run.seed}: {run.status.state} "
        f"({DATASET_LABELS.get(run.dataset, run.dataset)}, {run.image_size}px)"
    )
    return fig
