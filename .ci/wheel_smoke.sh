#!/usr/bin/env bash
# Wheel check: what `pip install ddlm` from an index gives, not the editable install of the checkout.
# Builds the wheel from the working tree (tracked and untracked, non-ignored files), installs
# torch==2.13.0 and then the wheel into a fresh virtual environment outside the checkout, and, from
# a temporary directory outside the checkout, trains the quickstart recipe for 2 steps and samples
# from the exported model. Any failure fails the script. Run it alone with `bash .ci/wheel_smoke.sh`
# (needs python3 with venv and pip, and git; 5-7 minutes on a shared 2-core machine, most of it installing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/ddlm-wheel-smoke.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
step() { echo "wheel smoke [$((SECONDS - start)) s]: $*"; }

# A copy of the working tree as git sees it: no stale build/ or *.egg-info of the checkout, and no
# build output written into it.
step "copying the source tree"
mkdir "$work/src"
git -C "$root" ls-files -z --cached --others --exclude-standard \
    | (cd "$root" && xargs -0 cp --parents -t "$work/src" || true)  # a deleted tracked file is skipped
test -f "$work/src/pyproject.toml"

step "building the wheel"
"$python" -m pip wheel --quiet --no-deps -w "$work/dist" "$work/src"
wheel=("$work"/dist/ddlm-*.whl)

step "installing torch==2.13.0 and ${wheel[0]##*/} into a fresh venv"
"$python" -m venv "$work/venv"
venv_python="$work/venv/bin/python"
"$venv_python" -m pip install --quiet torch==2.13.0
"$venv_python" -m pip install --quiet "${wheel[0]}"

mkdir "$work/run"
cd "$work/run"
unset PYTHONPATH
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
step "checking that ddlm imports from the venv, with every subpackage"
"$venv_python" - "$work/venv" <<'EOF'
import sys
from pathlib import Path

import ddlm
import ddlm.continuous
import ddlm.kernels
import ddlm.models
from ddlm.training.recipes import RECIPES_DIR

venv = Path(sys.argv[1]).resolve()
for module in (ddlm, ddlm.models, ddlm.continuous, ddlm.kernels):  # ddlm.kernels: a folder without __init__.py
    where = Path(module.__file__ or list(module.__path__)[0]).resolve()
    assert venv in where.parents, f"{module.__name__} imported from {where}, not the venv"
assert Path(list(ddlm.kernels.__path__)[0], "score_entropy.py").is_file(), list(ddlm.kernels.__path__)
assert venv in RECIPES_DIR.resolve().parents, RECIPES_DIR
assert (RECIPES_DIR / "quickstart.yaml").is_file(), sorted(RECIPES_DIR.iterdir())
EOF

step "ddlm train quickstart (2 steps)"
"$work/venv/bin/ddlm" train quickstart train.steps=2 train.warmup_steps=1 train.log_every=1 \
    train.eval_blocks=2 train.eval_num_t=2 train.sample_steps=4 train.num_samples=1 train.save_every=1 \
    train.output_dir="$work/run/out" data.cache_dir="$work/run/cache"
test -f "$work/run/out/final/config.json"

step "ddlm sample"
"$work/venv/bin/ddlm" sample "$work/run/out/final" --length 16 --steps 4 --quiet

step "passed"
