"""The three networks: construction, structure, the timm peer check, inputs, errors, summary."""

import dataclasses
import functools

import pytest
import torch
import torch.nn as nn

from hrsnet import create_model, list_models
from hrsnet.analysis.paper import RELEASED_PARAMETERS_C2
from hrsnet.models import PRESETS, HRNetConfig, config_differences, model_config, summary
from hrsnet.models.blocks import BasicBlock, Bottleneck, PreActBlock

NAMES = ["hrnet_official", "hrnet", "hrsnet", "hrsnet_skip"]  # report order: each preset after its base


def test_list_models():
    assert list_models() == NAMES


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("width", [2, 18, 30])
def test_presets_build(name, width):
    with torch.device("meta"):  # shapes only: building C=30 for real is slow and proves nothing more
        model = create_model(name, width=width, num_classes=100)
    assert model.classifier.out_features == 100
    assert model.transition1[0][0].out_channels == width
    assert model.stage4[-1].branches[3][0].conv1.in_channels == 8 * width


def _randomize(model: nn.Module, seed: int = 0) -> None:
    """Random weights and BatchNorm statistics, so equal outputs mean equal structure."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(
                    torch.rand(tensor.shape, generator=generator) * 0.2 + 0.9
                    if tensor.dim() == 1
                    else torch.randn(tensor.shape, generator=generator) * 0.05
                )


def test_official_matches_timm_hrnet_w18():
    timm = pytest.importorskip("timm")
    reference = timm.create_model("hrnet_w18", pretrained=False, num_classes=1000).eval()
    _randomize(reference)
    ours = create_model("hrnet_official", width=18, num_classes=1000).eval()
    assert sum(p.numel() for p in ours.parameters()) == 21_299_004
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    # Same module names as the official code: timm's state dict loads strictly.
    ours.load_state_dict(reference.state_dict(), strict=True)
    # 64x64: every layer runs (its lowest branch 2x2) at a twelfth of 224x224's compute.
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert expected.abs().max() > 1e-2  # not a degenerate all-zero comparison
    assert (expected - actual).abs().max().item() < 1e-4


def test_official_flops_match_timm():
    timm = pytest.importorskip("timm")
    from hrsnet.models import count_forward_flops

    reference = timm.create_model("hrnet_w18", pretrained=False, num_classes=100)
    ours = summary("hrnet_official", width=18, image_size=64, num_classes=100)
    assert ours.forward_flops == count_forward_flops(reference, 64)
    assert ours.parameters == sum(p.numel() for p in reference.parameters())


@functools.cache
def _evaluated(name: str, width: int, num_classes: int) -> nn.Module:
    """A network in eval mode, built once for the tests that only run it forward under no_grad
    (nothing in it changes there)."""
    return create_model(name, width=width, num_classes=num_classes).eval()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [32, 64, 33, 50])
def test_input_sizes(name, size):
    model = _evaluated(name, 2, 7)
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_input_224_and_non_square(name):
    model = _evaluated(name, 1, 1)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1)
        assert model(torch.randn(1, 3, 40, 96)).shape == (1, 1)


def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    return ((actual.double() - reference.double()).norm() / reference.double().norm()).item()


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_matches_contiguous(name):
    # Fresh BatchNorm statistics in eval mode give logits in the 1e5-1e8 range, so compare
    # by norm against a float64 reference: float32 rounding lands near 1e-6 for either layout.
    torch.manual_seed(0)
    model = create_model(name, width=3, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model.double()(x.double())
        contiguous = model.float()(x)
        channels_last = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert relative_error(contiguous, reference) < 1e-5
    assert relative_error(channels_last, reference) < 1e-5
    assert relative_error(channels_last, contiguous) < 1e-5


def test_train_step_backward_works():
    model = create_model("hrsnet", width=2, num_classes=5)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# --- the differences between the presets are real structure, not labels -------------------


def test_units_and_overrides():
    assert isinstance(create_model("hrnet_official", width=2).stage2[0].branches[0][0], BasicBlock)
    assert isinstance(create_model("hrnet", width=2).stage2[0].branches[0][0], PreActBlock)
    ablation = create_model("hrnet", width=2, unit="basic")
    assert isinstance(ablation.stage2[0].branches[0][0], BasicBlock)
    assert ablation.config.new_branch == "fuse"  # only the one field changed


def test_module_counts():
    for name, counts in [("hrnet_official", (1, 4, 3)), ("hrnet", (1, 4, 3)), ("hrsnet", (4, 4, 4))]:
        model = create_model(name, width=2)
        assert (len(model.stage2), len(model.stage3), len(model.stage4)) == counts


def test_new_branch_from_fusion_vs_last_branch():
    official = create_model("hrnet_official", width=4)
    assert official.transition2 is not None and len(official.stage2[-1].fuse_layers) == 2
    report = create_model("hrnet", width=4)
    assert report.transition2 is None and report.transition3 is None
    # The last module of stages 2 and 3 makes one more output, fed by every branch.
    assert len(report.stage2[-1].fuse_layers) == 3 and len(report.stage2[-1].fuse_layers[2]) == 2
    assert len(report.stage3[-1].fuse_layers) == 4 and len(report.stage3[0].fuse_layers) == 3


def _chain_convs(chain):
    return [(step[0].in_channels, step[0].out_channels, any(isinstance(m, nn.ReLU) for m in step)) for step in chain]


def test_fusion_chain_widths_and_relus():
    c = 3
    official = create_model("hrnet_official", width=c).stage4[0].fuse_layers[3][0]
    assert _chain_convs(official) == [(c, c, True), (c, c, True), (c, 8 * c, False)]
    report = create_model("hrnet", width=c).stage4[0].fuse_layers[3][0]
    assert _chain_convs(report) == [(c, 2 * c, False), (2 * c, 4 * c, False), (4 * c, 8 * c, True)]


def test_conv_bias():
    official, report = create_model("hrnet_official", width=2), create_model("hrnet", width=2)
    assert official.conv1.bias is None and report.conv1.bias is not None
    assert report.stage2[0].fuse_layers[0][1][0].bias is not None
    unit = report.stage2[0].branches[0][0]
    assert unit.conv1.bias is not None and unit.conv2.bias is not None  # as in the released notebooks
    assert official.stage2[0].branches[0][0].conv1.bias is None
    assert official.final_layer[0].bias is not None  # as in the official head


@pytest.mark.parametrize("name", ["hrnet", "hrsnet", "hrsnet_skip"])
def test_parameter_counts_equal_the_released_notebooks(name):
    """Counted from the authors' code at C=2, 100 classes; a missing unit bias is 608 x C short.
    The stage skip has no parameters: hrsnet_skip counts as hrsnet (so counts cannot tell them apart)."""
    with torch.device("meta"):
        model = create_model(name, width=2, num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == RELEASED_PARAMETERS_C2[name.replace("_skip", "")]


def test_presets_are_written_as_changes_from_their_base():
    assert PRESETS["hrnet_official"].base is None and PRESETS["hrnet_official"].changes == {}
    assert PRESETS["hrsnet"].base == "hrnet" and set(PRESETS["hrsnet"].changes) == {"modules_per_stage"}
    assert PRESETS["hrsnet_skip"].base == "hrsnet" and PRESETS["hrsnet_skip"].changes == {"stage_skip": True}

    def differing(name, base):
        return {f for f, value in model_config(name).to_dict().items() if value != getattr(model_config(base), f)}

    assert differing("hrsnet", "hrnet") == {"modules_per_stage"}
    assert differing("hrsnet_skip", "hrsnet") == {"stage_skip"}


def test_preact_unit_order():
    torch.manual_seed(0)
    unit = PreActBlock(4).eval()
    _randomize(unit)
    x = torch.randn(2, 4, 8, 8)
    expected = x + unit.conv2(torch.relu(unit.bn2(unit.conv1(torch.relu(unit.bn1(x))))))
    torch.testing.assert_close(unit(x), expected)
    assert (unit(x) < 0).any()  # no ReLU after the addition


def test_head_activation_before_add():
    unit = Bottleneck(8, 4, activation_after_add=False).eval()
    _randomize(unit)
    x = torch.randn(2, 8, 6, 6)
    residual = torch.relu(unit.bn3(unit.conv3(torch.relu(unit.bn2(unit.conv2(torch.relu(unit.bn1(unit.conv1(x)))))))))
    torch.testing.assert_close(unit(x), residual + unit.downsample(x))


def _released_stage_forward(stage):
    """A stage's forward as the released HRSNet notebooks write it (their Stage2/3/4.forward),
    on our modules: the stage input kept as ``residual`` (a Python list of branch tensors), three
    modules, ``x = x + residual`` (two lists: concatenation, not addition), the fourth module,
    which reads only the first entries (one per branch)."""

    def forward(x):
        residual = x
        for module in list(stage)[:-1]:
            x = module(x)
        x = x + residual
        return stage[-1](x)

    return forward


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_hrsnet_computes_what_the_released_code_computes(mode):
    """hrsnet is the network behind the published HRSNet numbers: with the same weights its logits
    equal, exactly, those of the released stage forward and of the report's HRNet config with 4
    modules per stage; hrsnet_skip (the text's stage skip) computes something else."""
    torch.manual_seed(0)
    released = create_model("hrsnet_skip", width=2, num_classes=10)
    _randomize(released)
    for stage in (released.stage2, released.stage3, released.stage4):
        stage.forward = _released_stage_forward(stage)
    ours = create_model("hrsnet", width=2, num_classes=10)
    text = create_model("hrsnet_skip", width=2, num_classes=10)
    hrnet_444 = create_model("hrnet", width=2, num_classes=10, modules_per_stage=(4, 4, 4))
    assert model_config("hrsnet", 2, 10) == model_config("hrnet", 2, 10, modules_per_stage=(4, 4, 4))
    x = torch.randn(4, 3, 64, 64)
    logits = {}
    for name, model in (("released", released), ("ours", ours), ("text", text), ("hrnet_444", hrnet_444)):
        model.load_state_dict(released.state_dict())
        model.train(mode == "train")
        with torch.no_grad():
            logits[name] = model(x)
    assert torch.equal(logits["ours"], logits["released"])
    assert torch.equal(logits["ours"], logits["hrnet_444"])
    assert (logits["text"] - logits["ours"]).abs().max() > 1e-3


def test_stage_skip_feeds_last_module():
    model = create_model("hrsnet_skip", width=2).eval()
    _randomize(model)
    stage = model.stage3
    seen = {}
    stage.register_forward_pre_hook(lambda m, args: seen.__setitem__("stage_in", [t.clone() for t in args[0]]))
    stage[2].register_forward_hook(lambda m, args, out: seen.__setitem__("third_out", [t.clone() for t in out]))
    stage[3].register_forward_pre_hook(lambda m, args: seen.__setitem__("last_in", [t.clone() for t in args[0]]))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    for stage_in, third_out, last_in in zip(seen["stage_in"], seen["third_out"], seen["last_in"]):
        torch.testing.assert_close(last_in, third_out + stage_in)
    # Without the skip (hrsnet), the last module sees the third module's output alone.
    assert not create_model("hrsnet", width=2).stage3.stage_skip


def test_config_differences_table():
    rows = {row["field"]: row for row in config_differences()}
    assert rows["unit"]["hrnet_official"] == "basic" and rows["unit"]["hrsnet"] == "preact"
    assert rows["stage_skip"]["hrsnet"] is False and rows["stage_skip"]["hrsnet_skip"] is True


# --- errors: raised at construction (or first forward), naming the argument ---------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="resnet50"), "valid names: hrnet_official, hrnet, hrsnet, hrsnet_skip"),
        (dict(name="hrnet", width=0), "width must be an integer >= 1"),
        (dict(name="hrnet", width=2.5), "width must be an integer >= 1"),
        (dict(name="hrnet", width=True), "width must be an integer >= 1"),
        (dict(name="hrnet", num_classes=0), "num_classes must be an integer >= 1"),
        (dict(name="hrnet", unit="dense"), "unit must be one of 'basic', 'preact'"),
        (dict(name="hrnet", modules_per_stage=(1, 4)), "modules_per_stage must be three integers"),
        (dict(name="hrnet", stage_skip=True), "stage_skip needs at least 2 modules"),
        (dict(name="hrnet", dropout=0.1), "unknown model option"),
    ],
)
def test_construction_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model(**kwargs)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(1, 3, 31, 64), "height and width must be >= 32, got 31x64"),
        (torch.randn(3, 64, 64), "4-D float tensor"),
        (torch.randn(1, 1, 64, 64), "3 channels"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float tensor"),
        ([1, 2, 3], "torch.Tensor"),
    ],
)
def test_input_errors(x, match):
    model = create_model("hrnet", width=1)
    with pytest.raises(ValueError, match=match):
        model(x)


def test_config_is_frozen_and_round_trips():
    config = create_model("hrsnet", width=2).config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.width = 3
    assert HRNetConfig(**{**config.to_dict(), "modules_per_stage": [4, 4, 4]}) == config


def test_summary_counts_match_the_model():
    result = summary("hrsnet", width=2, image_size=64, num_classes=100)
    model = create_model("hrsnet", width=2, num_classes=100)
    assert result.parameters == result.trainable_parameters == sum(p.numel() for p in model.parameters())
    assert result.forward_flops > 0
    # Four times the pixels, (almost exactly) four times the conv FLOPs.
    bigger = summary("hrsnet", width=2, image_size=128, num_classes=100)
    assert 3.9 < bigger.forward_flops / result.forward_flops < 4.1
