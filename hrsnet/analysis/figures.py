"""The report's figures and results table, from run directories only (see hrsnet.rundir).

One function per figure; each takes the loaded runs and a caption context, returns a
matplotlib Figure, and ``make_all_figures`` writes them as PNG and PDF. A profile trains every
network x C with several seeds: curves are the mean over the finished seeds with a 95% band
(``hrsnet.stats.curve_band``) over thin lines for the single seeds; final accuracies are points
per seed beside their mean and 95% interval. Missing, partial, diverged and failed runs are
drawn from whatever epochs they have and marked as such; every title states the seeds.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, not windows; notebooks still display the returned figures
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from .. import data, rundir
from ..models import PRESETS
from ..profiles import PROFILES
from ..provenance import git_commit
from ..rundir import Run
from . import stats
from .collect import RunCollection, collect_runs, load_run
from .paper import RELEASED_NOTEBOOK_RESULTS, is_paper_setting
from .tables import markdown_table, seeds_text

NETWORK_LABELS = {name: preset.label for name, preset in PRESETS.items()}  # in report order
DATASET_LABELS = data.DATASET_LABELS
PALETTE = sns.color_palette("colorblind")
NETWORK_COLORS = {"hrnet": PALETTE[0], "hrsnet": PALETTE[1], "hrnet_official": PALETTE[2]}
WIDTH_STYLES = ["-", "--", ":", "-."]


def run_label(run: Run) -> str:
    return f"{NETWORK_LABELS.get(run.arch, run.arch)}, C={run.width}"


# --- drawing helpers ------------------------------------------------------------------------

BAND_ALPHA = 0.22  # the 95% band around a mean curve
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


def _finite(series: pd.Series) -> pd.Series:
    return series.where(np.isfinite(series.astype(float)))


def _epoch_axis(ax) -> None:
    """Epochs are whole numbers: no 2.5 on the axis."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mark_divergence(ax, run: Run, column: str, color, **kwargs) -> None:
    """An x where a diverged run's curve ends (its last finite value, at its last epoch)."""
    values = _finite(run.history[column])
    last = values.last_valid_index()
    y = values[last] if last is not None else np.nan
    ax.plot(run.history["epoch"].iloc[-1], y, marker="x", color=color, markersize=9, mew=2, **kwargs)


def _plot_curve(ax, run: Run, column: str, color, linestyle: str = "-", label: str | None = None) -> None:
    history = run.history
    if history.empty:
        return
    values = _finite(history[column])
    suffix = "" if run.status.finished and run.status.state != "diverged" else f" ({run.status.state})"
    ax.plot(
        history["epoch"],
        values,
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
    seeds and its 95% t-interval (``stats.curve_band``) as a band. One seed: just its line."""
    runs = [run for run in collection.runs_of(arch, width) if not run.history.empty]
    if not runs:
        return
    if len(runs) == 1:
        _plot_curve(ax, runs[0], column, color, linestyle, label=label)
        return
    for run in runs:
        ax.plot(run.history["epoch"], _finite(run.history[column]), color=color, linestyle=linestyle, **SEED_LINE)
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


def _legend(ax, below: bool = False, **kwargs) -> None:
    """The axes' legend; ``below``: under the axes, where it covers no curve or band."""
    if below:
        kwargs = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.2), "frameon": False, **kwargs}
    if any(not line.get_label().startswith("_") for line in ax.get_lines()) or ax.containers:
        ax.legend(**kwargs)


def _multi_seed(collection: RunCollection) -> bool:
    return len(collection.expected_seeds) > 1


def _title(fig: plt.Figure, what: str, collection: RunCollection, curves: bool = False) -> None:
    """Every figure says what it shows, then on a second line the dataset, profile and seeds."""
    if curves and _multi_seed(collection):
        what += "\nmean over seeds, shaded: 95% t-interval, thin lines: single seeds"
    fig.suptitle(f"{what}\n{collection.caption}", fontsize="medium")


def _empty_note(ax, text: str = "no runs yet") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


# --- the figures ------------------------------------------------------------------------------


def plot_train_loss(collection: RunCollection, networks=("hrnet", "hrsnet")) -> plt.Figure:
    """Figure 7: training loss vs epoch, HRNet vs HRSNet, one panel per C (mean over seeds, 95% band)."""
    _style()
    widths = collection.widths() or [0]
    fig, axes = plt.subplots(
        1, len(widths), figsize=(max(7.0, 3.4 * len(widths)), 4.2), squeeze=False, layout="constrained"
    )
    for ax, width in zip(axes[0], widths):
        for arch in networks:
            _plot_seeds(ax, collection, arch, width, "train_loss", NETWORK_COLORS[arch], label=NETWORK_LABELS[arch])
        if not ax.get_lines():
            _empty_note(ax)
        _log_scale_if_wide(ax)
        _epoch_axis(ax)
        ax.set(title=f"C = {width}", xlabel="epoch", ylabel="training loss")
        _legend(ax, below=True)
    _title(fig, "Training loss, HRNet vs HRSNet (the report's Figure 7)", collection, curves=True)
    return fig


def plot_official_vs_preactivated(collection: RunCollection) -> plt.Figure:
    """The report's claim without a figure: original HRNet vs the pre-activated re-implementation."""
    fig = plot_train_loss(collection, networks=("hrnet_official", "hrnet"))
    _title(fig, "Training loss, original HRNet vs the pre-activated re-implementation", collection, curves=True)
    return fig


def final_accuracy(collection: RunCollection, arch: str, width: int) -> tuple[list[tuple[int, float]], stats.Interval]:
    """Test top-1 of the last-epoch model per finished seed [(seed, top-1)], and their mean and
    95% t-interval (``stats.mean_ci``); a seed without a finite value is left out."""
    table = stats.run_table(collection.runs_of(arch, width))
    done = table[table["finished"] & table["top1_last"].notna()]
    return list(zip(done["seed"].astype(int), done["top1_last"].astype(float))), stats.mean_ci(done["top1_last"])


def plot_accuracy(collection: RunCollection, networks=("hrnet", "hrsnet")) -> plt.Figure:
    """Figure 6: validation accuracy per epoch (mean over seeds, 95% band), and final test top-1 per C:
    a point per seed, their mean and 95% interval, beside the released numbers (paper setting only)."""
    _style()
    fig, (curves, final) = plt.subplots(
        1, 2, figsize=(10.0, 5.0), gridspec_kw={"width_ratios": [1.3, 1]}, layout="constrained"
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
                NETWORK_COLORS[arch],
                WIDTH_STYLES[index % len(WIDTH_STYLES)],
                label=f"{NETWORK_LABELS[arch]}, C={width}",
            )
    if not curves.get_lines():
        _empty_note(curves)
    _epoch_axis(curves)
    curves.set(xlabel="epoch", ylabel="validation top-1", title="validation accuracy per epoch")
    _legend(curves, below=True, ncol=2, fontsize="x-small")

    slot = 0.8 / len(networks)
    positions = np.arange(len(widths))
    rng = np.random.default_rng(0)  # a fixed jitter: the same figure from the same runs
    released_drawn = seeds_drawn = False
    for offset, arch in enumerate(networks):
        color = NETWORK_COLORS[arch]
        mean_label = NETWORK_LABELS[arch] + (" (mean, 95% CI)" if _multi_seed(collection) else "")
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
                final.annotate(
                    f"{ci.mean:.1%}\nn={ci.n}",
                    (x + 0.12 * slot, ci.mean),
                    xytext=(4, 0),
                    textcoords="offset points",
                    ha="left",
                    va="center",
                    fontsize="xx-small",
                )
            released = RELEASED_NOTEBOOK_RESULTS.get((arch, width))
            paper_runs = [
                run for run in collection.runs_of(arch, width) if is_paper_setting(run.dataset, run.image_size)
            ]
            if released and paper_runs:
                final.scatter(
                    [x + 0.38 * slot],
                    [released[0]],
                    marker="D",
                    s=24,
                    color="black",
                    zorder=3,
                    label=None if released_drawn else "released notebooks (1 run)",
                )
                released_drawn = True
    if not final.collections and not final.lines:
        _empty_note(final, "no test results")
    final.set_xticks(positions, [f"C = {w}" for w in widths])
    final.set(
        ylabel="test top-1 (last-epoch model)",
        title=f"final test accuracy, {seeds_text(len(collection.expected_seeds))} per network x C",
        ylim=(0, 1.05),
    )
    _legend(final, below=True, ncol=2, fontsize="x-small")
    _title(fig, "HRNet vs HRSNet accuracy (the report's Figure 6)", collection, curves=True)
    return fig


def plot_train_vs_val(collection: RunCollection) -> plt.Figure:
    """Training vs validation loss for every network x C (mean over seeds, 95% band): the overfitting
    the report discusses."""
    _style()
    present = {run.arch for run in collection.runs} | {missing.arch for missing in collection.missing}
    networks = [arch for arch in NETWORK_LABELS if arch in present] or ["hrnet"]
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
                _plot_seeds(ax, collection, arch, width, "train_loss", PALETTE[0], label="train")
                _plot_seeds(ax, collection, arch, width, "val_loss", PALETTE[3], "--", label="validation")
                for run in runs:
                    best = (run.test_metrics or {}).get("best")
                    if best:
                        alpha = 1.0 if len(runs) == 1 else 0.5
                        ax.axvline(best["epoch"], color="gray", linewidth=0.8, linestyle=":", alpha=alpha)
                _log_scale_if_wide(ax)
                _legend(ax, fontsize="x-small")
            if len(collection.expected_seeds) > 1:
                state = collection.cell_seeds_text(arch, width)
            else:
                state = runs[0].status.state if runs else "missing"
            ax.set_title(f"{NETWORK_LABELS[arch]}, C={width}: {state}", fontsize="small")
            _epoch_axis(ax)
            ax.set(xlabel="epoch", ylabel="loss")
    _title(
        fig, "Training vs validation loss (dotted lines: best validation epoch of each seed)", collection, curves=True
    )
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


def plot_best_worst_classes(collection: RunCollection, arch: str, k: int = 5) -> plt.Figure:
    """Figures 8 and 9: the k best and k worst classes of a network (per-class accuracy averaged over
    seeds, then over C), with a test image of each."""
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
        f"{NETWORK_LABELS.get(arch, arch)}: highest and lowest test accuracy per class (Figures 8, 9),\n"
        f"mean over {seeds_text(len(seeds))} ({len(with_classes)} runs with per-class results), "
        f"then over C in {widths}",
        collection,
    )
    return fig


def results_table(collection: RunCollection) -> pd.DataFrame:
    """One row per expected run (network x C x seed): size, how it ended, and its test accuracy beside
    the released numbers; missing and unreadable runs have a row that says so."""
    rows = []
    for run in collection.runs:
        metrics = run.test_metrics or {}
        last, best = metrics.get("last") or {}, metrics.get("best") or {}
        finite_val = (
            run.history["val_loss"][np.isfinite(run.history["val_loss"].astype(float))]
            if not run.history.empty
            else pd.Series(dtype=float)
        )
        paper_run = is_paper_setting(run.dataset, run.image_size)
        released = RELEASED_NOTEBOOK_RESULTS.get((run.arch, run.width)) if paper_run else None
        rows.append(
            {
                "network": run.arch,
                "C": run.width,
                "seed": run.seed,
                "dataset": run.dataset,
                "parameters (M)": round(run.parameters / 1e6, 2),
                "epochs run": run.epochs_run,
                "status": run.status.state,
                "stop reason": run.status.reason,
                "best val loss": float(finite_val.min()) if len(finite_val) else np.nan,
                "best epoch": best.get("epoch", np.nan),
                "test top-1 (last)": last.get("top1", np.nan),
                "test top-5 (last)": last.get("top5", np.nan),
                "test top-1 (best)": best.get("top1", np.nan),
                "test top-5 (best)": best.get("top5", np.nan),
                "released top-1": released[0] if released else np.nan,
                "released epochs": released[1] if released else "",
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
        order = {arch: index for index, arch in enumerate(NETWORK_LABELS)}
        table = table.sort_values(
            ["network", "C", "seed"], key=lambda s: s.map(order) if s.name == "network" else s, kind="stable"
        )
    return table.reset_index(drop=True)


REPORT_TITLE = "HRNet and HRSNet: reproduction report"
HEADER_FIELDS = ("profile", "dataset", "seeds", "device", "date", "git commit")


def _counted(values: list[str]) -> str:
    """'a' when every run agrees, else 'a (12 runs), b (6 runs)'."""
    counts = pd.Series(values, dtype=object).value_counts(sort=True)
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{value} ({count} run{'s' if count != 1 else ''})" for value, count in counts.items())


def _device_text(environment: dict) -> str:
    device, name = str(environment.get("device") or ""), environment.get("device_name")
    if device.startswith("cuda"):
        return str(name or device)
    threads = environment.get("cpu_threads")
    cpu = "CPU" if name in (None, "", "cpu") else f"CPU ({name})"
    return cpu + (f", {threads} thread{'' if threads == 1 else 's'}" if threads else "")


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
    read from the runs' config.json ("environment": device and commit of each run)."""
    runs = collection.runs
    environments = [(run.config or {}).get("environment") or {} for run in runs]
    commits = [str(env["git_commit"])[:12] for env in environments if env.get("git_commit")]
    devices = [_device_text(env) for env in environments if env]
    written = [
        (run.run_dir / rundir.HISTORY_FILE).stat().st_mtime
        for run in runs
        if (run.run_dir / rundir.HISTORY_FILE).exists()
    ]
    seeds = collection.expected_seeds
    finished = len(collection.finished)
    seed_line = (
        f"{len(seeds)} per network x C ({', '.join(map(str, seeds))}); "
        f"{finished}/{collection.expected_count} runs finished"
    )
    if finished < collection.expected_count:
        seed_line += " (see 'Runs' below)"
    date = f"report made {_utc(time.time())}"
    if written:
        first, last = _utc(min(written)), _utc(max(written))
        date += f"; runs last written {first}" + ("" if first == last else f" to {last}")
    figures_commit = git_commit()
    profile = PROFILES.get(collection.profile)
    return {
        "title": REPORT_TITLE,
        "profile": f"{collection.profile}" + (f": {profile.description}" if profile else ""),
        "dataset": _counted([_dataset_text(run) for run in runs]) if runs else "no runs yet",
        "seeds": seed_line,
        "device": _counted(devices) if devices else "not recorded in the runs' config.json",
        "date": date,
        "git commit": (f"runs: {_counted(commits)}" if commits else "runs: not recorded")
        + (f"; figures: {figures_commit[:12]}" if figures_commit else ""),
    }


def header_markdown(header: dict[str, str]) -> str:
    """The report's opening: its title, then one line per field of ``run_header``."""
    lines = [f"# {header.get('title', REPORT_TITLE)}", ""]
    lines += [f"- **{name}:** {header[name]}" for name in HEADER_FIELDS if name in header]
    return "\n".join(lines) + "\n"


@dataclass
class FigureReport:
    figures: list[Path]
    table: pd.DataFrame
    collection: RunCollection
    statistics: dict[str, Path] = field(default_factory=dict)  # hrsnet.stats.write_statistics's files
    header: dict[str, str] = field(default_factory=dict)  # run_header: profile, dataset, seeds, device, ...

    def _statistics_text(self, name: str) -> str:
        path = self.statistics.get(name)
        return path.read_text() if path else ""

    @property
    def header_markdown(self) -> str:
        """The report's title and what it was made from (figures.json's "header")."""
        return header_markdown(self.header)

    @property
    def claims_markdown(self) -> str:
        """The claims table (hrsnet.stats): each claim of the report, its statistic, interval and verdict."""
        return self._statistics_text("claims.md")

    @property
    def summary_markdown(self) -> str:
        """Per network and C, each metric's mean and 95% interval over seeds (hrsnet.stats)."""
        return self._statistics_text("summary.md")

    @property
    def paired_markdown(self) -> str:
        """HRSNet - HRNet and HRNet - original HRNet, matched by seed (hrsnet.stats)."""
        return self._statistics_text("paired.md")

    @property
    def markdown(self) -> str:
        return results_markdown(self.table, self.collection)


def results_markdown(table: pd.DataFrame, collection: RunCollection) -> str:
    """The results table as Markdown, under a line naming the dataset and profile."""
    return f"Results, {collection.caption}\n\n{markdown_table(table)}"


def save_figure(fig: plt.Figure, path_without_suffix: Path) -> Path:
    path_without_suffix.parent.mkdir(parents=True, exist_ok=True)
    png = path_without_suffix.with_suffix(".png")
    fig.savefig(png)
    fig.savefig(path_without_suffix.with_suffix(".pdf"))
    plt.close(fig)
    return png


def make_all_figures(
    results_dir: str | Path,
    figures_dir: str | Path,
    profile: str,
    data_dir: str | Path | None = None,
    k: int = 5,
    seeds: int | None = None,
) -> FigureReport:
    """Every figure, the results table and the statistics of ``profile`` into ``figures_dir/<profile>/``;
    ``seeds``: None for the profile's seeds, N for seeds 0..N-1."""
    collection = collect_runs(results_dir, profile, data_dir, seeds=seeds)
    out = Path(figures_dir) / collection.profile
    figures = [
        save_figure(plot_accuracy(collection), out / "fig6_accuracy"),
        save_figure(plot_train_loss(collection), out / "fig7_train_loss"),
        save_figure(plot_official_vs_preactivated(collection), out / "official_vs_preactivated_loss"),
        save_figure(plot_train_vs_val(collection), out / "train_vs_val_loss"),
    ]
    for arch in NETWORK_LABELS:
        figures.append(
            save_figure(plot_best_worst_classes(collection, arch, k), out / f"fig8_9_best_worst_classes_{arch}")
        )
    table = results_table(collection)
    rundir.atomic_write(out / "results_table.csv", lambda stream: table.to_csv(stream, index=False))
    rundir.atomic_write(
        out / "results_table.md", lambda stream: stream.write(results_markdown(table, collection) + "\n")
    )
    header = run_header(collection)
    rundir.write_json(
        out / "figures.json",
        {
            "profile": collection.profile,
            "caption": collection.caption,
            "seeds": list(collection.expected_seeds),
            "header": header,
            "figures": [p.name for p in figures],
            "missing": [m.run_id for m in collection.missing],
            "partial": [r.run_id for r in collection.partial],
            "unreadable": {run.run_id: why for run, why in collection.unreadable},
        },
    )
    statistics = stats.write_statistics(collection.runs, out)
    return FigureReport(figures, table, collection, statistics, header)


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
