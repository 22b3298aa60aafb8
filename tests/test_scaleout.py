"""Scale-out: run_all.sh's options for it, and the Slurm scripts (scripts/slurm/).

The end-to-end cases of `run_all.sh --jobs 2` (Ctrl-C with two jobs, GPU pinning, CPU threads per
job, two run_all.sh on one results folder) are in test_report.py's smoke test, which runs anyway.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hrsnet import profiles as experiments
from hrsnet import rundir

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "scripts" / "slurm"


def _run(command, env=None, timeout=120):
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
    )


def test_run_all_help_names_the_scaleout_options():
    result = _run([REPO / "run_all.sh", "--help"], timeout=30)
    assert result.returncode == 0
    for option in ("--jobs N", "--gpus LIST", "--seeds N", "--no-train", "scripts/slurm/submit.sh"):
        assert option in result.stdout, option


@pytest.mark.parametrize(
    "args, message",
    [
        (("--jobs", "0"), "--jobs needs a whole number >= 1, got '0'"),
        (("--seeds", "two"), "--seeds needs a whole number >= 1, got 'two'"),
        (("--gpus", "0;1"), "--gpus needs GPU indices separated by commas"),
    ],
)
def test_run_all_rejects_bad_scaleout_values(args, message):
    result = _run([REPO / "run_all.sh", *args], timeout=30)
    assert result.returncode == 2 and message in result.stderr


# --- Slurm ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_array_task_trains_exactly_its_row(tmp_path):
    """SLURM_ARRAY_TASK_ID=1 trains row 1 of `python -m hrsnet runs --profile smoke` and nothing
    else, with the CPU threads Slurm gave the task; an index past the last row is refused."""
    results = tmp_path / "results"
    runs = experiments.profile_runs("smoke", results)
    script = SLURM / "train_array.sbatch"
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_CPUS_PER_TASK": "1"}
    result = _run(["bash", script, "--profile", "smoke", "--results-dir", results], env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    target = runs[1]
    assert f"[task 1] {target.arch} C=1 seed 0 ({target.run_id}, new)" in result.stdout
    assert f"seed 0 ({target.run_id}): complete: " in result.stdout
    assert sorted(path.name for path in (results / "runs").iterdir()) == [target.run_id]
    assert rundir.read_status(target.run_dir()).finished
    config = json.loads((target.run_dir() / rundir.CONFIG_FILE).read_text())
    assert config["train"]["seed"] == 0 and config["environment"]["cpu_threads"] == 1
    assert (results / "notebooks" / f"train_{target.run_id}.ipynb").exists()

    past = _run(["bash", script, "--profile", "smoke", "--results-dir", results], env={"SLURM_ARRAY_TASK_ID": "3"})
    assert past.returncode == 2 and "profile smoke has no run with index 3 (3 runs)" in past.stderr


def _fake_sbatch(tmp_path):
    """A PATH whose `sbatch` records its arguments (one JSON list per call) and prints a job id
    as --parsable does: "4242;cluster" the first time (a multi-cluster site), then "4243"."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch_calls.jsonl"
    script = bin_dir / "sbatch"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"path = {str(calls)!r}\n"
        "with open(path, 'a') as stream:\n"
        "    stream.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "count = sum(1 for _ in open(path))\n"
        "print('4242;cluster' if count == 1 else '4243')\n"
    )
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, calls


def test_submit_queues_the_array_then_the_figures_after_it(tmp_path):
    env, calls = _fake_sbatch(tmp_path)
    results = tmp_path / "results"
    result = _run(
        [SLURM / "submit.sh", "--profile", "smoke", "--seeds", "2", "--parallel", "2", "--results-dir", results]
        + ["--", "--partition", "gpu", "--gres=gpu:1"],
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    train, figures = [json.loads(line) for line in calls.read_text().splitlines()]
    # smoke with 2 seeds: 3 networks x 2 seeds = rows 0..5, at most 2 at once
    assert "--parsable" in train and "--array=0-5%2" in train
    assert train[train.index("--output") + 1] == f"{results}/slurm/train_%A_%a.out"
    assert train[train.index("--chdir") + 1] == str(REPO)
    script = train.index("scripts/slurm/train_array.sbatch")
    assert train[train.index("--partition") + 1] == "gpu" and train.index("--gres=gpu:1") < script
    assert train[script + 1 :] == ["--profile", "smoke", "--results-dir", str(results), "--seeds", "2"]
    # the figures job waits for the whole array (its job id without the cluster name), failed tasks too
    assert "--dependency=afterany:4242" in figures and "--parsable" in figures
    assert "--partition" not in figures
    script = figures.index("scripts/slurm/figures.sbatch")
    assert figures[script + 1 :][:6] == ["--profile", "smoke", "--results-dir", str(results), "--seeds", "2"]
    assert (results / "slurm").is_dir()
    assert "training array 4242 (6 runs, 6 not finished; tasks 0-5%2)" in result.stdout
    assert "figures job 4243 after it" in result.stdout


def test_submit_without_sbatch_says_so_in_one_line(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with bash and the basic tools, but no sbatch
    bin_dir.mkdir()
    for tool in ("bash", "env", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = _run([SLURM / "submit.sh", "--profile", "smoke"], env={"PATH": str(bin_dir)}, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "sbatch not found" in result.stderr
    assert result.stdout == ""
