"""An image folder through the whole pipeline: ./run_all.sh --profile FILE --data-dir DIR trains the
three networks of the example profile (one tiny run each), draws the figures with the folder's
class names and writes the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from imagefolder_fixture import CLASSES, write_image_folder

from hrsnet import data, rundir
from hrsnet.profiles import load_profile, profile_runs

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_an_image_folder_trains_and_reports_end_to_end(tmp_path):
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
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        [str(REPO / "run_all.sh"), "--profile", str(profile), "--data-dir", str(images), "--jobs", "2"]
        + ["--results-dir", str(results), "--figures-dir", str(figures)],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    runs = profile_runs(load_profile(profile), results, data_dir=images)
    assert sorted(run.arch for run in runs) == sorted(["hrnet_official", "hrnet", "hrsnet"])
    for run in runs:
        assert rundir.read_status(run.run_dir()).state in ("complete", "early-stopped"), run.run_id
        block = json.loads((run.run_dir() / rundir.CONFIG_FILE).read_text())["dataset"]
        assert block["label"] == "image folder pets" and block["converted_to_rgb"] == {"L": 2, "RGBA": 1}
        assert (block["train_size"], block["val_size"], block["test_size"]) == (24, 6, 6)
        per_class = rundir.read_run(run.run_dir()).per_class
        assert list(per_class["class_name"]) == list(CLASSES)
    assert len(list((images / data.CACHE_FOLDER).glob("*.pt"))) == 2  # train/ and test/, decoded once
    out = figures / profile.stem
    for arch in ("hrnet_official", "hrnet", "hrsnet"):
        assert (out / f"best_worst_classes_{arch}.png").stat().st_size > 5000
    for stem in ("accuracy", "train_loss", "train_vs_val_loss"):
        assert (out / f"{stem}.png").stat().st_size > 5000
    assert "image folder" in json.loads((out / "figures.json").read_text())["caption"]
    assert "imagefolder" in (out / "results_table.md").read_text()
    assert (results / "report.html").stat().st_size > 0
