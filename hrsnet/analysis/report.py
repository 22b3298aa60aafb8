"""The report a reader acts on, written by code from the runs: no number in it is typed by hand.

``make_report`` draws the profile's figures and tables (``figures.make_all_figures``) and writes
``report.md`` beside them; ``Report.front``, ``Report.claims`` and ``Report.details`` are the same
page as blocks of Markdown and figures, which notebooks/02_figures.ipynb displays, so the HTML
report (``render_report``: executed notebooks merged into one page, code hidden) says the same.

In the order of an ML Reproducibility Challenge report, summary first:

1. the title and the scope: which claims, which profile and dataset, how that differs from the
   paper's setting, links to the HRSNet report and the authors' released notebooks, their numbers;
2. the stage-skip finding (HRSNet as the authors ran it has none), with what the runs show;
3. a one-paragraph summary of the verdicts, and the claims in brief;
4. each claim in turn: the report's words, the verdict, the statistic with its interval, P(A better),
   the seeds that would decide it, the authors' number beside ours where there is one, its figure;
5. details: how to read the numbers, per network and C, the paired differences (exploratory, Holm),
   the released numbers, compute, provenance and what reproduces, the runs.

``readme_findings`` makes the README's findings block from a reference folder (``reference/quick``),
and ``write_reference`` regenerates that folder and the block from a results folder in one call:
``python -m hrsnet.analysis.report --results-dir results --profile quick``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import rundir
from ..config import TrainConfig
from ..data import DATASET_LABELS
from . import claims as claim_rules
from . import compute, stats
from .figures import REPORT_TITLE, FigureReport, make_all_figures
from .paper import (
    HRSNET_AS_RUN,
    HRSNET_AS_TEXT,
    PAPER_SETTING,
    PAPER_SETTING_DETAIL,
    RELEASED_COMMIT,
    RELEASED_NOTEBOOK_RESULTS,
    RELEASED_REPOSITORY,
    RELEASED_URL,
    REPORT_AUTHORS,
    REPORT_URL,
    STAGE_SKIP_FINDING,
    TRUNCATED_NOTE,
    is_paper_setting,
    released_text,
)
from .stats import network_label
from .tables import markdown_table, seeds_text

LEAD_TAG = "report-lead"
OMIT_TAG = "report-omit"
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_DIR = REPOSITORY_ROOT / "reference"
README = REPOSITORY_ROOT / "README.md"
FINDINGS_START, FINDINGS_END = "<!-- findings:start -->", "<!-- findings:end -->"
DAGGER = "†"  # marks a released number printed truncated to a whole percent


# --- blocks of the page ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A piece of the page: Markdown, or a figure (a PNG) with its caption."""

    markdown: str = ""
    image: Path | None = None


@dataclass
class Report:
    """The page, in three parts (front matter, claims, details), and what it was made from."""

    figures: FigureReport
    front: list[Block] = field(default_factory=list)
    claims: list[Block] = field(default_factory=list)
    details: list[Block] = field(default_factory=list)
    path: Path | None = None  # report.md

    @property
    def blocks(self) -> list[Block]:
        return [*self.front, *self.claims, *self.details]

    @property
    def collection(self):
        return self.figures.collection

    def markdown(self, relative_to: Path | None = None) -> str:
        """The page as one Markdown document, figures linked relative to ``relative_to``."""
        return blocks_markdown(self.blocks, relative_to)


def blocks_markdown(blocks: Iterable[Block], relative_to: Path | None = None) -> str:
    parts = []
    for block in blocks:
        if block.image is not None:
            target = block.image
            if relative_to is not None:
                try:
                    target = block.image.resolve().relative_to(Path(relative_to).resolve())
                except ValueError:
                    pass
            parts.append(f"![{block.markdown or block.image.stem}]({target.as_posix()})")
        elif block.markdown:
            parts.append(block.markdown.strip())
    return "\n\n".join(parts) + "\n"


# --- what the profile's runs are ------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """The data the runs used, against the paper's."""

    dataset: str
    image_size: int
    paper: bool
    label: str  # "sklearn digits (not CIFAR-100) at 32x32"
    sizes: str  # "288 train / 144 validation / 359 test images", "" before any run

    @property
    def text(self) -> str:
        return self.label + (f" ({self.sizes})" if self.sizes else "")


def run_setting(report: FigureReport) -> Setting:
    """The runs' dataset, image size and split sizes (the profile's settings before any run exists)."""
    collection = report.collection
    config = TrainConfig.from_settings({**collection.profile.settings})
    dataset, size, sizes = config.dataset, config.image_size, ""
    if collection.runs:
        run = collection.runs[0]
        dataset, size = run.dataset, run.image_size
        counts = (run.config or {}).get("dataset", {})
        sizes = " / ".join(
            f"{counts[key]} {what}"
            for key, what in (("train_size", "train"), ("val_size", "validation"), ("test_size", "test"))
            if counts.get(key)
        )
        sizes = f"{sizes} images" if sizes else ""
    label = f"{DATASET_LABELS.get(dataset, dataset)} at {size}x{size}"
    return Setting(dataset, size, is_paper_setting(dataset, size), label, sizes)


def _seed_text(report: FigureReport) -> str:
    return seeds_text(len(report.collection.expected_seeds))


def _widths(profile) -> str:
    return "{" + ", ".join(map(str, profile.widths)) + "}"


def released_numbers_text() -> str:
    """The authors' released numbers in one line, truncated prints marked with a dagger."""
    by_network: dict[str, list[str]] = {}
    for (arch, width), result in RELEASED_NOTEBOOK_RESULTS.items():
        mark = DAGGER if result.truncated else ""
        by_network.setdefault(arch, []).append(f"C={width} {100 * result.top1:.{0 if result.truncated else 2}f}%{mark}")
    parts = [f"{network_label(arch)} " + ", ".join(values) for arch, values in by_network.items()]
    return "; ".join(parts) + f" ({DAGGER} {TRUNCATED_NOTE})"


# --- the front matter ----------------------------------------------------------------------------


def _verdict_mark(verdict: str) -> str:
    return f"**{verdict}**" if verdict in ("supported", "contradicted") else verdict


def _main_mask(claims: pd.DataFrame) -> pd.Series:
    return pd.Series(
        [claim_rules.is_main(entry) for entry in claims.itertuples(index=False)], index=claims.index, dtype=bool
    )


def _main_rows(claims: pd.DataFrame) -> pd.DataFrame:
    return claims[_main_mask(claims)] if len(claims) else claims


def _claim_count(claims: pd.DataFrame) -> int:
    """How many distinct claims of the report (kinds) the table holds."""
    return claims["kind"].nunique() if "kind" in claims else len(claims)


def scope_block(report: FigureReport) -> Block:
    """The title, the setting against the paper's (impossible to miss), the scope and the links."""
    collection, claims = report.collection, report.claims
    profile, setting = collection.profile, run_setting(report)
    if setting.paper:
        warning = (
            f"> **The paper's setting: {setting.label}.** Our numbers stand beside the authors' released ones "
            "(theirs one run each, ours means over seeds)."
        )
    else:
        warning = (
            f"> **Not the paper's setting: {setting.label}, not {PAPER_SETTING}.** Profile `{profile.name}` checks "
            "the pipeline and the direction of each comparison; its numbers cannot be set beside the paper's."
        )
    runs = collection.expected_count
    sizes = f"; {setting.sizes}" if setting.sizes else ""
    scope = (
        f"**Scope.** {_claim_count(claims)} claims of the [HRSNet report]({REPORT_URL}) ({REPORT_AUTHORS}), "
        f"decided by {runs} runs of profile `{profile.name}` ({len(profile.networks)} networks x C in "
        f"{_widths(profile)} x {_seed_text(report)}, paired by seed; {len(collection.finished)}/{runs} finished"
        f"{sizes}). Networks as in the authors' [released notebooks]({RELEASED_URL}) (commit `{RELEASED_COMMIT}`). "
        f"The paper's setting ({PAPER_SETTING}: {PAPER_SETTING_DETAIL}) is profile `paper`. "
        f"**Released numbers** (CIFAR-100 test top-1, one run each): {released_numbers_text()}."
    )
    return Block(f"# {REPORT_TITLE}\n\n{warning}\n\n{scope}")


def _differs_text(claims: pd.DataFrame) -> str:
    """What the runs of both HRSNet networks show, from the ``differs`` claim's rows."""
    rows = claims[claims["kind"] == "differs"] if "kind" in claims else claims.iloc[0:0]
    if rows.empty:
        return "This profile declares no `differs` claim: the two networks are not compared here."
    first = rows.iloc[0]
    a, b = network_label(first["a"]), network_label(first["b"])
    if first["verdict"] == claim_rules.LEFT_OUT:
        return f"**What our runs show:** nothing yet ({first['note']})."
    parts, needed = [], []
    for entry in rows.itertuples(index=False):
        label = entry.claim.split(": ")[-1]
        parts.append(f"{label} {claim_rules.value_text(entry)}")
        if entry.seeds_needed:
            needed.append(f"{entry.seeds_needed} seeds ({label})")
    supported = [entry.claim.split(": ")[-1] for entry in rows.itertuples(index=False) if entry.verdict == "supported"]
    n = int(rows["n"].max()) if rows["n"].notna().any() else 0
    if supported:
        conclusion = f"the stage skip changes the {' and the '.join(supported)}"
    else:
        conclusion = f"no difference detected with {seeds_text(n)} (an interval around 0 does not show they are equal)"
    text = f"**What our runs show** ({a} - {b}, per seed, mean over C): " + "; ".join(parts) + f": {conclusion}"
    if needed:
        text += "; at the observed effect, 80% power needs " + ", ".join(needed)
    return text + "."


def stage_skip_block(report: FigureReport) -> Block:
    """The stage-skip finding: the mechanism, the published numbers it concerns, what our runs show."""
    published = [
        f"C={width} {100 * result.top1:.{0 if result.truncated else 2}f}%{DAGGER if result.truncated else ''}"
        for (arch, width), result in RELEASED_NOTEBOOK_RESULTS.items()
        if arch == HRSNET_AS_RUN
    ]
    every = "both" if len(published) == 2 else f"all {len(published)}"
    return Block(
        "## HRSNet as the authors ran it has no stage skip\n\n"
        f"{STAGE_SKIP_FINDING} So {every} published HRSNet numbers ({', '.join(published)}) come from a network "
        f"with 4 modules per stage and no skip: here **{network_label(HRSNET_AS_RUN)}** (preset `{HRSNET_AS_RUN}`). "
        f"The network the text describes, **{network_label(HRSNET_AS_TEXT)}** (preset `{HRSNET_AS_TEXT}`), was never "
        "trained by the "
        "authors; every HRSNet claim is decided for both (the text's as a second reading).\n\n"
        + _differs_text(report.claims)
    )


def _short_claim(entry: Any) -> str:
    """The claim's statement without the statistic's label ("... differ: training loss" -> "... differ")."""
    return str(entry.claim).split(": ")[0]


def summary_paragraph(claims: pd.DataFrame, seeds: str, setting: str) -> str:
    """One paragraph from the verdicts: per verdict the claims (main reading, by number and in a few
    words), what the second readings change, and which claims were left out."""
    if claims.empty:
        return "No claim is declared in this profile."
    groups: dict[str, list[str]] = {}
    main_verdicts: dict[str, str] = {}
    for number, entry in _numbered(claims):
        if not claim_rules.is_main(entry):
            continue
        key = entry.verdict.split(" (")[0]
        main_verdicts.setdefault(entry.kind, key)
        item = f"#{number} {claim_rules.CLAIM_TEXTS[entry.kind].short}"
        if item not in groups.setdefault(key, []):
            groups[key].append(item)
    sentences = [f"With {seeds} per network x C on {setting}, of {len(main_verdicts)} claims:"]
    for key in ("supported", "contradicted", "not decided"):
        if groups.get(key):
            tail = " (its interval includes 0; the table gives the seeds that would decide it)"
            sentences.append(
                f"**{key.capitalize()}:** " + "; ".join(groups[key]) + (tail if key == "not decided" else "") + "."
            )
    if groups.get(claim_rules.LEFT_OUT):
        sentences.append("**Left out** (no finished runs): " + "; ".join(groups[claim_rules.LEFT_OUT]) + ".")
    changed, compared = [], 0
    for number, entry in _numbered(claims):
        main = main_verdicts.get(entry.kind)
        if claim_rules.is_main(entry) or main in (None, claim_rules.LEFT_OUT) or entry.verdict == claim_rules.LEFT_OUT:
            continue
        compared += 1
        if entry.verdict.split(" (")[0] != main:
            changed.append(f"#{number} {claim_rules.CLAIM_TEXTS[entry.kind].short} is {entry.verdict.split(' (')[0]}")
    if compared:
        sentences.append(
            "**Second readings** (the same claims for other networks, e.g. the text's HRSNet): "
            + ("; ".join(changed) + "." if changed else f"the same verdicts ({compared} compared).")
        )
    return " ".join(sentences)


def summary_sentence(claims: pd.DataFrame) -> str:
    """One sentence: how many claims (main reading) are supported, contradicted, not decided, left out."""
    if claims.empty:
        return "No claim decided yet."
    main = _main_rows(claims)
    counts = main["verdict"].map(lambda v: v.split(" (")[0]).value_counts()
    parts = [
        f"{counts[key]} {word}"
        for key, word in (
            ("supported", "supported"),
            ("contradicted", "contradicted"),
            ("not decided", "not decided"),
            (claim_rules.LEFT_OUT, "left out (no finished runs)"),
        )
        if counts.get(key)
    ]
    n = main["n"].dropna()
    seeds = f" with {seeds_text(int(n.max()))}" if len(n) and int(n.max()) > 0 else ""
    return f"Of the {len(main)} claims (main reading){seeds}: " + ", ".join(parts) + "."


def claims_brief(claims: pd.DataFrame) -> str:
    """The claims in brief: one row per claim and reading, the claims left out as lines below."""
    rows = []
    for number, entry in _numbered(claims):
        if entry.verdict == claim_rules.LEFT_OUT:
            continue
        rows.append(
            {
                "#": number,
                "claim": entry.claim + ("" if claim_rules.is_main(entry) else " *(second reading)*"),
                "value [95% CI]": claim_rules.value_text(entry),
                "P(A better) [95% CI]": claim_rules.improvement_text(entry),
                "seeds": "" if pd.isna(entry.n) else str(entry.n),
                "verdict": _verdict_mark(entry.verdict),
                "seeds to decide": entry.seeds_needed,
            }
        )
    table = markdown_table(pd.DataFrame(rows)) if rows else "(no claim could be decided yet)"
    lines = "".join(f"\n- {line}." for line in claim_rules.left_out_lines(claims))
    return "## The claims in brief\n\n" + table + "\n" + lines


def _numbered(claims: pd.DataFrame) -> list[tuple[int, Any]]:
    """(section number, row): one number per claim kind, in the profile's order."""
    numbers: dict[str, int] = {}
    out = []
    for entry in claims.itertuples(index=False):
        numbers.setdefault(entry.kind, len(numbers) + 1)
        out.append((numbers[entry.kind], entry))
    return out


def front_blocks(report: FigureReport) -> list[Block]:
    setting = run_setting(report)
    summary = summary_paragraph(report.claims, _seed_text(report), setting.label)
    return [
        scope_block(report),
        stage_skip_block(report),
        Block("## Summary\n\n" + summary),
        Block(claims_brief(report.claims)),
    ]


# --- each claim in turn --------------------------------------------------------------------------


def _claim_figures(report: FigureReport, kind: str, networks: Iterable[str]) -> list[Path]:
    """The figures that show a claim: of the claim's figure kinds, those drawing all its networks
    (else those drawing any of them)."""
    networks = set(networks)
    candidates = [
        path for figure_kind in claim_rules.CLAIM_TEXTS[kind].figure_kinds for path in report.figures_of(figure_kind)
    ]
    full = [path for path in candidates if networks <= set(report.figure_specs[path.stem].networks)]
    return full or [path for path in candidates if networks & set(report.figure_specs[path.stem].networks)]


def _released_beside_ours(report: FigureReport, networks: Iterable[str]) -> str:
    """The authors' numbers for these networks beside our mean at the same C; outside the paper's setting,
    one line saying they are not comparable."""
    setting = run_setting(report)
    networks = list(networks)
    released = [
        (arch, width, result) for (arch, width), result in RELEASED_NOTEBOOK_RESULTS.items() if arch in networks
    ]
    never = [network_label(arch) for arch in networks if not any(arch == name for name, _, _ in released)]
    never_text = f" The authors never trained {' or '.join(never)}." if never else ""
    printed = "; ".join(f"{network_label(arch)} C={width} {released_text(result)}" for arch, width, result in released)
    if not setting.paper:
        return (
            f"**The authors' numbers** (CIFAR-100, one run each): {printed}. Not comparable with ours "
            f"({setting.label}).{never_text}"
        )
    rows = []
    for arch, width, result in released:
        interval = stats.metric_interval([value for _, value in _points(report, arch, width)], "top1_last")
        ours = (
            stats.format_estimate(interval.mean, interval.low, interval.high, "accuracy")
            + f" over {seeds_text(interval.n)}"
            if interval.n
            else "no finished run at this C"
        )
        rows.append(
            {"network": network_label(arch), "C": width, "released (1 run)": released_text(result), "ours": ours}
        )
    return (
        "**The authors' numbers beside ours** (CIFAR-100 test top-1, last-epoch model; theirs one run each, ours "
        "mean [95% interval] over seeds):" + never_text + "\n\n" + markdown_table(pd.DataFrame(rows))
    )


def _points(report: FigureReport, arch: str, width: int) -> list[tuple[int, float]]:
    table = stats.run_table(report.collection.runs_of(arch, width))
    done = table[table["finished"] & table["top1_last"].notna()]
    return list(zip(done["seed"].astype(int), done["top1_last"].astype(float)))


def _row_text(entry: Any, profile_name: str) -> str:
    """The verdict, statistic, interval, P(A better) and seeds to decide of one claims row."""
    if entry.verdict == claim_rules.LEFT_OUT:
        return f"**Left out:** {entry.note}."
    value = claim_rules.value_text(entry)
    seeds = "" if pd.isna(entry.n) else f" over {seeds_text(int(entry.n))}"
    statistic = entry.statistic[:1].upper() + entry.statistic[1:]
    text = f"**Verdict: {entry.verdict}.** {statistic}: {value}{seeds} ({entry.note})."
    improvement = claim_rules.improvement_text(entry)
    if improvement:
        a, b = network_label(entry.a), network_label(entry.b)
        which = claim_rules.CLAIM_TEXTS[entry.kind].better.format(a=a, b=b)
        decision = (
            str(entry.improvement or "not decided")
            .replace("A better", f"{a} better")
            .replace("B better", f"{b} better")
        )
        text += f" {which} = {improvement} ({entry.p_better_seeds} seeds): {decision}."
    if entry.seeds_needed:
        text += f" Seeds to decide at 80% power: {entry.seeds_needed}."
        digits = [int(word) for word in str(entry.seeds_needed).split() if word.isdigit()]
        if digits:
            text += (
                f" `./run_all.sh --profile {profile_name} --seeds {digits[0]}` trains only the runs that are missing "
                "(finished runs are skipped)."
            )
    return text


def claim_blocks(report: FigureReport) -> list[Block]:
    """One section per claim kind: the report's words, each reading's verdict and numbers, the authors'
    number beside ours where there is one, and the figure that shows it (once; later sections point to it)."""
    claims = report.claims
    if claims is None or claims.empty:
        return []
    blocks: list[Block] = [Block("## Each claim in turn")]
    shown: dict[Path, int] = {}
    sections: dict[int, list[Any]] = {}
    for number, entry in _numbered(claims):
        sections.setdefault(number, []).append(entry)
    for number, entries in sections.items():
        first = entries[0]
        text = claim_rules.CLAIM_TEXTS[first.kind]
        lines = [f"### {number}. {first.claim.split(': ')[0]}", f'> "{text.quote}" (the report, {text.where})']
        for entry in entries:
            reading = claim_rules.reading_text(entry)
            prefix = "" if claim_rules.is_main(entry) else f"*Second reading, {reading}:* "
            label = entry.claim.split(": ")[1] + ": " if ": " in entry.claim else ""
            lines.append(prefix + (f"*{label}*" if label else "") + _row_text(entry, report.collection.name))
        if first.kind == "more_accurate":
            lines.append(_released_beside_ours(report, dict.fromkeys(n for e in entries for n in (e.a, e.b) if n)))
        blocks.append(Block("\n\n".join(lines)))
        for path in _claim_figures(report, first.kind, [n for n in (first.a, first.b) if n]):
            if path in shown:
                blocks.append(Block(f"*Figure: `{path.name}`, shown under claim {shown[path]}.*"))
            else:
                shown[path] = number
                blocks.append(Block(f"*Figure: `{path.name}`*"))
                blocks.append(Block(path.stem, path))
    return blocks


# --- details -------------------------------------------------------------------------------------


def how_to_read(report: FigureReport) -> str:
    """What a seed varies and what it does not, how every interval and verdict is computed."""
    config = TrainConfig.from_settings({**report.collection.profile.settings})
    augmentation = (
        "the random crops and flips (augmentation is on)" if config.augment else "nothing else (no augmentation here)"
    )
    methods = "; ".join(f"{scale}: {text}" for scale, text in stats.INTERVAL_METHODS.items())
    return (
        "## Details\n\n### How to read the numbers\n\n"
        f"**What a seed varies:** the initialisation, the train/validation split, the order of the training data, "
        f"and {augmentation}. **What it does not:** the dataset and the test set (the same test images for every "
        "run), the network, the settings. The same seed gives every network the same split and order, so networks "
        "are compared seed by seed (paired), never by position.\n\n"
        "**Intervals (95%, scipy.stats).** Per network and C: accuracies get a Student-t interval on the logit "
        "scale and losses on the log scale, mapped back, so an interval never leaves 0-100% or goes below 0; the "
        "point is the arithmetic mean over seeds and every seed is also drawn. Paired differences and per-seed "
        "claim statistics: the Student-t interval of the per-seed values. Curves: the same per epoch. "
        f"({methods}.)\n\n"
        "**Verdicts.** A claim is supported or contradicted only when its interval lies entirely on one side of "
        "0; otherwise it is not decided at this number of seeds (fewer than 2 seeds decide nothing). "
        f"**P(A better)** (Bouthillier et al. 2021): the share of seeds in which A beats B, with its exact binomial "
        f"interval; it reads as 'A better in most seeds' only when the whole interval lies above "
        f"{stats.IMPROVEMENT_THRESHOLD}. **Seeds to decide:** if the true effect were the observed mean / sd of the "
        f"per-seed values, the seeds a two-sided paired t-test needs for {stats.POWER:.0%} power at "
        f"alpha {stats.ALPHA} (scipy.stats.nct); 'more than {stats.MAX_SEEDS}' or 'no effect to detect' (observed "
        f"effect below {stats.NO_EFFECT} sd) otherwise. `./run_all.sh --seeds N` adds the missing seeds and skips "
        "every finished run."
    )


def released_block(report: FigureReport) -> str:
    setting = run_setting(report)
    rows = [
        {
            "network": network_label(arch),
            "C": width,
            "printed": released_text(result),
            "epochs": result.epochs,
            "notebook": f"[{result.notebook}]({RELEASED_REPOSITORY}/blob/{RELEASED_COMMIT}/{result.notebook})",
        }
        for (arch, width), result in RELEASED_NOTEBOOK_RESULTS.items()
    ]
    comparable = (
        "Comparable with ours: this profile is the paper's setting."
        if setting.paper
        else f"Not comparable with ours: this profile uses {setting.label}."
    )
    return (
        "### The authors' released numbers\n\n"
        "CIFAR-100 test top-1 of the last-epoch model, one run each, as the released notebooks printed them; "
        f"`'%d %%'` truncates to a whole percent, so such a value v means [v, v + 1%). {comparable}\n\n"
        + markdown_table(pd.DataFrame(rows))
    )


def detail_blocks(report: FigureReport, shown: Iterable[Path] = ()) -> list[Block]:
    """How to read, the tables, the figures not ``shown`` with a claim, the released numbers, compute,
    provenance and the runs."""
    blocks = [
        Block(how_to_read(report)),
        Block("### Per network and C, over seeds\n\n" + report.summary_markdown),
        Block("### Paired differences, matched by seed (exploratory)\n\n" + report.paired_markdown),
    ]
    others = [path for path in report.figures if path not in set(shown)]
    if others:
        blocks.append(Block("### Other figures"))
        for path in others:
            blocks.append(Block(f"*Figure: `{path.name}`*"))
            blocks.append(Block(path.stem, path))
    blocks += [
        Block(released_block(report)),
        Block("### Compute\n\n" + compute.cost_markdown(report.cost if report.cost is not None else pd.DataFrame())),
        Block("### Provenance and what reproduces\n\n" + compute.provenance_markdown(report.collection.runs)),
        Block(
            "### Runs\n\nEvery run of the profile (one row per network x C x seed), with missing, unfinished and "
            "unreadable runs listed.\n\n```\n" + report.collection.describe() + "\n```\n\n" + report.markdown
        ),
    ]
    return blocks


# --- making it -----------------------------------------------------------------------------------


def build_report(figures: FigureReport) -> Report:
    """The page's blocks from what make_all_figures wrote."""
    claims = claim_blocks(figures)
    shown = [block.image for block in claims if block.image is not None]
    return Report(figures, front_blocks(figures), claims, detail_blocks(figures, shown))


def make_report(
    results_dir: str | Path,
    figures_dir: str | Path,
    profile,
    data_dir: str | Path | None = None,
    k: int = 5,
    seeds: int | None = None,
    architecture: pd.DataFrame | None = None,
    pdf: bool = True,
) -> Report:
    """Every figure, table and statistic of ``profile`` into ``figures_dir/<profile>/`` (make_all_figures),
    and the page as ``report.md`` beside them; returns the page."""
    figures = make_all_figures(
        results_dir, figures_dir, profile, data_dir=data_dir, k=k, seeds=seeds, architecture=architecture, pdf=pdf
    )
    report = build_report(figures)
    out = Path(figures_dir) / figures.collection.name
    path = out / "report.md"
    rundir.atomic_write(path, lambda stream: stream.write(report.markdown(relative_to=out)))
    report.path = path
    return report


def display_blocks(blocks: Iterable[Block]) -> None:
    """Show blocks in a notebook: Markdown as Markdown, figures as images (embedded in the HTML report)."""
    from IPython.display import Image, Markdown, display  # lazy: IPython is only there in a notebook

    for block in blocks:
        if block.image is not None:
            display(Image(filename=str(block.image)))
        elif block.markdown:
            display(Markdown(block.markdown))


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def render_report(notebooks: list[str | Path], output: str | Path, title: str = REPORT_TITLE) -> Path:
    """Merge the executed ``notebooks`` (the one with a ``report-lead`` cell first, then in the order
    given) and write them as one HTML page without code and without ``report-omit`` cells."""
    import nbformat  # lazy: nbconvert takes seconds to import; only the report needs it
    from nbconvert import HTMLExporter  # lazy: as above

    present = [Path(path) for path in notebooks if Path(path).exists()]
    if not present:
        raise ValueError(f"none of the executed notebooks exists: {', '.join(map(str, notebooks))}")
    read = [nbformat.read(path, as_version=4) for path in present]
    leads = [any(LEAD_TAG in _tags(cell) for cell in notebook.cells) for notebook in read]
    ordered = [nb for nb, lead in zip(read, leads) if lead] + [nb for nb, lead in zip(read, leads) if not lead]
    merged = ordered[0]
    for notebook in ordered[1:]:
        merged.cells.extend(notebook.cells)
    merged.cells = [cell for cell in merged.cells if OMIT_TAG not in _tags(cell)]
    if not any(leads):  # no header cell: the page still opens with its title
        merged.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {title}"))
    merged.metadata["title"] = title
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(merged)
    output = Path(output)
    rundir.atomic_write(output, lambda stream: stream.write(body))
    return output


# --- the README's findings block and the committed reference -------------------------------------


def _read_claims(folder: Path) -> pd.DataFrame:
    claims = pd.read_csv(folder / "claims.csv")
    for column, default in (("reading", ""), ("kind", ""), ("seeds_needed", "")):
        if column not in claims:
            claims[column] = default
    claims["reading"] = claims["reading"].fillna("")
    claims["seeds_needed"] = claims["seeds_needed"].fillna("")
    if "kind" in claims and claims["kind"].eq("").all():
        claims["kind"] = claims["claim"]  # a reference made before claims had kinds: one kind per row
    return claims


def _link(folder: Path, root: Path) -> str:
    try:
        return folder.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return folder.as_posix()


def readme_findings(reference_folder: str | Path, root: str | Path = REPOSITORY_ROOT) -> str:
    """The README's findings block, from a reference outputs folder (claims.csv, figures.json, report.md):
    where it comes from, the claims in brief, a one-sentence summary and a link to the report."""
    folder = Path(reference_folder)
    claims = _read_claims(folder)
    header = json.loads((folder / "figures.json").read_text()).get("header", {})
    link = _link(folder, Path(root))
    report = "report.md" if (folder / "report.md").exists() else "claims.md"
    rows = [
        {
            "claim": entry.claim,
            "reading": claim_rules.reading_text(entry),
            "value [95% CI]": stats.format_estimate(
                entry.value, entry.ci_low, entry.ci_high, entry.unit if isinstance(entry.unit, str) else "loss", True
            ),
            "verdict": _verdict_mark(entry.verdict),
            "seeds to decide": entry.seeds_needed,
        }
        for entry in claims.itertuples(index=False)
        if entry.verdict != claim_rules.LEFT_OUT
    ]
    if not any(row["seeds to decide"] for row in rows):
        for row in rows:
            row.pop("seeds to decide")
    if all(row["reading"] == "main" for row in rows):
        for row in rows:
            row.pop("reading")
    source = "; ".join(
        f"{what} {header[key]}"
        for key, what in (("profile", "profile"), ("dataset", "dataset:"), ("seeds", "seeds:"))
        if header.get(key)
    )
    lines = [
        f"Reference outputs: [`{link}/`]({link}/) (the whole report: [`{link}/{report}`]({link}/{report})), from "
        f"{source}; commits: {header.get('git commit', 'not recorded')}.",
    ]
    if "kind" not in pd.read_csv(folder / "claims.csv", nrows=0).columns:
        lines.append("")
        lines.append(
            "*Made by an earlier version of this code, before claims were declared by the profile; "
            "`python -m hrsnet.analysis.report --results-dir results` remakes it from a quick run.*"
        )
    lines += [
        "",
        markdown_table(pd.DataFrame(rows)) if rows else "(no claim decided)",
        "",
        summary_sentence(claims),
    ]
    left_out = claim_rules.left_out_lines(claims) if "note" in claims else []
    if left_out:
        lines += ["", *[f"- {line}." for line in left_out]]
    return "\n".join(lines)


def replace_findings(readme_text: str, block: str) -> str:
    """``readme_text`` with the text between the findings markers replaced by ``block``."""
    if FINDINGS_START not in readme_text or FINDINGS_END not in readme_text:
        raise ValueError(f"the README lacks the {FINDINGS_START} ... {FINDINGS_END} markers")
    before, rest = readme_text.split(FINDINGS_START, 1)
    _, after = rest.split(FINDINGS_END, 1)
    return f"{before}{FINDINGS_START}\n{block}\n{FINDINGS_END}{after}"


def readme_block(readme_text: str) -> str:
    """The text between the README's findings markers (without the newlines next to them)."""
    if FINDINGS_START not in readme_text or FINDINGS_END not in readme_text:
        raise ValueError(f"the README lacks the {FINDINGS_START} ... {FINDINGS_END} markers")
    return readme_text.split(FINDINGS_START, 1)[1].split(FINDINGS_END, 1)[0].strip("\n")


def write_reference(
    results_dir: str | Path,
    profile: str = "quick",
    reference_dir: str | Path = REFERENCE_DIR,
    readme: str | Path | None = README,
    data_dir: str | Path | None = None,
    pipeline_record: str | Path | None = None,
) -> Report:
    """Regenerate the committed reference (``reference/<profile>/``: figures as PNG, tables, claims,
    report.md) from the finished runs in ``results_dir``, and the README's findings block from it.
    ``pipeline_record``: the pipeline.json of the run_all.sh that trained them (its cost), copied beside."""
    report = make_report(results_dir, reference_dir, profile, data_dir, pdf=False)
    if pipeline_record is not None and Path(pipeline_record).is_file():
        record = json.loads(Path(pipeline_record).read_text())
        rundir.write_json(Path(reference_dir) / report.collection.name / Path(pipeline_record).name, record)
    if readme is not None:
        path = Path(readme)
        block = readme_findings(Path(reference_dir) / report.collection.name, root=path.resolve().parent)
        text = replace_findings(path.read_text(), block)
        rundir.atomic_write(path, lambda stream: stream.write(text))
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m hrsnet.analysis.report``: regenerate the committed reference and the README block."""
    parser = argparse.ArgumentParser(prog="python -m hrsnet.analysis.report", description=write_reference.__doc__)
    parser.add_argument("--results-dir", default="results", help="the folder holding runs/ (default: results)")
    parser.add_argument("--profile", default="quick", help="the profile whose runs make the reference (default: quick)")
    parser.add_argument("--reference-dir", default=str(REFERENCE_DIR), help="where the reference goes")
    parser.add_argument("--readme", default=str(README), help="the README whose findings block is rewritten")
    parser.add_argument("--data-dir", default=None, help="folder holding cifar-100-python/")
    parser.add_argument(
        "--figures-dir", default="figures", help="where run_all.sh wrote the figures and its pipeline.json (its cost)"
    )
    args = parser.parse_args(argv)
    record = Path(args.figures_dir) / args.profile / rundir.PIPELINE_FILE
    report = write_reference(args.results_dir, args.profile, args.reference_dir, args.readme, args.data_dir, record)
    missing = len(report.collection.missing) + len(report.collection.unreadable)
    print(f"{report.path} ({len(report.collection.finished)} finished runs, {missing} missing or unreadable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
