"""The README's findings block and the committed reference outputs it is made from."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from fixture_runs import write_fixture_run

from hrsnet import profiles as experiments
from hrsnet.analysis import figures as plots
from hrsnet.analysis import report as pages

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "reference" / "quick"
ARCHITECTURE = pd.DataFrame(
    {
        "network": ["hrnet", "hrnet", "hrsnet", "hrsnet"],
        "C": [2, 30, 2, 30],
        "parameters (M)": [10.15, 38.2, 10.18, 45.9],
    }
)


def test_readme_findings_block_is_made_from_the_committed_reference():
    """The block between the README's findings markers is readme_findings(reference/quick): no number
    in it is typed by hand (`python -m hrsnet.analysis.report` rewrites both from a quick run)."""
    block = pages.readme_block((REPO / "README.md").read_text())
    assert block == pages.readme_findings(REFERENCE)


def test_the_committed_reference_is_complete():
    """reference/quick holds what readme_findings reads, and every figure figures.json names."""
    saved = json.loads((REFERENCE / "figures.json").read_text())
    assert saved["profile"] == "quick" and saved["header"]["dataset"].startswith("sklearn digits")
    for name in saved["figures"]:
        assert (REFERENCE / name).stat().st_size > 5000, name
    claims = pd.read_csv(REFERENCE / "claims.csv")
    assert {"claim", "value", "ci_low", "ci_high", "verdict", "unit"} <= set(claims.columns)
    block = pages.readme_findings(REFERENCE)
    for claim in claims["claim"]:
        assert claim in block


def _fake_readme(path: Path) -> Path:
    path.write_text("# A title\n\nBefore.\n\n<!-- findings:start -->\nold\n<!-- findings:end -->\n\nAfter.\n")
    return path


@pytest.fixture
def small_figures(monkeypatch):
    """save_figure as it is (PNG, and the PDF where asked for), at a low resolution: every figure is still
    drawn and written, in a fraction of the time."""
    save_figure = plots.save_figure

    def save_small(fig, path_without_suffix, pdf=True):
        with matplotlib.rc_context({"savefig.dpi": 30}):
            return save_figure(fig, path_without_suffix, pdf)

    monkeypatch.setattr(plots, "save_figure", save_small)


def test_write_reference_is_one_call(tmp_path, monkeypatch, small_figures):
    """write_reference makes reference/<profile>/ (PNG figures, tables, claims, report.md) from a results
    folder and rewrites only the README's findings block, which then equals readme_findings of it."""
    results = tmp_path / "results"
    for config in experiments.profile_runs("smoke", results):
        write_fixture_run(config, "complete", 3, num_classes=4, top1_last=0.5)
    monkeypatch.setattr(pages, "make_all_figures", _with_architecture(pages.make_all_figures))
    readme = _fake_readme(tmp_path / "README.md")
    report = pages.write_reference(results, "smoke", tmp_path / "reference", readme)
    folder = tmp_path / "reference" / "smoke"
    assert report.path == folder / "report.md" and (folder / "claims.csv").exists()
    assert not list(folder.glob("*.pdf")) and list(folder.glob("*.png"))
    text = readme.read_text()
    assert text.startswith("# A title\n\nBefore.\n\n<!-- findings:start -->\n") and text.endswith("\n\nAfter.\n")
    block = pages.readme_block(text)
    assert block == pages.readme_findings(folder, root=tmp_path)
    assert "[`reference/smoke/report.md`](reference/smoke/report.md)" in block
    assert "sklearn digits (not CIFAR-100) at 32x32" in block and "1 seed" in block
    report_text = report.path.read_text()
    assert "![fig7_train_loss](fig7_train_loss.png)" in report_text  # links relative to the folder


def _with_architecture(make):
    def make_all_figures(*args, **kwargs):
        kwargs["architecture"] = ARCHITECTURE
        return make(*args, **kwargs)

    return make_all_figures


def test_the_reference_command(tmp_path, monkeypatch, capsys, small_figures):
    results = tmp_path / "results"
    for config in experiments.profile_runs("smoke", results)[:2]:
        write_fixture_run(config, "complete", 2, num_classes=4)
    monkeypatch.setattr(pages, "make_all_figures", _with_architecture(pages.make_all_figures))
    readme = _fake_readme(tmp_path / "README.md")
    args = ["--results-dir", str(results), "--profile", "smoke", "--reference-dir", str(tmp_path / "ref")]
    assert pages.main([*args, "--readme", str(readme)]) == 0
    out = capsys.readouterr().out
    assert "report.md (2 finished runs, 2 missing or unreadable)" in out
    block = pages.readme_block(readme.read_text())
    assert "left out, no finished runs of" in block  # claims on networks without runs say why


def test_a_readme_without_markers_is_refused(tmp_path):
    with pytest.raises(ValueError, match="findings:start"):
        pages.replace_findings("# no markers\n", "block")
