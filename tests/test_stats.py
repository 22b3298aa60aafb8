"""hrsnet.stats on hand-made run records whose answers are known."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from hrsnet.analysis import stats
from hrsnet.rundir import RunStatus

NETWORKS = ("hrnet_official", "hrnet", "hrsnet")
# Our counts (README), where no single C fits both claims.
ARCHITECTURE = pd.DataFrame(
    {
        "network": ["hrnet"] * 3 + ["hrsnet"] * 3,
        "C": [2, 18, 30] * 2,
        "parameters (M)": [10.15, 20.29, 38.18, 10.18, 23.07, 45.88],
    }
)


@dataclass
class Record:
    arch: str
    width: int
    seed: int
    status: RunStatus
    history: pd.DataFrame
    test_metrics: dict | None
    run_id: str = field(default="")


def make_run(
    arch: str,
    width: int,
    seed: int,
    final_loss: float = 1.0,
    top1: float = 0.5,
    state: str = "complete",
    epochs: int = 4,
    train_loss=None,
    val_loss=None,
) -> Record:
    """A run whose training loss falls to ``final_loss`` and whose last model has test top-1 ``top1``."""
    epoch = np.arange(1, epochs + 1)
    train = np.asarray(train_loss, float) if train_loss is not None else final_loss + 0.2 * (epochs - epoch)
    val = np.asarray(val_loss, float) if val_loss is not None else 1.5 + 0.0 * epoch
    history = pd.DataFrame(
        {
            "epoch": epoch,
            "train_loss": train,
            "train_acc": 0.5,
            "val_loss": val,
            "val_acc": 0.5,
            "lr": 0.005,
            "epoch_seconds": 1.0,
            "images_per_second": 100.0,
        }
    )
    last = None if state == "diverged" else {"top1": top1, "top5": min(1.0, top1 + 0.3), "loss": 1.2, "epoch": epochs}
    best = {"top1": top1 + 0.01, "top5": min(1.0, top1 + 0.31), "loss": 1.1, "epoch": max(1, epochs - 1)}
    metrics = None if state in ("running", "failed") else {"last": last, "best": best}
    return Record(arch, width, seed, RunStatus(state), history, metrics, f"{arch}-c{width}-s{seed}")


def claim(claims: pd.DataFrame, starts: str) -> pd.Series:
    rows = claims[claims["claim"].str.startswith(starts)]
    assert len(rows) == 1, starts
    return rows.iloc[0]


def summary_row(summary: pd.DataFrame, network: str, width: int, metric: str) -> pd.Series:
    rows = summary[(summary["network"] == network) & (summary["C"] == width) & (summary["metric"] == metric)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_interval_contains_true_mean_and_has_the_t_width():
    rng = np.random.default_rng(20240601)
    values = rng.normal(0.6, 0.05, 8)
    runs = [make_run("hrnet", 2, seed, top1=value) for seed, value in enumerate(values)]
    row = summary_row(stats.summary_table(runs), "hrnet", 2, "top1_last")
    sd = values.std(ddof=1)
    assert row["n"] == 8
    assert row["mean"] == pytest.approx(values.mean()) and row["sd"] == pytest.approx(sd)
    assert row["ci_low"] < 0.6 < row["ci_high"]
    # Student t with 7 degrees of freedom (2.365), not the normal 1.96
    assert row["ci_high"] - row["ci_low"] == pytest.approx(2 * 2.3646242510102993 * sd / math.sqrt(8), rel=1e-9)
    assert (row["ci_low"] + row["ci_high"]) / 2 == pytest.approx(values.mean())

    # three values by hand: mean 0.75, sd 0.05, t(0.975, 2) = 4.3027
    interval = stats.mean_ci([0.70, 0.75, 0.80, math.nan])
    assert interval.n == 3
    assert (interval.low, interval.high) == pytest.approx((0.75 - 0.124207, 0.75 + 0.124207), abs=1e-6)


def test_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    draws = rng.normal(3.0, 2.0, (1000, 5))
    covered = np.mean([interval.low < 3.0 < interval.high for interval in map(stats.mean_ci, draws)])
    assert covered == pytest.approx(0.95, abs=0.025)  # a normal-quantile interval covers about 0.88 at n=5


def test_verdict_rule():
    assert stats.verdict(True, False, 5) == "supported"
    assert stats.verdict(False, True, 5) == "contradicted"
    assert stats.verdict(False, False, 5) == "not decided (5 seeds)"
    assert stats.verdict(True, False, 1) == "not decided (1 seed)"
    assert stats.verdict(False, True, None) == "contradicted"
    with pytest.raises(ValueError):
        stats.verdict(True, True, 5)


def paired_runs(loss_shift: float, accuracy_shift: float, seeds=range(5), widths=(2, 8), noise_seed: int = 0):
    """HRNet and HRSNet per seed and C; HRSNet's final loss and top-1 shifted from HRNet's by the given amounts."""
    rng = np.random.default_rng(noise_seed)
    runs = []
    for seed in seeds:
        for width in widths:
            loss, top1 = 0.5 + 0.3 * seed + 0.1 * width, 0.4 + 0.05 * seed
            runs.append(make_run("hrnet", width, seed, loss, top1))
            runs.append(
                make_run(
                    "hrsnet",
                    width,
                    seed,
                    loss + loss_shift + rng.normal(0, 0.01),
                    top1 + accuracy_shift + rng.normal(0, 0.005),
                )
            )
    return runs


def test_lower_loss_supported_and_reversed_accuracy_contradicted():
    runs = paired_runs(loss_shift=-0.1, accuracy_shift=-0.05)
    claims = stats.claims_table(runs, ARCHITECTURE)
    lower = claim(claims, "HRSNet's training loss is lower")
    assert lower["verdict"] == "supported" and lower["n"] == 5
    assert lower["ci_high"] < 0 and lower["value"] == pytest.approx(-0.1, abs=0.01)
    accurate = claim(claims, "HRSNet is more accurate")
    assert accurate["verdict"] == "contradicted" and accurate["ci_high"] < 0
    assert accurate["value"] == pytest.approx(-0.05, abs=0.005)

    paired = stats.paired_differences(runs)
    row = paired[
        (paired["comparison"] == "HRSNet - HRNet") & (paired["C"] == 2) & (paired["metric"] == "final_train_loss")
    ].iloc[0]
    table = stats.run_table(runs)
    hrsnet = table[(table["network"] == "hrsnet") & (table["C"] == 2)].set_index("seed")["final_train_loss"]
    hrnet = table[(table["network"] == "hrnet") & (table["C"] == 2)].set_index("seed")["final_train_loss"]
    assert row["n_pairs"] == 5 and row["mean_difference"] == pytest.approx((hrsnet - hrnet).mean())
    assert row["p_ttest"] == pytest.approx(scipy_stats.ttest_rel(hrsnet, hrnet).pvalue)
    assert row["p_wilcoxon"] == pytest.approx(2 / 32)  # exact: all five differences negative

    flipped = stats.claims_table(paired_runs(loss_shift=0.1, accuracy_shift=0.05), ARCHITECTURE)
    assert claim(flipped, "HRSNet's training loss is lower")["verdict"] == "contradicted"
    assert claim(flipped, "HRSNet is more accurate")["verdict"] == "supported"


def test_pairing_uses_the_seed_not_the_order():
    runs = paired_runs(loss_shift=-0.1, accuracy_shift=0.0, widths=(2,), seeds=range(1, 6))
    # HRNet's losses differ a lot between seeds, and HRNet alone has seed 0: pairing by position
    # (in the given order or in seed order) would mix them up
    runs.append(make_run("hrnet", 2, 0, final_loss=0.2))
    random.Random(3).shuffle(runs)
    paired = stats.paired_differences(runs)
    row = paired[(paired["comparison"] == "HRSNet - HRNet") & (paired["metric"] == "final_train_loss")].iloc[0]
    assert row["seeds"] == "1 2 3 4 5" and row["n_pairs"] == 5
    assert row["mean_difference"] == pytest.approx(-0.1, abs=0.01) and row["sd"] < 0.02
    assert claim(stats.claims_table(runs, ARCHITECTURE), "HRSNet's training loss is lower")["verdict"] == "supported"

    # a seed present on one side only is not paired
    lonely = runs + [make_run("hrsnet", 2, 99, final_loss=50.0)]
    row = stats.paired_differences(lonely).query("metric == 'final_train_loss' and comparison == 'HRSNet - HRNet'")
    assert row["n_pairs"].iloc[0] == 5 and row["seeds"].iloc[0] == "1 2 3 4 5"


def test_one_seed_decides_nothing():
    runs = [make_run(arch, width, 0, 1.0 - 0.1 * index, 0.5) for index, arch in enumerate(NETWORKS) for width in (2, 8)]
    claims = stats.claims_table(runs, ARCHITECTURE)
    seeded = claims[~claims["claim"].str.startswith("About 13M")]
    assert (seeded["verdict"] == "not decided (1 seed)").all()
    assert (seeded["n"] == 1).all() and seeded["ci_low"].isna().all() and seeded["ci_high"].isna().all()
    assert seeded["value"].notna().all()
    summary = stats.summary_table(runs)
    assert (summary["n"] == 1).all() and summary[["sd", "ci_low", "ci_high"]].isna().all().all()
    paired = stats.paired_differences(runs)
    assert paired[["ci_low", "ci_high", "p_ttest", "p_wilcoxon"]].isna().all().all()


def test_unfinished_runs_are_left_out_and_counted():
    runs = [make_run("hrnet", 2, seed, top1=top1) for seed, top1 in enumerate([0.5, 0.6, 0.7])]
    runs += [
        make_run("hrnet", 2, 3, top1=0.0, state="running"),
        make_run("hrnet", 2, 4, top1=0.0, state="failed"),
        make_run("hrnet", 2, 5, top1=0.9, state="diverged", train_loss=[2.0, 1.0, math.nan, math.nan]),
    ]
    summary = stats.summary_table(runs)
    top1 = summary_row(summary, "hrnet", 2, "top1_last")
    assert (top1["finished"], top1["unfinished"]) == (4, 2)
    assert "1 running" in top1["unfinished_states"] and "1 failed" in top1["unfinished_states"]
    assert top1["n"] == 3 and top1["mean"] == pytest.approx(0.6)  # the diverged run has no last model
    assert summary_row(summary, "hrnet", 2, "top1_best")["n"] == 4  # but it has a best one
    loss = summary_row(summary, "hrnet", 2, "final_train_loss")
    assert loss["n"] == 3  # its last epoch's loss is NaN: left out, not replaced by an earlier one
    table = stats.run_table(runs)
    assert len(table) == 6 and table["finished"].sum() == 4
    assert "1 running" in stats.summary_markdown(summary)

    band = stats.curve_band(runs, "hrnet", 2, "train_loss")
    assert list(band["n"]) == [4, 4, 3, 3]  # running and failed runs are not drawn; NaN epochs not counted

    # nor paired, nor in a claim: HRSNet finished at seeds 0 to 2 only
    runs += [make_run("hrsnet", 2, seed, final_loss=0.5) for seed in range(3)]
    runs += [make_run("hrsnet", 2, seed, final_loss=0.5, state="running") for seed in (3, 4)]
    paired = stats.paired_differences(runs).query("metric == 'final_train_loss'").iloc[0]
    assert paired["n_pairs"] == 3 and paired["seeds"] == "0 1 2"
    assert claim(stats.claims_table(runs, ARCHITECTURE), "HRSNet's training loss is lower")["n"] == 3


def test_duplicate_finished_runs_are_refused():
    runs = [make_run("hrnet", 2, 0), make_run("hrnet", 2, 0)]
    with pytest.raises(ValueError, match="seed 0"):
        stats.summary_table(runs)


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
    closes = claim(stats.claims_table(gap_runs(0.3, 0.02), ARCHITECTURE), "The gap closes")
    assert closes["verdict"] == "supported" and closes["value"] == pytest.approx(0.28, abs=0.02)
    assert "C=2" in closes["statistic"] and "C=18" in closes["statistic"]
    opens = claim(stats.claims_table(gap_runs(0.02, 0.3), ARCHITECTURE), "The gap closes")
    assert opens["verdict"] == "contradicted"
    one_width = claim(stats.claims_table(gap_runs(0.3, 0.3, widths=(2,)), ARCHITECTURE), "The gap closes")
    assert one_width["verdict"].startswith("not decided") and "two widths" in one_width["note"]


def test_preactivation_claim():
    runs = []
    for seed in range(4):
        for width in (2, 8):
            runs.append(make_run("hrnet_official", width, seed, 1.0 + 0.1 * seed))
            runs.append(make_run("hrnet", width, seed, 0.8 + 0.1 * seed + 0.01 * (seed % 2)))
    row = claim(stats.claims_table(runs, ARCHITECTURE), "The pre-activated HRNet")
    assert row["verdict"] == "supported" and row["value"] == pytest.approx(-0.195)


def test_last_half_slopes():
    history = pd.DataFrame(
        {"epoch": [1, 2, 3, 4, 5, 6], "train_loss": [3, 2, 1.5, 1.2, 1.0, 0.8], "val_loss": [5, 4, 3, 1, 1.5, 2]}
    )
    assert stats.last_half_slopes(history) == pytest.approx((0.5, -0.2))  # epochs 4 to 6
    three = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3, 2, 1.5], "val_loss": [1, 2, 4]})
    assert stats.last_half_slopes(three) == pytest.approx((2.0, -0.5))  # at least 2 epochs: 2 and 3
    diverged = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3, 2, math.nan], "val_loss": [1, 2, math.nan]})
    assert stats.last_half_slopes(diverged) == pytest.approx((1.0, -1.0))
    assert all(math.isnan(s) for s in stats.last_half_slopes(diverged.head(1)))


def overfitting_runs(val_slope: float, seeds=range(4)):
    rng = np.random.default_rng(2)
    epochs = np.arange(1, 7)
    runs = []
    for seed in seeds:
        for arch in NETWORKS:
            runs.append(make_run(arch, 2, seed, epochs=6, val_loss=2.0 - 0.1 * epochs))  # not the largest C
            val = 1.0 + val_slope * epochs + rng.normal(0, 0.005, 6)
            train = 2.0 - 0.15 * epochs + rng.normal(0, 0.005, 6)
            runs.append(make_run(arch, 8, seed, epochs=6, train_loss=train, val_loss=val))
    return runs


def test_overfitting_claim():
    rises = claim(stats.claims_table(overfitting_runs(0.05), ARCHITECTURE), "Validation loss rises")
    assert rises["verdict"] == "supported" and rises["n"] == 4
    assert rises["value"] == pytest.approx(0.05, abs=0.01) and rises["ci_low"] > 0
    assert "C=8" in rises["statistic"] and "training-loss slope -0.15" in rises["note"]
    falls = claim(stats.claims_table(overfitting_runs(-0.05), ARCHITECTURE), "Validation loss rises")
    assert falls["verdict"] == "contradicted"


def test_parameter_claim():
    ours = claim(stats.claims_table([], ARCHITECTURE), "About 13M")
    assert ours["verdict"] == "contradicted" and pd.isna(ours["n"]) and pd.isna(ours["ci_low"])
    assert ours["value"] == pytest.approx(45.88 / 38.18) and "1.00x to 1.20x" in ours["note"]
    fits = pd.DataFrame(
        {
            "network": ["hrnet", "hrnet", "hrsnet", "hrsnet"],
            "C": [2, 30, 2, 30],
            "parameters (M)": [10.0, 13.9, 11.0, 40.0],
        }
    )
    row = claim(stats.claims_table([], fits), "About 13M")
    assert row["verdict"] == "supported" and "C=30" in row["note"]
    # 13M and 43M, but at different widths: not "at the same C"
    apart = pd.DataFrame(
        {
            "network": ["hrnet", "hrnet", "hrsnet", "hrsnet"],
            "C": [2, 30, 2, 30],
            "parameters (M)": [13.0, 60.0, 20.0, 43.0],
        }
    )
    assert claim(stats.claims_table([], apart), "About 13M")["verdict"] == "contradicted"


def test_curve_band_over_runs_of_different_lengths():
    runs = [
        make_run("hrsnet", 8, seed, epochs=epochs, val_loss=np.full(epochs, float(seed)))
        for seed, epochs in enumerate([3, 4, 5])
    ]
    band = stats.curve_band(runs, "hrsnet", 8, "val_loss")
    assert list(band["epoch"]) == [1, 2, 3, 4, 5] and list(band["n"]) == [3, 3, 3, 2, 1]
    assert band["mean"].tolist() == pytest.approx([1, 1, 1, 1.5, 2])
    assert math.isnan(band["ci_low"].iloc[-1]) and band["ci_low"].iloc[0] < 1 < band["ci_high"].iloc[0]
    assert stats.curve_band(runs, "hrnet", 8, "val_loss").empty


def test_write_statistics(tmp_path):
    runs = [
        make_run(arch, 2, seed, 1.0, top1)
        for arch in ("hrnet", "hrsnet")
        for seed, top1 in enumerate([0.70, 0.75, 0.80])
    ]
    paths = stats.write_statistics(runs, tmp_path / "stats", ARCHITECTURE)
    names = {"summary.csv", "summary.md", "paired.csv", "paired.md", "claims.csv", "claims.md"}
    assert set(paths) == names and {path.name for path in (tmp_path / "stats").iterdir()} == names
    summary_md = paths["summary.md"].read_text()
    assert "75.0% [62.6, 87.4]" in summary_md  # t(0.975, 2) * 0.05 / sqrt(3) = 12.4 points
    summary = pd.read_csv(paths["summary.csv"])
    assert summary_row(summary, "hrnet", 2, "top1_last")["mean"] == pytest.approx(0.75)  # raw fraction
    assert "not decided (3 seeds)" in paths["claims.md"].read_text()  # equal losses: interval [0, 0] decides nothing
    claims = pd.read_csv(paths["claims.csv"])
    assert list(claims.columns[:8]) == ["claim", "statistic", "value", "ci_low", "ci_high", "n", "verdict", "note"]
    assert "+0.0 pp [0.0, 0.0]" in paths["paired.md"].read_text()
