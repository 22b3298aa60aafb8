"""Profiles, figures, notebooks and run_all.sh: the report end to end."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch
from fixture_runs import write_fixture_run

from hrsnet import profiles as experiments
from hrsnet import rundir
from hrsnet.__main__ import main
from hrsnet.analysis import figures as plots
from hrsnet.analysis import stats
from hrsnet.runs import fit
from hrsnet.runs.lock import lock_state

REPO = Path(__file__).resolve().parents[1]
FIGURE_STEMS = [
    "fig6_accuracy",
    "fig7_train_loss",
    "official_vs_preactivated_loss",
    "train_vs_val_loss",
    "fig8_9_best_worst_classes_hrnet_official",
    "fig8_9_best_worst_classes_hrnet",
    "fig8_9_best_worst_classes_hrsnet",
]


def test_paper_profile_is_the_released_protocol():
    runs = experiments.profile_runs("paper")
    assert len(runs) == 27 and len({run.run_id for run in runs}) == 27  # 3 networks x 3 C x 3 seeds
    assert {run.seed for run in runs} == {0, 1, 2}
    assert {(run.arch, run.width) for run in runs} == {
        (arch, width) for arch in ("hrnet_official", "hrnet", "hrsnet") for width in (2, 18, 30)
    }
    for run in runs:
        assert (run.dataset, run.image_size, run.batch_size, run.epochs, run.patience) == ("cifar100", 224, 16, 25, 2)
        assert (run.optimizer, run.lr, run.momentum) == ("sgd", 0.005, 0.9)


def test_quick_and_smoke_profiles_are_small_and_offline(tmp_path):
    for name in ("quick", "smoke"):
        runs = experiments.profile_runs(name, data_dir=tmp_path)
        assert {run.arch for run in runs} == {"hrnet_official", "hrnet", "hrsnet"}
        assert all(run.dataset == "digits" and run.image_size == 32 for run in runs)
    assert all(run.epochs > run.patience for run in experiments.profile_runs("quick"))  # early stopping can act


def test_quick_profile_uses_cifar100_when_present(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(b"")
    assert {run.dataset for run in experiments.profile_runs("quick", data_dir=tmp_path)} == {"cifar100"}


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
    assert [row[0] for row in rows] == ["1", "2"] and {row[-1] for row in rows} == {"start"}
    assert main(["runs", "--profile", "smoke", "--results-dir", str(tmp_path), "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(row["index"], row["state"], row["action"]) for row in listed] == [
        (0, "complete", "skip: finished"),
        (1, "new", "start"),
        (2, "new", "start"),
    ]
    assert set(listed[0]) == {"index", "run_id", "arch", "width", "seed", "state", "action"}


@pytest.fixture
def fixture_results(tmp_path):
    """Smoke-profile run directories: one complete, one diverged, one partial; plus missing runs."""
    hrnet_official, hrnet, hrsnet = experiments.profile_runs("smoke", tmp_path / "results")
    write_fixture_run(hrnet_official, "complete", 4)
    write_fixture_run(hrnet, "diverged", 3, diverge_at=3)
    write_fixture_run(hrsnet, "running", 2, with_test=False)
    return tmp_path / "results", {"complete": hrnet_official, "diverged": hrnet, "partial": hrsnet}


def test_figures_from_fixture_runs(fixture_results, tmp_path):
    results, runs = fixture_results
    report = plots.make_all_figures(results, tmp_path / "figures", "smoke")
    assert [path.stem for path in report.figures] == FIGURE_STEMS
    for stem in FIGURE_STEMS:
        for suffix in (".png", ".pdf"):
            path = tmp_path / "figures" / "smoke" / f"{stem}{suffix}"
            assert path.stat().st_size > 5000, path
    table = pd.read_csv(tmp_path / "figures" / "smoke" / "results_table.csv")
    assert list(table["status"]) == ["complete", "diverged", "running"]
    assert table.loc[1, "stop reason"].startswith("non-finite training loss")
    assert pd.isna(table.loc[1, "test top-1 (last)"]) and table.loc[1, "test top-1 (best)"] == 0.55
    assert "profile 'smoke'" in (tmp_path / "figures" / "smoke" / "results_table.md").read_text()
    description = report.collection.describe()
    assert "running: " + runs["partial"].run_id in description and "diverged: " + runs["diverged"].run_id in description


def test_missing_runs_are_listed_and_figures_still_render(tmp_path):
    report = plots.make_all_figures(tmp_path / "empty", tmp_path / "figures", "quick")
    assert len(report.collection.missing) == 18 and set(report.table["status"]) == {"missing"}
    assert all(path.stat().st_size > 0 for path in report.figures)
    assert "missing: hrnet_official_c2" in report.collection.describe()


def test_captions_name_dataset_and_profile(fixture_results):
    results, _ = fixture_results
    collection = plots.collect_runs(results, "smoke")
    assert collection.caption == "sklearn digits (not CIFAR-100), 32px, profile 'smoke', 1 seed, 2/3 runs finished"
    fig = plots.plot_train_loss(collection)
    assert "profile 'smoke'" in fig._suptitle.get_text() and "digits" in fig._suptitle.get_text()
    assert "1 seed" in fig._suptitle.get_text()


def test_released_numbers_only_beside_paper_runs(tmp_path):
    paper = experiments.run_config("paper", "hrsnet", 30, tmp_path)
    write_fixture_run(paper, "early-stopped", 10, num_classes=100)
    table = plots.results_table(plots.collect_runs(tmp_path, "paper"))
    row = table[(table["network"] == "hrsnet") & (table["C"] == 30)].iloc[0]
    assert row["released top-1"] == 0.5541 and row["released epochs"] == "10 (early stop)"
    smoke = plots.results_table(plots.collect_runs(tmp_path, "smoke"))
    assert smoke["released top-1"].isna().all() if "released top-1" in smoke else True


# --- several seeds ------------------------------------------------------------------------------

SEEDS = (0, 1, 2)
EPOCHS = 4
BASE_LOSS = {"hrnet_official": 3.0, "hrnet": 2.0, "hrsnet": 1.5}
TOP1 = {0: 0.40, 1: 0.50, 2: 0.75}  # per seed, every network x C
ENVIRONMENT = {"device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3", "git_commit": "0123456789abcdef" * 2}


def _train_loss(arch: str, seed: int) -> list[float]:
    """Known per-epoch values: seed s is the base curve plus 0.1 s, so the mean over seeds 0-2 is +0.1."""
    return [BASE_LOSS[arch] / epoch + 0.1 * seed for epoch in range(1, EPOCHS + 1)]


def _true_mean(arch: str) -> list[float]:
    return [BASE_LOSS[arch] / epoch + 0.1 for epoch in range(1, EPOCHS + 1)]


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
    """The quick profile (3 networks x C in {2, 8}) with 3 finished seeds each, known values."""
    results = tmp_path / "results"
    _write_seeds(results, tmp_path)
    return results, tmp_path


def _axis_of(fig, title):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def test_loss_curves_are_the_seed_mean_with_a_95_band(seed_results):
    from matplotlib.collections import PolyCollection
    from scipy import stats as scipy_stats

    results, data_dir = seed_results
    collection = plots.collect_runs(results, "quick", data_dir)
    assert [run.seed for run in collection.runs_of("hrnet", 2)] == [0, 1, 2]
    fig = plots.plot_train_loss(collection)
    ax = _axis_of(fig, "C = 2")
    for arch in ("hrnet", "hrsnet"):
        label = plots.NETWORK_LABELS[arch]
        mean = next(line for line in ax.get_lines() if line.get_label() == f"{label} (mean, 3 seeds)")
        assert list(mean.get_xdata()) == [1, 2, 3, 4]
        assert mean.get_ydata() == pytest.approx(_true_mean(arch))
        band = next(c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid() == f"band:{arch}:C=2")
        vertices = band.get_paths()[0].vertices
        half = scipy_stats.t.ppf(0.975, 2) * 0.1 / 3**0.5  # sd 0.1 over 3 seeds
        for epoch, true in zip(range(1, EPOCHS + 1), _true_mean(arch)):
            ys = vertices[vertices[:, 0] == epoch, 1]
            assert ys.min() <= true <= ys.max()
            assert (ys.min(), ys.max()) == pytest.approx((true - half, true + half))
    faint = [line for line in ax.get_lines() if line.get_label().startswith("_") and line.get_alpha() == 0.35]
    assert len(faint) == 6  # one thin line per seed and network
    assert all(float(tick).is_integer() for tick in ax.get_xticks())  # whole epochs only
    assert "3 seeds" in fig._suptitle.get_text() and "95% t-interval" in fig._suptitle.get_text()
    plt_close(fig)


def plt_close(fig):
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_final_accuracy_points_per_seed_with_mean_and_interval(seed_results):
    results, data_dir = seed_results
    collection = plots.collect_runs(results, "quick", data_dir)
    points, ci = plots.final_accuracy(collection, "hrsnet", 8)
    assert points == [(0, 0.40), (1, 0.50), (2, 0.75)] and ci.n == 3 and ci.mean == pytest.approx(0.55)
    assert ci.low < 0.40 and ci.high > 0.75  # scipy's t-interval over 3 seeds is wide
    fig = plots.plot_accuracy(collection)
    final = fig.axes[1]
    for arch in ("hrnet", "hrsnet"):
        for width in (2, 8):
            scatter = next(c for c in final.collections if c.get_gid() == f"seeds:{arch}:C={width}")
            assert len(scatter.get_offsets()) == 3
            assert sorted(scatter.get_offsets()[:, 1]) == pytest.approx([0.40, 0.50, 0.75])
    labels = final.get_legend_handles_labels()[1]
    assert "HRSNet (mean, 95% CI)" in labels and not any("released" in label for label in labels)
    assert "3 seeds per network x C" in final.get_title()
    assert all(float(tick).is_integer() for tick in fig.axes[0].get_xticks())
    plt_close(fig)


def test_released_numbers_beside_paper_setting_seeds(tmp_path):
    for seed in SEEDS:
        write_fixture_run(experiments.run_config("paper", "hrsnet", 30, tmp_path, seed=seed), "complete", 3)
    collection = plots.collect_runs(tmp_path, "paper")
    fig = plots.plot_accuracy(collection)
    assert "released notebooks (1 run)" in fig.axes[1].get_legend_handles_labels()[1]
    assert len(next(c for c in fig.axes[1].collections if c.get_gid() == "seeds:hrsnet:C=30").get_offsets()) == 3
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
    assert collection.caption.endswith("profile 'quick', 3 seeds, 16/18 runs finished")
    assert collection.cell_seeds_text("hrnet", 2) == "seeds: 1/3 finished"
    assert collection.cell_seeds_text("hrsnet", 2) == "3 seeds"
    fig = plots.plot_train_vs_val(collection)
    assert f"{plots.NETWORK_LABELS['hrnet']}, C=2: seeds: 1/3 finished" in [ax.get_title() for ax in fig.axes]
    assert "16/18 runs finished" in fig._suptitle.get_text()
    plt_close(fig)
    fig = plots.plot_train_loss(collection)
    labels = _axis_of(fig, "C = 2").get_legend_handles_labels()[1]
    assert (
        f"{plots.NETWORK_LABELS['hrnet']} (mean, seeds: 1/3 finished)" in labels
    )  # the running seed is a thin line, not in the mean
    plt_close(fig)
    assert plots.final_accuracy(collection, "hrnet", 2)[1].n == 1
    table = plots.results_table(collection)
    assert len(table) == 18 and list(table.columns[:3]) == ["network", "C", "seed"]
    rows = table[(table["network"] == "hrnet") & (table["C"] == 2)]
    assert list(rows["seed"]) == [0, 1, 2] and list(rows["status"]) == ["complete", "running", "missing"]


def _save_small_png(fig, path_without_suffix):
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
    # the parameter claim's table (6 meta-device models, seconds) is not what this test is about
    counts = pd.DataFrame({"network": ["hrnet", "hrsnet"], "C": [2, 2], "parameters (M)": [10.15, 10.18]})
    monkeypatch.setattr(stats, "_architecture_table", lambda: counts)
    report = plots.make_all_figures(results, tmp_path / "figures", "quick", tmp_path, k=2, seeds=1)
    assert [path.stem for path in report.figures] == FIGURE_STEMS
    assert all(path.stat().st_size > 1000 for path in report.figures)
    assert not report.collection.missing and list(report.table["seed"]) == [0] * 6
    fig = plots.plot_train_loss(report.collection)
    labels = _axis_of(fig, "C = 2").get_legend_handles_labels()[1]
    assert labels == [plots.NETWORK_LABELS["hrnet"], "HRSNet"] and not [
        c for c in fig.axes[0].collections if c.get_gid()
    ]  # no band
    assert "1 seed" in fig._suptitle.get_text()
    plt_close(fig)
    saved = json.loads((tmp_path / "figures" / "quick" / "figures.json").read_text())
    assert saved["seeds"] == [0] and saved["header"]["seeds"].startswith("1 per network x C (0); 6/6 runs finished")
    assert saved["header"]["device"] == "NVIDIA H100 80GB HBM3"
    assert saved["header"]["git commit"].startswith("runs: 0123456789ab")
    assert "quick" in saved["header"]["profile"] and "sklearn digits" in saved["header"]["dataset"]
    assert report.header_markdown.startswith("# HRNet and HRSNet: reproduction report\n")
    assert "- **device:** NVIDIA H100 80GB HBM3" in report.header_markdown
    three = plots.collect_runs(results, "quick", tmp_path)
    assert len(three.missing) == 12 and three.caption.endswith("3 seeds, 6/18 runs finished")


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
    import ast
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


def _execute(notebook, output, parameters):
    import papermill

    return papermill.execute_notebook(
        str(REPO / "notebooks" / notebook),
        str(output),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
    )


@pytest.mark.slow
def test_figures_notebook_on_fixture_runs(fixture_results, tmp_path):
    results, runs = fixture_results
    executed = _execute(
        "02_figures.ipynb",
        tmp_path / "02.ipynb",
        dict(profile="smoke", results_dir=str(results), figures_dir=str(tmp_path / "figures")),
    )
    text = json.dumps(executed["cells"])
    assert f"running: {runs['partial'].run_id}" in text and f"diverged: {runs['diverged'].run_id}" in text
    assert all((tmp_path / "figures" / "smoke" / f"{stem}.png").stat().st_size > 0 for stem in FIGURE_STEMS)


# --- run_all.sh ---------------------------------------------------------------------------------


def _run_all(*args, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [str(REPO / "run_all.sh"), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def test_run_all_help():
    result = _run_all("--help", timeout=30)
    assert result.returncode == 0 and "--profile" in result.stdout and "smoke" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("--profile", "fast"), "profile must be one of paper, quick, smoke, auto; got 'fast'"),
        (("--bogus",), "unknown option --bogus"),
        (("--profile",), "--profile needs a value"),
    ],
)
def test_run_all_bad_arguments(args, message, tmp_path):
    result = (
        _run_all(*args, "--results-dir", str(tmp_path / "r"), timeout=120)
        if args != ("--profile",)
        else _run_all(*args, timeout=30)
    )
    assert result.returncode != 0 and message in result.stderr


def _signal_run_all_during(args, run_dir, signum, env=None):
    """Start run_all.sh in its own process group; once ``run_dir`` has a completed epoch, send
    ``signum`` to the group (SIGINT: Ctrl-C in a terminal). Returns (exit code, stdout, stderr)."""
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    process = subprocess.Popen(
        [str(REPO / "run_all.sh"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    history = run_dir / "history.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "run_all.sh ended before it could be signalled"
    os.killpg(process.pid, signum)
    stdout, stderr = process.communicate(timeout=120)
    # The kernel runs in a session of its own: after a SIGKILL it exits once it sees its parent
    # gone (ipykernel polls every second), and only then is the run's lock free.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and lock_state(run_dir) == "held":
        time.sleep(0.1)
    return process.returncode, stdout, stderr


def _fake_gpus(tmp_path, count):
    """A PATH with an `nvidia-smi -L` that lists ``count`` GPUs, and no CUDA_VISIBLE_DEVICES."""
    bin_dir = tmp_path / "fake_bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    lines = "".join(f"echo 'GPU {i}: Fake GPU (UUID: GPU-{i})'\n" for i in range(count))
    script.write_text(f"#!/bin/sh\n{lines}")
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.slow
def test_run_all_smoke_end_to_end(tmp_path):
    """Killed (SIGKILL to its process group) in its first run, then interrupted by Ctrl-C with two
    jobs at once (--jobs 2), run_all.sh loses nothing: Ctrl-C stops every job (exit 130) and says
    how to resume. Then two run_all.sh on one results folder, one with --jobs 2, finish every run:
    each run is trained by exactly one of them, and the interrupted ones have an uninterrupted history."""
    results, figures = tmp_path / "results", tmp_path / "figures"
    args = ("--profile", "smoke", "--results-dir", str(results), "--figures-dir", str(figures))
    runs = experiments.profile_runs("smoke", results)
    first, second, third = runs
    # Every epoch of every run, and the reference runs, use the thread count of a --jobs 2 job:
    # a resumed run repeats its history exactly only with the same threads.
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    same_threads = {"OMP_NUM_THREADS": str(threads)}
    code, stdout, stderr = _signal_run_all_during(args, first.run_dir(), signal.SIGKILL, env=same_threads)
    assert code == -signal.SIGKILL and rundir.read_status(first.run_dir()).state == "running"

    # --jobs 2 on a machine with two (fake) GPUs: one GPU and a share of the CPU cores per job.
    code, stdout, stderr = _signal_run_all_during(
        (*args, "--jobs", "2"), second.run_dir(), signal.SIGINT, env={**same_threads, **_fake_gpus(tmp_path, 2)}
    )
    assert code == 130, stdout + stderr
    assert "run the same ./run_all.sh command again to resume" in stderr and "[figures]" not in stdout
    assert "ZMQError" not in stdout + stderr
    assert "interrupted after epoch 1" in rundir.read_status(second.run_dir()).reason
    assert "started on GPU 0" in stdout and "started on GPU 1" in stdout, stdout
    for run in runs:  # every job was stopped, none killed: no lock held, no run left "running"
        assert lock_state(run.run_dir()) != "held", run.run_id
        status = rundir.read_status(run.run_dir())
        assert status is None or status.finished or "interrupted" in status.reason, (run.run_id, status)
    assert int(re.search(r", (\d+) CPU threads? each", stdout).group(1)) == threads
    config = json.loads((second.run_dir() / rundir.CONFIG_FILE).read_text())
    assert config["environment"]["cpu_threads"] == threads  # OMP_NUM_THREADS reached torch in the job

    # Two run_all.sh at once on one results folder (the second with its own figures folder): both
    # want the third run; the lock lets exactly one train it.
    env = {**os.environ, "PYTHON": sys.executable, **same_threads}
    command = [str(REPO / "run_all.sh"), *args]
    both = [
        subprocess.Popen([*command, "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
        subprocess.Popen(
            [*command, "--only", third.arch, "--figures-dir", str(tmp_path / "figures_b")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        ),
    ]
    outputs = [process.communicate(timeout=600) for process in both]
    for process, (out, err) in zip(both, outputs):
        assert process.returncode == 0, out + err
    trained = [re.search(rf"\({third.run_id}\): (complete|early-stopped): ", out) is not None for out, _ in outputs]
    assert sum(trained) == 1, outputs
    other = outputs[trained.index(False)][0]
    assert (
        f"({third.run_id}): skipped: being trained by pid " in other
        or f"({third.run_id}): already finished" in other
        or third.run_id not in other  # it was finished before this one listed the runs
    ), other
    for run in runs:  # no run file written by two processes: every epoch once, whole JSON files
        assert rundir.read_history(run.run_dir())["epoch"].tolist() == [1, 2], run.run_id
        json.loads((run.run_dir() / rundir.CONFIG_FILE).read_text())
        json.loads((run.run_dir() / rundir.TEST_METRICS_FILE).read_text())
    result = subprocess.CompletedProcess(both[0].args, 0, *outputs[0])
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        references = [fit(dataclasses.replace(run, results_dir=str(tmp_path / "reference"))) for run in (first, second)]
    finally:
        torch.set_num_threads(default_threads)
    for interrupted, reference in zip((first, second), references):
        resumed = rundir.read_history(interrupted.run_dir())
        assert len(resumed) == len(reference.history)
        for column in ("train_loss", "val_loss", "val_acc"):
            assert (resumed[column] - reference.history[column]).abs().max() <= 1e-6, column
    assert result.stdout.splitlines()[0] == "profile: smoke (asked for)"
    for stem in FIGURE_STEMS:
        assert (figures / "smoke" / f"{stem}.png").stat().st_size > 5000
    assert (figures / "smoke" / "results_table.md").exists()
    executed = sorted(path.name for path in (results / "notebooks").glob("*.ipynb"))
    run_ids = [run.run_id for run in experiments.profile_runs("smoke")]
    # One training notebook per network x C (with all its seeds); temporary names are renamed.
    trained_notebooks = [f"train_smoke_{run.arch}_c{run.width}.ipynb" for run in experiments.profile_runs("smoke")]
    assert executed == sorted(["00_architecture.ipynb", "02_figures.ipynb"] + trained_notebooks)
    assert not list((results / "notebooks").glob(".*"))
    for run_id in run_ids:
        assert (results / "runs" / run_id / "status").read_text().startswith("complete")
    report = (results / "report.html").read_text()
    assert report.count("<img") >= len(FIGURE_STEMS) and "make_all_figures" not in report  # code hidden
    assert str(results / "report.html") in result.stdout
