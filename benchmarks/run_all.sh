#!/usr/bin/env bash
# Run every benchmark in turn. Each prints its table and writes benchmarks/results/NAME.json;
# a benchmark that fails is reported and the others still run. About 22 minutes (--quick:
# about 12, without the 6000/60s quota run and with a 100k-row ledger for resume).
#
#   benchmarks/run_all.sh [--quick]        (with the project's virtualenv active, or
#   PYTHON=/path/to/venv/bin/python benchmarks/run_all.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')," \
     "$("$PYTHON" -V 2>&1), load $(cut -d' ' -f1-3 /proc/loadavg)"

failed=()
run() {
    echo
    echo "== $* =="
    if ! "$PYTHON" -m "$@"; then
        failed+=("$1")
    fi
}

run benchmarks.quota_use --quota 600/6s --quota 300/3s --periods 5
if [[ $QUICK == 0 ]]; then
    run benchmarks.quota_use --quota 6000/60s --periods 3 --name quota_use_6000
fi
run benchmarks.client_cost
run benchmarks.memory
run benchmarks.peers
run benchmarks.peers --lost-answers 0.05 --name peers_lost_answers
run benchmarks.plan_register
run benchmarks.shared_quota
run benchmarks.outage_ride
if [[ $QUICK == 0 ]]; then
    run benchmarks.startup_resume
else
    run benchmarks.startup_resume --rows 100000
fi

echo
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
echo "all benchmarks ran; results in benchmarks/results/"
