"""hrsnet.analysis.claims: one function per claim kind of the profiles, decided on runs with known answers."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
from test_stats import make_run, paired_runs

from hrsnet.analysis import claims as claim_rules
from hrsnet.analysis import stats
from hrsnet.profiles import CLAIM_KINDS, PROFILES, ClaimSpec

# Our counts (README), where no single C fits both claims.
ARCHITECTURE = pd.DataFrame(
    {
        "network": ["hrnet"] * 3 + ["hrsnet"] * 3,
        "C": [2, 18, 30] * 2,
        "parameters (M)": [10.15, 20.29, 38.18, 10.18, 23.07, 45.88],
    }
)
MAIN = ("hrsnet", "hrnet")


def decide(runs, *specs: ClaimSpec, architecture=ARCHITECTURE) -> pd.DataFrame:
    return claim_rules.claims_table(runs, specs, architecture)


def one(table: pd.DataFrame) -> pd.Series:
    assert len(table) == 1, table
    return table.iloc[0]


def test_one_function_and_one_text_per_claim_kind():
    """hrsnet.profiles.CLAIM_KINDS and claims.py agree: every kind has its function (named after it, with
    a docstring) and its text (the report's words quoted, a direction), and nothing else is there."""
    assert set(claim_rules.CLAIM_FUNCTIONS) == set(CLAIM_KINDS) == set(claim_rules.CLAIM_TEXTS)
    for kind, function in claim_rules.CLAIM_FUNCTIONS.items():
        assert function.__name__ == kind and inspect.getdoc(function)
        text = claim_rules.CLAIM_TEXTS[kind]
        assert text.direction in ("lower", "higher", "either", "fits") and len(text.quote) > 40
        assert "{a}" in text.statement or "{networks}" in text.statement
    for profile in PROFILES.values():  # every declared claim can be decided (or left out) without error
        table = claim_rules.claims_table([], profile.claims, ARCHITECTURE)
        assert len(table) >= len(profile.claims)


def test_lower_loss_supported_and_reversed_accuracy_contradicted():
    runs = paired_runs(loss_shift=-0.1, accuracy_shift=-0.05)
    lower = one(decide(runs, ClaimSpec("lower_loss_small_c", MAIN)))
    assert lower["verdict"] == "supported" and lower["n"] == 5 and lower["ci_high"] < 0
    assert lower["value"] == pytest.approx(-0.1, abs=0.01) and "C=2" in lower["statistic"]
    assert lower["p_better"] == 1.0 and lower["p_better_seeds"] == "5 of 5" and lower["seeds_needed"] == ""
    accurate = one(decide(runs, ClaimSpec("more_accurate", MAIN)))
    assert accurate["verdict"] == "contradicted" and accurate["value"] == pytest.approx(-0.05, abs=0.005)
    assert accurate["p_better"] == 0.0
    flipped = paired_runs(loss_shift=0.1, accuracy_shift=0.05)
    assert one(decide(flipped, ClaimSpec("lower_loss_small_c", MAIN)))["verdict"] == "contradicted"
    assert one(decide(flipped, ClaimSpec("more_accurate", MAIN)))["verdict"] == "supported"


def test_claims_read_the_released_training_loss():
    """The training-loss claims use train_loss_tail (what the notebooks plotted), not the epoch mean."""
    runs = []
    for seed in range(4):
        for arch, tail_shift in (("hrnet", 0.0), ("hrsnet", -0.3)):
            tail = [2.0 + 0.1 * seed + tail_shift, 1.0 + 0.1 * seed + tail_shift + 0.01 * (seed % 2)]
            runs.append(make_run(arch, 2, seed, train_loss=[2.0, 1.0], train_loss_tail=tail, epochs=2))
    row = one(decide(runs, ClaimSpec("lower_loss_small_c", MAIN)))
    assert row["verdict"] == "supported" and row["value"] == pytest.approx(-0.3, abs=0.01)


def test_a_second_reading_is_decided_for_its_own_networks():
    runs = paired_runs(loss_shift=-0.1, accuracy_shift=0.0)
    runs += [make_run("hrsnet_skip", r.width, r.seed, 5.0) for r in runs if r.arch == "hrnet"]  # far worse
    table = decide(
        runs,
        ClaimSpec("lower_loss_small_c", MAIN),
        ClaimSpec("lower_loss_small_c", ("hrsnet_skip", "hrnet"), "the text's HRSNet"),
    )
    assert table["main"].tolist() == [True, False] and table["reading"].tolist() == ["", "the text's HRSNet"]
    assert table["verdict"].tolist() == ["supported", "contradicted"]
    assert table["claim"].iloc[1].startswith("HRSNet with stage skip (the text) has a lower training loss")


def test_claims_without_finished_runs_are_left_out_with_why():
    runs = paired_runs(loss_shift=-0.1, accuracy_shift=0.0)
    table = decide(
        runs, ClaimSpec("more_accurate", ("hrsnet_skip", "hrnet")), ClaimSpec("differs", ("hrsnet_skip", "hrsnet"))
    )
    assert table["verdict"].tolist() == [claim_rules.LEFT_OUT] * 2
    assert table["note"].iloc[0] == "no finished runs of HRSNet with stage skip (the text)"
    lines = claim_rules.left_out_lines(table)
    assert len(lines) == 2 and all("left out, no finished runs of" in line for line in lines)
    markdown = claim_rules.claims_markdown(table)
    assert "(no claim could be decided" in markdown and lines[0] in markdown


def test_differs_is_two_sided_on_loss_and_accuracy():
    runs = []
    rng = np.random.default_rng(3)
    for seed in range(6):
        for width in (2, 8):
            base = 1.0 + 0.2 * seed
            runs.append(make_run("hrsnet", width, seed, base, 0.5 + 0.02 * seed))
            runs.append(make_run("hrsnet_skip", width, seed, base + 0.2 + rng.normal(0, 0.01), 0.5 + 0.02 * seed))
    table = decide(runs, ClaimSpec("differs", ("hrsnet_skip", "hrsnet"), "does the skip change anything?"))
    loss, accuracy = table.iloc[0], table.iloc[1]
    assert loss["claim"].endswith(": training loss") and accuracy["claim"].endswith(": test top-1")
    assert loss["verdict"] == "supported" and loss["value"] == pytest.approx(0.2, abs=0.01)  # higher: still a change
    assert accuracy["verdict"] == "not decided (6 seeds)" and accuracy["value"] == 0.0
    assert accuracy["seeds_needed"].startswith("no effect to detect")
    lower = [
        make_run(r.arch, r.width, r.seed, r.history["train_loss"].iloc[-1] - (0.4 if r.arch == "hrsnet_skip" else 0))
        for r in runs
    ]
    assert decide(lower, ClaimSpec("differs", ("hrsnet_skip", "hrsnet"))).iloc[0]["verdict"] == "supported"


def test_an_open_claim_says_how_many_seeds_would_decide_it():
    runs = []
    for seed, shift in enumerate([-0.3, 0.1, -0.2]):  # mean -0.133, sd 0.208: d = -0.64
        runs.append(make_run("hrnet", 2, seed, 1.0))
        runs.append(make_run("hrsnet", 2, seed, 1.0 + shift))
    row = one(decide(runs, ClaimSpec("lower_loss_small_c", MAIN)))
    assert row["verdict"] == "not decided (3 seeds)"
    expected = stats.seeds_needed([-0.3, 0.1, -0.2])
    assert row["seeds_needed"] == expected.text == f"about {expected.seeds}" and 10 < expected.seeds < 30
    assert row["effect_size"] == pytest.approx(expected.effect_size)
    assert claim_rules.per_seed_values(row) == pytest.approx({0: -0.3, 1: 0.1, 2: -0.2})


def test_one_seed_decides_nothing():
    runs = [make_run(arch, width, 0, 1.0 - 0.1 * index, 0.5) for index, arch in enumerate(MAIN) for width in (2, 8)]
    table = decide(runs, ClaimSpec("lower_loss_small_c", MAIN), ClaimSpec("more_accurate", MAIN))
    assert (table["verdict"] == "not decided (1 seed)").all() and table["ci_low"].isna().all()
    assert table["value"].notna().all()


def gap_runs(gap_small: float, gap_large: float, widths=(2, 8, 18), seeds=range(4)):
    rng = np.random.default_rng(1)
    runs = []
    for seed in seeds:
        for width in widths:
            middle = 0.5 * (gap_small + gap_large)
            gap = gap_small if width == min(widths) else gap_large if width == max(widths) else middle
            loss = 1.0 + 0.2 * seed
            runs.append(make_run("hrnet", width, seed, loss))
            runs.append(make_run("hrsnet", width, seed, loss - gap + rng.normal(0, 0.01)))
    return runs


def test_gap_closing_claim():
    closes = one(decide(gap_runs(0.3, 0.02), ClaimSpec("gap_closes", MAIN)))
    assert closes["verdict"] == "supported" and closes["value"] == pytest.approx(0.28, abs=0.02)
    assert "C=2" in closes["statistic"] and "C=18" in closes["statistic"]
    assert one(decide(gap_runs(0.02, 0.3), ClaimSpec("gap_closes", MAIN)))["verdict"] == "contradicted"
    one_width = one(decide(gap_runs(0.3, 0.3, widths=(2,)), ClaimSpec("gap_closes", MAIN)))
    assert one_width["verdict"].startswith("not decided") and "two widths" in one_width["note"]


def test_preactivation_claim():
    runs = []
    for seed in range(4):
        for width in (2, 8):
            runs.append(make_run("hrnet_official", width, seed, 1.0 + 0.1 * seed))
            runs.append(make_run("hrnet", width, seed, 0.8 + 0.1 * seed + 0.01 * (seed % 2)))
    row = one(decide(runs, ClaimSpec("lower_loss", ("hrnet", "hrnet_official"))))
    assert row["verdict"] == "supported" and row["value"] == pytest.approx(-0.195)
    assert row["claim"] == "HRNet (pre-activated) reaches a lower training loss than original HRNet"


def test_last_half_slopes():
    history = pd.DataFrame(
        {"epoch": [1, 2, 3, 4, 5, 6], "train_loss": [3, 2, 1.5, 1.2, 1.0, 0.8], "val_loss": [5, 4, 3, 1, 1.5, 2]}
    )
    assert claim_rules.last_half_slopes(history) == pytest.approx((0.5, -0.2))  # epochs 4 to 6
    three = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3, 2, 1.5], "val_loss": [1, 2, 4]})
    assert claim_rules.last_half_slopes(three) == pytest.approx((2.0, -0.5))  # at least 2 epochs: 2 and 3
    diverged = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3, 2, np.nan], "val_loss": [1, 2, np.nan]})
    assert claim_rules.last_half_slopes(diverged) == pytest.approx((1.0, -1.0))
    assert all(np.isnan(s) for s in claim_rules.last_half_slopes(diverged.head(1)))


def overfitting_runs(val_slope: float, seeds=range(4)):
    rng = np.random.default_rng(2)
    epochs = np.arange(1, 7)
    runs = []
    for seed in seeds:
        for arch in MAIN:
            runs.append(make_run(arch, 2, seed, epochs=6, val_loss=2.0 - 0.1 * epochs))  # not the largest C
            val = 1.0 + val_slope * epochs + rng.normal(0, 0.005, 6)
            train = 2.0 - 0.15 * epochs + rng.normal(0, 0.005, 6)
            runs.append(make_run(arch, 8, seed, epochs=6, train_loss=train, val_loss=val))
    return runs


def test_overfitting_claim():
    rises = one(decide(overfitting_runs(0.05), ClaimSpec("overfitting", MAIN)))
    assert rises["verdict"] == "supported" and rises["n"] == 4 and rises["ci_low"] > 0
    assert rises["value"] == pytest.approx(0.05, abs=0.01)
    assert "C=8" in rises["statistic"] and "training-loss slope -0.15" in rises["note"]
    assert np.isnan(rises["p_better"])  # not a comparison of two networks
    assert one(decide(overfitting_runs(-0.05), ClaimSpec("overfitting", MAIN)))["verdict"] == "contradicted"


def test_parameter_claim():
    spec = ClaimSpec("parameters", ("hrnet", "hrsnet"))
    ours = one(decide([], spec))
    assert ours["verdict"] == "contradicted" and pd.isna(ours["n"]) and pd.isna(ours["ci_low"])
    assert ours["value"] == pytest.approx(45.88 / 38.18) and "1.00x to 1.20x" in ours["note"]
    fits = pd.DataFrame(
        {
            "network": ["hrnet", "hrnet", "hrsnet", "hrsnet"],
            "C": [2, 30, 2, 30],
            "parameters (M)": [10.0, 13.9, 11.0, 40.0],
        }
    )
    row = one(decide([], spec, architecture=fits))
    assert row["verdict"] == "supported" and "C=30" in row["note"]
    apart = pd.DataFrame(  # 13M and 43M, but at different widths: not "at the same C"
        {
            "network": ["hrnet", "hrnet", "hrsnet", "hrsnet"],
            "C": [2, 30, 2, 30],
            "parameters (M)": [13.0, 60.0, 20.0, 43.0],
        }
    )
    assert one(decide([], spec, architecture=apart))["verdict"] == "contradicted"


def test_write_claims(tmp_path):
    runs = paired_runs(loss_shift=-0.1, accuracy_shift=0.0)
    table = decide(runs, ClaimSpec("lower_loss_small_c", MAIN), ClaimSpec("parameters", ("hrnet", "hrsnet")))
    paths = claim_rules.write_claims(table, tmp_path)
    saved = pd.read_csv(paths["claims.csv"])
    assert list(saved.columns) == claim_rules.CLAIM_COLUMNS and len(saved) == 2
    text = paths["claims.md"].read_text()
    assert "P(A better) [95% CI]" in text and "seeds to decide" in text and "1.20x" in text
