"""Seed packing: the seeds of one network x C trained as one network, exactly.

Seed k owns channel block k of every layer of a packed copy of the network: each conv gets
``seeds`` times its channels and groups, each BatchNorm ``seeds`` times its channels, and
the classifier one linear map per seed (:class:`PackedLinear`). The input stacks the seeds'
batches along the channels and the loss is the sum of the seeds' losses. Groups never mix,
BatchNorm's statistics are per channel and SGD (momentum, weight decay) is elementwise, so
the packed network is N independent networks, up to the order of float rounding
(tests/test_packing.py checks it per step). What changes is the work's shape: one grouped
kernel for N small ones. At batch 16 an HRNet step is thousands of small kernels, so a step
costs launch overhead more than arithmetic, and N seeds packed cost far less than N runs.

Each seed keeps its own Trainer (data split and order, augmentation generator, validation,
early stopping, checkpoints, run directory in the usual schema): the packed network only
takes the training steps. After every epoch its weights and optimizer state go back to the
seeds' own models, which validate and checkpoint as an unpacked run does; a seed that stops
early leaves the pack, and the others are packed again without it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .checkpoint import load_optimizer_state
from .step import EpochMeter, train_step
from .trainer import Trainer, config_optimizer, step_model


class PackedLinear(nn.Module):
    """``seeds`` Linear(in, out) maps side by side: input (B, seeds x in), output (B, seeds, out).

    The weight is the seeds' weights stacked, (seeds x out, in), so that seed k's block of
    every packed tensor is its k-th chunk along dim 0, as for the convs and BatchNorms.
    """

    def __init__(self, seeds: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.seeds, self.in_features, self.out_features = seeds, in_features, out_features
        self.weight = nn.Parameter(torch.empty(seeds * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(seeds * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.seeds, self.in_features)
        weight = self.weight.view(self.seeds, self.out_features, self.in_features)
        y = torch.einsum("bsi,soi->bso", x, weight)
        return y if self.bias is None else y + self.bias.view(self.seeds, self.out_features)


def _packed_layer(module: nn.Module, seeds: int) -> nn.Module | None:
    """The packed counterpart of a layer with parameters or buffers (None: keep the module)."""
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(
            module.in_channels * seeds,
            module.out_channels * seeds,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups * seeds,
            module.bias is not None,
            module.padding_mode,
        )
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(
            module.num_features * seeds, module.eps, module.momentum, module.affine, module.track_running_stats
        )
    if isinstance(module, nn.Linear):
        return PackedLinear(seeds, module.in_features, module.out_features, module.bias is not None)
    if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
        raise ValueError(f"cannot pack a {type(module).__name__}: only Conv2d, BatchNorm2d and Linear hold weights")
    return None


def pack_tensors(tensors: Sequence[torch.Tensor], name: str) -> torch.Tensor:
    """The seeds' tensors as one: stacked along dim 0, or for a scalar (BatchNorm's step count,
    an optimizer's step) the common value."""
    first = tensors[0]
    if first.dim() == 0:
        if any(not torch.equal(tensor, first) for tensor in tensors[1:]):
            raise ValueError(f"cannot pack {name}: the seeds' values differ ({[t.item() for t in tensors]})")
        return first.clone()
    return torch.cat(list(tensors), dim=0)


def unpack_tensor(tensor: torch.Tensor, seeds: int) -> list[torch.Tensor]:
    """Seed k's part of a packed tensor, as a tensor of its own (a view would save the whole pack)."""
    if tensor.dim() == 0:
        return [tensor.clone() for _ in range(seeds)]
    return [chunk.clone() for chunk in tensor.chunk(seeds, dim=0)]


def pack_state(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: pack_tensors([state[name] for state in states], name) for name in states[0]}


def unpack_state(state: dict[str, torch.Tensor], seeds: int) -> list[dict[str, torch.Tensor]]:
    parts = {name: unpack_tensor(tensor, seeds) for name, tensor in state.items()}
    return [{name: chunks[k] for name, chunks in parts.items()} for k in range(seeds)]


def pack_models(models: Sequence[nn.Module]) -> nn.Module:
    """One network holding ``models`` (same architecture, any weights) side by side."""
    seeds = len(models)
    packed = copy.deepcopy(models[0])
    for module in list(packed.modules()):
        for name, child in list(module.named_children()):
            replacement = _packed_layer(child, seeds)
            if replacement is not None:
                setattr(module, name, replacement)
    parameter = next(models[0].parameters())
    packed.to(device=parameter.device)
    packed.load_state_dict(pack_state([model.state_dict() for model in models]))
    if hasattr(packed, "input_channels"):
        packed.input_channels = models[0].input_channels * seeds
    packed.packed_seeds = seeds
    return packed


def unpack_into(packed: nn.Module, models: Sequence[nn.Module]) -> None:
    """Copy each seed's block of ``packed`` into its own model."""
    for model, state in zip(models, unpack_state(packed.state_dict(), len(models)), strict=True):
        model.load_state_dict(state)


def pack_optimizer_state(optimizers: Sequence[torch.optim.Optimizer], packed: torch.optim.Optimizer) -> None:
    """Give ``packed`` (built over the packed parameters) the seeds' optimizer state, stacked."""
    states = [optimizer.state_dict() for optimizer in optimizers]
    indices = set(states[0]["state"])
    if any(set(state["state"]) != indices for state in states[1:]):
        raise ValueError("cannot pack optimizers with state for different parameters (seeds at different steps)")
    packed_state = {
        index: {
            key: pack_tensors([state["state"][index][key] for state in states], f"optimizer state {key}")
            if torch.is_tensor(value)
            else value
            for key, value in states[0]["state"][index].items()
        }
        for index in indices
    }
    load_optimizer_state(packed, {"state": packed_state, "param_groups": packed.state_dict()["param_groups"]})


def unpack_optimizer_state(packed: torch.optim.Optimizer, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    state = packed.state_dict()["state"]
    seeds = len(optimizers)
    parts = {
        index: {
            key: unpack_tensor(value, seeds) if torch.is_tensor(value) else [value] * seeds for key, value in s.items()
        }
        for index, s in state.items()
    }
    for k, optimizer in enumerate(optimizers):
        seed_state = {index: {key: values[k] for key, values in s.items()} for index, s in parts.items()}
        load_optimizer_state(optimizer, {"state": seed_state, "param_groups": optimizer.state_dict()["param_groups"]})


class PackedSeeds:
    """Trains started Trainers (hrsnet.engine.trainer) of one network x C together, epoch by epoch.

    Each round trains the unfinished seeds that have the fewest epochs (after a kill they may
    differ by one), packed; then each validates, checkpoints and logs as ``Trainer.run`` does.
    A seed that finishes writes its test outputs at once and leaves the pack.
    """

    def __init__(self, trainers: Sequence[Trainer]):
        self.trainers = list(trainers)
        first = self.trainers[0]
        self.device = first.device
        sizes = {len(trainer.data.train) for trainer in self.trainers}
        batch_sizes = {trainer.config.batch_size for trainer in self.trainers}
        if len(sizes) != 1 or len(batch_sizes) != 1:
            raise ValueError("packed seeds need the same training-split size and batch size")
        self._members: tuple[Trainer, ...] = ()
        self._model: nn.Module | None = None
        self._step_model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    def unfinished(self) -> list[Trainer]:
        return [trainer for trainer in self.trainers if not trainer.finished]

    def run(self) -> None:
        while True:
            for trainer in self.unfinished():
                if trainer.status is not None or trainer.epoch >= trainer.config.epochs:
                    trainer.finish()
            unfinished = self.unfinished()
            if not unfinished:
                return
            lowest = min(trainer.epoch for trainer in unfinished)
            members = tuple(trainer for trainer in unfinished if trainer.epoch == lowest)
            self.pack(members)
            epoch = lowest + 1
            rows = self.train_one_epoch(epoch)
            self.unpack()
            for trainer, row in zip(members, rows, strict=True):
                trainer.finish_epoch(epoch, row)

    def pack(self, members: tuple[Trainer, ...]) -> None:
        """Build the packed model and optimizer for ``members`` (kept while they stay the same)."""
        if members == self._members:
            return
        config = members[0].config
        models = [trainer.model for trainer in members]
        self._model = pack_models(models).to(memory_format=members[0].memory_format)
        self._step_model = step_model(self._model, config)
        self._optimizer = config_optimizer(config, self._model.parameters(), self.device)
        pack_optimizer_state([trainer.optimizer for trainer in members], self._optimizer)
        self._members = members

    def unpack(self) -> None:
        """Give each member its block of the packed weights and optimizer state."""
        unpack_into(self._model, [trainer.model for trainer in self._members])
        unpack_optimizer_state(self._optimizer, [trainer.optimizer for trainer in self._members])

    def train_one_epoch(self, epoch: int) -> list[dict[str, float]]:
        """One epoch of every member, packed; the rows Trainer.train_one_epoch would give each.

        Every member draws its data order and augmentation from its own generators in the same
        order as its unpacked run, so it sees the same batches. A member whose loss becomes
        non-finite gets its "diverged" status and its row up to that check; it goes on inside
        the pack until the epoch ends (its blocks cannot reach the others').
        """
        members, device = self._members, self.device
        config = members[0].config
        self._model.train()
        orders = [torch.randperm(len(m.data.train), generator=m.shuffle_generator).to(device) for m in members]
        batches = [list(order.split(config.batch_size)) for order in orders]
        meter = EpochMeter(len(members), len(batches[0]), device, config.log_every)
        meter.start(self._optimizer.param_groups[0]["lr"])
        settings = members[0].step_settings
        for batch in range(len(batches[0])):
            shares = [member.batch_share(batches[k][batch]) for k, member in enumerate(members)]
            losses, logits, labels = train_step(self._step_model, self._optimizer, shares, settings)
            meter.add(batch, losses, logits, labels)
            if meter.due(batch):
                for k, mean_loss in meter.check():
                    members[k].mark_diverged(mean_loss, epoch, batch + 1, len(batches[0]))
        meter.stop()
        return meter.rows()
