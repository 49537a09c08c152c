"""Print a pip constraints file pinning every direct dependency of pyproject.toml (and the [dev] extra) to
the lower bound it declares, for .ci/lowest_bounds.sh.

torch is the exception: it is pinned to 2.13.0, the CPU build CI installs, because PyPI's older torch
releases are multi-GB CUDA builds; its declared bound (2.6) is a security floor, not a tested minimum.
"""

import re
import sys
import tomllib
from pathlib import Path

TORCH = "torch==2.13.0"


def lower_bound(requirement: str) -> str:
    """``'name>=1.2,<2  # ...'`` -> ``'name==1.2'``; a requirement without ``>=`` is refused (nothing to test)."""
    name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
    found = re.search(r">=\s*([0-9][^,;\s]*)", requirement)
    if found is None:
        sys.exit(f"error: {requirement!r} declares no lower bound")
    return f"{name}=={found.group(1)}"


def main() -> None:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        print(TORCH if requirement.startswith("torch") else lower_bound(requirement))


if __name__ == "__main__":
    main()
