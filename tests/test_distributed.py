"""One run on several processes with torch.distributed (hrsnet.distributed), on the CPU: gloo, 2 ranks.

The spawned workers are functions of this module (torch.multiprocessing pickles them by name);
each sets the variables torchrun would set and reports its findings through a JSON file.
"""

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import small_arguments, small_config

from hrsnet import rundir
from hrsnet.engine.distributed import DistContext, DistributedTrainer, check_shardable, launched_by_torchrun
from hrsnet.engine.step import BatchShare, StepSettings, gather, train_step
from hrsnet.runs import lock as runlock
from hrsnet.runs.lifecycle import check_run, load_run_data

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
# The runs are conftest.small_config's (C=1, the smallest network, one batch of 16 per epoch: 8
# images on each rank); their command line is conftest.small_arguments.
# (b): the DDP gradient of a global batch vs one process's, float32 on both sides; measured
# max |difference| / max |gradient| 3.2e-7 (the order of the sums differs), one half's 0.59.
GRADIENT_TOLERANCE = 1e-5
TIMEOUT_S = 30  # the process group's timeout in the spawned workers


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _entry(rank, ports, worker, args):
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        HRSNET_DIST_TIMEOUT_S=str(TIMEOUT_S),
    )
    torch.set_num_threads(1)
    worker(rank, ports, *args)


def _spawn(worker, *args, groups=1):
    """Run ``worker(rank, ports, *args)`` in WORLD processes; one free port per process group."""
    mp.spawn(_entry, args=([_free_port() for _ in range(groups)], worker, args), nprocs=WORLD, join=True)


def _flat_parameters(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _ranks_agree(tensor) -> bool:
    gathered = [torch.empty_like(tensor) for _ in range(WORLD)]
    torch.distributed.all_gather(gathered, tensor)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def _plain_step(model, optimizer, images, labels, image_size):
    """One training step on this exact batch (no processes, no rows)."""
    index = torch.arange(len(labels))
    train_step(model, optimizer, [BatchShare(images, labels, index)], StepSettings(image_size))


def _steps(rank, root):
    """(a) and (b); returns the findings."""
    context = DistContext.start("cpu")
    try:
        config = small_config(root, batch_size=8, train_subset=32)
        data = load_run_data(config, context.device)
        trainer = DistributedTrainer(config, data, context.device, Path(root) / "unused", context=context)
        plain = trainer.build_model()
        plain.load_state_dict(trainer.model.state_dict())  # rank 0's start: DDP broadcasts it in attach()
        trainer.attach()
        findings = {"start_equal": _ranks_agree(_flat_parameters(trainer.model))}

        # (b) one step, BatchNorm on its running statistics: the averaged gradient of the two
        # halves against one process's gradient of the whole global batch.
        index = torch.arange(config.batch_size)
        trainer.model.eval()
        share = trainer.batch_share(index)
        images, labels = gather(share, config.augment)
        findings["shard_rows"] = len(labels)
        train_step(trainer.step_model, trainer.optimizer, [share], trainer.step_settings)
        ddp_grad = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
        findings["grad_equal"] = _ranks_agree(ddp_grad)
        if rank == 0:  # one process's gradient of the whole global batch
            plain.eval()
            reference = torch.optim.SGD(plain.parameters(), lr=0.0)
            _plain_step(plain, reference, data.train.images[index], data.train.labels[index], config.image_size)
            plain_grad = torch.cat([p.grad.flatten() for p in plain.parameters()])
            findings["grad_scale"] = plain_grad.abs().max().item()
            findings["grad_error"] = (ddp_grad - plain_grad).abs().max().item() / findings["grad_scale"]
            # The control: the gradient of this rank's half alone is not the global one.
            _plain_step(plain, reference, images, labels, config.image_size)
            half_grad = torch.cat([p.grad.flatten() for p in plain.parameters()])
            findings["half_error"] = (half_grad - plain_grad).abs().max().item() / findings["grad_scale"]

        # (a) training steps with per-rank BatchNorm: identical parameters after every step.
        trainer.model.train()
        order = torch.randperm(len(data.train), generator=trainer.shuffle_generator)
        findings["equal_after_step"] = []
        for step in range(2):
            share = trainer.batch_share(order[step * config.batch_size : (step + 1) * config.batch_size])
            images, labels = gather(share, config.augment)
            train_step(trainer.step_model, trainer.optimizer, [share], trainer.step_settings)
            findings["equal_after_step"].append(_ranks_agree(_flat_parameters(trainer.model)))
        # The control: a step of the unwrapped model (no gradient averaging) makes the ranks differ.
        _plain_step(trainer.model, trainer.optimizer, images, labels, config.image_size)
        findings["equal_without_ddp"] = _ranks_agree(_flat_parameters(trainer.model))
        return findings
    finally:
        context.close()


def _fail_in_epoch_2(rank, root):
    """(d), first part: a run of 2 epochs on 2 ranks; rank 1 fails as epoch 2 starts.
    Returns what fit() raised here and when it ended."""
    from hrsnet.runs import fit

    real = DistributedTrainer.train_one_epoch

    def fail_on_rank_1(self, epoch):
        if epoch == 2 and self.context.rank == 1:
            raise RuntimeError("simulated failure on rank 1")
        return real(self, epoch)

    DistributedTrainer.train_one_epoch = fail_on_rank_1
    try:
        fit(small_config(root, epochs=2, patience=5))
        outcome = "returned"
    except Exception as error:
        outcome = f"{type(error).__name__}: {error}"
    finally:
        DistributedTrainer.train_one_epoch = real
    return {"outcome": outcome, "ended": time.time()}


def _worker(rank, ports, root, report):
    """Two process groups in turn (a fresh port each): the steps, then a run that fails."""
    os.environ["MASTER_PORT"] = str(ports[0])
    findings = _steps(rank, root)
    os.environ["MASTER_PORT"] = str(ports[1])
    findings["failure"] = _fail_in_epoch_2(rank, root)
    Path(report.format(rank=rank)).write_text(json.dumps(findings))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What each of 2 spawned ranks found (one spawn for the tests below), and its results folder."""
    root = tmp_path_factory.mktemp("two_ranks")
    report = str(root / "rank{rank}.json")
    _spawn(_worker, str(root / "results"), report, groups=2)
    return [json.loads(Path(report.format(rank=rank)).read_text()) for rank in range(WORLD)], root / "results"


@pytest.mark.slow
def test_ranks_hold_identical_parameters_after_every_step(two_ranks):
    """(a) After each of 2 DDP steps (per-rank BatchNorm, different halves of each batch) the
    two ranks hold bitwise identical parameters; one step without DDP breaks that (the control)."""
    for findings in two_ranks[0]:
        assert findings["start_equal"] and findings["shard_rows"] == 4
        assert findings["equal_after_step"] == [True, True]
        assert not findings["equal_without_ddp"]


@pytest.mark.slow
def test_averaged_gradient_is_the_global_batchs(two_ranks):
    """(b) With BatchNorm on running statistics, the gradient DDP averages over the two halves
    of a global batch of 8 equals one process's gradient of all 8 within GRADIENT_TOLERANCE
    (max |difference| over max |gradient|); one half's own gradient is far from it (the control)."""
    findings = two_ranks[0][0]
    assert all(rank["grad_equal"] for rank in two_ranks[0])
    assert findings["grad_scale"] > 0
    assert findings["grad_error"] <= GRADIENT_TOLERANCE, findings
    assert findings["half_error"] > 100 * GRADIENT_TOLERANCE, findings


def test_batches_must_split_evenly():
    check_shardable(16, 48, 2)
    check_shardable(16, 40, 4)  # last batch of 8
    with pytest.raises(ValueError, match=r"^3 processes cannot share batches of 16 evenly; .* of 1, 2, 4, 8, 16$"):
        check_shardable(16, 48, 3)
    with pytest.raises(ValueError, match=r"last batch of an epoch \(6 of 38 training images\).* of 1, 2$"):
        check_shardable(16, 38, 4)


def test_plain_runs_are_not_distributed(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_by_torchrun()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not launched_by_torchrun()  # all three or nothing
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launched_by_torchrun()


# Installed in every process of the torchrun test (PYTHONPATH): a rank other than 0 that opens
# a file for writing under the results folder says so on stderr.
AUDIT_HOOK = """
import os, sys
_results = os.environ.get("AUDIT_RESULTS")
if _results and os.environ.get("RANK", "0") != "0":
    def _hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = args[0], args[1], args[2] if len(args) > 2 else 0
            write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT
            writes = (mode and any(c in str(mode) for c in "wax+")) or (flags or 0) & write_flags
            if writes and os.path.abspath(os.fsdecode(path)).startswith(_results):
                sys.stderr.write(f"AUDIT rank {os.environ['RANK']} wrote {os.fsdecode(path)}\\n")
        elif event in ("os.rename", "os.remove", "os.unlink", "os.mkdir", "os.replace") and args:
            if os.path.abspath(os.fsdecode(args[0])).startswith(_results):
                sys.stderr.write(f"AUDIT rank {os.environ['RANK']} {event} {os.fsdecode(args[0])}\\n")
    sys.addaudithook(_hook)
    sys.stderr.write(f"AUDIT-ACTIVE rank {os.environ['RANK']}\\n")
"""


@pytest.mark.slow
def test_torchrun_trains_one_run_and_only_rank_0_writes(tmp_path):
    """(c) `torchrun --nproc_per_node=2 -m hrsnet train` end to end: one run directory, history
    epoch 1 once, a valid config.json saying 2 processes, the lock released, one JSON report,
    and no file opened for writing (or renamed, removed, created) by rank 1."""
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "sitecustomize.py").write_text(AUDIT_HOOK)
    results = (tmp_path / "results").resolve()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "audit"), str(REPO)]),
        "AUDIT_RESULTS": str(results),
        "OMP_NUM_THREADS": "1",
        "HRSNET_DIST_TIMEOUT_S": "60",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"]
    command += ["-m", "hrsnet", "train", *small_arguments(results, epochs=1)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO, env=env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"AUDIT-ACTIVE rank {WORLD - 1}" in finished.stderr  # the hook ran in rank 1
    assert "AUDIT rank" not in finished.stderr, finished.stderr
    report = json.loads(finished.stdout)  # one report: rank 1 prints nothing
    assert report["status"] == "complete"
    run_dir = Path(report["run_dir"])
    assert [p.name for p in (results / "runs").iterdir()] == [run_dir.name]
    with open(run_dir / "history.csv") as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["1"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run_id"] == run_dir.name and config["resolved"]["processes"] == WORLD
    assert runlock.lock_state(run_dir) == "none"
    assert check_run(run_dir).action == "skip: finished"
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_a_failed_rank_ends_the_run_and_it_resumes_with_one_process(two_ranks):
    """(d) and the failure path: rank 1 fails at the start of epoch 2; rank 0 does not hang
    (it ends well within the process group's timeout) and marks the run failed after epoch 1;
    then `python -m hrsnet train` without torchrun (K=1) resumes it: epochs [1, 2]."""
    from hrsnet.__main__ import main

    (rank0, rank1), results = two_ranks[0], two_ranks[1]
    assert rank1["failure"]["outcome"] == "RuntimeError: simulated failure on rank 1"
    assert rank0["failure"]["outcome"] != "returned"
    assert rank0["failure"]["ended"] - rank1["failure"]["ended"] < TIMEOUT_S / 2, (rank0, rank1)
    run_dir = small_config(results, epochs=2, patience=5).run_dir()
    status = rundir.read_status(run_dir)
    assert status.state == "failed" and "after epoch 1" in status.reason, status
    assert list(rundir.read_history(run_dir)["epoch"]) == [1]
    assert not any(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    assert main(["train", *small_arguments(results, epochs=2, patience=5)]) == 0
    assert list(rundir.read_history(run_dir)["epoch"]) == [1, 2]
    assert rundir.read_status(run_dir).state == "complete"
