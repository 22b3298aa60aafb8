"""scripts/gpu_session.sh: one --dry-run on the CPU (every step, tiny sizes) leaves its files, flat
and at most 8, in the order of its steps; its time limits hold. What the steps measure on a GPU
is checked on a GPU, not here."""

import csv
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hrsnet.tools.targets import FILES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_session.sh"


def _rows(path):
    with open(path) as stream:
        return list(csv.DictReader(stream))


def _environment(tmp_path, **extra):
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp"), **extra}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run for all the tests below: (its output folder, its result)."""
    root = tmp_path_factory.mktemp("gpu")
    out = root / "out"
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(out)],
        cwd=ROOT,
        env=_environment(root),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return out, result, root


@pytest.mark.slow
def test_dry_run_leaves_its_files_flat_in_step_order(dry_run):
    out, result, root = dry_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    entries = sorted(path.name for path in out.iterdir())
    assert entries == sorted(FILES.values()) and len(entries) <= 8
    assert all((out / name).is_file() for name in entries), "no folders"
    log = (out / FILES["log"]).read_text()
    marks = ["step 1:", "step 2:", "step 3:", "step 4:", "step 5:", "the targets", "all steps passed"]
    positions = [log.index(mark) for mark in marks]
    assert positions == sorted(positions)
    assert "| target | measured | required | verdict | detail |" in log  # bench --targets read the files
    assert "unexpected" not in log
    assert not any((root / "tmp").glob("hrsnet-gpu-work.*")), "the runs' folder is removed"


@pytest.mark.slow
def test_dry_run_checks_and_loop(dry_run):
    out, _, _ = dry_run
    versions = (out / FILES["versions"]).read_text()
    assert "torch " in versions and "timm " in versions
    assert "tests/test_cudagraphs.py::test_graph_replay_matches_eager_on_cuda" in (out / FILES["pytest"]).read_text()
    status = {}
    for row in _rows(out / FILES["gpucheck"]):
        status.setdefault((row["check"], row["case"]), set()).add(row["status"])
    for case in ("eager training step", "eager training step, augmented", "graph replay", "graph replay, augmented"):
        assert status[("no_host_sync", case)] == {"skipped: needs CUDA"}
    assert status[("fast_paths", "channels_last")] == {"pass", "info"}
    assert status[("fast_paths", "torch.compile, fp32")] == {"skipped: needs CUDA"}
    checkpoint = [s for (check, _), s in status.items() if check == "checkpoint"]
    assert len(checkpoint) == 2 and all(s == {"pass"} for s in checkpoint)  # there and back
    assert not any("fail" in s for s in status.values())
    memory = _rows(out / FILES["memory"])
    assert {row["status"] for row in memory if row["check"] == "deterministic"} == {"pass"}
    loop = {row["setting"]: row for row in _rows(out / FILES["loop"])}
    assert set(loop) == {"eager", "packed"}  # graphs need CUDA
    assert loop["eager"]["timed_epochs"] == "2" and float(loop["eager"]["speedup"]) == 1
    assert (loop["packed"]["runs"], loop["packed"]["packed_seeds"]) == ("2", "2")


@pytest.mark.slow
def test_dry_run_bench_rows_and_estimate(dry_run):
    out, _, _ = dry_run
    rows = _rows(out / FILES["bench"])
    peer = {(row["setting"], row["variant"]) for row in rows if row["group"] == "peer"}
    for setting in ("paper", "throughput"):
        assert {(setting, "default"), (setting, "plain fp32 eager"), (setting, "timm channels_last")} <= peer
    peak = [row for row in rows if row["group"] == "grid" and row["setting"] == "throughput"]
    assert peak and all(float(row["peak_tflops"]) == 790 and float(row["flop_utilisation"]) > 0 for row in peak)
    grid = {row["model"] for row in rows if row["group"] == "grid" and row["setting"] == "paper"}
    assert grid == {"hrnet_official", "hrnet", "hrsnet", "hrsnet_skip"}
    estimate = _rows(out / FILES["estimate"])
    assert len(estimate) == 4 and all(math.isfinite(float(row["run_minutes"])) for row in estimate)
    sources = {row["arch"]: row["source"] for row in estimate}
    assert sources["hrnet"].startswith("real loop") and "bench step ratio" in sources["hrsnet"]


def _fake_python(tmp_path, slow_word):
    """A python3 that hangs (until SIGINT, handled explicitly) when its arguments hold ``slow_word``
    and otherwise exits at once: only the script's time limits are under test."""
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *_: sys.exit(130))\n"
        f"if {slow_word!r} in ' '.join(sys.argv):\n"
        "    time.sleep(600)\n"
    )
    wrapper = tmp_path / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{fake}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_time_limits_hold(tmp_path):
    """A command that hangs is stopped at its limit, and what no longer fits the total is skipped
    and named; the script ends within its total and says it did not pass."""
    python = _fake_python(tmp_path, "importlib")  # the versions step hangs
    began = time.monotonic()
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(tmp_path / "out")],
        cwd=ROOT,
        env=_environment(tmp_path, PYTHON=str(python), TOTAL_SECONDS="46", TIME_SCALE="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - began < 46
    assert result.returncode == 1
    log = (tmp_path / "out" / FILES["log"]).read_text()
    assert "(time limit)" in log and "skipped (the 46 s are used up)" in log
    assert "failed or skipped command(s)" in log and "all steps passed" not in log


def test_usage_errors(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--everything"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "old.csv").write_text("x\n")
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path / "used")], capture_output=True, text=True)
    assert result.returncode == 2 and "is not a new or empty folder" in result.stderr
    assert (tmp_path / "used" / "old.csv").read_text() == "x\n"
    if shutil.which("nvidia-smi") is None:  # without --dry-run it needs a GPU, and says so at once
        result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "new")], capture_output=True, text=True)
        assert result.returncode == 2 and "no NVIDIA GPU answers here" in result.stderr
        assert not (tmp_path / "new").exists()


def test_docs_count_the_batchnorm_layers_torchrun_synchronises():
    """docs/gpu.md names how many BatchNorm layers (each a SyncBatchNorm under torchrun) a step has."""
    import re

    import torch

    from hrsnet.models import create_model

    text = " ".join((ROOT / "docs" / "gpu.md").read_text().split())
    official, hrsnet = map(int, re.search(r"\((\d+) in hrnet_official, (\d+) in HRSNet at any C\)", text).groups())
    for arch, expected in (("hrnet_official", official), ("hrsnet", hrsnet), ("hrsnet_skip", hrsnet)):
        for width in (2, 30):
            with torch.device("meta"):
                model = create_model(arch, width=width, num_classes=100)
            assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == expected, (arch, width)
