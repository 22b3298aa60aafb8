"""Whole-step CUDA graphs (hrsnet.cudagraphs): what runs on a CPU is tested here; the capture
itself needs a GPU (`python -m hrsnet gpucheck` checks it there against eager steps)."""

import functools

import pytest
import torch

from hrsnet import cudagraphs
from hrsnet.bench import build_model
from hrsnet.data import preprocess
from hrsnet.train import training_step

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA GPU; torch sees none here")


def _model_and_data(seed=0):
    torch.manual_seed(seed)
    model = build_model("hrnet", 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, foreach=True)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 100, (32,), generator=generator)
    return model, optimizer, images, labels


def test_unavailable_on_a_cpu_with_a_clear_reason():
    model, optimizer, images, labels = _model_and_data()
    reason = cudagraphs.graphs_unavailable_reason("cpu", optimizer, 16, 32)
    assert reason is not None and "CUDA" in reason
    assert not cudagraphs.graphs_available("cpu")
    with pytest.raises(cudagraphs.GraphsUnavailableError, match="need a CUDA device"):
        cudagraphs.GraphedTrainStep(model, optimizer, images, labels, batch_size=16, image_size=32)


def test_optimizer_and_batch_requirements():
    parameters = [torch.nn.Parameter(torch.zeros(3))]
    assert cudagraphs.optimizer_unavailable_reason(torch.optim.SGD(parameters, lr=0.1, momentum=0.9)) is None
    adam = torch.optim.Adam(parameters, lr=0.1)
    assert "capturable=True" in cudagraphs.optimizer_unavailable_reason(adam)
    assert cudagraphs.optimizer_unavailable_reason(torch.optim.Adam(parameters, lr=0.1, capturable=True)) is None
    if CUDA:  # the device-independent conditions are only reached past the device check
        assert "last batch of 4" in cudagraphs.graphs_unavailable_reason("cuda", None, 16, 100)
        assert cudagraphs.graphs_unavailable_reason("cuda", None, 16, 100, drop_last=True) is None
        assert "torch.compile" in cudagraphs.graphs_unavailable_reason("cuda", compile_mode="default")


def test_step_body_is_the_training_step():
    """The body the graph captures (gather by index, preprocess, forward, loss, backward,
    step) computes what hrsnet.train.training_step computes on the same batch."""
    model, optimizer, images, labels = _model_and_data()
    reference, reference_optimizer, _, _ = _model_and_data()
    index = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    loss, logits, batch_labels = cudagraphs.graph_step_body(model, optimizer, images, labels, index, 32)
    expected_loss, expected_logits = training_step(reference, reference_optimizer, images[index], labels[index], 32)
    assert torch.equal(batch_labels, labels[index])
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(logits, expected_logits)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)


def test_device_crop_flip_crops_and_flips():
    """Each output image is a 32x32 window of the zero-padded input, possibly mirrored."""
    images = torch.randint(1, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = cudagraphs.device_crop_flip(images, torch.Generator().manual_seed(2))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for image, result in zip(padded, out):
        windows = [image[:, r : r + 32, c : c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(result, w) or torch.equal(result, w.flip(-1)) for w in windows)
    # Cropping uint8 first equals preprocessing's float crop: zero padding maps to 0.0 either way.
    assert torch.equal(preprocess(out, 32), preprocess(out.float().div(255).mul(255).round().byte(), 32))


@needs_cuda
def test_graph_replay_matches_eager_on_cuda():
    device = torch.device("cuda")
    eager, eager_optimizer, images, labels = _model_and_data()
    model, optimizer, _, _ = _model_and_data()
    eager.to(device)
    model.to(device)
    eager_optimizer = torch.optim.SGD(eager.parameters(), lr=0.005, momentum=0.9, fused=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, fused=True)
    images, labels = images.to(device), labels.to(device)
    graphed = cudagraphs.GraphedTrainStep(model, optimizer, images, labels, batch_size=8, image_size=32)
    from hrsnet.gpucheck import copy_training_state

    copy_training_state(eager, eager_optimizer, model, optimizer)
    for step in range(3):
        index = torch.arange(8 * step, 8 * step + 8, device=device)
        expected, _, _ = cudagraphs.graph_step_body(eager, eager_optimizer, images, labels, index, 32)
        loss, _ = graphed.step(index)
        assert abs(loss.item() - expected.item()) <= 1e-3 * abs(expected.item())


def test_resolve_cuda_graphs_switch_and_reasons(monkeypatch):
    """auto/on/off for a training run: off is off; auto says why not; on where graphs cannot
    work is a one-line ValueError naming why (the command line's error)."""
    resolve = functools.partial(cudagraphs.resolve_cuda_graphs, batch_size=16, train_size=64)
    assert resolve("off", "cpu") == (False, "off: asked for")
    use, why = resolve("auto", "cpu")
    assert not use and why.startswith("auto: CUDA graphs need a CUDA device")
    with pytest.raises(ValueError, match="^cuda_graphs on: CUDA graphs need a CUDA device.*; use auto or off$"):
        resolve("on", "cpu")
    # Past the device check (patched away: no GPU here), the run's own reasons.
    monkeypatch.setattr(cudagraphs, "graphs_unavailable_reason", lambda device, **settings: None)
    assert "3 seeds are packed" in resolve("auto", "cuda", packed_seeds=3)[1]
    with pytest.raises(ValueError, match="2 processes train the run"):
        resolve("on", "cuda", processes=2)
    with pytest.raises(ValueError, match="3 full batches of 16"):
        resolve("on", "cuda", train_size=63)
    assert resolve("on", "cuda") == (True, "on: asked for")
    assert resolve("auto", "cuda")[0] is cudagraphs.GRAPHS_WIN_MEASURED


def _digits_trainer(results_dir, **settings):
    from conftest import tiny_config

    from hrsnet.data import load_dataset
    from hrsnet.train import Trainer

    config = tiny_config(results_dir, **settings)
    data = load_dataset(config.dataset, seed=config.seed, train_subset=config.train_subset)
    return Trainer(config, data, torch.device("cpu"))


def test_trainer_graphed_loop_equals_the_eager_loop(tmp_path):
    """The Trainer's graphed loop, run on a CPU through the graph's eager twin
    (GraphedTrainStep(capture=False)): the warm-up batches are trained once, the last partial
    batch (36 = 4 x 8 + 4) eagerly, and each epoch equals the eager loop's (the same kernels
    in the same order: bitwise on a CPU), the second one replaying the step built in the first."""
    eager = _digits_trainer(tmp_path / "eager", train_subset=36, batch_size=8)
    graphed = _digits_trainer(tmp_path / "graphed", train_subset=36, batch_size=8)
    graphed.cuda_graphs = True  # what resolve_cuda_graphs gives on a GPU with --cuda-graphs on
    for epoch in (1, 2):
        eager_row, graphed_row = eager.train_one_epoch(epoch), graphed.train_one_epoch(epoch)
        for key in ("train_loss", "train_acc"):
            assert graphed_row[key] == eager_row[key], (epoch, key)
    assert graphed.graphed_step is not None and len(graphed.graphed_step.warmup_outputs) == cudagraphs.WARMUP_STEPS
    graphed_state = graphed.model.state_dict()
    for name, value in eager.model.state_dict().items():
        assert torch.equal(graphed_state[name], value), name
    assert torch.equal(graphed.shuffle_generator.get_state(), eager.shuffle_generator.get_state())


def test_trainer_makes_adam_capturable_for_graphs(tmp_path, monkeypatch):
    """With graphs on, Adam is rebuilt with capturable=True (PyTorch refuses to capture it
    otherwise); SGD is kept as it is. Capturable Adam steps only on a GPU, so this checks the
    resolution alone."""
    import hrsnet.train as train_module

    monkeypatch.setattr(train_module, "resolve_cuda_graphs", lambda *args, **kwargs: (True, "on: asked for"))
    adam = _digits_trainer(tmp_path / "adam", optimizer="adam")
    assert not adam.optimizer.param_groups[0]["capturable"]
    adam.resolve_cuda_graphs()
    assert adam.cuda_graphs and adam.optimizer.param_groups[0]["capturable"]
    sgd = _digits_trainer(tmp_path / "sgd")
    kept = sgd.optimizer
    sgd.resolve_cuda_graphs()
    assert sgd.optimizer is kept
