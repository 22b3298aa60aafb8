#!/usr/bin/env bash
# Submits a profile to Slurm: one array task per run (scripts/slurm/train_array.sbatch), then the
# figures job (scripts/slurm/figures.sbatch), which waits for every task to end (afterany).
set -euo pipefail

usage() {
    cat <<'TXT'
Usage: scripts/slurm/submit.sh --profile NAME|FILE.toml [--seeds N] [--parallel K]
                               [--results-dir DIR] [--data-dir DIR] [--figures-dir DIR] [--force]
                               [-- SBATCH_OPTIONS...]

Submits one Slurm array task per run of the profile (the rows of `python -m hrsnet runs
--profile P`; a finished run's task ends at once), at most K running at once, then a figures
job that runs when all of them have ended. SBATCH_OPTIONS go to the training array, e.g.
  scripts/slurm/submit.sh --profile paper --parallel 8 -- --partition gpu --gres=gpu:1 --time 4:00:00
Logs: RESULTS_DIR/slurm/. Run it from a login node, in the repository with .venv set up.
TXT
}

profile=""; seeds=""; parallel=""; results_dir="results"; data_dir="${HRSNET_DATA:-}"; figures_dir="figures"
force=(); extra=()
whole_number() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "error: $1 needs a whole number >= 1, got '$2'" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --profile|--seeds|--parallel|--results-dir|--data-dir|--figures-dir)
            [ $# -ge 2 ] || { echo "error: $1 needs a value (see --help)" >&2; exit 2; }
            case "$1" in
                --profile) profile="$2" ;; --seeds) whole_number "$1" "$2"; seeds="$2" ;;
                --parallel) whole_number "$1" "$2"; parallel="$2" ;; --results-dir) results_dir="$2" ;;
                --data-dir) data_dir="$2" ;; --figures-dir) figures_dir="$2" ;;
            esac
            shift 2 ;;
        --force) force=(--force); shift ;;
        --) shift; extra=("$@"); break ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if ! command -v sbatch >/dev/null 2>&1; then
    echo "error: sbatch not found: submit.sh needs a Slurm login node (on one machine: ./run_all.sh --jobs N)" >&2
    exit 1
fi
case "$profile" in
    "" | auto)
        echo "error: --profile must be a built-in profile or a .toml file (auto would be decided on this login node); got '$profile'" >&2
        exit 2 ;;
esac
if [[ "$profile" == *.toml || "$profile" == */* ]] && [ -f "$profile" ]; then
    profile="$(cd "$(dirname "$profile")" && pwd)/$(basename "$profile")"  # the jobs run from the repository
fi

repo="$(cd "$(dirname "$0")/../.." && pwd)"
absolute() { mkdir -p "$1" && (cd "$1" && pwd); }
results_dir="$(absolute "$results_dir")"  # before cd: relative to where submit.sh was called
figures_dir="$(absolute "$figures_dir")"
[ -z "$data_dir" ] || data_dir="$(cd "$data_dir" 2>/dev/null && pwd || echo "$data_dir")"
cd "$repo"  # the jobs find the repository through SLURM_SUBMIT_DIR
source scripts/ensure_env.sh
logs="$results_dir/slurm"
mkdir -p "$logs"  # Slurm does not create the folder of --output

options=(--profile "$profile" --results-dir "$results_dir")
[ -z "$seeds" ] || options+=(--seeds "$seeds")
[ -z "$data_dir" ] || options+=(--data-dir "$data_dir")
listing="$("$PYTHON" -m hrsnet runs "${options[@]}" --format tsv 2>&1)" || { echo "$listing" >&2; exit 2; }
rows="$(grep -c "$(printf '\t')" <<< "$listing" || true)"
[ "$rows" -gt 0 ] || { echo "error: profile $profile lists no runs" >&2; exit 2; }
pending="$(grep "$(printf '\t')" <<< "$listing" | awk -F'\t' '$7 != "skip: finished"' | grep -c . || true)"
array="0-$((rows - 1))${parallel:+%$parallel}"

# --parsable prints "jobid" or "jobid;cluster"; a dependency names the job id only.
train_job="$(sbatch --parsable --chdir "$repo" --array="$array" --output "$logs/train_%A_%a.out" "${extra[@]}" \
             scripts/slurm/train_array.sbatch "${options[@]}" "${force[@]}")"
train_job="${train_job%%;*}"
figures_job="$(sbatch --parsable --chdir "$repo" --dependency="afterany:$train_job" --output "$logs/figures_%j.out" \
               scripts/slurm/figures.sbatch "${options[@]}" --figures-dir "$figures_dir")"
figures_job="${figures_job%%;*}"
echo "submitted: training array $train_job ($rows runs, $pending not finished; tasks $array)," \
     "figures job $figures_job after it (afterany)"
echo "  logs: $logs/; progress: squeue -j $train_job,$figures_job; runs: python -m hrsnet runs ${options[*]}"
