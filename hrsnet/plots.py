"""The report's figures and results table, from run directories only (see hrsnet.rundir).

One function per figure; each takes the loaded runs and a caption context, returns a
matplotlib Figure, and ``make_all_figures`` writes them as PNG and PDF. Missing, partial,
diverged and failed runs are drawn from whatever epochs they have and marked as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, not windows; notebooks still display the returned figures
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import data, rundir, stats
from .models import PRESETS
from .paper import RELEASED_NOTEBOOK_RESULTS, is_paper_setting
from .rundir import Run
from .tables import markdown_table

NETWORK_LABELS = {name: preset.label for name, preset in PRESETS.items()}  # in report order
DATASET_LABELS = data.DATASET_LABELS
PALETTE = sns.color_palette("colorblind")
NETWORK_COLORS = {"hrnet": PALETTE[0], "hrsnet": PALETTE[1], "hrnet_official": PALETTE[2]}
WIDTH_STYLES = ["-", "--", ":", "-."]


def run_label(run: Run) -> str:
    return f"{NETWORK_LABELS.get(run.arch, run.arch)}, C={run.width}"


def load_run(run_dir: Path) -> Run | None:
    """A run directory, read back, or None if it has no config yet."""
    run = rundir.read_run(run_dir)
    return run if run.config is not None else None


@dataclass(frozen=True)
class MissingRun:
    run_id: str
    arch: str
    width: int


@dataclass
class RunCollection:
    """The runs a profile expects: those found, and the ids of the missing ones."""

    profile: str
    runs: list[Run]
    missing: list[MissingRun] = field(default_factory=list)  # expected, no run directory yet
    unreadable: list[tuple[MissingRun, str]] = field(default_factory=list)  # (the run, why it was left out)

    @property
    def partial(self) -> list[Run]:
        return [run for run in self.runs if not run.status.finished]

    @property
    def caption(self) -> str:
        datasets = sorted({DATASET_LABELS.get(run.dataset, run.dataset) for run in self.runs}) or ["no data"]
        sizes = sorted({run.image_size for run in self.runs})
        size = f", {'/'.join(str(s) for s in sizes)}px" if sizes else ""
        return f"{', '.join(datasets)}{size}, profile '{self.profile}'"

    def widths(self) -> list[int]:
        return sorted({run.width for run in self.runs} | {missing.width for missing in self.missing})

    def find(self, arch: str, width: int) -> Run | None:
        return next((run for run in self.runs if run.arch == arch and run.width == width), None)

    def describe(self) -> str:
        """What is missing or unfinished, for the notebook's output."""
        lines = [f"{len(self.runs)} run(s) found for profile '{self.profile}'"]
        lines += [f"  missing: {missing.run_id}" for missing in self.missing]
        lines += [f"  left out, unreadable: {run.run_id} ({why})" for run, why in self.unreadable]
        lines += [f"  {run.status.state}: {run.run_id} ({run.status.reason})" for run in self.partial]
        lines += [
            f"  diverged: {run.run_id} ({run.status.reason})" for run in self.runs if run.status.state == "diverged"
        ]
        return "\n".join(lines)


def collect_runs(
    results_dir: str | Path, profile: str, data_dir: str | Path | None = None, seeds: int | None = None
) -> RunCollection:
    """Load the runs of ``profile`` (as hrsnet.experiments defines it; ``seeds`` = N: seeds 0..N-1)
    from ``results_dir/runs``."""
    from .experiments import profile_runs, resolve_profile

    name, _ = resolve_profile(profile)
    runs, missing, unreadable = [], [], []
    for config in profile_runs(name, results_dir, data_dir, seeds=seeds):
        try:
            run = load_run(Path(results_dir) / "runs" / config.run_id)
        except rundir.RunFileError as error:  # left out of the figures, listed with its reason
            unreadable.append((MissingRun(config.run_id, config.arch, config.width), str(error)))
            continue
        if run is None:
            missing.append(MissingRun(config.run_id, config.arch, config.width))
        elif (edited := _config_disagrees(run)) is not None:
            unreadable.append((MissingRun(config.run_id, config.arch, config.width), edited))
        else:
            runs.append(run)
    return RunCollection(name, runs, missing, unreadable)


def _config_disagrees(run: Run) -> str | None:
    """Why a run's config.json does not describe its run id (a hand edit), or None if it does."""
    from .config import TrainConfig, setting_names

    try:
        train = {key: value for key, value in run.config["train"].items() if key in setting_names()}
        run_id = TrainConfig.from_settings(train).run_id
    except (KeyError, TypeError, ValueError) as error:
        return f"{run.run_dir / rundir.CONFIG_FILE} is not a valid run config ({error})"
    if run_id != run.run_id:
        return f"{run.run_dir / rundir.CONFIG_FILE} describes run {run_id}, not {run.run_id} (edited by hand?)"
    return None


# --- drawing helpers ------------------------------------------------------------------------


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
        last = values.last_valid_index()
        y = values[last] if last is not None else np.nan
        ax.plot(history["epoch"].iloc[-1], y, marker="x", color=color, markersize=9, mew=2)


def _log_scale_if_wide(ax) -> None:
    lines = [line.get_ydata() for line in ax.get_lines()]
    values = np.concatenate([np.asarray(v, dtype=float) for v in lines]) if lines else np.array([])
    values = values[np.isfinite(values) & (values > 0)]
    if values.size and values.max() / values.min() > 20:
        ax.set_yscale("log")


def _legend(ax, **kwargs) -> None:
    if any(not line.get_label().startswith("_") for line in ax.get_lines()) or ax.containers:
        ax.legend(**kwargs)


def _title(fig: plt.Figure, what: str, collection: RunCollection) -> None:
    """Every figure says what it shows, then on a second line the dataset and profile."""
    fig.suptitle(f"{what}\n{collection.caption}", fontsize="medium")


def _empty_note(ax, text: str = "no runs yet") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


# --- the figures ------------------------------------------------------------------------------


def plot_train_loss(collection: RunCollection, networks=("hrnet", "hrsnet")) -> plt.Figure:
    """Figure 7: training loss vs epoch, HRNet vs HRSNet, one panel per C."""
    _style()
    widths = collection.widths() or [0]
    fig, axes = plt.subplots(
        1, len(widths), figsize=(max(7.0, 3.4 * len(widths)), 3.4), squeeze=False, layout="constrained"
    )
    for ax, width in zip(axes[0], widths):
        for arch in networks:
            run = collection.find(arch, width)
            if run is not None:
                _plot_curve(ax, run, "train_loss", NETWORK_COLORS[arch], label=NETWORK_LABELS[arch])
        if not ax.get_lines():
            _empty_note(ax)
        _log_scale_if_wide(ax)
        ax.set(title=f"C = {width}", xlabel="epoch", ylabel="training loss")
        _legend(ax)
    _title(fig, "Training loss, HRNet vs HRSNet (the report's Figure 7)", collection)
    return fig


def plot_official_vs_preactivated(collection: RunCollection) -> plt.Figure:
    """The report's claim without a figure: original HRNet vs the pre-activated re-implementation."""
    fig = plot_train_loss(collection, networks=("hrnet_official", "hrnet"))
    _title(fig, "Training loss, original HRNet vs the pre-activated re-implementation", collection)
    return fig


def plot_accuracy(collection: RunCollection, networks=("hrnet", "hrsnet")) -> plt.Figure:
    """Figure 6: validation accuracy per epoch, and final test top-1 per C, HRNet vs HRSNet."""
    _style()
    fig, (curves, bars) = plt.subplots(
        1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.4, 1]}, layout="constrained"
    )
    widths = collection.widths()
    for arch in networks:
        for index, width in enumerate(widths):
            run = collection.find(arch, width)
            if run is not None:
                _plot_curve(curves, run, "val_acc", NETWORK_COLORS[arch], WIDTH_STYLES[index % len(WIDTH_STYLES)])
    if not curves.get_lines():
        _empty_note(curves)
    curves.set(xlabel="epoch", ylabel="validation top-1", title="validation accuracy per epoch")
    _legend(curves, loc="lower right")

    bar_width = 0.8 / len(networks)
    positions = np.arange(len(widths))
    released_drawn = False
    for offset, arch in enumerate(networks):
        heights, released = [], []
        for width in widths:
            run = collection.find(arch, width)
            last = (run.test_metrics or {}).get("last") if run else None
            heights.append(last["top1"] if last else np.nan)
            paper_run = run is not None and is_paper_setting(run.dataset, run.image_size)
            released.append(RELEASED_NOTEBOOK_RESULTS.get((arch, width), (np.nan,))[0] if paper_run else np.nan)
        x = positions + (offset - (len(networks) - 1) / 2) * bar_width
        bars.bar(x, heights, bar_width, color=NETWORK_COLORS[arch], label=NETWORK_LABELS[arch])
        for xi, h in zip(x, heights):
            if np.isfinite(h):
                bars.text(xi, h, f"{h:.1%}", ha="center", va="bottom", fontsize="x-small")
        if np.isfinite(released).any():
            bars.scatter(
                x, released, marker="D", color="black", zorder=3, label=None if released_drawn else "released notebooks"
            )
            released_drawn = True
    bars.set_xticks(positions, [f"C = {w}" for w in widths])
    bars.set(ylabel="test top-1 (last-epoch model)", title="final test accuracy", ylim=(0, 1.05))
    _legend(bars, loc="upper left")
    _title(fig, "HRNet vs HRSNet accuracy (the report's Figure 6)", collection)
    return fig


def plot_train_vs_val(collection: RunCollection) -> plt.Figure:
    """Training vs validation loss for every run: the overfitting the report discusses."""
    _style()
    present = {run.arch for run in collection.runs} | {missing.arch for missing in collection.missing}
    networks = [arch for arch in NETWORK_LABELS if arch in present] or ["hrnet"]
    widths = collection.widths() or [0]
    fig, axes = plt.subplots(
        len(networks),
        len(widths),
        figsize=(max(7.0, 3.3 * len(widths)), 2.7 * len(networks) + 0.6),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    for row, arch in zip(axes, networks):
        for ax, width in zip(row, widths):
            run = collection.find(arch, width)
            if run is None or run.history.empty:
                _empty_note(ax, "missing" if run is None else "no epoch yet")
            else:
                _plot_curve(ax, run, "train_loss", PALETTE[0], label="train")
                _plot_curve(ax, run, "val_loss", PALETTE[3], "--", label="validation")
                best = (run.test_metrics or {}).get("best")
                if best:
                    ax.axvline(best["epoch"], color="gray", linewidth=0.8, linestyle=":")
                _log_scale_if_wide(ax)
                _legend(ax, fontsize="x-small")
            state = run.status.state if run else "missing"
            ax.set_title(f"{NETWORK_LABELS[arch]}, C={width}: {state}", fontsize="small")
            ax.set(xlabel="epoch", ylabel="loss")
    _title(fig, "Training vs validation loss (dotted line: best validation epoch)", collection)
    return fig


def class_accuracy(collection: RunCollection, arch: str) -> pd.DataFrame:
    """Per-class test accuracy of ``arch``, averaged over its runs (widths) that have one."""
    tables = [run.per_class for run in collection.runs if run.arch == arch and run.per_class is not None]
    if not tables:
        return pd.DataFrame(columns=["class_index", "class_name", "accuracy"])
    stacked = pd.concat(tables)
    return (
        stacked.groupby(["class_index", "class_name"], as_index=False)["accuracy"]
        .mean()
        .sort_values(["accuracy", "class_index"], ascending=[False, True])
        .reset_index(drop=True)
    )


def plot_best_worst_classes(collection: RunCollection, arch: str, k: int = 5) -> plt.Figure:
    """Figures 8 and 9: the k best and k worst classes of a network, with a test image of each."""
    _style()
    accuracy = class_accuracy(collection, arch)
    k = max(1, min(k, len(accuracy) // 2)) if len(accuracy) >= 2 else k
    examples = next((ex for run in collection.runs if run.arch == arch and (ex := run.examples()) is not None), None)
    fig, axes = plt.subplots(2, k, figsize=(max(6.0, 1.9 * k), 5.0), squeeze=False, layout="constrained")
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
    widths = sorted({run.width for run in collection.runs if run.arch == arch and run.per_class is not None})
    if accuracy.empty:
        _empty_note(axes[0][0], "no test results")
    _title(
        fig,
        f"{NETWORK_LABELS.get(arch, arch)}: highest and lowest test accuracy per class, "
        f"mean over C in {widths} (Figures 8, 9)",
        collection,
    )
    return fig


def results_table(collection: RunCollection) -> pd.DataFrame:
    """One row per expected run: size, how it ended, and its test accuracy beside the released numbers."""
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
                "status": "missing",
                "stop reason": f"no run directory {missing.run_id}",
            }
        )
    for run, why in collection.unreadable:
        rows.append({"network": run.arch, "C": run.width, "status": "unreadable", "stop reason": why})
    table = pd.DataFrame(rows)
    if not table.empty:
        order = {arch: index for index, arch in enumerate(NETWORK_LABELS)}
        table = table.sort_values(["network", "C"], key=lambda s: s.map(order) if s.name == "network" else s)
    return table.reset_index(drop=True)


@dataclass
class FigureReport:
    figures: list[Path]
    table: pd.DataFrame
    collection: RunCollection
    statistics: dict[str, Path] = field(default_factory=dict)  # hrsnet.stats.write_statistics's files

    @property
    def claims_markdown(self) -> str:
        """The claims table (hrsnet.stats): each claim of the report, its statistic, interval and verdict."""
        path = self.statistics.get("claims.md")
        return path.read_text() if path else ""

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
    results_dir: str | Path, figures_dir: str | Path, profile: str, data_dir: str | Path | None = None, k: int = 5
) -> FigureReport:
    """Every figure and the results table of ``profile`` into ``figures_dir/<profile>/``."""
    collection = collect_runs(results_dir, profile, data_dir)
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
    rundir.write_json(
        out / "figures.json",
        {
            "profile": collection.profile,
            "caption": collection.caption,
            "figures": [p.name for p in figures],
            "missing": [m.run_id for m in collection.missing],
            "partial": [r.run_id for r in collection.partial],
            "unreadable": {run.run_id: why for run, why in collection.unreadable},
        },
    )
    statistics = stats.write_statistics(collection.runs, out)
    return FigureReport(figures, table, collection, statistics)


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
    _legend(loss)
    _legend(acc)
    fig.suptitle(
        f"{run_label(run)}: {run.status.state} ({DATASET_LABELS.get(run.dataset, run.dataset)}, {run.image_size}px)"
    )
    return fig
