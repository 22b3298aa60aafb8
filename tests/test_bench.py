"""The fast paths compute what the plain path computes; the benchmark command runs on a CPU.

No timing is asserted here: speed is measured by `python -m hrsnet bench`, not by tests.
"""

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import SMALL_NETWORK, tiny_config, train_on

from hrsnet.__main__ import main
from hrsnet.data import load_dataset
from hrsnet.engine.checkpoint import load_optimizer_state
from hrsnet.engine.trainer import Trainer
from hrsnet.tools import bench, estimate


def _trainer(tmp_path, **switches):
    config = tiny_config(tmp_path, train_subset=64, **switches)
    return Trainer(config, load_dataset(config.dataset, seed=config.seed, train_subset=64), torch.device("cpu"))


def _flat(model):
    return torch.cat([p.detach().flatten().double() for p in model.parameters()])


def _compare_steps(tmp_path, fast_switches, loss_tolerance, min_cosine=None, steps=3, norm_tolerance=None):
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
        # A deep copy, as torch.load gives: load_state_dict keeps a tensor already of the right
        # device and dtype, so a live state_dict's momentum buffers would be shared with plain's.
        load_optimizer_state(fast.optimizer, copy.deepcopy(plain.optimizer.state_dict()))
        before = _flat(plain.model)
        batch = slice(16 * step, 16 * (step + 1))
        plain_loss = train_on(plain, images[batch], labels[batch])
        fast_loss = train_on(fast, images[batch], labels[batch])
        assert abs(fast_loss.item() - plain_loss.item()) <= loss_tolerance * plain_loss.item(), step
        if min_cosine is None:
            continue
        plain_update, fast_update = _flat(plain.model) - before, _flat(fast.model) - before
        cosine = torch.nn.functional.cosine_similarity(plain_update, fast_update, dim=0).item()
        assert cosine >= min_cosine, (step, cosine)
        norm_limit = norm_tolerance if norm_tolerance is not None else 1 - min_cosine + 0.01
        assert abs(fast_update.norm() / plain_update.norm() - 1) <= norm_limit, step


def test_fast_fp32_switches_compute_the_same_steps(tmp_path):
    """channels_last and the fused SGD (load_optimizer_state keeps it fused) against the plain
    for-loop path: float32 rounding, amplified by the network, is all that differs.

    Measured (3 steps, seeds 0 and 1, torch 2.14 on an "Intel(R) Xeon(R) Processor" with
    AVX-512/AMX, 1 and 2 threads): loss at most 1.6e-5 apart relative (1 thread, as in a
    pytest-xdist worker; 7e-6 with 2), update cosine at least 0.9957, norms at most 2.6% apart.
    Limits: loss 1e-4, cosine 0.98, norms 5%. A misread momentum buffer or a wrong memory layout
    moves a step far more (test_optimizer_state_takes_the_parameters_layout)."""
    _compare_steps(
        tmp_path,
        dict(channels_last="on", fused_optimizer="on", precision="fp32"),
        1e-4,
        0.98,
        norm_tolerance=0.05,
    )


def test_bf16_autocast_computes_nearly_the_same_losses(tmp_path):
    """bf16 keeps 8 mantissa bits: the same loss to 4% at every step (measured over 4 steps: at
    most 2.5% for hrnet, whose deep pre-activation stack amplifies rounding, 1.3% for hrnet_official).

    Its updates are not compared: at initialisation the stem's gradient (the largest, |g| ~ 300)
    is dominated by the exploding-gradient amplification of rounding, and under bf16 its
    direction is close to noise (cosine with float64 ~0.03 for hrnet_official = timm's
    hrnet_w18, ~0.3 for hrnet). Whether bf16 training ends in the same place is an outcome
    question, measured on real runs, not here.
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
    assert [v.name for v in cuda][-3:] == [
        "+ whole-step CUDA graph",
        "+ torch.compile",
        "+ torch.compile reduce-overhead",
    ]
    assert cuda[-3].graphs and cuda[-3].compile == "none" and not cuda[-1].graphs
    assert all(v.precision == "bf16" and v.optimizer_kernel == "fused" for v in cuda[-3:])


def test_peak_table():
    assert bench.peak_tflops(torch.device("cpu"), None) is None
    assert bench.peak_tflops(torch.device("cpu"), 12.5) == 12.5


def test_train_flops_count_forward_and_backward():
    """Forward + backward: about three forwards. Small sizes are counted on the CPU, large ones on
    the meta device: the same number (it depends on shapes alone), checked here at one size, on
    the small network (every kind of layer, a fraction of the meta device's seconds)."""
    training = bench.train_flops_per_image("hrnet", 2, 64, **SMALL_NETWORK)
    from hrsnet.models import summary

    forward = summary("hrnet", 2, 64, **SMALL_NETWORK).forward_flops
    assert 2.5 * forward < training < 3.5 * forward  # backward costs about twice the forward
    assert bench.train_flops_per_image("hrnet", 2, 64, device="meta", **SMALL_NETWORK) == training
    with pytest.raises(ValueError, match="cpu or meta"):
        bench.train_flops_per_image("hrnet", 2, 64, device="cuda")


def test_bench_command_on_cpu(tmp_path, capsys):
    """Every part at once (the default): grid, timm's peer, the ablation, preprocessing. FLOPs are
    left out (--no-flops): counted through the command in the GPU script's dry run
    (tests/test_gpu_session.py), and train_flops_per_image above."""
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
            "--no-flops",
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
    assert all(math.isnan(float(row["train_gflops_per_image"])) for row in rows)  # --no-flops
    ablation = [row["variant"] for row in rows if row["group"] == "ablation"]
    assert ablation == [v.name for v in bench.ablation_variants(torch.device("cpu"), include_compile=False)]


def test_estimate_command(capsys):
    """No history or bench CSV: each network of the profile is measured here (one step each)."""
    assert main(["bench", "--estimate", "smoke", "--steps", "1", "--warmup", "0", "--quiet"]) == 0
    assert "profile smoke: 4 runs, at most" in capsys.readouterr().out


# One timed step per row, no warm-up, no FLOP count: these tests are about which rows are written.
TINY_BENCH = ["--width", "1", "--settings", "tiny:32:4", "--warmup", "0", "--steps", "1", "--repeats", "1"]
TINY_BENCH += ["--no-flops"]


def _rows(path):
    with open(path) as stream:
        return list(csv.DictReader(stream))


def test_bench_only_and_resume(tmp_path, capsys):
    """--only picks parts and grid cells; without --resume the file starts over; with --resume a
    row the CSV has is kept as it was and not measured again. (test_bench_rows_survive_a_kill:
    --resume measures the rows the CSV lacks; test_bench_command_on_cpu: every part.)"""
    assert bench.parse_only(["grid", "ablation"], ("hrnet",)) == ({"grid", "ablation"}, set())
    assert bench.parse_only(["peer", "hrnet:1"], ("hrnet",)) == ({"peer", "grid"}, {("hrnet", 1)})
    with pytest.raises(ValueError, match="grid cell NETWORK:C"):
        bench.parse_only(["hrnet:x"], ("hrnet",))
    output = tmp_path / "bench.csv"
    earlier = {column: "1" for column in bench.BENCH_COLUMNS}
    earlier.update(group="ablation", model="hrnet_official", width="18", setting="tiny", variant="plain fp32 eager")
    bench.BenchWriter(output, resume=False).append([earlier])  # a row of an earlier run
    # Without --resume the file starts over; the cell alone is measured (no peer, ablation or preprocessing).
    args = ["bench", "--arch", "hrnet", *TINY_BENCH, "--output", str(output)]
    assert main([*args, "--only", "hrnet:1"]) == 0
    first = _rows(output)
    assert [(row["group"], row["model"], row["width"]) for row in first] == [("grid", "hrnet", "1")]
    assert list(first[0]) == bench.BENCH_COLUMNS and first[0]["compile_seconds"] == "nan"  # eager: no compile
    assert "preprocess" not in capsys.readouterr().out
    # --resume with every asked-for row present: the rows stay as they were, nothing is measured.
    bench.BenchWriter(output, resume=True).append([earlier])
    assert main([*args, "--only", "grid", "--resume", "--quiet"]) == 0
    assert _rows(output) == [first[0], earlier]
    assert "written:" in capsys.readouterr().out


def test_bench_rows_survive_a_kill(tmp_path):
    """Rows are appended as measured: SIGKILL after the first row keeps it (and nothing half
    written); --resume then measures only the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    output = tmp_path / "bench.csv"
    command = [sys.executable, "-m", "hrsnet", "bench", "--device", "cpu", "--arch", "hrnet", "--arch", "hrsnet"]
    command += [*TINY_BENCH, "--only", "grid", "--output", str(output), "--quiet"]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if output.exists() and len(_rows(output)) >= 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = _rows(output)
    assert len(kept) == 1 and kept[0]["model"] == "hrnet", "killed after the first row"
    assert main([*command[3:], "--resume"]) == 0
    rows = _rows(output)
    assert rows[0] == kept[0] and [row["model"] for row in rows] == ["hrnet", "hrsnet"]


def test_bench_csv_drops_a_line_cut_short(tmp_path):
    path = tmp_path / "bench.csv"
    row = {column: "1" for column in bench.BENCH_COLUMNS}
    writer = bench.BenchWriter(path, resume=False)
    writer.append([row])
    with open(path, "a") as stream:
        stream.write("cpu,cpu,2.4,grid,hr")  # a kill in the middle of a line
    assert len(bench.read_bench_csv(path)) == 1
    resumed = bench.BenchWriter(path, resume=True)
    assert len(resumed.done) == 1 and path.read_text().count("\n") == 2  # header + the complete row


def _history_run(
    root, arch, width, train_size, val_size, rows, run_id=None, image_size=224, batch_size=16, test_size=0, **resolved
):
    """A run directory with config.json and history.csv, as fit() writes them."""
    import json

    run_dir = root / (run_id or f"{arch}_c{width}")
    run_dir.mkdir(parents=True)
    config = {
        "run_id": run_dir.name,
        "train": {"arch": arch, "width": width, "image_size": image_size, "batch_size": batch_size},
        "dataset": {"train_size": train_size, "val_size": val_size, "test_size": test_size},
        "resolved": {"cuda_graphs": False, "packed_seeds": 1, **resolved},
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    columns = sorted({key for row in rows for key in row})
    lines = [",".join(columns)] + [",".join(str(row.get(key, "")) for key in columns) for row in rows]
    (run_dir / "history.csv").write_text("\n".join(lines) + "\n")
    return run_dir


def _epochs(first, later, count=2, **columns):
    """History rows: epoch 1 takes ``first`` seconds (warm-up), later epochs ``later``."""
    return [
        {"epoch": epoch, "epoch_seconds": first if epoch == 1 else later, "images_per_second": 1.0, **columns}
        for epoch in range(1, count + 1)
    ]


def _bench_csv(path, rows):
    """A bench CSV of hand-made rows: (model, width, image_size, batch_size, variant, step_ms, inference/s)."""
    complete = []
    for model, width, image_size, batch_size, variant, step_ms, inference in rows:
        row = {column: "nan" for column in bench.BENCH_COLUMNS}
        row.update(
            device="x", device_name="x", torch="2", group="grid", model=model, arch=model, width=width,
            setting="s", image_size=image_size, batch_size=batch_size, variant=variant, precision="fp32",
            channels_last=False, compile="none", graphs=False, optimizer_kernel="foreach",
            train_step_ms=step_ms, inference_images_per_second=inference,
        )  # fmt: skip
        complete.append(row)
    bench.BenchWriter(path, resume=False).append(complete)
    return path


def test_estimate_from_histories_has_a_known_answer(tmp_path):
    """hrnet C=2 trained on a quarter of the images at the paper's 224px, batch 16: epoch 1 took
    130 s (warm-up), epoch 2 100 s, so 400 s at full size and 30 s of warm-up once; validated on
    half (5,000 images) in 10 s: 20 s at full size, and the test pass twice 10,000 images at that
    rate, 40 s; checkpoint 5 s. Its wall time leaves 35 s of overhead. Released: hrnet C=2 went 35
    epochs; the paper cap is 25."""
    rows = _epochs(130.0, 100.0, val_seconds=10.0, checkpoint_seconds=5.0)
    _history_run(tmp_path / "runs", "hrnet", 2, 10_000, 5_000, rows, test_size=0)
    wall = tmp_path / "wall.csv"
    wall.write_text("run_id,wall_seconds\nhrnet_c2,295\n")  # 130 + 100 + 2 x (10 + 5) + 35
    rows = estimate.estimate_profile("paper", histories=[tmp_path / "runs"], wall_csv=wall, quiet=True)
    assert len(rows) == 36  # 4 networks x 3 widths x 3 seeds: every run gets a row
    by_cell = {(row["arch"], row["width"]): row for row in rows}
    row = by_cell[("hrnet", 2)]
    epoch = 400 + 20 + 5
    once = 40 + 30 + 35  # test pass, epoch 1's warm-up, start-up
    assert row["epochs_released"] == 35 and row["epochs_released_source"] == "released"
    assert row["epoch_minutes"] == pytest.approx(epoch / 60)
    assert row["minutes_released"] == pytest.approx((35 * epoch + once) / 60)
    assert row["run_minutes"] == pytest.approx((25 * epoch + once) / 60) and row["validation_counted"]
    assert "real loop, eager, at 224px batch 16 (epoch 2)" in row["source"]
    missing = by_cell[("hrsnet", 18)]
    assert math.isnan(missing["run_minutes"]) and missing["source"].startswith("not estimated: no measurement at 224px")

    totals = estimate.estimate_totals(rows, jobs=3, speedup=2.0)
    assert totals["runs_measured"] == 3 and not totals["complete"]
    sequential = 3 * (25 * epoch + once) / 60
    assert totals["sequential_run_minutes"] == pytest.approx(sequential)
    assert totals["concurrent_run_minutes"] == pytest.approx(max(sequential / 2.0, (25 * epoch + once) / 60 * 3 / 2))
    text = "\n".join(estimate.describe_totals("paper", rows, totals))
    assert "at most" not in text and "3 estimated" in text and "33 not estimated, so no total" in text
    assert "hrsnet_skip C=30: no measurement at 224px" in text
    with pytest.raises(ValueError, match="speedup"):
        estimate.estimate_totals(rows, jobs=2, speedup=0)


def test_estimate_packed_seeds_share_the_training_time(tmp_path):
    """Three seeds packed: each run counts a third of the pack's training time (its validation
    and checkpoints are its own); the cheapest loop setting of a network x C is used."""
    for seed in range(3):
        _history_run(tmp_path, "hrnet", 2, 40_000, 10_000, _epochs(90, 60), f"p{seed}", packed_seeds=3)
    _history_run(tmp_path, "hrnet", 2, 40_000, 10_000, _epochs(40, 30), "eager")
    costs = estimate.epoch_costs_from_histories([tmp_path], 40_000, 10_000)
    assert costs[("hrnet", 2)].train_seconds == pytest.approx(20.0)
    assert costs[("hrnet", 2)].overhead_seconds == pytest.approx(10.0)  # epoch 1's extra 30 s, a third
    assert "3 packed seeds" in costs[("hrnet", 2)].source and "3 runs, median" in costs[("hrnet", 2)].source


def test_estimate_scales_by_the_measured_cost_at_the_target_size(tmp_path):
    """A history at 32px is scaled by the bench's cost per image at 224px over 32px (not by
    image counts only); another network with no history, by its bench step time over the
    measured network's at 224px; one without any 224px row is not estimated."""
    _history_run(tmp_path / "runs", "hrnet", 2, 40_000, 10_000, _epochs(12, 10), image_size=32)
    csv_path = _bench_csv(
        tmp_path / "bench.csv",
        [
            ("hrnet", 2, 32, 16, "default", 20.0, 1000.0),
            ("hrnet", 2, 224, 16, "default", 400.0, 50.0),  # 20x the cost per image
            ("hrsnet", 2, 224, 16, "default", 600.0, 40.0),
            ("hrnet_official", 2, 224, 16, "plain fp32 eager", 900.0, 30.0),
        ],
    )
    rows = estimate.estimate_profile("paper", histories=[tmp_path / "runs"], bench_csv=csv_path, quiet=True)
    by_cell = {(row["arch"], row["width"]): row for row in rows}
    hrnet = by_cell[("hrnet", 2)]
    assert hrnet["epoch_minutes"] == pytest.approx(10 * 20 / 60)
    assert "x bench cost per image ratio 20 (224px batch 16 / 32px batch 16)" in hrnet["source"]
    # hrsnet C=2: no real loop at 224px anywhere, so its own bench row (steps x step time).
    hrsnet = by_cell[("hrsnet", 2)]
    assert hrsnet["epoch_minutes"] == pytest.approx((2500 * 0.6 + 10_000 / 40) / 60)
    assert hrsnet["source"].startswith("bench CSV bench.csv: grid default at 224px batch 16")
    assert by_cell[("hrnet_official", 2)]["source"].startswith("bench CSV")  # any variant, when alone
    assert by_cell[("hrnet", 18)]["source"].startswith("not estimated")

    # With a real loop at 224px for hrnet C=2, hrsnet C=2 is scaled from it by the step ratio 1.5.
    _history_run(tmp_path / "runs", "hrnet", 2, 40_000, 10_000, _epochs(220, 200), "at224")
    rows = estimate.estimate_profile("paper", histories=[tmp_path / "runs"], bench_csv=csv_path, quiet=True)
    hrsnet = next(row for row in rows if (row["arch"], row["width"]) == ("hrsnet", 2))
    assert hrsnet["epoch_minutes"] == pytest.approx(200 * 1.5 / 60)
    assert "of hrnet C=2 x bench step ratio 1.5 (default)" in hrsnet["source"]


def test_estimate_command_says_when_it_cannot(tmp_path, capsys):
    """Histories at 32px and no bench row at the profile's 224px: no estimate, one line saying
    why and what to give; no 'at most' for runs that were left out."""
    _history_run(tmp_path / "runs", "hrnet", 2, 288, 144, _epochs(2, 1), image_size=32)
    assert main(["bench", "--estimate", "paper", "--histories", str(tmp_path / "runs"), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "at most" not in captured.out
    assert captured.err.startswith("error: no run of profile paper could be estimated")
    assert "its real loop ran at 32px batch 16" in captured.err


COMMITTED_BENCH = sorted((Path(__file__).resolve().parents[1] / "reference" / "bench").glob("*.csv"))


@pytest.mark.parametrize("path", COMMITTED_BENCH, ids=[path.name for path in COMMITTED_BENCH])
def test_committed_bench_csvs_are_read(path):
    """The CSVs under reference/bench/ were written before the graphs and compile_seconds columns:
    they are read, with those filled as their rows meant them."""
    rows = bench.read_bench_csv(path)
    assert rows and all(list(row) == bench.BENCH_COLUMNS for row in rows)
    assert {row["graphs"] for row in rows} == {"False"} and all(float(row["train_step_ms"]) > 0 for row in rows)


def test_estimate_from_the_committed_paper_setting_csv(capsys):
    """Its 224px batch-16 row of hrnet_official C=18 estimates those 3 runs; the other 33 are
    named as not estimated, and no total is claimed for the profile."""
    path = next(path for path in COMMITTED_BENCH if path.name == "cpu-2threads-paper-setting.csv")
    assert main(["bench", "--estimate", "paper", "--bench-csv", str(path), "--quiet"]) == 0
    output = capsys.readouterr().out
    assert "36 runs; 3 estimated" in output and "33 not estimated, so no total for the profile" in output
    assert "at most" not in output and "rerun without --resume" not in output


def test_unknown_bench_columns_are_named(tmp_path):
    path = tmp_path / "bench.csv"
    path.write_text("device,speed\nx,1\n")
    with pytest.raises(ValueError, match=r"columns: missing device_name, .*; unknown speed\); regenerate it") as error:
        bench.read_bench_csv(path)
    assert "--resume" not in str(error.value)


def test_ablation_variants_are_measured_in_chunks():
    """The eager steps side by side, each compiling or capturing variant alone (written at once)."""
    chunks = bench.ablation_chunks(bench.ablation_variants(torch.device("cuda"), include_compile=True))
    assert [len(chunk) for chunk in chunks] == [4, 1, 1, 1]
    assert all(not v.graphs and v.compile == "none" for v in chunks[0])


def test_loop_comparison_times_epoch_2(tmp_path):
    """loop.csv: epoch 2's images/s (epoch 1 holds the warm-up, shown apart), summed over packed seeds."""
    _history_run(tmp_path / "eager", "hrnet_official", 18, 1600, 160, [
        {"epoch": 1, "epoch_seconds": 30.0, "images_per_second": 53.3},
        {"epoch": 2, "epoch_seconds": 20.0, "images_per_second": 80.0},
    ])  # fmt: skip
    for seed in range(3):
        _history_run(tmp_path / "packed", "hrnet_official", 18, 1600, 160, [
            {"epoch": 1, "epoch_seconds": 40.0, "images_per_second": 40.0},
            {"epoch": 2, "epoch_seconds": 32.0, "images_per_second": 50.0},
        ], f"s{seed}", packed_seeds=3)  # fmt: skip
    rows = estimate.write_loop_comparison(tmp_path, ["eager", "packed"])
    eager, packed = rows
    assert (eager["timed_epochs"], eager["images_per_second"], eager["first_epoch_seconds"]) == ("2", 80.0, 30.0)
    assert packed["images_per_second"] == pytest.approx(150.0) and packed["speedup"] == pytest.approx(150 / 80)
    assert packed["packed_seeds"] == 3 and packed["runs"] == 3
    with open(tmp_path / "loop.csv") as stream:
        assert next(csv.reader(stream)) == estimate.LOOP_COLUMNS


def test_concurrency_speedup(tmp_path):
    _history_run(tmp_path / "single", "hrnet", 18, 8000, 1000, [{"epoch": 1, "images_per_second": 100.0}])
    for seed, rate in enumerate((60.0, 70.0, 80.0)):
        _history_run(
            tmp_path / "together", "hrnet", 18, 8000, 1000, [{"epoch": 1, "images_per_second": rate}], f"s{seed}"
        )
    assert estimate.concurrency_speedup(tmp_path / "single", tmp_path / "together") == pytest.approx(2.1)


def test_targets_read_the_files_that_came_back(tmp_path):
    """bench --targets: each target's number from the files, its verdict, and what loop.csv says
    about GRAPHS_WIN_MEASURED; a missing file or row is 'not measured', never a pass."""
    from hrsnet.tools import targets

    rows = []
    for setting, batch, rates in (
        ("paper", 16, {"default": 300.0, "default + whole-step CUDA graph": 700.0, "plain fp32 eager": 200.0}),
        ("throughput", 128, {"default": 900.0, "plain fp32 eager": 500.0}),
    ):
        timm_rate = {"paper": 400.0, "throughput": 500.0}[setting]
        for variant, rate in [*rates.items(), ("timm AMP bf16 + channels_last", timm_rate)]:
            row = {column: "nan" for column in bench.BENCH_COLUMNS}
            model = bench.TIMM_PEER if variant.startswith("timm") else "hrnet_official"
            row.update(group="peer", model=model, width="18", setting=setting, variant=variant, batch_size=batch)
            row["train_images_per_second"] = rate
            rows.append(row)
    grid = {column: "nan" for column in bench.BENCH_COLUMNS}
    grid.update(group="grid", model="hrnet_official", width="30", setting="throughput", variant="default")
    grid.update(batch_size=128, flop_utilisation=0.2, achieved_tflops=158.0, peak_tflops=790)
    bench.BenchWriter(tmp_path / targets.FILES["bench"], resume=False).append([*rows, grid])
    (tmp_path / targets.FILES["loop"]).write_text(
        "setting,images_per_second,speedup,timed_epochs,first_epoch_seconds\n"
        "eager,100,1,2,9\ngraphs,125,1.25,2,12\npacked,150,1.5,2,10\n"
    )
    (tmp_path / targets.FILES["estimate"]).write_text("run_minutes,minutes_released\n20,10\nnan,nan\n")
    found = {row["what"]: row for row in targets.read_targets(tmp_path)}
    by_name = {row["target"]: row for row in found.values()}
    assert (
        by_name["batch16_vs_plain"]["measured"] == pytest.approx(3.5)
        and by_name["batch16_vs_plain"]["verdict"] == "met"
    )
    assert by_name["batch16_vs_timm"]["measured"] == pytest.approx(1.75)
    assert by_name["batch16_vs_timm"]["verdict"] == "missed"
    assert by_name["batch128_vs_timm"]["measured"] == pytest.approx(1.8)
    assert (
        by_name["c30_flop_utilisation"]["verdict"] == "met"
        and "hrnet_official C=30" in by_name["c30_flop_utilisation"]["what"]
    )
    assert by_name["paper_profile_minutes"]["verdict"] == "not measured"  # one run not estimated
    assert "1 of 2 runs estimated" in by_name["paper_profile_minutes"]["detail"]
    assert targets.graphs_decision(tmp_path).startswith("GRAPHS_WIN_MEASURED = True: graphs run 1.25x eager")
    text = targets.format_targets(tmp_path)
    assert "| batch 16: our fastest path / our plain fp32 path | 3.5 | >= 3 | met |" in text
    assert "CUDA tests: pytest_cuda.txt missing" in text and "gpucheck.csv: missing or empty" in text

    empty = tmp_path / "empty"
    empty.mkdir()
    assert {row["verdict"] for row in targets.read_targets(empty)} == {"not measured"}
    assert "undecided" in targets.graphs_decision(empty)
