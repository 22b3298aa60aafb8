"""docs/your-dataset.md, docs/adding-a-network.md and examples/imagefolder.toml agree with the code,
and their examples run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

from hrsnet import data
from hrsnet.data import load_dataset
from hrsnet.models import PRESETS, Preset
from hrsnet.models.pretrained import TIMM_WEIGHTS, allowed_inits
from hrsnet.profiles import load_profile, profile_runs
from hrsnet.rundir import format_bytes

REPO = Path(__file__).resolve().parents[1]
YOUR_DATASET = REPO / "docs" / "your-dataset.md"
ADDING_A_NETWORK = REPO / "docs" / "adding-a-network.md"
EXAMPLE_PROFILE = REPO / "examples" / "imagefolder.toml"


def code_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), re.DOTALL)


def test_your_dataset_names_what_the_code_does():
    text = " ".join(YOUR_DATASET.read_text().split())
    for name, spec in data.DATASET_SPECS.items():
        assert f"| `{name}` |" in YOUR_DATASET.read_text(), name
        if spec.data_dir.endswith("/") and "(" not in spec.data_dir:
            assert f"`{spec.data_dir}`" in text, name
    assert ", ".join(f"`{extension}`" for extension in data.IMAGE_EXTENSIONS[:-1]) in text
    assert f"or `{data.IMAGE_EXTENSIONS[-1]}`" in text
    assert f"{data.HELD_OUT_TEST_FRACTION:.0%} of each class of `train/`" in text
    assert f"fixed seed ({data.HELD_OUT_TEST_SEED}" in text
    assert allowed_inits().replace("hrnet_official at ", "") in text
    assert all(f"`{name}`" in text for name in ("hrnet_w18", "hrnet_w64")) and len(TIMM_WEIGHTS) == 1
    # The memory figures: what dataset_bytes counts and format_bytes prints.
    assert f"at 224x224 take {format_bytes(10_000 * 3 * 224 * 224)}" in text
    assert f"at 64x64 {format_bytes(10_000 * 3 * 64 * 64)}" in text
    assert f"needs about {format_bytes(120_000 * (3 * 224 * 224 + 8))} of memory" in text
    assert data.CACHE_FOLDER in text and "<split>_<size>_<hash>.pt" in text


def test_your_dataset_example_folder_loads(tmp_path):
    (write_images,) = [block for block in code_blocks(YOUR_DATASET, "bash") if "load_digits" in block]
    script = write_images.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=300)
    splits = load_dataset("imagefolder", tmp_path / "my_images", image_size=32)
    assert splits.class_names == [f"digit_{label}" for label in range(10)]
    assert (len(splits.train) + len(splits.val), len(splits.test)) == (1437, 360)
    assert splits.details["converted_to_rgb"] == {"L": 1797}
    commands = " ".join(write_images.split("\nPY\n", 1)[1].split())
    assert "--dataset imagefolder --data-dir my_images" in commands
    assert "--profile examples/imagefolder.toml --data-dir my_images" in commands


def test_the_example_profile_compares_the_three_networks_on_an_image_folder(tmp_path):
    profile = load_profile(EXAMPLE_PROFILE)
    assert profile.networks == ("hrnet_official", "hrnet", "hrsnet")
    assert profile.settings["dataset"] == "imagefolder" and "data_dir" not in profile.settings
    named = {n for item in (*profile.comparisons, *profile.claims, *profile.figures) for n in item.networks}
    assert named <= set(profile.networks)
    runs = profile_runs(profile, tmp_path, data_dir=tmp_path / "images")
    assert len(runs) == len(profile.networks) * len(profile.widths) * len(profile.seeds)
    assert all(run.dataset == "imagefolder" and run.data_dir == str(tmp_path / "images") for run in runs)
    text = " ".join(YOUR_DATASET.read_text().split())
    assert f"{len(runs) // len(profile.seeds)} runs; the profile's own {len(profile.seeds)} seeds make {len(runs)}" in (
        text
    )
    assert f'cost = "{len(runs)} runs;' in EXAMPLE_PROFILE.read_text()


def test_a_data_dir_in_a_profile_is_relative_to_the_profile_file(tmp_path):
    (tmp_path / "profiles").mkdir()
    path = tmp_path / "profiles" / "mine.toml"
    path.write_text(f'base = "{EXAMPLE_PROFILE}"\n[settings]\ndata_dir = "../images"\n')
    assert load_profile(path).settings["data_dir"] == str(tmp_path / "images")


def test_adding_a_network_examples_run(tmp_path, monkeypatch, capsys):
    (toml,) = code_blocks(ADDING_A_NETWORK, "toml")
    (python,) = code_blocks(ADDING_A_NETWORK, "python")[1:]  # the first is the registry.py excerpt
    preset = re.search(r'PRESETS\["hrnet_deep3"\] = (Preset\(.*\))\n', python).group(1)
    monkeypatch.setitem(PRESETS, "hrnet_deep3", eval(preset, {"Preset": Preset}))
    (tmp_path / "my_networks.toml").write_text(toml)
    profile = load_profile(tmp_path / "my_networks.toml")
    assert profile.networks == ("hrnet", "hrnet_deep3") and len(profile_runs(profile, tmp_path)) == 2
    # The script as a user runs it, offline, in a folder of its own: in this process (a fresh namespace,
    # so it must import what it uses; its PRESETS entry goes again after the test), on one thread.
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(python, str(ADDING_A_NETWORK), "exec"), {"__name__": "__main__"})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "hrnet_deep3_c1_digits32_" in out and " complete " in out
    assert [path.name.split("_digits")[0] for path in (tmp_path / "results" / "runs").iterdir()] == ["hrnet_deep3_c1"]
