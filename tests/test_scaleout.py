"""Scale-out on a Slurm cluster: scripts/slurm/ (submit.sh, train_array.sbatch, figures.sbatch).

The pool of jobs on one machine (`python -m hrsnet all --jobs N --gpus ...`) and the array task's
Python side (`all --task INDEX`) are tested in test_pipeline.py, in process.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from fixture_runs import write_fixture_run

from hrsnet import profiles

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


def test_array_task_runs_its_row_through_the_pipeline(tmp_path):
    """train_array.sbatch is `python -m hrsnet all --task $SLURM_ARRAY_TASK_ID` with the script's
    options: a finished row ends at once (a resubmitted array finishes only what is missing)."""
    results = tmp_path / "results"
    target = profiles.profile_runs("smoke", results)[1]
    write_fixture_run(target, "complete", epochs=2)
    script = SLURM / "train_array.sbatch"
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_CPUS_PER_TASK": "1"}
    result = _run(["bash", script, "--profile", "smoke", "--results-dir", results], env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"[task 1] {target.arch} C=1 seed 0 ({target.run_id}, complete)" in result.stdout
    assert f"  seed 0 ({target.run_id}): already finished (complete): reached the epoch limit (2)" in result.stdout
    assert sorted(path.name for path in (results / "runs").iterdir()) == [target.run_id]

    missing = _run(["bash", script, "--profile", "smoke"], env={"SLURM_ARRAY_TASK_ID": ""}, timeout=30)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "SLURM_ARRAY_TASK_ID must be a row index (0, 1, ...); got ''" in missing.stderr


def test_figures_job_is_the_pipeline_without_training(tmp_path):
    """figures.sbatch hands its options to `python -m hrsnet all --no-train` (a bad one fails there)."""
    assert 'exec "$PYTHON" -m hrsnet all --no-train "$@"' in (SLURM / "figures.sbatch").read_text()
    result = _run(["bash", SLURM / "figures.sbatch", "--profile", "fast", "--results-dir", tmp_path], timeout=120)
    assert result.returncode == 2 and "error: profile must be one of " in result.stderr


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
    results = tmp_path / "E3 dir" / "résultats"  # a space and a non-ASCII character reach sbatch whole
    result = _run(
        [SLURM / "submit.sh", "--profile", "smoke", "--seeds", "2", "--parallel", "2", "--results-dir", results]
        + ["--", "--partition", "gpu", "--gres=gpu:1"],
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    train, figures = [json.loads(line) for line in calls.read_text().splitlines()]
    # smoke with 2 seeds: 4 networks x 2 seeds = rows 0..7, at most 2 at once
    assert "--parsable" in train and "--array=0-7%2" in train
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
    assert "training array 4242 (8 runs, 8 not finished; tasks 0-7%2)" in result.stdout
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
