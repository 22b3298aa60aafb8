"""hrsnet.analysis.stats on hand-made run records and hand-computed cases."""

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

T_975_2 = 4.302652729911275  # Student t quantile, 0.975, 2 degrees of freedom (tables: 4.303)


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
    train_loss_tail=None,
    best_top1: float | None = None,
) -> Record:
    """A run whose training loss falls to ``final_loss`` and whose last model has test top-1 ``top1``;
    the released loss (train_loss_tail) is the epoch mean unless given."""
    epoch = np.arange(1, epochs + 1)
    train = np.asarray(train_loss, float) if train_loss is not None else final_loss + 0.2 * (epochs - epoch)
    val = np.asarray(val_loss, float) if val_loss is not None else 1.5 + 0.0 * epoch
    tail = np.asarray(train_loss_tail, float) if train_loss_tail is not None else train
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
            "val_seconds": 0.5,
            "checkpoint_seconds": 0.25,
            "train_loss_tail": tail,
        }
    )
    last = None if state == "diverged" else {"top1": top1, "top5": min(1.0, top1 + 0.3), "loss": 1.2, "epoch": epochs}
    best_top1 = top1 + 0.01 if best_top1 is None else best_top1
    best = {"top1": best_top1, "top5": min(1.0, best_top1 + 0.3), "loss": 1.1, "epoch": max(1, epochs - 1)}
    metrics = None if state in ("running", "failed") else {"last": last, "best": best}
    return Record(arch, width, seed, RunStatus(state), history, metrics, f"{arch}-c{width}-s{seed}")


def summary_row(summary: pd.DataFrame, network: str, width: int, metric: str) -> pd.Series:
    rows = summary[(summary["network"] == network) & (summary["C"] == width) & (summary["metric"] == metric)]
    assert len(rows) == 1
    return rows.iloc[0]


# --- intervals ------------------------------------------------------------------------------------


def test_t_interval_contains_true_mean_and_has_the_t_width():
    rng = np.random.default_rng(20240601)
    values = rng.normal(0.6, 0.05, 8)
    interval = stats.mean_ci(values)
    sd = values.std(ddof=1)
    assert interval.n == 8 and interval.mean == pytest.approx(values.mean()) and interval.sd == pytest.approx(sd)
    # Student t with 7 degrees of freedom (2.365), not the normal 1.96
    assert interval.high - interval.low == pytest.approx(2 * 2.3646242510102993 * sd / math.sqrt(8), rel=1e-9)
    # three values by hand: mean 0.75, sd 0.05, t(0.975, 2) = 4.3027
    three = stats.mean_ci([0.70, 0.75, 0.80, math.nan])
    assert three.n == 3 and (three.low, three.high) == pytest.approx((0.75 - 0.124207, 0.75 + 0.124207), abs=1e-6)


def test_t_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    draws = rng.normal(3.0, 2.0, (1000, 5))
    covered = np.mean([interval.low < 3.0 < interval.high for interval in map(stats.mean_ci, draws)])
    assert covered == pytest.approx(0.95, abs=0.025)  # a normal-quantile interval covers about 0.88 at n=5


def test_accuracy_interval_stays_in_0_1_by_hand():
    """Three accuracies near 1: the plain t-interval passes 100%, the logit one stays below it.
    By hand: logits ln(0.97/0.03), ln(0.99/0.01), ln(0.995/0.005); their mean and sd; t(0.975, 2);
    mapped back with 1 / (1 + e^-x)."""
    values = [0.97, 0.99, 0.995]
    logits = [math.log(v / (1 - v)) for v in values]
    center = sum(logits) / 3
    sd = math.sqrt(sum((x - center) ** 2 for x in logits) / 2)
    half = T_975_2 * sd / math.sqrt(3)
    expected = (1 / (1 + math.exp(-(center - half))), 1 / (1 + math.exp(-(center + half))))
    interval = stats.mean_ci(values, scale="logit")
    assert (interval.low, interval.high) == pytest.approx(expected, rel=1e-9)
    assert 0 < interval.low < min(values) and max(values) < interval.high < 1
    assert interval.mean == pytest.approx(sum(values) / 3) and interval.method == "logit"
    assert stats.mean_ci(values).high > 1  # what the plain t-interval says: impossible
    # an accuracy of exactly 1 counts as 0.999: still a finite interval inside [0, 1]
    ones = stats.mean_ci([1.0, 1.0, 0.99], scale="logit")
    assert 0 < ones.low < ones.high < 1
    assert stats.mean_ci([1.0, 1.0, 1.0], scale="logit").low == pytest.approx(0.999)
    with pytest.raises(ValueError, match="fractions in"):
        stats.mean_ci([0.5, 1.5], scale="logit")


def test_loss_interval_stays_above_0_by_hand():
    values = [0.05, 0.5, 2.0]  # the plain t-interval reaches far below 0
    logs = [math.log(v) for v in values]
    center = sum(logs) / 3
    sd = math.sqrt(sum((x - center) ** 2 for x in logs) / 2)
    half = T_975_2 * sd / math.sqrt(3)
    interval = stats.mean_ci(values, scale="log")
    assert (interval.low, interval.high) == pytest.approx((math.exp(center - half), math.exp(center + half)))
    assert interval.low > 0 and stats.mean_ci(values).low < 0
    with pytest.raises(ValueError, match="positive"):
        stats.mean_ci([0.0, 1.0], scale="log")


def test_metric_intervals_use_their_scale():
    assert stats.metric_interval([0.9, 0.95, 0.99], "top5_last").method == "logit"
    assert stats.metric_interval([0.1, 4.0, 9.0], "best_val_loss").low > 0
    epochs = stats.metric_interval([3, 5, 25], "epochs")
    assert (epochs.low, epochs.high, epochs.method) == (3, 25, "range")


def test_summary_table_intervals_stay_in_range():
    """The old table read top-5 95.4% [86.1, 104.6] and a best validation loss [-4.40, 10.0]."""
    runs = [make_run("hrnet", 2, seed, top1=top1) for seed, top1 in enumerate([0.66, 0.70, 0.70])]
    for run, val in zip(runs, ([9.0, 9.0, 9.0, 9.0], [1.0] * 4, [0.3] * 4)):
        run.history["val_loss"] = val
    summary = stats.summary_table(runs)
    top5 = summary_row(summary, "hrnet", 2, "top5_last")
    assert 0 <= top5["ci_low"] < top5["ci_high"] <= 1 and top5["interval"] == "logit"
    val = summary_row(summary, "hrnet", 2, "best_val_loss")
    assert val["ci_low"] > 0 and val["interval"] == "log"
    assert "98.7% [" in stats.summary_markdown(summary)  # top-5: 0.96, 1.0, 1.0 (min(1, top1 + 0.3))


# --- probability of improvement, power, Holm --------------------------------------------------------


def test_probability_of_improvement_on_a_known_pair():
    """A beats B in 3 of 4 seeds: P = 0.75; the exact (Clopper-Pearson) interval's upper end is
    0.975^(1/4) (Beta(4, 1)'s cdf is x^4) and its lower end solves 4x^3 - 3x^4 = 0.025 (Beta(3, 2))."""
    a, b = np.array([0.6, 0.7, 0.8, 0.5]), np.array([0.5, 0.6, 0.9, 0.4])
    improvement = stats.probability_of_improvement(a - b, "higher")
    assert (improvement.p, improvement.n, improvement.ties) == (0.75, 4, 0)
    assert improvement.high == pytest.approx(0.975**0.25)
    x = improvement.low
    assert 4 * x**3 - 3 * x**4 == pytest.approx(0.025)
    assert improvement.decision.startswith("not decided")  # 4 seeds cannot put it above 0.75
    lower = stats.probability_of_improvement(a - b, "lower")  # B better when lower is better
    assert lower.p == 0.25
    tied = stats.probability_of_improvement([0.1, 0.0, 0.0], "higher")
    assert (tied.p, tied.n, tied.ties) == (1.0, 1, 2)
    assert stats.probability_of_improvement([0.0, 0.0], "either").n == 0
    many = stats.probability_of_improvement(np.ones(20), "higher")  # 20 of 20: low = 0.025^(1/20) = 0.832
    assert many.low == pytest.approx(0.025 ** (1 / 20)) and many.decision.startswith("A better in most seeds")


def test_power_matches_the_textbook():
    """Paired t-test, d = 0.5, alpha 0.05 two-sided, 80% power: n = 34 pairs (Cohen 1988; G*Power);
    d = 0.8: n = 15."""
    assert stats.paired_t_power(0.5, 34) >= 0.8 > stats.paired_t_power(0.5, 33)
    assert stats.paired_t_power(0.5, 34) == pytest.approx(0.808, abs=0.001)
    assert stats.seeds_needed([-0.5, 0.5, 1.5]).seeds == 34  # mean 0.5, sd 1
    assert stats.seeds_needed([-0.2, 0.8, 1.8]).seeds == 15  # mean 0.8, sd 1
    small = stats.seeds_needed([-0.8, 0.2, 1.2])  # d = 0.2: about 199
    assert small.seeds is None and small.text == "more than 100"
    assert stats.seeds_needed([-1.0, 0.0, 1.0]).text.startswith("no effect to detect")
    assert stats.seeds_needed([0.0, 0.0, 0.0]).text.startswith("no effect to detect")
    assert stats.seeds_needed([0.3]).seeds is None


def test_holm_by_hand():
    """Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max 0.06 at the end."""
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(adjusted[4])
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_verdict_rule():
    assert stats.verdict(True, False, 5) == "supported"
    assert stats.verdict(False, True, 5) == "contradicted"
    assert stats.verdict(False, False, 5) == "not decided (5 seeds)"
    assert stats.verdict(True, False, 1) == "not decided (1 seed)"
    assert stats.verdict(False, True, None) == "contradicted"
    with pytest.raises(ValueError):
        stats.verdict(True, True, 5)


# --- tables ---------------------------------------------------------------------------------------


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


COMPARISONS = [("hrsnet", "hrnet")]


def test_paired_differences_by_seed_with_holm():
    runs = paired_runs(loss_shift=-0.1, accuracy_shift=-0.05)
    paired = stats.paired_differences(runs, COMPARISONS)
    row = paired[(paired["C"] == 2) & (paired["metric"] == "final_train_loss")].iloc[0]
    assert row["comparison"] == "HRSNet - HRNet (pre-activated)" and (row["a"], row["b"]) == ("hrsnet", "hrnet")
    table = stats.run_table(runs)
    hrsnet = table[(table["network"] == "hrsnet") & (table["C"] == 2)].set_index("seed")["final_train_loss"]
    hrnet = table[(table["network"] == "hrnet") & (table["C"] == 2)].set_index("seed")["final_train_loss"]
    assert row["n_pairs"] == 5 and row["mean_difference"] == pytest.approx((hrsnet - hrnet).mean())
    assert row["p_ttest"] == pytest.approx(scipy_stats.ttest_rel(hrsnet, hrnet).pvalue)
    assert row["p_wilcoxon"] == pytest.approx(2 / 32)  # exact: all five differences negative
    assert paired["p_holm"].to_numpy() == pytest.approx(stats.holm(paired["p_ttest"]), nan_ok=True)
    assert (paired["p_holm"].dropna() >= paired.loc[paired["p_holm"].notna(), "p_ttest"]).all()
    text = stats.paired_markdown(paired)
    assert text.startswith("**Exploratory.**") and "Holm-adjusted" in text


def test_pairing_uses_the_seed_not_the_order():
    runs = paired_runs(loss_shift=-0.1, accuracy_shift=0.0, widths=(2,), seeds=range(1, 6))
    # HRNet's losses differ a lot between seeds, and HRNet alone has seed 0: pairing by position
    # (in the given order or in seed order) would mix them up
    runs.append(make_run("hrnet", 2, 0, final_loss=0.2))
    random.Random(3).shuffle(runs)
    paired = stats.paired_differences(runs, COMPARISONS)
    row = paired[paired["metric"] == "final_train_loss"].iloc[0]
    assert row["seeds"] == "1 2 3 4 5" and row["n_pairs"] == 5
    assert row["mean_difference"] == pytest.approx(-0.1, abs=0.01) and row["sd"] < 0.02
    lonely = runs + [make_run("hrsnet", 2, 99, final_loss=50.0)]
    row = stats.paired_differences(lonely, COMPARISONS).query("metric == 'final_train_loss'")
    assert row["n_pairs"].iloc[0] == 5 and row["seeds"].iloc[0] == "1 2 3 4 5"


def test_comparisons_come_from_the_caller_and_missing_networks_are_named():
    runs = paired_runs(loss_shift=-0.1, accuracy_shift=0.0, widths=(2,))
    assert stats.paired_differences(runs, []).empty
    comparisons = [("hrsnet", "hrnet"), ("hrsnet_skip", "hrsnet")]
    paired = stats.paired_differences(runs, comparisons)
    assert set(paired["comparison"]) == {"HRSNet - HRNet (pre-activated)"}
    assert stats.left_out_comparisons(runs, comparisons) == [
        "HRSNet with stage skip (the text) - HRSNet: left out, no finished runs of HRSNet with stage skip (the text)"
    ]


def test_one_seed_decides_nothing():
    runs = [make_run(arch, width, 0, 1.0, 0.5) for arch in ("hrnet", "hrsnet") for width in (2, 8)]
    summary = stats.summary_table(runs)
    assert (summary["n"] == 1).all() and summary[["sd", "ci_low", "ci_high"]].isna().all().all()
    paired = stats.paired_differences(runs, COMPARISONS)
    assert paired[["ci_low", "ci_high", "p_ttest", "p_holm", "p_wilcoxon"]].isna().all().all()


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
    assert summary_row(summary, "hrnet", 2, "final_train_loss")["n"] == 3  # NaN last epoch: left out
    table = stats.run_table(runs)
    assert len(table) == 6 and table["finished"].sum() == 4
    assert "1 running" in stats.summary_markdown(summary)
    band = stats.curve_band(runs, "hrnet", 2, "train_loss")
    assert list(band["n"]) == [4, 4, 3, 3]  # running and failed runs are not drawn; NaN epochs not counted
    runs += [make_run("hrsnet", 2, seed, final_loss=0.5) for seed in range(3)]
    runs += [make_run("hrsnet", 2, seed, final_loss=0.5, state="running") for seed in (3, 4)]
    paired = stats.paired_differences(runs, COMPARISONS).query("metric == 'final_train_loss'").iloc[0]
    assert paired["n_pairs"] == 3 and paired["seeds"] == "0 1 2"


def test_duplicate_finished_runs_are_refused():
    runs = [make_run("hrnet", 2, 0), make_run("hrnet", 2, 0)]
    with pytest.raises(ValueError, match="seed 0"):
        stats.summary_table(runs)


def test_released_training_loss_is_the_tail_with_the_mean_as_fallback():
    history = make_run(
        "hrnet", 2, 0, train_loss=[3.0, 2.0, 1.0], train_loss_tail=[2.5, math.nan, 0.8], epochs=3
    ).history
    assert stats.released_training_loss(history).tolist() == [2.5, 2.0, 0.8]  # NaN: a multiple of 1,000 batches
    old = history.drop(columns="train_loss_tail")  # a history from before the column
    assert stats.released_training_loss(old).tolist() == [3.0, 2.0, 1.0] and not stats.has_released_loss(old)
    row = stats.run_table([make_run("hrnet", 2, 0, train_loss=[3.0, 2.0], train_loss_tail=[2.5, 1.5], epochs=2)])
    assert (row["final_train_loss"].iloc[0], row["final_train_loss_mean"].iloc[0]) == (1.5, 2.0)
    band = stats.curve_band(
        [make_run("hrnet", 2, s, train_loss=[3.0, 2.0], train_loss_tail=[2.0 + s, 1.0], epochs=2) for s in range(2)],
        "hrnet",
        2,
        stats.RELEASED_LOSS,
    )
    assert band["mean"].tolist() == pytest.approx([2.5, 1.0])


def test_repeated_metrics_are_named():
    same = [make_run("hrnet", 2, seed, top1=0.5, best_top1=0.5) for seed in range(3)]
    repeated = stats.repeated_metrics(stats.run_table(same))
    assert set(repeated) == {"top1_best", "top5_best", "final_train_loss_mean", "epochs"}
    assert "every run went 4 epochs" in repeated["epochs"]
    differ = same + [make_run("hrnet", 8, 0, top1=0.5, best_top1=0.6, epochs=3, train_loss_tail=[3, 2, 1.5])]
    assert set(stats.repeated_metrics(stats.run_table(differ))) == set()
    markdown = stats.summary_markdown(stats.summary_table(same), repeated)
    assert "test top-1, best-validation model* left out" in markdown
    assert "| test top-1, best-validation model |" not in markdown.split("\n\n")[-1]


def test_curve_band_over_runs_of_different_lengths():
    runs = [
        make_run("hrsnet", 8, seed, epochs=epochs, val_loss=np.full(epochs, float(seed + 1)))
        for seed, epochs in enumerate([3, 4, 5])
    ]
    band = stats.curve_band(runs, "hrsnet", 8, "val_loss")
    assert list(band["epoch"]) == [1, 2, 3, 4, 5] and list(band["n"]) == [3, 3, 3, 2, 1]
    assert band["mean"].tolist() == pytest.approx([2, 2, 2, 2.5, 3])
    assert math.isnan(band["ci_low"].iloc[-1]) and 0 < band["ci_low"].iloc[0] < 2 < band["ci_high"].iloc[0]
    assert stats.curve_band(runs, "hrnet", 8, "val_loss").empty


def test_write_frame(tmp_path):
    runs = [
        make_run(arch, 2, seed, 1.0, top1)
        for arch in ("hrnet", "hrsnet")
        for seed, top1 in enumerate([0.70, 0.75, 0.80])
    ]
    summary = stats.summary_table(runs)
    paths = stats.write_frame(summary, stats.summary_markdown(summary), tmp_path / "stats", "summary")
    assert set(paths) == {"summary.csv", "summary.md"}
    assert summary_row(pd.read_csv(paths["summary.csv"]), "hrnet", 2, "top1_last")["mean"] == pytest.approx(0.75)
    logit = stats.mean_ci([0.70, 0.75, 0.80], scale="logit")
    assert f"75.0% [{100 * logit.low:.1f}, {100 * logit.high:.1f}]" in paths["summary.md"].read_text()
    paired = stats.paired_differences(runs, COMPARISONS)
    assert "+0.0 pp [0.0, 0.0]" in stats.paired_markdown(paired)
