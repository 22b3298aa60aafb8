"""Pre-flight checks: device, results folder, memory estimate, disk space, write errors."""

import errno
import functools
import os
import subprocess
import time

import pytest
import torch

from hrsnet import rundir
from hrsnet.models import create_model
from hrsnet.rundir import describe_write_error
from hrsnet.runs import preflight
from hrsnet.runs.preflight import (
    PreflightError,
    check_disk_space,
    check_memory,
    check_writable,
    checkpoint_bytes,
    disk_bytes_needed,
    estimate_training_memory,
    saved_activation_bytes,
)
from hrsnet.runtime import resolve_device

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def mount_tmpfs(folder, options):
    """Mount a tmpfs on ``folder`` (root only); skip the test, saying why, where that is impossible."""
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(result.stderr or result.stdout).strip()})")


def fill(folder):
    """Write into ``folder`` until its filesystem is full."""
    handle = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as caught:
            while True:
                os.write(handle, b"\0" * 65536)
        assert caught.value.errno == errno.ENOSPC
    finally:
        os.close(handle)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB filesystem: a checkpoint does not fit."""
    folder = tmp_path / "tiny"
    mount_tmpfs(folder, "size=1m")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder no one can write to, root included (a read-only mount); a 0o555 folder as non-root."""
    folder = tmp_path / "read-only"
    if IS_ROOT:
        mount_tmpfs(folder, "ro,size=64k")
        yield folder
        subprocess.run(["umount", "-l", str(folder)], check=False)
    else:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.fixture
def one_thread():
    """Real CPU forwards on one thread: on 2 shared cores, two threads spin and take 10x longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- device -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mps", "meta", "tpu", "cuda:x", "cuda:", "cpu:0", "CUDA", "", " cpu", None, 0])
def test_check_device_refuses_other_devices(name):
    with pytest.raises(ValueError) as caught:
        resolve_device(name)
    assert str(caught.value) == f"device must be auto, cpu, cuda or cuda:N; got {name!r}"


def test_check_device_accepts_auto_and_cpu_and_is_a_value_error():
    resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")
    assert issubclass(PreflightError, ValueError)  # the CLI prints ValueErrors as one line, exit 2


def test_check_device_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(
            ValueError,
            match=f"^device '{name}' was asked for, but torch sees no CUDA GPU; use --device cpu or auto$",
        ):
            resolve_device(name)


def test_check_device_cuda_index_beyond_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("cuda", "cuda:0", "cuda:1"):
        resolve_device(name)
    with pytest.raises(
        ValueError,
        match=r"^device 'cuda:2' was asked for, but torch sees 2 CUDA GPUs "
        r"\(cuda:0 to cuda:1\); use one of those or --device auto$",
    ):
        resolve_device("cuda:2")


# --- results folder -----------------------------------------------------------------------


def test_check_writable_creates_the_folder_and_leaves_nothing(tmp_path):
    folder = tmp_path / "a" / "b" / "results"
    check_writable(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []
    check_writable(folder)  # an existing folder is fine too


def test_check_writable_under_a_file_fails_for_root_too(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PreflightError) as caught:
        check_writable(tmp_path / "file" / "results")
    assert str(caught.value) == (
        f"results folder {tmp_path / 'file' / 'results'} cannot be created "
        "(NotADirectoryError: Not a directory); choose another with --results-dir"
    )
    with pytest.raises(PreflightError, match=r"cannot be created \(FileExistsError: File exists\)"):
        check_writable(tmp_path / "file")


def test_check_writable_read_only_folder(read_only_folder):
    with pytest.raises(PreflightError) as caught:
        check_writable(read_only_folder)
    message = str(caught.value)
    assert message.startswith(f"results folder {read_only_folder} is not writable (")
    assert message.endswith("); choose another with --results-dir") and "\n" not in message
    assert ("OSError: Read-only file system" in message) if IS_ROOT else ("PermissionError" in message)


def test_check_writable_full_disk(tiny_disk):
    fill(tiny_disk)
    with pytest.raises(PreflightError, match=r"is not writable \(OSError: No space left on device\)"):
        check_writable(tiny_disk)


# --- memory estimate ----------------------------------------------------------------------


def estimate(arch="hrnet", width=2, num_classes=10, image_size=32, batch_size=2, **kwargs):
    """estimate_training_memory, each set of arguments computed once (a second each, on the meta
    device) and handed out as a copy of its own."""
    return dict(_estimate(arch, width, num_classes, image_size, batch_size, **kwargs))


@functools.cache
def _estimate(*args, **kwargs):
    return estimate_training_memory(*args, **kwargs)


def test_estimate_parts_and_totals():
    result = estimate("hrnet", 18, 100, 64, 4)
    with torch.device("meta"):  # the real network's sizes, without computing its weights
        real = create_model("hrnet", width=18, num_classes=100)
    assert result["parameters"] == sum(p.numel() for p in real.parameters())
    assert result["parameter_bytes"] == 4 * result["parameters"]
    assert result["buffer_bytes"] == sum(b.numel() * b.element_size() for b in real.buffers())
    assert result["gradient_bytes"] == result["optimizer_bytes"] == result["parameter_bytes"]  # SGD momentum
    assert estimate("hrnet", 18, 100, 64, 4, optimizer="adam")["optimizer_bytes"] == 2 * result["parameter_bytes"]
    assert result["total_bytes"] == sum(
        result[key]
        for key in ("parameter_bytes", "buffer_bytes", "gradient_bytes", "optimizer_bytes", "activation_bytes")
    )
    assert not result["lower_bound"] and result["data_bytes"] == 0
    assert estimate("hrnet", 18, 100, 64, 4, data_bytes=1000)["total_bytes"] == result["total_bytes"] + 1000


def test_estimate_grows_with_batch_image_size_and_width_and_halves_in_bf16():
    base = estimate(batch_size=2, image_size=64)["activation_bytes"]
    assert estimate(batch_size=4, image_size=64)["activation_bytes"] > 1.9 * base
    assert estimate(batch_size=2, image_size=128)["activation_bytes"] > 3.5 * base
    assert estimate(width=8, batch_size=2, image_size=64)["activation_bytes"] > base
    assert estimate("hrsnet", batch_size=2, image_size=64)["activation_bytes"] > base  # more modules
    bf16 = estimate(batch_size=2, image_size=64, precision="bf16")
    # bf16 tensors, plus the bf16 weight copies autocast saves (which dominate at this tiny size)
    assert 0.45 * base <= bf16["activation_bytes"] - 2 * bf16["parameters"] <= 0.55 * base
    assert bf16["parameter_bytes"] == estimate()["parameter_bytes"]  # the fp32 master weights


@pytest.mark.parametrize("arch", ["hrnet", "hrsnet", "hrnet_official"])
def test_meta_estimate_matches_the_same_measure_on_real_cpu_tensors(arch, one_thread):
    torch.manual_seed(0)
    model = create_model(arch, width=2, num_classes=10).train()
    inputs = torch.randn(2, 3, 64, 64)
    real = saved_activation_bytes(model, inputs, [*model.parameters(), *model.buffers()])
    meta = estimate(arch, 2, 10, 64, 2)["activation_bytes"]
    # Real BatchNorm runs here (not the meta stand-in): a factor of 2 is the requirement; they agree.
    assert 0.5 * real <= meta <= 2 * real
    assert abs(meta - real) <= 0.02 * real, (meta, real)


def test_saved_activation_bytes_counts_each_storage_once():
    weight = torch.randn(8, 8, requires_grad=True)
    inputs = torch.randn(4, 8)

    class Model(torch.nn.Module):
        def forward(self, x):
            h = torch.relu(x @ weight)  # saves x and weight; relu saves its output
            return h[:2].sum() + (h * h).sum()  # mul saves h twice: same storage, counted once

    bytes_ = saved_activation_bytes(Model(), inputs, exclude=[weight])
    assert bytes_ == inputs.nbytes + 4 * 8 * 4  # x, and h once; the weight is excluded


@pytest.mark.parametrize(
    "width, image_size, batch_size",
    [(100_000, 224, 16), (30, 100_000, 16), (100_000, 100_000, 16), (10**12, 10**12, 16), (30, 224, 10**9)],
)
def test_absurd_sizes_give_the_clear_error_without_allocating(width, image_size, batch_size):
    start = time.perf_counter()
    result = estimate_training_memory("hrnet", width, 100, image_size, batch_size)
    with pytest.raises(PreflightError) as caught:
        check_memory(result, torch.device("cpu"))
    seconds = time.perf_counter() - start
    message = str(caught.value)
    assert message.startswith(
        f"a training step of hrnet C={width} at {image_size}x{image_size}, batch {batch_size} "
        f"needs {'at least' if result['lower_bound'] else 'about'} "
    )
    assert "available; lower --width, --image-size or --batch-size" in message and "\n" not in message
    print(f"width {width} image {image_size} batch {batch_size}: {seconds:.2f} s, {message}")


def test_check_memory_compares_with_what_is_available(monkeypatch):
    result = estimate()
    check_memory(result, torch.device("cpu"))  # a few MB fit
    monkeypatch.setattr(preflight, "available_memory", lambda device: (1_000_000, "this machine"))
    with pytest.raises(PreflightError) as caught:
        check_memory(result, torch.device("cpu"))
    assert str(caught.value) == (
        f"a training step of {preflight.describe_estimate(result)}; this machine has 1.0 MB available; "
        "lower --width, --image-size or --batch-size"
    )
    monkeypatch.setattr(preflight, "available_memory", lambda device: None)
    check_memory(estimate(width=100_000, image_size=224), torch.device("cpu"))  # unknown: skipped


def test_available_memory_reads_cuda_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (5 * 10**9, 80 * 10**9))
    assert preflight.available_memory(torch.device("cuda:1")) == (5 * 10**9, "GPU cuda:1")
    free, where = preflight.available_memory(torch.device("cpu"))
    assert where == "this machine" and 0 < free


def test_estimate_argument_errors():
    with pytest.raises(PreflightError, match=r"^width must be an integer >= 1; got 0$"):
        estimate(width=0)
    with pytest.raises(PreflightError, match=r"^batch_size must be an integer >= 1; got True$"):
        estimate(batch_size=True)
    with pytest.raises(PreflightError, match=r"^optimizer must be one of sgd, adam; got 'lbfgs'$"):
        estimate(optimizer="lbfgs")
    with pytest.raises(PreflightError, match=r"^precision must be fp32 or bf16"):
        estimate(precision="auto")
    with pytest.raises(PreflightError, match=r"^hrnet C=2 cannot run at 4x4: "):
        estimate(image_size=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to measure the real peak")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_estimate_is_within_a_factor_of_two_of_the_cuda_peak(precision):
    from hrsnet.runtime import autocast_context

    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    model = create_model("hrnet", width=18, num_classes=100).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    images = torch.randn(16, 3, 224, 224, device=device)
    labels = torch.randint(0, 100, (16,), device=device)
    for _ in range(2):  # the second step has the momentum buffers
        with autocast_context(precision, device):
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    peak = torch.cuda.max_memory_allocated(device) - before
    predicted = estimate_training_memory("hrnet", 18, 100, 224, 16, precision=precision)["total_bytes"]
    print(f"{precision}: estimate {predicted / 1e9:.2f} GB, measured peak {peak / 1e9:.2f} GB")
    assert 0.5 * peak <= predicted <= 2 * peak


# --- disk ---------------------------------------------------------------------------------


def test_checkpoint_bytes_is_about_what_torch_save_writes(tmp_path, one_thread):
    torch.manual_seed(0)
    model = create_model("hrnet", width=2, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)  # a step without the cost of a backward
    optimizer.step()  # creates the momentum buffers
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "last.pt")
    torch.save({"model": model.state_dict()}, tmp_path / "best_epoch001.pt")
    result = estimate()
    for name, predicted in (
        ("last.pt", checkpoint_bytes(result)),
        ("best_epoch001.pt", checkpoint_bytes(result, model_only=True)),
    ):
        written = (tmp_path / name).stat().st_size
        assert 0.97 * written <= predicted <= written, (name, predicted, written)
    # A resumed run already has its checkpoints on disk: it needs one new pair, not two.
    assert disk_bytes_needed(result) == 2 * (checkpoint_bytes(result) + checkpoint_bytes(result, model_only=True))
    assert disk_bytes_needed(result, tmp_path) == checkpoint_bytes(result) + checkpoint_bytes(result, model_only=True)


def test_check_disk_space(tmp_path):
    check_disk_space(tmp_path, 1)
    check_disk_space(tmp_path / "not" / "yet", 1)  # measured on the nearest existing parent
    result = estimate()
    with pytest.raises(PreflightError) as caught:
        check_disk_space(tmp_path / "runs", 10**18, result)
    message = str(caught.value)
    assert message.startswith(f"not enough space in {tmp_path / 'runs'}: ")
    assert " free, training needs about 1000 PB (last.pt about " in message
    assert f"last.pt about {preflight.format_bytes(checkpoint_bytes(result))}" in message
    assert message.endswith("; free space or choose another --results-dir") and "\n" not in message


def test_check_disk_space_on_a_tiny_disk(tiny_disk):
    needed = disk_bytes_needed(estimate())
    with pytest.raises(PreflightError, match=r"^not enough space in .*: 1\.0 MB free, training needs about "):
        check_disk_space(tiny_disk, needed)


# --- write errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, cause",
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
        (errno.EDQUOT, "disk quota exceeded"),
    ],
)
def test_describe_write_error_names_file_and_cause(tmp_path, code, cause):
    """Space is named (free, needed) only where it can be the cause: not for a read-only disk or a
    denied permission, where freeing space would not help."""
    path = tmp_path / "runs" / "x" / "last.pt"
    message = describe_write_error(path, OSError(code, os.strerror(code)), needed_bytes=40_000_000)
    about_space = code in (errno.ENOSPC, errno.EDQUOT)
    assert message.startswith(f"could not write {path}: {cause}{' (' if about_space else ';'}")
    assert ("a checkpoint needs about 40 MB" in message) == about_space and "\n" not in message
    assert message.endswith("--results-dir")


def test_describe_write_error_other_errors(tmp_path):
    path = tmp_path / "last.pt"
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    wrapped.__context__ = OSError(errno.ENOSPC, "No space left on device")
    assert ": no space left on device (" in describe_write_error(path, wrapped)
    plenty = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert "the write failed (RuntimeError: [enforce fail" in describe_write_error(path, plenty, needed_bytes=1)
    assert f"could not write {path}: ValueError: bad" in describe_write_error(path, ValueError("bad\nmore"))


def test_torch_save_on_a_full_disk_is_described_as_no_space(tiny_disk, one_thread):
    state = {"model": create_model("hrnet", width=2, num_classes=10).state_dict()}
    needed = checkpoint_bytes(estimate(), model_only=True)

    # Both ways torch.save fails: to a path (errno lost in C++) and through rundir's temp-file stream.
    def through_rundir(path):
        rundir.atomic_write(path, lambda stream: torch.save(state, stream), binary=True)

    for name, save in (("best_epoch001.pt", lambda path: torch.save(state, path)), ("last.pt", through_rundir)):
        path = tiny_disk / name
        with pytest.raises((RuntimeError, OSError)) as caught:
            save(path)
        message = describe_write_error(path, caught.value, needed)
        assert message.startswith(f"could not write {path}: no space left on device ("), message
        assert f"a checkpoint needs about {preflight.format_bytes(needed)}" in message
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("arch", ["hrnet_official", "hrnet", "hrsnet"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_small_steps_are_bounded_not_measured(arch, precision, monkeypatch):
    """The bound fit() uses for small steps is above what the largest small step really saves."""
    limits = preflight.SMALL_STEP
    measured = preflight.estimate_training_memory(
        arch, limits["width"], 100, limits["image_size"], limits["batch_size"], precision=precision
    )
    assert measured["activation_bytes"] <= preflight.SMALL_STEP_ACTIVATION_BYTES
    monkeypatch.setattr(preflight, "saved_activation_bytes", lambda *a, **k: pytest.fail("measured a small step"))
    bounded = preflight.estimate_training_memory(arch, 2, 10, 32, 16, precision=precision, bound_small_steps=True)
    assert bounded["activation_bytes"] == preflight.SMALL_STEP_ACTIVATION_BYTES
