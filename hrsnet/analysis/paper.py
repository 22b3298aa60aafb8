"""What the report and its released notebooks say, and the tables that put our numbers beside it.

Facts only, read off the sources (../shared/paper-facts.md); nothing here is computed from runs.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import pandas as pd

from ..models import list_models, summary
from ..models.summary import head_parameters, parameter_count

REPORT_AUTHORS = "Surya, Suthanan, Momaya, Autade"
REPORT_URL = "https://rajsurya1012.github.io/projects/HRSNet/"  # the authors' page (al-folio _projects/HRSNet.md)
RELEASED_REPOSITORY = "https://github.com/Akshara26/HRSNet-High-Resolution-Scalable-Network-for-Image-Classification"
RELEASED_COMMIT = "b1be344"
RELEASED_URL = f"{RELEASED_REPOSITORY}/tree/{RELEASED_COMMIT}"
# The setting the report's numbers come from; only runs in it are compared with those numbers.
PAPER_DATASET, PAPER_IMAGE_SIZE = "cifar100", 224
PAPER_SETTING = "CIFAR-100 at 224x224"
PAPER_SETTING_DETAIL = "50,000 training images split 80/20, the 10,000 test images, 100 classes"

# Parameter counts the report and the HRNet papers quote, to print beside ours.
CLAIMED_PARAMETERS = {
    "hrnet_official": "HRNet-W18-C 21.3M, W30-C 37.7M (1000 classes)",
    "hrnet": "about 13M (C not named)",
    "hrsnet": "about 43M (C not named)",
}
# The report: "about 13M" (HRNet) and "about 43M" (HRSNet) trainable parameters "for the same C".
CLAIMED_MILLIONS = {"hrnet": 13.0, "hrsnet": 43.0}
CLAIMED_PARAMETER_PAIR = (CLAIMED_MILLIONS["hrnet"], CLAIMED_MILLIONS["hrsnet"])  # (smaller, larger network)


class ReleasedResult(NamedTuple):
    """One test accuracy the authors' released notebooks printed (CIFAR-100 test top-1 of the
    last-epoch model), how many epochs that run went, whether the print truncated it to a whole
    percent (``'%d %%'``: the true value lies in [top1, top1 + 1%)), and the notebook."""

    top1: float
    epochs: str
    truncated: bool
    notebook: str


RELEASED_NOTEBOOK_RESULTS = {
    ("hrnet", 2): ReleasedResult(0.60, "35 (25, then resumed)", True, "HRNet_base_model.ipynb"),
    ("hrnet", 30): ReleasedResult(0.53, "10 (early stop)", True, "HRNet_base_model.ipynb"),
    ("hrsnet", 2): ReleasedResult(0.50, "17 (early stop)", True, "HRSNet_C2_final_model.ipynb"),
    ("hrsnet", 30): ReleasedResult(0.5541, "10 (early stop)", False, "HRSNet_c30_testing.ipynb"),
}
TRUNCATED_NOTE = "printed as a whole percent, truncated"

# Parameter counts of the released notebooks' networks at C=2 with 100 classes, counted from
# their code: ours must equal them (tests/test_models.py).
RELEASED_PARAMETERS_C2 = {"hrnet": 10_148_322, "hrsnet": 10_184_014}


def released_text(result: ReleasedResult) -> str:
    """ "60% (printed as a whole percent, truncated)" or "55.41%"."""
    if result.truncated:
        return f"{100 * result.top1:.0f}% ({TRUNCATED_NOTE})"
    return f"{100 * result.top1:.2f}%"


# HRSNet's stage skip, as the released notebooks compute it: the presets of HRSNet as the authors ran
# it (no skip) and as their text describes it (hrsnet.models.registry).
HRSNET_AS_RUN, HRSNET_AS_TEXT = "hrsnet", "hrsnet_skip"
STAGE_SKIP_FINDING = (
    "In the released HRSNet notebooks each stage keeps its input as `residual = x`, a Python list of "
    "branch tensors, and after the third module computes `x = x + residual`, which concatenates the two "
    "lists instead of adding tensors; the fourth module reads only the first entries, so the stage input "
    "is dropped and no skip is computed."
)
# The training loss the released notebooks printed and plotted (history.csv's train_loss_tail).
RELEASED_TRAINING_LOSS = (
    "training loss as the released notebooks computed it: mean over the batches after the last multiple of 1,000"
)


def is_paper_setting(dataset: str, image_size: int) -> bool:
    """True for runs comparable with the released numbers: CIFAR-100 at 224x224."""
    return dataset == PAPER_DATASET and image_size == PAPER_IMAGE_SIZE


def architecture_table(names=None, widths=(2, 18, 30), image_size: int = 224, num_classes: int = 100):
    """One row per network and width: parameters, FLOPs, and the claim they should be read beside."""
    return pd.DataFrame(_architecture_rows(tuple(names or list_models()), tuple(widths), image_size, num_classes))


@functools.cache  # about a second per network and width; the figures and the statistics ask again
def _architecture_rows(names: tuple[str, ...], widths: tuple[int, ...], image_size: int, num_classes: int):
    rows = []
    for name in names:
        for width in widths:
            result = summary(name, width, image_size, num_classes)
            rows.append(
                {
                    "network": name,
                    "C": width,
                    "parameters (M)": round(result.parameters / 1e6, 2),
                    "trainable (M)": round(result.trainable_parameters / 1e6, 2),
                    "forward GFLOPs": round(result.forward_flops / 1e9, 2),
                    "GMACs": round(result.forward_gmacs, 2),
                    "claimed": CLAIMED_PARAMETERS.get(name, ""),
                }
            )
    return tuple(rows)


def parameter_table(names=None, widths=(2, 18, 30), num_classes: int = 100):
    """architecture_table's "network", "C" and "parameters (M)" alone: no FLOP count (which
    takes about 1.5 s per network and width, even on the meta device)."""
    return pd.DataFrame(
        [
            {"network": name, "C": width, "parameters (M)": round(parameter_count(name, width, num_classes) / 1e6, 2)}
            for name in names or list_models()
            for width in widths
        ]
    )


def claim_finding(table, num_classes: int = 100) -> str:
    """One sentence on how our parameter counts compare with the report's 13M / 43M claim."""
    ours = {name: table[table["network"] == name].set_index("C")["parameters (M)"] for name in ("hrnet", "hrsnet")}
    ratios = (ours["hrsnet"] / ours["hrnet"]).round(2)
    widths = ", ".join(str(c) for c in ours["hrnet"].index)
    head = head_parameters("hrnet", int(ours["hrnet"].index.min()), num_classes)
    claimed_ratio = CLAIMED_MILLIONS["hrsnet"] / CLAIMED_MILLIONS["hrnet"]
    return (
        f"For C in {{{widths}}} our HRNet has {ours['hrnet'].min():.1f}M to {ours['hrnet'].max():.1f}M parameters and "
        f"HRSNet {ours['hrsnet'].min():.1f}M to {ours['hrsnet'].max():.1f}M; HRSNet is {ratios.min():.2f}x to "
        f"{ratios.max():.2f}x the size of HRNet at the same C, not the claimed 43/13 = {claimed_ratio:.1f}x, because "
        f"{head / 1e6:.1f}M parameters sit in the classification head, whose widths barely depend on C."
        + (" No single C gives both 'about 13M' and 'about 43M'." if ratios.max() < claimed_ratio / 1.5 else "")
    )
