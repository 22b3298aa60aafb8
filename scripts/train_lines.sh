# Sourced by run_all.sh and scripts/slurm/train_array.sbatch: what an executed training notebook
# (notebooks/01_train.ipynb, one network x C, one or more seeds) did with each seed, one line each.
# Needs $PYTHON (scripts/ensure_env.sh).
# shellcheck shell=bash

# notebook_text NOTEBOOK: the text its cells printed (stream outputs), for the lines that
# hrsnet.train.fit_seeds logs per seed ("[<run_id>] skipped: ...", "[<run_id>] FAILED: ...").
notebook_text() {
    "$PYTHON" -c '
import json, sys
try:
    cells = json.load(open(sys.argv[1]))["cells"]
except (OSError, ValueError, KeyError):
    sys.exit(0)
for cell in cells:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            text = output.get("text", "")
            sys.stdout.write(text if isinstance(text, str) else "".join(text))
' "$1"
}

# seed_line RESULTS_DIR RUN_ID SEED TEXT: prints "seed S (RUN_ID): ..." from the notebook's TEXT
# and the run's status file (line 1 state, line 2 reason). Returns 0 when the run is finished
# (by this notebook or, before it, by another process), 2 when another process holds it, 1 otherwise.
seed_line() {
    local results="$1" run_id="$2" seed="$3" text="$4" line status="$1/runs/$2/status" state
    if line="$(grep -F -m1 "[$run_id] skipped: " <<< "$text")"; then
        line="${line#*is being trained by }"
        echo "seed $seed ($run_id): skipped: being trained by ${line%; wait for it*}"
        return 2
    fi
    if line="$(grep -F -m1 "[$run_id] FAILED: " <<< "$text")"; then
        echo "seed $seed ($run_id): FAILED: ${line#*] FAILED: }"
        return 1
    fi
    state="$(head -n 1 "$status" 2>/dev/null || true)"
    if [ -z "$state" ]; then
        echo "seed $seed ($run_id): not started"
        return 1
    fi
    if grep -F -q "[$run_id] already " <<< "$text"; then
        echo "seed $seed ($run_id): already finished ($state): $(sed -n 2p "$status")"
    else
        echo "seed $seed ($run_id): $state: $(sed -n 2p "$status")"
    fi
    case "$state" in complete | early-stopped | diverged) return 0 ;; *) return 1 ;; esac
}
