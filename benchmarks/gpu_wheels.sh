#!/usr/bin/env bash
# Run HERE, before a GPU session: fills the git-ignored .whl/ with the wheels the GPU machine lacks (it has no
# network) and .gl/ with the official RMT code, which travel there through the device tool's `carry`.
#
#   bash benchmarks/gpu_wheels.sh [--official PATH_TO_qhfan_RMT_checkout] [--dev-python PYTHON] [--timm VERSION]
#
# Wheels: fvcore and iopath (built here: the registry has only their sources), yacs and termcolor, the timm the
# tests passed with, and this project's own wheel, each at the version installed in the tests' venv (--dev-python;
# by default .venv of this checkout, of its main worktree, or of the checkout it was cloned from). The project
# wheel is built from the committed HEAD. Idempotent: every run replaces what an earlier one wrote.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
MANAGED=(fvcore iopath yacs termcolor timm)
fail() { echo "gpu_wheels.sh: $*" >&2; exit 2; }

official="" dev_python="${DEV_PYTHON:-}" timm_version=""
while (($#)); do
    case $1 in
        --official) official=${2:?}; shift 2 ;;
        --dev-python) dev_python=${2:?}; shift 2 ;;
        --timm) timm_version=${2:?}; shift 2 ;;
        *) fail "unknown argument $1; usage: bash benchmarks/gpu_wheels.sh [--official PATH] [--dev-python PYTHON] [--timm VERSION]" ;;
    esac
done

# The tests' venv: where "the versions the tests passed with" are read.
main_worktree() { git -C "$1" worktree list --porcelain 2>/dev/null | sed -n '1s/^worktree //p'; }
if [[ -z $dev_python ]]; then
    origin=$(git -C "$ROOT" config --get remote.origin.url || true)
    for dir in "$ROOT" "$(main_worktree "$ROOT")" ${origin:+"$(main_worktree "$origin")"}; do
        if [[ -n $dir && -x $dir/.venv/bin/python ]]; then dev_python=$dir/.venv/bin/python; break; fi
    done
fi
[[ -n $dev_python && -x $dev_python ]] || fail "no tests' venv found (.venv here or in the main worktree); pass --dev-python PYTHON."
tested() { "$dev_python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || fail "$dev_python has no $1 installed."; }
[[ -n $timm_version ]] || timm_version=$(tested timm)
declare -A version=([timm]=$timm_version)
for name in fvcore iopath yacs termcolor; do version[$name]=$(tested "$name"); done

if [[ -n $official ]]; then
    [[ -f $official/classfication_release/RMT.py ]] || fail "--official $official has no classfication_release/RMT.py (give the qhfan/RMT checkout)."
elif [[ ! -f $ROOT/.gl/RMT.py ]]; then
    fail "no official RMT code in .gl/ yet; pass --official PATH_TO_qhfan_RMT_checkout."
fi
[[ -z $(git -C "$ROOT" status --porcelain --untracked-files=no) ]] || echo "note: uncommitted changes are not in the project wheel (built from HEAD)"

# Build everything in a scratch folder first, so a failed run leaves the previous wheels in place.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "versions from $dev_python: fvcore ${version[fvcore]}, iopath ${version[iopath]}, yacs ${version[yacs]}, termcolor ${version[termcolor]}, timm ${version[timm]}"
"$PY" -m pip wheel -q --no-deps -w "$tmp/whl" "fvcore==${version[fvcore]}" "iopath==${version[iopath]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$tmp/whl" \
    "yacs==${version[yacs]}" "termcolor==${version[termcolor]}" "timm==${version[timm]}"
git -C "$ROOT" archive --format=tar HEAD | (mkdir -p "$tmp/src" && tar -x -C "$tmp/src")
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/whl" "$tmp/src"
git -C "$ROOT" log -1 --format='rmt-zoo wheel built from commit %H (%cs, %s)' > "$tmp/whl/rmt_zoo_commit.txt"

mkdir -p "$ROOT/.whl"
for name in "${MANAGED[@]}" rmt_zoo; do rm -f "$ROOT/.whl/$name"-*.whl; done
mv "$tmp/whl"/* "$ROOT/.whl/"

if [[ -n $official ]]; then
    mkdir -p "$ROOT/.gl"
    cp "$official/classfication_release/RMT.py" "$ROOT/.gl/RMT.py"
    commit=$(git -C "$official" rev-parse HEAD 2>/dev/null || echo "unknown (not a git checkout)")
    printf 'qhfan/RMT classfication_release/RMT.py at commit %s\ncopied from %s; not part of rmt-zoo, never commit it\n' \
        "$commit" "$official" > "$ROOT/.gl/RMT_SOURCE.txt"
fi

du -h "$ROOT"/.whl/* "$ROOT"/.gl/*
du -ch "$ROOT/.whl" "$ROOT/.gl" | tail -1 | sed 's/total$/in all (the device tool carries at most 64 MiB with the tree)/'
