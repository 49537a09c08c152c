"""The documentation site builds with ``mkdocs build --strict`` (no broken link, reference or include).

CI runs the same command after the tests; here it is skipped where the ``docs`` extra is not installed.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    """The site builds without a warning (CI runs the same; skipped where the docs extra is not installed)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "results" / "quality_training.png").exists()
