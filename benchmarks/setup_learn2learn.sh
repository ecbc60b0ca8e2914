#!/usr/bin/env bash
# Make a throwaway virtual environment with learn2learn 0.2.0, higher 0.2.1 and metamodal, to
# run the benchmarks side by side with them: benchmarks/data.py (learn2learn's TaskDataset) and
# benchmarks/meta_learners.py (learn2learn's MAML and higher's differentiable inner loop).
#
#   bash benchmarks/setup_learn2learn.sh ENV_DIR
#   ENV_DIR/bin/python benchmarks/data.py
#   ENV_DIR/bin/python benchmarks/meta_learners.py
#
# learn2learn is built from its source distribution with its Cython extensions regenerated
# (its shipped .c files do not build against current Python headers). torch is pinned to 2.13.0,
# the CPU build the project uses; learn2learn and higher are installed with --no-deps so that
# nothing replaces it. Never point ENV_DIR at the project's own environment.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 ENV_DIR   (a new, throwaway directory)" >&2
    exit 2
fi
ENV_DIR=$1
PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}

if [[ -e "$ENV_DIR" && ! -x "$ENV_DIR/bin/python" ]]; then
    echo "$ENV_DIR exists and is not a virtual environment; give a new directory" >&2
    exit 2
fi
if [[ "$(cd "$(dirname "$ENV_DIR")" && pwd)/$(basename "$ENV_DIR")" == "$PROJECT/.venv" ]]; then
    echo "refusing to touch the project's own environment; give a throwaway directory" >&2
    exit 2
fi

# An absolute path: the learn2learn build below runs pip from another directory.
ENV_DIR=$(cd "$(dirname "$ENV_DIR")" && pwd)/$(basename "$ENV_DIR")

"$PYTHON" -m venv "$ENV_DIR"
PIP=("$ENV_DIR/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --upgrade pip setuptools wheel
"${PIP[@]}" install "torch==2.13.0" numpy requests tqdm cython
"${PIP[@]}" install -e "$PROJECT"

BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
"${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation --dest "$BUILD" "learn2learn==0.2.0"
tar -xzf "$BUILD"/learn2learn-0.2.0.tar.gz -C "$BUILD"
SRC="$BUILD/learn2learn-0.2.0"
# Regenerate the Cython extensions instead of compiling the stale generated C.
find "$SRC/learn2learn" -name '*.c' -delete
sed -i 's/^use_cython = .*/use_cython = True/' "$SRC/setup.py"
grep -q '^use_cython = True' "$SRC/setup.py" || {
    echo "could not switch setup.py to use_cython = True" >&2
    exit 1
}
(cd "$SRC" && "${PIP[@]}" install --no-deps --no-build-isolation .)
# higher is pure Python and needs only torch (already pinned above).
"${PIP[@]}" install --no-deps "higher==0.2.1"

echo "environment ready: $ENV_DIR/bin/python $PROJECT/benchmarks/data.py"
echo "                   $ENV_DIR/bin/python $PROJECT/benchmarks/meta_learners.py"
