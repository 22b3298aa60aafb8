"""Profiles, figures, the report page and the notebooks' shape: the report from fixture runs (the notebooks
executed, and ./run_all.sh, in test_pipeline.py)."""

import ast
import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from fixture_runs import write_fixture_run

from hrsnet import profiles as experiments
from hrsnet import rundir
from hrsnet.__main__ import main
from hrsnet.analysis import claims as claim_rules
from hrsnet.analysis import figures as plots
from hrsnet.analysis import report as pages
from hrsnet.models import PRESETS, Preset

REPO = Path(__file__).resolve().parents[1]
# What every built-in profile draws (they share paper.toml's figures): one file per figure, one per
# network for the best/worst classes.
FIGURE_STEMS = [stem for spec in experiments.PROFILES["smoke"].figures for stem in plots.figure_stems(spec)]
NETWORKS = experiments.PROFILES["paper"].networks
# Parameter counts for the parameter claim, so tests need not build models on the meta device.
ARCHITECTURE = pd.DataFrame(
    {
        "network": ["hrnet", "hrnet", "hrsnet", "hrsnet"],
        "C": [2, 30, 2, 30],
        "parameters (M)": [10.15, 38.2, 10.18, 45.9],
    }
)


def label(name):
    return PRESETS[name].label


def test_paper_profile_is_the_released_protocol():
    runs = experiments.profile_runs("paper")
    assert len(runs) == 36 and len({run.run_id for run in runs}) == 36  # 4 networks x 3 C x 3 seeds
    assert {run.seed for run in runs} == {0, 1, 2}
    assert {(run.arch, run.width) for run in runs} == {(arch, width) for arch in NETWORKS for width in (2, 18, 30)}
    assert set(NETWORKS) == {"hrnet_official", "hrnet", "hrsnet", "hrsnet_skip"}
    for run in runs:
        assert (run.dataset, run.image_size, run.batch_size, run.epochs, run.patience) == ("cifar100", 224, 16, 25, 2)
        assert (run.optimizer, run.lr, run.momentum) == ("sgd", 0.005, 0.9)


def test_quick_and_smoke_profiles_are_small_and_offline(tmp_path):
    for name in ("quick", "smoke"):
        runs = experiments.profile_runs(name, data_dir=tmp_path)
        assert {run.arch for run in runs} == set(NETWORKS)
        assert all(run.dataset == "digits" and run.image_size == 32 for run in runs)
    assert all(run.epochs > run.patience for run in experiments.profile_runs("quick"))  # early stopping can act


def test_the_profile_sets_the_dataset_whatever_files_exist(tmp_path):
    """The dataset is the profile's, never chosen by which files exist: quick stays on digits with
    CIFAR-100 present, and its report says so."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(b"")
    assert {run.dataset for run in experiments.profile_runs("quick", data_dir=tmp_path)} == {"digits"}
    assert {run.dataset for run in experiments.profile_runs("paper", data_dir=tmp_path)} == {"cifar100"}


def test_auto_profile(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert experiments.resolve_profile("auto")[0] == "quick"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100")
    name, why = experiments.resolve_profile("auto")
    assert name == "paper" and "NVIDIA H100" in why


def test_bad_profile_and_only():
    with pytest.raises(ValueError, match="profile must be one of paper, quick, smoke, auto"):
        experiments.resolve_profile("fast")
    with pytest.raises(ValueError, match="matches no run of profile smoke"):
        experiments.profile_runs("smoke", only="resnet")
    assert [run.arch for run in experiments.profile_runs("smoke", only="hrsnet")] == ["hrsnet"]


def test_runs_command_lists_pending_runs(tmp_path, capsys):
    smoke = experiments.profile_runs("smoke", tmp_path)
    write_fixture_run(smoke[0], "complete", 2)
    assert main(["runs", "--profile", "smoke", "--results-dir", str(tmp_path), "--pending"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("profile: smoke")
    rows = [line.split("\t") for line in captured.out.splitlines()]
    assert [row[1] for row in rows] == [run.run_id for run in smoke[1:]]
    assert [row[0] for row in rows] == ["1", "2", "3"] and {row[-1] for row in rows} == {"start"}
    assert main(["runs", "--profile", "smoke", "--results-dir", str(tmp_path), "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(row["index"], row["state"], row["action"]) for row in listed] == [
        (0, "complete", "skip: finished"),
        (1, "new", "start"),
        (2, "new", "start"),
        (3, "new", "start"),
    ]
    assert set(listed[0]) == {"index", "run_id", "arch", "width", "seed", "state", "action"}


@pytest.fixture
def fixture_results(tmp_path):
    """Smoke-profile run directories: one complete, one diverged, one partial, one missing."""
    hrnet_official, hrnet, hrsnet, _ = experiments.profile_runs("smoke", tmp_path / "results")
    write_fixture_run(hrnet_official, "complete", 4)
    write_fixture_run(hrnet, "diverged", 3, diverge_at=3)
    write_fixture_run(hrsnet, "running", 2, with_test=False)
    return tmp_path / "results", {"complete": hrnet_official, "diverged": hrnet, "partial": hrsnet}


def test_figures_and_page_from_fixture_runs(fixture_results, tmp_path):
    """make_report as the figures notebook calls it (parameter counts from the models), at full resolution
    and with the PDFs: every figure, the tables and the page, which shows each figure once and names the
    runs that did not finish. (The notebook itself runs in test_pipeline.py's end-to-end test.)"""
    results, runs = fixture_results
    page = pages.make_report(results, tmp_path / "figures", "smoke")
    report = page.figures
    assert [path.stem for path in report.figures] == FIGURE_STEMS
    for stem in FIGURE_STEMS:
        for suffix in (".png", ".pdf"):
            path = tmp_path / "figures" / "smoke" / f"{stem}{suffix}"
            assert path.stat().st_size > 5000, path
    table = pd.read_csv(tmp_path / "figures" / "smoke" / "results_table.csv")
    assert list(table["status"]) == ["complete", "diverged", "running", "missing"]
    assert table.loc[1, "stop reason"].startswith("non-finite training loss")
    assert pd.isna(table.loc[1, "test top-1 (last)"]) and table.loc[1, "test top-1 (best)"] == 0.55
    assert "profile 'smoke'" in (tmp_path / "figures" / "smoke" / "results_table.md").read_text()
    description = report.collection.describe()
    assert "running: " + runs["partial"].run_id in description and "diverged: " + runs["diverged"].run_id in description
    written = {path.name for path in (tmp_path / "figures" / "smoke").iterdir()}
    assert {"summary.md", "paired.md", "claims.md", "cost.md", "cost.csv", "figures.json", "report.md"} <= written
    # What the notebook displays (display_blocks): each figure once, as an image; the runs' states in words
    blocks = [*page.front, *page.claims, *page.details]
    assert sorted(block.image.stem for block in blocks if block.image is not None) == sorted(FIGURE_STEMS)
    shown = "\n".join(block.markdown for block in blocks if block.image is None and block.markdown)
    assert f"running: {runs['partial'].run_id}" in shown and f"diverged: {runs['diverged'].run_id}" in shown
    assert "Not the paper's setting" in shown
    (counted,) = report.claims[report.claims["kind"] == "parameters"].itertuples(index=False)
    assert counted.verdict != claim_rules.LEFT_OUT and "architecture table has no C" not in counted.note


def test_missing_runs_are_listed_and_figures_still_render(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "save_figure", _save_small_png)  # each figure still drawn, at a low resolution
    report = plots.make_all_figures(tmp_path / "empty", tmp_path / "figures", "quick", architecture=ARCHITECTURE)
    assert len(report.collection.missing) == 24 and set(report.table["status"]) == {"missing"}
    assert all(path.stat().st_size > 0 for path in report.figures)
    assert "missing: hrnet_official_c2" in report.collection.describe()
    left_out = report.claims[report.claims["verdict"] == claim_rules.LEFT_OUT]
    assert len(left_out) == len(report.claims) - 1  # all but the parameter count, which needs no run
    assert left_out["note"].str.startswith("no finished runs of").all()


def test_captions_name_dataset_and_profile(fixture_results):
    results, _ = fixture_results
    collection = plots.collect_runs(results, "smoke")
    assert collection.caption == "sklearn digits (not CIFAR-100), 32px, profile 'smoke', 1 seed, 2/4 runs finished"
    assert collection.profile is not None and collection.profile.name == "smoke"  # the loaded Profile
    fig = plots.plot_training_loss(collection)
    assert "profile 'smoke'" in fig._suptitle.get_text() and "digits" in fig._suptitle.get_text()
    assert "1 seed" in fig._suptitle.get_text()


def test_released_numbers_only_beside_paper_runs(tmp_path):
    paper = experiments.run_config("paper", "hrsnet", 30, tmp_path)
    write_fixture_run(paper, "early-stopped", 10, num_classes=100)
    table = plots.results_table(plots.collect_runs(tmp_path, "paper"))
    row = table[(table["network"] == "hrsnet") & (table["C"] == 30)].iloc[0]
    assert row["released top-1"] == 0.5541 and row["released epochs"] == "10 (early stop)"
    assert row["released (as printed)"] == "55.41%"
    hrnet = experiments.run_config("paper", "hrnet", 2, tmp_path)
    write_fixture_run(hrnet, "early-stopped", 10, num_classes=100)
    table = plots.results_table(plots.collect_runs(tmp_path, "paper"))
    row = table[(table["network"] == "hrnet") & (table["C"] == 2)].iloc[0]
    assert row["released (as printed)"] == "60% (printed as a whole percent, truncated)"
    smoke = plots.results_table(plots.collect_runs(tmp_path, "smoke"))
    assert smoke["released top-1"].isna().all() if "released top-1" in smoke else True


# --- several seeds ------------------------------------------------------------------------------

SEEDS = (0, 1, 2)
EPOCHS = 4
BASE_LOSS = {"hrnet_official": 3.0, "hrnet": 2.0, "hrsnet": 1.5, "hrsnet_skip": 1.4}
TOP1 = {0: 0.40, 1: 0.50, 2: 0.75}  # per seed, every network x C
ENVIRONMENT = {
    "device": "cuda:0",
    "device_name": "NVIDIA H100 80GB HBM3",
    "git_commit": "0123456789abcdef" * 2,
    "git_modified": True,
    "torch": "2.5.1",
    "python": "3.11.7",
}


def _train_loss(arch: str, seed: int) -> list[float]:
    """Known per-epoch values: seed s is the base curve times 1.2^s (the mean of the logs: base x 1.2)."""
    return [BASE_LOSS[arch] / epoch * 1.2**seed for epoch in range(1, EPOCHS + 1)]


# Per-class accuracy of hrnet (4 classes): seed 0 alone ranks class 0 first, the mean over seeds class 1.
HRNET_CLASSES = {0: [1.0, 0.9, 0.2, 0.1], 1: [0.3, 0.8, 0.2, 0.1], 2: [0.3, 0.8, 0.2, 0.1]}


def _write_seeds(results, data_dir, seeds=SEEDS, skip=(), state=None, profile="quick"):
    """Every run of ``profile`` for ``seeds``, with the known values above; ``skip``: run ids left out,
    ``state``: {run id: state} for runs that did not finish."""
    for config in experiments.profile_runs(profile, results, data_dir, seeds=len(seeds)):
        if config.run_id in skip:
            continue
        run_state = (state or {}).get(config.run_id, "complete")
        write_fixture_run(
            config,
            run_state,
            EPOCHS,
            num_classes=4,
            with_test=run_state == "complete",
            train_loss=_train_loss(config.arch, config.seed),
            val_acc=[0.1 * epoch + 0.05 * config.seed for epoch in range(1, EPOCHS + 1)],
            top1_last=TOP1[config.seed],
            class_accuracy=HRNET_CLASSES[config.seed] if config.arch == "hrnet" else [0.5, 0.6, 0.7, 0.8],
            environment=ENVIRONMENT,
        )


@pytest.fixture
def seed_results(tmp_path):
    """The quick profile (4 networks x C in {2, 8}) with 3 finished seeds each, known values."""
    results = tmp_path / "results"
    _write_seeds(results, tmp_path)
    return results, tmp_path


def _axis_of(fig, title):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def plt_close(fig):
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_loss_curves_are_the_seed_mean_with_a_range_respecting_band(seed_results):
    from matplotlib.collections import PolyCollection
    from scipy import stats as scipy_stats

    results, data_dir = seed_results
    collection = plots.collect_runs(results, "quick", data_dir)
    assert [run.seed for run in collection.runs_of("hrnet", 2)] == [0, 1, 2]
    fig = plots.plot_training_loss(collection, ("hrnet", "hrsnet"), "Figure 7")
    ax = _axis_of(fig, "C = 2")
    half = scipy_stats.t.ppf(0.975, 2) * np.log(1.2) / 3**0.5  # the logs' sd is log(1.2) over 3 seeds
    for arch in ("hrnet", "hrsnet"):
        mean = next(line for line in ax.get_lines() if line.get_label() == f"{label(arch)} (mean, 3 seeds)")
        assert list(mean.get_xdata()) == [1, 2, 3, 4]
        expected = [np.mean([BASE_LOSS[arch] / epoch * 1.2**seed for seed in SEEDS]) for epoch in range(1, 5)]
        assert mean.get_ydata() == pytest.approx(expected)
        band = next(c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid() == f"band:{arch}:C=2")
        vertices = band.get_paths()[0].vertices
        for epoch in range(1, EPOCHS + 1):
            center = BASE_LOSS[arch] / epoch * 1.2  # exp(mean of the logs)
            ys = vertices[vertices[:, 0] == epoch, 1]
            assert (ys.min(), ys.max()) == pytest.approx((center * np.exp(-half), center * np.exp(half)))
            assert ys.min() > 0
    faint = [line for line in ax.get_lines() if line.get_label().startswith("_") and line.get_alpha() == 0.35]
    assert len(faint) == 6  # one thin line per seed and network
    assert all(float(tick).is_integer() for tick in ax.get_xticks())  # whole epochs only
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "3 seeds" in title and "95% interval" in title and "after the last multiple of 1,000" in title
    assert "here equal to the epoch mean" in title  # the fixture's tail is the epoch mean
    assert fig.legends and not any(ax.get_legend() for ax in fig.axes)  # one legend for the figure
    plt_close(fig)


def test_training_loss_draws_the_released_measure_and_the_mean(tmp_path):
    """Figure 7 draws train_loss_tail; the epoch mean, where it differs, dotted; a history without the
    column (an older run) falls back to its mean and the title says so."""
    results = tmp_path / "results"
    configs = experiments.profile_runs("smoke", results)
    write_fixture_run(configs[1], "complete", 3, train_loss=[3.0, 2.0, 1.0], train_loss_tail=[2.5, 1.5, 0.5])
    write_fixture_run(configs[2], "complete", 3, train_loss=[3.0, 2.0, 1.0], columns=rundir.HISTORY_COLUMNS_BEFORE_TAIL)
    collection = plots.collect_runs(results, "smoke")
    fig = plots.plot_training_loss(collection, ("hrnet", "hrsnet"))
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines[f"{label('hrnet')}"].get_ydata()) == [2.5, 1.5, 0.5]  # the released measure
    assert list(lines[f"{label('hrsnet')}"].get_ydata()) == [3.0, 2.0, 1.0]  # no column: the epoch mean
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":" and len(line.get_xdata())]
    assert [list(line.get_ydata()) for line in dotted] == [[3.0, 2.0, 1.0]]  # hrnet's epoch mean only
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "1 run(s) recorded before train_loss_tail existed" in title
    plt_close(fig)


def test_final_accuracy_points_per_seed_with_mean_and_interval(seed_results):
    results, data_dir = seed_results
    collection = plots.collect_runs(results, "quick", data_dir)
    points, ci = plots.final_accuracy(collection, "hrsnet", 8)
    assert points == [(0, 0.40), (1, 0.50), (2, 0.75)] and ci.n == 3 and ci.mean == pytest.approx(0.55)
    assert 0 < ci.low < 0.40 and 0.75 < ci.high < 1 and ci.method == "logit"
    fig = plots.plot_accuracy(collection, ("hrnet", "hrsnet"))
    final = fig.axes[1]
    for arch in ("hrnet", "hrsnet"):
        for width in (2, 8):
            scatter = next(c for c in final.collections if c.get_gid() == f"seeds:{arch}:C={width}")
            assert len(scatter.get_offsets()) == 3
            assert sorted(scatter.get_offsets()[:, 1]) == pytest.approx([0.40, 0.50, 0.75])
    labels = final.get_legend_handles_labels()[1]
    assert "HRSNet (mean, 95% CI)" in labels and not any("released" in text for text in labels)
    assert "3 seeds per network x C" in final.get_title()
    assert all(float(tick).is_integer() for tick in fig.axes[0].get_xticks())
    plt_close(fig)


def test_released_numbers_beside_paper_setting_seeds_marked_truncated(tmp_path):
    for seed in SEEDS:
        write_fixture_run(experiments.run_config("paper", "hrsnet", 2, tmp_path, seed=seed), "complete", 3)
        write_fixture_run(experiments.run_config("paper", "hrsnet", 30, tmp_path, seed=seed), "complete", 3)
    collection = plots.collect_runs(tmp_path, "paper")
    fig = plots.plot_accuracy(collection, ("hrsnet",))
    final = fig.axes[1]
    labels = final.get_legend_handles_labels()[1]
    assert "released notebooks (1 run; bar: printed as a whole percent, truncated)" in labels
    assert len(next(c for c in final.collections if c.get_gid() == "seeds:hrsnet:C=30").get_offsets()) == 3
    # 50% printed with '%d %%' gets a bar to 51%; 55.41% (printed with two decimals) none
    bars = [c for c in final.containers if c.lines[0].get_color() == "black"]
    assert len(bars) == 2
    with_bar = [c for c in bars if c.has_yerr]
    assert len(with_bar) == 1 and with_bar[0].lines[0].get_ydata()[0] == 0.50
    segment = with_bar[0].lines[2][0].get_segments()[0]
    assert [y for _, y in segment] == pytest.approx([0.50, 0.51])
    plt_close(fig)


def test_best_and_worst_classes_are_ranked_by_the_seed_mean(seed_results):
    results, data_dir = seed_results
    ranked = plots.class_accuracy(plots.collect_runs(results, "quick", data_dir), "hrnet")
    assert list(ranked["class_name"]) == ["1", "0", "2", "3"]  # seed 0 alone: 0, 1, 2, 3
    assert ranked["accuracy"].tolist() == pytest.approx([0.8 + 0.1 / 3, 1.6 / 3, 0.2, 0.1])
    assert set(ranked["seeds"]) == {6}  # 3 seeds x 2 widths
    alone = plots.class_accuracy(plots.collect_runs(results, "quick", data_dir, seeds=1), "hrnet")
    assert list(alone["class_name"]) == ["0", "1", "2", "3"]
    fig = plots.plot_best_worst_classes(plots.collect_runs(results, "quick", data_dir), "hrnet", k=2)
    assert fig.axes[0].get_title().startswith("1\n") and fig.axes[2].get_title().startswith("3\n")
    assert "mean over 3 seeds" in fig._suptitle.get_text()
    plt_close(fig)


def test_captions_and_tables_count_seeds_when_some_are_missing(tmp_path):
    results = tmp_path / "results"
    configs = experiments.profile_runs("quick", results, tmp_path)
    hrnet_c2 = [c for c in configs if (c.arch, c.width) == ("hrnet", 2)]
    _write_seeds(results, tmp_path, skip={hrnet_c2[2].run_id}, state={hrnet_c2[1].run_id: "running"})
    collection = plots.collect_runs(results, "quick", tmp_path)
    assert collection.caption.endswith("profile 'quick', 3 seeds, 22/24 runs finished")
    assert collection.cell_seeds_text("hrnet", 2) == "seeds: 1/3 finished"
    assert collection.cell_seeds_text("hrsnet", 2) == "3 seeds"
    fig = plots.plot_train_vs_val(collection)
    assert f"{label('hrnet')}, C=2: seeds: 1/3 finished" in [ax.get_title() for ax in fig.axes]
    assert "22/24 runs finished" in fig._suptitle.get_text()
    plt_close(fig)
    fig = plots.plot_training_loss(collection, ("hrnet", "hrsnet"))
    labels = _axis_of(fig, "C = 2").get_legend_handles_labels()[1]
    assert f"{label('hrnet')} (mean, seeds: 1/3 finished)" in labels  # the running seed is a thin line, not in the mean
    plt_close(fig)
    assert plots.final_accuracy(collection, "hrnet", 2)[1].n == 1
    table = plots.results_table(collection)
    assert len(table) == 24 and list(table.columns[:3]) == ["network", "C", "seed"]
    rows = table[(table["network"] == "hrnet") & (table["C"] == 2)]
    assert list(rows["seed"]) == [0, 1, 2] and list(rows["status"]) == ["complete", "running", "missing"]


def _save_small_png(fig, path_without_suffix, pdf=True):
    """save_figure at a low resolution and without the PDF: every figure is still drawn, in a third of the time."""
    import matplotlib.pyplot as plt

    png = path_without_suffix.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=30)
    plt.close(fig)
    return png


def test_single_seed_results_still_render(tmp_path, monkeypatch):
    """A results folder from before seeds (seed 0 only): every figure renders, with seeds=1 nothing is
    missing, and with the profile's 3 seeds the others are listed as missing."""
    results = tmp_path / "results"
    _write_seeds(results, tmp_path, seeds=(0,))
    monkeypatch.setattr(plots, "save_figure", _save_small_png)
    report = plots.make_all_figures(
        results, tmp_path / "figures", "quick", tmp_path, k=2, seeds=1, architecture=ARCHITECTURE
    )
    assert [path.stem for path in report.figures] == FIGURE_STEMS
    assert all(path.stat().st_size > 1000 for path in report.figures)
    assert not report.collection.missing and list(report.table["seed"]) == [0] * 8
    fig = plots.plot_training_loss(report.collection, ("hrnet", "hrsnet"))
    labels = _axis_of(fig, "C = 2").get_legend_handles_labels()[1]
    assert labels == [label("hrnet"), label("hrsnet")]
    assert not [c for c in fig.axes[0].collections if c.get_gid()]  # no band
    assert "1 seed" in fig._suptitle.get_text()
    plt_close(fig)
    saved = json.loads((tmp_path / "figures" / "quick" / "figures.json").read_text())
    assert saved["seeds"] == [0] and saved["header"]["seeds"].startswith("1 per network x C (0); 8/8 runs finished")
    assert saved["header"]["device"] == "NVIDIA H100 80GB HBM3"
    assert saved["header"]["git commit"].startswith("runs: 0123456789ab (tree modified: yes")
    assert "quick" in saved["header"]["profile"] and "sklearn digits" in saved["header"]["dataset"]
    assert saved["figure_kinds"]["fig7_train_loss"] == "training_loss"
    assert report.header_markdown.startswith("# HRNet and HRSNet: reproduction report\n")
    three = plots.collect_runs(results, "quick", tmp_path)
    assert len(three.missing) == 16 and three.caption.endswith("3 seeds, 8/24 runs finished")


def test_a_fifth_network_declared_by_a_profile_is_drawn_compared_and_decided(tmp_path, monkeypatch):
    """Nothing in the analysis names a network: a profile with a fifth preset gets its colour, its
    curves, its paired comparison and its claims."""
    monkeypatch.setitem(
        PRESETS, "hrsnet_wide", Preset("HRSNet, 5 modules", base="hrsnet", changes={"modules_per_stage": (5, 5, 5)})
    )
    profile = tmp_path / "five.toml"
    profile.write_text(
        'base = "quick"\n'
        'networks = ["hrnet_official", "hrnet", "hrsnet", "hrsnet_skip", "hrsnet_wide"]\n'
        "widths = [2]\nseeds = 2\n"
        '[[comparisons]]\na = "hrsnet_wide"\nb = "hrsnet"\n'
        '[[claims]]\nkind = "more_accurate"\nnetworks = ["hrsnet_wide", "hrnet"]\n'
        '[[claims]]\nkind = "differs"\nnetworks = ["hrsnet_wide", "hrsnet"]\n'
        '[figures.wide_loss]\nkind = "training_loss"\nnetworks = ["hrsnet", "hrsnet_wide"]\ntitle = "Wider"\n'
        '[figures.wide_classes]\nkind = "best_worst_classes"\nnetworks = ["hrsnet_wide"]\n'
    )
    results = tmp_path / "results"
    for config in experiments.profile_runs(profile, results):
        loss = [
            2.0 / epoch * (0.5 if config.arch == "hrsnet_wide" else 1.0) + 0.1 * config.seed for epoch in range(1, 4)
        ]
        write_fixture_run(config, "complete", 3, num_classes=4, train_loss=loss, top1_last=0.5 + 0.1 * config.seed)
    monkeypatch.setattr(plots, "save_figure", _save_small_png)
    report = plots.make_all_figures(results, tmp_path / "figures", profile, architecture=ARCHITECTURE)
    stems = [path.stem for path in report.figures]  # the base's figures (merged key by key), then its own
    assert stems[: len(FIGURE_STEMS)] == FIGURE_STEMS and stems[len(FIGURE_STEMS) :] == [
        "wide_loss",
        "wide_classes_hrsnet_wide",
    ]
    assert "HRSNet, 5 modules - HRSNet" in set(report.paired["comparison"])
    assert report.claims["claim"].tolist() == [
        "HRSNet, 5 modules is more accurate than HRNet (pre-activated)",
        "HRSNet, 5 modules and HRSNet differ: training loss",
        "HRSNet, 5 modules and HRSNet differ: test top-1",
    ]
    assert report.claims["verdict"].iloc[1] == "supported"  # the same loss difference in both seeds
    collection = report.collection
    colors = plots.network_colors(collection.profile.networks)
    assert colors["hrsnet_wide"] == plots.PALETTE[4] and len(set(colors.values())) == 5
    fig = plots.plot_training_loss(collection, ("hrsnet", "hrsnet_wide"))
    lines = [line for line in fig.axes[0].get_lines() if line.get_label() == "HRSNet, 5 modules (mean, 2 seeds)"]
    assert lines and lines[0].get_color() == colors["hrsnet_wide"]
    plt_close(fig)


def test_analysis_code_names_no_network():
    """Networks, comparisons and claims come from the profile: no preset name is written into the analysis
    (paper.py, the facts about the report and its released code, excepted)."""
    names = set(PRESETS)
    for path in sorted((REPO / "hrsnet" / "analysis").glob("*.py")):
        if path.name == "paper.py":
            continue
        tree = ast.parse(path.read_text())
        literals = {
            node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        assert not (literals & names), (path.name, literals & names)


# --- the report page -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> pages.Report:
    """The quick profile's page from 3 seeds of known values, made once for the tests that read it
    (each reads another part; none changes it)."""
    root = tmp_path_factory.mktemp("quick_report")
    results = root / "results"
    _write_seeds(results, root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "save_figure", _save_small_png)
        return pages.make_report(
            results, root / "figures", "quick", root, k=2, seeds=len(SEEDS), architecture=ARCHITECTURE
        )


def test_the_page_opens_with_scope_finding_summary_and_claims(quick_report):
    report = quick_report
    text = report.path.read_text()
    assert text == report.markdown(relative_to=report.path.parent)
    front = pages.blocks_markdown(report.front)
    order = [
        front.index(marker)
        for marker in (
            "# HRNet and HRSNet: reproduction report",
            "Not the paper's setting: sklearn digits (not CIFAR-100) at 32x32, not CIFAR-100 at 224x224",
            "HRSNet report](https://rajsurya1012.github.io/projects/HRSNet/)",
            "tree/b1be344",
            "## HRSNet as the authors ran it has no stage skip",
            "**What our runs show**",
            "## Summary",
            "## The claims in brief",
        )
    ]
    assert order == sorted(order)
    assert "HRNet (pre-activated) C=2 60%†, C=30 53%†; HRSNet C=2 50%†, C=30 55.41%" in front
    assert "concatenates the two lists" in front and "both published HRSNet numbers" in front
    # the stage skip's result comes from the differs claim: HRSNet with skip - HRSNet
    differs = report.figures.claims[report.figures.claims["kind"] == "differs"]
    assert claim_rules.value_text(differs.iloc[0]) in front
    # the summary is written from the verdicts; every claim has a row or a left-out line
    claims = report.figures.claims
    for entry in claims.itertuples(index=False):
        assert entry.claim.split(": ")[0] in front
    assert "**Supported:**" in front or "**Not decided:**" in front or "**Contradicted:**" in front


def test_each_claim_in_turn_with_its_numbers_and_figure(quick_report):
    report = quick_report
    claims_text = pages.blocks_markdown(report.claims)
    for text in claim_rules.CLAIM_TEXTS.values():
        assert f'> "{text.quote}"' in claims_text
    images = [block.image.name for block in report.claims if block.image is not None]
    assert images == sorted(set(images), key=images.index)  # each figure once; later claims point to it
    assert {
        "fig7_train_loss.png",
        "fig6_accuracy.png",
        "official_vs_preactivated_loss.png",
        "train_vs_val_loss.png",
    } <= set(images)
    assert "shown under claim 1" in claims_text
    # equal top-1 for every network: "more accurate" is open, with the seeds it would need and the command
    accurate = report.figures.claims[report.figures.claims["kind"] == "more_accurate"].iloc[0]
    assert accurate["verdict"] == "not decided (3 seeds)" and accurate["seeds_needed"].startswith("no effect")
    open_rows = report.figures.claims[report.figures.claims["seeds_needed"].str.startswith("about")]
    for entry in open_rows.itertuples(index=False):
        n = int(entry.seeds_needed.split()[1])
        assert f"`./run_all.sh --profile quick --seeds {n}` trains only the runs that are missing" in claims_text
    assert "Not comparable with ours (sklearn digits (not CIFAR-100) at 32x32)" in claims_text
    assert "HRSNet C=2 50% (printed as a whole percent, truncated)" in claims_text
    assert "P(HRSNet lower) = " in claims_text


def test_details_say_how_to_read_and_drop_repeated_rows(quick_report):
    report = quick_report
    details = pages.blocks_markdown(report.details)
    assert "**What a seed varies:** the initialisation, the train/validation split" in details
    assert "**What it does not:** the dataset and the test set" in details
    assert "logit" in details and "log scale" in details and "Bouthillier" in details
    assert "**Exploratory.**" in details and "Holm-adjusted" in details
    # the fixture's best-validation model is another epoch's (best top-1 0.55): kept; epochs all 4: dropped
    assert "*epochs run* left out: every run went 4 epochs" in details
    assert "60% (printed as a whole percent, truncated)" in details
    assert "### Compute" in details and "GPU-hours" in details and "### Provenance and what reproduces" in details
    assert "bitwise" in details and "tree modified:** yes" in details
    assert details.index("### Runs") > details.index("### Compute")


def test_cost_counts_every_run_and_packed_seeds_once(tmp_path):
    from hrsnet.analysis import compute

    results = tmp_path / "results"
    configs = experiments.profile_runs("smoke", results)
    for config, state in zip(configs, ("complete", "failed", "running", "complete")):
        write_fixture_run(config, state, 2, environment=ENVIRONMENT)
    config_path = configs[3].run_dir() / rundir.CONFIG_FILE
    saved = json.loads(config_path.read_text())
    saved["resolved"] = {"packed_seeds": 4}
    config_path.write_text(json.dumps(saved))
    cost = compute.cost_table(plots.collect_runs(results, "smoke").runs)
    assert len(cost) == 4 and set(cost["state"]) == {"complete", "failed", "running"}
    # per epoch 1 s training, 0.25 s validation, 0.125 s checkpoint (fixture_runs); the packed run pays 1/4
    assert cost["seconds"].tolist() == pytest.approx([2.75, 2.75, 2.75, 2 * (0.25 + 0.25 + 0.125)])
    assert cost["images_per_second"].iloc[0] == pytest.approx(100.0) and cost["images_per_second"].iloc[
        3
    ] == pytest.approx(400.0)
    assert cost["gpu_hours"].sum() == pytest.approx(cost["seconds"].sum() / 3600)
    summary = compute.cost_summary(cost)
    assert summary.startswith("4 runs, 8 epochs in all") and "1 failed" in summary and "1 running" in summary


def test_report_page_opens_with_the_header_and_claims(tmp_path):
    """render_report puts the notebook with the header cell first, whatever the order given, and leaves
    out cells tagged report-omit."""
    from hrsnet.analysis.report import render_report

    def notebook(path, cells):
        nb = nbformat.v4.new_notebook()
        for kind, text, tags in cells:
            if kind == "md":
                cell = nbformat.v4.new_markdown_cell(text)
            else:
                cell = nbformat.v4.new_code_cell("display(x)")
                cell.outputs = [nbformat.v4.new_output("display_data", {"text/markdown": text})]
            cell.metadata["tags"] = tags
            nb.cells.append(cell)
        nbformat.write(nb, path)
        return path

    architecture = notebook(tmp_path / "00.ipynb", [("md", "ARCHITECTURE-TABLES", [])])
    figures = notebook(
        tmp_path / "02.ipynb",
        [
            ("md", "NOTEBOOK-INTRO", ["report-omit"]),
            ("code", "# REPORT-TITLE", ["report-lead"]),
            ("code", "CLAIMS-TABLE", []),
            ("code", "SUMMARY-TABLE", []),
        ],
    )
    html = render_report([architecture, figures], tmp_path / "report.html").read_text()
    order = [html.index(marker) for marker in ("REPORT-TITLE", "CLAIMS-TABLE", "SUMMARY-TABLE", "ARCHITECTURE-TABLES")]
    assert order == sorted(order) and "NOTEBOOK-INTRO" not in html and "display(x)" not in html
    plain = render_report([architecture], tmp_path / "plain.html", title="A title").read_text()
    assert plain.index('<h1 id="A-title">') < plain.index("ARCHITECTURE-TABLES")


# --- notebooks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["00_architecture", "01_train", "02_figures"])
def test_notebooks_are_thin_and_parameterized(name):
    notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "def " not in code and "class " not in code and "nn.Module" not in code
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # committed clean


def test_training_notebook_passes_settings_through_trainconfig(tmp_path):
    """The training notebook's parameters are run_config's arguments plus ``settings``, which
    TrainConfig checks by name: a setting is not restated in the notebook."""
    import inspect

    notebook = nbformat.read(REPO / "notebooks" / "01_train.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    names = {target.id for node in ast.parse(cell.source).body for target in node.targets}
    run_config_arguments = set(inspect.signature(experiments.run_config).parameters)
    assert names == (run_config_arguments - {"overrides"}) | {"seeds", "force", "pack", "quiet", "settings"}
    config = experiments.run_config("smoke", "hrnet", 1, tmp_path, epochs=3, seed=2)
    assert (config.epochs, config.seed) == (3, 2)
    with pytest.raises(ValueError, match="unknown setting"):
        experiments.run_config("smoke", "hrnet", 1, tmp_path, epoch=3)
