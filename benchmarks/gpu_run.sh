#!/usr/bin/env bash
# The GPU session in two calls on the lent machine (no network; it needs .whl/ and .gl/ from gpu_wheels.sh):
#
#   bash benchmarks/gpu_run.sh OUT_DIR              # first call, fits 8 min: install, the official comparison
#                                                   # (benchmarks/rmt_gpu.py), then the suite for the minutes left
#   bash benchmarks/gpu_run.sh OUT_DIR --resume     # second call, fits 4 min: install, the parts of the official
#                                                   # comparison the first call had no time for, CUDA tests, the
#                                                   # suite resumed (started afresh if the first call never reached it)
#   bash benchmarks/gpu_run.sh OUT_DIR --rehearse   # here, on CPU: every step at tiny sizes
#
# The official comparison takes most of the first call (results/h200/README.md has what each part took); the CUDA
# tests go in the second call so that the comparison is measured first.
# --minutes M sets the call's own budget (default 7.5, with --resume 3.5: half a minute inside the call's limit).
# Wheels go into a scratch SITE outside the repo (first on PYTHONPATH). The suite works in the git-ignored
# bench_results/gpu (bench_results/gpu-rehearse for --rehearse), which stays between calls on a warm machine; on a
# fresh one, put the first call's results.jsonl and rmt_gpu.json (as rmt_gpu_first.json) there and carry that folder. OUT_DIR gets at most 8 files, flat:
# run.log (this output, the test log included), rmt_gpu.md, rmt_gpu.json, rmt_gpu_profile.md, and the suite's
# results.jsonl, table.md, plot.png and env.json.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
SITE=${TMPDIR:-/tmp}/rmt-zoo-site
SUITE_FILES=(results.jsonl table.md plot.png env.json)
RESERVE_S=45  # after the suite's budget: its tables and plot, the copy, and slack
USAGE="usage: bash benchmarks/gpu_run.sh OUT_DIR [--resume] [--rehearse] [--minutes M]"

fail() { echo "gpu_run.sh: $*" >&2; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || fail "$USAGE"
OUT=$1; shift
resume="" rehearse="" minutes=""
while (($#)); do
    case $1 in
        --resume) resume=1; shift ;;
        --rehearse) rehearse=1; shift ;;
        --minutes) minutes=${2:?}; shift 2 ;;
        *) fail "unknown argument $1; $USAGE" ;;
    esac
done
[[ -n $minutes ]] || minutes=$([[ -n $resume ]] && echo 3.5 || echo 7.5)
WORK=$ROOT/bench_results/gpu${rehearse:+-rehearse}
compgen -G "$ROOT/.whl/*.whl" >/dev/null || fail "no wheels in .whl/: run bash benchmarks/gpu_wheels.sh where there is network, and carry .whl and .gl."
mkdir -p "$OUT" || fail "cannot create $OUT."
OUT=$(cd "$OUT" && pwd)

step() {  # step NAME COMMAND...: runs it, prints its time and the call's elapsed time; returns its exit status
    local name=$1 t0=$SECONDS rc
    shift
    echo "=== $name"
    "$@"
    rc=$?
    echo "=== $name: $((SECONDS - t0)) s, exit $rc ($SECONDS s of $(budget_s) s elapsed)"
    TIMES+=("$name $((SECONDS - t0)) s (exit $rc)")
    return $rc
}
budget_s() { awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }'; }

install() {
    rm -rf "$SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$ROOT"/.whl/*.whl
}

versions() {  # the versions and the device; exit 1 without CUDA unless rehearsing
    "$PY" - "$rehearse" <<'EOF'
import importlib.metadata as m, shutil, subprocess, sys
from pathlib import Path
import torch, timm, zoo
print(f"python {sys.version.split()[0]}; torch {torch.__version__} (CUDA build {torch.version.cuda}); "
      f"timm {timm.__version__} ({Path(timm.__file__).parent}); fvcore {m.version('fvcore')}; "
      f"rmt-zoo {m.version('rmt-zoo')}, code from {Path(zoo.__file__).parent}")
head = subprocess.run(["git", "log", "-1", "--format=%H %s"], capture_output=True, text=True) if shutil.which("git") else None
built = Path(".whl/rmt_zoo_commit.txt").read_text().strip()
commit = head.stdout.strip() if head and head.returncode == 0 else f"no git checkout here; {built}"
print(f"commit: {commit}")
if torch.cuda.is_available():
    print(f"GPU: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB), "
          f"{torch.cuda.device_count()} device(s), cuDNN {torch.backends.cudnn.version()}")
elif sys.argv[1]:
    print("GPU: none (rehearsal on CPU)")
else:
    sys.exit(f"torch {torch.__version__} sees no CUDA device here: nothing to measure; --rehearse runs the steps on CPU.")
EOF
}

left_s() { echo $(($(budget_s) - SECONDS - $1)); }  # left_s RESERVE: the call's seconds left but RESERVE

tests() {  # at most 150 s, and never into the suite's reserve
    local cap
    cap=$(left_s $RESERVE_S)
    ((cap > 150)) && cap=150
    ((cap >= 30)) || { echo "only $cap s left: no CUDA tests"; return 1; }
    timeout "$cap" "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py
}

official() {  # official PARTS...: benchmarks/rmt_gpu.py for the call's time but 30 s; a first call keeps its json in $WORK
    [[ -f .gl/RMT.py ]] || { echo "no .gl/RMT.py (gpu_wheels.sh --official PATH): no official comparison"; return 1; }
    local rc
    timeout "$(left_s 30)" "$PY" -m benchmarks.rmt_gpu --official .gl/RMT.py --out "$OUT" --parts "$@" ${rehearse:+--rehearse}
    rc=$?
    [[ -z $resume && -f $OUT/rmt_gpu.json ]] && mkdir -p "$WORK" && cp "$OUT/rmt_gpu.json" "$WORK/rmt_gpu_first.json"
    return $rc
}

missing_parts() {  # the parts of the official comparison that the first call's rmt_gpu.json lacks
    [[ -f $WORK/rmt_gpu_first.json ]] || { echo "no $WORK/rmt_gpu_first.json: the first call's parts are unknown" >&2; return 0; }
    "$PY" - "$WORK/rmt_gpu_first.json" <<'EOF'
import json, sys
result = json.load(open(sys.argv[1]))
print(" ".join(part for part in result["parts_asked"] if part not in result["parts_done"]))
EOF
}

seed() {  # the suite resumes from the rows earlier sessions on this GPU kind committed, where zoo/ and bench/ match
    local kind
    kind=$("$PY" -c "import torch; n = torch.cuda.get_device_name().lower(); print(next((k for k in ('h100', 'h200') if k in n), ''))")
    [[ -n $kind && -f $ROOT/results/$kind/results.jsonl && ! -f $WORK/results.jsonl ]] || return 0
    mkdir -p "$WORK"
    "$PY" - "$ROOT/results/$kind/results.jsonl" "$WORK/results.jsonl" <<'EOF' && resume=1
import json, subprocess, sys
same = {}
def same_code(commit):  # rows measured by other model or harness code are measured again
    if commit not in same:
        diff = ["git", "diff", "--quiet", commit, "--", "zoo", "bench"]  # against the working tree
        same[commit] = bool(commit) and subprocess.run(diff, capture_output=True).returncode == 0
    return same[commit]
with open(sys.argv[1]) as src:
    rows = [line for line in src if same_code(json.loads(line).get("env", {}).get("git_commit") or "")]
if not rows:
    sys.exit(f"no row of {sys.argv[1]} was measured by this zoo/ and bench/ code: the suite starts afresh")
print(f"{len(rows)} rows of {sys.argv[1]} were measured by this zoo/ and bench/ code: the suite resumes from them")
with open(sys.argv[2], "w") as dst:
    dst.writelines(rows)
EOF
}

suite() {
    local left=$(($(budget_s) - SECONDS - RESERVE_S))
    if [[ -n $rehearse ]]; then
        "$PY" -m bench.suite --dry-run --out "$WORK" ${resume:+--resume}
    elif ((left < 30)); then
        echo "only $left s left for the suite: not started"; return 1
    else
        timeout $((left + RESERVE_S / 2)) "$PY" -m bench.suite --out "$WORK" \
            --budget-min "$(awk -v s="$left" 'BEGIN { printf "%.2f", s / 60 }')" ${resume:+--resume}
    fi
}

collect() {  # the suite's files that come back; its table.tex and CSVs stay in $WORK
    for f in "${SUITE_FILES[@]}"; do [[ -f $WORK/$f ]] && cp "$WORK/$f" "$OUT/"; done
    ls -l "$OUT"
    local n
    n=$(find "$OUT" -type f | wc -l)
    ((n <= 8)) || { echo "OUT_DIR holds $n files; only 8 come back"; return 1; }
}

main() {
    cd "$ROOT" || exit 2
    export PYTHONUNBUFFERED=1
    # one inductor cache for every step and both calls on a warm machine
    export TORCHINDUCTOR_CACHE_DIR=$ROOT/bench_results/inductor-cache TORCHINDUCTOR_FX_GRAPH_CACHE=1
    TIMES=()
    step install install || fail "the wheels in .whl/ did not install into $SITE."
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    # rows record the commit; without .git here, the one the carried wheel was built from
    git rev-parse HEAD >/dev/null 2>&1 || export RMT_ZOO_COMMIT=$(awk '{print $6}' .whl/rmt_zoo_commit.txt)
    step versions versions || exit 1
    if [[ -n $resume ]]; then
        local parts
        parts=$(missing_parts)
        [[ -z $parts ]] || step "official comparison, the rest ($parts)" official $parts
    fi
    [[ -z $resume && -z $rehearse ]] || step "CUDA tests" tests
    [[ -n $resume ]] || step "official comparison" official throughput memory latency train
    [[ -n $rehearse ]] || seed
    if [[ -n $resume && ! -f $WORK/results.jsonl ]]; then
        echo "no $WORK/results.jsonl (the first call never reached the suite, or this machine is fresh): the suite starts afresh"
        resume=""
    fi
    step suite suite
    step collect collect
    echo "steps: $(IFS=';'; echo "${TIMES[*]}"); $SECONDS s in all"
}

main 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
