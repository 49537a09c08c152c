"""The wheel (what ``pip install .`` or an index gives, unlike the editable install) holds every
package, the built-in recipes, and nothing else. The full install-and-run check is .ci/wheel_smoke.sh."""

from __future__ import annotations

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
    assert {"ddlm", "ddlm/model", "ddlm/continuous", "ddlm/kernels"} <= packages
    assert {f"{package}/__init__.py" for package in packages} <= names, "a package without its __init__.py"
    assert sorted(expected - names) == [], "files of the source tree missing from the wheel"

    dist_info = wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info/"
    strays = sorted(name for name in names if not name.startswith(("ddlm/", dist_info)))
    assert strays == [], "files outside the ddlm package (tests/, benchmarks/, a top-level kernels/, ...)"
    assert not any(name.startswith(("tests/", "benchmarks/", "ddlm/tests/", "ddlm/benchmarks/")) for name in names)
