"""Checks before any data or model is loaded: device, results folder, memory, disk space.

Each check raises PreflightError (a ValueError) with one line that names what was wrong and
what would work, so a bad ``--device``, an unwritable ``--results-dir`` or a network that
cannot fit fails in a second instead of after the dataset is loaded or mid-epoch.
hrsnet.rundir.describe_write_error turns a failed checkpoint write into such a line.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..models import create_model
from ..rundir import existing_ancestor, format_bytes

OPTIMIZER_STATE_COPIES = {"sgd": 1, "adam": 2}  # SGD: momentum buffer; Adam: exp_avg and exp_avg_sq
PRECISION_BYTES = {"fp32": 4, "bf16": 2}  # activations; "auto" must be resolved first (hrsnet.runtime)
# Above this cheap lower bound the model is not built, even on meta: no machine has 1 PiB, and
# it keeps every shape far from int64 overflow (width 1e8 would overflow a weight's numel).
SHORT_CIRCUIT_BYTES = 2**50


class PreflightError(ValueError):
    """A run that cannot work as asked; the message is one line (the CLI prints it, exits 2)."""


# --- results folder -----------------------------------------------------------------------


def _why(error: OSError) -> str:
    return f"{type(error).__name__}: {error.strerror or error}"


def check_writable(folder: Path | str) -> None:
    """Create ``folder`` (with parents) if missing, then create and remove a small file in it.

    A real write, not ``os.access``: root passes every permission-bit check but still cannot
    write to a read-only mount, under a file, or to a full disk.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PreflightError(
            f"results folder {folder} cannot be created ({_why(error)}); choose another with --results-dir"
        ) from error
    temp_name = None
    try:
        handle, temp_name = tempfile.mkstemp(dir=folder, prefix=".hrsnet-write-test.", suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            stream.write(b"hrsnet\n")
            stream.flush()
            os.fsync(stream.fileno())  # a full disk can accept a write into the page cache
    except OSError as error:
        raise PreflightError(
            f"results folder {folder} is not writable ({_why(error)}); choose another with --results-dir"
        ) from error
    finally:
        if temp_name is not None:
            Path(temp_name).unlink(missing_ok=True)


# --- memory -------------------------------------------------------------------------------


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PreflightError(f"{name} must be an integer >= 1; got {value!r}")


class _SavedBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm's saved set (input, weight, batch mean, inverse std) on meta.

    torch's meta batch_norm runs a Python decomposition that makes the whole forward about 4x
    slower (hrnet C=30 at 224, batch 16: 2.6 s against 0.7 s); this stand-in saves the same
    bytes (the tests compare with real CPU tensors) and costs nothing.
    """

    @staticmethod
    def forward(ctx, inputs, weight, bias):
        channels = inputs.shape[1]
        stats = [inputs.new_empty(channels, dtype=torch.float32) for _ in range(2)]
        ctx.save_for_backward(inputs, weight, *stats)
        return torch.empty_like(inputs)

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - the estimate never runs backward
        raise RuntimeError("_SavedBatchNorm is for memory estimates only")


class _FastMetaBatchNorm(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.batch_norm:
            names = ("input", "running_mean", "running_var", "weight", "bias", "training")
            bound = {**dict(zip(names, args)), **kwargs}
            if bound.get("training", False) and bound["input"].device.type == "meta":
                return _SavedBatchNorm.apply(bound["input"], bound.get("weight"), bound.get("bias"))
        return func(*args, **kwargs)


def _storage_key(tensor: torch.Tensor):
    try:
        return tensor.untyped_storage()._cdata  # the StorageImpl: views and in-place results share it
    except (AttributeError, RuntimeError, NotImplementedError):
        return None


def saved_activation_bytes(model: torch.nn.Module, inputs: torch.Tensor, exclude=()) -> int:
    """Bytes autograd saves for backward in one forward of ``model`` (train mode) on ``inputs``.

    Each distinct storage counts once, whole (views and in-place ReLUs share their input's
    storage), and storages of the tensors in ``exclude`` (parameters, counted elsewhere) not at
    all. Works on meta and on real tensors alike: the tests compare the two.
    """
    excluded = {_storage_key(tensor) for tensor in exclude} - {None}
    seen: dict[Any, tuple[int, Any]] = {}
    loose = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal loose
        key = _storage_key(tensor)
        if key is None:
            loose += tensor.numel() * tensor.element_size()  # no storage identity: count as is
        elif key not in excluded and key not in seen:
            storage = tensor.untyped_storage()
            seen[key] = (storage.nbytes(), storage)  # keep it alive: a freed key could be reused
        return tensor

    with (
        torch.enable_grad(),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        _FastMetaBatchNorm(),
    ):
        model(inputs)
    return loose + sum(size for size, _ in seen.values())


# Small steps (no model options, C <= 8, images <= 64x64, batch <= 16) are not measured: the meta
# forward costs about 2 s the first time in a process, longer than such a whole run's epoch, and
# their activations are far from any machine's memory. The bound is the largest one measured
# (hrsnet C=8 at 64x64, batch 16, fp32: 144 MB), rounded up; tests/test_preflight.py checks it.
SMALL_STEP = {"width": 8, "image_size": 64, "batch_size": 16}
SMALL_STEP_ACTIVATION_BYTES = 150_000_000


def is_small_step(width: int, image_size: int, batch_size: int, model_options: dict[str, Any]) -> bool:
    limits = SMALL_STEP
    return (
        not model_options
        and width <= limits["width"]
        and image_size <= limits["image_size"]
        and (batch_size <= limits["batch_size"])
    )


def _lower_bound(width: int, image_size: int, batch_size: int) -> tuple[int, int]:
    """(parameter bytes, activation bytes) that every preset needs at least: the stage-4 3x3
    conv on branch 3 (8C channels), the input and branch 0's output (C channels at 1/4)."""
    parameters = 4 * 9 * (8 * width) ** 2
    activations = 4 * batch_size * (3 * image_size**2 + width * (image_size // 4) ** 2)
    return parameters, activations


def estimate_training_memory(
    arch: str,
    width: int,
    num_classes: int,
    image_size: int,
    batch_size: int,
    model_options: Any = None,
    optimizer: str = "sgd",
    precision: str = "fp32",
    data_bytes: int = 0,
    bound_small_steps: bool = False,
) -> dict[str, Any]:
    """Memory of one training step, measured on the meta device (no memory, no compute).

    ``bound_small_steps``: a small step's activations are given as SMALL_STEP_ACTIVATION_BYTES
    instead of measured (what fit() asks for; see SMALL_STEP).

    Returns a dict: the settings, ``parameters`` (count), and in bytes ``parameter_bytes`` and
    ``buffer_bytes`` (fp32, as in a checkpoint), ``gradient_bytes`` (1x parameters),
    ``optimizer_bytes`` (SGD momentum 1x, Adam 2x), ``activation_bytes`` (what autograd saves
    in a training-mode forward at this batch: saved_activation_bytes(); with ``precision``
    "bf16", tensors in bf16 plus bf16 copies of the weights, as autocast saves them),
    ``data_bytes`` (the caller's: a dataset kept on the device), ``total_bytes``, and
    ``lower_bound`` (True when the cheap bound of _lower_bound() already passed 1 PiB and the
    model was not built: the figures are then minimums).

    The total is about a lower bound of the peak: the allocator's rounding and caching, cuDNN
    workspaces, the transient gradients of backward, the optimizer's foreach temporaries,
    torch.compile's different saved set and evaluation (no grad, eval_batch_size: it keeps a
    few feature maps alive per image, not all) are left out, so a run it refuses cannot fit,
    and a run it passes may still need somewhat more. On real CPU tensors the saved bytes
    equal the meta figure (tests/test_preflight.py).

    ``model_options`` are HRNetConfig overrides: a dict, or (key, value) pairs as in
    TrainConfig.model_options. ``precision`` is the resolved one (runtime.resolve_precision).

    Measured on 2 shared, busy CPU cores (torch 2.14), width 2, 18 or 30 at 224x224, batch 16:
    0.45 to 0.9 s per call, plus about 3 s once per process for torch's meta kernels (the
    first call). Width 100000 at 224, or 224 at batch 1e9: 0.5 to 1 s (meta shapes only);
    past the 1 PiB bound (width 100000 at 100000x100000, or 1e12) it returns at once.
    """
    for name, value in (
        ("width", width),
        ("num_classes", num_classes),
        ("image_size", image_size),
        ("batch_size", batch_size),
    ):
        _check_int(name, value)
    if optimizer not in OPTIMIZER_STATE_COPIES:
        raise PreflightError(f"optimizer must be one of {', '.join(OPTIMIZER_STATE_COPIES)}; got {optimizer!r}")
    if precision not in PRECISION_BYTES:
        raise PreflightError(f"precision must be fp32 or bf16 (resolve auto first); got {precision!r}")
    options = dict(model_options or {})
    result: dict[str, Any] = {
        "arch": arch,
        "width": width,
        "num_classes": num_classes,
        "image_size": image_size,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "precision": precision,
    }
    bound_parameters, bound_activations = _lower_bound(width, image_size, batch_size)
    if bound_parameters + bound_activations > SHORT_CIRCUIT_BYTES:
        parameter_bytes, buffer_bytes, activation_bytes, lower_bound = bound_parameters, 0, bound_activations, True
        parameters = bound_parameters // 4
    else:
        with torch.device("meta"):
            model = create_model(arch, width=width, num_classes=num_classes, **options)
        model.train()
        parameters = sum(p.numel() for p in model.parameters())
        parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        if precision == "bf16":
            model.to(dtype)  # its weights then stand for autocast's bf16 copies: saved, so counted
        inputs = torch.empty(batch_size, 3, image_size, image_size, device="meta", dtype=dtype)
        exclude = () if precision == "bf16" else [*model.parameters(), *model.buffers()]
        try:
            if bound_small_steps and is_small_step(width, image_size, batch_size, options):
                activation_bytes = SMALL_STEP_ACTIVATION_BYTES  # a bound, not worth a 2 s meta forward
            else:
                activation_bytes = saved_activation_bytes(model, inputs, exclude)
        except (RuntimeError, ValueError) as error:
            raise PreflightError(
                f"{arch} C={width} cannot run at {image_size}x{image_size}: "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from error
        lower_bound = False
    result.update(
        parameters=parameters,
        parameter_bytes=parameter_bytes,
        buffer_bytes=buffer_bytes,
        gradient_bytes=parameter_bytes,
        optimizer_bytes=OPTIMIZER_STATE_COPIES[optimizer] * parameter_bytes,
        activation_bytes=activation_bytes,
        data_bytes=int(data_bytes),
        lower_bound=lower_bound,
    )
    result["total_bytes"] = sum(
        result[key]
        for key in (
            "parameter_bytes",
            "buffer_bytes",
            "gradient_bytes",
            "optimizer_bytes",
            "activation_bytes",
            "data_bytes",
        )
    )
    return result


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """Room left under a container's memory limit (cgroup v2, then v1); None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2**60:  # v1 writes "no limit" as a huge number
            return None
        return max(int(limit) - usage, 0)
    return None


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """(bytes available, what: e.g. 'this machine', 'GPU cuda:0'), or None when unknown.

    CUDA: free memory of the device (torch.cuda.mem_get_info). CPU: MemAvailable (fallback:
    available physical pages), capped by a cgroup memory limit.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        return int(free), f"GPU cuda:{index}"
    if device.type != "cpu":
        return None
    available = _meminfo_available()
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = None
    limited = _cgroup_available()
    if limited is not None:
        available = limited if available is None else min(available, limited)
    return None if available is None else (int(available), "this machine")


def describe_estimate(estimate: dict[str, Any]) -> str:
    """'hrnet C=30 at 224x224, batch 16 needs about 5.9 GB of memory (parameters ..., ...)'."""
    size = estimate["image_size"]
    parts = [
        f"parameters {format_bytes(estimate['parameter_bytes'] + estimate['buffer_bytes'])}",
        f"gradients and optimizer state {format_bytes(estimate['gradient_bytes'] + estimate['optimizer_bytes'])}",
        f"activations {format_bytes(estimate['activation_bytes'])}",
    ]
    if estimate.get("data_bytes"):
        parts.append(f"data {format_bytes(estimate['data_bytes'])}")
    packed = f" ({estimate['packed_runs']} seeds packed)" if estimate.get("packed_runs") else ""
    return (
        f"{estimate['arch']} C={estimate['width']}{packed} at {size}x{size}, batch {estimate['batch_size']} needs "
        f"{'at least' if estimate['lower_bound'] else 'about'} {format_bytes(estimate['total_bytes'])} "
        f"of memory ({', '.join(parts)})"
    )


def scale_estimate(estimate: dict[str, Any], runs: int) -> dict[str, Any]:
    """The estimate for ``runs`` runs trained as one packed network (hrsnet.packing): every
    byte count times ``runs``, plus one unpacked copy of each run's weights and optimizer state."""
    if runs == 1:
        return estimate
    scaled = dict(estimate, packed_runs=runs)
    for key in ("parameter_bytes", "buffer_bytes", "gradient_bytes", "optimizer_bytes", "activation_bytes"):
        scaled[key] = estimate[key] * runs
    copies = (estimate["parameter_bytes"] + estimate["buffer_bytes"] + estimate["optimizer_bytes"]) * runs
    scaled["total_bytes"] = estimate["total_bytes"] * runs + copies
    return scaled


def with_data(estimate: dict[str, Any], data_bytes: int) -> dict[str, Any]:
    """The estimate plus a dataset of ``data_bytes`` held on the same device (hrsnet.data.dataset_bytes)."""
    if not data_bytes:
        return estimate
    combined = dict(estimate, data_bytes=estimate.get("data_bytes", 0) + int(data_bytes))
    combined["total_bytes"] = estimate["total_bytes"] + int(data_bytes)
    return combined


def check_dataset_memory(data_bytes: int, what: str, device: torch.device | str) -> None:
    """Refuse a dataset that cannot fit, before it is read: it is decoded on this machine, then
    held on ``device`` (checked where the available memory is known)."""
    device = torch.device(device)
    places = [device] if device.type == "cpu" else [torch.device("cpu"), device]
    for place in places:
        available = available_memory(place)
        if available is not None and data_bytes > available[0]:
            raise PreflightError(
                f"the dataset ({what}, as uint8) needs about {format_bytes(data_bytes)} of memory; {available[1]} "
                f"has {format_bytes(available[0])} available; use fewer images, or a lower --image-size "
                "for an image folder (it is held at that size)"
            )


def check_memory(estimate: dict[str, Any], device: torch.device | str) -> None:
    """Refuse when the estimate exceeds the memory ``device`` has available (skipped if unknown)."""
    available = available_memory(torch.device(device))
    if available is None:
        return
    free, where = available
    if estimate["total_bytes"] > free:
        raise PreflightError(
            f"a training step of {describe_estimate(estimate)}; {where} has {format_bytes(free)} "
            "available; lower --width, --image-size or --batch-size"
        )


# --- disk ---------------------------------------------------------------------------------


def checkpoint_bytes(estimate: dict[str, Any], model_only: bool = False) -> int:
    """About the size of ``last.pt`` (parameters, buffers, optimizer state, in fp32), or with
    ``model_only`` of ``best_epochNNN.pt`` (parameters and buffers). torch.save adds a few kB."""
    size = estimate["parameter_bytes"] + estimate["buffer_bytes"]
    return size if model_only else size + estimate["optimizer_bytes"]


def disk_bytes_needed(estimate: dict[str, Any], run_dir: Path | str | None = None) -> int:
    """Free space a run needs from now on, for its checkpoints.

    At the worst moment of an epoch four checkpoints exist: the previous last.pt and best,
    the new best and the new last.pt's temporary file. The run's existing ``*.pt`` files in
    ``run_dir`` already take their share; one new last.pt and best are always needed.
    """
    last, best = checkpoint_bytes(estimate), checkpoint_bytes(estimate, model_only=True)
    existing = 0
    if run_dir is not None and Path(run_dir).is_dir():
        existing = sum(path.stat().st_size for path in Path(run_dir).glob("*.pt") if path.is_file())
    return max(2 * (last + best) - existing, last + best)


def check_disk_space(folder: Path | str, needed_bytes: int, estimate: dict[str, Any] | None = None) -> None:
    """Refuse when the filesystem of ``folder`` (or of its nearest existing parent) has less
    than ``needed_bytes`` free; with ``estimate`` the message gives the checkpoint sizes."""
    folder = Path(folder)
    free = shutil.disk_usage(existing_ancestor(folder)).free
    if free >= needed_bytes:
        return
    detail = ""
    if estimate is not None:
        detail = (
            f" (last.pt about {format_bytes(checkpoint_bytes(estimate))} and best_epochNNN.pt about "
            f"{format_bytes(checkpoint_bytes(estimate, model_only=True))}, each written beside its "
            "previous copy)"
        )
    raise PreflightError(
        f"not enough space in {folder}: {format_bytes(free)} free, training needs about "
        f"{format_bytes(needed_bytes)}{detail}; free space or choose another --results-dir"
    )
