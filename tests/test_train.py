"""Training: recipes, schedule, EMA, exact resume after a kill, NaN stop, interrupted checkpoint writes, two processes."""

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ddlm.recipes import RECIPES_DIR, TrainConfig, load_recipe, recipe_from_dict
from ddlm.train import latest_checkpoint, train
from ddlm.training.state import EMA, lr_lambda

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def tiny_recipe(tmp_path: Path, text_data: Path, **train_overrides) -> dict:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text((text_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    train_section = dict(steps=12, global_batch_size=8, micro_batch_size=4, lr=2e-3, warmup_steps=3, decay="cosine",
                         ema=0.99, log_every=2, eval_every=6, eval_blocks=4, eval_num_t=4, sample_every=12,
                         num_samples=1, sample_steps=4, save_every=3, trackers=["none"], output_dir=str(tmp_path / "run"))
    train_section.update(train_overrides)
    return {"model": {"preset": "tiny", "dropout": 0.1},
            "tokenizer": {"train_vocab_size": 300},
            "data": {"source": str(corpus), "block_size": 32, "validation_fraction": 0.05, "cache_dir": str(tmp_path / "cache")},
            "train": train_section}


def write(tmp_path: Path, values: dict, name="recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def losses(run: Path) -> dict[int, float]:
    """Step -> training loss from metrics.jsonl (a later line for the same step wins)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def test_shipped_recipes_validate():
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    assert {"quickstart", "sedd-small-owt", "sedd-medium-owt", "sedd-small-owt-uniform", "sedd-medium-owt-uniform", "ar-small-owt"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.train.global_batch_size % recipe.train.micro_batch_size == 0
    small = load_recipe("sedd-small-owt")
    assert (small.model.preset, small.tokenizer.name, small.data.block_size, small.train.global_batch_size, small.train.lr) == ("small", "gpt2", 1024, 512, 3e-4)
    assert load_recipe("sedd-small-owt-uniform").model.overrides["schedule"] == "geometric"
    assert load_recipe("ar-small-owt").train.objective == "ar"


def test_unknown_keys_and_bad_values_are_errors(tmp_path, text_data):
    values = tiny_recipe(tmp_path, text_data)
    for section, key in [("train", "learning_rate"), ("data", "path"), ("model", "width"), ("tokenizer", "vocab")]:
        bad = json.loads(json.dumps(values))
        bad[section][key] = 1
        with pytest.raises(ValueError, match=f"unknown {section} keys \\['{key}'\\]"):
            recipe_from_dict(bad)
    with pytest.raises(ValueError, match="unknown recipe sections"):
        recipe_from_dict({**values, "optim": {}})
    with pytest.raises(ValueError, match="decay='sometimes'"):
        TrainConfig(decay="sometimes")
    with pytest.raises(ValueError, match="exactly one of name"):
        recipe_from_dict({**values, "tokenizer": {"name": "gpt2", "train_vocab_size": 10}})
    with pytest.raises(ValueError, match="not divisible by micro_batch_size 4 x 3 processes"):
        TrainConfig(global_batch_size=8, micro_batch_size=4).accumulation_steps(3)
    assert TrainConfig(global_batch_size=16, micro_batch_size=4).accumulation_steps(2) == 2
    path = write(tmp_path, values)
    assert load_recipe(str(path), ["train.lr=1e-4", "model.hidden_size=96"]).train.lr == 1e-4
    with pytest.raises(ValueError, match="section.key=value"):
        load_recipe(str(path), ["lr=1e-4"])
    with pytest.raises(FileNotFoundError, match="no recipe 'nonexistent'"):
        load_recipe("nonexistent")


DUPLICATES = {
    "a nested key": ("train:\n  lr: 1.0e-3\n  steps: 3\n  lr: 2.0e-3\n", "duplicate key 'lr' (first given on line 2) (line 4, column 3)"),
    "a section": ("train: {steps: 3}\ndata: {block_size: 32}\ntrain: {steps: 4}\n", "duplicate key 'train' (first given on line 1) (line 3, column 1)"),
    "a key in a list entry": ("data:\n  sources:\n    - {source: a.txt, source: b.txt}\n", "duplicate key 'source' (first given on line 3) (line 3"),
}


@pytest.mark.parametrize("case", sorted(DUPLICATES))
def test_a_recipe_with_a_duplicate_key_is_refused_naming_the_key_and_line(tmp_path, capsys, case):
    from ddlm.cli import main

    text, message = DUPLICATES[case]
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_recipe(str(path))
    with pytest.raises(ValueError, match="duplicate key 'lr'"):
        load_recipe(str(write(tmp_path, {}, "ok.yaml")), ["train.betas={lr: 1, lr: 2}"])
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), f"train.output_dir={tmp_path / 'run'}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.yaml", "recipe.yaml"]


def test_yaml_merge_keys_may_still_override_what_they_merge(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("tokenizer: {train_vocab_size: 300}\ntrain:\n  <<: &base {steps: 3, lr: 1.0e-3}\n  lr: 2.0e-3\n")
    train_config = load_recipe(str(path)).train
    assert (train_config.steps, train_config.lr) == (3, 2e-3)


MISSING = {
    "data.source, a file": ({"source": "no/such/file.txt"}, None, "data.source: no .txt/.json/.jsonl/.parquet file found at 'no/such/file.txt'"),
    "data.source, a directory": ({"source": "./no-such-directory"}, None, "data.source: no .txt"),
    "data.source, a glob": ({"source": "GLOB/*.txt"}, None, "data.source: no .txt/.json/.jsonl/.parquet file found at"),
    "data.sources[1]": ({"sources": [{"source": "CORPUS", "label": 0}, {"source": "no/such/b.txt", "label": 1}]}, None,
                        "data.sources[1].source: no .txt/.json/.jsonl/.parquet file found at 'no/such/b.txt'"),
    "data.validation_split": ({"validation_split": "no/such/valid.txt"}, None, "data.validation_split: no .txt"),
    "tokenizer.name": ({}, "./no/such/tokenizer", "tokenizer ./no/such/tokenizer does not exist"),
}


@pytest.mark.parametrize("case", sorted(MISSING))
def test_a_recipe_naming_missing_local_files_is_refused_before_anything_is_written(tmp_path, text_data, capsys, case):
    from ddlm.cli import main

    data, tokenizer, message = MISSING[case]
    values = tiny_recipe(tmp_path, text_data)
    corpus = values["data"]["source"]
    data = json.loads(json.dumps(data).replace("GLOB", str(tmp_path / "empty")).replace("CORPUS", corpus))
    (tmp_path / "empty").mkdir()
    values["data"].update(data)
    if "sources" in data:
        del values["data"]["source"]
        values["model"]["num_classes"] = 2
    if tokenizer:
        values["tokenizer"] = {"name": tokenizer}
    path = write(tmp_path, values)
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        recipe_from_dict(values)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not Path(values["train"]["output_dir"]).exists()


def test_hub_datasets_and_tokenizers_are_not_looked_up_while_validating(tmp_path, text_data):
    values = tiny_recipe(tmp_path, text_data)
    values["data"]["source"] = "Skylion007/openwebtext"
    values["tokenizer"] = {"name": "openai-community/gpt2"}
    recipe = recipe_from_dict(values)
    assert (recipe.data.source, recipe.tokenizer.name) == ("Skylion007/openwebtext", "openai-community/gpt2")


def test_learning_rate_warms_up_then_decays():
    config = TrainConfig(steps=110, warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    factor = lr_lambda(config)
    assert [factor(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert factor(10) == pytest.approx(1.0) and factor(60) == pytest.approx(0.55) and factor(110) == pytest.approx(0.1)
    linear = lr_lambda(TrainConfig(steps=110, warmup_steps=10, decay="linear", min_lr_ratio=0.0))
    assert linear(60) == pytest.approx(0.5)


def test_ema_follows_the_warmed_up_decay_and_applies_temporarily():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.9)
    expected = torch.zeros(3)
    for n in range(1, 6):
        with torch.no_grad():
            p.add_(1.0)
        ema.update()
        decay = min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * p.detach()
    assert torch.allclose(ema.shadow[0], expected)
    with ema.applied():
        assert torch.allclose(p, expected)
    assert torch.equal(p.detach(), torch.full((3,), 5.0))


def test_bf16_mixed_precision_trains_near_float32_and_resumes_exactly(tmp_path, text_data):
    """train.mixed_precision: bf16 (autocast, as on a GPU) on the CPU with the default loss path: the losses stay within
    bf16 rounding of the float32 run's without equalling them, a resumed run repeats an uninterrupted one float for
    float, and one process trains float32 then bf16 (accelerate's settings are released after each run)."""
    settings = dict(steps=6, save_every=3, eval_every=6, sample_every=6)
    train(recipe_from_dict(tiny_recipe(tmp_path, text_data, output_dir=str(tmp_path / "fp32"), **settings)), progress=False)
    bf16 = dict(settings, mixed_precision="bf16")
    train(recipe_from_dict(tiny_recipe(tmp_path, text_data, output_dir=str(tmp_path / "bf16"), **bf16)), progress=False)
    train(recipe_from_dict(tiny_recipe(tmp_path, text_data, output_dir=str(tmp_path / "split"), **{**bf16, "steps": 3})),
          progress=False)
    train(recipe_from_dict(tiny_recipe(tmp_path, text_data, output_dir=str(tmp_path / "split"), **bf16)), resume=True,
          progress=False, allow_changes={"train.steps"})
    reference, mixed = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert losses(tmp_path / "split") == mixed
    assert sorted(mixed) == sorted(reference) == list(range(1, 7))
    assert all(abs(mixed[k] - reference[k]) < 1e-2 * reference[k] for k in mixed) and mixed != reference


def test_a_killed_run_resumes_with_exactly_the_same_losses(tmp_path, text_data):
    steps = 40
    straight = write(tmp_path, tiny_recipe(tmp_path, text_data, steps=steps, save_every=4, eval_every=100,
                                           output_dir=str(tmp_path / "straight"), trackers=["tensorboard"]), "straight.yaml")
    killed = write(tmp_path, tiny_recipe(tmp_path, text_data, steps=steps, save_every=4, eval_every=100,
                                         output_dir=str(tmp_path / "killed")), "killed.yaml")
    command = [sys.executable, "-m", "ddlm", "train", "--quiet"]
    subprocess.run(command + [str(straight)], env=ENV, check=True, capture_output=True)
    process = subprocess.Popen(command + [str(killed)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not (pointer.exists() and int(pointer.read_text().split("_")[1]) >= 8):
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = losses(tmp_path / "killed")
    assert max(before) < steps, "the kill must land mid-way"
    with pytest.raises(subprocess.CalledProcessError):  # refuses to overwrite without --resume
        subprocess.run(command + [str(killed)], env=ENV, check=True, capture_output=True)
    subprocess.run(command + [str(killed), "--resume"], env=ENV, check=True, capture_output=True)
    resumed, reference = losses(tmp_path / "killed"), losses(tmp_path / "straight")
    assert sorted(resumed) == list(range(1, steps + 1))
    assert resumed == reference  # exactly, float for float
    assert (tmp_path / "straight" / "final" / "model.safetensors").is_file()
    assert any((tmp_path / "straight").rglob("events.out.tfevents*"))  # TensorBoard tracker


@pytest.mark.parametrize("failure", ["nan_loss", "nan_scores"])
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, text_data, monkeypatch, failure):
    import ddlm.train as training
    from ddlm.score import NonFiniteScoreError

    real = training.objective_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2 * 5:  # two micro-batches a step: step 6 fails
            return real(*args, **kwargs)
        if failure == "nan_scores":
            raise NonFiniteScoreError("score_fn returned NaN or +inf log-scores")
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(training, "objective_loss", poisoned)
    recipe = recipe_from_dict(tiny_recipe(tmp_path, text_data, save_every=2))
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 6.*step_00000004"):
        train(recipe, progress=False)
    assert latest_checkpoint(tmp_path / "run").name == "step_00000004"


def test_an_interrupted_checkpoint_write_leaves_the_previous_one_valid(tmp_path, text_data, monkeypatch, capsys):
    import ddlm.checkpoints as checkpoints

    real_save = checkpoints.save_file
    calls = {"n": 0}

    def failing_save(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save_file", failing_save)
    recipe = recipe_from_dict(tiny_recipe(tmp_path, text_data))
    with pytest.raises(OSError, match="No space left"):
        train(recipe, progress=False)
    assert latest_checkpoint(tmp_path / "run").name == "step_00000003"
    assert (tmp_path / "run" / "checkpoints" / ".tmp_step_00000006").is_dir()  # the partial write, never pointed to
    monkeypatch.undo()
    final = train(recipe, resume=True, progress=True)
    assert sorted(losses(tmp_path / "run")) == list(range(1, 13))
    report = capsys.readouterr().out  # the end-of-run summary: held-out bound before/after, samples, an infill
    assert re.search(r"eval/bound_per_token: untrained \d+\.\d{4} -> trained \d+\.\d{4}", report)
    assert report.count("sample:") == 2 and "infill of the middle" in report
    assert latest_checkpoint(tmp_path / "run").name == "step_00000012"
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp_*"))  # removed on resume
    from ddlm.pipeline import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(final)
    assert len(pipe.generate(1, 8, steps=2, seed=0, progress=False)) == 1


def test_resume_needs_a_checkpoint(tmp_path, text_data):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(recipe_from_dict(tiny_recipe(tmp_path, text_data)), resume=True, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_keep_identical_weights_and_sum_their_batches(tmp_path, text_data):
    recipe = write(tmp_path, tiny_recipe(tmp_path, text_data, steps=4, save_every=2, eval_every=4, global_batch_size=8, micro_batch_size=2))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "ddlm", "train", str(recipe), "--quiet"]
    env = {**ENV, "ACCELERATE_USE_CPU": "true"}  # the accelerator forced to CPU: gloo backend
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("exported ") == 1  # the main process only
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["sequences"] == 8 for r in steps)  # 2 ranks x 2 accumulation steps x 2 sequences
    factor = lr_lambda(load_recipe(str(recipe)).train)  # one scheduler step per optimizer step, not one per process
    assert [r["lr"] for r in steps] == pytest.approx([2e-3 * factor(s) for s in range(1, 5)])
    assert all(math.isfinite(r["train/loss"]) for r in steps)
    fingerprints = torch.tensor(records[-1]["weight_fingerprints"])
    assert fingerprints.shape[0] == 2 and torch.equal(fingerprints[0], fingerprints[1])


def test_ema_and_export_under_fsdp2_sharding_match_an_unsharded_replica(tmp_path):
    """Two CPU processes shard the model with FSDP2: the EMA checkpoint holds whole tensors equal to a
    replica's, loads back into the shards, and the export is the replica's EMA model (tests/fsdp_worker.py)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
               str(Path(__file__).with_name("fsdp_worker.py")), str(tmp_path)]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (tmp_path / "ok").is_file()


def test_ema_refuses_parameters_it_cannot_average_elementwise():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from ddlm.train import check_sharding

    fsdp1 = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False)
    zero3 = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, deepspeed_config={"zero_optimization": {"stage": 3}})
    for accelerator, message in [(fsdp1, "need FSDP2"), (zero3, "ZeRO-3")]:
        with pytest.raises(ValueError, match=message):
            check_sharding(accelerator, ema=True)
        check_sharding(accelerator, ema=False)
    check_sharding(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True), ema=True)
    check_sharding(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, deepspeed_config={"zero_optimization": {"stage": 2}}), ema=True)
