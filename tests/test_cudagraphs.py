"""Whole-step CUDA graphs (hrsnet.engine.cudagraphs): what runs on a CPU is tested here; the capture
itself needs a GPU (`python -m hrsnet gpucheck` checks it there against eager steps)."""

import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_NETWORK

from hrsnet.data import preprocess, random_crop_flip
from hrsnet.engine import cudagraphs
from hrsnet.engine.step import BatchShare, StepSettings, train_step
from hrsnet.tools.bench import build_model

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA GPU; torch sees none here")


def _model_and_data(seed=0, small=True):
    """hrnet C=1, on a CPU the small network (every kind of layer; what a step does, not its
    depth, is under test), on a GPU the preset itself (graph capture of the whole network)."""
    torch.manual_seed(seed)
    model = build_model("hrnet", 1, **(SMALL_NETWORK if small else {}))
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
        cudagraphs.GraphedTrainStep(model, optimizer, BatchShare(images, labels, torch.arange(16)), StepSettings(32))


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


def test_train_step_is_a_plain_step():
    """train_step (what the eager loop, the graph and the pack run) computes a plain step: gather
    by index, preprocess, forward, float32 cross-entropy, backward, SGD step."""
    model, optimizer, images, labels = _model_and_data()
    reference, reference_optimizer, _, _ = _model_and_data()
    index = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    losses, logits, batch_labels = train_step(model, optimizer, [BatchShare(images, labels, index)], StepSettings(32))
    expected_logits = reference(preprocess(images[index], 32))
    expected_loss = F.cross_entropy(expected_logits, labels[index])
    reference_optimizer.zero_grad()
    expected_loss.backward()
    reference_optimizer.step()
    assert losses.shape == (1,) and logits.shape == (8, 1, 100) and torch.equal(batch_labels[0], labels[index])
    torch.testing.assert_close(losses[0], expected_loss)
    torch.testing.assert_close(logits[:, 0], expected_logits)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)


def test_crop_flip_on_uint8_equals_the_float_crop():
    """The step crops uint8 images before the float conversion: the same values as cropping after
    it (zero padding maps to 0.0 either way), from the same random draws."""
    images = torch.randint(1, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    on_uint8 = random_crop_flip(images, torch.Generator().manual_seed(2))
    on_float = random_crop_flip(images.float().div(255), torch.Generator().manual_seed(2))
    assert on_uint8.dtype == torch.uint8
    assert torch.equal(preprocess(on_uint8, 32), on_float.sub(0.5).div(0.5))


@needs_cuda
def test_graph_replay_matches_eager_on_cuda():
    device = torch.device("cuda")
    eager, eager_optimizer, images, labels = _model_and_data(small=False)
    model, optimizer, _, _ = _model_and_data(small=False)
    eager.to(device)
    model.to(device)
    eager_optimizer = torch.optim.SGD(eager.parameters(), lr=0.005, momentum=0.9, fused=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, fused=True)
    images, labels = images.to(device), labels.to(device)
    settings = StepSettings(32)
    first = torch.arange(8, device=device)
    graphed = cudagraphs.GraphedTrainStep(model, optimizer, BatchShare(images, labels, first), settings)
    from hrsnet.tools.gpucheck import copy_training_state

    copy_training_state(eager, eager_optimizer, model, optimizer)
    for step in range(3):
        index = torch.arange(8 * step, 8 * step + 8, device=device)
        expected = train_step(eager, eager_optimizer, [BatchShare(images, labels, index)], settings)[0][0]
        loss = graphed.step(index)[0][0]
        assert abs(loss.item() - expected.item()) <= 1e-3 * abs(expected.item())


def _two_steps_on_one_batch(device: torch.device, capture: bool, augment: bool):
    """Logits of two steps on the same batch with lr 0 (the weights stay; train-mode BatchNorm
    uses the batch's statistics): equal unless the augmentation draws anew each step."""
    model, _, images, labels = _model_and_data(small=device.type == "cpu")
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    images, labels = images.to(device), labels.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    index = torch.arange(8, device=device)
    share = BatchShare(images, labels, index, generator)
    graphed = cudagraphs.GraphedTrainStep(model, optimizer, share, StepSettings(32, augment=augment), capture=capture)
    first = graphed.step(index)[1].clone()
    second = graphed.step(index)[1].clone()
    return first, second


def test_augmentation_draws_anew_at_every_step_of_the_graphs_twin():
    """The graph's eager twin on a CPU: each step draws a new crop and flip from the run's
    generator (two steps on one batch differ), and without augmentation they are equal."""
    first, second = _two_steps_on_one_batch(torch.device("cpu"), capture=False, augment=True)
    assert not torch.allclose(first, second)
    first, second = _two_steps_on_one_batch(torch.device("cpu"), capture=False, augment=False)
    torch.testing.assert_close(first, second)


@needs_cuda
def test_augmented_graph_replay_draws_anew_on_cuda():
    """A captured step with augmentation on the run's own CUDA generator: each replay draws new
    crops and flips (a draw baked into the graph would repeat), and the losses stay finite."""
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        pytest.skip(f"torch {torch.__version__} cannot register a run's own generator with a graph")
    first, second = _two_steps_on_one_batch(torch.device("cuda"), capture=True, augment=True)
    assert torch.isfinite(first).all() and not torch.allclose(first, second)
    first, second = _two_steps_on_one_batch(torch.device("cuda"), capture=True, augment=False)
    torch.testing.assert_close(first, second)


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
    """A Trainer of tiny_config on the small network: the loop and the optimizer are under test."""
    from conftest import tiny_config

    from hrsnet.data import load_dataset
    from hrsnet.engine.trainer import Trainer

    config = tiny_config(results_dir, model_options=SMALL_NETWORK, **settings)
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
    """With graphs on, the Trainer builds Adam with capturable=True (PyTorch refuses to capture it
    otherwise); SGD is the same either way. Capturable Adam steps only on a GPU, so this checks
    the construction alone."""
    import hrsnet.engine.trainer as train_module

    assert not _digits_trainer(tmp_path / "adam", optimizer="adam").optimizer.param_groups[0]["capturable"]
    monkeypatch.setattr(train_module, "resolve_cuda_graphs", lambda *args, **kwargs: (True, "on: asked for"))
    adam = _digits_trainer(tmp_path / "adam", optimizer="adam")
    assert adam.cuda_graphs and adam.optimizer.param_groups[0]["capturable"]
    assert isinstance(_digits_trainer(tmp_path / "sgd").optimizer, torch.optim.SGD)
