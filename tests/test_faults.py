"""Fault injection: damaged, missing and foreign run files, bad flags with --force, two writers,
unwritable and full folders. Each fault must lose no data and end in one clear line.

The kill/interrupt cases of `train` are in test_train.py, those of run_all.sh in test_report.py;
figures drawn with unreadable and edited runs among good ones, in test_damage.py.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import child_script, script_validation_losses, small_arguments, small_config, wait_until_held
from fixture_runs import write_fixture_run

import hrsnet.engine.trainer as train_module
from hrsnet import profiles as experiments
from hrsnet import rundir
from hrsnet.__main__ import main
from hrsnet.data import DataNotFoundError
from hrsnet.engine.checkpoint import CheckpointError
from hrsnet.runs import fit, lifecycle, preflight
from hrsnet.runs.lifecycle import check_run
from hrsnet.runs.lock import LOCK_FILE, RunLock, RunLockedError

REPO = Path(__file__).resolve().parents[1]


def small(results_dir, **overrides):
    """conftest.small_config: C=1, the smallest network, one batch per epoch; seconds per run."""
    return small_config(results_dir, **overrides)


def snapshot(run_dir):
    return {
        path.name: path.read_bytes() for path in Path(run_dir).iterdir() if path.is_file() and path.name != LOCK_FILE
    }


# --- data loss ------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_force_with_a_bad_device_keeps_the_finished_run(run_copy):
    config, _ = run_copy
    before = snapshot(config.run_dir())
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        fit(dataclasses.replace(config, device="cuda"), force=True)
    assert snapshot(config.run_dir()) == before


def test_force_with_missing_data_keeps_the_finished_run(run_copy, monkeypatch):
    config, _ = run_copy
    before = snapshot(config.run_dir())

    def no_data(*args, **kwargs):
        raise DataNotFoundError("simulated: the data went away")

    monkeypatch.setattr(lifecycle, "load_dataset", no_data)
    with pytest.raises(DataNotFoundError):
        fit(config, force=True)
    assert snapshot(config.run_dir()) == before


def test_a_second_writer_is_refused_and_names_the_holder(tmp_path, capsys):
    config = small(tmp_path)
    with RunLock(config.run_dir()):
        with pytest.raises(RunLockedError, match=f"is being trained by pid {os.getpid()} on host "):
            fit(config)
        argv = ["train", *small_arguments(tmp_path)]
        assert main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: run ") and "is being trained by pid" in error and "\n" not in error
    assert [path.name for path in config.run_dir().iterdir()] == [LOCK_FILE]  # nothing written


@pytest.mark.slow
def test_two_train_processes_on_one_run(tmp_path):
    """The report's case: two `train` commands on one run. The second is refused; the first finishes.
    The first holds in its first epoch (conftest.child_script) until the second has been refused."""
    hold = tmp_path / "hold"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    arguments = ["train", *small_arguments(tmp_path / "results", epochs=1)]
    first = subprocess.Popen(
        [sys.executable, child_script(hold, hold_epoch=1), *arguments],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_held(first, hold)
        lock = next((tmp_path / "results" / "runs").glob(f"*/{LOCK_FILE}"))
        assert lock.stat().st_size > 0  # the holder's pid and host
        second = subprocess.run(
            [sys.executable, "-m", "hrsnet", *arguments], env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        (hold / "release").touch()
    assert second.returncode == 1 and f"is being trained by pid {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert json.loads(stdout)["status"] == "complete"
    assert rundir.read_status(lock.parent).finished and (lock.parent / rundir.TEST_METRICS_FILE).exists()


# --- damaged and missing run files ---------------------------------------------------------------


def _crash_in_test_pass_once(monkeypatch):
    real = train_module.Trainer.write_test_outputs

    def crash(self):
        monkeypatch.setattr(train_module.Trainer, "write_test_outputs", real)
        raise RuntimeError("simulated crash during the test pass")

    monkeypatch.setattr(train_module.Trainer, "write_test_outputs", crash)


def test_a_deleted_best_checkpoint_still_lets_the_run_finish(tmp_path, monkeypatch):
    """Best at epoch 1, last at epoch 2; the test pass crashed, then best_epoch001.pt was deleted."""
    script_validation_losses(monkeypatch, [0.9, 1.0])
    config = small(tmp_path, epochs=2, patience=5)
    _crash_in_test_pass_once(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(config)
    (config.run_dir() / "best_epoch001.pt").unlink()
    result = fit(config)
    assert result.status.state == "complete" and "best_epoch001.pt unavailable" in result.status.reason
    assert result.test_metrics["best"] is None and result.test_metrics["last"]["epoch"] == 2


def test_a_garbage_status_file_is_named_and_repaired(run_copy):
    config, _ = run_copy
    metrics = json.loads((config.run_dir() / rundir.TEST_METRICS_FILE).read_text())
    (config.run_dir() / rundir.STATUS_FILE).write_bytes(b"\xff\xfe\x00garbage")
    check = check_run(config.run_dir())
    assert check.state == "unreadable" and str(config.run_dir() / "status") in check.problems[0]
    assert check.action == "resume after epoch 2"
    assert fit(config).status.state == "complete"  # resumed from last.pt: the test pass is redone
    assert json.loads((config.run_dir() / rundir.TEST_METRICS_FILE).read_text()) == metrics


def test_a_finished_run_missing_its_metrics_is_repaired_from_the_checkpoint(run_copy):
    config, _ = run_copy
    first = rundir.read_run(config.run_dir())
    (config.run_dir() / rundir.TEST_METRICS_FILE).unlink()
    history = config.run_dir() / rundir.HISTORY_FILE
    history.write_text("\n".join(history.read_text().splitlines()[:-1]) + "\n")  # one epoch short
    check = check_run(config.run_dir())
    assert (
        f"{config.run_dir() / rundir.TEST_METRICS_FILE} is missing, though the run's status is complete"
        in check.problems
    )
    assert "history.csv has 1 epochs, the checkpoint 2" in check.problems
    repaired = fit(config)
    assert repaired.test_metrics == first.test_metrics and len(repaired.history) == 2


def test_a_finished_run_without_a_checkpoint_cannot_resume(run_copy):
    config, _ = run_copy
    (config.run_dir() / rundir.TEST_METRICS_FILE).unlink()
    (config.run_dir() / rundir.LAST_CHECKPOINT).unlink()
    with pytest.raises(CheckpointError, match="cannot resume: no checkpoint .* rerun with --force"):
        fit(config)
    assert fit(config, force=True).status.state == "complete"


def test_leftover_temporary_files_are_removed(tmp_path):
    config = small(tmp_path, epochs=1)
    config.run_dir().mkdir(parents=True)
    leftover = config.run_dir() / ".last.pt.abc123.tmp"
    leftover.write_bytes(b"\0" * 1000)
    fit(config)
    assert not leftover.exists() and not list(config.run_dir().glob(".*.tmp"))


def test_runs_marks_a_stale_lock_and_what_a_rerun_does(tmp_path, capsys):
    smoke = experiments.profile_runs("smoke", tmp_path)
    write_fixture_run(smoke[0], "running", 1, with_test=False)
    # What a killed holder leaves: holder info in .lock, and no process holding it.
    (smoke[0].run_dir() / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "h", "since": "t"}))
    assert main(["runs", "--profile", "smoke", "--results-dir", str(tmp_path), "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["state"] == "running" and "its process died (the lock is stale)" in row["action"]
    assert row["action"].startswith("start")  # no checkpoint: it starts over


# --- unwritable and full folders -------------------------------------------------------------


def test_an_unwritable_results_folder_fails_before_any_data_is_loaded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lifecycle, "load_dataset", lambda *a, **k: pytest.fail("data was loaded"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = [
        "train",
        "--dataset",
        "digits",
        "--image-size",
        "32",
        "--device",
        "cpu",
        "--quiet",
        "--results-dir",
        str(blocker / "results"),
    ]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: results folder {blocker / 'results'} cannot be created") and "\n" not in error


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 60 MB tmpfs (root only): room for the best checkpoint of a C=1 network, not for last.pt."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_not_enough_disk_is_refused_before_training(tiny_filesystem):
    config = small(tiny_filesystem)
    with pytest.raises(ValueError, match=r"not enough space in .*: .* free, training needs about .*\(last\.pt about"):
        fit(config)


def test_ctrl_c_during_a_checkpoint_write_finishes_the_file_then_interrupts(tmp_path):
    """A Ctrl-C that lands inside torch.save used to come out as torch's RuntimeError
    ("unexpected pos"), and the run ended "failed" with a disk-space message (seen in
    run_all.sh's Ctrl-C test). Now the write completes, the file is whole, and the
    KeyboardInterrupt follows."""
    import signal

    path = tmp_path / "last.pt"
    state = {"weights": torch.arange(1_000_000)}

    def write(stream):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the checkpoint is being written
        torch.save(state, stream)

    with pytest.raises(KeyboardInterrupt):
        rundir.atomic_write(path, write, binary=True)
    assert torch.equal(torch.load(path)["weights"], state["weights"])
    assert not list(tmp_path.glob(f".*{rundir.TEMP_SUFFIX}"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


def test_a_full_disk_mid_run_names_the_file_and_loses_no_epoch(tiny_filesystem, tmp_path, monkeypatch):
    """The preflight check bypassed: the checkpoint write fails; the message says why and the
    status claims no epoch that was not saved; the run then resumes on a disk with room."""
    monkeypatch.setattr(preflight, "check_disk_space", lambda *args, **kwargs: None)
    config = small(tiny_filesystem)
    with pytest.raises(rundir.RunFileError, match=r"last\.pt.*no space left on device"):
        fit(config)
    status = rundir.read_status(config.run_dir())
    assert status.state == "failed" and "after epoch 0" in status.reason
    assert not list(config.run_dir().glob(".*.tmp"))
    monkeypatch.undo()
    roomy = tmp_path / "roomy"
    shutil.copytree(tiny_filesystem / "runs", roomy / "runs")
    result = fit(dataclasses.replace(config, results_dir=str(roomy)))
    assert result.status.state == "complete" and len(result.history) == 2
