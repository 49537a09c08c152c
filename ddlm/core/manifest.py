"""Manifests: the size and SHA-256 of each file of a directory, written last and checked before anything is read.

Training checkpoints (``ddlm.checkpoints``) and exported model directories carry one as ``manifest.json``::

    {"format": 1, "kind": "model", "files": {"model.safetensors": {"bytes": 123, "sha256": "..."}, ...}}

A model directory's manifest lists every plain file beside it (weights, config, tokenizer files); its
loaders check them all when a manifest is there and load directories without one unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1
DAMAGED = "size or SHA-256 differs: the file was damaged or changed after it was written"


def durable(path: Path) -> None:
    """Flush a written file, or a directory's entries after a rename, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write a text file durably, replacing ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    durable(tmp)
    os.replace(tmp, path)
    durable(path.parent)


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def describe(directory: Path, names) -> dict[str, dict]:
    """``{name: {"bytes": size, "sha256": hex}}`` of the named files of ``directory``."""
    return {name: {"bytes": (directory / name).stat().st_size, "sha256": sha256(directory / name)} for name in names}


def read_manifest(directory: Path, error: type[Exception], names: set[str] | None = None) -> dict:
    """The manifest of ``directory``, or ``error`` saying why it is not one (``FileNotFoundError`` passes).

    Its ``files`` must be plain names inside ``directory`` (exactly ``names`` when given)."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        plain = all(isinstance(name, str) and name == os.path.basename(name) and name not in ("", ".", "..", MANIFEST)
                    for name in files)
        if manifest.get("format") != FORMAT or not isinstance(files, dict) or not plain or (names is not None and set(files) != names):
            raise ValueError(f"it lists {sorted(files)} in format {manifest.get('format')!r}")
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as problem:
        raise error(f"{path} is not a ddlm manifest ({problem})") from None
    return manifest


def check_files(directory: Path, files: dict, error: type[Exception], remedy: str = "") -> None:
    """Raise ``error`` naming the first file of ``files`` (a manifest's) that is missing or differs from its entry."""
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise error(f"{path} is missing (listed in {directory / MANIFEST}){remedy}")
        if (not isinstance(expected, dict) or path.stat().st_size != expected.get("bytes")
                or sha256(path) != expected.get("sha256")):
            raise error(f"{path} does not match the manifest ({DAMAGED}){remedy}")


def write_model_manifest(directory: str | os.PathLike) -> None:
    """Write the manifest of a saved model directory: every plain, non-hidden file in it."""
    directory = Path(directory)
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST)
    write_atomic(directory / MANIFEST, json.dumps({"format": FORMAT, "kind": "model", "files": describe(directory, names)}, indent=1))


def remove_model_manifest(directory: str | os.PathLike) -> None:
    """Remove a model directory's manifest before its files are written again (it would no longer match)."""
    if os.path.isdir(directory):
        Path(directory, MANIFEST).unlink(missing_ok=True)


def verify_model_dir(directory: str | os.PathLike) -> None:
    """Check every file a model directory's manifest lists (ValueError naming the first that differs); a
    directory without a manifest (older exports, a plain ``save_pretrained``) passes unchecked."""
    directory = Path(directory)
    if not (directory / MANIFEST).exists():
        return
    remedy = f"; restore it, or delete {MANIFEST} to load the directory unchecked"
    check_files(directory, read_manifest(directory, ValueError)["files"], ValueError, remedy)
