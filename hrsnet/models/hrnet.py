"""One High-Resolution Network class; the report's three networks are configs of it.

Data flow: stem (1/4 resolution) -> stage 1 (bottlenecks) -> transition to two branches ->
stages 2, 3, 4 (HRNet modules: parallel branches, then multi-resolution fusion) ->
classification head (per-branch bottlenecks, stride-2 merges down to 1/32, 1x1 to 2048,
global average pool, linear).

Module names follow the official HRNet code (conv1, layer1, transition1, stage2.0.branches,
fuse_layers, incre_modules, downsamp_modules, final_layer, classifier), so an official or
timm ``hrnet_w*`` state dict loads strictly into the ``hrnet_official`` preset.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import BasicBlock, Bottleneck, PreActBlock, conv1x1, conv_bn
from .config import HRNetConfig

MIN_INPUT_SIZE = 32
STEM_WIDTH = 64
STAGE1_PLANES = 64  # bottleneck width in stage 1; output 256 channels
HEAD_PLANES = 32  # head bottleneck width of branch i is 32 * 2^i, output 128 * 2^i
HEAD_FEATURES = 2048


def branch_widths(width: int, num_branches: int) -> list[int]:
    """Channels of branch i: C * 2^i."""
    return [width * 2**i for i in range(num_branches)]


def stride2_chain(config: HRNetConfig, source: int, target: int) -> nn.Sequential:
    """(target - source) 3x3 stride-2 conv+BN steps taking branch ``source`` down to ``target``."""
    widths = branch_widths(config.width, target + 1)
    steps = []
    num_steps = target - source
    for step in range(num_steps):
        last = step == num_steps - 1
        if config.fusion_chain_width == "double":
            in_channels, out_channels = widths[source + step], widths[source + step + 1]
        else:  # "source": intermediate convs keep the source width, the last one changes it
            in_channels = widths[source]
            out_channels = widths[target] if last else widths[source]
        relu = (not last) if config.fusion_chain_activation == "between" else last
        steps.append(conv_bn(in_channels, out_channels, 3, stride=2, bias=config.conv_bias, relu=relu))
    return nn.Sequential(*steps)


class HighResolutionModule(nn.Module):
    """Parallel branches of residual units, then a fusion of every branch into every output.

    Output i is ReLU(sum over inputs j): j itself if i == j; 1x1 conv + BN + nearest upsampling
    for a lower-resolution j > i; a stride-2 chain for a higher-resolution j < i. With
    ``num_outputs = num_branches + 1`` the fusion also makes the next stage's new branch.
    """

    def __init__(self, config: HRNetConfig, num_branches: int, num_outputs: int):
        super().__init__()
        widths = branch_widths(config.width, num_branches)
        unit = BasicBlock if config.unit == "basic" else PreActBlock
        self.branches = nn.ModuleList(
            nn.Sequential(*(unit(channels, bias=config.conv_bias) for _ in range(config.units_per_branch)))
            for channels in widths
        )
        out_widths = branch_widths(config.width, num_outputs)
        fuse_layers = []
        for i in range(num_outputs):
            row = []
            for j in range(num_branches):
                if j > i:
                    row.append(
                        nn.Sequential(
                            conv1x1(widths[j], out_widths[i], bias=config.conv_bias), nn.BatchNorm2d(out_widths[i])
                        )
                    )
                elif j == i:
                    row.append(nn.Identity())
                else:
                    row.append(stride2_chain(config, j, i))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        x = [branch(t) for branch, t in zip(self.branches, x)]
        fused = []
        for i, row in enumerate(self.fuse_layers):
            total = None
            for j, layer in enumerate(row):
                term = layer(x[j])
                if j > i:
                    # Upsample to the exact size of branch i (not by 2^(j-i)): equal for sizes
                    # divisible by 32, and still right for odd sizes, where stride 2 rounds up.
                    term = F.interpolate(term, size=x[i].shape[-2:], mode="nearest")
                total = term if total is None else total + term
            fused.append(F.relu(total))
        return fused


class HRStage(nn.Sequential):
    """A stage: HRNet modules in sequence, with HRSNet's optional stage-level skip connection.

    With ``stage_skip`` the stage's input is added, branch by branch, to the output of the
    second-to-last module; the sum goes into the last module.
    """

    def __init__(self, modules: list[HighResolutionModule], stage_skip: bool):
        super().__init__(*modules)
        self.stage_skip = stage_skip

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        stage_input = x
        last = len(self) - 1
        for index, module in enumerate(self):
            if self.stage_skip and index == last:
                x = [a + b for a, b in zip(x, stage_input)]
            x = module(x)
        return x


class HighResolutionNet(nn.Module):
    """The High-Resolution Network for classification, configured by :class:`HRNetConfig`.

    Presets (see ``hrsnet.models.registry``): ``hrnet_official`` (the original HRNet-Wx-C),
    ``hrnet`` (the report's pre-activated re-implementation), ``hrsnet`` (the report's deeper
    network with stage skips). Input: float tensor (N, 3, H, W) with H, W >= 32.
    """

    def __init__(self, config: HRNetConfig):
        super().__init__()
        self.config = config
        bias = config.conv_bias
        # Stem: two stride-2 3x3 convs, resolution 1/4.
        self.conv1 = nn.Conv2d(3, STEM_WIDTH, 3, stride=2, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        self.conv2 = nn.Conv2d(STEM_WIDTH, STEM_WIDTH, 3, stride=2, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(STEM_WIDTH)

        stage1_channels = STAGE1_PLANES * Bottleneck.expansion
        self.layer1 = nn.Sequential(
            Bottleneck(STEM_WIDTH, STAGE1_PLANES, bias=bias),
            *(Bottleneck(stage1_channels, STAGE1_PLANES, bias=bias) for _ in range(3)),
        )
        widths = branch_widths(config.width, 4)
        self.transition1 = nn.ModuleList(
            [
                conv_bn(stage1_channels, widths[0], 3, stride=1, bias=bias),
                nn.Sequential(conv_bn(stage1_channels, widths[1], 3, stride=2, bias=bias)),
            ]
        )

        fuse_new_branch = config.new_branch == "fuse"
        self.stage2 = self._make_stage(config, 2, config.modules_per_stage[0], fuse_new_branch)
        self.transition2 = None if fuse_new_branch else self._make_new_branch_transition(config, 2)
        self.stage3 = self._make_stage(config, 3, config.modules_per_stage[1], fuse_new_branch)
        self.transition3 = None if fuse_new_branch else self._make_new_branch_transition(config, 3)
        self.stage4 = self._make_stage(config, 4, config.modules_per_stage[2], False)

        self.incre_modules = nn.ModuleList(
            nn.Sequential(
                Bottleneck(
                    widths[i], HEAD_PLANES * 2**i, bias=bias, activation_after_add=config.head_activation_after_add
                )
            )
            for i in range(4)
        )
        head_widths = [HEAD_PLANES * 2**i * Bottleneck.expansion for i in range(4)]  # 128 ... 1024
        self.downsamp_modules = nn.ModuleList(
            conv_bn(head_widths[i], head_widths[i + 1], 3, stride=2, bias=True) for i in range(3)
        )
        self.final_layer = conv_bn(head_widths[3], HEAD_FEATURES, 1, bias=True)
        self.classifier = nn.Linear(HEAD_FEATURES, config.num_classes)
        self._init_weights()

    @staticmethod
    def _make_stage(config: HRNetConfig, stage: int, num_modules: int, grows_new_branch: bool) -> HRStage:
        num_branches = stage  # stage 2 has 2 branches, ..., stage 4 has 4
        modules = [
            HighResolutionModule(
                config,
                num_branches,
                num_outputs=num_branches + 1 if grows_new_branch and index == num_modules - 1 else num_branches,
            )
            for index in range(num_modules)
        ]
        return HRStage(modules, config.stage_skip)

    @staticmethod
    def _make_new_branch_transition(config: HRNetConfig, num_branches: int) -> nn.ModuleList:
        """Official transition: existing branches pass through; the new one is the last branch,
        downsampled by a 3x3 stride-2 conv + BN + ReLU."""
        widths = branch_widths(config.width, num_branches + 1)
        new_branch = nn.Sequential(conv_bn(widths[-2], widths[-1], 3, stride=2, bias=config.conv_bias))
        return nn.ModuleList([*(nn.Identity() for _ in range(num_branches)), new_branch])

    def _init_weights(self) -> None:
        # The official HRNet initialisation, one place for every preset. Meta tensors (shape
        # only, as in summary()) hold no values, and initialising them is half the build time.
        if self.conv1.weight.is_meta:
            return
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    input_channels = 3  # hrsnet.engine.packing sets 3 x seeds on a packed copy

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is a 4-D float tensor (N, 3, H, W) with H, W >= 32."""
        channels = self.input_channels
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"input must be a torch.Tensor of shape (N, {channels}, H, W), got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != channels or not x.is_floating_point():
            raise ValueError(
                f"input must be a 4-D float tensor (N, {channels}, H, W) with {channels} channels, "
                f"got shape {tuple(x.shape)} and dtype {x.dtype}"
            )
        height, width = x.shape[-2:]
        if height < MIN_INPUT_SIZE or width < MIN_INPUT_SIZE:
            raise ValueError(f"input height and width must be >= {MIN_INPUT_SIZE}, got {height}x{width}")

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem to stage 4: the four branch outputs, highest resolution first."""
        self.check_input(x)
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = self.layer1(x)
        branches = [transition(x) for transition in self.transition1]
        branches = self.stage2(branches)
        if self.transition2 is not None:
            branches = branches + [self.transition2[-1](branches[-1])]
        branches = self.stage3(branches)
        if self.transition3 is not None:
            branches = branches + [self.transition3[-1](branches[-1])]
        return self.stage4(branches)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 2048-channel map at 1/32 resolution, before pooling."""
        branches = self.forward_stages(x)
        y = self.incre_modules[0](branches[0])
        for i, downsample in enumerate(self.downsamp_modules):
            y = self.incre_modules[i + 1](branches[i + 1]) + downsample(y)
        return self.final_layer(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x)
        return self.classifier(features.mean(dim=(2, 3)))
