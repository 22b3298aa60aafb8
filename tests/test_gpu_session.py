"""scripts/gpu_session.sh and `python -m hrsnet gpucheck`: every part's --dry-run on the CPU
writes its CSVs and log. What the GPU parts measure is checked on a GPU, not here."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_session.sh"


def _rows(path):
    with open(path) as stream:
        return list(csv.DictReader(stream))


def _session(part, folder):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_SESSION_DIR": str(folder), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", str(SCRIPT), part, "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (folder / f"{part}.log").read_text()
    assert f"part {part} finished with status 0" in log
    return result.stdout


def test_usage_errors():
    result = subprocess.run(["bash", str(SCRIPT), "everything"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.slow
def test_gpu_session_check_dry_run(tmp_path):
    """check: gpucheck's CPU checks pass, the CUDA-only ones say so."""
    _session("check", tmp_path)
    rows = _rows(tmp_path / "gpucheck.csv")
    status = {}
    for row in rows:
        status.setdefault((row["check"], row["case"]), set()).add(row["status"])
    assert status[("fast_paths", "channels_last")] == {"pass", "info"}  # judged rows pass; the norm ratio is info
    assert status[("fast_paths", "whole-step CUDA graph, fp32")] == {"skipped: needs CUDA"}
    assert status[("no_host_sync", "graph replay")] == {"skipped: needs CUDA"}
    assert {row["status"] for row in rows if row["check"] == "fit_graphs"} == {"skipped: needs CUDA"}
    assert {row["status"] for row in rows if row["check"] in ("checkpoint", "deterministic")} == {"pass"}
    assert not any(row["status"] == "fail" for row in rows)


@pytest.mark.slow
def test_gpu_session_loop_dry_run(tmp_path):
    """loop: the real loop's settings side by side (the dry run: eager and 3 packed seeds,
    trained by `train --seeds 0 1 2 --pack`; graphs need CUDA)."""
    _session("loop", tmp_path)
    loop = {row["setting"]: row for row in _rows(tmp_path / "loop.csv")}
    assert set(loop) == {"eager", "packed"} and float(loop["eager"]["speedup"]) == 1
    assert (loop["packed"]["runs"], loop["packed"]["packed_seeds"], loop["packed"]["cuda_graphs"]) == (
        "3",
        "3",
        "false",
    )
    assert float(loop["packed"]["images_per_second"]) > 0 and len(_rows(tmp_path / "loop_wall.csv")) == 2


@pytest.mark.slow
def test_gpu_session_targets_and_paper_dry_run(tmp_path):
    """targets: the bench rows; paper: one real epoch, a concurrency speedup and the estimate
    of the 27 paper runs; run again, it finds everything done."""
    _session("targets", tmp_path)
    bench_rows = _rows(tmp_path / "targets.csv")
    groups = {(row["group"], row["setting"]) for row in bench_rows}
    assert {("peer", "paper"), ("ablation", "paper"), ("grid", "throughput")} <= groups
    peer = {row["variant"] for row in bench_rows if row["group"] == "peer"}
    assert {"default", "plain fp32 eager", "timm channels_last"} <= peer
    assert all(float(row["peak_tflops"]) == 790 for row in bench_rows if row["setting"] == "throughput")

    _session("paper", tmp_path)
    assert len(_rows(tmp_path / "paper_wall.csv")) == 2  # the paper run and the lone concurrency run
    assert float((tmp_path / "concurrency_speedup.txt").read_text()) > 0
    estimate = _rows(tmp_path / "estimate_paper.csv")
    assert len(estimate) == 27
    measured = [row for row in estimate if row["source"] != "not measured"]
    assert {(row["arch"], row["width"]) for row in measured} == {("hrnet", "2")}
    assert all(float(row["run_minutes"]) > 0 for row in measured)
    # A second run finds everything done and only re-estimates.
    output = _session("paper", tmp_path)
    assert "done before" in output and len(_rows(tmp_path / "paper_wall.csv")) == 2
