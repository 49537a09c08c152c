"""Run directories and training checkpoints: a lock, tensor-only checkpoints with a manifest, discovery
that does not trust the ``latest`` pointer, and the rules for resuming with a changed recipe.

Nothing here unpickles: tensors are stored as safetensors, everything else as JSON. A run directory
(``train.output_dir``) holds::

    .lock                  held (flock) while a run writes here; names the holder (pid, host, start)
    recipe.json            the recipe of the latest start or resume
    resumes.jsonl          one line per resume: the step and the recipe changes it applied
    metrics.jsonl          one line per optimizer step
    checkpoints/step_N/    state.safetensors (every tensor), state.json (everything else, the recipe
                           included), manifest.json (size and SHA-256 of both, written last)
    checkpoints/latest     the newest checkpoint's name: a hint for people, never followed
    final/                 the exported model (``from_pretrained``) with a manifest of its files (``ddlm.manifest``)

A checkpoint is written into ``checkpoints/.tmp_step_N`` (every file flushed to disk) and renamed,
so a ``step_N`` directory is whole unless its files were damaged later; the manifest is checked
before anything is loaded. A damaged checkpoint is moved to ``checkpoints/corrupt_step_N`` and the
one before it is used. One whose files match but whose recorded step disagrees with its name, its
manifest or its run's ``train.steps`` was edited by hand and is refused.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor, distribute_tensor

from ..core import manifest as manifests
from ..core.manifest import FORMAT, MANIFEST

CHECKPOINTS = "checkpoints"
LATEST = "latest"
LOCK = ".lock"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
STEP_DIR = re.compile(r"step_(\d{8})")

# Recipe keys a resume may change when the user names them as overrides; every other difference
# (model, tokenizer, data, seed, global batch, objective, ...) means another run and is refused.
RESUMABLE_CHANGES = frozenset({
    "train.steps", "train.lr", "train.warmup_steps", "train.decay", "train.min_lr_ratio", "train.weight_decay",
    "train.clip_grad_norm", "train.micro_batch_size", "train.mixed_precision", "train.log_every", "train.eval_every",
    "train.eval_blocks", "train.eval_num_t", "train.sample_every", "train.num_samples", "train.sample_steps",
    "train.save_every", "train.keep_checkpoints", "train.trackers", "train.loss_impl", "train.compile",
})
IGNORED_CHANGES = frozenset({"train.output_dir", "data.cache_dir"})  # where things are, not what they are

log = logging.getLogger(__name__)


class CorruptCheckpoint(ValueError):
    """A checkpoint whose files do not match its manifest or cannot be read."""


class RunDirectoryInUse(OSError):
    """Another process holds the run directory's lock."""


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a parameter: gathered from every rank (a collective) when FSDP2 shards it."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(saved: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    """A saved whole tensor placed like ``target``: its device and dtype, and this rank's shard when
    ``target`` is an FSDP2 DTensor (every rank holds the whole tensor, so no communication)."""
    if saved.shape != target.shape:
        raise CorruptCheckpoint(f"{name}: the checkpoint holds shape {list(saved.shape)}, the run needs {list(target.shape)}")
    saved = saved.to(target.device, target.dtype)
    if isinstance(target, DTensor):
        saved = distribute_tensor(saved, target.device_mesh, target.placements, src_data_rank=None)
    return saved


# ----------------------------------------------------------------------------- the run lock


@contextlib.contextmanager
def run_lock(output_dir: Path):
    """Hold ``output_dir/.lock`` (an exclusive ``flock``) while the block runs; the operating system
    releases it when the process dies, so a killed run never leaves a stale lock.

    Raises ``RunDirectoryInUse`` naming the holder if another process has it.
    """
    import fcntl

    output_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(output_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "an unknown process"
            raise RunDirectoryInUse(f"{output_dir} is in use by another run ({holder}); wait for it to end "
                                    "or choose another train.output_dir") from None
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


# ----------------------------------------------------------------------------- state <-> tensors + JSON


def encode(value, tensors: dict[str, torch.Tensor] | None, path: str = "state"):
    """A JSON-able image of nested dicts/lists/tuples/scalars; tensors are moved into ``tensors`` under
    their path (whole, on the CPU) and replaced by ``{"tensor": path}``. Containers become one-key
    objects (``dict`` as [key, value] pairs, so integer keys stay integers), which plain values never are.
    ``tensors=None`` (a rank that does not write) only takes part in gathering FSDP2 shards."""
    if isinstance(value, torch.Tensor):
        tensor = whole(value.detach())
        if tensors is not None:
            tensor = tensor.cpu().contiguous()
            if any(tensor.data_ptr() == t.data_ptr() for t in tensors.values() if t.numel()):
                tensor = tensor.clone()  # safetensors stores no shared memory (tied weights)
            tensors[path] = tensor
        return {"tensor": path}
    if isinstance(value, dict):
        if not all(isinstance(key, (str, int)) for key in value):
            raise TypeError(f"{path}: only str and int keys can be stored in a checkpoint")
        return {"dict": [[key, encode(item, tensors, f"{path}.{key}")] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [encode(item, tensors, f"{path}.{i}") for i, item in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{path}: a {type(value).__name__} cannot be stored in a checkpoint")


def decode(value, tensors: dict[str, torch.Tensor]):
    """The inverse of ``encode``."""
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or next(iter(value)) not in ("tensor", "dict", "list", "tuple"):
        raise CorruptCheckpoint(f"{STATE_JSON} holds an object that is not an encoded value: {str(value)[:80]}")
    kind, content = next(iter(value.items()))
    if kind == "tensor":
        if content not in tensors:
            raise CorruptCheckpoint(f"{STATE_JSON} names a tensor {content!r} that {STATE_TENSORS} does not hold")
        return tensors[content]
    if kind == "dict":
        return {key: decode(item, tensors) for key, item in content}
    items = [decode(item, tensors) for item in content]
    return tuple(items) if kind == "tuple" else items


# ----------------------------------------------------------------------------- writing


def save_checkpoint(output_dir: Path, step: int, state: dict, meta: dict, *, write: bool, keep: int) -> Path:
    """Write ``checkpoints/step_N`` via a temporary directory, point ``latest`` at it and remove the
    checkpoints older than the newest ``keep``.

    state: nested dicts/lists of tensors and scalars (model, optimizer, ...); every rank calls this
    (gathering FSDP2 shards is a collective) and only the rank with ``write`` writes. meta: JSON
    values stored beside the state (step, tokens, recipe). Returns the checkpoint directory.
    """
    tensors: dict[str, torch.Tensor] | None = {} if write else None
    skeleton = encode(state, tensors)
    root = output_dir / CHECKPOINTS
    final = root / f"step_{step:08d}"
    if not write:
        return final
    tmp = root / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)  # a write of this run that did not complete (the run holds the lock)
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, tmp / STATE_TENSORS)
    except SafetensorError as error:  # a full disk or a file-size limit reaches us as this
        raise OSError(f"could not write {tmp / STATE_TENSORS}: {error}") from error
    manifests.durable(tmp / STATE_TENSORS)
    (tmp / STATE_JSON).write_text(json.dumps({"format": FORMAT, **meta, "state": skeleton}, allow_nan=True))
    manifests.durable(tmp / STATE_JSON)
    files = manifests.describe(tmp, (STATE_TENSORS, STATE_JSON))
    (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1))
    manifests.durable(tmp / MANIFEST)
    manifests.durable(tmp)
    if final.exists():
        raise FileExistsError(f"{final} exists already; it was not written by this run (moved it away or resume)")
    os.replace(tmp, final)
    manifests.durable(root)
    manifests.write_atomic(root / LATEST, final.name)
    for old in complete_checkpoints(output_dir)[:-keep]:
        if old != final:
            shutil.rmtree(old)
    return final


# ----------------------------------------------------------------------------- finding and reading


def step_of(path: Path) -> int:
    return int(STEP_DIR.fullmatch(path.name).group(1))


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoints/step_N`` directories that have a manifest, oldest first (their files are not read)."""
    root = output_dir / CHECKPOINTS
    found = [p for p in root.glob("step_*") if STEP_DIR.fullmatch(p.name) and (p / MANIFEST).is_file()] if root.is_dir() else []
    return sorted(found, key=step_of)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint (by its manifest), whatever the ``latest`` pointer says."""
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def verify(checkpoint: Path) -> dict:
    """Check every file against the manifest (size, SHA-256); returns the manifest or raises CorruptCheckpoint."""
    try:
        manifest = manifests.read_manifest(checkpoint, CorruptCheckpoint, {STATE_TENSORS, STATE_JSON})
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{checkpoint / MANIFEST} is missing (the checkpoint is incomplete)") from None
    manifests.check_files(checkpoint, manifest["files"], CorruptCheckpoint)
    return manifest


def load_checkpoint(checkpoint: Path) -> tuple[dict, dict]:
    """(state, meta) of a verified checkpoint: the nested state with CPU tensors, and the JSON values
    stored beside it (step, tokens, recipe)."""
    manifest = verify(checkpoint)
    try:
        tensors = load_file(checkpoint / STATE_TENSORS)
        meta = json.loads((checkpoint / STATE_JSON).read_text())
        state = decode(meta.pop("state"), tensors)
        recipe = dict(meta["recipe"])
        steps, batch, block = recipe["train"]["steps"], recipe["train"]["global_batch_size"], recipe["data"]["block_size"]
        step, tokens = meta["step"], meta["tokens"]
    except (SafetensorError, ValueError, KeyError, TypeError) as error:
        raise CorruptCheckpoint(f"{checkpoint} cannot be read: {error}") from None
    _check_step(checkpoint, manifest.get("step"), step, tokens, (steps, batch, block))
    return state, meta


def _check_step(checkpoint: Path, manifest_step, step, tokens, run: tuple) -> None:
    """CorruptCheckpoint unless the step ``state.json`` records agrees with the directory's name and the manifest,
    lies within the ``train.steps`` of the run that wrote it, and ``tokens`` is what that many steps read."""
    steps, batch, block = run
    named = STEP_DIR.fullmatch(checkpoint.name)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (step, steps, batch, block)):
        problem = f"step {step!r}, train.steps {steps!r}, global_batch_size {batch!r} and block_size {block!r} (each must be an int >= 1)"
    elif named and int(named.group(1)) != step:
        problem = f"step {step}, but its directory is named {checkpoint.name}"
    elif manifest_step != step:
        problem = f"step {step}, but its {MANIFEST} says step {manifest_step!r}"
    elif step > steps:
        problem = f"step {step}, beyond the train.steps={steps} of the run that wrote it"
    elif tokens != step * batch * block:
        problem = f"{tokens!r} tokens, but {step} steps of {batch} x {block} tokens read {step * batch * block}"
    else:
        return
    raise CorruptCheckpoint(f"{checkpoint} records {problem}: its state was edited or forged, so it is not resumed")


def _pointer_problem(output_dir: Path, newest: Path | None) -> str | None:
    """Why the ``latest`` pointer is not a plain ``step_N`` name of the newest checkpoint, or None."""
    pointer = output_dir / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return f"{pointer} is missing"
    name = pointer.read_bytes()[:200].decode("utf-8", "replace").strip()
    if not STEP_DIR.fullmatch(name):
        return f"{pointer} names {name!r}, which is not a step_N directory inside {CHECKPOINTS}/ (never followed)"
    if newest is None or name != newest.name:
        return f"{pointer} names {name}, but the newest complete checkpoint is {newest.name if newest else 'none'}"
    return None


def _legacy(checkpoint: Path) -> bool:
    """A checkpoint of ddlm 0.1 (accelerate's ``save_state``, pickled states): recognised, never loaded."""
    return (checkpoint / "trainer_state.json").is_file() and not (checkpoint / MANIFEST).exists()


def choose_resume_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint whose files match its manifest (main process only: it moves every damaged
    or incomplete ``step_N`` directory it passes to ``checkpoints/corrupt_step_N`` and warns, naming each)."""
    root = output_dir / CHECKPOINTS
    candidates = sorted((p for p in root.glob("step_*") if STEP_DIR.fullmatch(p.name) and not _legacy(p)), key=step_of)
    complete = complete_checkpoints(output_dir)
    if problem := _pointer_problem(output_dir, complete[-1] if complete else None):
        log.warning("ddlm: %s; resuming from the newest complete checkpoint instead", problem)
    for checkpoint in reversed(candidates):
        try:
            verify(checkpoint)
            return checkpoint
        except CorruptCheckpoint as error:
            aside = checkpoint.with_name(f"corrupt_{checkpoint.name}")
            os.replace(checkpoint, aside)
            log.warning("ddlm: %s; moved it to %s and fell back to the checkpoint before it", error, aside)
    return None


def prepare_run_directory(output_dir: Path, resume: bool) -> Path | None:
    """Ready ``output_dir`` for a run (main process, lock held); returns the checkpoint to resume from.

    Removes temporary checkpoint directories of writes that never completed. Without ``resume`` a
    directory holding checkpoints is refused, and the files of a run that never wrote one (metrics,
    tokenizer, samples, recipe) are moved to ``abandoned-<time>/``; with ``resume`` the newest
    verified checkpoint is returned (FileNotFoundError if there is none).
    """
    root = output_dir / CHECKPOINTS
    for partial in root.glob(".tmp_step_*"):
        shutil.rmtree(partial)
    existing = sorted(p.name for p in root.glob("*step_*"))
    if not resume:
        if existing:
            raise FileExistsError(f"{output_dir} already holds checkpoints ({', '.join(existing)}); pass --resume to "
                                  "continue, or choose another train.output_dir")
        leftovers = [output_dir / name for name in ("metrics.jsonl", "recipe.json", "resumes.jsonl", "tokenizer", "samples")
                     if (output_dir / name).exists()]
        if leftovers:
            aside = output_dir / f"abandoned-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}"
            aside.mkdir()
            for path in leftovers:
                os.replace(path, aside / path.name)
            log.warning("ddlm: %s held files of a run that wrote no checkpoint; moved them to %s", output_dir, aside)
        return None
    legacy = [p for p in root.glob("step_*") if _legacy(p)]
    checkpoint = choose_resume_checkpoint(output_dir)
    if checkpoint is None:
        hint = (f"; {', '.join(p.name for p in legacy)} use the format of ddlm before 0.2 (pickled through accelerate), "
                "which ddlm no longer loads") if legacy else ""
        raise FileNotFoundError(f"nothing to resume: no complete checkpoint in {root}{hint}")
    return checkpoint


# ----------------------------------------------------------------------------- recipe changes on resume


def _flatten(recipe: dict) -> dict[str, object]:
    return {f"{section}.{key}": value for section, values in recipe.items() for key, value in values.items()}


def recipe_changes(saved: dict, new: dict, allowed: set[str] | frozenset[str]) -> dict[str, list]:
    """``{"section.key": [saved value, new value]}`` of the differences a resume may apply.

    saved, new: recipes as ``Recipe.to_dict()`` gives them; allowed: keys the user named as overrides.
    Raises ValueError listing every difference that cannot continue the same run, and every
    resumable one the user did not name.
    """
    saved, new = _flatten(saved), _flatten(new)
    changed = {key: [saved.get(key), new.get(key)] for key in saved.keys() | new.keys()
               if saved.get(key) != new.get(key) and key not in IGNORED_CHANGES}
    refused = sorted(key for key in changed if key not in RESUMABLE_CHANGES)
    if refused:
        raise ValueError("cannot resume: these recipe values differ from the checkpoint's and would make another run: "
                         + "; ".join(f"{key} {changed[key][0]!r} -> {changed[key][1]!r}" for key in refused)
                         + " (restore them, or start a new run in another train.output_dir)")
    unnamed = sorted(key for key in changed if key not in allowed)
    if unnamed:
        raise ValueError("the recipe differs from the checkpoint's in " + "; ".join(
            f"{key} {changed[key][0]!r} -> {changed[key][1]!r}" for key in unnamed)
            + "; to change these on resume pass them as overrides (e.g. " + " ".join(
            f"{key}={json.dumps(changed[key][1])}" for key in unnamed) + "), or restore the recipe")
    return changed
