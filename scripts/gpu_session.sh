#!/usr/bin/env bash
# What one GPU measures for this project, in one command of at most 8 minutes (TOTAL_SECONDS),
# on a bare machine with python3 and torch (no pip, papermill or network: only
# `python3 -m hrsnet ...` and `python3 -m pytest`). See docs/gpu.md.
#
#   scripts/gpu_session.sh [--dry-run] [FOLDER]
#
# Steps, in the order of what each decides (a later one is worth little if an earlier fails);
# each command runs under its own `timeout` (its cap, or what is left of the total), and every
# CSV gets its rows as they are measured, so a step cut short keeps what it measured:
#   1. versions; the CUDA tests (graph replay against eager, and every test named for CUDA)
#   2. gpucheck without torch.compile: no host sync (augmentation too), graph vs eager, the fast
#      paths, fit() with graphs, the checkpoint round trip
#   3. the real loop: fit() at 224px, batch 16, hrnet_official C=18 on the synthetic dataset,
#      eager, whole-step CUDA graphs and 3 packed seeds, two epochs each, timed on epoch 2
#   4. bench rows: batch 16 against timm (default, graphs, plain fp32, timm AMP + channels_last);
#      batch 128 against timm; C=30 at batch 128 with its FLOP utilisation; every network x C at
#      batch 16 (for the estimate); then the estimate of the paper profile from the loop
#   5. if time is left: peak memory at C=30 for batch 16 and 128; a deterministic fit twice
# Then `python3 -m hrsnet bench --targets FOLDER` prints the numbers against the targets.
#
# FOLDER (default results/gpu/<date-time>; --dry-run: a new temporary folder) must be new or
# empty; it receives exactly these flat files: versions.txt, pytest_cuda.txt, gpucheck.csv,
# loop.csv, targets.csv, estimate.csv, memory.csv, run.log. Everything else (the runs) lives
# in a temporary folder that is removed at the end.
#
# --dry-run: the same steps on the CPU at tiny sizes (digits at 32px, C=1 or 2, gpucheck on a shallower
# network; the smoke profile for the estimate); what needs CUDA says so. tests/test_gpu_session.py runs it.
#
# Environment: PYTHON (default python3), TOTAL_SECONDS (default 480; 1920 with --dry-run), TIME_SCALE
# (each command's cap multiplied; default 1; 4 with --dry-run), PEAK_TFLOPS (the bf16 peak
# for FLOP utilisation; default 790, an 8192^3 bf16 matrix product measured on H100 and H200),
# LOOP_TRAIN_SUBSET (default 1600 training images: 100 steps an epoch; the estimate scales it).
set -uo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: $0 [--dry-run] [FOLDER]" >&2
    exit 2
}
dry=0
out=
for arg in "$@"; do
    case $arg in
        --dry-run) dry=1 ;;
        -*) usage ;;
        *) [[ -z $out ]] && out=$arg || usage ;;
    esac
done

PYTHON=${PYTHON:-python3}
# A CPU at tiny sizes (--dry-run) is slower than a GPU at the real ones: its limits are 4x.
TIME_SCALE=${TIME_SCALE:-$( ((dry)) && echo 4 || echo 1)}
TOTAL_SECONDS=${TOTAL_SECONDS:-$((480 * TIME_SCALE))}
PEAK_TFLOPS=${PEAK_TFLOPS:-790}
FILES=(versions.txt pytest_cuda.txt gpucheck.csv loop.csv targets.csv estimate.csv memory.csv run.log)
FINAL_SECONDS=30  # kept for the targets' printout at the end
KILL_AFTER=10     # a command that ignores SIGINT is killed this long after its limit

if ((dry)); then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} # tiny sizes: threads only contend
    out=${out:-$(mktemp -d "${TMPDIR:-/tmp}/hrsnet-gpu-dry-run.XXXXXX")}
else
    if ! nvidia-smi -L >/dev/null 2>&1; then
        echo "error: no NVIDIA GPU answers here (nvidia-smi -L); --dry-run runs the same steps on the CPU" >&2
        exit 2
    fi
    out=${out:-results/gpu/$(date +%Y%m%d-%H%M%S)}
fi
if [[ -e $out && ! -d $out ]] || [[ -d $out && -n $(ls -A "$out") ]]; then
    echo "error: $out is not a new or empty folder; give one (this script leaves its ${#FILES[@]} files there)" >&2
    exit 2
fi
mkdir -p "$out" || exit 2
work=$(mktemp -d "${TMPDIR:-/tmp}/hrsnet-gpu-work.XXXXXX")
trap 'rm -rf "$work"' EXIT
LOG=$out/run.log
started=$SECONDS
deadline=$((SECONDS + TOTAL_SECONDS - FINAL_SECONDS))
failures=()

log() { echo "[$(date '+%H:%M:%S') +$((SECONDS - started))s] $*" | tee -a "$LOG"; }

# run CAP COMMAND...: under timeout (CAP seconds or what is left), output to the log (and to
# $TO if set). Its failure is recorded; the next command still runs.
run() {
    local cap=$(($1 * TIME_SCALE))
    shift
    local limit=$((deadline - SECONDS - KILL_AFTER))
    ((cap < limit)) && limit=$cap
    if ((limit < 5)); then
        log "skipped (the ${TOTAL_SECONDS} s are used up): $*"
        failures+=("skipped: ${*:1:4}")
        return 124
    fi
    log "\$ $* (at most ${limit} s)"
    local status=0
    if [[ -n ${TO:-} ]]; then
        timeout -s INT -k "$KILL_AFTER" "$limit" "$@" 2>&1 | tee -a "$LOG" "$TO" || status=$?
    else
        timeout -s INT -k "$KILL_AFTER" "$limit" "$@" 2>&1 | tee -a "$LOG" || status=$?
    fi
    if ((status != 0)); then
        log "exit status $status$( ((status == 124 || status == 130)) && echo ' (time limit)'): $*"
        failures+=("status $status: ${*:1:4}")
    fi
    return $status
}

if ((dry)); then
    device=cpu
    check=(--dry-run --device cpu)
    bench_sizes=(--warmup 0 --steps 1 --repeats 1 --no-compile)
    paper=paper:32:2 throughput=throughput:32:4 grid=paper:32:16 c30=hrnet_official:1 grid_widths=(1)
    profile=smoke seeds=(0 1)
    # One training step an epoch (16 images at batch 16): epoch 2 is still timed apart from epoch 1.
    loop_model=(--arch hrnet --width 1) loop_data=(--dataset digits --image-size 32 --batch-size 16
        --train-subset 16 --val-subset 8 --test-subset 8)
    memory=(--memory-widths 1 --memory-batches 16 32)
else
    device=cuda
    check=()
    bench_sizes=()
    paper=paper throughput=throughput grid=paper c30=hrnet_official:30 grid_widths=(2 18 30) profile=paper
    seeds=(0 1 2)
    loop_model=(--arch hrnet_official --width 18) loop_data=(--dataset synthetic --image-size 224 --batch-size 16
        --train-subset "${LOOP_TRAIN_SUBSET:-1600}" --val-subset 320 --test-subset 320)
    memory=(--memory-widths 30 --memory-batches 16 128)
fi
log "GPU measurements on $device (dry run: $dry), at most $TOTAL_SECONDS s, into $out"

log "step 1: versions and the CUDA tests"
{
    ! command -v nvidia-smi >/dev/null || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    echo "git commit: $(git rev-parse HEAD 2>/dev/null || echo unknown), files changed: $(git status --porcelain \
        --untracked-files=no 2>/dev/null | wc -l)"
} >"$out/versions.txt" 2>&1
# Package versions without importing torch (seconds); gpucheck's header adds CUDA and cuDNN.
TO=$out/versions.txt run 30 "$PYTHON" -c 'import importlib.metadata as metadata, platform
print("python", platform.python_version(), platform.platform())
for name in ("torch", "torchvision", "timm", "numpy", "pandas", "scipy", "pytest"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "not installed")'
# The CUDA tests: tests/test_cudagraphs.py and every test with "cuda" in its name (on a CPU they
# skip, saying why: the dry run lists them).
TO=$out/pytest_cuda.txt run 90 "$PYTHON" -m pytest -p no:cacheprovider -q -rs $( ((dry)) && echo --collect-only) \
    tests/test_cudagraphs.py tests/test_checkpoint.py tests/test_preflight.py -k cuda

log "step 2: gpucheck (correctness of the fast paths, without torch.compile)"
run 110 "$PYTHON" -m hrsnet gpucheck "${check[@]}" --no-compile \
    --only no_host_sync graph_vs_eager fast_paths fit_graphs checkpoint --output "$out/gpucheck.csv"

log "step 3: the real loop, two epochs each, timed on epoch 2"
loop_settings=()
echo run_id,wall_seconds >"$work/wall.csv"
for setting in eager graphs packed; do
    case $setting in
        eager) extra=(--cuda-graphs off) ;;
        graphs) extra=(--cuda-graphs on) ;;
        packed) extra=(--seeds "${seeds[@]}" --pack) ;;
    esac
    if [[ $setting == graphs && $device != cuda ]]; then
        log "loop $setting: skipped (whole-step CUDA graphs need CUDA)"
        continue
    fi
    begin=$(date +%s%N)
    if run 70 "$PYTHON" -m hrsnet train --results-dir "$work/loop/$setting" --quiet --device "$device" \
        "${loop_model[@]}" "${loop_data[@]}" --epochs 2 "${extra[@]}"; then
        loop_settings+=("$setting")
        milliseconds=$((($(date +%s%N) - begin) / 1000000))
        for run_dir in "$work/loop/$setting"/*/; do # one process trained the pack: its wall time each
            printf '%s,%d.%03d\n' "$(basename "$run_dir")" $((milliseconds / 1000)) $((milliseconds % 1000))
        done >>"$work/wall.csv"
    fi
done
if ((${#loop_settings[@]})); then
    run 30 "$PYTHON" -c 'import sys
from hrsnet.tools.estimate import write_loop_comparison
write_loop_comparison(sys.argv[1], sys.argv[3:], sys.argv[2])' "$work/loop" "$out/loop.csv" "${loop_settings[@]}"
fi

log "step 4: bench rows against timm, C=30's FLOP utilisation, every network x C; the estimate"
bench=("$PYTHON" -m hrsnet bench --device "$device" --output "$out/targets.csv" --resume "${bench_sizes[@]}")
# Batch 16, then batch 128 (halved until it fits): our default path, whole-step graphs (CUDA),
# plain fp32 eager, timm AMP + channels_last, side by side; each batch's rows written when done.
run 120 "${bench[@]}" --settings "$paper" "$throughput" --only peer --no-flops \
    $( ((dry)) || echo --warmup 5 --steps 5 --repeats 5)
# C=30 at batch 128, FLOPs counted: its utilisation of the bf16 peak.
run 50 "${bench[@]}" --settings "$throughput" --only "$c30" --width "${c30##*:}" --peak-tflops "$PEAK_TFLOPS" \
    $( ((dry)) || echo --warmup 5 --steps 5 --repeats 5)
# Every network x C at batch 16 (short timing): the estimate scales the loop by these ratios.
run 75 "${bench[@]}" --settings "$grid" --only grid --width "${grid_widths[@]}" --no-flops \
    $( ((dry)) || echo --warmup 3 --steps 5 --repeats 3)
if [[ -d $work/loop ]]; then
    estimate=("$PYTHON" -m hrsnet bench --estimate "$profile" --histories "$work/loop" --wall-csv "$work/wall.csv"
        --output "$out/estimate.csv")
    [[ -s $out/targets.csv ]] && estimate+=(--bench-csv "$out/targets.csv")
    run 40 "${estimate[@]}"
else
    log "estimate: skipped (no loop run finished)"
    failures+=("skipped: estimate")
fi

log "step 5: peak memory at C=30, a deterministic fit twice"
run 120 "$PYTHON" -m hrsnet gpucheck "${check[@]}" --only deterministic memory "${memory[@]}" \
    --output "$out/memory.csv"

deadline=$((deadline + FINAL_SECONDS))
log "the targets"
run $(((FINAL_SECONDS - KILL_AFTER) / TIME_SCALE)) "$PYTHON" -m hrsnet bench --targets "$out"
for path in "$out"/* "$out"/.[!.]*; do
    [[ -e $path ]] || continue
    [[ " ${FILES[*]} " == *" ${path##*/} "* && -f $path ]] || log "unexpected in $out: ${path##*/}"
done
if ((${#failures[@]})); then
    log "finished in $((SECONDS - started)) s with ${#failures[@]} failed or skipped command(s): ${failures[*]}"
    exit 1
fi
log "finished in $((SECONDS - started)) s; all steps passed; files in $out"
