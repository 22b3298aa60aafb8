#!/usr/bin/env bash
# The whole report in one command: every training run of a profile (notebooks/01_train.ipynb,
# executed by papermill), then the figures (02_figures.ipynb) and results/report.html.
set -euo pipefail

usage() {
    cat <<'TXT'
Usage: ./run_all.sh [--profile auto|paper|quick|smoke] [--seeds N] [--force] [--only RUN_ID|ARCH]
                    [--jobs N] [--gpus 0,1,...] [--no-train]
                    [--data-dir DIR] [--results-dir DIR] [--figures-dir DIR]

Trains every run of the profile (one training notebook per network x C, with all its seeds),
then regenerates the figures and the HTML report. Creates .venv (pip, from pyproject.toml)
first if no active environment has the dependencies.

  --profile      auto (default): paper when a CUDA GPU is visible, else quick
                 paper: CIFAR-100, 224x224, the released notebooks' protocol, 3 networks x C in
                        {2, 18, 30} x 3 seeds = 27 runs (GPU hours)
                 quick: offline digits at 32x32, 3 networks x C in {2, 8} x 3 seeds = 18 runs (CPU minutes)
                 smoke: 3 tiny runs, about a minute (a plumbing check)
  --seeds N      train seeds 0..N-1 instead of the profile's seeds (the figures use the same N)
  --force        rerun finished runs from scratch
  --only X       only the runs whose run id or network (hrnet_official, hrnet, hrsnet) is X
  --jobs N       train up to N networks x C at once (default 1). On a GPU machine each job gets
                 one GPU (CUDA_VISIBLE_DEVICES, round-robin over --gpus; jobs may share one);
                 on a CPU the cores are divided between the jobs (OMP_NUM_THREADS)
  --gpus LIST    the GPUs to use, e.g. 0,1 (default with --jobs: every visible GPU)
  --no-train     train nothing: only the architecture and figures notebooks and the report
                 (the figures job of scripts/slurm/submit.sh)
  --data-dir     folder holding cifar-100-python/ (default: $HRSNET_DATA, else data/ in the repository)
  --results-dir  where runs/, notebooks/ and report.html go (default: results)
  --figures-dir  where figures go, one folder per profile (default: figures)

On a Slurm cluster, scripts/slurm/submit.sh trains every run as one array task (README, "On a cluster").
TXT
}

profile="auto"; force="False"; only=""; data_dir="${HRSNET_DATA:-}"
results_dir="results"; figures_dir="figures"; seeds=""; jobs=1; gpus=""; train=1
whole_number() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "error: $1 needs a whole number >= 1, got '$2'" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --profile|--only|--data-dir|--results-dir|--figures-dir|--seeds|--jobs|--gpus)
            [ $# -ge 2 ] || { echo "error: $1 needs a value (see --help)" >&2; exit 2; }
            case "$1" in
                --profile) profile="$2" ;; --only) only="$2" ;; --data-dir) data_dir="$2" ;;
                --results-dir) results_dir="$2" ;; --figures-dir) figures_dir="$2" ;;
                --seeds) whole_number "$1" "$2"; seeds="$2" ;;
                --jobs) whole_number "$1" "$2"; jobs="$2" ;;
                --gpus) [[ "$2" =~ ^[0-9A-Za-z-]+(,[0-9A-Za-z-]+)*$ ]] \
                            || { echo "error: --gpus needs GPU indices separated by commas, e.g. 0,1; got '$2'" >&2; exit 2; }
                        gpus="$2" ;;
            esac
            shift 2 ;;
        --force) force="True"; shift ;;
        --no-train) train=0; shift ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

repo="$(cd "$(dirname "$0")" && pwd)"
cd "$repo"
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 403)); then
    echo "error: run_all.sh needs bash 4.3 or newer (this is $BASH_VERSION; on macOS: brew install bash)" >&2
    exit 2
fi
source scripts/ensure_env.sh
absolute() { mkdir -p "$1" && (cd "$1" && pwd); }
results_dir="$(absolute "$results_dir")"
figures_dir="$(absolute "$figures_dir")"
[ -z "$data_dir" ] || data_dir="$(cd "$data_dir" 2>/dev/null && pwd || echo "$data_dir")"
notebook_dir="$results_dir/notebooks"
mkdir -p "$notebook_dir"

data_args=(); [ -z "$data_dir" ] || data_args=(--data-dir "$data_dir")
data_params=(); [ -z "$data_dir" ] || data_params=(-p data_dir "$data_dir")
pending=(--pending); [ "$force" = "False" ] || pending=()
only_args=(); [ -z "$only" ] || only_args=(--only "$only")
seeds_args=(); [ -z "$seeds" ] || seeds_args=(--seeds "$seeds")
seeds_params=(); [ -z "$seeds" ] || seeds_params=(-p seeds "$seeds")  # the figures notebook's parameter

# First line: which profile, and why (python resolves auto and rejects unknown names).
listing="$("$PYTHON" -m hrsnet runs --profile "$profile" --results-dir "$results_dir" "${data_args[@]}" \
           "${only_args[@]}" "${seeds_args[@]}" "${pending[@]}" 2>&1)" || { echo "$listing" >&2; exit 2; }
# Parsed by shape, not position: a warning printed at import must not shift the lines.
echo "$listing" | grep -m1 "^profile: "
resolved="$(echo "$listing" | sed -n -E 's/^profile: ([a-z]+).*/\1/p' | head -n 1)"
runs="$(echo "$listing" | grep "$(printf '\t')" || true)"

source scripts/train_lines.sh
papermill() {  # papermill INPUT OUTPUT [params...]: notebooks run from notebooks/, kernel "hrsnet"
    "$PYTHON" -m papermill "$1" "$2" -k hrsnet --cwd notebooks --no-progress-bar "${@:3}"
}
# Training notebooks run as background jobs, which bash starts with SIGINT ignored; this restores
# Python's KeyboardInterrupt, so Ctrl-C stops them as it stops a notebook in the foreground.
papermill_job='import runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.argv[0] = "papermill"
runpy.run_module("papermill", run_name="__main__")'

# The groups: one training notebook per network x C, with the seeds of that group in the listing.
groups=()
declare -A group_seeds=() group_ids=() group_skips=()
while IFS=$'\t' read -r _ run_id arch width seed state action; do
    [ -n "$run_id" ] || continue
    key="$arch $width"
    if [ -z "${group_ids[$key]+set}" ]; then
        groups+=("$key"); group_ids[$key]=""; group_seeds[$key]=""; group_skips[$key]=""
    fi
    if [ "$state" = "training" ]; then  # another process holds the run's lock
        group_skips[$key]+="  seed $seed ($run_id): skipped: ${action#skip: }"$'\n'
    else
        group_seeds[$key]+="${group_seeds[$key]:+ }$seed"; group_ids[$key]+="${group_ids[$key]:+ }$run_id"
    fi
done <<< "$runs"
total=${#groups[@]}
[ "$jobs" -le "$total" ] || jobs=$((total > 0 ? total : 1))

# Where the jobs run: one GPU each (round-robin over --gpus or every visible GPU), else a share of
# the CPU cores. With --jobs 1 and no --gpus the environment is left as it is.
gpu_list=()
if [ -n "$gpus" ]; then
    IFS=',' read -r -a gpu_list <<< "$gpus"
elif [ "$jobs" -gt 1 ]; then
    if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        IFS=',' read -r -a gpu_list <<< "$CUDA_VISIBLE_DEVICES"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        count="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
        for ((i = 0; i < count; i++)); do gpu_list+=("$i"); done
    else
        count="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
        for ((i = 0; i < count; i++)); do gpu_list+=("$i"); done
    fi
fi
threads=""
if [ "$jobs" -gt 1 ]; then
    # The cores this process may use (nproc alone would answer with $OMP_NUM_THREADS when it is set).
    cores="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
    threads=$((cores / jobs > 0 ? cores / jobs : 1))
    if [ ${#gpu_list[@]} -gt 0 ]; then
        echo "[jobs] $jobs at a time on GPUs ${gpu_list[*]}, $threads CPU thread$([ "$threads" -eq 1 ] || echo s) each"
    else
        echo "[jobs] $jobs at a time on $cores CPU cores, $threads thread$([ "$threads" -eq 1 ] || echo s) each (OMP_NUM_THREADS)"
    fi
fi

started=$SECONDS
notebooks_ok=1
failed=()
declare -A job_group=() job_slot=() job_started=()  # by the pid of a running job
free_slots=(); for ((i = jobs - 1; i >= 0; i--)); do free_slots+=("$i"); done

# Executed notebooks and logs are written under a name of this process and renamed when done:
# two run_all.sh on one results folder never write or read each other's files half-done. Those
# left by a killed run_all.sh on this host are removed.
host="$(hostname 2>/dev/null || echo localhost)"; host="${host%%.*}"
tag="$host.$$"
for leftover in "$notebook_dir"/.*."$host".*; do
    [ -e "$leftover" ] || continue
    pid="${leftover%.*}"; pid="${pid##*.}"
    if [[ "$pid" =~ ^[0-9]+$ ]] && ! kill -0 "$pid" 2>/dev/null; then rm -f "$leftover"; fi
done
job_files() {  # job_files GROUP_INDEX: "temporary notebook, log, final notebook, log"
    local key="${groups[$1]}" name
    name="train_${resolved}_${key% *}_c${key#* }"
    echo "$notebook_dir/.$name.$tag.ipynb" "$notebook_dir/.$name.$tag.log" "$notebook_dir/$name.ipynb" "$notebook_dir/$name.log"
}
group_title() {  # group_title INDEX: "[train 2/6] hrnet C=2, seeds 0 1 2"
    local key="${groups[$1]}" seeds="${group_seeds[${groups[$1]}]}" word="seeds"
    [[ "$seeds" == *" "* ]] || word="seed"
    echo "[train $(($1 + 1))/$total] ${key% *} C=${key#* }${seeds:+, $word $seeds}"
}

start_group() {  # start_group INDEX: the group's notebook as a background job; false when nothing to train
    local index="$1" key="${groups[$1]}" slot where="" seed_list tmp_nb tmp_log
    local -a env_vars=()
    if [ -z "${group_seeds[$key]}" ]; then  # every seed is being trained by another process
        printf '%s\n%s' "$(group_title "$index")" "${group_skips[$key]}"
        return 1
    fi
    slot="${free_slots[-1]}"; unset 'free_slots[-1]'
    if [ ${#gpu_list[@]} -gt 0 ]; then
        env_vars+=("CUDA_VISIBLE_DEVICES=${gpu_list[$((slot % ${#gpu_list[@]}))]}")
        where=" on GPU ${gpu_list[$((slot % ${#gpu_list[@]}))]}"
    fi
    if [ -n "$threads" ]; then
        env_vars+=("OMP_NUM_THREADS=$threads" "MKL_NUM_THREADS=$threads")
        [ -n "$where" ] || where=" with $threads CPU thread$([ "$threads" -eq 1 ] || echo s)"
    fi
    printf '%s: started%s\n%s' "$(group_title "$index")" "$where" "${group_skips[$key]}"
    seed_list="[${group_seeds[$key]// /, }]"
    read -r tmp_nb tmp_log _ <<< "$(job_files "$index")"
    (
        [ ${#env_vars[@]} -eq 0 ] || export "${env_vars[@]}"
        exec "$PYTHON" -c "$papermill_job" notebooks/01_train.ipynb "$tmp_nb" -k hrsnet --cwd notebooks \
            --no-progress-bar -p arch "${key% *}" -p width "${key#* }" -y "seeds: $seed_list" \
            -p profile "$resolved" -p results_dir "$results_dir" -p force "$force" "${data_params[@]}" \
            >/dev/null 2>"$tmp_log"
    ) &
    job_group[$!]="$index"; job_slot[$!]="$slot"; job_started[$!]=$SECONDS
}

finish_group() {  # finish_group PID EXIT_CODE: one block of lines for the group, printed at once
    local pid="$1" code="$2" index="${job_group[$1]}" key text seed run_id status lines="" bad=0 reason
    local tmp_nb tmp_log nb log seconds i
    local -a ids seed_array
    key="${groups[$index]}"
    read -r tmp_nb tmp_log nb log <<< "$(job_files "$index")"
    seconds=$((SECONDS - job_started[$pid]))
    free_slots+=("${job_slot[$pid]}")
    unset "job_group[$pid]" "job_slot[$pid]" "job_started[$pid]"
    text="$(notebook_text "$tmp_nb")"
    read -r -a ids <<< "${group_ids[$key]}"
    read -r -a seed_array <<< "${group_seeds[$key]}"
    for i in "${!ids[@]}"; do
        seed="${seed_array[$i]}"; run_id="${ids[$i]}"
        status=0; lines+="  $(seed_line "$results_dir" "$run_id" "$seed" "$text")"$'\n' || status=$?
        if [ "$status" -eq 1 ]; then failed+=("$run_id"); bad=1; fi
    done
    mv -f "$tmp_nb" "$nb" 2>/dev/null || true
    mv -f "$tmp_log" "$log" 2>/dev/null || true
    if [ "$code" -ne 0 ] && [ "$bad" -eq 0 ]; then  # the notebook failed outside fit_seeds' seeds
        bad=1; failed+=("${key% *}_c${key#* }")
    fi
    if [ "$bad" -eq 0 ]; then
        printf '%s: done in %ss\n%s' "$(group_title "$index")" "$seconds" "$lines"
    else
        # The notebook's own exception is the traceback's last "Name: message" line.
        reason="$(grep -E '^[A-Za-z_.]+(Error|Exception|Interrupt): .' "$log" 2>/dev/null | tail -n 1 || true)"
        printf '%s: FAILED after %ss\n%s' "$(group_title "$index")" "$seconds" "$lines"
        printf '  FAILED: %s\n  log: %s; notebook: %s\n' "${reason:-see the log}" "$log" "$nb" >&2
    fi
}

wait_for_job() {  # sets finished_pid and code: the first running job to end, and its exit code
    local pid
    finished_pid=""; code=0
    if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 501)); then
        wait -n -p finished_pid "${!job_group[@]}" || code=$?
        return 0
    fi
    while [ -z "$finished_pid" ]; do  # bash 4.3 to 5.0: no wait -p, so look for the job that ended
        for pid in "${!job_group[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then finished_pid="$pid"; wait "$pid" || code=$?; return 0; fi
        done
        sleep 1
    done
}

# Ctrl-C (SIGINT to the foreground process group, the jobs included): each papermill stops its
# kernel, which marks its runs interrupted at their last completed epoch; wait for that, then stop
# here instead of going on. A SIGTERM to this script alone is passed on to the jobs.
exec 3>&2  # the trap may fire inside a command whose stderr goes to a log: say it on the real one
on_interrupt() {
    trap - INT TERM
    local pid tmp_nb tmp_log nb log
    [ "$1" = "INT" ] || [ ${#job_group[@]} -eq 0 ] || kill -TERM "${!job_group[@]}" 2>/dev/null || true
    wait || true
    for pid in "${!job_group[@]}"; do
        read -r tmp_nb tmp_log nb log <<< "$(job_files "${job_group[$pid]}")"
        mv -f "$tmp_nb" "$nb" 2>/dev/null || true
        mv -f "$tmp_log" "$log" 2>/dev/null || true
    done
    echo "interrupted: run the same ./run_all.sh command again to resume (finished runs are skipped;" \
         "an interrupted run resumes after its last completed epoch)" >&3
    exit 130
}
trap 'on_interrupt INT' INT
trap 'on_interrupt TERM' TERM

if [ "$train" -eq 0 ]; then
    echo "[train] skipped (--no-train); $(echo -n "$runs" | grep -c . || true) runs of profile $resolved are not finished"
elif [ "$total" -eq 0 ]; then
    echo "[train] every run of profile $resolved is finished (--force reruns them)"
else
    next=0
    while [ "$next" -lt "$total" ] || [ ${#job_group[@]} -gt 0 ]; do
        while [ ${#job_group[@]} -lt "$jobs" ] && [ "$next" -lt "$total" ]; do
            start_group "$next" || true
            next=$((next + 1))
        done
        [ ${#job_group[@]} -gt 0 ] || continue
        wait_for_job
        [ -n "$finished_pid" ] || continue  # interrupted by a signal: the trap has run
        finish_group "$finished_pid" "$code"
    done
fi

# After the training: an interrupted run_all.sh has not spent its time on the tables yet.
report_notebook() {  # report_notebook NAME [params...]: notebooks/NAME.ipynb into the notebook folder
    local name="$1" tmp="$notebook_dir/.$1.$tag.ipynb" code=0
    echo "[${name#0?_}] notebooks/$name.ipynb"
    papermill "notebooks/$name.ipynb" "$tmp" "${@:2}" >/dev/null 2>"$notebook_dir/.$name.$tag.log" || code=$?
    mv -f "$tmp" "$notebook_dir/$name.ipynb" 2>/dev/null || true
    mv -f "$notebook_dir/.$name.$tag.log" "$notebook_dir/$name.log"
    [ "$code" -eq 0 ] || { notebooks_ok=0; echo "  failed: see $notebook_dir/$name.log" >&2; }
}
report_notebook 00_architecture
report_notebook 02_figures -p profile "$resolved" -p results_dir "$results_dir" -p figures_dir "$figures_dir" \
    "${data_params[@]}" "${seeds_params[@]}"
"$PYTHON" -m hrsnet report "$notebook_dir/00_architecture.ipynb" "$notebook_dir/02_figures.ipynb" \
    --output "$results_dir/report.html" >/dev/null

echo "done in $((SECONDS - started))s (profile $resolved)"
echo "  figures:  $figures_dir/$resolved/"
echo "  table:    $figures_dir/$resolved/results_table.md"
echo "  report:   $results_dir/report.html"
echo "  runs:     $results_dir/runs/"
if [ ${#failed[@]} -gt 0 ] || [ $notebooks_ok -eq 0 ]; then
    [ ${#failed[@]} -eq 0 ] || echo "failed runs (${#failed[@]}): ${failed[*]}" >&2
    exit 1
fi
