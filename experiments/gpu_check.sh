#!/usr/bin/env bash
# The GPU check of issue 13: run on a machine with one NVIDIA GPU, from the repository root.
#
#   bash experiments/gpu_check.sh [OUT.json]          # default: gpu_check.json (or $OUT/gpu_check.json)
#   bash experiments/gpu_check.sh --cpu-dry-run [OUT]  # no GPU: check the script itself on CPU
#
# Writes ONE JSON file with:
#   nvidia_smi   the GPU's name, memory, driver, clocks (nvidia-smi --query-gpu);
#   throughput   JAX's devices, the copy bandwidth, and one iteration of dense mu / hals and
#                sparse mu as a fraction of it and of the spec-sheet HBM bandwidth
#                (experiments/gpu_check.py throughput);
#   tests        pytest tests/test_fit.py tests/test_mesh.py (pass / fail counts, output tail);
#   orl, restarts, survey, sparse
#                experiments/bench_orl.py (--parts target, then --parts restarts_target),
#                bench_golub_survey.py (--skip-r), bench_sparse.py (--small --skip-r
#                --skip-memory --skip-restarts): exit code, seconds and output tail each.
# Every step has its own time limit (seconds, overridable: T_THROUGHPUT 120, T_TESTS 170,
# T_ORL 60, T_RESTARTS 60, T_SURVEY 80, T_SPARSE 70: 560 s in all, under a 10-minute
# budget); a step that fails or runs out of time is recorded (rc 124 = timed out) and the
# next one runs.
# ORL faces are read from $ORL_DATA, else shared/data/orl_faces.npz or ../shared/data/.
# With --cpu-dry-run the GPU steps run on CPU at small shapes, the tests and benchmarks
# are only started with --help: their imports are checked, and every option passed must
# appear in the usage they print (else the step's rc is 2); nothing is timed.
set -u

DRY=0
if [ "${1:-}" = "--cpu-dry-run" ]; then
    DRY=1
    shift
fi
REPORT="${1:-${OUT:+$OUT/}gpu_check.json}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PIECES="$(mktemp -d)"
trap 'rm -rf "$PIECES"' EXIT

# step NAME LIMIT COMMAND...: run with a time limit; keep its output, exit code and seconds
step() {
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start end
    start=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$PIECES/$name.out" 2>&1
    local rc=$?
    if [ $DRY = 1 ] && [ "${*: -1}" = "--help" ]; then
        # a dry run only printed the usage: every option passed must appear in it
        local arg
        for arg in "$@"; do
            if [[ "$arg" == --* ]] && ! grep -qE -- "(^|[^-[:alnum:]_])$arg([^-[:alnum:]_]|$)" "$PIECES/$name.out"; then
                echo "dry run: option $arg is not in the usage above" >>"$PIECES/$name.out"
                rc=2
            fi
        done
    fi
    echo $rc >"$PIECES/$name.rc"
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f\n", b - a }' >"$PIECES/$name.seconds"
    tail -n 3 "$PIECES/$name.out"
}

{
    echo "{\"date_utc\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"dry_run\": $([ $DRY = 1 ] && echo true || echo false),"
    echo " \"git_commit\": \"$(git rev-parse HEAD 2>/dev/null || echo unknown)\","
    echo " \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"cpus\": $(nproc)}"
} >"$PIECES/run.json"

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.memory,pcie.link.gen.max,power.limit \
        --format=csv,noheader >"$PIECES/nvidia_smi.txt" 2>&1
    "$PY" - "$PIECES/nvidia_smi.txt" >"$PIECES/nvidia_smi.json" <<'EOF'
import json, sys
keys = ["name", "memory_total", "driver_version", "clocks_max_sm", "clocks_max_memory", "pcie_gen_max", "power_limit"]
rows = [dict(zip(keys, (x.strip() for x in line.split(",")))) for line in open(sys.argv[1]) if line.strip()]
print(json.dumps({"gpus": rows}))
EOF
else
    echo '{"gpus": [], "note": "nvidia-smi not found"}' >"$PIECES/nvidia_smi.json"
fi

if [ $DRY = 1 ]; then
    JAX_PLATFORMS=cpu step throughput "${T_THROUGHPUT:-300}" "$PY" experiments/gpu_check.py throughput --cpu-dry-run
else
    step throughput "${T_THROUGHPUT:-120}" "$PY" experiments/gpu_check.py throughput
fi
# the throughput step prints one JSON line: keep it as its own piece
grep '^{' "$PIECES/throughput.out" | tail -n 1 >"$PIECES/throughput_result.json" || true
[ -s "$PIECES/throughput_result.json" ] || rm -f "$PIECES/throughput_result.json"

ORL="${ORL_DATA:-}"
for candidate in shared/data/orl_faces.npz ../shared/data/orl_faces.npz; do
    [ -z "$ORL" ] && [ -f "$candidate" ] && ORL="$candidate"
done

HELP=()
[ $DRY = 1 ] && HELP=(--help)
step tests "${T_TESTS:-170}" "$PY" -m pytest tests/test_fit.py tests/test_mesh.py -q -p no:cacheprovider "${HELP[@]}"
if [ -n "$ORL" ]; then
    step orl "${T_ORL:-60}" "$PY" experiments/bench_orl.py --data "$ORL" --parts target --methods ahals hals mu "${HELP[@]}"
    step restarts "${T_RESTARTS:-60}" "$PY" experiments/bench_orl.py --data "$ORL" --parts restarts_target \
        --restarts 32 --sk-sample 2 "${HELP[@]}"
else
    echo '{"skipped": "ORL faces not found (set ORL_DATA)"}' >"$PIECES/orl.json"
    echo '{"skipped": "ORL faces not found (set ORL_DATA)"}' >"$PIECES/restarts.json"
fi
step survey "${T_SURVEY:-80}" "$PY" experiments/bench_golub_survey.py --skip-r "${HELP[@]}"
step sparse "${T_SPARSE:-70}" "$PY" experiments/bench_sparse.py --small --skip-r --skip-memory --skip-restarts "${HELP[@]}"

"$PY" experiments/gpu_check.py assemble "$PIECES" "$REPORT"
