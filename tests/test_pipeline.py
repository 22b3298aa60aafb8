"""The pipeline, `python -m hrsnet all` (./run_all.sh wraps it): the pool of training notebooks, each
run's outcome read from its run directory, signals, the figures' staging folder and lock, paths with
spaces and non-ASCII characters, the training notebook's parameters.

Most tests run the pipeline in this process with a fake notebook process (FAKE_NOTEBOOK: a script
of the standard library only, which writes run directories as the training notebook would, copied
from fixture runs, and whose behaviour each test plans), so they take seconds; two run the real
notebooks (one training notebook; ./run_all.sh end to end on a one-run profile).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixture_runs import write_fixture_run
from imagefolder_fixture import CLASSES, write_image_folder

from hrsnet import pipeline, profiles, rundir
from hrsnet.__main__ import main
from hrsnet.runs.lock import RunLock, lock_state

REPO = Path(__file__).resolve().parents[1]
ODD = "E3 dir/résultats x"  # a space and a non-ASCII character, in every folder the pipeline is given

FAKE_NOTEBOOK = r'''
"""A notebook process for the pipeline's tests: argv = [spec, plan]. Writes run directories as the
training notebook would (lock, status, history per epoch, then a fixture run's files), or figures."""
import fcntl, json, os, shutil, signal, socket, sys, time

spec, plan = json.loads(sys.argv[1]), json.load(open(sys.argv[2], encoding="utf-8"))
stop = []
for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda number, frame: stop.append(number))
notebook = os.path.basename(spec["input"]).split(".")[0]
parameters = spec["parameters"]
name = os.path.basename(spec["output"]).split(".")[1]
keys = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
record = {"parameters": parameters, "env": {key: os.environ.get(key) for key in keys}}
with open(os.path.join(plan["records"], name + ".json"), "w", encoding="utf-8") as stream:
    json.dump(record, stream)
# A notebook's text that looks like an outcome: the pipeline must not read it.
print("[hrnet_c1_digits32_00000000] FAILED: text in a log is not a run's outcome", file=sys.stderr)


def write(path, text):
    with open(path + ".tmp", "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(path + ".tmp", path)


def finish(error=None, interrupted=False, code=0):
    lead = {"tags": ["report-lead"]} if notebook == "02_figures" else {}
    cell = {"cell_type": "markdown", "metadata": lead, "source": f"FAKE {notebook} {plan.get('mark', '')}"}
    write(spec["output"], json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 4}))
    write(spec["result"], json.dumps({"error": error, "interrupted": interrupted}))
    sys.exit(code)


def wait(seconds):
    deadline = time.monotonic() + seconds
    while not stop and time.monotonic() < deadline:
        time.sleep(0.01)


if notebook == "01_train":
    group = plan.get("groups", {}).get(f"{parameters['arch']} {parameters['width']}", {})
    if group.get("error_before"):
        finish(group["error_before"], code=1)
    errors = []
    for seed in parameters["seeds"]:
        run = plan["runs"][f"{parameters['arch']} {parameters['width']} {seed}"]
        run_dir, template = run["run_dir"], run["template"]
        os.makedirs(run_dir, exist_ok=True)
        lock = os.open(os.path.join(run_dir, ".lock"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # another process trains it: skipped, as fit_seeds does
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": "now", "argv": "fake"}
        os.pwrite(lock, json.dumps(holder).encode(), 0)
        history = open(os.path.join(template, "history.csv"), encoding="utf-8").read().splitlines(keepends=True)
        outcome = run.get("outcome", "complete")
        for epoch in range(1, len(history)):
            write(os.path.join(run_dir, "history.csv"), "".join(history[: epoch + 1]))
            write(os.path.join(run_dir, "status"), f"running\nepoch {epoch} done\n")
            if run.get("signal_after_epoch") == epoch:
                deadline = time.monotonic() + 60
                while run.get("signal_after_file") and not os.path.exists(run["signal_after_file"]):
                    time.sleep(0.01) if time.monotonic() < deadline else sys.exit("no second job")
                os.kill(os.getppid(), getattr(signal, run["signal"]))
            if outcome == "die":
                os._exit(9)  # killed mid-run: its status still says running
            if outcome == "fail":
                write(os.path.join(run_dir, "status"), f"failed\nValueError: boom (after epoch {epoch})\n")
                errors.append("ValueError: boom")
                break
            wait(run.get("epoch_seconds", 0))
            if stop:
                write(os.path.join(run_dir, "status"), f"failed\ninterrupted after epoch {epoch}; run again\n")
                finish("KeyboardInterrupt", True, 130)
        else:
            for file in os.listdir(template):
                if file not in ("status", ".lock"):
                    shutil.copy(os.path.join(template, file), run_dir)
            shutil.copy(os.path.join(template, "status"), run_dir)
        os.ftruncate(lock, 0)
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    if group.get("error_after"):
        errors.append(group["error_after"])
    finish(errors[0] if errors else None, code=1 if errors else 0)
elif notebook == "02_figures":
    target = os.path.join(parameters["figures_dir"], plan["profile_name"])
    os.makedirs(target, exist_ok=True)
    write(os.path.join(target, "fig6_accuracy.png"), plan.get("mark", ""))
    if plan.get("figures_kill_parent"):
        os.kill(os.getppid(), signal.SIGKILL)
        finish()
    if plan.get("figures_error"):
        finish(plan["figures_error"], code=1)
    write(os.path.join(target, "results_table.md"), plan.get("mark", ""))
finish()
'''


class FakeNotebooks:
    """The plan the fake notebook process follows, and what it recorded per notebook."""

    def __init__(self, root: Path):
        self.root = root
        self.script = root / "fake_notebook.py"
        self.script.write_text(FAKE_NOTEBOOK)
        self.plan_path = root / "plan.json"
        self.records = root / "records"
        self.records.mkdir()
        self.templates = root / "templates"
        self.plan = {"records": str(self.records), "runs": {}, "profile_name": "smoke", "mark": ""}
        self.plan_path.write_text(json.dumps(self.plan))

    def command(self, spec):
        self.plan_path.write_text(json.dumps(self.plan))
        return [sys.executable, str(self.script), json.dumps(spec), str(self.plan_path)]

    def add_runs(self, configs, **behaviour):
        """Each run, trained, becomes a copy of a complete fixture run of 2 epochs."""
        for config in configs:
            template = dataclasses.replace(config, results_dir=str(self.templates))
            if not template.run_dir().exists():
                write_fixture_run(template, "complete", epochs=2)
            self.plan["runs"][f"{config.arch} {config.width} {config.seed}"] = {
                "run_dir": str(config.run_dir()),
                "template": str(template.run_dir()),
                **behaviour,
            }

    def record(self, name):
        return json.loads((self.records / f"{name}.json").read_text())


@pytest.fixture
def fake(tmp_path, monkeypatch):
    fakes = FakeNotebooks(tmp_path)
    monkeypatch.setattr(pipeline, "notebook_job_command", fakes.command)
    monkeypatch.setattr(pipeline, "visible_gpus", lambda: [])
    monkeypatch.setattr(pipeline, "cpu_cores", lambda: 4)
    return fakes


def run_all(capsys, *args):
    """`python -m hrsnet all ARGS` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(["all", *map(str, args)])
    except SystemExit as exit:  # argparse
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def folders(tmp_path):
    results, figures = tmp_path / ODD / "results", tmp_path / ODD / "figures é"
    return results, figures, ("--results-dir", results, "--figures-dir", figures)


def leftovers(results):
    return sorted(path.name for path in (results / "notebooks").glob(".*"))


# --- the command line ----------------------------------------------------------------------------


def test_run_all_help():
    """./run_all.sh is `python -m hrsnet all` with this checkout's environment; every flag is in its help."""
    result = subprocess.run(
        [str(REPO / "run_all.sh"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--profile", "--seeds N", "--force", "--only", "--jobs N", "--gpus LIST", "--no-train"):
        assert flag in result.stdout, flag
    for flag in ("--data-dir", "--results-dir", "--figures-dir", "--task", "scripts/slurm/submit.sh", "smoke"):
        assert flag in result.stdout, flag
    assert (REPO / "run_all.sh").read_text().count("\n") < 10 and not (REPO / "scripts" / "train_lines.sh").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--profile", "fast"), "profile must be one of paper, quick, smoke, auto or a .toml file; got 'fast'"),
        (("--bogus",), "unrecognized arguments: --bogus"),
        (("--profile",), "argument --profile: expected one argument"),
        (("--jobs", "0"), "argument --jobs: must be a whole number >= 1, got '0'"),
        (("--seeds", "two"), "argument --seeds: must be a whole number >= 1, got 'two'"),
        (("--gpus", "0;1"), "argument --gpus: needs GPU indices separated by commas, e.g. 0,1; got '0;1'"),
        (("--only", "resnet"), "--only 'resnet' matches no run of profile smoke"),
        (("--task", "7"), "profile smoke has no run with index 7 (4 runs)"),
        (("--task", "1", "--jobs", "2"), "--task trains one run: it takes neither --no-train nor --jobs"),
    ],
)
def test_bad_arguments_are_one_line_errors(fake, tmp_path, capsys, args, message):
    results, _, paths = folders(tmp_path)
    code, out, err = run_all(capsys, "--profile", "smoke", *paths, *args)
    assert code == 2 and message in err.strip().splitlines()[-1], err
    assert not (results / "runs").exists() and not list(fake.records.iterdir())


def test_gpus_without_a_gpu_is_an_error(fake, tmp_path, capsys):
    """--gpus on a machine without a visible GPU used to say "started on GPU 0" and train on the CPU."""
    results, _, paths = folders(tmp_path)
    code, out, err = run_all(capsys, "--profile", "smoke", *paths, "--jobs", "2", "--gpus", "0")
    assert code == 2 and err.count("\n") == 1
    assert "error: --gpus 0: no CUDA GPU is visible to this process" in err and "leave out --gpus" in err
    assert "started" not in out and not list(fake.records.iterdir())


# --- the pool, and outcomes from run directories --------------------------------------------------


def test_every_group_trains_with_its_share_and_paths_keep_spaces(fake, tmp_path, capsys):
    """Four networks x C=1 on two jobs, each job one notebook with a share of the cores; folders with a
    space and a non-ASCII character reach every notebook whole, and nothing lands anywhere else."""
    results, figures, paths = folders(tmp_path)
    data = tmp_path / ODD / "données"
    runs = profiles.profile_runs("smoke", results, str(data))
    fake.add_runs(runs)
    before = set(os.listdir(tmp_path))
    code, out, err = run_all(capsys, "--profile", "smoke", *paths, "--data-dir", data, "--jobs", "2")
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == "profile: smoke (asked for)"
    assert "[jobs] 2 at a time on 4 CPU cores, 2 threads each (OMP_NUM_THREADS)" in lines
    for number, run in enumerate(runs, 1):
        assert f"[train {number}/4] {run.arch} C=1, seed 0: started with 2 CPU threads" in lines
        done = next(
            i for i, line in enumerate(lines) if line.startswith(f"[train {number}/4] {run.arch} C=1, seed 0: done in ")
        )
        assert lines[done + 1] == f"  seed 0 ({run.run_id}): complete: reached the epoch limit (2)"
        record = fake.record(f"train_smoke_{run.arch}_c1")
        assert record["env"] == {"CUDA_VISIBLE_DEVICES": None, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
        assert record["parameters"] == {
            "arch": run.arch,
            "width": 1,
            "seeds": [0],
            "profile": "smoke",
            "results_dir": str(results),
            "force": False,
            "data_dir": str(data),
        }
        assert rundir.read_status(run.run_dir()).state == "complete"
    figures_record = fake.record("02_figures")["parameters"]
    assert figures_record["results_dir"] == str(results) and figures_record["data_dir"] == str(data)
    assert Path(figures_record["figures_dir"]).parent == figures  # the staging folder, beside figures/smoke
    executed = sorted(path.name for path in (results / "notebooks").iterdir())
    names = [f"train_smoke_{run.arch}_c1" for run in runs] + ["00_architecture", "02_figures"]
    assert executed == sorted(f"{name}.{suffix}" for name in names for suffix in ("ipynb", "log"))
    assert sorted(os.listdir(figures)) == ["smoke"] and (figures / "smoke" / "results_table.md").exists()
    assert "FAKE 02_figures" in (results / "report.html").read_text()
    assert f"  figures:  {figures}/smoke/" in lines and f"  report:   {results}/report.html" in lines
    assert set(os.listdir(tmp_path)) - before == {"E3 dir"}  # nothing beside the given folders
    assert not {"with", "E3", "x", "résultats"} & (set(os.listdir(REPO)) | set(os.listdir(Path.cwd())))


def test_gpus_are_handed_out_round_robin(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "visible_gpus", lambda: ["0", "1"])
    results, _, paths = folders(tmp_path)
    fake.add_runs(profiles.profile_runs("smoke", results))
    code, out, err = run_all(capsys, "--profile", "smoke", *paths, "--jobs", "2")
    assert code == 0, out + err
    assert "[jobs] 2 at a time on GPUs 0 1, 2 CPU threads each" in out
    assert "started on GPU 0" in out and "started on GPU 1" in out
    devices = {
        fake.record(f"train_smoke_{arch}_c1")["env"]["CUDA_VISIBLE_DEVICES"]
        for arch in profiles.PROFILES["smoke"].networks
    }
    assert devices == {"0", "1"}


def test_outcomes_are_read_from_run_directories(fake, tmp_path, capsys):
    """A failed seed, a seed whose process was killed (status left "running"), a notebook that failed
    after its runs finished and one that failed before any: each is named, the other seeds still
    train, the figures are still made, and the exit code is 1. The notebooks' own text is ignored."""
    results, figures, paths = folders(tmp_path)
    runs = {(run.arch, run.seed): run for run in profiles.profile_runs("smoke", results, seeds=2)}
    fake.add_runs(runs.values())
    fake.plan["runs"]["hrnet_official 1 0"]["outcome"] = "fail"
    fake.plan["runs"]["hrnet 1 1"]["outcome"] = "die"
    fake.plan["groups"] = {
        "hrsnet 1": {"error_after": "NameError: name 'figure' is not defined"},
        "hrsnet_skip 1": {"error_before": "ValueError: seeds must be a non-empty list of distinct whole numbers"},
    }
    code, out, err = run_all(capsys, "--profile", "smoke", "--seeds", "2", *paths)
    assert code == 1, out + err
    line = {key: f"  seed {run.seed} ({run.run_id}): " for key, run in runs.items()}
    assert line["hrnet_official", 0] + "failed: ValueError: boom (after epoch 1)" in out
    assert line["hrnet_official", 1] + "complete: reached the epoch limit (2)" in out
    killed = rundir.read_status(runs["hrnet", 1].run_dir())
    assert killed.state == "failed" and "interrupted after epoch 1 (its training process ended" in killed.reason
    assert line["hrnet", 0] + "complete: reached the epoch limit (2)" in out
    assert line["hrnet", 1] + "failed: interrupted after epoch 1 (its training process ended" in out
    assert "[train 3/4] hrsnet C=1, seeds 0 1: FAILED after" in out
    assert line["hrsnet", 0] + "complete: " in out and "  FAILED: NameError: name 'figure' is not defined" in err
    assert line["hrsnet_skip", 0] + "not started" in out
    assert "  FAILED: ValueError: seeds must be a non-empty list" in err
    expected = [runs["hrnet_official", 0].run_id, runs["hrnet", 1].run_id, "hrsnet_c1"]
    expected += [runs["hrsnet_skip", 0].run_id, runs["hrsnet_skip", 1].run_id]
    assert f"failed runs (5): {' '.join(expected)}" in err
    assert f"log: {results}/notebooks/train_smoke_hrsnet_c1.log" in err
    assert "done in" in out and (figures / "smoke" / "results_table.md").exists()  # the figures still come
    assert not leftovers(results)


def test_runs_held_by_another_process_are_skipped_with_its_holder(fake, tmp_path, capsys):
    results, _, paths = folders(tmp_path)
    first, second = profiles.profile_runs("smoke", results, only="hrnet", seeds=2)
    fake.add_runs([first, second])
    with RunLock(second.run_dir()):
        code, out, err = run_all(capsys, "--profile", "smoke", "--only", "hrnet", "--seeds", "2", *paths)
        assert code == 0, out + err
        holder = f"skipped: being trained by pid {os.getpid()} on host {socket.gethostname()} since "
        assert "[train 1/1] hrnet C=1, seed 0: started\n" in out
        assert f"  seed 1 ({second.run_id}): {holder}" in out
        assert f"  seed 0 ({first.run_id}): complete: " in out
        assert fake.record("train_smoke_hrnet_c1")["parameters"]["seeds"] == [0]

        (fake.records / "train_smoke_hrnet_c1.json").unlink()
        code, out, err = run_all(capsys, "--profile", "smoke", "--only", second.run_id, "--seeds", "2", *paths)
        assert code == 0, out + err
        assert f"[train 1/1] hrnet C=1\n  seed 1 ({second.run_id}): {holder}" in out  # nothing to start
        assert not (fake.records / "train_smoke_hrnet_c1.json").exists()
    code, out, err = run_all(capsys, "--profile", "smoke", "--only", "hrnet", "--seeds", "2", *paths)
    assert "[train 1/1] hrnet C=1, seed 1: started" in out and first.run_id not in out  # finished: not listed


def test_task_trains_exactly_its_row_with_the_slurm_cpus(fake, tmp_path, monkeypatch, capsys):
    """`all --task INDEX` (the Slurm array task) trains row INDEX of `python -m hrsnet runs` and nothing
    else, with the CPUs Slurm gave the task; a finished row ends at once."""
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    results, _, paths = folders(tmp_path)
    runs = profiles.profile_runs("smoke", results)
    fake.add_runs(runs)
    target = runs[1]
    code, out, err = run_all(capsys, "--profile", "smoke", *paths, "--task", "1")
    assert code == 0, out + err
    assert f"[task 1] {target.arch} C=1 seed 0 ({target.run_id}, new) on {socket.gethostname()}" in out
    assert re.search(rf"  seed 0 \({target.run_id}\): complete: reached the epoch limit \(2\) \[\d+s\]", out)
    assert sorted(os.listdir(results / "runs")) == [target.run_id]
    record = fake.record(f"train_{target.run_id}")
    assert record["parameters"]["seeds"] == [0] and record["env"]["OMP_NUM_THREADS"] == "3"
    assert (results / "notebooks" / f"train_{target.run_id}.ipynb").exists() and "[figures]" not in out

    (fake.records / f"train_{target.run_id}.json").unlink()
    code, out, err = run_all(capsys, "--profile", "smoke", *paths, "--task", "1")
    assert code == 0 and f"  seed 0 ({target.run_id}): already finished (complete): " in out
    assert not (fake.records / f"train_{target.run_id}.json").exists()


# --- signals -------------------------------------------------------------------------------------


@pytest.fixture
def sigint_raises():
    """Ctrl-C as an interactive process has it, whatever this suite was started with (nohup, &)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_every_job_and_says_how_to_resume(fake, tmp_path, capsys, sigint_raises, name, code):
    """SIGTERM (kill, Slurm) or Ctrl-C while two jobs train: every job is stopped at its last completed
    epoch, nothing is left "running" or locked, no further group starts, no figures are drawn."""
    results, figures, paths = folders(tmp_path)
    runs = profiles.profile_runs("smoke", results)
    fake.add_runs(runs, epoch_seconds=60)
    # The signal comes once the second job is at its first epoch too.
    second_started = str(runs[1].run_dir() / rundir.HISTORY_FILE)
    fake.plan["runs"]["hrnet_official 1 0"].update(signal_after_epoch=1, signal=name, signal_after_file=second_started)
    handler = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    exit_code, out, err = run_all(capsys, "--profile", "smoke", *paths, "--jobs", "2")
    assert exit_code == code, out + err
    assert time.monotonic() - started < 50
    assert f"interrupted ({name}): run the same command again to resume" in err
    for run in runs[:2]:
        status = rundir.read_status(run.run_dir())
        assert status.state == "failed" and "interrupted after epoch 1" in status.reason, status
        assert lock_state(run.run_dir()) != "held"
        assert f"[train {runs.index(run) + 1}/4] {run.arch} C=1, seed 0: interrupted after " in out
    assert not (results / "runs" / runs[2].run_id).exists() and "[train 3/4]" not in out
    assert "[figures]" not in out and "done in" not in out and not figures.exists()
    assert not leftovers(results)
    assert signal.getsignal(signal.SIGTERM) == handler  # the pipeline's handler is gone again


def test_sigint_stays_ignored_when_the_pipeline_was_started_with_it_ignored(fake, tmp_path, capsys):
    """`./run_all.sh &` in a script starts it with SIGINT ignored: a Ctrl-C meant for the shell does
    not stop it (SIGTERM still does)."""
    results, _, paths = folders(tmp_path)
    run = profiles.profile_runs("smoke", results, only="hrnet")[0]
    fake.add_runs([run], signal_after_epoch=1, signal="SIGINT", epoch_seconds=0.5)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code, out, err = run_all(capsys, "--profile", "smoke", "--only", "hrnet", *paths)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 0, out + err
    assert rundir.read_status(run.run_dir()).state == "complete"


# --- figures: staging, swap, lock ------------------------------------------------------------------


def test_a_failed_figures_notebook_keeps_the_previous_figures_and_says_why(fake, tmp_path, capsys):
    results, figures, paths = folders(tmp_path)
    fake.plan["mark"] = "old"
    code, out, err = run_all(capsys, "--profile", "smoke", "--no-train", *paths)
    assert code == 0, out + err
    assert "[train] skipped (--no-train); 4 runs of profile smoke are not finished" in out
    old = {path.name: path.read_text() for path in (figures / "smoke").iterdir()}
    report = (results / "report.html").read_text()
    assert json.loads(old.pop(rundir.PIPELINE_FILE))["profile"] == "smoke"  # the pipeline's record beside them
    assert old == {"fig6_accuracy.png": "old", "results_table.md": "old"} and "FAKE 02_figures old" in report
    old = {path.name: path.read_text() for path in (figures / "smoke").iterdir()}

    fake.plan.update(mark="new", figures_error="OSError: [Errno 28] No space left on device: 'fig7_train_loss.png'")
    code, out, err = run_all(capsys, "--profile", "smoke", "--no-train", *paths)
    assert code == 1, out + err
    assert (
        "  figures:  NOT written: notebooks/02_figures.ipynb failed: "
        "OSError: [Errno 28] No space left on device: 'fig7_train_loss.png'"
    ) in out
    assert f"log: {results}/notebooks/02_figures.log; {figures}/smoke/ keeps the previous figures" in out
    assert f"  report:   not written (it shows the figures); {results}/report.html is the previous one" in out
    assert "table:" not in out and "failed notebooks: 02_figures.ipynb" in err
    assert {path.name: path.read_text() for path in (figures / "smoke").iterdir()} == old
    assert (results / "report.html").read_text() == report
    assert sorted(os.listdir(figures)) == ["smoke"]  # the half-written staging folder is gone


def test_figures_replace_the_previous_set_whole(fake, tmp_path, capsys, monkeypatch):
    """The new set replaces the old one as a whole (files of the old set do not linger), also where
    the system cannot swap two folders in one step."""
    results, figures, paths = folders(tmp_path)
    (figures / "smoke").mkdir(parents=True)
    (figures / "smoke" / "stale.png").write_text("from an older profile")
    for swap in (True, False):
        if not swap:
            monkeypatch.setattr(pipeline, "_exchange", lambda first, second: False)
        fake.plan["mark"] = f"set {swap}"
        code, out, err = run_all(capsys, "--profile", "smoke", "--no-train", *paths)
        assert code == 0, out + err
        assert sorted(os.listdir(figures / "smoke")) == ["fig6_accuracy.png", rundir.PIPELINE_FILE, "results_table.md"]
        assert (figures / "smoke" / "results_table.md").read_text() == f"set {swap}"
        assert sorted(os.listdir(figures)) == ["smoke"]


def test_the_figures_wait_for_another_pipeline_on_the_same_results(fake, tmp_path, capsys, monkeypatch):
    """Two pipelines on one results folder write the figures and the report one after the other: the
    second waits for the first's lock (here held by this process, released once the wait is announced)."""
    results, figures, paths = folders(tmp_path)
    results.mkdir(parents=True)
    lock = RunLock(results).acquire()  # another pipeline writing its figures
    said = pipeline.say

    def say(text, error=False):
        said(text, error)
        if text.startswith("[figures] waiting for"):
            lock.release()

    monkeypatch.setattr(pipeline, "say", say)
    try:
        code, out, err = run_all(capsys, "--profile", "smoke", "--no-train", *paths)
    finally:
        lock.release()
    assert code == 0, out + err
    assert f"[figures] waiting for pid {os.getpid()} on host {socket.gethostname()} since " in out
    assert out.index("waiting for") < out.index("[architecture]") and (figures / "smoke").is_dir()


DRIVER = """
import json, sys
from hrsnet import pipeline
from hrsnet.__main__ import main
fake, plan = sys.argv[1], sys.argv[2]
pipeline.notebook_job_command = lambda spec: [sys.executable, fake, json.dumps(spec), plan]
sys.exit(main(["all", *sys.argv[3:]]))
"""


@pytest.mark.slow
def test_a_pipeline_killed_mid_figures_leaves_the_previous_set(fake, tmp_path, capsys):
    """SIGKILL while the figures notebook writes: the previous set stays whole, the lock is free, and
    the next pipeline removes the half-written staging folder."""
    results, figures, paths = folders(tmp_path)
    fake.plan["mark"] = "old"
    assert run_all(capsys, "--profile", "smoke", "--no-train", *paths)[0] == 0
    fake.plan.update(mark="half", figures_kill_parent=True)
    fake.plan_path.write_text(json.dumps(fake.plan))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    killed = subprocess.run(
        [sys.executable, driver, fake.script, fake.plan_path, "--profile", "smoke", "--no-train", *paths],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert (figures / "smoke" / "fig6_accuracy.png").read_text() == "old"
    assert (figures / "smoke" / "results_table.md").read_text() == "old"
    assert [name for name in os.listdir(figures) if ".staging." in name]  # left by the killed pipeline
    assert lock_state(results) != "held"
    fake.plan.update(mark="new", figures_kill_parent=False)
    assert run_all(capsys, "--profile", "smoke", "--no-train", *paths)[0] == 0
    assert sorted(os.listdir(figures)) == ["smoke"]
    assert (figures / "smoke" / "results_table.md").read_text() == "new"


def test_recover_figures_puts_a_moved_set_back(tmp_path):
    """A pipeline killed between the two renames of the fallback swap: the next one puts the set back."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = pipeline._host()
    moved = tmp_path / f".smoke.previous.{host}.{dead.pid}"
    moved.mkdir()
    (moved / "fig.png").write_text("previous")
    staging = tmp_path / f".quick.staging.{host}.{dead.pid}"
    (staging / "quick").mkdir(parents=True)
    live = tmp_path / f".paper.staging.{host}.{os.getpid()}"  # a live pipeline's: left alone
    live.mkdir()
    pipeline.recover_figures(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "smoke"])
    assert (tmp_path / "smoke" / "fig.png").read_text() == "previous"


# --- the training notebook's parameters --------------------------------------------------------------

ALLOWED_SEEDS = "seeds must be a non-empty list of distinct whole numbers >= 0, e.g. [0, 1, 2]"


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"seeds": 0}, f"{ALLOWED_SEEDS}; got 0"),
        ({"seeds": "12"}, f"{ALLOWED_SEEDS}; got '12'"),
        ({"seeds": []}, f"{ALLOWED_SEEDS}; got []"),
        ({"seeds": [0, 0]}, f"{ALLOWED_SEEDS}; got [0, 0]"),
        ({"seeds": [True]}, f"{ALLOWED_SEEDS}; got [True]"),
        ({"force": "yes"}, "force must be True or False; got 'yes'"),
        ({"force": 1}, "force must be True or False (True starts finished runs over); got 1"),
        ({"pack": "maybe"}, "pack must be True or False; got 'maybe'"),
        ({"settings": {"seed": 7}}, "settings must not set seed: it comes from the parameter seeds"),
        ({"settings": {"arch": "hrsnet"}}, "settings must not set arch: it comes from the parameter arch"),
        ({"settings": [("epochs", 3)]}, "settings must be a dict of TrainConfig settings"),
        ({"settings": {"epoch": 3}}, "unknown setting(s) 'epoch'"),
        ({"settings": {"epochs": "three"}}, "epochs must be a whole number; got 'three'"),
        ({"width": "two"}, "width must be a whole number; got 'two'"),
        ({"arch": "resnet"}, "arch must be one of "),
        ({"profile": "fast"}, "profile must be one of paper, quick, smoke, auto or a .toml file; got 'fast'"),
    ],
)
def test_notebook_parameters_are_checked_in_one_line(tmp_path, parameters, message):
    given = {"profile": "smoke", "arch": "hrnet", "width": 1, "seeds": [0], "results_dir": str(tmp_path), **parameters}
    with pytest.raises(ValueError) as error:
        profiles.seed_runs(**given)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_notebook_parameters_given_as_text_mean_what_the_command_line_means(tmp_path):
    """papermill's `-p force false` passes the string "false": it is False, as --force's absence is."""
    typed = profiles.seed_runs(
        "smoke", "hrnet", 1, [0, 2], tmp_path, None, force=False, pack=True, settings={"epochs": 3}
    )
    text = profiles.seed_runs(
        "smoke",
        "hrnet",
        "1",
        [0, 2],
        str(tmp_path),
        "None",
        force="false",
        pack="TRUE",
        quiet="false",
        settings={"epochs": "3"},
    )
    assert (text.force, text.pack) == (False, True) and text.configs == typed.configs
    assert [config.seed for config in text.configs] == [0, 2] and text.configs[0].epochs == 3
    assert profiles.seed_runs("smoke", "hrnet", 1, [0], tmp_path, force="True").force is True
    assert text.describe().startswith("profile smoke (asked for); runs hrnet_c1_")


@pytest.mark.slow
def test_training_notebook_keeps_a_finished_run_when_force_is_the_text_false(tmp_path, monkeypatch):
    """`papermill notebooks/01_train.ipynb out.ipynb -p force false` used to delete a finished run and
    train it again: the notebook reads its parameters through seed_runs, so "false" is False. It still
    shows the run's curves, as an image (not "<Figure size ... with 2 Axes>"): the figures module keeps
    the kernel's inline backend."""
    import papermill

    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel chooses its own (inline), as in JupyterLab

    config = profiles.profile_runs("smoke", tmp_path, only="hrnet")[0]
    write_fixture_run(config, "complete", epochs=2)
    before = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in config.run_dir().iterdir()}
    papermill.execute_notebook(
        str(REPO / "notebooks" / "01_train.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={
            "arch": "hrnet",
            "width": 1,
            "seeds": [0],
            "profile": "smoke",
            "results_dir": str(tmp_path),
            "force": "false",
        },
        kernel_name=pipeline.KERNEL,
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
    )
    after = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in config.run_dir().iterdir()}
    assert {name: value for name, value in after.items() if name != ".lock"} == {
        name: value for name, value in before.items() if name != ".lock"
    }
    assert "already complete" in (tmp_path / "out.ipynb").read_text()
    shown = tmp_path / "out.ipynb"
    assert _outputs(shown, "image/png"), "no image/png output"
    for output in _outputs(shown, "text/plain"):  # a figure's text form only beside its image
        assert "<Figure size" not in "".join(output["data"]["text/plain"]) or "image/png" in output["data"]


# --- end to end ------------------------------------------------------------------------------------


# One run on a small image folder (24 training images of 3 classes, batch 4: 6 steps an epoch, each
# long enough that a stop sent after the first lands inside the next; on the CPU, as a GPU could finish
# the run before the stop arrives), and one figure.
E2E_PROFILE = """
description = "one network at C=1 on a small image folder, 3 short epochs: the pipeline end to end"
networks = ["hrnet"]
widths = [1]
seeds = 1

[settings]
dataset = "imagefolder"
image_size = 32
batch_size = 4
epochs = 3
patience = 3
device = "cpu"

[figures.fig7_train_loss]
kind = "training_loss"
networks = ["hrnet"]
title = "Training loss"
"""


def _outputs(notebook: Path, mime: str) -> list[dict]:
    cells = json.loads(notebook.read_text())["cells"]
    return [output for cell in cells for output in cell.get("outputs", []) if mime in output.get("data", {})]


@pytest.mark.slow
def test_run_all_end_to_end_with_a_stop_and_a_resume(tmp_path):
    """./run_all.sh on a one-run .toml profile and an image folder, all its folders with spaces and
    non-ASCII characters: SIGTERM (kill, Slurm) after the first epoch stops the real training notebook
    at that epoch (exit 143, the run says so, its lock is free); the same command again resumes the run,
    writes the figures, the executed notebooks (each figure shown as an image, once) and the report,
    and exits 0."""
    root = tmp_path / ODD
    profile = root / "profil é" / "e2e.toml"
    profile.parent.mkdir(parents=True)
    profile.write_text(E2E_PROFILE)
    images = write_image_folder(root / "données", {"train": 10, "test": 2})
    results, figures = root / "résultats", root / "figures é"
    command = [str(REPO / "run_all.sh"), "--profile", str(profile), "--results-dir", str(results)]
    command += ["--figures-dir", str(figures), "--data-dir", str(images)]
    run = profiles.profile_runs(str(profile), results, str(images))[0]
    # One thread; no MPLBACKEND, so that each kernel chooses its own backend (inline), as in JupyterLab.
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    history = run.run_dir() / rundir.HISTORY_FILE
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and process.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "run_all.sh ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 143, out + err
    assert "interrupted (SIGTERM): run the same command again to resume" in err and "[figures]" not in out
    status = rundir.read_status(run.run_dir())
    assert status.state == "failed" and "interrupted after epoch" in status.reason, status
    assert lock_state(run.run_dir()) != "held"

    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"profile: {profile} (asked for)"
    assert f"  seed 0 ({run.run_id}): complete: reached the epoch limit (3)" in lines
    assert rundir.read_history(run.run_dir())["epoch"].tolist() == [1, 2, 3]  # resumed, no epoch twice
    dataset = json.loads((run.run_dir() / rundir.CONFIG_FILE).read_text())["dataset"]
    assert dataset["label"] == "image folder données" and dataset["folder"] == str(images)
    assert list(rundir.read_run(run.run_dir()).per_class["class_name"]) == list(CLASSES)
    assert (figures / "e2e" / "results_table.md").exists() and sorted(os.listdir(figures)) == ["e2e"]
    drawn = json.loads((figures / "e2e" / "figures.json").read_text())["figures"]
    assert drawn == ["fig7_train_loss.png"]
    assert all((figures / "e2e" / name).stat().st_size > 5000 for name in drawn)
    executed = sorted(path.name for path in (results / "notebooks").iterdir())
    names = ("train_e2e_hrnet_c1", "00_architecture", "02_figures")
    assert executed == sorted(f"{name}.{suffix}" for name in names for suffix in ("ipynb", "log"))
    # The figures module keeps a kernel's inline backend: the training notebook holds its curves as an
    # image (not "<Figure size ... with 2 Axes>"), and the figures notebook shows every figure once.
    train_notebook = results / "notebooks" / "train_e2e_hrnet_c1.ipynb"
    assert _outputs(train_notebook, "image/png"), "no image/png output"
    for output in _outputs(train_notebook, "text/plain"):  # a figure's text form only beside its image
        assert "<Figure size" not in "".join(output["data"]["text/plain"]) or "image/png" in output["data"]
    assert len(_outputs(results / "notebooks" / "02_figures.ipynb", "image/png")) == len(drawn)
    report = (results / "report.html").read_text()
    assert report.count("<img") >= len(drawn) and "make_report" not in report  # figures in, code hidden
    assert "Not the paper's setting" in report
    assert f"  report:   {results}/report.html" in lines and f"  figures:  {figures}/e2e/" in lines
    assert sorted(os.listdir(tmp_path)) == ["E3 dir"]  # nothing written beside the given folders
