"""The training engine: protocol defaults, run directory, early stopping, divergence, resume."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    SMALL_NETWORK,
    child_script,
    script_validation_losses,
    small_arguments,
    small_config,
    tiny_config,
    wait_until_held,
)

import hrsnet.engine.trainer as train_module
from hrsnet import rundir
from hrsnet.__main__ import main
from hrsnet.config import TrainConfig
from hrsnet.data import load_dataset
from hrsnet.engine.checkpoint import CheckpointError
from hrsnet.engine.trainer import EarlyStopping
from hrsnet.runs import fit, lifecycle

REPO = Path(__file__).resolve().parents[1]


def read_history(run_dir):
    with open(Path(run_dir) / "history.csv") as stream:
        return list(csv.DictReader(stream))


def test_defaults_follow_the_released_notebooks():
    config = TrainConfig()
    assert (config.dataset, config.image_size, config.batch_size, config.epochs) == ("cifar100", 224, 16, 25)
    assert (config.optimizer, config.lr, config.momentum, config.weight_decay) == ("sgd", 0.005, 0.9, 0.0)
    assert (config.patience, config.min_delta, config.val_fraction, config.augment) == (2, 0.0, 0.2, False)


def test_adam_is_the_reports_text():
    config = TrainConfig(optimizer="adam", device="cpu", dataset="digits")
    trainer = train_module.Trainer(config, load_dataset("digits", train_subset=16), torch.device("cpu"))
    optimizer = trainer.optimizer
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 0.005 and optimizer.param_groups[0]["betas"][0] == 0.9


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(arch="resnet"), "arch must be one of hrnet_official, hrnet, hrsnet, hrsnet_skip"),
        (dict(optimizer="rmsprop"), "optimizer must be one of sgd, adam"),
        (dict(width=0), "width must be an integer >= 1"),
        (dict(epochs=0), "epochs must be an integer >= 1"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(patience=-1), "patience must be an integer >= 0"),
        (dict(dataset="imagenet"), "dataset must be one of cifar100, cifar10, digits"),
        (dict(image_size=16), "image_size must be an integer >= 32"),
        (dict(lr=0), "lr must be a finite number > 0; got 0"),
        (dict(lr=float("inf")), "lr must be a finite number > 0; got inf"),
        (dict(momentum=1.0), "momentum must be a finite number >= 0 and < 1"),
        (dict(val_fraction=1), "val_fraction must be a finite number > 0 and < 1"),
        (dict(train_subset=0), "train_subset must be an integer or None >= 1"),
        (dict(augment="yes"), "augment must be True or False"),
        (dict(device="tpu:x"), "device must be auto, cpu, cuda or cuda:N; got 'tpu:x'"),
        (dict(device="mps"), "device must be auto, cpu, cuda or cuda:N; got 'mps'"),
        (dict(device="meta"), "device must be auto, cpu, cuda or cuda:N; got 'meta'"),
        (dict(model_options=(("unit", "dense"),)), "model_options: unit must be one of"),
    ],
)
def test_config_validation_fails_before_any_data(overrides, match, monkeypatch):
    monkeypatch.setattr(lifecycle, "load_dataset", lambda *a, **k: pytest.fail("data was loaded"))
    with pytest.raises(ValueError, match=match):
        TrainConfig(**overrides)


def test_cli_bad_value_is_one_line_and_nonzero(capsys):
    assert main(["train", "--width", "0", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "error: width must be an integer >= 1; got 0"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--pack"], "error: --pack packs the runs of --seeds; give two or more seeds, e.g. --seeds 0 1 2"),
        (["--seeds", "0", "1", "0"], "error: --seeds must not repeat a seed; got 0 1 0"),
        (["--seeds", "-1"], "error: seed must be an integer >= 0; got -1"),
        (
            ["--cuda-graphs", "on", "--device", "cpu"],
            "error: cuda_graphs on: CUDA graphs need a CUDA device; this step runs on cpu; use auto or off",
        ),
    ],
)
def test_cli_seeds_pack_and_graphs_errors_are_one_line(argv, message, capsys, tmp_path):
    common = ["train", "--dataset", "digits", "--image-size", "32", "--train-subset", "48", "--quiet"]
    assert main([*common, "--results-dir", str(tmp_path), *argv]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not list(tmp_path.rglob("*.pt"))


def test_run_id_ignores_operational_settings(tmp_path):
    a = tiny_config(tmp_path, device="cpu", quiet=True)
    b = tiny_config(tmp_path / "elsewhere", device="auto", quiet=False, channels_last="on")
    assert a.run_id == b.run_id and a.run_id.startswith("hrnet_c2_digits32_")
    assert tiny_config(tmp_path, seed=1).run_id != a.run_id


def test_a_new_setting_with_a_default_moves_no_run_id(tmp_path):
    """Only settings that differ from their defaults enter the hash: adding one keeps every id."""
    import dataclasses

    from hrsnet.config import setting

    @dataclasses.dataclass(frozen=True)
    class WithNewSetting(TrainConfig):
        label_smoothing: float = setting(0.0, "a setting added later", "optimisation", minimum=0)

    for overrides in ({}, dict(arch="hrsnet", width=8, seed=3), dict(dataset="digits", lr=0.01, epochs=6)):
        assert WithNewSetting(**overrides).run_id == TrainConfig(**overrides).run_id
    assert WithNewSetting(label_smoothing=0.1).run_id != TrainConfig().run_id


def test_run_id_depends_on_what_is_computed():
    base = TrainConfig()
    assert TrainConfig(lr=0.005).run_id == base.run_id and TrainConfig(lr=0.01).run_id != base.run_id
    assert TrainConfig(momentum=1 - 0.1).identity() == TrainConfig(momentum=0.9).identity()
    assert TrainConfig(weight_decay=0).run_id == base.run_id  # an int for a float setting is the same value
    assert TrainConfig(model_options={"unit": "basic"}).run_id != base.run_id


def test_a_changed_network_gets_a_new_run_id(monkeypatch):
    """A preset whose network changes raises its revision, so old results are never read as new."""
    import dataclasses

    from hrsnet.models import registry

    before = TrainConfig(arch="hrsnet").run_id
    monkeypatch.setitem(registry.PRESETS, "hrsnet", dataclasses.replace(registry.PRESETS["hrsnet"], revision=4))
    assert TrainConfig(arch="hrsnet").run_id != before
    assert TrainConfig(arch="hrnet").identity()["network_revision"] == registry.PRESETS["hrnet"].revision


def test_unknown_setting_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown setting\\(s\\) 'epoch'; TrainConfig has: arch, width"):
        TrainConfig.from_settings({"epoch": 3})


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 2)" in text and "(default 2)" not in text and text.count("(default: 0.005)") == 1


def test_every_setting_is_an_option_and_round_trips():
    """The command line is derived from TrainConfig: every field, its default, its choices."""
    import dataclasses

    from hrsnet.__main__ import build_parser, config_from_args

    args = build_parser().parse_args(["train"])
    assert config_from_args(args) == TrainConfig()
    args = build_parser().parse_args(
        [
            "train",
            "--arch",
            "hrsnet",
            "--train-subset",
            "64",
            "--eval-batch-size",
            "none",
            "--model-option",
            "modules_per_stage=4,4,4",
            "--augment",
            "--lr",
            "0.01",
        ]
    )
    config = config_from_args(args)
    assert (config.arch, config.train_subset, config.eval_batch_size, config.augment, config.lr) == (
        "hrsnet",
        64,
        None,
        True,
        0.01,
    )
    assert config.model_options == (("modules_per_stage", (4, 4, 4)),)
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= set(vars(args))


def test_the_tests_small_arguments_are_their_small_config(tmp_path):
    """conftest.small_arguments, the command line of the tests' child processes, is small_config."""
    from hrsnet.__main__ import build_parser, config_from_args

    for overrides in ({}, dict(epochs=3, train_subset=32, patience=10, augment=True, deterministic=True)):
        args = build_parser().parse_args(["train", *small_arguments(tmp_path, **overrides)])
        assert config_from_args(args) == small_config(tmp_path, **overrides)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model-option", "modules_per_stage=1,x"], "modules_per_stage takes whole numbers separated by commas"),
        (["--model-option", "unit"], "expected KEY=VALUE"),
        (["--arch", "resnet"], "invalid choice: 'resnet'"),
    ],
)
def test_bad_options_are_one_clear_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_run_directory_schema(tmp_path):
    result = fit(small_config(tmp_path, epochs=2, test_subset=64))
    run_dir = result.run_dir
    assert result.status.state == "complete"
    history = read_history(run_dir)
    assert list(history[0]) == rundir.HISTORY_COLUMNS and [int(r["epoch"]) for r in history] == [1, 2]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dataset"]["name"] == "digits" and config["train"]["arch"] == "hrnet"
    assert {"torch", "torchvision", "git_commit", "device_name"} <= set(config["environment"])
    assert config["model"]["units_per_branch"] == 1 and config["model"]["modules_per_stage"] == [1, 1, 1]
    model = train_module.create_model("hrnet", 1, 10, **SMALL_NETWORK)
    assert config["parameters"] == sum(p.numel() for p in model.parameters())
    split = json.loads((run_dir / "split.json").read_text())
    assert set(split["train_indices"]).isdisjoint(split["val_indices"])
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    for key in ("last", "best"):
        assert set(metrics[key]) == {"top1", "top5", "loss", "epoch"} and 0 <= metrics[key]["top1"] <= 1
    with open(run_dir / "per_class.csv") as stream:
        per_class = list(csv.DictReader(stream))
    assert list(per_class[0]) == rundir.PER_CLASS_COLUMNS and len(per_class) == 10
    assert sum(int(r["support"]) for r in per_class) == 64
    assert abs(sum(int(r["correct"]) for r in per_class) / 64 - metrics["last"]["top1"]) < 1e-9
    examples = np.load(run_dir / "class_examples.npz")
    assert examples["images"].dtype == np.uint8 and examples["images"].shape[1:] == (8, 8, 3)
    assert rundir.read_status(run_dir) == rundir.RunStatus("complete", "reached the epoch limit (2)")
    assert (run_dir / "last.pt").exists() and len(list(run_dir.glob("best_epoch*.pt"))) == 1
    assert not list(run_dir.glob(".*.tmp"))  # no temporary files left behind


def test_cifar100_fixture_trains_through_torchvision(tmp_path, cifar_checksums):
    result = fit(small_config(tmp_path, dataset="cifar100", data_dir=str(cifar_checksums), epochs=1, test_subset=None))
    assert result.status.state == "complete"
    with open(result.run_dir / "per_class.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 100 and rows[0]["class_name"] == "apple"


def test_finished_run_is_skipped_unless_forced(tmp_path):
    config = small_config(tmp_path, epochs=1)
    first = fit(config)
    stamp = (first.run_dir / "history.csv").stat().st_mtime_ns
    second = fit(config)
    assert second.status.state == "complete" and (first.run_dir / "history.csv").stat().st_mtime_ns == stamp
    assert second.test_metrics == first.test_metrics
    fit(config, force=True)
    assert (first.run_dir / "history.csv").stat().st_mtime_ns != stamp


def test_early_stopping_semantics():
    stopper = EarlyStopping(patience=2, min_delta=0.0)
    assert stopper.update(1, 1.0) and not stopper.should_stop
    assert not stopper.update(2, 1.0) and not stopper.should_stop  # equal is not better (min delta 0)
    assert not stopper.update(3, 1.1) and stopper.should_stop
    assert stopper.best_epoch == 1
    zero = EarlyStopping(patience=0, min_delta=0.0)
    zero.update(1, 1.0)
    assert not zero.should_stop and not zero.update(2, 2.0) and zero.should_stop


def test_early_stop_in_a_run_and_the_best_checkpoint(tmp_path, monkeypatch):
    """Validation losses 1.0, 0.9, 0.95, 0.97: patience 2 stops after epoch 4; best is epoch 2."""
    script_validation_losses(monkeypatch, [1.0, 0.9, 0.95, 0.97])
    result = fit(small_config(tmp_path, epochs=10, patience=2))
    assert result.status.state == "early-stopped"
    assert "best 0.9000 at epoch 2" in result.status.reason
    assert len(read_history(result.run_dir)) == 4
    assert [p.name for p in result.run_dir.glob("best_epoch*.pt")] == ["best_epoch002.pt"]
    assert result.test_metrics["best"]["epoch"] == 2 and result.test_metrics["last"]["epoch"] == 4


def test_divergence_is_a_status_not_a_crash(tmp_path):
    config = small_config(tmp_path, lr=1e30, epochs=3, train_subset=32)  # 2 batches: the 2nd's loss is not finite
    result = fit(config)
    assert result.status.state == "diverged"
    assert "non-finite training loss" in result.status.reason and "epoch 1" in result.status.reason
    history = read_history(result.run_dir)
    assert len(history) == 1 and history[0]["train_loss"] == "nan"
    metrics = json.loads((result.run_dir / "test_metrics.json").read_text())
    assert metrics == {"last": None, "best": None}
    assert fit(config).status.state == "diverged"  # finished: skipped


def test_failure_leaves_completed_epochs_and_resumes(tmp_path, monkeypatch):
    config = small_config(tmp_path, epochs=3, patience=10)
    real_train = train_module.Trainer.train_one_epoch

    def crash_in_epoch_3(self, epoch):
        if epoch == 3:
            raise RuntimeError("simulated out of memory")
        return real_train(self, epoch)

    monkeypatch.setattr(train_module.Trainer, "train_one_epoch", crash_in_epoch_3)
    with pytest.raises(RuntimeError, match="simulated"):
        fit(config)
    status = rundir.read_status(config.run_dir())
    assert status.state == "failed" and "simulated out of memory" in status.reason and "after epoch 2" in status.reason
    assert len(read_history(config.run_dir())) == 2
    monkeypatch.setattr(train_module.Trainer, "train_one_epoch", real_train)
    assert fit(config).status.state == "complete"
    assert [int(r["epoch"]) for r in read_history(config.run_dir())] == [1, 2, 3]


def test_history_is_rewritten_from_the_checkpoint(tmp_path):
    """A crash between the checkpoint and history.csv: the checkpoint is the source of truth."""
    config = small_config(tmp_path, epochs=2)
    fit(config)
    run_dir = config.run_dir()
    lines = (run_dir / "history.csv").read_text().splitlines()
    (run_dir / "history.csv").write_text("\n".join(lines[:-1]) + "\n")
    (run_dir / "status").write_text("running\n\n")
    fit(config)
    assert len(read_history(run_dir)) == 2


def test_corrupt_checkpoint_names_the_file(tmp_path, capsys):
    config = tiny_config(tmp_path, epochs=1)
    config.run_dir().mkdir(parents=True)
    (config.run_dir() / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt or unreadable"):
        fit(config)


def test_checkpoint_from_another_run_is_refused(tmp_path):
    other = small_config(tmp_path, epochs=1, seed=5)
    fit(other)
    config = small_config(tmp_path, epochs=1)
    config.run_dir().mkdir(parents=True)
    (config.run_dir() / "last.pt").write_bytes((other.run_dir() / "last.pt").read_bytes())
    with pytest.raises(CheckpointError, match=f"belongs to run '{other.run_id}'"):
        fit(config)


def test_checkpoints_load_with_weights_only(tmp_path):
    config = small_config(tmp_path, epochs=1)
    fit(config)
    state = torch.load(config.run_dir() / "last.pt", weights_only=True)
    assert state["run_id"] == config.run_id and len(state["history"]) == 1


def _train_arguments(results_dir) -> list[str]:
    """A run of 3 epochs of 2 batches, augmented (its random state must resume too), deterministic."""
    arguments = small_arguments(results_dir, epochs=3, train_subset=32, patience=10, augment=True, deterministic=True)
    return ["train", *arguments]


@pytest.fixture
def one_thread():
    """One torch thread, as the children have (OMP_NUM_THREADS=1): the same sums in the same order.
    The deterministic algorithms a --deterministic run switches on are switched off again after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)


def _signal_when_held(arguments, hold, hold_epoch, signum):
    """Run ``arguments`` in a child that holds one step into epoch ``hold_epoch``; send it ``signum`` there."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, child_script(hold, hold_epoch=hold_epoch), *arguments]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_until_held(process, hold)
    os.kill(process.pid, signum)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


@pytest.mark.slow
def test_killed_then_interrupted_train_resumes_to_the_same_history(tmp_path, one_thread):
    """SIGKILL one step into epoch 2 leaves the run "running" after epoch 1; the same command
    resumes it, and Ctrl-C (SIGINT) one step into epoch 3 marks it interrupted after epoch 2, says
    how to resume and exits 130; the same command then ends with the history and test metrics of
    an uninterrupted run (trained here, in this process, as is the last resume)."""
    assert main(_train_arguments(tmp_path / "reference")) == 0
    reference_dir = next((tmp_path / "reference" / "runs").iterdir())
    arguments = _train_arguments(tmp_path / "killed")
    run_dir = tmp_path / "killed" / "runs" / reference_dir.name

    code, _ = _signal_when_held(arguments, tmp_path / "hold2", 2, signal.SIGKILL)
    assert code == -signal.SIGKILL and len(read_history(run_dir)) == 1
    assert rundir.read_status(run_dir).state == "running"

    code, stderr = _signal_when_held(arguments, tmp_path / "hold3", 3, signal.SIGINT)
    assert code == 130 and "run the same command again to resume" in stderr
    status = rundir.read_status(run_dir)
    assert len(read_history(run_dir)) == 2
    assert status.state == "failed" and "interrupted after epoch 2" in status.reason

    assert main(arguments) == 0
    expected, actual = read_history(reference_dir), read_history(run_dir)
    assert len(actual) == len(expected) == 3
    for want, got in zip(expected, actual):
        for column in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert abs(float(want[column]) - float(got[column])) <= 1e-6, (column, want, got)
    assert json.loads((reference_dir / "test_metrics.json").read_text()) == json.loads(
        (run_dir / "test_metrics.json").read_text()
    )


def test_a_run_reads_back_through_rundir(tmp_path):
    result = fit(small_config(tmp_path, epochs=1))
    loaded = rundir.read_run(result.run_dir)
    assert loaded.status == result.status and loaded.test_metrics == result.test_metrics
    assert loaded.history["epoch"].tolist() == [1] and (loaded.arch, loaded.width, loaded.seed) == ("hrnet", 1, 0)
