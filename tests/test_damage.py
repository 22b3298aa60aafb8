"""Faults by class, beyond the training loop: damaged run files of every kind, foreign and old
checkpoints, a run folder removed while training, SIGTERM, and bad inputs. Each must end in a
repaired run or one clear line, lose no data, and never leave a damaged run called finished or
breaking the figures of the others.

One finished small run is trained once (conftest.finished_run); each test works on a copy of it
(conftest.run_copy: its checkpoints hard-linked; a run replaces a file by rename, and the tests
unlink one before writing over it, so the original stays).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import child_script, script_validation_losses, small_arguments, small_config, wait_until_held
from fixture_runs import write_fixture_run

import hrsnet.engine.trainer as train_module
from hrsnet import profiles, rundir
from hrsnet.__main__ import main
from hrsnet.analysis import figures as plots
from hrsnet.data import DataNotFoundError, load_dataset
from hrsnet.engine.checkpoint import CHECKPOINT_FORMAT, RESUME_KEYS, CheckpointError
from hrsnet.runs import fit, fit_seeds
from hrsnet.runs.launch import Terminated, sigterm_interrupts
from hrsnet.runs.lifecycle import check_run
from hrsnet.runs.lock import LOCK_FILE

REPO = Path(__file__).resolve().parents[1]


def small(results_dir, **overrides):
    """conftest.small_config: C=1, the smallest network, one batch per epoch."""
    return small_config(results_dir, **overrides)


def cli_arguments(results_dir, **overrides) -> list[str]:
    """`python -m hrsnet train` options of small(results_dir, **overrides)."""
    return small_arguments(results_dir, **overrides)


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != LOCK_FILE}


# --- damaged files, every kind -----------------------------------------------------------------

BINARY = bytes(range(256)) * 8  # not UTF-8, NUL bytes, no structure


def _rewrite_json(change):
    def damage(path: Path) -> None:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return damage


def _rewrite_csv(change):
    def damage(path: Path) -> None:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        change(table).to_csv(path, index=False)

    return damage


def _set_cell(column: str, value: str):
    def change(table):
        table.loc[0, column] = value
        return table

    return change


def _rewrite_examples(**replace):
    def damage(path: Path) -> None:
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        arrays.update(replace)
        with open(path, "wb") as stream:
            np.savez(stream, **{key: value for key, value in arrays.items() if value is not None})

    return damage


# (file, kind of damage, how): every file a finished run needs, each kind that applies to it.
DAMAGE = {
    ("config.json", "wrong shape"): _rewrite_json(lambda data: data.pop("train")),
    ("config.json", "non-number"): _rewrite_json(lambda data: data["train"].update(width="two")),
    ("config.json", "another run's"): _rewrite_json(lambda data: data.update(run_id="hrnet_c9_digits32_00000000")),
    ("split.json", "wrong shape"): _rewrite_json(lambda data: data.pop("val_indices")),
    ("split.json", "non-number"): _rewrite_json(lambda data: data["train_indices"].__setitem__(0, "a")),
    ("split.json", "disagrees"): _rewrite_json(lambda data: data.update(seed=7)),
    ("history.csv", "wrong shape"): _rewrite_csv(lambda table: table.drop(columns=["val_loss"])),
    ("history.csv", "non-number"): _rewrite_csv(_set_cell("val_loss", "abc")),
    ("history.csv", "out of range"): _rewrite_csv(_set_cell("val_acc", "87.5")),
    ("history.csv", "epochs"): _rewrite_csv(_set_cell("epoch", "5")),
    ("per_class.csv", "wrong shape"): _rewrite_csv(lambda table: table.iloc[:-1]),  # a class short
    ("per_class.csv", "non-number"): _rewrite_csv(_set_cell("accuracy", "high")),
    ("per_class.csv", "disagrees"): _rewrite_csv(_set_cell("correct", "9999")),
    ("test_metrics.json", "wrong shape"): lambda path: path.write_text('{"last": 0.5, "best": null}'),
    ("test_metrics.json", "non-number"): _rewrite_json(lambda data: data["last"].update(top1="abc")),
    ("test_metrics.json", "disagrees"): _rewrite_json(lambda data: data["last"].update(epoch=1)),
    ("class_examples.npz", "wrong shape"): _rewrite_examples(predictions=None),
    ("class_examples.npz", "non-number"): _rewrite_examples(labels=np.array(["a"] * 4)),
    ("status", "wrong shape"): lambda path: path.write_text("done\n"),
}


def _cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


for _name in ("config.json", "split.json", "history.csv", "per_class.csv", "test_metrics.json", "class_examples.npz"):
    DAMAGE[(_name, "empty")] = lambda path: path.write_bytes(b"")
    DAMAGE[(_name, "binary")] = lambda path: path.write_bytes(BINARY)
    DAMAGE[(_name, "cut short")] = _cut_short
    DAMAGE[(_name, "missing")] = lambda path: path.unlink()
DAMAGE[("status", "binary")] = lambda path: path.write_bytes(BINARY)
DAMAGE[("status", "cut short")] = _cut_short  # "complete" and half its reason
DAMAGE[("history.csv", "empty cell")] = _rewrite_csv(_set_cell("val_loss", ""))


@pytest.mark.parametrize(("name", "kind"), sorted(DAMAGE), ids=[f"{n}-{k}" for n, k in sorted(DAMAGE)])
def test_a_damaged_file_is_named_and_the_run_is_not_finished(run_copy, name, kind):
    """read_run raises RunFileError naming the file; `runs` (check_run) does not call the run
    finished, names the file, and says a rerun resumes (repairs) from the checkpoint."""
    config, run_dir = run_copy
    DAMAGE[(name, kind)](run_dir / name)
    with pytest.raises(rundir.RunFileError) as raised:
        rundir.read_run(run_dir)
    message = str(raised.value)
    assert str(run_dir / name) in message and "\n" not in message, message
    check = check_run(run_dir)
    assert check.action == "resume after epoch 2", check
    assert any(str(run_dir / name) in problem for problem in check.problems), check


def test_a_missing_status_is_not_finished_and_is_rewritten(run_copy):
    config, run_dir = run_copy
    (run_dir / rundir.STATUS_FILE).unlink()
    assert not rundir.read_run(run_dir).status.finished
    assert check_run(run_dir) == rundir_check("new", (), "resume after epoch 2")


def rundir_check(state, problems, action):
    from hrsnet.runs.lifecycle import RunCheck

    return RunCheck(state, problems, action)


def test_every_damaged_file_is_repaired_from_the_checkpoint(run_copy, capsys):
    """All at once: `train` again (no --force) rebuilds each file from last.pt as it was."""
    config, run_dir = run_copy
    before = snapshot(run_dir)
    for name in ("per_class.csv", "test_metrics.json", "class_examples.npz", "split.json"):
        (run_dir / name).write_bytes(BINARY)
    (run_dir / "config.json").unlink()
    DAMAGE[("history.csv", "non-number")](run_dir / "history.csv")
    assert main(["train", *cli_arguments(config.results_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "complete" and report["test_metrics"] == json.loads(before["test_metrics.json"])
    after = snapshot(run_dir)
    for name in ("per_class.csv", "test_metrics.json", "split.json", "status"):
        assert after[name] == before[name], name
    with (
        np.load(io.BytesIO(before["class_examples.npz"])) as then,
        np.load(io.BytesIO(after["class_examples.npz"])) as now,
    ):
        assert then.files == now.files and all(np.array_equal(then[key], now[key]) for key in then.files)
    history, original = rundir.read_history(run_dir), pd.read_csv(io.BytesIO(before["history.csv"]))
    assert history["val_loss"].tolist() == original["val_loss"].tolist()
    config_now, config_then = json.loads(after["config.json"]), json.loads(before["config.json"])
    for written in (config_now, config_then):  # where and when it was written
        del written["environment"], written["train"]["results_dir"]
    assert config_now == config_then
    assert check_run(run_dir).action == "skip: finished"


def test_a_damaged_run_without_checkpoint_says_so_in_one_line_and_keeps_its_files(run_copy, capsys):
    config, run_dir = run_copy
    (run_dir / rundir.LAST_CHECKPOINT).unlink()
    (run_dir / rundir.PER_CLASS_FILE).write_bytes(b"")
    before = snapshot(run_dir)
    check = check_run(run_dir)
    assert check.action.startswith("cannot resume: no checkpoint") and "--force" in check.action
    assert main(["train", *cli_arguments(config.results_dir)]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "per_class.csv is not a readable table" in error and "cannot resume" in error
    assert snapshot(run_dir) == before  # the status too: still what it was


def test_a_folder_in_the_way_of_a_run_file_is_named_not_blamed_on_free_space(run_copy, capsys):
    config, run_dir = run_copy
    (run_dir / rundir.PER_CLASS_FILE).unlink()
    (run_dir / rundir.PER_CLASS_FILE).mkdir()
    assert any("per_class.csv is not a readable table (IsADirectoryError" in p for p in check_run(run_dir).problems)
    assert main(["train", *cli_arguments(config.results_dir)]) == 1
    error = _one_line_error(capsys)
    assert "per_class.csv: a folder of that name is in the way; move that folder away" in error
    assert "free" not in error


# --- checkpoints of another run or of an older version ---------------------------------------


def _fake_checkpoint(path: Path, run_id: str, keys=RESUME_KEYS) -> None:
    path.unlink(missing_ok=True)  # a hard link to the module's run: not written through
    state = {"format": CHECKPOINT_FORMAT, "run_id": run_id, "history": [{}]}
    state.update({key: None for key in keys if key not in state})
    torch.save(state, path)


def test_another_runs_checkpoint_leaves_a_finished_run_finished(run_copy):
    config, run_dir = run_copy
    _fake_checkpoint(run_dir / rundir.LAST_CHECKPOINT, "hrsnet_c1_digits32_12345678")
    check = check_run(run_dir)
    assert check.action == "skip: finished"
    assert len(check.problems) == 1 and "belongs to run 'hrsnet_c1_digits32_12345678'" in check.problems[0]
    before = snapshot(run_dir)
    assert fit(config).status.state == "complete"  # skipped, not flipped to failed
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("kind", ["foreign", "old format", "corrupt"])
def test_an_unusable_checkpoint_of_an_unfinished_run_cannot_resume_and_runs_and_train_agree(run_copy, kind, capsys):
    """`runs` and `train` say the same thing: it cannot resume, why, and what to do; the
    status is not overwritten with a "run again" that would never succeed."""
    config, run_dir = run_copy
    last = run_dir / rundir.LAST_CHECKPOINT
    if kind == "foreign":
        _fake_checkpoint(last, "hrsnet_c1_digits32_12345678")
    elif kind == "old format":
        _fake_checkpoint(last, config.run_id, keys=tuple(key for key in RESUME_KEYS if key != "rng"))
    else:
        last.unlink()  # a hard link to the module's run: not written through
        last.write_bytes(BINARY)
    rundir.write_status(run_dir, rundir.RunStatus("running", "epoch 1 of at most 2 done"))
    before = snapshot(run_dir)
    check = check_run(run_dir)
    assert check.action.startswith("cannot resume: checkpoint ") and "--force" in check.action, check
    assert main(["train", *cli_arguments(config.results_dir)]) == 1
    error = capsys.readouterr().err.strip()
    assert error == f"error: run {config.run_id}: {check.action}"
    assert snapshot(run_dir) == before


# --- the run folder removed while training -----------------------------------------------------


def _during_epoch(monkeypatch, epoch: int, act):
    real = train_module.Trainer.train_one_epoch

    def train_one_epoch(self, number):
        if number == epoch:
            act(self.run_dir)
        return real(self, number)

    monkeypatch.setattr(train_module.Trainer, "train_one_epoch", train_one_epoch)


def test_a_run_folder_removed_while_training_stops_the_run_without_recreating_it(tmp_path, monkeypatch):
    config = small(tmp_path, epochs=2)
    _during_epoch(monkeypatch, 2, shutil.rmtree)
    with pytest.raises(rundir.RunFileError, match=r"was removed while the run trained \(epoch 2 was trained"):
        fit(config)
    assert not config.run_dir().exists()
    assert check_run(config.run_dir()).action == "start"


def test_run_files_removed_while_training_are_written_again(tmp_path, monkeypatch):
    config = small(tmp_path, epochs=2)

    def remove(run_dir):
        (run_dir / rundir.CONFIG_FILE).unlink()
        (run_dir / rundir.SPLIT_FILE).write_text("{")

    _during_epoch(monkeypatch, 2, remove)
    result = fit(config)
    assert result.status.state == "complete" and result.config["run_id"] == config.run_id
    assert check_run(config.run_dir()).action == "skip: finished"


# --- one damaged run among good ones: the figures -------------------------------------------


# (run, file, damage): five runs of the smoke profile's eight (two seeds), each damaged its own way.
FIGURE_DAMAGE = [
    (1, "per_class.csv", lambda path: path.write_bytes(BINARY)),
    (2, "history.csv", _rewrite_csv(_set_cell("val_loss", "abc"))),
    (3, "test_metrics.json", DAMAGE[("test_metrics.json", "wrong shape")]),
    (5, "config.json", lambda path: path.write_text(path.read_text()[:50])),  # truncated
    (6, "config.json", _rewrite_json(lambda data: data["train"].update(lr=0.1))),  # edited: another run's
]


def test_figures_leave_out_damaged_runs_and_draw_the_rest(tmp_path):
    """Damaged runs among good ones (a table, a history, test metrics; a truncated and an edited
    config.json): each is left out as unreadable, naming its file; the others are drawn."""
    results = tmp_path / "results"
    smoke = profiles.profile_runs("smoke", results)
    runs = [*smoke, *(dataclasses.replace(config, seed=1) for config in smoke)]
    for config in runs:
        write_fixture_run(config, "complete", 3)
    for index, name, damage in FIGURE_DAMAGE:
        damage(runs[index].run_dir() / name)
    report = plots.make_all_figures(results, tmp_path / "figures", "smoke", seeds=2, pdf=False)
    damaged = {runs[index].run_id: runs[index].run_dir() / name for index, name, _ in FIGURE_DAMAGE}
    drawn = sorted(config.run_id for config in runs if config.run_id not in damaged)
    assert sorted(run.run_id for run in report.collection.runs) == drawn
    assert sorted(run.run_id for run, _ in report.collection.unreadable) == sorted(damaged)
    for run, why in report.collection.unreadable:
        assert str(damaged[run.run_id]) in why, (run.run_id, why)
    text = report.collection.describe()
    edited = runs[6]
    assert f"left out, unreadable: {edited.run_id} ({damaged[edited.run_id]} describes run" in text
    assert f"left out, unreadable: {runs[5].run_id} ({damaged[runs[5].run_id]} is not readable JSON" in text
    assert sorted(report.table["status"]) == ["complete"] * 3 + ["unreadable"] * 5
    assert report.figures and all(path.stat().st_size > 0 for path in report.figures)


def test_runs_names_the_damaged_file_and_what_a_rerun_does(tmp_path, capsys):
    runs = profiles.profile_runs("smoke", tmp_path)
    for config in runs:
        write_fixture_run(config, "complete", 3)
    damaged = runs[0].run_dir() / rundir.HISTORY_FILE
    DAMAGE[("history.csv", "non-number")](damaged)
    assert main(["runs", "--profile", "smoke", "--results-dir", str(tmp_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["action"] for row in rows[1:]] == ["skip: finished"] * (len(runs) - 1)
    assert rows[0]["action"].startswith("cannot resume: no checkpoint (last.pt) to rebuild the files from; ")
    assert f"{damaged} has 'abc' in column val_loss, row 1, where a number belongs" in rows[0]["action"]


# --- SIGTERM -------------------------------------------------------------------------------------


def _environment(**extra) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_sigterm_ends_train_like_ctrl_c(tmp_path):
    """`kill` (twice) in epoch 2, one step into it: status "interrupted after epoch 1; run again to
    resume", one line on stderr, exit 143, and `runs` says it resumes after epoch 1."""
    config = small(tmp_path, epochs=3, patience=10, train_subset=32)
    hold = tmp_path / "hold"
    command = [sys.executable, child_script(hold, hold_epoch=2), "train"]
    command += cli_arguments(tmp_path, epochs=3, patience=10, train_subset=32)
    process = subprocess.Popen(command, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_held(process, hold)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)  # again, as an impatient user or a launcher might: no other ending
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "terminated (SIGTERM); run the same command again to resume"
    assert "Traceback" not in stderr and not stdout
    assert len(rundir.read_history(config.run_dir())) == 1
    status = rundir.read_status(config.run_dir())
    assert status == rundir.RunStatus("failed", "interrupted after epoch 1; run again to resume")
    assert check_run(config.run_dir()).action == "resume after epoch 1"


@pytest.mark.slow
def test_sigterm_to_torchrun_marks_the_run_interrupted_on_rank_0(tmp_path):
    """Slurm and `kill` signal torchrun, which passes SIGTERM on to its workers: rank 0 writes
    "interrupted after epoch 1", the other rank writes nothing, and each says so in one line.
    Both ranks are one step into epoch 2 when torchrun is signalled."""
    config = small(tmp_path, epochs=3, patience=10, train_subset=32)
    hold = tmp_path / "hold"
    torchrun = [child_script(hold, "torch.distributed.run"), "--standalone", "--nproc_per_node=2"]
    command = [sys.executable, *torchrun, child_script(hold, hold_epoch=2), "train"]
    command += cli_arguments(tmp_path, epochs=3, patience=10, train_subset=32)
    environment = _environment(HRSNET_DIST_TIMEOUT_S="60")
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_held(process, hold, count=2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode != 0
    assert stderr.count("terminated (SIGTERM); run the same command again to resume") == 2, stderr[-3000:]
    assert len(rundir.read_history(config.run_dir())) == 1
    assert rundir.read_status(config.run_dir()) == rundir.RunStatus(
        "failed", "interrupted after epoch 1; run again to resume"
    )
    assert check_run(config.run_dir()).action == "resume after epoch 1"


def test_sigterm_interrupts_packed_seeds_and_the_handler_is_restored(tmp_path, monkeypatch):
    """In this process: SIGTERM during the first epoch of two packed seeds marks both
    interrupted (no epoch saved), raises Terminated, and leaves SIGTERM's handler as it was."""
    configs = [small(tmp_path, seed=seed, epochs=2) for seed in (0, 1)]
    real = train_module.Trainer.finish_epoch

    def finish_epoch(self, epoch, row):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, epoch, row)

    monkeypatch.setattr(train_module.Trainer, "finish_epoch", finish_epoch)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(Terminated):
            fit_seeds(configs, pack=True)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
    for config in configs:
        status = rundir.read_status(config.run_dir())
        assert status.state == "failed" and status.reason.startswith("interrupted after epoch "), status


def test_sigterm_during_a_file_write_is_held_until_the_file_is_in_place(tmp_path):
    path = tmp_path / "last.pt"
    state = {"weights": torch.arange(1_000_000)}

    def write(stream):
        os.kill(os.getpid(), signal.SIGTERM)  # while the checkpoint is being written
        torch.save(state, stream)

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the suite may run with SIGTERM ignored
    try:
        with pytest.raises(Terminated), sigterm_interrupts():
            rundir.atomic_write(path, write, binary=True)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert torch.equal(torch.load(path)["weights"], state["weights"])
    assert not list(tmp_path.glob(f".*{rundir.TEMP_SUFFIX}"))


# --- bad inputs: one line, exit code 2 (1 for missing data), nothing lost ----------------------


def _one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error, error
    return error


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"val_fraction": 0.0001}, r"leave no validation image \(training \d+, validation 0, test 32; val_fraction"),
        ({"val_fraction": 0.9999}, r"leave no training image \(training 0, validation 16, test 32"),
        ({"train_subset": 17}, r"17 training images in batches of 16 leave a last batch of 1 image.*--train-subset 16"),
        ({"batch_size": 1}, r"--batch-size 1 cannot train: hrnet at 32x32 normalises a 1x1 map"),
        ({"train_subset": 1}, r"1 training image cannot train: .* use --train-subset 2 or more"),
    ],
    ids=["no-validation", "no-training", "last-batch-of-1", "batch-of-1", "one-image"],
)
def test_splits_a_run_cannot_use_are_refused_naming_the_sizes(tmp_path, capsys, overrides, expected):
    if "train_subset" not in overrides:
        overrides = {"train_subset": "none", **overrides}
    assert main(["train", *cli_arguments(tmp_path, **overrides)]) == 2
    assert re.search(expected, _one_line_error(capsys))
    assert [path for path in (tmp_path / "runs").rglob("*") if path.is_file() and path.name != LOCK_FILE] == []


def test_a_batch_of_one_image_is_allowed_where_the_network_can_train_it(tmp_path):
    """At 64x64 the smallest BatchNorm map is 2x2: a last batch of 1 trains."""
    from hrsnet.runs.lifecycle import check_data_fits

    config = small(tmp_path, image_size=64, train_subset=17)
    check_data_fits(config, load_dataset("digits", train_subset=17, val_subset=16, test_subset=32))


@pytest.mark.parametrize("second", ["unit=basic", "unit=4"])
def test_a_repeated_model_option_is_an_error_naming_it(tmp_path, capsys, second):
    arguments = cli_arguments(tmp_path) + ["--model-option", "unit=preact", "--model-option", second]
    assert main(["train", *arguments]) == 2
    error = _one_line_error(capsys)
    assert "unit given more than once" in error and "'preact'" in error


def test_a_missing_data_folder_named_by_hrsnet_data_is_not_created(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "x" / "y"
    monkeypatch.setenv("HRSNET_DATA", str(missing))
    with pytest.raises(DataNotFoundError, match=r"\(from HRSNET_DATA\) does not exist.*unset HRSNET_DATA"):
        load_dataset("cifar100")
    assert main(["train", *cli_arguments(tmp_path / "results", dataset="cifar100")]) == 1
    assert "HRSNET_DATA" in _one_line_error(capsys)
    assert not (tmp_path / "x").exists()


def test_patience_0_says_how_many_epochs_did_not_improve(tmp_path, monkeypatch):
    script_validation_losses(monkeypatch, [1.0, 1.5, 0.5])
    result = fit(small(tmp_path, epochs=1000, patience=0))
    assert result.status.state == "early-stopped" and len(result.history) == 2
    assert result.status.reason.startswith("validation loss did not improve for 1 epoch (patience 0; best 1.0000")


def test_a_results_path_too_long_names_the_cause(tmp_path, capsys):
    deep = tmp_path
    while len(str(deep)) < 4040:
        deep = deep / ("d" * 200)
    assert main(["train", *cli_arguments(str(deep)[:4040])]) == 2
    error = _one_line_error(capsys)
    assert "results path too long" in error and "shorter --results-dir" in error and "space" not in error


def test_a_write_failing_on_a_long_name_says_so():
    error = OSError(36, "File name too long")
    message = rundir.describe_write_error(Path("/tmp") / ("x" * 300), error)
    assert "file name too long" in message and "shorter --results-dir" in message and "free space" not in message


def test_check_run_and_train_agree_on_a_checkpoint_from_an_older_version(run_copy):
    """Old last.pt (no "rng") in a finished run whose files are fine: finished, nothing to say;
    once a file is damaged, both say it cannot be repaired and why."""
    config, run_dir = run_copy
    _fake_checkpoint(run_dir / rundir.LAST_CHECKPOINT, config.run_id, keys=("model", "history"))
    assert check_run(run_dir) == rundir_check("complete", (), "skip: finished")
    (run_dir / rundir.PER_CLASS_FILE).write_bytes(BINARY)
    check = check_run(run_dir)
    assert "lacks" in check.action and "rng" in check.action and check.action.startswith("cannot resume")
    with pytest.raises(CheckpointError) as raised:
        fit(config)
    assert check.action in str(raised.value)
