"""``python -m hrsnet gpucheck``: correctness checks of the GPU fast paths, run on a machine with a GPU.

Plain Python (no pytest, no papermill), one command, a summary table at the end and every
number in ``<output>/gpucheck.csv`` (or the ``.csv`` path given), each row appended as soon as it
is known: a run stopped by a timeout keeps what it checked. Checks, in this order:

- fast_paths: each fast path against the plain fp32 eager step from the same weights, optimizer
  state and batch, step by step (as tests/test_bench.py does on a CPU): loss and update cosine
  for channels_last, fused SGD, bf16, whole-step CUDA graphs (fp32 and bf16) and torch.compile.
  fp32 paths: loss within 1e-4 and update cosine >= 0.999 (TF32 off for these comparisons);
  bf16 paths: loss within 4% (their update direction at initialisation is noise-dominated,
  see README, so its cosine is reported, not judged).
- graph_vs_eager: the captured step replayed against the same step run eagerly, free-running
  over several steps from the same start (deterministic cuDNN): losses at every step.
- fit_graphs: fit() with ``cuda_graphs="on"`` against ``"off"`` (fp32, TF32 off): the same
  first-epoch training loss, and config.json records the graphs and the eagerly trained last
  batch (44 images in batches of 8: 3 warm-up steps, 2 replays, 1 eager partial batch).
- no_host_sync: ``torch.cuda.set_sync_debug_mode("error")`` around an eager training step (as
  the Trainer takes it, indices on the device) and around a graph replay, each also with
  augmentation drawn on a CUDA generator of the run's own (``augment=True``).
- checkpoint: a checkpoint written by a CPU Trainer resumes on the GPU (channels_last, fused)
  and gives the same next step; the GPU's checkpoint resumes on the CPU likewise.
- deterministic: two short fit() runs with ``deterministic=True`` give identical histories.
- memory: peak GPU memory of a training step per network and width at batch 16 and 128, next
  to hrsnet.preflight's estimate.

``--dry-run`` runs on a CPU at tiny sizes, on a shallower network (DRY_RUN_MODEL_OPTIONS; the
test suite does): the checks that make sense there run for real, the CUDA-only ones are reported
as "skipped: needs CUDA".
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..data import load_dataset
from ..engine.cudagraphs import GraphedTrainStep
from ..engine.step import BatchShare, StepSettings, train_step
from ..engine.trainer import Trainer
from ..models import list_models
from ..runs import fit
from ..runs.preflight import estimate_training_memory
from ..runtime import configure_determinism, make_optimizer, memory_format, resolve_device
from .bench import Setting, build_model, default_variant, device_name, device_slug, make_train_step

NEEDS_CUDA = "skipped: needs CUDA"
CHECKS = ("no_host_sync", "graph_vs_eager", "fast_paths", "fit_graphs", "checkpoint", "deterministic", "memory")
FP32_LOSS, FP32_COSINE, BF16_LOSS = 1e-4, 0.999, 0.04
CSV_COLUMNS = ["check", "case", "step", "metric", "value", "limit", "status", "detail"]
# --dry-run's network: the preset with one module per stage and one unit per branch, every kind of
# layer still in it. These checks compare code paths (fast vs plain step, checkpoint there and
# back, two fits), which the depth plays no part in; on a CPU the depth is most of their time.
DRY_RUN_MODEL_OPTIONS = (("modules_per_stage", (1, 1, 1)), ("units_per_branch", 1))


@dataclass
class Row:
    check: str
    case: str
    step: str
    metric: str
    value: float
    limit: str
    status: str  # pass, fail, info or "skipped: ..."
    detail: str = ""


class Report:
    """The checks' rows: each appended to ``path`` (if given) as soon as it is known, flushed, so
    a run stopped by a timeout keeps every row measured before."""

    def __init__(self, quiet: bool = False, path: Path | None = None):
        self.rows: list[Row] = []
        self.quiet = quiet
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as stream:
                csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n").writeheader()

    def add(self, check, case, step, metric, value, limit="", status="info", detail="") -> Row:
        row = Row(check, case, str(step), metric, float(value), limit, status, detail)
        self.rows.append(row)
        if self.path is not None:
            with open(self.path, "a", newline="") as stream:
                csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n").writerow(asdict(row))
        if not self.quiet and status != "info":
            print(f"  [{status}] {check} / {case} / step {step}: {metric} = {value:.4g} {limit} {detail}", flush=True)
        return row

    def judged(self, check, case, step, metric, value, ok: bool, limit: str, detail="") -> Row:
        return self.add(check, case, step, metric, value, limit, "pass" if ok else "fail", detail)

    def skip(self, check, case, reason: str = NEEDS_CUDA) -> Row:
        return self.add(check, case, "-", "-", math.nan, "", reason if reason.startswith("skipped") else reason)

    def fail(self, check, case, error: BaseException) -> Row:
        first = str(error).splitlines()[0] if str(error) else ""
        return self.add(check, case, "-", "error", math.nan, "", "fail", f"{type(error).__name__}: {first}"[:300])

    def summary(self) -> list[dict[str, Any]]:
        """One line per (check, case): its status (fail if any row failed) and worst values."""
        grouped: dict[tuple[str, str], list[Row]] = {}
        for row in self.rows:
            grouped.setdefault((row.check, row.case), []).append(row)
        lines = []
        for (check, case), rows in grouped.items():
            statuses = {row.status for row in rows}
            status = (
                "fail"
                if "fail" in statuses
                else "pass"
                if "pass" in statuses
                else next((s for s in statuses if s.startswith("skipped")), "info")
            )
            metrics: dict[str, list[float]] = {}
            for row in rows:
                if math.isfinite(row.value):
                    metrics.setdefault(row.metric, []).append(row.value)
            worst = []
            for metric, values in metrics.items():
                value = min(values) if "cosine" in metric else max(values)
                worst.append(f"{metric} {value:.3g}")
            detail = next((row.detail for row in rows if row.status == "fail" and row.detail), "")
            lines.append({"check": check, "case": case, "status": status, "worst": ", ".join(worst), "detail": detail})
        return lines

    @property
    def failed(self) -> bool:
        return any(row.status == "fail" for row in self.rows)


@dataclass(frozen=True)
class Sizes:
    arch: str
    width: int
    image_size: int
    batch_size: int
    steps: int
    fit_dataset: str
    fit_image_size: int
    model_options: tuple[tuple[str, Any], ...] = ()  # the preset's (a GPU's checks) or DRY_RUN_MODEL_OPTIONS


@contextlib.contextmanager
def exact_fp32():
    """TF32 off (matmul and cuDNN) for the tight fp32 comparisons; restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def deterministic_cudnn():
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double().cpu() for p in model.parameters()])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a, b, dim=0).item()


def copy_training_state(source_model, source_optimizer, model, optimizer) -> None:
    """Parameters, buffers and momentum buffers of ``source_*`` into ``model``/``optimizer``
    in place (so a captured graph keeps its addresses). A source without momentum yet (before
    its first step) zeroes the target's: SGD's first step (buffer = gradient) is then equal."""
    model.load_state_dict(source_model.state_dict())  # copies into the existing tensors
    for source_param, param in zip(source_model.parameters(), model.parameters()):
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        source_buffer = source_optimizer.state.get(source_param, {}).get("momentum_buffer")
        if buffer is not None:
            if source_buffer is None:
                buffer.zero_()
            else:
                buffer.copy_(source_buffer)
        elif source_buffer is not None:
            optimizer.state[param]["momentum_buffer"] = torch.empty_like(param).copy_(source_buffer)


def _source(device: torch.device, count: int):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, 100, (count,), generator=generator).to(device)
    return images, labels


def _step(forward, optimizer, images, labels, index, settings: StepSettings) -> torch.Tensor:
    """One training step (hrsnet.engine.step.train_step) on ``index`` of images/labels; its loss."""
    losses, _, _ = train_step(forward, optimizer, [BatchShare(images, labels, index)], settings)
    return losses[0]


def _model_and_optimizer(sizes: Sizes, device, channels_last: bool, kernel: str):
    torch.manual_seed(0)
    model = build_model(sizes.arch, sizes.width, **dict(sizes.model_options))
    model = model.to(device=device, memory_format=memory_format(channels_last)).train()
    protocol = TrainConfig()
    optimizer = make_optimizer(
        protocol.optimizer, model.parameters(), protocol.lr, protocol.momentum, protocol.weight_decay, kernel
    )
    return model, optimizer


def check_fast_paths(report: Report, sizes: Sizes, device: torch.device, compile_check: bool) -> None:
    """Each fast path vs the plain fp32 step, from the same state and batch, step by step."""
    cuda = device.type == "cuda"
    fused = "fused"
    variants = [  # name, precision, channels_last, kernel, mode ("eager", "graphs", "compile"), cuda only
        ("channels_last", "fp32", True, "for-loop", "eager", False),
        ("fused SGD", "fp32", True, fused, "eager", False),
        ("bf16 (training default)", "bf16", True, fused, "eager", False),
        ("whole-step CUDA graph, fp32", "fp32", True, fused, "graphs", True),
        ("whole-step CUDA graph, bf16", "bf16", True, fused, "graphs", True),
        ("torch.compile, fp32", "fp32", True, fused, "compile", True),
    ]
    images, labels = _source(device, sizes.batch_size * sizes.steps)
    with exact_fp32():
        for name, precision, channels_last, kernel, mode, cuda_only in variants:
            if cuda_only and not cuda:
                report.skip("fast_paths", name)
                continue
            if mode == "compile" and not compile_check:
                report.skip("fast_paths", name, "skipped: --no-compile")
                continue
            try:
                plain, plain_optimizer = _model_and_optimizer(sizes, device, False, "for-loop")
                model, optimizer = _model_and_optimizer(sizes, device, channels_last, kernel)
                settings = StepSettings(sizes.image_size, precision, memory_format(channels_last))
                graphed = None
                forward = model
                begin = time.perf_counter()
                if mode == "graphs":
                    first = torch.arange(sizes.batch_size, device=device)
                    graphed = GraphedTrainStep(model, optimizer, BatchShare(images, labels, first), settings)
                    report.add("fast_paths", name, "-", "capture_seconds", graphed.capture_seconds)
                elif mode == "compile":
                    forward = torch.compile(model)
                for step in range(sizes.steps):
                    copy_training_state(plain, plain_optimizer, model, optimizer)
                    before = _flat(plain)
                    index = torch.arange(step * sizes.batch_size, (step + 1) * sizes.batch_size, device=device)
                    plain_loss = _step(plain, plain_optimizer, images, labels, index, StepSettings(sizes.image_size))
                    if graphed is not None:
                        loss = graphed.step(index)[0][0]
                    else:
                        loss = _step(forward, optimizer, images, labels, index, settings)
                    if mode == "compile" and step == 0:
                        report.add("fast_paths", name, step, "first_step_seconds", time.perf_counter() - begin)
                    relative = abs(loss.item() - plain_loss.item()) / abs(plain_loss.item())
                    plain_update, update = _flat(plain) - before, _flat(model) - before
                    cosine = _cosine(plain_update, update)
                    norm_ratio = (update.norm() / plain_update.norm()).item()
                    loss_limit = FP32_LOSS if precision == "fp32" else BF16_LOSS
                    report.judged(
                        "fast_paths", name, step, "loss_rel_diff", relative, relative <= loss_limit, f"<= {loss_limit}"
                    )
                    if precision == "fp32":
                        report.judged(
                            "fast_paths",
                            name,
                            step,
                            "update_cosine",
                            cosine,
                            cosine >= FP32_COSINE,
                            f">= {FP32_COSINE}",
                        )
                    else:
                        report.add("fast_paths", name, step, "update_cosine", cosine, "reported only (bf16)")
                    report.add("fast_paths", name, step, "update_norm_ratio", norm_ratio)
            except Exception as error:  # one broken path must not hide the others
                report.fail("fast_paths", name, error)


def check_graph_vs_eager(report: Report, sizes: Sizes, device: torch.device, steps: int) -> None:
    """Replays of the captured step vs the same step body run eagerly, free-running from one start."""
    if device.type != "cuda":
        for case in ("fp32", "bf16"):
            report.skip("graph_vs_eager", case)
        return
    images, labels = _source(device, sizes.batch_size * steps)
    for precision, limit in (("fp32", FP32_LOSS), ("bf16", BF16_LOSS)):
        try:
            with exact_fp32(), deterministic_cudnn():
                eager, eager_optimizer = _model_and_optimizer(sizes, device, True, "fused")
                model, optimizer = _model_and_optimizer(sizes, device, True, "fused")
                settings = StepSettings(sizes.image_size, precision, torch.channels_last)
                first = torch.arange(sizes.batch_size, device=device)
                graphed = GraphedTrainStep(model, optimizer, BatchShare(images, labels, first), settings)
                copy_training_state(eager, eager_optimizer, model, optimizer)  # back to the common start
                identical = True
                for step in range(steps):
                    index = torch.arange(step * sizes.batch_size, (step + 1) * sizes.batch_size, device=device)
                    eager_loss = _step(eager, eager_optimizer, images, labels, index, settings)
                    loss = graphed.step(index)[0][0]
                    relative = abs(loss.item() - eager_loss.item()) / abs(eager_loss.item())
                    identical = identical and loss.item() == eager_loss.item()
                    report.judged(
                        "graph_vs_eager", precision, step, "loss_rel_diff", relative, relative <= limit, f"<= {limit}"
                    )
                cosine = _cosine(_flat(eager), _flat(model))
                report.add(
                    "graph_vs_eager",
                    precision,
                    steps,
                    "weights_cosine",
                    cosine,
                    detail="losses bitwise identical" if identical else "losses not bitwise identical",
                )
        except Exception as error:
            report.fail("graph_vs_eager", precision, error)


def check_fit_graphs(report: Report, sizes: Sizes, device: torch.device, workdir: Path) -> None:
    """fit() through the Trainer's graphed loop vs its eager loop, from the same seed."""
    case = f"fit on/off, {sizes.fit_dataset} {sizes.fit_image_size}px, 44 images, batch 8"
    if device.type != "cuda":
        report.skip("fit_graphs", case)
        return
    try:
        histories, resolved = {}, {}
        with exact_fp32():
            for switch in ("off", "on"):
                config = _tiny_config(
                    workdir / f"fit_graphs_{switch}", sizes, str(device), cuda_graphs=switch, train_subset=44
                )
                run_dir = Path(fit(config).run_dir)
                histories[switch] = pd.read_csv(run_dir / "history.csv")
                resolved[switch] = json.loads((run_dir / "config.json").read_text())["resolved"]
        recorded = (
            resolved["on"]["cuda_graphs"] and resolved["on"]["eager_last_batch"] and not resolved["off"]["cuda_graphs"]
        )
        report.judged(
            "fit_graphs",
            case,
            "-",
            "config_records_graphs",
            float(recorded),
            recorded,
            "== 1",
            resolved["on"]["cuda_graphs_reason"],
        )
        on, off = histories["on"]["train_loss"], histories["off"]["train_loss"]
        relative = abs(on[0] - off[0]) / abs(off[0])
        report.judged("fit_graphs", case, 1, "train_loss_rel_diff", relative, relative <= FP32_LOSS, f"<= {FP32_LOSS}")
        if len(on) > 1 and len(off) > 1:  # free-running: later epochs may drift by rounding (reported)
            report.add("fit_graphs", case, 2, "train_loss_rel_diff", abs(on[1] - off[1]) / abs(off[1]))
    except Exception as error:
        report.fail("fit_graphs", case, error)


NO_HOST_SYNC_CASES = (
    "eager training step",
    "eager training step, augmented",
    "graph replay",
    "graph replay, augmented",
)


def check_no_host_sync(report: Report, sizes: Sizes, device: torch.device) -> None:
    """No host synchronisation inside an eager step or a graph replay, with and without
    augmentation (drawn on a CUDA generator of the run's own, as the Trainer does)."""
    if device.type != "cuda":
        for case in NO_HOST_SYNC_CASES:
            report.skip("no_host_sync", case)
        return
    images, labels = _source(device, sizes.batch_size * 4)
    order = torch.randperm(len(labels), device=device)
    for augment in (False, True):
        _check_no_host_sync(report, sizes, device, images, labels, order, augment)


def _guarded(report: Report, device: torch.device, case: str, step: Callable[[], Any]) -> None:
    """``step`` once to warm up, then once under sync debug mode "error": a host sync raises."""
    try:
        step()  # warm-up outside the guard: cuDNN autotuning, lazy initialisation
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize(device)
        report.judged("no_host_sync", case, 1, "host_syncs", 0, True, "== 0")
    except Exception as error:
        report.fail("no_host_sync", case, error)


def _check_no_host_sync(report: Report, sizes: Sizes, device, images, labels, order, augment: bool) -> None:
    suffix = ", augmented" if augment else ""
    settings = StepSettings(sizes.image_size, "bf16", torch.channels_last, augment)
    generator = torch.Generator(device=device).manual_seed(0) if augment else None
    model, optimizer = _model_and_optimizer(sizes, device, True, "fused")
    loss_sum = torch.zeros((), device=device)

    def eager_step() -> None:  # as Trainer.train_one_epoch takes a step: indices and sums on the device
        nonlocal loss_sum
        index = order[: sizes.batch_size]
        losses, _, _ = train_step(model, optimizer, [BatchShare(images, labels, index, generator)], settings)
        loss_sum += losses[0].detach() * len(index)

    _guarded(report, device, f"eager training step{suffix}", eager_step)
    case = f"graph replay{suffix}"
    if augment and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        report.skip("no_host_sync", case, f"skipped: torch {torch.__version__} cannot replay a run's own generator")
        return
    try:
        graph_model, graph_optimizer = _model_and_optimizer(sizes, device, True, "fused")
        share = BatchShare(images, labels, order[: sizes.batch_size], generator)
        graphed = GraphedTrainStep(graph_model, graph_optimizer, share, settings)
    except Exception as error:
        report.fail("no_host_sync", case, error)
        return

    def replay() -> None:
        nonlocal loss_sum
        losses, _, _ = graphed.step(order[sizes.batch_size : 2 * sizes.batch_size])
        loss_sum += losses[0] * sizes.batch_size

    _guarded(report, device, case, replay)


def _tiny_config(results_dir: Path, sizes: Sizes, device: str, **overrides):
    settings = dict(
        arch=sizes.arch,
        width=2,
        dataset=sizes.fit_dataset,
        image_size=sizes.fit_image_size,
        epochs=2,
        batch_size=8,
        train_subset=8,
        val_subset=8,
        test_subset=8,
        precision="fp32",
        device=device,
        quiet=True,
        results_dir=str(results_dir),
        model_options=sizes.model_options,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def check_checkpoint(report: Report, sizes: Sizes, device: torch.device, workdir: Path) -> None:
    """A CPU checkpoint resumes on the GPU (channels_last, fused) to the same next step, and back."""
    cpu = torch.device("cpu")
    there = device if device.type == "cuda" else cpu
    label = "cuda" if device.type == "cuda" else "cpu (channels_last, fused)"
    base = _tiny_config(workdir, sizes, "cpu", channels_last="off", fused_optimizer="off")
    moved = _tiny_config(workdir, sizes, there.type, channels_last="on", fused_optimizer="on")
    assert base.run_id == moved.run_id  # only operational settings differ
    data = load_dataset(base.dataset, seed=base.seed, train_subset=32, val_subset=16, test_subset=16)
    images, labels = data.train.images, data.train.labels
    batch = base.batch_size

    def trainer(config, on: torch.device, run_dir: Path) -> Trainer:
        return Trainer(config, data.to(on), on, run_dir)

    def batch_of(step: int, on: torch.device):
        part = slice(step * batch, (step + 1) * batch)
        return images[part].to(on), labels[part].to(on), torch.arange(batch, device=on)

    def compare(case: str, a: Trainer, b: Trainer, step: int) -> None:
        before = _flat(a.model)
        loss_a = _step(a.step_model, a.optimizer, *batch_of(step, a.device), a.step_settings)
        loss_b = _step(b.step_model, b.optimizer, *batch_of(step, b.device), b.step_settings)
        relative = abs(loss_a.item() - loss_b.item()) / abs(loss_a.item())
        cosine = _cosine(_flat(a.model) - before, _flat(b.model) - before)
        report.judged("checkpoint", case, step, "loss_rel_diff", relative, relative <= FP32_LOSS, f"<= {FP32_LOSS}")
        report.judged("checkpoint", case, step, "update_cosine", cosine, cosine >= FP32_COSINE, f">= {FP32_COSINE}")

    try:
        with exact_fp32():
            source = trainer(base, cpu, workdir / "cpu")
            for step in range(2):
                _step(source.step_model, source.optimizer, *batch_of(step, cpu), source.step_settings)
            path = workdir / "from_cpu.pt"
            torch.save(source.checkpoint_state(), path)
            resumed = trainer(moved, there, workdir / "there")
            resumed.load_checkpoint(path)
            compare(f"cpu -> {label}", source, resumed, 2)
            path = workdir / "from_there.pt"
            torch.save(resumed.checkpoint_state(), path)
            back = trainer(base, cpu, workdir / "back")
            back.load_checkpoint(path)
            compare(f"{label} -> cpu", resumed, back, 3)
    except Exception as error:
        report.fail("checkpoint", f"cpu <-> {label}", error)


def check_deterministic(report: Report, sizes: Sizes, device: torch.device, workdir: Path) -> None:
    """Two fit() runs with deterministic=True: identical losses and accuracies, epoch by epoch."""
    case = f"fit twice, {sizes.fit_dataset} {sizes.fit_image_size}px, {device.type}"
    try:
        histories = []
        for attempt in range(2):
            config = _tiny_config(
                workdir / f"deterministic{attempt}", sizes, str(device), deterministic=True, precision="auto"
            )
            result = fit(config)
            histories.append(pd.read_csv(Path(result.run_dir) / "history.csv"))
        columns = ["train_loss", "train_acc", "val_loss", "val_acc"]
        first, second = (history[columns].to_numpy() for history in histories)
        equal = first.shape == second.shape and bool((first == second).all())
        difference = float(abs(first - second).max()) if first.shape == second.shape else math.inf
        report.judged("deterministic", case, len(first), "max_abs_difference", difference, equal, "== 0 (bitwise)")
    except Exception as error:
        report.fail("deterministic", case, error)
    finally:
        configure_determinism(False, device)


def check_memory(
    report: Report, device: torch.device, archs: list[str], widths: list[int], batches: list[int], image_size: int
) -> None:
    """Peak GPU memory of a default training step per network, width and batch, beside the estimate."""
    if device.type != "cuda":
        for arch in archs:
            for batch in batches:
                report.skip("memory", f"{arch} batch {batch}")
        return

    variant = default_variant(device)
    for arch in archs:
        for width in widths:
            for batch in batches:
                case = f"{arch} C={width} batch {batch}"
                try:
                    torch.manual_seed(0)
                    model = build_model(arch, width)
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    step = make_train_step(model, variant, Setting("memory", image_size, batch), device)
                    for _ in range(3):
                        step()
                    torch.cuda.synchronize(device)
                    peak = torch.cuda.max_memory_allocated(device) / 2**30
                    estimate = estimate_training_memory(arch, width, 100, image_size, batch, precision="bf16")
                    report.add("memory", case, "-", "peak_gib", peak)
                    report.add("memory", case, "-", "estimate_gib", estimate["total_bytes"] / 2**30)
                    del model, step
                except Exception as error:
                    report.fail("memory", case, error)
                finally:
                    torch.cuda.empty_cache()


def add_gpucheck_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu (cpu only with --dry-run)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny sizes on any device (the CPU: CUDA-only checks reported as skipped): exercises the code path",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="the CSV to write (a path ending in .csv) or a folder for gpucheck.csv (default results/gpu/<device>)",
    )
    parser.add_argument(
        "--arch", default=None, help="network of the step-by-step checks (default hrnet_official; dry run hrnet)"
    )
    parser.add_argument("--width", type=int, default=None, help="its C (default 18; dry run 2)")
    parser.add_argument("--image-size", type=int, default=None, help="default 224; dry run 32")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 (the paper's batch)")
    parser.add_argument("--steps", type=int, default=None, help="compared steps (default 3; dry run 1)")
    parser.add_argument("--only", nargs="+", choices=CHECKS, help="run only these checks")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile path (minutes)")
    parser.add_argument(
        "--memory-archs", nargs="+", choices=list_models(), default=None, help="memory: networks (default all)"
    )
    parser.add_argument("--memory-widths", type=int, nargs="+", default=[2, 18, 30])
    parser.add_argument("--memory-batches", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--quiet", action="store_true")


def run_gpucheck(args: argparse.Namespace) -> int:
    """Run the checks; print the summary table; write gpucheck.csv. 0 if nothing failed, else 1."""
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.dry_run:
        raise ValueError(
            "gpucheck checks a CUDA GPU and torch sees none here; --dry-run runs it on a CPU at tiny sizes"
        )
    dry = args.dry_run
    # Before any cuBLAS handle exists: the deterministic check needs cuBLAS's fixed workspace.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    sizes = Sizes(
        # Dry run: the CPU test's tiny setting (tests/test_bench.py), where fp32 paths agree to
        # cosine 0.999; at batch 4 BatchNorm over a 1x1 lowest branch amplifies rounding (0.97).
        arch=args.arch or ("hrnet" if dry else "hrnet_official"),
        width=args.width or (2 if dry else 18),
        image_size=args.image_size or (32 if dry else 224),
        batch_size=args.batch_size or 16,
        steps=args.steps or (1 if dry else 3),
        fit_dataset="digits" if dry else "synthetic",
        fit_image_size=32 if dry else 64,
        model_options=DRY_RUN_MODEL_OPTIONS if dry else (),
    )
    output = Path(args.output) if args.output else Path("results") / "gpu" / device_slug(device)
    path = output if output.suffix == ".csv" else output / "gpucheck.csv"
    checks = set(args.only or CHECKS)
    report = Report(args.quiet, path)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(
        f"gpucheck on {device_name(device)} (torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}){' [dry run]' if dry else ''}: {sizes}"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpucheck-") as scratch:
        workdir = Path(scratch)
        # Cheapest and most telling first: a host sync or a graph that disagrees with its eager
        # step says the rest is moot.
        if "no_host_sync" in checks:
            check_no_host_sync(report, sizes, device)
        if "graph_vs_eager" in checks:
            check_graph_vs_eager(report, sizes, device, steps=max(sizes.steps, 2 if dry else 5))
        if "fast_paths" in checks:
            check_fast_paths(report, sizes, device, compile_check=not args.no_compile)
        if "fit_graphs" in checks:
            check_fit_graphs(report, sizes, device, workdir)
        if "checkpoint" in checks:
            check_checkpoint(report, sizes, device, workdir)
        if "deterministic" in checks:
            check_deterministic(report, sizes, device, workdir)
        if "memory" in checks:
            check_memory(
                report,
                device,
                list(args.memory_archs or list_models()),
                args.memory_widths,
                args.memory_batches,
                sizes.image_size,
            )
    lines = report.summary()
    widths = {key: max([len(key)] + [len(str(line[key])) for line in lines]) for key in ("check", "case", "status")}
    print(f"\ngpucheck summary ({time.perf_counter() - started:.0f} s):")
    for line in lines:
        print(
            f"  {line['check']:{widths['check']}s}  {line['case']:{widths['case']}s}  "
            f"{line['status']:{widths['status']}s}  {line['worst']}"
            + (f"  [{line['detail']}]" if line["detail"] else "")
        )
    print(f"written: {path}")
    return 1 if report.failed else 0
