"""The fast paths compute what the plain path computes; the benchmark command runs on a CPU.

No timing is asserted here: speed is measured by `python -m hrsnet bench`, not by tests.
"""

import csv

import pytest
import torch
from conftest import tiny_config

from hrsnet import bench
from hrsnet.__main__ import main
from hrsnet.data import load_dataset
from hrsnet.train import Trainer, load_optimizer_state


def _trainer(tmp_path, **switches):
    config = tiny_config(tmp_path, train_subset=64, **switches)
    return Trainer(config, load_dataset(config.dataset, seed=config.seed, train_subset=64), torch.device("cpu"))


def _flat(model):
    return torch.cat([p.detach().flatten().double() for p in model.parameters()])


def _compare_steps(tmp_path, fast_switches, loss_tolerance, min_cosine=None, steps=3):
    """Run the plain path for a few steps; at each step, put the fast path at the same weights
    and optimizer state, take the same batch, and compare its loss and its parameter update.

    Why step by step: HRNet (as timm's) is a deep BatchNorm network whose gradients explode at
    initialisation (Yang et al. 2019): float32 itself drifts from float64 by ~5% in the loss
    within 4 steps, so two free-running trajectories cannot be compared tightly. From the same
    weights, each step is a well-defined function of its inputs.
    """
    plain = _trainer(tmp_path, channels_last="off", fused_optimizer="off", precision="fp32")
    fast = _trainer(tmp_path / "fast", **fast_switches)
    images, labels = plain.data.train.images, plain.data.train.labels
    for step in range(steps):
        fast.model.load_state_dict(plain.model.state_dict())
        load_optimizer_state(fast.optimizer, plain.optimizer.state_dict())
        before = _flat(plain.model)
        batch = slice(16 * step, 16 * (step + 1))
        plain_loss, _ = plain.train_step(images[batch], labels[batch])
        fast_loss, _ = fast.train_step(images[batch], labels[batch])
        assert abs(fast_loss.item() - plain_loss.item()) <= loss_tolerance * plain_loss.item(), step
        if min_cosine is None:
            continue
        plain_update, fast_update = _flat(plain.model) - before, _flat(fast.model) - before
        cosine = torch.nn.functional.cosine_similarity(plain_update, fast_update, dim=0).item()
        assert cosine >= min_cosine, (step, cosine)
        assert abs(fast_update.norm() / plain_update.norm() - 1) <= 1 - min_cosine + 0.01, step


def test_fast_fp32_switches_compute_the_same_steps(tmp_path):
    """channels_last and the fused optimizer: same loss to 1e-5 (measured ~5e-7), updates
    with cosine >= 0.999 (float32 rounding, amplified by the network, measured ~0.9998)."""
    _compare_steps(tmp_path, dict(channels_last="on", fused_optimizer="on", precision="fp32"), 1e-5, 0.999)


def test_bf16_autocast_computes_nearly_the_same_losses(tmp_path):
    """bf16 keeps 8 mantissa bits: the same loss to 4% at every step (measured over 4 steps: at
    most 2.5% for hrnet, whose deep pre-activation stack amplifies rounding, 1.3% for hrnet_official).

    Its updates are not compared: at initialisation the stem's gradient (the largest, |g| ~ 300)
    is dominated by the exploding-gradient amplification of rounding, and under bf16 its
    direction is close to noise (cosine with float64 ~0.03 for hrnet_official = timm's
    hrnet_w18, ~0.3 for hrnet). Whether bf16 training ends in the same place is an outcome
    question, measured on real runs (see the performance issue's note), not here.
    """
    _compare_steps(tmp_path, dict(channels_last="on", fused_optimizer="on", precision="bf16"), 0.04)


def test_fused_optimizer_step_matches_the_for_loop(tmp_path):
    """Given the same gradients, the fused SGD update equals the for-loop one to float32 rounding."""
    parameters = [torch.nn.Parameter(torch.randn(50, 40, generator=torch.Generator().manual_seed(i))) for i in range(3)]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in parameters]
    loop = torch.optim.SGD(parameters, lr=0.005, momentum=0.9, foreach=False)
    fused = torch.optim.SGD(copies, lr=0.005, momentum=0.9, fused=True)
    for step in range(3):
        for p, q in zip(parameters, copies):
            gradient = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 + step))
            p.grad, q.grad = gradient.clone(), gradient.clone()
        loop.step()
        fused.step()
    for p, q in zip(parameters, copies):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_optimizer_state_takes_the_parameters_layout():
    """A contiguous momentum buffer loaded for a channels_last parameter: the fused update must
    equal the plain one. Without load_optimizer_state's fix, fused SGD updates the wrong elements."""
    weight, gradient, buffer = (torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(i)) for i in range(3))

    def step(memory_format, kernel):
        param = torch.nn.Parameter(weight.clone().contiguous(memory_format=memory_format))
        optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9, **kernel)
        saved = optimizer.state_dict()
        saved["state"] = {0: {"momentum_buffer": buffer.clone()}}  # as saved from a contiguous run
        load_optimizer_state(optimizer, saved)
        param.grad = gradient.clone().contiguous(memory_format=memory_format)
        optimizer.step()
        return param.detach()

    expected = step(torch.contiguous_format, {"foreach": False})
    torch.testing.assert_close(step(torch.channels_last, {"fused": True}), expected)
    torch.testing.assert_close(step(torch.channels_last, {"foreach": True}), expected)


def test_settings_and_variants():
    assert bench.parse_setting("paper") == bench.Setting("paper", 224, 16)
    assert bench.parse_setting("tiny:32:4") == bench.Setting("tiny", 32, 4)
    with pytest.raises(ValueError, match="NAME:IMAGE_SIZE:BATCH_SIZE"):
        bench.parse_setting("huge")
    cpu = bench.ablation_variants(torch.device("cpu"), include_compile=False)
    assert cpu[0] == bench.Variant("plain fp32 eager") and cpu[-1].channels_last
    cuda = bench.ablation_variants(torch.device("cuda"), include_compile=True)
    assert [v.name for v in cuda][-2:] == ["+ torch.compile", "+ CUDA graphs"] and cuda[-1].precision == "bf16"


def test_peak_table():
    assert bench.peak_tflops(torch.device("cpu"), None) is None
    assert bench.peak_tflops(torch.device("cpu"), 12.5) == 12.5


def test_train_flops_count_forward_and_backward():
    forward_only = bench.train_flops_per_image("hrnet", 2, 64)
    from hrsnet.models import summary

    forward = summary("hrnet", 2, 64).forward_flops
    assert 2.5 * forward < forward_only < 3.5 * forward  # backward costs about twice the forward


def test_bench_command_on_cpu(tmp_path, capsys):
    code = main(
        [
            "bench",
            "--arch",
            "hrnet",
            "--width",
            "1",
            "--settings",
            "tiny:32:4",
            "--warmup",
            "1",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--results-dir",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0
    output = capsys.readouterr().out
    assert "vs_timm_train_tiny" in output and "preprocess_speedup" in output
    path = next((tmp_path / "bench").glob("cpu-*.csv"))
    with open(path) as stream:
        rows = list(csv.DictReader(stream))
    groups = {row["group"] for row in rows}
    assert groups == {"grid", "peer", "ablation"}
    assert {row["model"] for row in rows} >= {"hrnet", "timm:hrnet_w18", "hrnet_official"}
    assert all(float(row["train_images_per_second"]) > 0 for row in rows)


def test_estimate_command(capsys):
    assert main(["bench", "--estimate", "smoke", "--steps", "1", "--warmup", "1", "--quiet"]) == 0
    assert "profile smoke: at most" in capsys.readouterr().out
