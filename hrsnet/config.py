"""TrainConfig: every setting of a training run, each declared once, with its help text.

Each field carries its metadata (help, group, allowed values, bounds, whether it is
operational); the command line (``python -m hrsnet train``), the notebooks' and profiles'
override checks, the README's option table and the validation below are all derived from it.

The run id hashes only the settings that change what is computed and differ from their
defaults, plus a format version and the network's revision: a new setting with a default
leaves every existing run id as it is. Changing a default's value changes what old ids mean:
raise RUN_ID_FORMAT when you do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .data import DATASETS, data_dir_help
from .models import PRESETS, list_models, model_config
from .models.pretrained import INITS, allowed_inits, check_init
from .runtime import DEVICE_CHOICES, OPTIMIZERS, PRECISIONS, SWITCHES, check_device_name

RUN_ID_FORMAT = 2  # 1: every field hashed, defaults included
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
GROUPS = {
    "model": "what to train",
    "data": "data",
    "optimisation": "optimisation (defaults: the released notebooks)",
    "run": "how and where to run (not part of the run id)",
}


def _model_names() -> tuple[str, ...]:
    return tuple(list_models())


def _dataset_names() -> tuple[str, ...]:
    return DATASETS


def setting(
    default: Any,
    help: str,
    group: str,
    *,
    choices: tuple | Callable[[], tuple] | None = None,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> Any:
    """A TrainConfig field and its metadata. ``minimum`` is inclusive, ``above`` and ``below`` exclusive.
    Fields of the group "run" are operational: where and how fast, not what (not in the run id)."""
    metadata = {
        "help": help,
        "group": group,
        "choices": choices,
        "minimum": minimum,
        "above": above,
        "below": below,
        "operational": group == "run",
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run, validated at construction (before any data is loaded).

    Defaults are the released notebooks' protocol: CIFAR-100 at 224x224, SGD lr 0.005
    momentum 0.9 without weight decay, batch 16, at most 25 epochs, early stopping on the
    validation loss with patience 2 and min delta 0, cross-entropy. ``optimizer="adam"``
    gives the report's text (Adam, lr 0.005, beta1 0.9).
    """

    arch: str = setting("hrnet", "the network", "model", choices=_model_names)
    width: int = setting(2, "C, the width of the highest-resolution branch", "model", minimum=1)
    model_options: tuple[tuple[str, Any], ...] = setting(
        (),
        "override one model config field (an ablation), e.g. unit=basic or modules_per_stage=4,4,4; repeatable",
        "model",
    )
    init: str = setting(
        "random",
        f"random: the preset's own initialisation; timm: ImageNet weights through timm, for {allowed_inits()}",
        "model",
        choices=INITS,
    )
    dataset: str = setting("cifar100", "the dataset", "data", choices=_dataset_names)
    data_dir: str | None = setting(None, data_dir_help(), "data")
    image_size: int = setting(224, "images are resized to this square size", "data", minimum=32)
    augment: bool = setting(False, "random crop (4-pixel padding) and horizontal flip; off in the paper", "data")
    val_fraction: float = setting(0.2, "share of the training images held out for validation", "data", above=0, below=1)
    train_subset: int | None = setting(None, "use only the first N training images (quick runs)", "data", minimum=1)
    val_subset: int | None = setting(None, "use only the first N validation images", "data", minimum=1)
    test_subset: int | None = setting(None, "use only the first N test images", "data", minimum=1)
    seed: int = setting(
        0, "sets the initialisation, the train/validation split and the data order", "optimisation", minimum=0
    )
    epochs: int = setting(25, "at most this many epochs", "optimisation", minimum=1)
    batch_size: int = setting(16, "images per training step", "optimisation", minimum=1)
    optimizer: str = setting(
        "sgd", "sgd (the released notebooks) or adam (the report's text)", "optimisation", choices=OPTIMIZERS
    )
    lr: float = setting(0.005, "learning rate", "optimisation", above=0)
    momentum: float = setting(0.9, "SGD momentum, or Adam's beta1", "optimisation", minimum=0, below=1)
    weight_decay: float = setting(0.0, "L2 weight decay", "optimisation", minimum=0)
    patience: int = setting(2, "early stopping: epochs without a better validation loss", "optimisation", minimum=0)
    min_delta: float = setting(
        0.0, "early stopping: smallest decrease that counts as better", "optimisation", minimum=0
    )
    precision: str = setting(
        "auto", "auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16", "optimisation", choices=PRECISIONS
    )
    # --- operational: where and how fast, not what (not part of the run id) ---
    device: str = setting("auto", DEVICE_CHOICES, "run")
    deterministic: bool = setting(False, "deterministic algorithms (bitwise-repeatable on a CPU)", "run")
    channels_last: str = setting(
        "auto", "channels_last memory format (auto: on for CUDA and CPU)", "run", choices=SWITCHES
    )
    compile: str = setting("none", "torch.compile mode; reduce-overhead adds CUDA graphs", "run", choices=COMPILE_MODES)
    fused_optimizer: str = setting(
        "auto", "fused optimizer kernels (auto: on for CUDA; else foreach)", "run", choices=SWITCHES
    )
    cuda_graphs: str = setting(
        "auto",
        "whole-step CUDA graphs in training (auto: off until measured to win; on: an error where impossible)",
        "run",
        choices=SWITCHES,
    )
    eval_batch_size: int | None = setting(
        None,
        "evaluation batch (None: 500 on CUDA, else max(batch_size, 64)); does not change results",
        "run",
        minimum=1,
    )
    log_every: int = setting(50, "batches between progress updates (each one is a host sync)", "run", minimum=1)
    results_dir: str = setting("results", "runs go to RESULTS_DIR/runs/<run_id>/", "run")
    quiet: bool = setting(False, "no progress bars or per-epoch lines", "run")

    def __post_init__(self) -> None:
        hints = field_types(type(self))
        for config_field in dataclasses.fields(self):
            value = _validated(config_field, hints[config_field.name], getattr(self, config_field.name))
            object.__setattr__(self, config_field.name, value)
        check_device_name(self.device)  # whether the GPU exists is checked when the run starts
        try:
            self.model_config(num_classes=1)  # the model's own validation, before any data
        except ValueError as error:
            raise ValueError(f"model_options: {error}") from error
        check_init(self.init, self.arch, self.width, self.model_options)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> TrainConfig:
        """TrainConfig(**settings), with a clear error for a name that is not a setting."""
        unknown = sorted(set(settings) - set(setting_names()))
        if unknown:
            raise ValueError(
                f"unknown setting(s) {', '.join(map(repr, unknown))}; TrainConfig has: {', '.join(setting_names())}"
            )
        return cls(**settings)

    def model_config(self, num_classes: int):
        return model_config(self.arch, self.width, num_classes, **dict(self.model_options))

    def identity(self) -> dict[str, Any]:
        """What the run computes: the format, the network's revision, and every non-operational
        setting that differs from its default (hashed into the run id)."""
        values: dict[str, Any] = {"format": RUN_ID_FORMAT, "network_revision": PRESETS[self.arch].revision}
        for config_field in dataclasses.fields(self):
            if config_field.metadata["operational"]:
                continue
            value = getattr(self, config_field.name)
            if value != _default(config_field):
                values[config_field.name] = value
        return values

    @property
    def run_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True, default=list).encode()).hexdigest()
        return f"{self.arch}_c{self.width}_{self.dataset}{self.image_size}_{digest[:8]}"

    def run_dir(self) -> Path:
        return Path(self.results_dir) / "runs" / self.run_id


def _default(config_field: dataclasses.Field) -> Any:
    if config_field.default_factory is not dataclasses.MISSING:
        return config_field.default_factory()
    return config_field.default


@cache
def field_types(config_class: type | None = None) -> dict[str, type]:
    """Each field's value type (``int`` for ``int | None``), from the annotations."""
    types = {}
    for name, hint in typing.get_type_hints(config_class or TrainConfig).items():
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        types[name] = tuple if typing.get_origin(hint) is tuple else (args[0] if args else hint)
    return types


def setting_names() -> list[str]:
    return [config_field.name for config_field in dataclasses.fields(TrainConfig)]


def optional(name: str) -> bool:
    """True for settings whose value may be None."""
    return _default(next(f for f in dataclasses.fields(TrainConfig) if f.name == name)) is None


BOOLEAN_WORDS = {"true": True, "false": False}


def from_text(name: str, kind: type, value: Any, allow_none: bool = False) -> Any:
    """``value`` as its declared type ``kind`` when it arrives as text, converted as the command line
    converts the same text ("3" -> 3, "0.5" -> 0.5, "true"/"false" in any case -> a bool, "none" ->
    None where None is allowed); any other value is returned as it is, for the validation to judge.
    Why: papermill's ``-p force false`` passes the string "false", which Python counts as true."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if allow_none and text.lower() == "none":
        return None
    if kind is bool:
        if text.lower() not in BOOLEAN_WORDS:
            raise ValueError(f"{name} must be True or False; got {value!r}")
        return BOOLEAN_WORDS[text.lower()]
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise ValueError(f"{name} must be {noun}{' or None' if allow_none else ''}; got {value!r}") from None
    return value


def settings_from_text(settings: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig settings whose values may arrive as text (a notebook's parameters), each converted
    by its field's declared type (``from_text``); unknown names are left for TrainConfig to reject."""
    types = field_types()
    return {
        name: from_text(name, types[name], value, optional(name)) if name in types else value
        for name, value in settings.items()
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validated(config_field: dataclasses.Field, kind: type, value: Any) -> Any:
    """The value, normalised (int -> float for float settings, dict -> sorted pairs), or ValueError."""
    name, meta = config_field.name, config_field.metadata
    if value is None and _default(config_field) is None:
        return value
    if config_field.name == "model_options":
        pairs = [(str(key), item) for key, item in (value.items() if isinstance(value, dict) else value)]
        repeated = sorted({key for key, _ in pairs if sum(other == key for other, _ in pairs) > 1})
        if repeated:  # else one value would be dropped without a word (and sorting mixed values fails)
            given = "; ".join(
                f"{key} = {', '.join(repr(item) for other, item in pairs if other == key)}" for key in repeated
            )
            raise ValueError(f"model_options: each key once; {', '.join(repeated)} given more than once ({given})")
        return tuple(sorted(pairs, key=lambda pair: pair[0]))
    choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    if kind is str and not isinstance(value, str):
        raise ValueError(f"{name} must be a string; got {value!r}")
    if kind is int:
        noun = "an integer" + (" or None" if _default(config_field) is None else "")
        if not _is_int(value) or (meta["minimum"] is not None and value < meta["minimum"]):
            bound = f" >= {meta['minimum']}" if meta["minimum"] is not None else ""
            raise ValueError(f"{name} must be {noun}{bound}; got {value!r}")
    if kind is float:
        bounds = [
            f">= {meta['minimum']}" if meta["minimum"] is not None else "",
            f"> {meta['above']}" if meta["above"] is not None else "",
            f"< {meta['below']}" if meta["below"] is not None else "",
        ]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (meta["minimum"] is None or value >= meta["minimum"])
        ok = (
            ok and (meta["above"] is None or value > meta["above"]) and (meta["below"] is None or value < meta["below"])
        )
        if not ok:
            raise ValueError(f"{name} must be a finite number {' and '.join(b for b in bounds if b)}; got {value!r}")
        return float(value)
    return value


def settings_markdown() -> str:
    """The README's table of training options, from the fields' metadata."""
    lines = ["| option | default | in run id | what it does |", "|---|---|---|---|"]
    for config_field in dataclasses.fields(TrainConfig):
        meta = config_field.metadata
        option = (
            "--model-option KEY=VALUE"
            if config_field.name == "model_options"
            else "--" + config_field.name.replace("_", "-")
        )
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        what = meta["help"] + (f" ({', '.join(choices)})" if choices else "")
        default = _default(config_field)
        lines.append(
            f"| `{option}` | {'' if default in (None, ()) else f'`{default}`'} | "
            f"{'no' if meta['operational'] else 'yes'} | {what.replace('|', '/')} |"
        )
    return "\n".join(lines)
