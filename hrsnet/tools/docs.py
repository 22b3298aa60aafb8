"""The generated blocks of README.md and docs/: each a table that mirrors the code, made from it.

A block sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in its file. ``python -m
hrsnet docs`` rewrites every block from the code (and the committed reference outputs);
``--check`` only says which differ (tests/test_project.py runs it), so no table in the docs is
typed by hand or goes stale. The findings block is made from the committed reference outputs
(``python -m hrsnet.analysis.report`` regenerates those from a quick run).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ..analysis.paper import architecture_table, claim_finding
from ..analysis.report import REFERENCE_DIR, readme_findings
from ..analysis.tables import markdown_table
from ..config import settings_markdown
from ..models import PRESETS, config_differences
from ..profiles import PROFILES
from ..rundir import PIPELINE_FILE, atomic_write
from .bench import TIMM_PEER, read_bench_csv

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGE = REPOSITORY / "hrsnet"


def _first_sentence(path: Path) -> str:
    """The first sentence of a module's docstring (a package: its __init__'s), in Markdown."""
    source = (path / "__init__.py" if path.is_dir() else path).read_text()
    paragraph = " ".join((ast.get_docstring(ast.parse(source)) or "").strip().split("\n\n")[0].split())
    sentence = paragraph.split(". ")[0].rstrip(".")
    return sentence.replace("``", "`").replace("|", "\\|")


def layout_markdown() -> str:
    """The package's top level: each subpackage and module with the first line of its docstring."""
    entries = sorted(
        (path for path in PACKAGE.iterdir() if (path.suffix == ".py" or (path / "__init__.py").exists())),
        key=lambda path: (path.name != "__main__.py", path.is_file(), path.name),
    )
    rows = [
        f"| `hrsnet/{path.name}{'/' if path.is_dir() else ''}` | {_first_sentence(path)} |"
        for path in entries
        if path.name != "__init__.py"
    ]
    return "\n".join(["| where | what |", "|---|---|", *rows])


def pipeline_record(profile: str) -> dict | None:
    """The committed pipeline.json of a profile's reference outputs (what run_all.sh cost), if any."""
    path = REFERENCE_DIR / profile / PIPELINE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _commit(record: dict) -> str:
    commit = (record.get("commit") or "not recorded")[:12]
    return commit + (" with uncommitted changes" if record.get("tree_modified") else "")


def measured_cost(record: dict) -> str:
    """ "measured: 24 runs in 9.6 min with --jobs 2 on <machine> (<date>, commit <c>)"."""
    minutes = record["seconds"] / 60
    trained = record["runs_trained"]
    runs = (
        f"{trained} of {record['runs_in_profile']} runs" if trained != record["runs_in_profile"] else f"{trained} runs"
    )
    return (
        f"measured: {runs} and the report in {minutes:.1f} min with --jobs {record['jobs']} on {record['machine']} "
        f"({record['finished'][:10]}, commit {_commit(record)})"
    )


def profiles_markdown() -> str:
    """The built-in profiles: what each trains and what it costs (measured, where a reference run says)."""
    rows = []
    for profile in PROFILES.values():
        runs = len(profile.networks) * len(profile.widths) * len(profile.seeds)
        record = pipeline_record(profile.name)
        rows.append(
            {
                "profile": f"`{profile.name}`",
                "what": profile.description,
                "runs": f"{len(profile.networks)} networks x C in {{{', '.join(map(str, profile.widths))}}} "
                f"x {len(profile.seeds)} seed{'s' if len(profile.seeds) != 1 else ''} ({runs})",
                "cost": profile.cost + (f"; {measured_cost(record)}" if record else ""),
            }
        )
    return markdown_table(pd.DataFrame(rows))


def pipeline_cost_markdown() -> str:
    """Every committed pipeline.json: what one ./run_all.sh of a profile cost, where and when."""
    rows = []
    for path in sorted(REFERENCE_DIR.glob(f"*/{PIPELINE_FILE}")):
        record = json.loads(path.read_text())
        rows.append(
            {
                "profile": f"`{record['profile']}`",
                "runs trained": f"{record['runs_trained']} of {record['runs_in_profile']}",
                "jobs": record["jobs"],
                "wall time": f"{record['seconds'] / 60:.1f} min",
                "machine": record["machine"],
                "date": record["finished"],
                "commit": _commit(record),
            }
        )
    if not rows:
        return "No pipeline cost is committed yet (`reference/<profile>/pipeline.json`)."
    return (
        markdown_table(pd.DataFrame(rows))
        + "\n\nThe wall time runs from the start of `./run_all.sh` to the figures in place (the report's HTML "
        "follows in seconds); it includes each notebook's kernel start-up."
    )


def bench_cpu_markdown() -> str:
    """Our hrnet_official C=18 against timm's hrnet_w18, side by side in one run, from each committed
    bench CSV (reference/bench/): ratios only, with the machine, the date and the commit."""
    rows = []
    for path in sorted((REFERENCE_DIR / "bench").glob("*.csv")):
        frame = pd.DataFrame(read_bench_csv(path))
        peer = frame[frame["group"] == "peer"] if len(frame) else frame
        for _, pair in peer.groupby("setting", sort=False):
            ours, timm = pair[pair["model"] == "hrnet_official"], pair[pair["model"] == TIMM_PEER]
            if not (len(ours) and len(timm)):
                continue
            first = ours.iloc[0]
            size = f"{first['image_size']}x{first['image_size']}, batch {first['batch_size']}"
            for what, column in (
                ("training step", "train_images_per_second"),
                ("inference", "inference_images_per_second"),
            ):
                ratio = float(ours[column].astype(float).max()) / float(timm[column].astype(float).iloc[0])
                rows.append(
                    {
                        "ours / timm": f"{what}, {size}",
                        "ratio": f"{ratio:.2f}",
                        "machine": first["device_name"],
                        "date": first["measured"] or "before dates were recorded",
                        "commit": (first["commit"] or "not recorded")[:12],
                        "file": f"[{path.name}](../reference/bench/{path.name})",
                    }
                )
    if not rows:
        return "No bench CSV is committed yet (`reference/bench/`)."
    return markdown_table(pd.DataFrame(rows))


def presets_markdown() -> str:
    """One row per config field, one column per preset: how the networks differ."""
    rows = config_differences()
    labels = {name: f"`{name}`" for name in PRESETS}
    table = pd.DataFrame(rows).rename(columns={"field": "field", **labels})
    table["field"] = table["field"].map(lambda name: f"`{name}`")
    return markdown_table(table.astype(str))


def architecture_markdown() -> str:
    table = architecture_table(None, (2, 18, 30), 224, 100)
    return markdown_table(table) + "\n\n" + claim_finding(table, 100)


# name -> (file, what makes it)
BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "layout": ("README.md", layout_markdown),
    # Made from the committed reference outputs (reference/quick/), not from the code alone.
    "findings": ("README.md", lambda: readme_findings(REFERENCE_DIR / "quick", REPOSITORY)),
    "profiles": ("README.md", profiles_markdown),
    "train-options": ("docs/cli.md", settings_markdown),
    "presets": ("docs/networks.md", presets_markdown),
    "architecture-table": ("docs/networks.md", architecture_markdown),
    "pipeline-cost": ("docs/performance.md", pipeline_cost_markdown),
    "bench-cpu": ("docs/performance.md", bench_cpu_markdown),
}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def current_block(text: str, name: str, where: str) -> str:
    start, end = _markers(name)
    if start not in text or end not in text:
        raise ValueError(f"{where} lacks the markers {start} ... {end}")
    return text[text.index(start) + len(start) : text.index(end)].strip()


def stale_blocks(names: list[str] | None = None) -> list[str]:
    """The blocks whose text differs from what the code makes now ("file: name")."""
    stale = []
    for name in names or list(BLOCKS):
        file, make = BLOCKS[name]
        text = (REPOSITORY / file).read_text()
        if current_block(text, name, file) != make().strip():
            stale.append(f"{file}: {name}")
    return stale


def write_blocks(names: list[str] | None = None) -> list[str]:
    """Rewrite the blocks from the code; returns those that changed."""
    changed = []
    for name in names or list(BLOCKS):
        file, make = BLOCKS[name]
        path = REPOSITORY / file
        text = path.read_text()
        old = current_block(text, name, file)
        new = make().strip()
        if old != new:
            start, end = _markers(name)
            text = text[: text.index(start) + len(start)] + "\n" + new + "\n" + text[text.index(end) :]
            atomic_write(path, lambda stream, text=text: stream.write(text))
            changed.append(f"{file}: {name}")
    return changed
