"""The HTML report: executed notebooks merged into one page, code hidden (nbconvert)."""

from __future__ import annotations

from pathlib import Path

from . import rundir


def render_report(
    notebooks: list[str | Path], output: str | Path, title: str = "HRNet and HRSNet: reproduction report"
) -> Path:
    """Concatenate the executed ``notebooks`` (in order) and write them as one HTML page without code."""
    import nbformat
    from nbconvert import HTMLExporter

    present = [Path(path) for path in notebooks if Path(path).exists()]
    if not present:
        raise ValueError(f"none of the executed notebooks exists: {', '.join(map(str, notebooks))}")
    merged = nbformat.read(present[0], as_version=4)
    for path in present[1:]:
        merged.cells.extend(nbformat.read(path, as_version=4).cells)
    merged.metadata["title"] = title
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(merged)
    output = Path(output)
    rundir.atomic_write(output, lambda stream: stream.write(body))
    return output
