"""Where and how fast a step runs: device, precision, autocast, memory format, optimizer kernel,
determinism. One place for training, evaluation and the benchmark, so that what the benchmark
calls the default is what training does."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "fp32", "bf16")
SWITCHES = ("auto", "on", "off")
OPTIMIZERS = ("sgd", "adam")
OPTIMIZER_KERNELS = ("fused", "foreach", "for-loop")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: object) -> None:
    """ValueError unless ``name`` is auto, cpu, cuda or cuda:N (whether the GPU exists is resolve_device's)."""
    if not isinstance(name, str) or DEVICE_PATTERN.fullmatch(name) is None:
        raise ValueError(f"device must be {DEVICE_CHOICES}; got {name!r}")


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA GPU if torch sees one, else the CPU; a CUDA device only if torch sees it."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for, but torch sees no CUDA GPU; use --device cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {name!r} was asked for, but torch sees {count} CUDA GPU{'' if count == 1 else 's'} "
                f"(cuda:0 to cuda:{count - 1}); use one of those or --device auto"
            )
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on CUDA, fp32 elsewhere (a CPU without bf16 units gains nothing)."""
    return ("bf16" if device.type == "cuda" else "fp32") if precision == "auto" else precision


def resolve_channels_last(switch: str, device: torch.device) -> bool:
    """``auto``: on for CUDA and CPU (CPU: +16% per training step at 64px, measured)."""
    return device.type in ("cuda", "cpu") if switch == "auto" else switch == "on"


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def resolve_optimizer_kernel(switch: str, device: torch.device) -> str:
    """ "fused" (``auto`` on CUDA, or ``on``), else "foreach" (bitwise equal to the for-loop step)."""
    fused = device.type == "cuda" if switch == "auto" else switch == "on"
    return "fused" if fused else "foreach"


# The evaluation batch on CUDA: it divides the 10,000 validation and 10,000 test images of
# CIFAR-100 (and of the synthetic set), so every evaluation batch has one shape and cuDNN
# tunes it once; at 224x224 in bf16 without gradients it needs a few GiB.
CUDA_EVAL_BATCH_SIZE = 500


def resolve_eval_batch_size(setting: int | None, batch_size: int, device: torch.device) -> int:
    """The evaluation batch: ``setting`` if given, else 500 on CUDA and max(batch_size, 64) elsewhere
    (it does not change results, only speed and memory)."""
    if setting:
        return setting
    return CUDA_EVAL_BATCH_SIZE if device.type == "cuda" else max(batch_size, 64)


def autocast_context(precision: str, device: torch.device, cache_enabled: bool = True):
    """bf16 autocast for ``precision == "bf16"``, else nothing (``cache_enabled``: autocast's
    weight-cast cache; a CUDA graph capture needs it off)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return nullcontext()


def make_optimizer(
    name: str,
    parameters: Iterable[torch.nn.Parameter],
    lr: float,
    momentum: float,
    weight_decay: float,
    kernel: str,
    capturable: bool = False,
) -> torch.optim.Optimizer:
    """SGD (the released notebooks) or Adam (the report's text; ``momentum`` is beta1), with the
    ``kernel`` implementation: "fused", "foreach" or "for-loop" (the plain reference).
    ``capturable``: Adam keeps its step count on the device, so a CUDA graph can capture its
    step (SGD's step is capturable as it is)."""
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[kernel]
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay, **options)
    if name == "adam":
        if capturable:
            options["capturable"] = True
        return torch.optim.Adam(parameters, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay, **options)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic algorithms (bitwise-repeatable on a CPU), else cuDNN autotuning on CUDA."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        if torch.are_deterministic_algorithms_enabled():  # the call imports torch._inductor: seconds
            torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = device.type == "cuda"
