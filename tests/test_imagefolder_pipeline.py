"""An image folder through the pipeline's steps, in this process: the example profile's runs, one of
them trained as the training notebook trains it (seed_runs, fit_seeds), then the figures and the page
as the figures notebook makes them (make_report), with the folder's class names.

The notebooks and ./run_all.sh themselves, on an image folder given as --data-dir, are tested end to
end once, in test_pipeline.py."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest
import torch
from imagefolder_fixture import CLASSES, write_image_folder

from hrsnet import data, rundir
from hrsnet.analysis import figures as plots
from hrsnet.analysis.report import make_report
from hrsnet.profiles import load_profile, profile_runs, seed_runs
from hrsnet.runs import fit_seeds

REPO = Path(__file__).resolve().parents[1]
NETWORKS = ["hrnet_official", "hrnet", "hrsnet"]


@pytest.fixture
def one_thread():
    """One torch thread, as each of the suite's workers has: with two threads on a loaded pair of
    cores, a training step of this tiny network takes many times longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_an_image_folder_trains_and_reports(tmp_path, monkeypatch, one_thread):
    images = write_image_folder(tmp_path / "pets", {"train": 10, "test": 2})  # grayscale and RGBA among them
    profile = tmp_path / "tiny_imagefolder.toml"
    profile.write_text(
        f'base = "{REPO / "examples" / "imagefolder.toml"}"\n'
        'description = "the example profile at C=1, one seed, two epochs"\n'
        "widths = [1]\nseeds = 1\n"
        # 12 steps: fewer leave BatchNorm's running statistics so far behind that the (eval-mode)
        # validation loss of such tiny runs can overflow (a "diverged" run, no per-class table).
        "[settings]\nimage_size = 32\nepochs = 2\nbatch_size = 4\n"
    )
    results, figures = tmp_path / "results", tmp_path / "figures"
    runs = {run.arch: run for run in profile_runs(load_profile(profile), results, data_dir=images)}
    assert sorted(runs) == sorted(NETWORKS)

    # The training notebook's two calls, for one network (the others are left missing: the figures and
    # the page must say so and still be drawn).
    seeds = seed_runs(str(profile), "hrnet", 1, [0], str(results), str(images), quiet=True)
    assert [config.run_id for config in seeds.configs] == [runs["hrnet"].run_id]
    (trained,) = fit_seeds(seeds.configs, force=seeds.force, pack=seeds.pack)
    assert trained.status.state in ("complete", "early-stopped"), trained.status
    block = json.loads((trained.run_dir / rundir.CONFIG_FILE).read_text())["dataset"]
    assert block["label"] == "image folder pets" and block["converted_to_rgb"] == {"L": 2, "RGBA": 1}
    assert (block["train_size"], block["val_size"], block["test_size"]) == (24, 6, 6)
    assert list(rundir.read_run(trained.run_dir).per_class["class_name"]) == list(CLASSES)
    assert len(list((images / data.CACHE_FOLDER).glob("*.pt"))) == 2  # train/ and test/, decoded once

    # The figures notebook's call. Figures at a low resolution (the resolution is not what is tested
    # here); what each one shows is kept.
    drawn = {}
    save_figure = plots.save_figure

    def save_small(fig, path_without_suffix, pdf=True):
        drawn[path_without_suffix.name] = [ax.get_title() for ax in fig.axes]
        with matplotlib.rc_context({"savefig.dpi": 30}):
            return save_figure(fig, path_without_suffix, pdf)

    monkeypatch.setattr(plots, "save_figure", save_small)
    report = make_report(results, figures, profile, images, pdf=False)
    out = figures / profile.stem
    assert sorted(drawn) == sorted(
        [f"best_worst_classes_{arch}" for arch in NETWORKS] + ["accuracy", "train_loss", "train_vs_val_loss"]
    )
    assert all((out / f"{stem}.png").stat().st_size > 1000 for stem in drawn)
    shown = [title.split("\n")[0] for title in drawn["best_worst_classes_hrnet"] if title]
    assert shown and set(shown) <= set(CLASSES)  # the folder's class names, not class indices
    assert "image folder" in json.loads((out / "figures.json").read_text())["caption"]
    table = report.figures.table.set_index("network")
    assert table.loc["hrnet", "status"] == trained.status.state
    assert (table.loc[["hrnet_official", "hrsnet"], "status"] == "missing").all()
    assert "imagefolder" in (out / "results_table.md").read_text()
    page = report.path.read_text()
    assert report.path == out / "report.md" and "image folder" in page
