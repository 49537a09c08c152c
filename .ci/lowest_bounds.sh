#!/usr/bin/env bash
# Lower-bound check: pyproject.toml's declared minimums must work. Installs every direct dependency (and
# the [dev] extra) at exactly its declared lower bound (.ci/lowest_constraints.py; torch stays 2.13.0, see
# there) into a fresh virtual environment, the transitive dependencies at their newest, and runs a fast
# subset of the suite from the repository root: imports, a model round trip, training with exact resume,
# sampling, a bound, data loading, the command line. 3-6 minutes on a 2-core machine, most of it installing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/ddlm-lowest.XXXXXX")"
trap 'rm -rf "$work"' EXIT
python3 "$root/.ci/lowest_constraints.py" > "$work/constraints.txt"
echo "lowest bounds: constraints $(paste -sd ' ' "$work/constraints.txt")"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet torch==2.13.0
"$work/venv/bin/python" -m pip install --quiet -c "$work/constraints.txt" -e "$root[dev]"
names=$(sed 's/==.*//' "$work/constraints.txt" | paste -sd '|')
echo "lowest bounds: installed $("$work/venv/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE "^($names)==" | paste -sd ' ')"
cd "$root"
"$work/venv/bin/python" -m pytest -q -n 2 -p no:cacheprovider \
    tests/test_packaging.py::test_python_started_in_the_repository_root_imports_ddlm_and_the_installed_kernels \
    tests/test_model.py::test_save_and_auto_load_round_trip_identically \
    tests/test_train.py::test_a_killed_run_resumes_with_exactly_the_same_losses \
    tests/test_sampling.py::test_predictor_reproduces_a_known_distribution \
    tests/test_likelihood.py::test_bound_with_exact_ratios_and_exact_terminal_marginal_is_the_nll \
    tests/test_data.py tests/test_pipeline.py tests/test_cli.py::test_eval_prints_a_bound_per_file_with_error_bars
echo "lowest bounds: passed"
