"""Profiles: what one ``./run_all.sh --profile P`` trains and compares, as small TOML files.

A profile names the runs (networks x widths x seeds, the dataset and every training setting)
and what the report makes of them: the paired comparisons, the report's claims to decide, and
the networks each figure draws. The built-in profiles are files in this folder (``paper.toml``,
``quick.toml``, ``smoke.toml``); ``--profile my.toml`` reads any other. A profile may start from
another (``base = "paper"``) and say only what differs: tables (``settings``, ``figures``) are
merged key by key, everything else is replaced. An unknown key or value is a one-line error
naming it and what is allowed.

The pipeline asks ``profile_runs`` for the runs, the training notebook rebuilds each run's
TrainConfig with ``run_config``, and the figures and statistics read the comparisons, claims
and figures from the same Profile.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig, from_text, setting_names, settings_from_text
from ..models import list_models

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport (a dependency there)
    import tomli as tomllib

BUILT_IN_FOLDER = Path(__file__).resolve().parent
# What a claim of the report is about; hrsnet.analysis.claims decides each (and checks it has one
# function per kind). "networks" are the networks the claim compares, in the order it names them.
CLAIM_KINDS = {
    "lower_loss_small_c": "a's final training loss is lower than b's at the smallest C",
    "gap_closes": "the training-loss gap between b and a is larger at the smallest C than at the largest",
    "lower_loss": "a's final training loss is lower than b's, averaged over C",
    "overfitting": "at the largest C the validation loss rises while the training loss falls (every network)",
    "more_accurate": "a's test top-1 is higher than b's, averaged over C",
    "parameters": "about 13M parameters for a and about 43M for b at the same C",
    "differs": "a differs from b (training loss and test top-1, either direction)",
}
FIGURE_KINDS = ("training_loss", "accuracy", "train_vs_val", "best_worst_classes")
PROFILE_KEYS = {
    "base": "a built-in profile or a TOML file this one starts from",
    "name": "the profile's name (default: the file's name)",
    "description": "one line on what the profile is",
    "cost": "what it costs to run, in words",
    "networks": "the networks to train (presets of hrsnet.models)",
    "widths": "the widths C to train",
    "seeds": "how many seeds (0..N-1) or which seeds, as a list",
    "settings": "TrainConfig fields, e.g. dataset, image_size, epochs",
    "comparisons": "paired comparisons [{a, b}]: a - b per seed, every metric",
    "claims": "the report's claims to decide [{kind, networks, reading}]",
    "figures": "figure name -> {kind, networks, title}",
}


class ProfileError(ValueError):
    """A profile file that cannot be used; the message is one line naming what is wrong."""


@dataclass(frozen=True)
class Comparison:
    """``a - b``, paired by seed (the same seed gives both the same split and data order)."""

    a: str
    b: str

    @property
    def networks(self) -> tuple[str, str]:
        return (self.a, self.b)


@dataclass(frozen=True)
class ClaimSpec:
    """One claim to decide: its kind (CLAIM_KINDS), the networks it is about, and which reading of
    the report it is ("" for the main one, e.g. "the text's HRSNet" for a second reading)."""

    kind: str
    networks: tuple[str, ...]
    reading: str = ""


@dataclass(frozen=True)
class FigureSpec:
    """One figure: its file name (without suffix), what it draws, of which networks, its title."""

    name: str
    kind: str
    networks: tuple[str, ...]
    title: str = ""


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    cost: str
    widths: tuple[int, ...]
    settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    networks: tuple[str, ...] = tuple(list_models())
    # Every network x C trains each seed; the same seed gives every network the same split and
    # data order, so comparisons between networks are paired by seed. Seed 0 is the default
    # setting, so its run ids are those of the single-seed runs before seeds existed.
    seeds: tuple[int, ...] = (0,)
    comparisons: tuple[Comparison, ...] = ()
    claims: tuple[ClaimSpec, ...] = ()
    figures: tuple[FigureSpec, ...] = ()
    source: str = ""  # the file it was read from

    def seed_list(self, count: int | None = None) -> tuple[int, ...]:
        """The profile's seeds, or the first ``count`` seeds (0, 1, ...) when a count is given."""
        if count is None:
            return self.seeds
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"the number of seeds must be a whole number >= 1; got {count!r}")
        return tuple(range(count))

    @property
    def dataset(self) -> str:
        return TrainConfig.from_settings(self.settings).dataset


# --- reading a profile file ----------------------------------------------------------------------


def _fail(source: str, message: str) -> None:
    raise ProfileError(f"profile {source}: {message}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise ProfileError(f"profile file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ProfileError(f"profile file {path} is not readable TOML ({error})") from None


def profile_path(name_or_path: str | Path) -> Path:
    """The file of a built-in profile name, or the given TOML file."""
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text:
        return Path(text).expanduser()
    path = BUILT_IN_FOLDER / f"{text}.toml"
    if not path.exists():
        raise ProfileError(f"profile must be one of {', '.join(PROFILE_NAMES)} or a .toml file; got {text!r}")
    return path


def _raw(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's keys merged onto its base's (tables key by key, the rest replaced)."""
    path = path.resolve()
    if path in seen:
        _fail(str(path), f"its bases form a loop ({' -> '.join(p.name for p in (*seen, path))})")
    values = _read_toml(path)
    unknown = sorted(set(values) - set(PROFILE_KEYS))
    if unknown:
        _fail(str(path), f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(PROFILE_KEYS)}")
    settings = values.get("settings")
    if isinstance(settings, dict) and isinstance(settings.get("data_dir"), str):
        # Relative to this file, not to where a command runs (the notebooks run in notebooks/).
        settings["data_dir"] = str((path.parent / Path(settings["data_dir"]).expanduser()).resolve())
    base = values.pop("base", None)
    if base is None:
        return {"name": path.stem, **values}
    if not isinstance(base, str):
        _fail(str(path), f"base must be a profile name or a .toml path; got {base!r}")
    base_path = profile_path(base) if not base.endswith(".toml") else (path.parent / base)
    merged = _raw(base_path, (*seen, path))
    merged["name"] = path.stem
    for key, value in values.items():
        if key in ("settings", "figures") and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _names(source: str, key: str, value: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        _fail(source, f"{key} must be a non-empty list of names; got {value!r}")
    unknown = [item for item in value if item not in allowed]
    if unknown:
        _fail(source, f"{key}: unknown network(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return tuple(value)


def _table_list(source: str, key: str, value: Any, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        _fail(source, f"{key} must be a list of tables ([[{key}]]); got {value!r}")
    for item in value:
        unknown = sorted(set(item) - set(fields))
        if unknown:
            _fail(source, f"{key}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
    return value


def load_profile(name_or_path: str | Path) -> Profile:
    """The Profile of a built-in name or a TOML file, validated (ProfileError: one line)."""
    path = profile_path(name_or_path)
    raw = _raw(path)
    source = str(name_or_path)
    presets = tuple(list_models())
    networks = _names(source, "networks", raw.get("networks", list(presets)), presets)
    widths = raw.get("widths")
    if not isinstance(widths, list) or not widths or not all(_whole(w, 1) for w in widths):
        _fail(source, f"widths must be a non-empty list of whole numbers >= 1; got {widths!r}")
    seeds = raw.get("seeds", 1)
    if _whole(seeds, 1):
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(_whole(s, 0) for s in seeds) or len(set(seeds)) < len(seeds):
        _fail(source, f"seeds must be a whole number >= 1 or a list of distinct seeds >= 0; got {raw.get('seeds')!r}")
    settings = raw.get("settings", {})
    if not isinstance(settings, dict):
        _fail(source, f"settings must be a table of TrainConfig fields; got {settings!r}")
    unknown = sorted(set(settings) - set(setting_names()))
    if unknown:
        _fail(
            source, f"settings: unknown setting(s) {', '.join(unknown)}; TrainConfig has: {', '.join(setting_names())}"
        )
    clash = sorted(set(settings) & {"arch", "width", "seed"})
    if clash:
        _fail(source, f"settings: {', '.join(clash)} come from networks, widths and seeds, not from settings")
    try:
        TrainConfig.from_settings({**settings, "arch": networks[0], "width": widths[0]})
    except ValueError as error:
        _fail(source, f"settings: {error}")
    comparisons = tuple(
        Comparison(*_names(source, "comparisons", [item.get("a"), item.get("b")], presets))
        for item in _table_list(source, "comparisons", raw.get("comparisons", []), ("a", "b"))
    )
    claims = []
    for item in _table_list(source, "claims", raw.get("claims", []), ("kind", "networks", "reading")):
        if item.get("kind") not in CLAIM_KINDS:
            _fail(source, f"claims: unknown kind {item.get('kind')!r}; allowed: {', '.join(CLAIM_KINDS)}")
        claim_networks = _names(source, "claims' networks", item.get("networks"), presets)
        claims.append(ClaimSpec(item["kind"], claim_networks, str(item.get("reading", ""))))
    figures = []
    raw_figures = raw.get("figures", {})
    if not isinstance(raw_figures, dict):
        _fail(source, f"figures must be a table of name = {{kind, networks, title}}; got {raw_figures!r}")
    for name, spec in raw_figures.items():
        if not isinstance(spec, dict) or sorted(set(spec) - {"kind", "networks", "title"}):
            _fail(source, f"figures.{name} must be a table with kind, networks and title; got {spec!r}")
        if spec.get("kind") not in FIGURE_KINDS:
            _fail(source, f"figures.{name}: unknown kind {spec.get('kind')!r}; allowed: {', '.join(FIGURE_KINDS)}")
        figure_networks = _names(source, f"figures.{name}.networks", spec.get("networks"), presets)
        figures.append(FigureSpec(name, spec["kind"], figure_networks, str(spec.get("title", ""))))
    for key in ("name", "description", "cost"):
        if not isinstance(raw.get(key, ""), str):
            _fail(source, f"{key} must be a string; got {raw[key]!r}")
    return Profile(
        name=raw["name"],
        description=raw.get("description", ""),
        cost=raw.get("cost", ""),
        widths=tuple(widths),
        settings=dict(settings),
        networks=networks,
        seeds=tuple(seeds),
        comparisons=comparisons,
        claims=tuple(claims),
        figures=tuple(figures),
        source=str(path),
    )


def _whole(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


BUILT_IN = tuple(sorted(path.stem for path in BUILT_IN_FOLDER.glob("*.toml")))
PROFILE_NAMES = (*BUILT_IN, "auto")


def resolve_profile(name: str | Path) -> tuple[str, str]:
    """(profile name or file, why): ``auto`` is ``paper`` with a CUDA GPU, else ``quick``."""
    if str(name) != "auto":
        load_profile(name)  # an unknown name or a bad file fails here, in one line
        return str(name), "asked for"
    if torch.cuda.is_available():
        return "paper", f"auto: a CUDA GPU is visible ({torch.cuda.get_device_name(0)})"
    return "quick", "auto: no CUDA GPU is visible, so the CPU-sized profile"


def get_profile(name: str | Path) -> Profile:
    """The Profile ``name`` resolves to (``auto`` included)."""
    return load_profile(resolve_profile(name)[0])


def run_config(
    profile: str | Path | Profile,
    arch: str,
    width: int,
    results_dir: str | Path = "results",
    data_dir: str | Path | None = None,
    **overrides: Any,
) -> TrainConfig:
    """The TrainConfig of one run of ``profile``; ``overrides`` (TrainConfig fields; None keeps the
    profile's value) change single settings."""
    spec = profile if isinstance(profile, Profile) else get_profile(profile)
    settings = dict(spec.settings)
    settings.update({key: value for key, value in overrides.items() if value is not None})
    settings.update(arch=arch, width=width, results_dir=str(results_dir))
    if data_dir is not None:
        settings["data_dir"] = str(data_dir)
    return TrainConfig.from_settings(settings)


# The training notebook's parameters (notebooks/01_train.ipynb) besides run_config's arguments and
# TrainConfig's own quiet: name -> (declared type, what is allowed). ``seed_runs`` checks them.
NOTEBOOK_PARAMETERS: dict[str, tuple[type, str]] = {
    "seeds": (list, "a non-empty list of distinct whole numbers >= 0, e.g. [0, 1, 2]"),
    "force": (bool, "True or False (True starts finished runs over)"),
    "pack": (bool, "True or False (True trains the seeds as one packed network)"),
    "settings": (dict, 'a dict of TrainConfig settings that override the profile, e.g. {"epochs": 3}'),
}
# Settings that come from a parameter of their own, never from ``settings``.
OWN_PARAMETERS = {
    "arch": "arch",
    "width": "width",
    "seed": "seeds",
    "results_dir": "results_dir",
    "data_dir": "data_dir",
    "quiet": "quiet",
}


@dataclass(frozen=True)
class SeedRuns:
    """What the training notebook trains: the runs of one network x C of a profile, one per seed."""

    profile: str
    why: str
    configs: tuple[TrainConfig, ...]
    force: bool
    pack: bool

    def describe(self) -> str:
        return f"profile {self.profile} ({self.why}); runs {', '.join(config.run_id for config in self.configs)}"


def _parameter(name: str, value: Any) -> Any:
    """A notebook parameter of NOTEBOOK_PARAMETERS, converted from text where it may be and checked."""
    kind, allowed = NOTEBOOK_PARAMETERS[name]
    value = from_text(name, kind, value)
    if kind is list:
        ok = isinstance(value, (list, tuple)) and value and all(_whole(seed, 0) for seed in value)
        if not ok or len(set(value)) < len(value):
            raise ValueError(f"{name} must be {allowed}; got {value!r}")
        return tuple(value)
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return value


def seed_runs(
    profile: str | Path,
    arch: str,
    width: int | str,
    seeds: Any,
    results_dir: str | Path = "results",
    data_dir: str | Path | None = None,
    force: Any = False,
    pack: Any = True,
    quiet: Any = False,
    settings: Any = None,
) -> SeedRuns:
    """The runs the training notebook's parameters describe, every parameter checked by its declared
    type (TrainConfig's fields, NOTEBOOK_PARAMETERS) as the command line checks it: ``force="false"``
    is False, and a bad value is a ValueError naming the parameter and what is allowed."""
    seed_list = _parameter("seeds", seeds)
    force, pack = _parameter("force", force), _parameter("pack", pack)
    settings = _parameter("settings", {} if settings is None else settings)
    clash = sorted(set(settings) & set(OWN_PARAMETERS))
    if clash:
        raise ValueError(
            f"settings must not set {clash[0]}: it comes from the parameter {OWN_PARAMETERS[clash[0]]} "
            f"(settings may hold any other TrainConfig setting, e.g. {{'epochs': 3}})"
        )
    overrides = settings_from_text({**settings, "width": width, "quiet": quiet, "data_dir": data_dir})
    width, quiet, data_dir = overrides.pop("width"), overrides.pop("quiet"), overrides.pop("data_dir")
    for name, value in (("results_dir", results_dir), ("data_dir", data_dir)):
        if not (isinstance(value, (str, Path)) or (name == "data_dir" and value is None)):
            allowed = "a folder path" + (" or None" if name == "data_dir" else "")
            raise ValueError(f"{name} must be {allowed}; got {value!r}")
    name, why = resolve_profile(profile)
    spec = load_profile(name)
    configs = tuple(
        run_config(spec, arch, width, results_dir, data_dir, quiet=quiet, **{**overrides, "seed": seed})
        for seed in seed_list
    )
    return SeedRuns(name, why, configs, force, pack)


def profile_runs(
    profile: str | Path | Profile,
    results_dir: str | Path = "results",
    data_dir: str | Path | None = None,
    only: str | None = None,
    seeds: int | None = None,
    **overrides: Any,
) -> list[TrainConfig]:
    """Every run of ``profile`` (networks x widths x seeds; ``seeds`` = N takes seeds 0..N-1
    instead of the profile's), optionally only those whose run id or arch is ``only``."""
    spec = profile if isinstance(profile, Profile) else get_profile(profile)
    runs = [
        run_config(spec, arch, width, results_dir, data_dir, **{**overrides, "seed": seed})
        for arch in spec.networks
        for width in spec.widths
        for seed in spec.seed_list(seeds)
    ]
    if only is not None:
        selected = [run for run in runs if only in (run.run_id, run.arch)]
        if not selected:
            choices = sorted({run.arch for run in runs}) + [run.run_id for run in runs]
            raise ValueError(f"--only {only!r} matches no run of profile {spec.name}; choose from {', '.join(choices)}")
        runs = selected
    return runs


def describe_profiles() -> str:
    """One line per built-in profile, for --help."""
    lines = []
    for name in BUILT_IN:
        profile = load_profile(name)
        lines.append(f"  {profile.name:6s} {profile.description} [{profile.cost}]")
    return "\n".join(lines)


PROFILES: dict[str, Profile] = {name: load_profile(name) for name in BUILT_IN}
