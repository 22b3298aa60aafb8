"""Command line: ``python -m hrsnet {train,summary,runs,bench,gpucheck,report} ...`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any


def parse_model_option(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value): true/false -> bool, 1,2,3 -> tuple of ints, digits -> int."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. unit=basic; got {text!r}")
    key, raw = text.split("=", 1)
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if "," in raw:
        try:
            return key, tuple(int(part) for part in raw.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{key} takes whole numbers separated by commas, e.g. 4,4,4; got {raw!r}"
            ) from None
    return key, int(raw) if raw.lstrip("-").isdigit() else raw


def _none_or(kind: type):
    """argparse type for an optional setting: the word None (any case) or a value of ``kind``."""

    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, from the field's metadata (hrsnet.config)."""
    import dataclasses

    from .config import GROUPS, TrainConfig, field_types, optional

    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    types = field_types()
    for config_field in dataclasses.fields(TrainConfig):
        name, meta = config_field.name, config_field.metadata
        group = groups[meta["group"]]
        if name == "model_options":
            group.add_argument(
                "--model-option",
                dest=name,
                action="append",
                default=[],
                type=parse_model_option,
                metavar="KEY=VALUE",
                help=meta["help"],
            )
            continue
        option = "--" + name.replace("_", "-")
        if types[name] is bool:
            group.add_argument(option, action="store_true", help=meta["help"])
            continue
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        kind = _none_or(types[name]) if optional(name) else types[name]
        group.add_argument(
            option,
            type=kind,
            default=config_field.default,
            choices=choices,
            help=meta["help"],
            metavar=None if choices else name.upper(),
        )
    groups["run"].add_argument(
        "--force", action="store_true", help="start over even if the run is finished or has a checkpoint"
    )


def config_from_args(args: argparse.Namespace):
    import dataclasses

    from .config import TrainConfig

    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from .runs import fit, fit_seeds

    config = config_from_args(args)
    if args.pack and not args.seeds:
        raise ValueError("--pack packs the runs of --seeds; give two or more seeds, e.g. --seeds 0 1 2")
    if args.seeds:
        if len(set(args.seeds)) != len(args.seeds):
            raise ValueError(f"--seeds must not repeat a seed; got {' '.join(map(str, args.seeds))}")
        configs = [dataclasses.replace(config, seed=seed) for seed in args.seeds]
        results = fit_seeds(configs, force=args.force, pack=args.pack)
        print(json.dumps([_run_report(run) for run in results], indent=2))
        return 0 if all(_succeeded(run) for run in results) else 3
    result = fit(config, force=args.force)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports the run, once
        return 0 if _succeeded(result) else 3
    print(json.dumps(_run_report(result), indent=2))
    return 0 if _succeeded(result) else 3


def _run_report(run) -> dict:
    """What `train` prints of a finished run (hrsnet.rundir.Run)."""
    return {
        "run_id": run.run_id,
        "run_dir": str(run.run_dir),
        "status": run.status.state,
        "reason": run.status.reason,
        "test_metrics": run.test_metrics,
    }


def _succeeded(run) -> bool:
    """Training ended as planned: complete or early-stopped (a diverged run is finished, not a success)."""
    return run.status.state in ("complete", "early-stopped")


def cmd_summary(args: argparse.Namespace) -> int:
    from .analysis.paper import architecture_table, claim_finding
    from .analysis.tables import markdown_table

    table = architecture_table(args.arch or None, args.width, args.image_size, args.num_classes)
    print(markdown_table(table) if args.markdown else table.to_string(index=False))
    if {"hrnet", "hrsnet"} <= set(table["network"]):
        print("\n" + claim_finding(table, args.num_classes))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """List a profile's runs (first line, on stderr: which profile and why). Each row: index, run
    id, network, C, seed, state, and what a rerun will do, with any disagreement between its files."""
    from .profiles import profile_runs, resolve_profile
    from .runs.lifecycle import check_run

    name, why = resolve_profile(args.profile)
    print(f"profile: {name} ({why})", file=sys.stderr)
    rows = []
    for index, config in enumerate(
        profile_runs(name, args.results_dir, args.data_dir, only=args.only, seeds=args.seeds)
    ):
        check = check_run(config.run_dir())
        if args.pending and check.action == "skip: finished":
            continue
        action = check.action + "".join(f"; {problem}" for problem in check.problems)
        rows.append(
            {
                "index": index,
                "run_id": config.run_id,
                "arch": config.arch,
                "width": config.width,
                "seed": config.seed,
                "state": check.state,
                "action": action,
            }
        )
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print("\t".join(str(value) for value in row.values()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import render_report

    print(render_report(args.notebooks, args.output))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import pandas as pd

    from .tools.bench import BenchOptions, parse_setting, run_benchmark
    from .tools.estimate import estimate_profile, estimate_totals

    if args.estimate:
        rows = estimate_profile(
            args.estimate,
            args.device,
            args.steps,
            args.warmup,
            args.quiet,
            histories=args.histories,
            bench_csv=args.bench_csv,
            wall_csv=args.wall_csv,
        )
        totals = estimate_totals(rows, args.jobs, args.speedup)
        if args.output:
            from .rundir import atomic_write

            atomic_write(args.output, lambda stream: pd.DataFrame(rows).to_csv(stream, index=False))
        missing = totals["runs"] - totals["runs_measured"]
        note = f" ({missing} runs not measured, left out)" if missing else ""
        released, cap = totals["sequential_minutes_released"], totals["sequential_run_minutes"]
        print(
            f"profile {args.estimate}: at most {cap:.0f} minutes ({cap / 60:.1f} h) for {len(rows)} runs "
            f"at the epoch limit; {released:.0f} minutes ({released / 60:.1f} h) at the authors' epoch counts{note}"
        )
        if args.jobs > 1:
            print(
                f"  {args.jobs} concurrent jobs, measured speedup {totals['speedup']:.2f}x: "
                f"{totals['concurrent_run_minutes']:.0f} minutes at the limit, "
                f"{totals['concurrent_minutes_released']:.0f} at the authors' counts"
            )
        if not all(row["validation_counted"] for row in rows if row["source"] != "not measured"):
            print("  note: validation time not measured for some runs (history without val_seconds): left out")
        if args.output:
            print(f"written: {args.output}")
        return 0
    options = BenchOptions(
        archs=tuple(args.arch or BenchOptions.archs),
        widths=tuple(args.width),
        settings=tuple(parse_setting(s) for s in args.settings) if args.settings else None,
        device=args.device,
        peak_tflops=args.peak_tflops,
        warmup=args.warmup,
        steps=args.steps,
        repeats=args.repeats,
        timm=not args.no_timm,
        ablation=not args.no_ablation,
        include_compile=args.compile,
        preprocessing=not args.no_preprocessing,
        results_dir=args.results_dir,
        output=args.output,
        quiet=args.quiet,
        only=tuple(args.only or ()),
        resume=args.resume,
        grid_variant=args.grid_variant,
    )
    rows, summary, path = run_benchmark(options)
    columns = [
        "group",
        "model",
        "width",
        "setting",
        "batch_size",
        "variant",
        "train_images_per_second",
        "inference_images_per_second",
        "compile_seconds",
        "peak_memory_gib",
        "achieved_tflops",
        "flop_utilisation",
    ]
    if rows:
        frame = pd.DataFrame(rows)[columns]
        numeric = columns[6:]
        frame[numeric] = frame[numeric].astype(float)
        with pd.option_context(
            "display.width", 220, "display.max_columns", 20, "display.float_format", "{:.3g}".format
        ):
            print(frame.to_string(index=False))
    for key, value in summary.items():
        print(f"{key}: {value:.3g}" if isinstance(value, float) else f"{key}: {value}")
    print(f"written: {path}")
    return 0


def cmd_gpucheck(args: argparse.Namespace) -> int:
    from .tools.gpucheck import run_gpucheck

    return run_gpucheck(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hrsnet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train one network (resumes if a checkpoint exists)",
        description="Train one network; every option is a field of hrsnet.config.TrainConfig.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_train_arguments(train)
    train.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="train these seeds one after another in this process (instead of --seed); each is its own run",
    )
    train.add_argument(
        "--pack",
        action="store_true",
        help="with --seeds: train the seeds as one packed network (hrsnet.packing; per step the same as apart)",
    )
    train.set_defaults(handler=cmd_train)

    summary = commands.add_parser("summary", help="parameters and FLOPs of the networks")
    summary.add_argument("--arch", action="append", help="network (repeatable; default: all three)")
    summary.add_argument("--width", type=int, nargs="+", default=[2, 18, 30])
    summary.add_argument("--image-size", type=int, default=224)
    summary.add_argument("--num-classes", type=int, default=100)
    summary.add_argument("--markdown", action="store_true", help="print a Markdown table")
    summary.set_defaults(handler=cmd_summary)

    from .profiles import describe_profiles

    runs = commands.add_parser(
        "runs",
        help="list the runs of a profile: index, run id, network, C, seed, state, what a rerun will do",
        epilog="profiles:\n" + describe_profiles(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runs.add_argument("--profile", default="auto", help="paper, quick, smoke or auto (default auto)")
    runs.add_argument("--only", default=None, help="a run id or an arch")
    runs.add_argument(
        "--seeds", type=positive_int, default=None, help="train seeds 0..N-1 instead of the profile's seeds"
    )
    runs.add_argument("--pending", action="store_true", help="leave out finished runs whose files agree")
    runs.add_argument("--format", choices=("tsv", "json"), default="tsv", help="tab-separated rows or JSON")
    runs.add_argument("--results-dir", default="results")
    runs.add_argument("--data-dir", default=None)
    runs.set_defaults(handler=cmd_runs)

    bench = commands.add_parser("bench", help="throughput, memory and FLOP utilisation, side by side with timm")
    bench.add_argument("--arch", action="append", help="network (repeatable; default: all three)")
    bench.add_argument("--width", type=int, nargs="+", default=[2, 18, 30])
    bench.add_argument(
        "--settings",
        nargs="+",
        metavar="SETTING",
        help="paper (224px, batch 16), throughput (224px, batch 128, halved until it fits), "
        "cpu (64px, batch 16) or NAME:SIZE:BATCH (default: paper throughput on CUDA, cpu on CPU)",
    )
    bench.add_argument("--device", default="auto")
    bench.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense bf16 peak of the device, for FLOP utilisation (default: a table of known GPUs)",
    )
    bench.add_argument("--warmup", type=int, default=None)
    bench.add_argument("--steps", type=int, default=None, help="steps per timed block")
    bench.add_argument("--repeats", type=int, default=None, help="timed blocks; the median is reported")
    bench.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="include torch.compile in the ablation (default: on CUDA only)",
    )
    bench.add_argument("--no-timm", action="store_true", help="skip timm's hrnet_w18")
    bench.add_argument("--no-ablation", action="store_true", help="skip the fast-path ablation")
    bench.add_argument("--no-preprocessing", action="store_true", help="skip the preprocessing comparison")
    bench.add_argument(
        "--only",
        nargs="+",
        metavar="PART",
        help="run only these parts: grid, peer, ablation, preprocessing, or grid cells NETWORK:C "
        "(e.g. hrnet_official:30); default: all",
    )
    bench.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in the output CSV and measure only the missing ones "
        "(each row is appended as soon as it is measured, so a killed run loses at most the rows in flight)",
    )
    bench.add_argument(
        "--grid-variant",
        choices=("default", "graphs", "plain"),
        default="default",
        help="the grid's switches: training's defaults, plus the whole-step CUDA graph, or plain fp32 eager",
    )
    bench.add_argument("--estimate", metavar="PROFILE", help="instead: estimate the minutes of each run of PROFILE")
    bench.add_argument(
        "--histories",
        nargs="+",
        metavar="PATH",
        help="--estimate: epoch times from these runs' history.csv (run directories or folders of them)",
    )
    bench.add_argument("--bench-csv", default=None, help="--estimate: epoch times from this bench CSV's rows")
    bench.add_argument(
        "--wall-csv", default=None, help="--estimate: run_id,wall_seconds of the runs in --histories (start-up, test)"
    )
    bench.add_argument("--jobs", type=positive_int, default=1, help="--estimate: concurrent jobs on the device")
    bench.add_argument(
        "--speedup",
        type=float,
        default=None,
        help="--estimate: measured combined throughput of --jobs concurrent jobs over one job alone (default 1)",
    )
    bench.add_argument("--results-dir", default="results")
    bench.add_argument(
        "--output",
        default=None,
        help="CSV path (default: RESULTS_DIR/bench/<device>.csv; with --estimate: no CSV unless given)",
    )
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(handler=cmd_bench)

    from .tools.gpucheck import add_gpucheck_arguments

    gpucheck = commands.add_parser(
        "gpucheck",
        help="correctness checks of the GPU fast paths (CUDA graphs, compile, bf16, ...); --dry-run on a CPU",
    )
    add_gpucheck_arguments(gpucheck)
    gpucheck.set_defaults(handler=cmd_gpucheck)

    report = commands.add_parser("report", help="merge executed notebooks into one HTML page, code hidden")
    report.add_argument("notebooks", nargs="+", help="executed notebooks, in page order")
    report.add_argument("--output", default="results/report.html")
    report.set_defaults(handler=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import DataNotFoundError
    from .engine.checkpoint import CheckpointError
    from .rundir import RunFileError
    from .runs.lock import RunLockedError

    try:
        return args.handler(args)
    except (ValueError, DataNotFoundError, CheckpointError, RunFileError, RunLockedError) as error:
        # One line here; the cause stays chained on the exception for notebook users.
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
