"""The command line and ``import ddlm`` start without torch: help, argument errors and the bare import
import only the standard library and ddlm (a fresh interpreter each). The start-up time itself is a
benchmark (benchmarks/startup.py), not a test."""

import subprocess
import sys

import pytest

# Run in a fresh interpreter: prints the top-level modules that are neither the standard library nor
# loaded at interpreter start (site hooks), after the statement given as argv[1].
NEW_MODULES = """
import sys
before = set(sys.modules)
code = 0
try:
    exec(sys.argv[1])
except SystemExit as error:
    code = error.code
new = {name.partition(".")[0] for name in set(sys.modules) - before} - set(sys.stdlib_module_names)
print("exit", code, "modules", *sorted(new), file=sys.stderr)
"""

CLI_CASES = {  # argv -> (exit code, what the one error line starts with; None: help, no error)
    ("--help",): (0, None),
    ("sample", "--help"): (0, None),
    ("eval", "--help"): (0, None),
    ("sample", "MODEL", "--top-p", "2"): (2, "ddlm sample: error: argument --top-p: expected a number in (0, 1]"),
    ("eval", "MODEL", "--device", "tpu"): (2, "ddlm eval: error: argument --device:"),
    ("train",): (2, "ddlm train: error: the following arguments are required: recipe"),
}


def run_fresh(statement: str) -> tuple[str, str]:
    """(stdout, the last stderr line) of NEW_MODULES running ``statement`` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", NEW_MODULES, statement], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("argv", list(CLI_CASES), ids=" ".join)
def test_help_and_argument_errors_import_nothing_heavy(argv):
    code, error = CLI_CASES[argv]
    out, report = run_fresh(f"from ddlm.cli import main; main({list(argv)!r})")
    assert report == f"exit {code} modules ddlm", report
    if error is None:
        assert "usage: ddlm" in out
    else:
        done = subprocess.run([sys.executable, "-m", "ddlm", *argv], capture_output=True, text=True, timeout=120)
        lines = [line for line in done.stderr.splitlines() if not line.startswith(("usage: ", " "))]
        assert done.returncode == 2 and done.stdout == "" and len(lines) == 1 and lines[0].startswith(error), done.stderr


def test_import_ddlm_is_lazy_and_ddlm_model_registers_the_auto_classes(tmp_path):
    from ddlm import DDLMConfig, DDLMForDiffusion

    DDLMForDiffusion(DDLMConfig.from_preset("tiny", vocab_size=10, max_position_embeddings=8)).save_pretrained(tmp_path)
    _, report = run_fresh("import ddlm")
    assert report == "exit 0 modules ddlm", report
    out, _ = run_fresh("import ddlm; assert 'torch' not in sys.modules; ddlm.DDLMForDiffusion; from transformers import AutoModel; "
                       f"print(type(AutoModel.from_pretrained({str(tmp_path)!r})).__name__)")
    assert out.strip() == "DDLMForDiffusion"


def test_every_public_name_resolves():
    import ddlm

    assert set(ddlm.__all__) <= set(dir(ddlm))
    for name in ddlm.__all__:
        assert getattr(ddlm, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ddlm.nope  # noqa: B018
