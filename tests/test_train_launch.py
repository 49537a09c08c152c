"""What a training run says: the held-out bound at each evaluation, one `exported` line, a launch that started
fewer processes than it asked for refused, and a global batch that does not split naming the values to set."""

import json
import re

import pytest

from ddlm.cli import main
from ddlm.recipes import TrainConfig, recipe_from_dict
from ddlm.train import check_world_size, train
from test_train import tiny_recipe, write

SIMPLE_LAUNCHER = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DYNAMO_BACKEND": "NO", "ACCELERATE_USE_CPU": "True"}


def test_each_evaluation_prints_the_held_out_bound_and_the_run_prints_its_export_once(tmp_path, text_data, capsys):
    final = train(recipe_from_dict(tiny_recipe(tmp_path, text_data, steps=4, eval_every=2, save_every=4)), progress=False)
    out = capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluations = {r["step"]: r for r in records if "eval/bound_per_token" in r}
    assert sorted(evaluations) == [0, 2, 4]
    for step, r in evaluations.items():
        line = (f"[step {step}] held-out bound {r['eval/bound_per_token']:.4f} +- {r['eval/bound_stderr']:.4f} nats/token, "
                f"perplexity bound {r['eval/ppl_bound']:.2f}")
        assert line + (" (untrained)" if step == 0 else "") in out.splitlines()
    assert re.findall(r"^exported (.*)$", out, re.MULTILINE) == [str(final)]


def test_a_launch_that_started_fewer_processes_than_it_asked_for_is_refused():
    check_world_size(1, {})  # a plain run
    check_world_size(1, SIMPLE_LAUNCHER)  # accelerate launch of one process
    check_world_size(2, {**SIMPLE_LAUNCHER, "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2"})  # torchrun started both
    # accelerate launch --num_processes 2 --cpu: its single-process launcher sets MASTER_ADDR, not WORLD_SIZE
    with pytest.raises(ValueError, match=r"started this one alone; .*ACCELERATE_USE_CPU=true accelerate launch --multi_gpu"):
        check_world_size(1, {**SIMPLE_LAUNCHER, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    with pytest.raises(ValueError, match="asked for 4 processes"):
        check_world_size(2, {"WORLD_SIZE": "4"})


def test_the_command_refuses_a_lone_process_of_a_multi_process_launch(tmp_path, text_data, monkeypatch, capsys):
    recipe = write(tmp_path, tiny_recipe(tmp_path, text_data))
    for name, value in {**SIMPLE_LAUNCHER, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(recipe), "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "--multi_gpu" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_global_batch_that_does_not_split_names_the_values_that_do():
    train = TrainConfig(global_batch_size=32, micro_batch_size=32)  # the quickstart's batch, on 2 processes
    with pytest.raises(ValueError, match=r"set train\.micro_batch_size=16 .* or train\.global_batch_size=64$"):
        train.accumulation_steps(2)
    assert TrainConfig(global_batch_size=32, micro_batch_size=16).accumulation_steps(2) == 1
    assert TrainConfig(global_batch_size=64, micro_batch_size=32).accumulation_steps(2) == 1
    with pytest.raises(ValueError, match=r"not divisible by micro_batch_size 8 x 3 processes; set train\.global_batch_size=48$"):
        TrainConfig(global_batch_size=32, micro_batch_size=8).accumulation_steps(3)
