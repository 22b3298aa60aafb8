"""Command line: ``python -m hrsnet {train,summary,runs,all,bench,gpucheck,report} ...`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import json
import os
import re
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


def gpu_list(text: str) -> tuple[str, ...]:
    """argparse type: GPU indices (or UUIDs) separated by commas, e.g. 0,1."""
    if not re.fullmatch(r"[0-9A-Za-z-]+(,[0-9A-Za-z-]+)*", text):
        raise argparse.ArgumentTypeError(f"needs GPU indices separated by commas, e.g. 0,1; got {text!r}")
    return tuple(text.split(","))


def cmd_all(args: argparse.Namespace) -> int:
    from .pipeline import PipelineOptions, run_pipeline

    options = PipelineOptions(
        profile=args.profile,
        seeds=args.seeds,
        force=args.force,
        only=args.only,
        jobs=args.jobs,
        gpus=args.gpus,
        train=not args.no_train,
        data_dir=args.data_dir,
        results_dir=args.results_dir,
        figures_dir=args.figures_dir,
        task=args.task,
    )
    return run_pipeline(options)


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import render_report

    print(render_report(args.notebooks, args.output))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import pandas as pd

    from .tools.bench import BenchOptions, parse_setting, run_benchmark
    from .tools.estimate import describe_totals, estimate_profile, estimate_totals

    if args.targets:
        from .tools.targets import format_targets

        if not os.path.isdir(args.targets):
            raise ValueError(f"--targets takes the folder scripts/gpu_session.sh wrote; {args.targets} is none")
        print(format_targets(args.targets))
        return 0
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
            measure_missing=args.measure,
        )
        totals = estimate_totals(rows, args.jobs, args.speedup)
        if args.output:
            from .rundir import atomic_write

            atomic_write(args.output, lambda stream: pd.DataFrame(rows).to_csv(stream, index=False))
        if not totals["runs_measured"]:
            raise ValueError(
                f"no run of profile {args.estimate} could be estimated ({max((r['source'] for r in rows), key=len)}); "
                "give --bench-csv "
                f"with rows at its image size and batch, histories of runs there, or --measure to measure here"
            )
        print("\n".join(describe_totals(args.estimate, rows, totals)))
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
        flops=not args.no_flops,
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


def cmd_docs(args: argparse.Namespace) -> int:
    from .tools.docs import stale_blocks, write_blocks

    if args.check:
        stale = stale_blocks()
        for block in stale:
            print(f"stale: {block} (python -m hrsnet docs rewrites it)", file=sys.stderr)
        return 1 if stale else 0
    for block in write_blocks():
        print(f"rewritten: {block}")
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

    import dataclasses

    from .config import TrainConfig

    every = commands.add_parser(
        "all",
        help="the whole report: train every run of a profile, then the figures and report.html (./run_all.sh)",
        description="Trains every run of the profile (one training notebook per network x C, with all its\n"
        "seeds), then executes the architecture and figures notebooks and writes RESULTS_DIR/report.html.\n"
        "Each run's outcome is read from its run directory. Ctrl-C or SIGTERM stops every job at its\n"
        "last completed epoch (exit 130 or 143); the same command again resumes, and finished runs are\n"
        "skipped. On a Slurm cluster, scripts/slurm/submit.sh trains each run as an array task (--task).",
        epilog="profiles:\n" + describe_profiles(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    every.add_argument(
        "--profile",
        default="auto",
        help="a built-in profile (below), a .toml file, or auto (default): paper with a CUDA GPU, else quick",
    )
    every.add_argument(
        "--seeds", type=positive_int, default=None, metavar="N", help="seeds 0..N-1 instead of the profile's seeds"
    )
    every.add_argument("--force", action="store_true", help="rerun finished runs from scratch")
    every.add_argument("--only", default=None, metavar="RUN_ID|ARCH", help="only the runs with this run id or network")
    every.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        metavar="N",
        help="train up to N networks x C at once (default 1): one GPU each (CUDA_VISIBLE_DEVICES, round-robin "
        "over --gpus), or on a CPU a share of the cores each (OMP_NUM_THREADS)",
    )
    every.add_argument(
        "--gpus",
        type=gpu_list,
        default=None,
        metavar="LIST",
        help="the GPUs to use, e.g. 0,1 (default with --jobs: every visible GPU)",
    )
    every.add_argument(
        "--no-train",
        action="store_true",
        help="train nothing: only the architecture and figures notebooks and the report (scripts/slurm/figures.sbatch)",
    )
    every.add_argument(
        "--data-dir",
        default=os.environ.get("HRSNET_DATA"),
        metavar="DIR",
        help=next(f for f in dataclasses.fields(TrainConfig) if f.name == "data_dir").metadata["help"],
    )
    every.add_argument("--results-dir", default="results", metavar="DIR", help="runs/, notebooks/ and report.html")
    every.add_argument("--figures-dir", default="figures", metavar="DIR", help="figures, one folder per profile")
    every.add_argument(
        "--task",
        type=int,
        default=None,
        metavar="INDEX",
        help="train only row INDEX of `python -m hrsnet runs` (a Slurm array task: scripts/slurm/train_array.sbatch)",
    )
    every.set_defaults(handler=cmd_all)

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
        "--no-flops",
        action="store_true",
        help="skip counting FLOPs per image (seconds per network at 224px): TFLOP/s and utilisation left empty",
    )
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
    bench.add_argument(
        "--measure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--estimate: measure here the networks x C that no history or bench row covers at the profile's "
        "image size and batch (default: only when neither --histories nor --bench-csv is given)",
    )
    bench.add_argument("--jobs", type=positive_int, default=1, help="--estimate: concurrent jobs on the device")
    bench.add_argument(
        "--speedup",
        type=float,
        default=None,
        help="--estimate: measured combined throughput of --jobs concurrent jobs over one job alone (default 1)",
    )
    bench.add_argument(
        "--targets",
        metavar="FOLDER",
        default=None,
        help="instead: print the performance targets against the files scripts/gpu_session.sh wrote in FOLDER",
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

    docs = commands.add_parser("docs", help="rewrite the tables in README.md and docs/ that mirror the code")
    docs.add_argument("--check", action="store_true", help="only say which tables differ from the code (exit 1 if any)")
    docs.set_defaults(handler=cmd_docs)

    report = commands.add_parser("report", help="merge executed notebooks into one HTML page, code hidden")
    report.add_argument("notebooks", nargs="+", help="executed notebooks, in page order")
    report.add_argument("--output", default="results/report.html")
    report.set_defaults(handler=cmd_report)
    return parser


TERMINATED_EXIT = 143  # what `train` returns after SIGTERM: 128 + 15, as a shell reports a process it ended


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import DataNotFoundError
    from .engine.checkpoint import CheckpointError
    from .rundir import RunFileError
    from .runs.launch import Terminated
    from .runs.lock import RunLockedError

    try:
        return args.handler(args)
    except (ValueError, DataNotFoundError, CheckpointError, RunFileError, RunLockedError) as error:
        # One line here; the cause stays chained on the exception for notebook users.
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1
    except Terminated:  # SIGTERM (kill, Slurm)
        print("terminated (SIGTERM); run the same command again to resume", file=sys.stderr)
        return TERMINATED_EXIT
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    exit_code = main()
    if exit_code == TERMINATED_EXIT:  # a second SIGTERM while Python shuts down would turn 143 into a kill
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(exit_code)
