"""The HTML report: executed notebooks merged into one page, code hidden (nbconvert).

The page opens with what a reader needs first. The notebook with a cell tagged ``report-lead``
(02_figures: the title, profile, dataset, seeds, device, date and git commit, then the claims
table) goes first, whatever the order given; the others follow in the order given (00_architecture's
tables after the figures). Cells tagged ``report-omit`` (a notebook's own introduction for readers
of the notebook) are left out of the page.
"""

from __future__ import annotations

from pathlib import Path

from .. import rundir

LEAD_TAG = "report-lead"
OMIT_TAG = "report-omit"


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def render_report(
    notebooks: list[str | Path], output: str | Path, title: str = "HRNet and HRSNet: reproduction report"
) -> Path:
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
