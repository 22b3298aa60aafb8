#!/usr/bin/env bash
# The whole report in one command: every training run of a profile (notebooks/01_train.ipynb,
# executed by papermill), then the figures (02_figures.ipynb) and results/report.html.
set -euo pipefail

usage() {
    cat <<'TXT'
Usage: ./run_all.sh [--profile auto|paper|quick|smoke] [--force] [--only RUN_ID|ARCH]
                    [--data-dir DIR] [--results-dir DIR] [--figures-dir DIR]

Trains every run of the profile, then regenerates the figures and the HTML report.
Creates .venv (pip, from pyproject.toml) first if no active environment has the dependencies.

  --profile      auto (default): paper when a CUDA GPU is visible, else quick
                 paper: CIFAR-100, 224x224, the released notebooks' protocol, 9 runs (GPU hours)
                 quick: offline digits at 32x32, 6 runs, about 9 minutes on 2 CPU cores
                 smoke: 3 tiny runs, about a minute (a plumbing check)
  --force        rerun finished runs from scratch
  --only X       only the runs whose run id or network (hrnet_official, hrnet, hrsnet) is X
  --data-dir     folder holding cifar-100-python/ (default: $HRSNET_DATA, else data/ in the repository)
  --results-dir  where runs/, notebooks/ and report.html go (default: results)
  --figures-dir  where figures go, one folder per profile (default: figures)
TXT
}

profile="auto"; force="False"; only=""; data_dir="${HRSNET_DATA:-}"
results_dir="results"; figures_dir="figures"
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --profile|--only|--data-dir|--results-dir|--figures-dir)
            [ $# -ge 2 ] || { echo "error: $1 needs a value (see --help)" >&2; exit 2; }
            case "$1" in
                --profile) profile="$2" ;; --only) only="$2" ;; --data-dir) data_dir="$2" ;;
                --results-dir) results_dir="$2" ;; --figures-dir) figures_dir="$2" ;;
            esac
            shift 2 ;;
        --force) force="True"; shift ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

repo="$(cd "$(dirname "$0")" && pwd)"
cd "$repo"
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

# First line: which profile, and why (python resolves auto and rejects unknown names).
listing="$("$PYTHON" -m hrsnet runs --profile "$profile" --results-dir "$results_dir" "${data_args[@]}" \
           "${only_args[@]}" "${pending[@]}" 2>&1)" || { echo "$listing" >&2; exit 2; }
# Parsed by shape, not position: a warning printed at import must not shift the lines.
echo "$listing" | grep -m1 "^profile: "
resolved="$(echo "$listing" | sed -n -E 's/^profile: ([a-z]+).*/\1/p' | head -n 1)"
runs="$(echo "$listing" | grep "$(printf '\t')" || true)"

# Ctrl-C (SIGINT to the foreground group): papermill stops the kernel, which marks the run
# interrupted at its last completed epoch; then stop here at once instead of going on.
exec 3>&2  # the trap may fire inside a command whose stderr goes to a log: say it on the real one
on_interrupt() {
    trap - INT TERM
    echo "interrupted: run the same ./run_all.sh command again to resume (finished runs are skipped;" \
         "an interrupted run resumes after its last completed epoch)" >&3
    exit 130
}
trap on_interrupt INT TERM

papermill() {  # papermill INPUT OUTPUT [params...]: notebooks run from notebooks/, kernel "hrsnet"
    "$PYTHON" -m papermill "$1" "$2" -k hrsnet --cwd notebooks --no-progress-bar "${@:3}"
}

started=$SECONDS
notebooks_ok=1

failed=()
total=$(echo -n "$runs" | grep -c . || true)
[ "$total" -gt 0 ] || echo "[train] every run of profile $resolved is finished (--force reruns them)"
index=0
while IFS=$'\t' read -r _ run_id arch width seed state action; do
    [ -n "$run_id" ] || continue
    index=$((index + 1))
    run_started=$SECONDS
    echo "[train $index/$total] $arch C=$width seed $seed ($run_id, $state)"
    if [ "$state" = "training" ]; then  # another process holds the run's lock
        echo "  skipped: ${action#skip: }"
        continue
    fi
    if papermill notebooks/01_train.ipynb "$notebook_dir/train_$run_id.ipynb" \
            -p arch "$arch" -p width "$width" -p profile "$resolved" -p results_dir "$results_dir" \
            -p force "$force" "${data_params[@]}" >/dev/null 2>"$notebook_dir/train_$run_id.log"; then
        echo "  $(head -n 1 "$results_dir/runs/$run_id/status"): $(sed -n 2p "$results_dir/runs/$run_id/status") [$((SECONDS - run_started))s]"
    elif grep -q "RunLockedError: " "$notebook_dir/train_$run_id.log"; then  # taken since the listing
        echo "  skipped: $(grep -m1 -o 'is being trained by .*' "$notebook_dir/train_$run_id.log" | sed 's/^is //')"
    else
        failed+=("$run_id")
        # The notebook's own exception is the traceback's last "Name: message" line.
        reason="$(grep -E '^[A-Za-z_.]+(Error|Exception|Interrupt): .' "$notebook_dir/train_$run_id.log" | tail -n 1)"
        echo "  FAILED after $((SECONDS - run_started))s: ${reason:-see the log}" >&2
        echo "  log: $notebook_dir/train_$run_id.log; notebook: $notebook_dir/train_$run_id.ipynb" >&2
    fi
done <<< "$runs"

# After the training: an interrupted run_all.sh has not spent its time on the tables yet.
echo "[architecture] notebooks/00_architecture.ipynb"
papermill notebooks/00_architecture.ipynb "$notebook_dir/00_architecture.ipynb" >/dev/null 2>"$notebook_dir/00_architecture.log" \
    || { notebooks_ok=0; echo "  failed: see $notebook_dir/00_architecture.log" >&2; }
echo "[figures] notebooks/02_figures.ipynb"
papermill notebooks/02_figures.ipynb "$notebook_dir/02_figures.ipynb" -p profile "$resolved" \
    -p results_dir "$results_dir" -p figures_dir "$figures_dir" "${data_params[@]}" \
    >/dev/null 2>"$notebook_dir/02_figures.log" || { notebooks_ok=0; echo "  failed: see $notebook_dir/02_figures.log" >&2; }
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
