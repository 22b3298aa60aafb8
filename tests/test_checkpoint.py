"""Checkpoints keep how a step is computed (the optimizer's kernel, as built) and resume the CUDA
random state of one device, also from checkpoints of earlier versions; CUDA itself is faked here."""

import copy

import pytest
import torch

from hrsnet.engine import checkpoint
from hrsnet.engine.checkpoint import cuda_rng_state, load_optimizer_state, restore_cuda_rng_state


def _parameters(device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(6, 5, generator=generator).to(device)) for _ in range(3)]


def _gradients(parameters, seed):
    generator = torch.Generator().manual_seed(seed)
    for param in parameters:
        param.grad = torch.randn(param.shape, generator=generator).to(param.device)


def _fused_sgd(parameters):
    try:
        return torch.optim.SGD(parameters, lr=0.1, momentum=0.9, fused=True)
    except RuntimeError as error:  # older torch: fused SGD on CUDA only
        pytest.skip(f"torch {torch.__version__} has no fused SGD on a CPU ({error})")


def test_fused_sgd_stays_fused_after_loading_a_foreach_checkpoint():
    """A checkpoint written by a foreach SGD (a CPU run) loaded into a fused one (a GPU run):
    the optimizer stays fused, and its next step is the for-loop reference's."""
    written = _parameters()
    saved_by = torch.optim.SGD(written, lr=0.1, momentum=0.9, foreach=True)
    _gradients(written, 1)
    saved_by.step()
    # Deep copies, as torch.load gives: a live state_dict's tensors are the optimizer's own, and
    # load_state_dict keeps tensors already of the right device and dtype (they would be shared).
    saved = copy.deepcopy(saved_by.state_dict())
    assert saved["param_groups"][0]["foreach"] is True and not saved["param_groups"][0]["fused"]

    fused_params = [torch.nn.Parameter(p.detach().clone()) for p in written]
    fused = _fused_sgd(fused_params)
    load_optimizer_state(fused, copy.deepcopy(saved))
    assert fused.param_groups[0]["fused"] is True and not fused.param_groups[0]["foreach"]

    reference_params = [torch.nn.Parameter(p.detach().clone()) for p in written]
    reference = torch.optim.SGD(reference_params, lr=0.1, momentum=0.9, foreach=False)
    load_optimizer_state(reference, copy.deepcopy(saved))
    assert reference.param_groups[0]["foreach"] is False
    _gradients(fused_params, 2)
    _gradients(reference_params, 2)
    fused.step()
    reference.step()
    for p, q in zip(fused_params, reference_params):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_capturable_adam_stays_capturable_after_loading_a_plain_state():
    """A non-capturable Adam's state (step counters on the CPU) loaded into a capturable Adam: the
    param groups stay capturable and each step counter moves to its parameter's device. The
    parameters are on the meta device, which stands in for a GPU: capturable Adam steps only on
    CUDA, but where its state lives is decided at loading."""
    written = _parameters()
    plain = torch.optim.Adam(written, lr=0.01)
    _gradients(written, 1)
    plain.step()
    saved = plain.state_dict()
    assert saved["param_groups"][0]["capturable"] is False
    assert all(state["step"].device.type == "cpu" for state in saved["state"].values())

    on_device = [torch.nn.Parameter(torch.empty(6, 5, device="meta")) for _ in written]
    capturable = torch.optim.Adam(on_device, lr=0.01, capturable=True)
    load_optimizer_state(capturable, saved)
    assert capturable.param_groups[0]["capturable"] is True
    for param in on_device:
        state = capturable.state[param]
        assert state["step"].device == param.device, "a capturable step counter lives with its parameter"
        assert state["exp_avg"].device == param.device and state["exp_avg"].shape == param.shape


class FakeCuda:
    """torch.cuda's random-state functions on a machine with ``count`` GPUs: each device's state
    is a tensor holding its index; restores are recorded."""

    def __init__(self, monkeypatch, count: int, current: int = 0):
        self.count, self.current, self.restored = count, current, []
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get_rng_state)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [self.get_rng_state(i) for i in range(count)])
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    def _index(self, device) -> int:
        device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        index = self.current if device.index is None else device.index
        if index >= self.count:  # what torch.cuda does on a machine with fewer GPUs
            raise IndexError(f"CUDA device {index} of {self.count}")
        return index

    def get_rng_state(self, device="cuda"):
        return torch.tensor([self._index(device)], dtype=torch.uint8)

    def set_rng_state(self, state, device="cuda"):
        self.restored.append((int(state[0]), self._index(device)))


def test_a_checkpoint_saves_one_devices_cuda_random_state(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=8)
    assert [int(s[0]) for s in cuda_rng_state(torch.device("cuda", 5))] == [5]
    assert [int(s[0]) for s in cuda_rng_state(torch.device("cuda"))] == [0]  # the current device
    assert cuda_rng_state(torch.device("cpu")) == []
    assert cuda.restored == []


def test_an_old_checkpoint_of_8_gpus_resumes_on_a_machine_with_one(monkeypatch):
    """Earlier versions saved every visible GPU's state (8 here): resumed on cuda:0 of a one-GPU
    machine it restores the first state (before: device 1..7 of 8 raised IndexError)."""
    old_states = [torch.tensor([index], dtype=torch.uint8) for index in range(8)]
    cuda = FakeCuda(monkeypatch, count=1)
    restore_cuda_rng_state(old_states, torch.device("cuda", 0))
    restore_cuda_rng_state(old_states, torch.device("cuda"))
    assert cuda.restored == [(0, 0), (0, 0)]
    with pytest.raises(IndexError):  # what restoring the whole list there would do
        torch.cuda.set_rng_state(old_states[1], 1)


def test_a_run_resumes_its_own_devices_state(monkeypatch):
    old_states = [torch.tensor([index], dtype=torch.uint8) for index in range(8)]
    cuda = FakeCuda(monkeypatch, count=8)
    restore_cuda_rng_state(old_states, torch.device("cuda", 3))  # an old checkpoint: its own index
    new_state = cuda_rng_state(torch.device("cuda", 6))  # the new format: one state
    restore_cuda_rng_state(new_state, torch.device("cuda", 2))  # resumed on another GPU
    restore_cuda_rng_state([], torch.device("cuda", 2))  # a checkpoint of a CPU run: nothing to restore
    restore_cuda_rng_state(old_states, torch.device("cpu"))
    assert cuda.restored == [(3, 3), (6, 2)]


def test_kernel_options_are_the_ones_a_checkpoint_must_not_replace():
    assert {"fused", "foreach", "capturable"} <= set(checkpoint.KERNEL_OPTIONS)
