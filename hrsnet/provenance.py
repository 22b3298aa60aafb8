"""Where a result came from: versions, the git commit and whether the tree had changes, the device."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__

_CHECKOUT = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=_CHECKOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_commit() -> str | None:
    """The commit of the checkout this package runs from (None outside a git checkout)."""
    return _git("rev-parse", "HEAD") or None


def tree_modified() -> bool | None:
    """True when tracked files differ from the commit (uncommitted changes), None outside a git checkout."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (platform.processor() is often just "x86_64")."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_text() -> str:
    """The machine in words, for a dated measurement: its GPUs when CUDA sees any, else its CPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
        gpus = names[0] if len(set(names)) == 1 else ", ".join(names)
        return f"{len(names)} x {gpus}" if len(names) > 1 else gpus
    return f"{cpu_model()}, {cores} cores, no GPU"


def environment_info(device: torch.device) -> dict[str, Any]:
    """Versions, commit, platform and device of this process, for a run's config.json."""
    import torchvision  # lazy: torchvision's import costs a second, and only a run's start needs it

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "hrsnet": __version__,
        "git_commit": git_commit(),
        "git_modified": tree_modified(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
    }
