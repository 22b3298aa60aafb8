"""Seed packing (hrsnet.packing): N seeds in one network are exactly N separate networks."""

import pytest
import torch
from conftest import SMALL_NETWORK, small_config
from torch import nn

import hrsnet.engine.trainer as train_module
from hrsnet import rundir
from hrsnet.engine.checkpoint import load_checkpoint_file
from hrsnet.engine.packing import (
    PackedSeeds,
    pack_models,
    pack_optimizer_state,
    pack_state,
    unpack_into,
    unpack_optimizer_state,
    unpack_state,
)
from hrsnet.engine.step import BatchShare, StepSettings, train_step
from hrsnet.models import create_model
from hrsnet.runs import fit_seeds
from hrsnet.runs.lifecycle import check_run, open_run

SEEDS = 3
# The preset's stages, fusions, new branches and head with one residual unit per branch instead
# of 4: every kind of layer the packing handles, a quarter of the branch layers.
ONE_UNIT = {"units_per_branch": 1}


def _models(arch: str, width: int = 1, num_classes: int = 10, **options) -> list[nn.Module]:
    models = []
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        models.append(create_model(arch, width, num_classes, **options))
    return models


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The cosine similarity of two flat vectors (F.cosine_similarity takes a quarter second on
    the 10^7 elements of these networks; this, milliseconds)."""
    return (torch.dot(a, b) / (a.norm() * b.norm())).item()


def _fill_with_nan(model: nn.Module) -> None:
    """Every float parameter and buffer NaN: a value unpack_into fails to write shows."""
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))


def _update(model_after: nn.Module, before: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(p.detach() - b).flatten() for p, b in zip(model_after.parameters(), before, strict=True)])


@pytest.mark.parametrize("arch,optimizer", [("hrnet", "sgd"), ("hrsnet", "adam")])
def test_each_packed_step_equals_the_separate_networks_step(arch, optimizer):
    """From the same weights and optimizer state, one packed step gives each seed the loss,
    update, BatchNorm statistics and optimizer state of its own network's step (two steps in
    a row, so momentum or Adam's moments take part). Float rounding differs (grouped kernels),
    and these networks amplify it over many steps, so the proof is per step, as the
    benchmark's fast-path checks are."""

    def make(params):
        if optimizer == "adam":
            return torch.optim.Adam(params, lr=1e-3, weight_decay=5e-4)
        return torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=5e-4)

    separate = _models(arch, width=2, **ONE_UNIT)
    optimizers = [make(model.parameters()) for model in separate]
    with torch.device("meta"):  # structure only: unpack_into writes every value, each step
        structures = [create_model(arch, 2, 10, **ONE_UNIT) for _ in separate]
    unpacked = [model.to_empty(device="cpu") for model in structures]
    torch.manual_seed(100)
    for step in range(2):
        images = [torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8) for _ in range(SEEDS)]
        labels = [torch.randint(0, 10, (8,)) for _ in range(SEEDS)]
        shares = [BatchShare(x, y, torch.arange(8)) for x, y in zip(images, labels)]
        packed = pack_models(separate)
        packed_optimizer = make(packed.parameters())
        pack_optimizer_state(optimizers, packed_optimizer)
        before = [[p.detach().clone() for p in model.parameters()] for model in separate]
        packed_losses, _, _ = train_step(packed, packed_optimizer, shares, StepSettings(32))  # the pack's step
        losses = [
            train_step(model, opt, [share], StepSettings(32))[0].item()
            for model, opt, share in zip(separate, optimizers, shares, strict=True)
        ]
        for model in unpacked:
            _fill_with_nan(model)
        unpack_into(packed, unpacked)
        unpacked_optimizers = [make(model.parameters()) for model in unpacked]
        unpack_optimizer_state(packed_optimizer, unpacked_optimizers)
        for k in range(SEEDS):
            assert packed_losses[k].item() == pytest.approx(losses[k], abs=1e-4), (step, k)
            mine, theirs = _update(unpacked[k], before[k]), _update(separate[k], before[k])
            assert _cosine(mine, theirs) > 0.995, (step, k)
            assert (mine.norm() / theirs.norm()).item() == pytest.approx(1, abs=0.05), (step, k)
            # The check can fail: another seed's update is nothing like this one's.
            other = _update(separate[(k + 1) % SEEDS], before[(k + 1) % SEEDS])
            assert _cosine(mine, other) < 0.9
            expected_state = separate[k].state_dict()
            for name, value in unpacked[k].state_dict().items():
                if "running" in name:
                    assert torch.allclose(value, expected_state[name], rtol=1e-3, atol=1e-4), name
            mine_state = unpacked_optimizers[k].state_dict()["state"]
            theirs_state = optimizers[k].state_dict()["state"]
            assert mine_state.keys() == theirs_state.keys()
            for key in theirs_state[0]:
                stacked = [
                    torch.cat([state[index][key].flatten() for index in sorted(state)])
                    for state in (mine_state, theirs_state)
                ]
                assert _cosine(*stacked) > 0.995, (step, k, key)


def test_pack_and_unpack_round_trip_exactly():
    models = _models("hrnet", **ONE_UNIT)
    states = [model.state_dict() for model in models]
    for state, original in zip(unpack_state(pack_state(states), SEEDS), states, strict=True):
        assert state.keys() == original.keys()
        assert all(torch.equal(state[name], original[name]) for name in state)
        # Own storage, not views of the pack: a checkpoint of one seed must not hold all of them.
        assert all(tensor.untyped_storage().nbytes() == tensor.nbytes for tensor in state.values())
    packed = pack_models(models)
    assert packed.input_channels == 3 * SEEDS
    with pytest.raises(ValueError, match=r"\(N, 9, H, W\)"):
        packed(torch.zeros(2, 3, 32, 32))
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) for model in models]
    packed_optimizer = torch.optim.SGD(packed.parameters(), lr=0.1, momentum=0.9)
    pack_optimizer_state(optimizers, packed_optimizer)  # no state yet: nothing to stack, no error
    assert not packed_optimizer.state_dict()["state"]


def test_packing_refuses_what_it_cannot_keep_apart():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="cannot pack a LayerNorm"):
        pack_models([model, model])
    steps = [torch.tensor(1.0), torch.tensor(2.0)]
    from hrsnet.engine.packing import pack_tensors

    with pytest.raises(ValueError, match="values differ"):
        pack_tensors(steps, "step")


def _assert_same_runs(packed_runs, separate_runs) -> list[dict]:
    """Same seeds, splits, epochs and random draws (data order, augmentation) as runs trained
    one by one. Their losses agree per step only (see above): rounding grows over steps.
    Returns the packed runs' last checkpoints."""
    assert [run.seed for run in packed_runs] == [run.seed for run in separate_runs]
    checkpoints = []
    for a, b in zip(packed_runs, separate_runs, strict=True):
        assert a.history["epoch"].tolist() == b.history["epoch"].tolist(), a.seed
        assert (a.run_dir / rundir.SPLIT_FILE).read_text() == (b.run_dir / rundir.SPLIT_FILE).read_text()
        states = [load_checkpoint_file(run.run_dir / rundir.LAST_CHECKPOINT) for run in (a, b)]
        assert torch.equal(states[0]["rng"]["shuffle"], states[1]["rng"]["shuffle"]), a.seed
        assert a.history["train_loss"].iloc[0] == pytest.approx(b.history["train_loss"].iloc[0], rel=0.1)
        checkpoints.append(states[0])
    return checkpoints


def test_a_seed_that_stops_leaves_the_pack(tmp_path):
    """Seeds that end at different epochs (early stopping, here an epoch limit) train packed
    while they are together and without the finished one after; each sees its own data."""
    limits = {0: 1, 1: 2}
    device = torch.device("cpu")

    def trainers(folder):
        return [open_run(small_config(tmp_path / folder, seed=s, epochs=e), device, False) for s, e in limits.items()]

    packed = trainers("packed")
    PackedSeeds(packed).run()
    separate = trainers("alone")
    for trainer in separate:
        trainer.run()
    for a, b in zip(packed, separate, strict=True):
        assert a.finished and len(a.history) == len(b.history) == limits[a.config.seed]
        assert torch.equal(a.shuffle_generator.get_state(), b.shuffle_generator.get_state())


def test_interrupted_packed_seeds_resume_like_separate_runs(tmp_path, monkeypatch):
    """Interrupted between two seeds' checkpoints (the worst moment: seed 0 has one more epoch
    than the others), a rerun resumes each seed where its files stop; the seeds end with the
    splits, epochs and random draws of runs trained one by one, in the usual run files."""
    configs = [small_config(tmp_path / "packed", seed=seed) for seed in range(SEEDS)]
    real_finish_epoch = train_module.Trainer.finish_epoch

    def interrupt_after_seed0_epoch1(self, epoch, row):
        real_finish_epoch(self, epoch, row)
        if epoch == 1 and self.config.seed == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module.Trainer, "finish_epoch", interrupt_after_seed0_epoch1)
    with pytest.raises(KeyboardInterrupt):
        fit_seeds(configs, pack=True)
    monkeypatch.setattr(train_module.Trainer, "finish_epoch", real_finish_epoch)
    for config in configs:
        status = rundir.read_status(config.run_dir())
        assert (status.state, status.reason.split(";")[0]) == (
            "failed",
            "interrupted after epoch " + str(1 if config.seed == 0 else 0),
        )
    assert [len(rundir.read_run(c.run_dir()).history) for c in configs] == [1, 0, 0]

    packed = fit_seeds(configs, pack=True)
    separate = fit_seeds([small_config(tmp_path / "alone", seed=seed) for seed in range(SEEDS)], pack=False)
    checkpoints = _assert_same_runs(packed, separate)
    for run, state in zip(packed, checkpoints, strict=True):
        assert run.status.state == "complete" and run.config["resolved"]["packed_seeds"] == SEEDS
        assert check_run(run.run_dir).action == "skip: finished"
        # The checkpoint is one seed's model, loadable by an unpacked network.
        create_model("hrnet", 1, 10, **SMALL_NETWORK).load_state_dict(state["model"])
    again = fit_seeds(configs, pack=True)  # finished: skipped, read back
    assert [run.history["train_loss"].tolist() for run in again] == [r.history["train_loss"].tolist() for r in packed]
