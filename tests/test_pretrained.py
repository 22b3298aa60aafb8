"""--init timm: timm's ImageNet weights in hrnet_official, through the same code a run uses, offline.

The weights are a timm state dict saved to a local file; timm.create_model(pretrained=True) is
patched to read it (the download step), so everything after it runs as on a user's machine.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from hrsnet.config import TrainConfig
from hrsnet.data import load_dataset
from hrsnet.engine.trainer import Trainer
from hrsnet.models import create_model, pretrained
from hrsnet.models.pretrained import TIMM_WEIGHTS, PretrainedError

timm = pytest.importorskip("timm")


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights and BatchNorm statistics, so equal logits mean the weights were loaded."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(
                    torch.rand(tensor.shape, generator=generator) * 0.2 + 0.9
                    if tensor.dim() == 1
                    else torch.randn(tensor.shape, generator=generator) * 0.05
                )


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory):
    """timm's hrnet_w18 with random weights, its state dict saved to a file, and the network."""
    reference = timm.create_model("hrnet_w18", pretrained=False).eval()
    _randomize(reference)
    path = tmp_path_factory.mktemp("weights") / "hrnet_w18.pth"
    torch.save(reference.state_dict(), path)
    return path, reference


@pytest.fixture
def offline_timm(saved_weights, monkeypatch):
    """timm.create_model(..., pretrained=True) reads the saved file instead of downloading."""
    path, _ = saved_weights
    real_create_model = timm.create_model
    asked = []

    def create_model_from_file(name, pretrained=False, **kwargs):
        network = real_create_model(name, pretrained=False, **kwargs)
        if pretrained:
            asked.append(name)
            network.load_state_dict(torch.load(path, weights_only=True))
        return network

    monkeypatch.setattr(timm, "create_model", create_model_from_file)
    return asked


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    settings = dict(
        arch="hrnet_official",
        width=18,
        init="timm",
        dataset="digits",
        image_size=32,
        epochs=1,
        batch_size=16,
        train_subset=32,
        val_subset=16,
        test_subset=32,
        device="cpu",
        quiet=True,
        results_dir=str(tmp_path / "results"),
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    return ((actual.double() - reference.double()).norm() / reference.double().norm()).item()


def test_init_timm_gives_timms_logits(tmp_path, saved_weights, offline_timm):
    _, reference = saved_weights
    config = tiny_config(tmp_path)
    data = load_dataset("digits", train_subset=32, val_subset=16, test_subset=32)
    trainer = Trainer(config, data, torch.device("cpu"))  # what a run builds
    assert offline_timm == ["hrnet_w18"]  # through timm.create_model(..., pretrained=True)
    ours = trainer.model.eval()
    assert ours.classifier.out_features == 10  # replaced for the dataset's classes
    # Its classifier is the seed's random one, as without --init timm (loading draws no random numbers).
    torch.manual_seed(config.seed)
    random_start = create_model("hrnet_official", 18, 10)
    assert torch.equal(ours.classifier.weight, random_start.classifier.weight)
    # Everything else is timm's: with the same classifier, the same logits.
    reference.reset_classifier(10)
    reference.classifier.load_state_dict(ours.classifier.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = reference(x), ours(x.contiguous(memory_format=torch.channels_last))
    # Logits in the thousands (random BatchNorm statistics): float32 rounding is about 1e-7 of them.
    assert expected.abs().max() > 1e-2 and relative_error(actual, expected) < 1e-5
    with torch.no_grad():  # a random start does not give them
        assert relative_error(random_start.eval()(x), expected) > 1e-2

    # The run's config.json says where its weights came from.
    trainer.start()
    saved = json.loads((trainer.run_dir / "config.json").read_text())
    init = saved["init"]
    assert (init["init"], init["timm_model"], init["tag"], init["license"]) == (
        "timm",
        "hrnet_w18",
        "ms_aug_in1k",
        "mit",
    )
    assert init["hf_hub_id"] == "timm/hrnet_w18.ms_aug_in1k"
    assert init["replaced"] == ["classifier.weight", "classifier.bias"] and saved["identity"]["init"] == "timm"


def test_init_is_in_the_run_id_only_when_asked_for():
    base = TrainConfig(arch="hrnet_official", width=18)
    assert "init" not in base.identity()  # the default leaves every existing run id as it was
    assert TrainConfig(arch="hrnet_official", width=18, init="random").run_id == base.run_id
    assert TrainConfig(arch="hrnet_official", width=18, init="timm").run_id != base.run_id


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(arch="hrnet", width=18), "no ImageNet weights for hrnet at C=18"),
        (dict(arch="hrnet_official", width=2), "no ImageNet weights for hrnet_official at C=2"),
        (dict(arch="hrsnet", width=30), "no ImageNet weights for hrsnet at C=30"),
    ],
)
def test_other_networks_or_widths_are_one_line_naming_what_is_allowed(settings, message):
    with pytest.raises(ValueError) as error:
        TrainConfig(init="timm", **settings)
    text = str(error.value)
    assert message in text and "\n" not in text
    assert "hrnet_official at C = 18, 30, 32, 40, 44, 48 or 64" in text


def test_model_options_cannot_change_a_pretrained_network():
    with pytest.raises(ValueError, match=r"model options \(unit\) cannot be used with it"):
        TrainConfig(arch="hrnet_official", width=18, init="timm", model_options={"unit": "preact"})


def test_the_command_line_refuses_in_one_line(tmp_path, capsys):
    from hrsnet.__main__ import main

    code = main(["train", "--arch", "hrnet", "--width", "2", "--init", "timm", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "init timm: no ImageNet weights for hrnet at C=2" in err
    assert not (tmp_path / "runs").exists()


def test_without_timm_or_offline_one_line(monkeypatch):
    model = create_model("hrnet_official", width=18, num_classes=10)
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(PretrainedError) as error:
        pretrained.initialise(model, "timm", "hrnet_official", 18)
    assert "needs timm, which is not installed" in str(error.value) and "pip install" in str(error.value)
    monkeypatch.undo()

    def offline(name, pretrained=False, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PretrainedError) as error:
        pretrained.initialise(model, "timm", "hrnet_official", 18)
    text = str(error.value)
    assert "\n" not in text and "could not load the pretrained weights of hrnet_w18 (OSError" in text
    assert "Hugging Face" in text


def test_weights_that_do_not_fit_are_refused(monkeypatch):
    model = create_model("hrnet_official", width=18, num_classes=10)
    small = timm.create_model("hrnet_w18_small", pretrained=False).state_dict()
    monkeypatch.setattr(pretrained, "download_timm_state_dict", lambda name: (small, {"timm_model": name}))
    with pytest.raises(PretrainedError, match="timm's hrnet_w18 does not fit hrnet_official C=18"):
        pretrained.initialise(model, "timm", "hrnet_official", 18)


class _ShapesOnly(torch.overrides.TorchFunctionMode):
    """On meta tensors, random fills (torch.nn.init's, and normal_ and uniform_ themselves) return
    the tensor as it is: a fill sets values, never a shape, and torch's Python meta kernel of
    normal_ was most of a timm network's build time on the meta device."""

    FILLS = (torch.Tensor.normal_, torch.Tensor.uniform_)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        fill = func in self.FILLS or getattr(func, "__module__", None) == "torch.nn.init"
        if fill and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def test_the_timm_names_are_exactly_our_network_at_each_width():
    """Each name we load is hrnet_official at its C, tensor for tensor; the HRNet variants timm has
    and we leave out (the small ones, the ssld ones) are not it at any width."""

    def shapes(network):
        return {key: tuple(value.shape) for key, value in network.state_dict().items()}

    with torch.device("meta"), _ShapesOnly():
        ours = {width: shapes(create_model("hrnet_official", width, 1000)) for width in TIMM_WEIGHTS["hrnet_official"]}
        for width, name in TIMM_WEIGHTS["hrnet_official"].items():
            assert shapes(timm.create_model(name)) == ours[width], name
        for name in ("hrnet_w18_small", "hrnet_w18_small_v2", "hrnet_w18_ssld"):
            assert shapes(timm.create_model(name)) != ours[18], name
    weights = {name.split(".")[0] for name in timm.list_pretrained("hrnet_w*")}
    assert set(TIMM_WEIGHTS["hrnet_official"].values()) <= weights  # timm has weights for each


def test_a_failed_download_loses_no_files_of_a_forced_rerun(tmp_path, monkeypatch):
    """--force deletes a run's files only after its weights are in: offline, the old run stays."""
    from hrsnet import rundir
    from hrsnet.runs import fit

    config = tiny_config(tmp_path)
    run_dir = config.run_dir()
    run_dir.mkdir(parents=True)
    rundir.write_json(run_dir / rundir.TEST_METRICS_FILE, {"last": None, "best": None})
    rundir.write_status(run_dir, rundir.RunStatus("complete", "an earlier run"))

    def offline(name, pretrained=False, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PretrainedError, match="could not load the pretrained weights"):
        fit(config, force=True)
    assert rundir.read_status(run_dir).reason == "an earlier run"
    assert (run_dir / rundir.TEST_METRICS_FILE).exists()
