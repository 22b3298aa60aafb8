"""A pretrained start: the HRNet authors' ImageNet weights, through timm, for ``hrnet_official``.

``--init timm`` loads timm's ``hrnet_w<C>`` weights (ImageNet-1k classification, trained by the
HRNet authors and released in their HRNet-Image-Classification repository, Microsoft, under the
MIT licence; timm hosts them on the Hugging Face Hub as ``timm/hrnet_w<C>.<tag>`` and gives their
licence as MIT) into ``hrnet_official`` at the widths of TIMM_WEIGHTS, where our module names and
shapes are timm's (tests/test_pretrained.py checks each). The classifier is replaced: it keeps
its own random initialisation for the dataset's classes.

timm is optional: it is imported only here, only for ``--init timm``, and downloads the
weights on first use (then reads its cache). Every failure is one line (PretrainedError).
"""

from __future__ import annotations

from typing import Any

import torch

INITS = ("random", "timm")  # random: the preset's own initialisation (the paper); timm: ImageNet weights
# Our network at width C is timm's hrnet_w<C>. timm's hrnet_w18_small(_v2) have fewer modules and
# blocks, and its *_ssld variants no bias in the head convs: none of them is hrnet_official at any C.
TIMM_WEIGHTS = {"hrnet_official": {width: f"hrnet_w{width}" for width in (18, 30, 32, 40, 44, 48, 64)}}
CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")  # replaced for the dataset's classes


class PretrainedError(ValueError):
    """A pretrained start that cannot be made; the message is one line naming what and why."""


def allowed_inits() -> str:
    """Where timm has weights, in words: 'hrnet_official at C = 18, 30, 32, 40, 44, 48 or 64'."""
    return "; ".join(
        f"{arch} at C = {', '.join(map(str, list(widths)[:-1]))} or {list(widths)[-1]}"
        for arch, widths in TIMM_WEIGHTS.items()
    )


def timm_model_name(arch: str, width: int) -> str:
    """timm's name of the ImageNet network that is ``arch`` at C = ``width``; PretrainedError if none."""
    names = TIMM_WEIGHTS.get(arch, {})
    if width not in names:
        raise PretrainedError(
            f"init timm: no ImageNet weights for {arch} at C={width}; timm has them for {allowed_inits()}"
        )
    return names[width]


def check_init(init: str, arch: str, width: int, model_options: Any = ()) -> None:
    """PretrainedError unless ``init`` can start ``arch`` at C = ``width`` (before anything is built)."""
    if init not in INITS:
        raise PretrainedError(f"init must be one of {', '.join(INITS)}; got {init!r}")
    if init == "random":
        return
    timm_model_name(arch, width)
    if model_options:
        names = ", ".join(
            str(key) for key, _ in (model_options.items() if isinstance(model_options, dict) else model_options)
        )
        raise PretrainedError(
            f"init timm loads the weights into {arch} as it is, so model options ({names}) cannot be used with it"
        )


def download_timm_state_dict(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """timm's pretrained ``name``: its state dict and where it came from (the download step: timm
    fetches the weights from the Hugging Face Hub on first use, then reads its cache)."""
    try:
        import timm  # lazy: an optional dependency, needed only for --init timm
    except ImportError as error:
        raise PretrainedError(
            f"--init timm needs timm, which is not installed ({error}); pip install 'timm>=1.0' (or use --init random)"
        ) from error
    try:
        network = timm.create_model(name, pretrained=True)
    except Exception as error:  # offline, a hub error, a damaged cached file
        detail = str(error).splitlines()[0] if str(error) else "no detail"
        raise PretrainedError(
            f"timm could not load the pretrained weights of {name} ({type(error).__name__}: {detail}); they are "
            "downloaded from the Hugging Face Hub on first use: connect once, or copy a machine's Hugging Face "
            "cache (HF_HOME) here"
        ) from error
    config = dict(getattr(network, "pretrained_cfg", None) or {})
    source = {
        "timm_model": name,
        "timm_version": timm.__version__,
        "tag": config.get("tag"),
        "hf_hub_id": config.get("hf_hub_id"),
        "license": config.get("license"),
    }
    return network.state_dict(), source


def load_pretrained(model: torch.nn.Module, arch: str, width: int) -> dict[str, Any]:
    """Load timm's ImageNet weights of ``arch`` at C = ``width`` into ``model`` (every tensor but the
    classifier's, which stays as initialised for the dataset's classes); returns what was loaded."""
    name = timm_model_name(arch, width)
    state, source = download_timm_state_dict(name)
    kept = {key: value for key, value in state.items() if key not in CLASSIFIER_KEYS}
    try:
        missing, unexpected = model.load_state_dict(kept, strict=False)
    except RuntimeError as error:  # a shape that differs
        raise PretrainedError(
            f"timm's {name} does not fit {arch} C={width}: {str(error).splitlines()[1].strip()}"
        ) from error
    if unexpected or sorted(missing) != sorted(CLASSIFIER_KEYS):
        names = sorted(set(missing) - set(CLASSIFIER_KEYS)) + sorted(unexpected)
        raise PretrainedError(
            f"timm's {name} does not fit {arch} C={width}: {len(names)} tensor(s) differ, first {names[0]!r}"
        )
    return {
        "init": "timm",
        **source,
        "loaded_tensors": len(kept),
        "replaced": list(CLASSIFIER_KEYS),
        "note": "ImageNet weights; inputs are still normalised with mean 0.5 and std 0.5 (the paper's), "
        "not ImageNet's mean and std",
    }


def initialise(model: torch.nn.Module, init: str, arch: str, width: int) -> dict[str, Any]:
    """Start ``model`` as ``init`` says: as built ("random"), or from pretrained weights; what was done."""
    check_init(init, arch, width)
    if init == "random":
        return {"init": "random"}
    return load_pretrained(model, arch, width)
