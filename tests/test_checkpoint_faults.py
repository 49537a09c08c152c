"""Checkpoint and run-directory faults (part of the fuzz suite): damaged files, a broken or hostile
``latest`` pointer, pickle payloads, recipe changes on resume, a busy directory, kills inside a
checkpoint write and a real short write. Every case ends in a named error with every checkpoint
intact, or in a resume whose weights equal, tensor for tensor, those of an uninterrupted run."""

import json
import logging
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ddlm.checkpoints as checkpoints
import ddlm.core.manifest as manifests
from ddlm.checkpoints import CorruptCheckpoint, RunDirectoryInUse, latest_checkpoint, run_lock
from ddlm.recipes import recipe_from_dict
from ddlm.train import train

from test_train import ENV, tiny_recipe

STEPS = 6
# Subprocesses that must reproduce the in-process reference run bit for bit use this process's thread
# count: a different number of threads sums float32 reductions in another order.
SAME_THREADS = {**ENV, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def recipe_values(tmp_path: Path, text_data: Path, output_dir: Path, **train_overrides) -> dict:
    settings = dict(steps=STEPS, save_every=2, keep_checkpoints=2, eval_every=100, sample_every=100, sample_steps=2)
    values = tiny_recipe(tmp_path, text_data, output_dir=str(output_dir), **{**settings, **train_overrides})
    values["data"]["cache_dir"] = str(tmp_path / "cache")
    return values


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, text_data):
    """An uninterrupted reference run (6 steps, checkpoints at 4 and 6 kept) and its recipe mapping."""
    root = tmp_path_factory.mktemp("faults")
    values = recipe_values(root, text_data, root / "reference")
    train(recipe_from_dict(values), progress=False)
    return root, values


def copy_run(workspace, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the reference run directory and the recipe mapping that points at it."""
    root, values = workspace
    run = tmp_path / "run"
    shutil.copytree(root / "reference", run)
    values = json.loads(json.dumps(values))
    values["train"]["output_dir"] = str(run)
    return run, values


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def assert_same_tensors(a: Path, b: Path) -> None:
    first, second = tensors(a), tensors(b)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def assert_resumed_like_reference(run: Path, workspace) -> None:
    """The resumed run's newest checkpoint (model, optimizer, EMA, ...) and export equal the reference's,
    and its metrics.jsonl holds the reference's training records, one per step."""
    reference = workspace[0] / "reference"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert [r["train/loss"] for r in steps] == [r["train/loss"] for r in expected if "train/loss" in r]
    name = f"step_{STEPS:08d}"
    assert_same_tensors(run / "checkpoints" / name / "state.safetensors", reference / "checkpoints" / name / "state.safetensors")
    assert_same_tensors(run / "final" / "model.safetensors", reference / "final" / "model.safetensors")


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file under checkpoints/, by relative path (to show nothing was changed or lost)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "checkpoints").rglob("*")) if p.is_file()}


class Payload:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def payload_bytes(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


# ----------------------------------------------------------------------------- damaged newest checkpoint

def _truncate_half(p): p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
def _empty(p): p.write_bytes(b"")
def _flip_middle(p): data = bytearray(p.read_bytes()); data[len(data) // 2] ^= 0xFF; p.write_bytes(bytes(data))
def _flip_last(p): data = bytearray(p.read_bytes()); data[-1] ^= 0x01; p.write_bytes(bytes(data))
def _random_same_size(p): p.write_bytes(os.urandom(p.stat().st_size))
def _append_byte(p): p.write_bytes(p.read_bytes() + b"\0")
def _delete(p): p.unlink()


DAMAGES = {
    "state.safetensors truncated": ("state.safetensors", _truncate_half),
    "state.safetensors empty": ("state.safetensors", _empty),
    "state.safetensors byte flipped": ("state.safetensors", _flip_middle),
    "state.safetensors last bit flipped": ("state.safetensors", _flip_last),
    "state.safetensors random bytes": ("state.safetensors", _random_same_size),
    "state.safetensors one byte longer": ("state.safetensors", _append_byte),
    "state.safetensors missing": ("state.safetensors", _delete),
    "state.json truncated": ("state.json", _truncate_half),
    "state.json byte flipped": ("state.json", _flip_middle),
    "state.json empty": ("state.json", _empty),
    "state.json missing": ("state.json", _delete),
    "manifest invalid JSON": ("manifest.json", _truncate_half),
    "manifest empty": ("manifest.json", _empty),
    "manifest random bytes": ("manifest.json", _random_same_size),
    "manifest a list": ("manifest.json", lambda p: p.write_text("[]")),
    "manifest another format": ("manifest.json", lambda p: p.write_text(p.read_text().replace('"format": 1', '"format": 99'))),
    "manifest names a file outside": ("manifest.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "files": {"../../../etc/passwd": {"bytes": 1, "sha256": "0"}}}))),
    "manifest with a wrong hash": ("manifest.json", lambda p: p.write_text(p.read_text().replace('"sha256": "', '"sha256": "0', 1))),
    "manifest a directory": ("manifest.json", lambda p: (p.unlink(), p.mkdir())),
    "manifest missing": ("manifest.json", _delete),
    "state.safetensors a pickle payload": ("state.safetensors", lambda p: p.write_bytes(payload_bytes(p.parents[3] / "payload-ran"))),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_newest_checkpoint_is_named_moved_aside_and_the_previous_one_resumes_exactly(workspace, tmp_path, caplog, damage):
    run, values = copy_run(workspace, tmp_path)
    newest = run / "checkpoints" / f"step_{STEPS:08d}"
    name, corrupt = DAMAGES[damage]
    corrupt(newest / name)
    with caplog.at_level(logging.WARNING, logger="ddlm.checkpoints"):
        train(recipe_from_dict(values), resume=True, progress=False)
    assert not (tmp_path / "payload-ran").exists()
    assert f"step_{STEPS:08d}" in caplog.text and "moved it to" in caplog.text
    assert (run / "checkpoints" / f"corrupt_step_{STEPS:08d}").is_dir()  # kept for inspection, never deleted
    assert json.loads((run / "resumes.jsonl").read_text())["checkpoint"] == "step_00000004"
    assert_resumed_like_reference(run, workspace)


def test_a_forged_manifest_over_a_hostile_state_file_is_named_and_nothing_changes(workspace, tmp_path):
    run, values = copy_run(workspace, tmp_path)
    newest = run / "checkpoints" / f"step_{STEPS:08d}"
    (newest / "state.json").write_text(json.dumps({"format": 1, "step": STEPS, "tokens": 1, "recipe": {}, "state": {"evil": 1}}))
    manifest = json.loads((newest / "manifest.json").read_text())
    manifest["files"]["state.json"] = {"bytes": (newest / "state.json").stat().st_size, "sha256": manifests.sha256(newest / "state.json")}
    (newest / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(run)
    with pytest.raises(CorruptCheckpoint, match=r"step_00000006 cannot be read: state.json holds an object that is not an encoded value"):
        train(recipe_from_dict(values), resume=True, progress=False)
    assert snapshot(run) == before


def forge(checkpoint: Path, manifest_step=None, rename_to: str | None = None, **meta) -> Path:
    """Edit state.json's ``meta`` values (and the manifest's step) and rehash, so the manifest matches the edit."""
    if rename_to is not None:
        checkpoint = checkpoint.rename(checkpoint.with_name(rename_to))
    state = json.loads((checkpoint / "state.json").read_text())
    (checkpoint / "state.json").write_text(json.dumps({**state, **meta}))
    listed = json.loads((checkpoint / "manifest.json").read_text())
    listed["files"]["state.json"] = manifests.describe(checkpoint, ["state.json"])["state.json"]
    if manifest_step is not None:
        listed["step"] = manifest_step
    (checkpoint / "manifest.json").write_text(json.dumps(listed))
    return checkpoint


FORGED_STEPS = {
    "a step that disagrees with the directory": (dict(step=4, manifest_step=4), "records step 4, but its directory is named step_00000006"),
    "a step that disagrees with the manifest": (dict(manifest_step=5), "records step 6, but its manifest.json says step 5"),
    "a step beyond the run's train.steps": (dict(step=9, manifest_step=9, tokens=9 * 8 * 32, rename_to="step_00000009"),
                                            "records step 9, beyond the train.steps=6 of the run that wrote it"),
    "a step that is not an int": (dict(step=6.0), "records step 6.0, train.steps 6, global_batch_size 8 and block_size 32 (each must be an int >= 1)"),
    "a token count that disagrees with the step": (dict(tokens=6 * 8 * 32 + 1), "records 1537 tokens, but 6 steps of 8 x 32 tokens read 1536"),
}


@pytest.mark.parametrize("case", sorted(FORGED_STEPS))
def test_a_checkpoint_whose_recorded_step_was_edited_is_refused_even_with_matching_hashes(workspace, tmp_path, case):
    run, values = copy_run(workspace, tmp_path)
    changes, message = FORGED_STEPS[case]
    forged = forge(run / "checkpoints" / f"step_{STEPS:08d}", **changes)
    checkpoints.verify(forged)  # every hash matches
    before = snapshot(run)
    with pytest.raises(CorruptCheckpoint, match=re.escape(f"{forged} {message}: its state was edited or forged")):
        train(recipe_from_dict(values), resume=True, progress=False)
    assert snapshot(run) == before and not (run / "resumes.jsonl").exists()


def test_a_checkpoint_beyond_the_resumed_runs_steps_is_refused(workspace, tmp_path):
    run, values = copy_run(workspace, tmp_path)
    values["train"]["steps"] = 4
    before = snapshot(run)
    message = ("cannot resume: step_00000006 is at step 6, beyond train.steps=4; pass train.steps=N with N >= 6 to train on, "
               "or start a new run in another train.output_dir")
    with pytest.raises(ValueError, match=re.escape(message)):
        train(recipe_from_dict(values), resume=True, progress=False, allow_changes={"train.steps"})
    assert snapshot(run) == before and not (run / "resumes.jsonl").exists()


def test_every_checkpoint_damaged_means_nothing_to_resume(workspace, tmp_path):
    run, values = copy_run(workspace, tmp_path)
    for checkpoint in (run / "checkpoints").glob("step_*"):
        _flip_middle(checkpoint / "state.safetensors")
    with pytest.raises(FileNotFoundError, match="nothing to resume: no complete checkpoint"):
        train(recipe_from_dict(values), resume=True, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["corrupt_step_00000004", "corrupt_step_00000006"]


# ----------------------------------------------------------------------------- the exported model's manifest


EXPORT_DAMAGES = {
    "a weight's bit flipped": ("model.safetensors", _flip_last),
    "weights truncated": ("model.safetensors", _truncate_half),
    "weights missing": ("model.safetensors", _delete),
    "config.json edited": ("config.json", lambda p: p.write_text(p.read_text().replace("\n", "\n "))),
    "tokenizer.json byte flipped": ("tokenizer.json", _flip_middle),
}


@pytest.mark.parametrize("damage", sorted(EXPORT_DAMAGES))
def test_a_damaged_export_is_named_by_its_manifest_instead_of_loaded(workspace, tmp_path, capsys, damage):
    from ddlm.cli import main
    from ddlm.pipeline import DiffusionPipeline

    run, _ = copy_run(workspace, tmp_path)
    final = run / "final"
    listed = json.loads((final / "manifest.json").read_text())
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(listed["files"])
    assert set(listed["files"]) == {p.name for p in final.iterdir()} - {"manifest.json"}
    name, corrupt = EXPORT_DAMAGES[damage]
    corrupt(final / name)
    message = f"{final / name} " + ("is missing (listed in" if damage == "weights missing" else "does not match the manifest")
    with pytest.raises(ValueError, match=re.escape(message)):
        DiffusionPipeline.from_pretrained(final)
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(final), "--length", "4", "--steps", "1", "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0], lines


def test_model_directories_without_a_manifest_still_load_and_a_bad_manifest_is_named(workspace, tmp_path):
    from ddlm.model import DDLMForDiffusion
    from ddlm.pipeline import DiffusionPipeline

    run, _ = copy_run(workspace, tmp_path)
    final = run / "final"
    DiffusionPipeline.from_pretrained(final)  # verified
    model = DDLMForDiffusion.from_pretrained(final)
    model.save_pretrained(final)  # a plain save over the export: the old manifest no longer describes it, so it goes
    assert not (final / "manifest.json").exists()
    DiffusionPipeline.from_pretrained(final)
    for text in ["{not json", json.dumps({"format": 1, "files": {"../../state.json": {"bytes": 1, "sha256": "0"}}}), "[]"]:
        (final / "manifest.json").write_text(text)
        with pytest.raises(ValueError, match=re.escape(f"{final / 'manifest.json'} is not a ddlm manifest")):
            DDLMForDiffusion.from_pretrained(final)


# ----------------------------------------------------------------------------- the latest pointer


POINTERS = {
    "missing": None,
    "empty": b"",
    "parent directory": b"../..",
    "relative escape": b"../../../tmp/evil",
    "absolute path": b"/etc",
    "an older checkpoint": b"step_00000004",
    "a checkpoint that does not exist": b"step_99999999",
    "not zero-padded": b"step_6",
    "binary garbage": bytes(range(256)),
    "a name with a newline": b"step_00000006\n../evil",
    "a directory": "dir",
}


@pytest.mark.parametrize("pointer", sorted(POINTERS))
def test_a_broken_or_hostile_latest_pointer_is_never_followed(workspace, tmp_path, caplog, pointer):
    run, values = copy_run(workspace, tmp_path)
    path = run / "checkpoints" / "latest"
    path.unlink()
    content = POINTERS[pointer]
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    before = snapshot(run)
    with caplog.at_level(logging.WARNING, logger="ddlm.checkpoints"):
        train(recipe_from_dict(values), resume=True, progress=False)  # nothing left to train: resumes at step 6
    assert "latest" in caplog.text and "newest complete checkpoint" in caplog.text
    assert json.loads((run / "resumes.jsonl").read_text())["checkpoint"] == f"step_{STEPS:08d}"
    after = snapshot(run)
    assert {k: v for k, v in after.items() if "step_" in k} == {k: v for k, v in before.items() if "step_" in k}


def test_a_new_run_refuses_a_directory_whose_pointer_was_deleted(workspace, tmp_path):
    run, values = copy_run(workspace, tmp_path)
    (run / "checkpoints" / "latest").unlink()
    before = snapshot(run)
    with pytest.raises(FileExistsError, match=r"already holds checkpoints \(step_00000004, step_00000006\); pass --resume"):
        train(recipe_from_dict(values), progress=False)
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- pickles never run


PICKLE_FILES = ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin", "pytorch_model.bin",
                "scaler.pt"]


@pytest.mark.parametrize("name", PICKLE_FILES)
def test_pickle_payloads_beside_a_checkpoint_never_run(workspace, tmp_path, name):
    run, values = copy_run(workspace, tmp_path)
    marker = tmp_path / "payload-ran"
    for checkpoint in (run / "checkpoints").glob("step_*"):
        (checkpoint / name).write_bytes(payload_bytes(marker))
    train(recipe_from_dict(values), resume=True, progress=False)
    assert not marker.exists()


@pytest.mark.parametrize("pointer_target", ["inside", "outside"])
def test_an_accelerate_style_pickled_checkpoint_is_refused_without_unpickling(tmp_path, text_data, pointer_target):
    """The format of ddlm 0.1 (accelerate's save_state: pickled RNG and custom states) is never loaded."""
    marker = tmp_path / "payload-ran"
    run = tmp_path / "run"
    legacy = (run / "checkpoints" if pointer_target == "inside" else tmp_path / "elsewhere") / "step_00000004"
    legacy.mkdir(parents=True)
    (legacy / "trainer_state.json").write_text(json.dumps({"step": 4, "tokens": 1}))
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):
        (legacy / name).write_bytes(payload_bytes(marker))
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints" / "latest").write_text("step_00000004" if pointer_target == "inside" else str(legacy))
    values = recipe_values(tmp_path, text_data, run)
    message = "format of ddlm before 0.2" if pointer_target == "inside" else "nothing to resume"
    with pytest.raises(FileNotFoundError, match=message):
        train(recipe_from_dict(values), resume=True, progress=False)
    assert not marker.exists()


# ----------------------------------------------------------------------------- recipe changes on resume


REFUSED = {
    "model.hidden_size": ("model", "hidden_size", 96),
    "model.num_hidden_layers": ("model", "num_hidden_layers", 3),
    "model.num_attention_heads": ("model", "num_attention_heads", 2),
    "model.dropout": ("model", "dropout", 0.0),
    "model.process": ("model", "process", "uniform"),
    "model.schedule": ("model", "schedule", "geometric"),
    "model.preset": ("model", "preset", "small"),
    "tokenizer.train_vocab_size": ("tokenizer", "train_vocab_size", 400),
    "data.block_size": ("data", "block_size", 16),
    "data.validation_fraction": ("data", "validation_fraction", 0.1),
    "data.source": ("data", "source", "python-docs"),
    "train.seed": ("train", "seed", 1),
    "train.global_batch_size": ("train", "global_batch_size", 16),
    "train.objective": ("train", "objective", "ar"),
    "train.t_min": ("train", "t_min", 0.01),
    "train.betas": ("train", "betas", [0.8, 0.99]),
    "train.ema": ("train", "ema", 0.9),
}


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_a_resume_refuses_recipe_changes_that_make_another_run(workspace, tmp_path, key):
    run, values = copy_run(workspace, tmp_path)
    section, name, value = REFUSED[key]
    values[section][name] = value
    before = snapshot(run)
    with pytest.raises(ValueError, match=rf"cannot resume: .*{key.split('.')[0] if key == 'model.preset' else key}"):
        train(recipe_from_dict(values), resume=True, progress=False, allow_changes={key})
    assert snapshot(run) == before
    assert not (run / "resumes.jsonl").exists()


def test_recipe_keys_a_checkpoint_predates_count_as_their_defaults(tmp_path, text_data):
    """A checkpoint written before a section or key existed (finetune, finetune.dtype, train.loss_impl) had its default:
    resuming under today's defaults changes nothing, while a value other than the default is still a change."""
    from ddlm.train import model_fields, resume_changes

    values = recipe_values(tmp_path, text_data, tmp_path / "run")
    recipe = recipe_from_dict(values)
    config = recipe.model.config(300, recipe.data.block_size, recipe.train.objective)
    old = recipe.to_dict()
    del old["finetune"], old["train"]["loss_impl"], old["train"]["compile"], old["data"]["drop_long"]
    meta = {"recipe": old, "model": model_fields(config)}
    assert resume_changes(recipe, config, meta, set()) == {}
    values["train"]["compile"] = True
    assert resume_changes(recipe_from_dict(values), config, meta, {"train.compile"}) == {"train.compile": [False, True]}


RESUMABLE = {"train.steps": 8, "train.lr": 1e-3, "train.warmup_steps": 1, "train.decay": "linear", "train.eval_every": 7,
             "train.clip_grad_norm": 0.5, "train.keep_checkpoints": 3, "train.sample_steps": 3, "train.weight_decay": 0.1}


@pytest.mark.parametrize("key", sorted(RESUMABLE))
def test_a_resumable_change_must_be_named(workspace, tmp_path, key):
    run, values = copy_run(workspace, tmp_path)
    section, name = key.split(".")
    values[section][name] = RESUMABLE[key]
    with pytest.raises(ValueError, match=rf"differs from the checkpoint's in {key} .*pass them as overrides \(e\.g\. {key}="):
        train(recipe_from_dict(values), resume=True, progress=False)
    assert not (run / "resumes.jsonl").exists()


def test_named_changes_apply_from_the_resume_step_and_are_recorded(workspace, tmp_path):
    run, values = copy_run(workspace, tmp_path)
    values["train"].update(steps=8, lr=5e-3)
    recipe = recipe_from_dict(values)
    train(recipe, resume=True, progress=False, allow_changes={"train.steps", "train.lr"})
    record = json.loads((run / "resumes.jsonl").read_text())
    assert record == {"step": STEPS, "checkpoint": f"step_{STEPS:08d}", "changes": {"train.lr": [2e-3, 5e-3], "train.steps": [STEPS, 8]}}
    assert json.loads((run / "recipe.json").read_text())["train"]["lr"] == 5e-3
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "lr" in r}
    from ddlm.training.state import lr_lambda

    factor = lr_lambda(recipe.train)
    assert lrs[7] == pytest.approx(5e-3 * factor(7)) and lrs[8] == pytest.approx(5e-3 * factor(8))
    assert latest_checkpoint(run).name == "step_00000008"


# ----------------------------------------------------------------------------- one run per directory


def test_a_second_process_is_refused_while_a_run_holds_the_directory(workspace, tmp_path):
    run, values = copy_run(workspace, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from ddlm.checkpoints import run_lock
        with run_lock(Path({str(run)!r})):
            print("locked", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {str(p) for p in run.rglob("*")}
        with pytest.raises(RunDirectoryInUse, match=rf"in use by another run \(pid {holder.pid} on "):
            train(recipe_from_dict(values), resume=True, progress=False)
        with pytest.raises(RunDirectoryInUse):
            train(recipe_from_dict(values), progress=False)
        assert {str(p) for p in run.rglob("*")} == before
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder leaves no stale lock
        holder.wait()
    train(recipe_from_dict(values), resume=True, progress=False)


def test_a_run_in_the_same_process_is_refused_too(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RunDirectoryInUse, match=f"pid {os.getpid()}"):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released
        pass


def test_a_fresh_run_moves_the_files_of_a_run_that_wrote_no_checkpoint_aside(tmp_path, text_data):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "train/loss": 1.0}\n')
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".tmp_step_00000002").mkdir()  # a write that never completed
    values = recipe_values(tmp_path, text_data, run, steps=2)
    train(recipe_from_dict(values), progress=False)
    aside = list(run.glob("abandoned-*"))
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_text() == '{"step": 1, "train/loss": 1.0}\n'
    assert [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()][:3] == [0, 1, 2]
    assert not list((run / "checkpoints").glob(".tmp_*"))


# ----------------------------------------------------------------------------- kills inside a checkpoint write


class Killed(BaseException):
    """Stands in for SIGKILL in-process: not an Exception, so nothing handles it; the write path has no
    clean-up that would run on it (as on a kill), so the disk is left exactly as a kill leaves it."""


# The durable points of the second checkpoint's write (step 4; keep=2 so step 6 also prunes step 2):
# state.safetensors, state.json, manifest.json, the temporary directory, the rename, the pointer, its rename.
KILL_POINTS = {f"write point {i}": ("durable", 10 + i) for i in range(7)} | {"while pruning": ("rmtree", 1)}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_a_kill_inside_a_checkpoint_write_resumes_exactly(workspace, tmp_path, text_data, monkeypatch, point):
    kind, at = KILL_POINTS[point]
    run = tmp_path / "run"
    values = recipe_values(workspace[0], text_data, run)
    calls = {"durable": 0, "rmtree": 0}
    durable, rmtree = manifests.durable, checkpoints.shutil.rmtree

    def counted_durable(path):
        calls["durable"] += 1
        if kind == "durable" and calls["durable"] == at:
            raise Killed
        durable(path)

    def counted_rmtree(path, *args, **kwargs):
        if "step_" in str(path) and ".tmp" not in str(path):
            calls["rmtree"] += 1
            if kind == "rmtree" and calls["rmtree"] == at:
                (Path(path) / "state.safetensors").unlink()  # half-way through removing the oldest checkpoint
                raise Killed
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(manifests, "durable", counted_durable)
    monkeypatch.setattr(checkpoints.shutil, "rmtree", counted_rmtree)
    with pytest.raises(Killed):
        train(recipe_from_dict(values), progress=False)
    monkeypatch.undo()
    train(recipe_from_dict(values), resume=True, progress=False)
    assert_resumed_like_reference(run, workspace)


def test_a_real_sigkill_inside_a_checkpoint_write_resumes_exactly(workspace, tmp_path, text_data):
    run = tmp_path / "run"
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(recipe_values(workspace[0], text_data, run)))
    script = textwrap.dedent(f"""
        import os, signal
        import ddlm.core.manifest as manifests
        from ddlm.cli import main
        real, calls = manifests.durable, [0]
        def durable(path):
            calls[0] += 1
            if calls[0] == 13:  # step 4's temporary directory is complete, not yet renamed
                os.kill(os.getpid(), signal.SIGKILL)
            real(path)
        manifests.durable = durable
        main(["train", {str(recipe)!r}, "--quiet"])
        """)
    killed = subprocess.run([sys.executable, "-c", script], env=SAME_THREADS, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (run / "checkpoints" / ".tmp_step_00000004" / "manifest.json").is_file()
    assert latest_checkpoint(run).name == "step_00000002"
    resumed = subprocess.run([sys.executable, "-m", "ddlm", "train", str(recipe), "--resume", "--quiet"], env=SAME_THREADS,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_resumed_like_reference(run, workspace)


def test_a_real_short_write_leaves_the_previous_checkpoint_resumable(workspace, tmp_path, text_data, monkeypatch):
    """The kernel refuses writes past a file-size limit (RLIMIT_FSIZE) during the second checkpoint."""
    run = tmp_path / "run"
    values = recipe_values(workspace[0], text_data, run)
    real_save = checkpoints.save_file
    calls = {"n": 0}

    def limited_save(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] != 2:
            return real_save(tensors, path, *args, **kwargs)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
        try:
            return real_save(tensors, path, *args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, previous)

    monkeypatch.setattr(checkpoints, "save_file", limited_save)
    with pytest.raises(OSError, match=r"could not write .*\.tmp_step_00000004/state\.safetensors.*File too large"):
        train(recipe_from_dict(values), progress=False)
    assert latest_checkpoint(run).name == "step_00000002"
    assert (run / "checkpoints" / ".tmp_step_00000004").is_dir() and not (run / "checkpoints" / "step_00000004").exists()
    checkpoints.verify(run / "checkpoints" / "step_00000002")
    monkeypatch.undo()
    train(recipe_from_dict(values), resume=True, progress=False)
    assert_resumed_like_reference(run, workspace)


def test_the_cli_reports_a_busy_directory_and_a_refused_change_in_one_line(workspace, tmp_path):
    run, values = copy_run(workspace, tmp_path)
    values["train"]["seed"] = 3
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(values))
    result = subprocess.run([sys.executable, "-m", "ddlm", "train", str(recipe), "--resume", "--quiet"], env=ENV,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddlm train: error: cannot resume: ") and "train.seed 0 -> 3" in lines[0]


def test_the_cli_reports_a_short_write_in_one_line_and_the_run_resumes(workspace, tmp_path, text_data):
    """A child process whose file-size limit is lowered during its second checkpoint write: exit 2, one
    line naming the file; then ``--resume`` completes exactly."""
    run = tmp_path / "run"
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(recipe_values(workspace[0], text_data, run)))
    script = textwrap.dedent(f"""
        import resource, signal
        import ddlm.checkpoints as checkpoints
        from ddlm.cli import main
        real, calls = checkpoints.save_file, [0]
        def save_file(tensors, path, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 2:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
            return real(tensors, path, *args, **kwargs)
        checkpoints.save_file = save_file
        main(["train", {str(recipe)!r}, "--quiet"])
        """)
    result = subprocess.run([sys.executable, "-c", script], env=SAME_THREADS, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddlm train: error: could not write "), lines
    assert "File too large" in result.stderr
    assert latest_checkpoint(run).name == "step_00000002"
    resumed = subprocess.run([sys.executable, "-m", "ddlm", "train", str(recipe), "--resume", "--quiet"], env=SAME_THREADS,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_resumed_like_reference(run, workspace)
