"""The wheel (what ``pip install .`` or an index gives, unlike the editable install) holds every
package, the built-in recipes, and nothing else. The full install-and-run check is .ci/wheel_smoke.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"ddlm": "ddlm", "kernels": "ddlm/kernels", "recipes": "ddlm/builtin_recipes"}  # source folder -> wheel folder


def source_copy(destination: Path) -> Path:
    """The working tree as git sees it (tracked and untracked, non-ignored files), copied to ``destination``.

    Building from a copy keeps the checkout's build/ out of the way: setuptools puts whatever a
    stale build/lib holds into the wheel, which would hide a package the config leaves out.
    """
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listing.decode().split("\0")):
        if (ROOT / name).is_file():  # a tracked file deleted in the working tree is left out
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def test_wheel_holds_every_package_and_recipe_and_nothing_else(tmp_path):
    source = source_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("ddlm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    expected = set()
    for folder, target in MAPPED.items():
        pattern = "*.yaml" if folder == "recipes" else "*.py"
        files = sorted((source / folder).rglob(pattern))
        assert files, f"no {pattern} files in {folder}/"
        expected |= {f"{target}/{path.relative_to(source / folder).as_posix()}" for path in files}
    packages = {name.rsplit("/", 1)[0] for name in expected if name.endswith(".py")}
    assert {"ddlm", "ddlm/core", "ddlm/models", "ddlm/theory", "ddlm/continuous", "ddlm/sampling", "ddlm/likelihood", "ddlm/text",
            "ddlm/evaluation", "ddlm/training", "ddlm/kernels"} <= packages
    mounted = {"ddlm/kernels", "ddlm/builtin_recipes"}  # no __init__.py in the source folders (see the shadowing test)
    assert {f"{package}/__init__.py" for package in packages - mounted} <= names, "a package without its __init__.py"
    assert sorted(expected - names) == [], "files of the source tree missing from the wheel"

    dist_info = wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info/"
    strays = sorted(name for name in names if not name.startswith(("ddlm/", dist_info)))
    assert strays == [], "files outside the ddlm package (tests/, benchmarks/, a top-level kernels/, ...)"
    assert not any(name.startswith(("tests/", "benchmarks/", "ddlm/tests/", "ddlm/benchmarks/")) for name in names)


def top_level_folders() -> list[str]:
    listing = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return sorted({name.split("/", 1)[0] for name in listing.splitlines() if "/" in name and not name.startswith(".")})


def test_no_folder_of_the_checkout_is_importable_except_ddlm():
    """A package folder (or a module) in the repository root would shadow the installed distribution of the
    same name whenever Python starts there: transformers imports the PyPI package ``kernels``, and
    ``recipes``, ``tools``, ``tests``, ``benchmarks``, ``docs`` and ``examples`` are distribution names too."""
    folders = top_level_folders()
    assert {"ddlm", "kernels", "recipes", "tests"} <= set(folders)
    packages = [folder for folder in folders if folder != "ddlm" and (ROOT / folder / "__init__.py").exists()]
    assert packages == [], "top-level folders with an __init__.py"
    modules = sorted(path.name for path in ROOT.glob("*.py"))
    assert modules == [], "top-level Python modules"


def test_python_started_in_the_repository_root_imports_ddlm_and_the_installed_kernels():
    """`python -c "import ddlm"` and `python -m pytest --collect-only` from the root: `kernels` is the installed
    distribution (a dependency of current transformers), ddlm.kernels the project's Triton kernels."""
    check = (
        "import importlib.metadata, importlib.util, pathlib, sys\n"
        "import ddlm, ddlm.kernels, transformers\n"
        "root = pathlib.Path.cwd().resolve()\n"
        "assert pathlib.Path(list(ddlm.kernels.__path__)[0]).resolve() in (root / 'kernels', root / 'ddlm' / 'kernels')\n"
        "try:\n"
        "    importlib.metadata.distribution('kernels')\n"
        "except importlib.metadata.PackageNotFoundError:\n"
        "    print('no kernels distribution'); sys.exit(0)\n"
        "import kernels\n"
        "origin = pathlib.Path(kernels.__file__).resolve()\n"
        "assert (root / 'kernels') not in origin.parents, origin  # the venv may sit inside the checkout\n"
        "print('kernels from', origin)\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                "tests/test_packaging.py", "tests/test_processes.py"],
                               cwd=ROOT, env=env, capture_output=True, text=True)
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
