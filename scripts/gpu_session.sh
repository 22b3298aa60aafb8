#!/usr/bin/env bash
# A GPU session's measurements, in parts that each fit one 10-minute device command:
#
#   scripts/gpu_session.sh check   [--dry-run]   python -m hrsnet gpucheck (correctness of the fast paths)
#   scripts/gpu_session.sh targets [--dry-run]   the issue's benchmark rows (batch 16 and 128 vs timm, FLOPs)
#   scripts/gpu_session.sh loop    [--dry-run]   the real loop (fit) at the paper's batch: eager,
#                                                whole-step CUDA graphs, 3 packed seeds (loop.csv)
#   scripts/gpu_session.sh paper   [--dry-run]   one real epoch per network x C, a concurrency
#                                                speedup, then bench --estimate paper from them
#
# Each part runs under `timeout` (PART_SECONDS, default 540 s in all) and writes its CSVs and
# <part>.log into one folder, results/gpu/<device>/ (GPU_SESSION_DIR overrides it). Every part
# can be run again after a timeout: bench rows are appended as measured (--resume skips them),
# finished trainings are skipped. Only `python -m hrsnet ...` is used (no papermill, no pytest).
# --dry-run: the same commands on the CPU at tiny sizes (the test suite runs them).
#
# Environment: PYTHON (default python3), GPU_SESSION_DIR, PART_SECONDS, PAPER_ARCHS,
# PAPER_WIDTHS, PAPER_TRAIN_SUBSET (a part of the 40,000 training images; scaled up in the
# estimate), CONCURRENT_JOBS (default 3), LOOP_ARCH, LOOP_WIDTH, LOOP_TRAIN_SUBSET.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 check|targets|loop|paper [--dry-run]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
part=$1
shift
dry=0
for arg in "$@"; do
    case $arg in
        --dry-run) dry=1 ;;
        *) usage ;;
    esac
done
case $part in check | targets | loop | paper) ;; *) usage ;; esac

PYTHON=${PYTHON:-python3}
PART_SECONDS=${PART_SECONDS:-540}
if ((dry)); then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny sizes: threads only contend
    device=cpu
    default_dir=${TMPDIR:-/tmp}/hrsnet-gpu-dry-run
else
    device=cuda
    default_dir=
fi
if [[ -z ${GPU_SESSION_DIR:-} && -z $default_dir ]]; then
    slug=$("$PYTHON" -c 'import torch
from hrsnet.tools.bench import device_slug
print(device_slug(torch.device("cuda")) if torch.cuda.is_available() else "")')
    if [[ -z $slug ]]; then
        echo "error: torch sees no CUDA GPU; run with --dry-run on a CPU" >&2
        exit 2
    fi
    default_dir=results/gpu/$slug
fi
DIR=${GPU_SESSION_DIR:-$default_dir}
mkdir -p "$DIR"
LOG=$DIR/$part.log
deadline=$((SECONDS + PART_SECONDS))

log() { echo "[$(date '+%H:%M:%S')] $*" | tee -a "$LOG"; }

# run SECONDS_AT_MOST COMMAND...: under timeout (the part's deadline or less), output to the log.
run() {
    local limit=$1
    shift
    local left=$((deadline - SECONDS))
    ((left < limit)) && limit=$left
    if ((limit < 5)); then
        log "skipped (part's time is up): $*"
        return 124
    fi
    log "\$ $* (at most ${limit} s)"
    local status=0
    timeout -s INT -k 20 "$limit" "$@" 2>&1 | tee -a "$LOG" || status=$?
    ((status == 0)) || log "exit status $status: $*"
    return $status
}

log "part $part on $device (dry run: $dry) into $DIR"

part_check() {
    if ((dry)); then
        run "$PART_SECONDS" "$PYTHON" -m hrsnet gpucheck --dry-run --device cpu --output "$DIR"
    else
        run "$PART_SECONDS" "$PYTHON" -m hrsnet gpucheck --output "$DIR"
    fi
}

part_targets() {
    local csv=$DIR/targets.csv
    local bench=("$PYTHON" -m hrsnet bench --output "$csv" --resume --device "$device")
    local paper=(--settings paper) throughput=(--settings throughput) cells=(hrnet_official:30 hrnet:30 hrsnet:30)
    if ((dry)); then
        bench+=(--width 1 --warmup 1 --steps 1 --repeats 1 --no-compile)
        paper=(--settings paper:32:16) throughput=(--settings throughput:32:32) cells=(hrnet:1)
    fi
    local status=0
    # Batch 16: our fast paths and our plain fp32 eager path vs timm's AMP + channels_last.
    run 150 "${bench[@]}" "${paper[@]}" --only peer $( ((dry)) || echo preprocessing) || status=$?
    # Batch 16: one fast path at a time, with torch.compile's compile time.
    run 240 "${bench[@]}" "${paper[@]}" --only ablation || status=$?
    # Batch 128: hrnet_official C=18 vs timm, and the FLOP utilisation at C=30 (bf16 peak 790).
    # (The dry run leaves out this peer pair: timm's hrnet_w18 is C=18, slow on a CPU.)
    run 150 "${bench[@]}" "${throughput[@]}" --only $( ((dry)) || echo peer) "${cells[@]}" --peak-tflops 790 \
        || status=$?
    if ((!dry)); then
        run 120 "${bench[@]}" "${throughput[@]}" --only "${cells[@]}" --grid-variant graphs --peak-tflops 790 \
            || status=$?
    fi
    return $status
}

# train_once MARKER RESULTS_DIR ARGS...: one `python -m hrsnet train` run unless MARKER exists;
# its wall time goes to $WALL_CSV (run_id,wall_seconds; default paper_wall.csv).
train_once() {
    local marker=$1 results=$2
    shift 2
    if [[ -e $marker ]]; then
        log "done before: $(cat "$marker")"
        return 0
    fi
    local out begin status=0
    out=$(mktemp)
    begin=$(date +%s%N)
    run "$PART_SECONDS" "$PYTHON" -m hrsnet train --results-dir "$results" --quiet --device "$device" "$@" \
        | tee "$out" || status=$?
    if ((status == 0)); then
        local id
        local milliseconds=$((($(date +%s%N) - begin) / 1000000))
        id=$("$PYTHON" -c 'import json, sys
text = open(sys.argv[1]).read()
print(json.JSONDecoder().raw_decode(text[text.index("{"):])[0]["run_id"])' "$out")
        local wall=${WALL_CSV:-$DIR/paper_wall.csv}
        [[ -s $wall ]] || echo "run_id,wall_seconds" >"$wall"
        printf '%s,%d.%03d\n' "$id" $((milliseconds / 1000)) $((milliseconds % 1000)) >>"$wall"
        echo "$id" >"$marker"
    fi
    rm -f "$out"
    return $status
}

# The real loop, one epoch of fit() per setting at the paper's batch (graphs need CUDA: the dry
# run leaves them out). loop.csv: combined images/s per setting and the speedup over eager.
part_loop() {
    local arch=${LOOP_ARCH:-hrnet_official} width=${LOOP_WIDTH:-18}
    local data=(--dataset synthetic --image-size 224 --batch-size 16 --train-subset "${LOOP_TRAIN_SUBSET:-4000}"
        --val-subset 500 --test-subset 500)
    local settings=(eager graphs packed)
    if ((dry)); then
        arch=${LOOP_ARCH:-hrnet} width=${LOOP_WIDTH:-1} settings=(eager packed)
        data=(--dataset digits --image-size 32 --batch-size 16 --train-subset 64 --val-subset 16 --test-subset 16)
    fi
    local common=(--arch "$arch" --width "$width" --epochs 1 "${data[@]}")
    mkdir -p "$DIR/markers"
    local status=0 setting WALL_CSV=$DIR/loop_wall.csv
    local -A extra=([eager]="--cuda-graphs off" [graphs]="--cuda-graphs on" [packed]="--seeds 0 1 2 --pack")
    local trained=()  # the settings that finished: a failed one does not cost the others' rows
    for setting in "${settings[@]}"; do
        # shellcheck disable=SC2086  # the extra options are words
        train_once "$DIR/markers/loop_$setting" "$DIR/loop/$setting" "${common[@]}" ${extra[$setting]} \
            || status=$?
        [[ -e $DIR/markers/loop_$setting ]] && trained+=("$setting")
    done
    ((${#trained[@]})) || return $((status ? status : 1))
    deadline=$((deadline + 30))  # the summary reads files only
    run 60 "$PYTHON" -c 'import sys; from hrsnet.tools.estimate import write_loop_comparison
write_loop_comparison(sys.argv[1], sys.argv[2:])' \
        "$DIR" "${trained[@]}" || status=$?
    return $status
}

part_paper() {
    local archs=${PAPER_ARCHS:-"hrnet_official hrnet hrsnet"} widths=${PAPER_WIDTHS:-"2 18 30"}
    local jobs=${CONCURRENT_JOBS:-3}
    local data=(--dataset synthetic --image-size 224 --batch-size 16)
    local small=(--train-subset 8000 --val-subset 1000 --test-subset 1000)
    if ((dry)); then
        archs=${PAPER_ARCHS:-"hrnet"} widths=${PAPER_WIDTHS:-"2"} jobs=${CONCURRENT_JOBS:-2}
        data=(--dataset digits --image-size 32 --batch-size 16)
        small=(--train-subset 32 --val-subset 16 --test-subset 16)
    fi
    [[ -n ${PAPER_TRAIN_SUBSET:-} ]] && data+=(--train-subset "$PAPER_TRAIN_SUBSET")
    ((dry)) && [[ -z ${PAPER_TRAIN_SUBSET:-} ]] && data+=(--train-subset 64 --val-subset 16 --test-subset 16)
    mkdir -p "$DIR/markers"
    local status=0
    # One epoch of the real loop per network x C (breadth first: every network at one C, then the next).
    for width in $widths; do
        for arch in $archs; do
            train_once "$DIR/markers/paper_${arch}_c$width" "$DIR/paper" "${data[@]}" --arch "$arch" --width "$width" \
                --epochs 1 || status=$?
        done
    done
    # Concurrency: one run alone, then $jobs at once (seeds 0..); the speedup is their combined
    # images/s over the lone run's.
    local speedup_file=$DIR/concurrency_speedup.txt
    if [[ ! -s $speedup_file ]] && ((deadline - SECONDS > (dry ? 20 : 150))); then
        local conc=(--arch hrnet --width "$( ((dry)) && echo 1 || echo 18)" --epochs 1 "${data[@]}" "${small[@]}")
        train_once "$DIR/markers/concurrency_single" "$DIR/concurrency/single" "${conc[@]}" || status=$?
        rm -rf "$DIR/concurrency/together"
        local pids=() seed
        for ((seed = 0; seed < jobs; seed++)); do
            run "$PART_SECONDS" "$PYTHON" -m hrsnet train --results-dir "$DIR/concurrency/together" --quiet \
                --device "$device" "${conc[@]}" --seed "$seed" >/dev/null &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
        "$PYTHON" -c 'import sys; from hrsnet.tools.estimate import concurrency_speedup
print(f"{concurrency_speedup(sys.argv[1], sys.argv[2]):.3f}")' \
            "$DIR/concurrency/single" "$DIR/concurrency/together" >"$speedup_file.tmp" \
            && mv "$speedup_file.tmp" "$speedup_file" || status=$?
        [[ -s $speedup_file ]] && log "speedup of $jobs concurrent jobs: $(cat "$speedup_file")"
    fi
    local estimate=("$PYTHON" -m hrsnet bench --estimate paper --histories "$DIR/paper" --wall-csv "$DIR/paper_wall.csv"
        --output "$DIR/estimate_paper.csv")
    [[ -s $DIR/targets.csv ]] && estimate+=(--bench-csv "$DIR/targets.csv")
    [[ -s $speedup_file ]] && estimate+=(--jobs "$jobs" --speedup "$(cat "$speedup_file")")
    if [[ -d $DIR/paper ]]; then
        deadline=$((deadline + 30))  # the estimate reads files only: let it finish after a timeout
        run 60 "${estimate[@]}" || status=$?
    fi
    return $status
}

status=0
"part_$part" || status=$?
log "part $part finished with status $status; files in $DIR"
exit $status
