"""Supervised fine-tuning: the SFT loss against the exact conditional likelihood, SFT examples, fine-tuning runs
(full and LoRA) with exact resume, adaptation from an AR model, and the refusals of bad input."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ddlm import DDLMConfig, DDLMForDiffusion, LogLinear, SequenceOracle
from ddlm.core.processes import Absorbing
from ddlm.likelihood.bounds import _prior_term
from ddlm.pipeline import DiffusionPipeline
from ddlm.text.instructions import ResponseBlocks, render
from ddlm.training.adapt import adapt_ar_model, annealed_attention_mask, causal_mask
from ddlm.training.finetune import sft_loss
from ddlm.training.loop import train
from ddlm.training.recipes import recipe_from_dict
from helpers import byte_tokenizer, conditional_oracle, randomised

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
ROWS = [{"prompt": f"Reverse {w}: ", "response": w[::-1]} for w in
        ["alpha", "beta", "gamma", "delta", "kappa", "sigma", "omega", "theta", "lambda", "zeta", "iota", "rho"]]


# ----------------------------------------------------------------------------- the loss against exact answers


def test_the_sft_loss_estimates_the_exact_conditional_nll_per_response_token():
    """E_t[sft_loss] * |response| + the prior term = -log p(response | prompt) with exact ratios (t_min = 0)."""
    graph, noise = Absorbing(3), LogLinear()
    oracle = SequenceOracle.random(graph, 3, torch.Generator().manual_seed(4))
    x0 = oracle.sequences[torch.tensor([5, 11, 19, 24])]
    prompt = torch.tensor([[True, False, False], [True, True, False], [True, False, False], [False, False, False]])
    draws = 20_000
    generator = torch.Generator().manual_seed(0)
    rows = x0.repeat_interleave(draws, 0)
    losses = sft_loss(oracle.score_fn, graph, noise, rows, prompt.repeat_interleave(draws, 0), 0.0, generator)
    count = (~prompt).sum(1).double()
    per_row = losses.view(4, draws) * count[:, None]
    estimate = per_row.mean(1) + _prior_term(graph, x0, noise.total(1.0), None, 1, None, ~prompt)[0]
    stderr = per_row.std(1) / math.sqrt(draws)
    exact = torch.tensor([-float(conditional_oracle(oracle, row, p.nonzero().squeeze(1).tolist()).log_prob(row))
                          for row, p in zip(x0, prompt)], dtype=torch.float64)
    assert torch.all((estimate - exact).abs() < 4 * stderr + 1e-9), (estimate, exact, stderr)


def test_the_prompt_is_never_noised_and_carries_no_loss():
    graph, noise = Absorbing(5), LogLinear()
    seen = []

    def score_fn(x_t, sigma_bar, positions=None):
        seen.append(x_t.clone())
        out = torch.zeros(*x_t.shape, 6)
        return out if positions is None else out[positions]

    x0 = torch.randint(0, 5, (64, 6))
    prompt = torch.zeros(64, 6, dtype=torch.bool)
    prompt[:, :3] = True
    sft_loss(score_fn, graph, noise, x0, prompt, 1e-3, torch.Generator().manual_seed(0))
    assert torch.equal(seen[0][:, :3], x0[:, :3]) and bool((seen[0][:, 3:] == 5).any())
    with pytest.raises(ValueError, match="no response position"):
        sft_loss(score_fn, graph, noise, x0, torch.ones_like(prompt), 1e-3)


# ----------------------------------------------------------------------------- SFT examples


def test_examples_are_prompt_response_and_trained_on_eos_padding():
    tokenizer = byte_tokenizer()
    blocks = ResponseBlocks.build(ROWS, tokenizer, 24)
    prompt_ids, response_ids = render(ROWS[0], tokenizer, "row 0")
    row = blocks[0]
    assert row[:len(prompt_ids)].tolist() == prompt_ids
    assert row[len(prompt_ids):len(prompt_ids) + len(response_ids)].tolist() == response_ids
    assert set(row[len(prompt_ids) + len(response_ids):].tolist()) == {tokenizer.eos_token_id}
    assert blocks.prompt_mask[0].tolist() == [True] * len(prompt_ids) + [False] * (24 - len(prompt_ids))
    assert blocks.signature["rows"] == ["prompt-response"]


def test_chat_rows_split_at_the_generation_prompt():
    tokenizer = copy.deepcopy(byte_tokenizer())  # the shared one stays without a template
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "again"},
                {"role": "assistant", "content": "sure"}]
    prompt, response = render({"messages": messages}, tokenizer, "row 0")
    assert tokenizer.decode(prompt) == "<user>hi\n<assistant>yo\n<user>again\n<assistant>"
    assert tokenizer.decode(response) == "sure\n"
    prompt2, response2 = render({"prompt": "again", "response": "sure"}, tokenizer, "row 0")  # rendered as one user turn
    assert tokenizer.decode(prompt2) == "<user>again\n<assistant>" and tokenizer.decode(response2) == "sure\n"


@pytest.mark.parametrize("row, match", [
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "no chat template"),
    ({"prompt": "x", "response": "  "}, "response is empty"),
    ({"prompt": "x"}, "needs a 'messages' list or 'prompt' and 'response'"),
    ({"prompt": "x", "response": 3}, "must be strings"),
])
def test_bad_rows_are_refused_naming_the_row(row, match):
    with pytest.raises(ValueError, match=match) as error:
        ResponseBlocks.build(ROWS[:2] + [row], byte_tokenizer(), 24)
    assert "row 2" in str(error.value)


def test_examples_that_do_not_fit_are_counted_never_truncated():
    rows = ROWS[:3] + [{"prompt": "p" * 80, "response": "r"}, {"prompt": "short", "response": "r" * 60}]
    with pytest.raises(ValueError, match=r"2 of 5 examples .* \(1 of them by their prompt alone; the first is row 3"):
        ResponseBlocks.build(rows, byte_tokenizer(), 24)
    with pytest.warns(UserWarning, match="2 of 5 examples"):
        kept = ResponseBlocks.build(rows, byte_tokenizer(), 24, drop_long=True)
    assert len(kept) == 3


# ----------------------------------------------------------------------------- runs


def base_model(path: Path, objective: str = "diffusion") -> Path:
    """A small random ddlm model (every weight nonzero, so every adapter gets a gradient) with the byte tokenizer."""
    tokenizer = byte_tokenizer()
    config = DDLMConfig.from_preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=32, dropout=0.0, objective=objective)
    model = randomised(config, std=0.05)
    if objective == "ar":
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    else:
        DiffusionPipeline(model, tokenizer).save_pretrained(path)
    return path


def sft_recipe(tmp_path: Path, init_from: Path, out: str = "run", finetune=None, **train) -> dict:
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS * 3))
    train_section = dict(steps=6, global_batch_size=4, micro_batch_size=2, lr=1e-3, warmup_steps=1, decay="constant", ema=0.9,
                         eval_every=3, eval_blocks=4, eval_num_t=2, sample_every=6, num_samples=1, sample_steps=4,
                         save_every=3, trackers=["none"], output_dir=str(tmp_path / out))
    train_section.update(train)
    return {"finetune": {"init_from": str(init_from), **(finetune or {})},
            "data": {"format": "sft", "source": str(data), "block_size": 24, "validation_fraction": 0.2},
            "train": train_section}


def weights(directory: Path) -> dict:
    return load_file(directory / "model.safetensors")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_fine_tuning_run_resumes_exactly_and_exports_a_loadable_model(tmp_path, lora):
    if lora:
        pytest.importorskip("peft")
    base = base_model(tmp_path / "base")
    finetune = {"lora_rank": 4} if lora else {}
    final = train(recipe_from_dict(sft_recipe(tmp_path, base, "straight", finetune)), progress=False)
    train(recipe_from_dict(sft_recipe(tmp_path, base, "split", finetune, steps=3)), progress=False)
    train(recipe_from_dict(sft_recipe(tmp_path, base, "split", finetune)), resume=True, progress=False, allow_changes={"train.steps"})
    straight, split = weights(final), weights(tmp_path / "split" / "final")
    assert straight.keys() == split.keys() == weights(base).keys()  # LoRA: merged into the plain layer names
    assert all(torch.equal(straight[k], split[k]) for k in straight)
    changed = {k for k in straight if not torch.equal(straight[k], weights(base)[k])}
    if lora:  # only the adapted projections move
        assert changed and all(k.split(".")[-2] in ("qkv", "out", "fc1", "fc2") for k in changed)
        assert (tmp_path / "straight" / "adapter" / "adapter_model.safetensors").is_file()
    else:
        assert "embed_tokens.weight" in changed
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert "eval/bound_per_token" in records[0] and any("train/loss" in r for r in records)
    pipe = DiffusionPipeline.from_pretrained(final)
    assert pipe.sample(1, 24, 4, seed=0, progress=False).shape == (1, 24)


def test_resuming_with_another_row_format_is_refused(tmp_path):
    base = base_model(tmp_path / "base")
    train(recipe_from_dict(sft_recipe(tmp_path, base, steps=3)), progress=False)
    tokenizer_dir = tmp_path / "base"
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps(config))
    (tokenizer_dir / "manifest.json").unlink()  # the edit is deliberate
    with pytest.raises(ValueError, match="format changed"):
        train(recipe_from_dict(sft_recipe(tmp_path, base)), resume=True, progress=False, allow_changes={"train.steps"})


def test_an_adapted_ar_model_predicts_the_first_masked_token_as_the_ar_model():
    config = DDLMConfig.from_preset("tiny", vocab_size=37, max_position_embeddings=16, objective="ar", dropout=0.0)
    ar = randomised(config, std=0.3).double()
    model = adapt_ar_model(ar).eval()
    x0 = torch.randint(0, 37, (3, 12), generator=torch.Generator().manual_seed(0))
    for start in (1, 5, 11):
        x_t = x0.clone()
        x_t[:, start:] = 37
        sigma_bar = torch.full((3,), 0.7, dtype=torch.float64)
        log_p = model(x_t, sigma_bar, attention_mask=causal_mask(12))[:, start, :37] + math.log(math.expm1(0.7))
        torch.testing.assert_close(log_p.float(), ar(x0)[:, start - 1], rtol=0, atol=1e-5)  # AR outputs float32
    assert model.config.shift_logits and not model.config.time_conditioning
    unshifted = adapt_ar_model(ar, shift_logits=False).eval()
    assert not torch.allclose(unshifted(x_t, sigma_bar, attention_mask=causal_mask(12))[:, 11], model(x_t, sigma_bar, attention_mask=causal_mask(12))[:, 11])


def test_attention_annealing_goes_from_causal_to_bidirectional():
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(annealed_attention_mask(64, 1, 100, generator), causal_mask(64))
    middle = annealed_attention_mask(64, 51, 100, generator)
    future = middle.triu(1).sum().item() / (64 * 63 / 2)
    assert middle[causal_mask(64)].all() and 0.4 < future < 0.6
    assert annealed_attention_mask(64, 101, 100, generator) is None and annealed_attention_mask(64, 1, 0, generator) is None


def test_adapting_an_ar_model_trains_a_diffusion_model_with_annealing(tmp_path):
    ar = base_model(tmp_path / "ar", objective="ar")
    final = train(recipe_from_dict(sft_recipe(tmp_path, ar, finetune={"adapt": True, "anneal_steps": 4})), progress=False)
    model = DDLMForDiffusion.from_pretrained(final)
    assert model.config.objective == "diffusion" and model.config.shift_logits and model.config.vocab_size == 300


# ----------------------------------------------------------------------------- bad input on the command line


def run_cli(tmp_path: Path, values: dict, *extra):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values))
    return subprocess.run([sys.executable, "-m", "ddlm", "train", "--quiet", str(recipe), *extra], env=ENV, capture_output=True,
                          text=True, cwd=tmp_path)


@pytest.mark.parametrize("change, match", [
    (lambda r: r["finetune"].update(lora_rank=2, lora_target_modules=["nope"]), "finetune.lora_target_modules: 'nope'"),
    (lambda r: r["finetune"].update(adapt=True), "starts from an autoregressive model"),
    (lambda r: r.update(model={"preset": "tiny"}), "the model comes from finetune.init_from"),
    (lambda r: r["data"].update(block_size=8), "do not fit data.block_size=8"),
    (lambda r: r["data"].update(block_size=64), "exceeds what the model finetune.init_from reads"),
    (lambda r: r["train"].update(loss_impl="fused_head"), "the SFT loss scores the response positions only"),
    (lambda r: r["finetune"].update(dtype="bfloat16"), "finetune.dtype=bfloat16 would train 16-bit weights"),
    (lambda r: r["finetune"].update(dtype="float8"), "invalid finetune settings: dtype='float8' (must be one of"),
])
def test_bad_fine_tuning_input_exits_2_with_one_line_and_writes_nothing(tmp_path, change, match):
    if "lora" in match:
        pytest.importorskip("peft")
    base = base_model(tmp_path / "base")
    values = sft_recipe(tmp_path, base)
    change(values)
    result = run_cli(tmp_path, values)
    assert result.returncode == 2, result.stderr
    assert match in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    run = tmp_path / "run"
    assert not run.exists() or not any(p.name != ".lock" for p in run.iterdir())


def test_adapting_an_unsupported_architecture_is_refused_by_name(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=32, max_position_embeddings=32))
    model.save_pretrained(tmp_path / "neox")
    byte_tokenizer().save_pretrained(tmp_path / "neox")
    values = sft_recipe(tmp_path, tmp_path / "neox", finetune={"adapt": True})
    result = run_cli(tmp_path, values)
    assert result.returncode == 2 and "cannot adapt gpt_neox" in result.stderr, result.stderr


@pytest.mark.parametrize("kind", ["gpt2", "qwen2"])
def test_a_transformers_causal_lm_is_adapted_with_annealing_and_reloads(tmp_path, kind):
    from test_adapted_causal import save_causal

    from ddlm.text.loading import load_model

    save_causal(tmp_path / kind, kind)
    values = sft_recipe(tmp_path, tmp_path / kind, finetune={"adapt": True, "anneal_steps": 4}, steps=4, eval_every=4, save_every=4)
    final = train(recipe_from_dict(values), progress=False)
    model, tokenizer = load_model(final, progress=False)
    assert model.family.startswith("adapted-causal") and model.shift_logits and len(tokenizer) == 301
    pipe = DiffusionPipeline(model, tokenizer)
    assert pipe.sample(1, 24, 4, seed=0, progress=False).shape == (1, 24)


def test_chat_rows_fine_tune_a_model_that_chat_then_serves(tmp_path):
    base = base_model(tmp_path / "base")
    tokenizer_config = json.loads((base / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = ("{% for m in messages %}{% if m['role'] == 'assistant' %}>{% endif %}{{ m['content'] }}|"
                                         "{% endfor %}{% if add_generation_prompt %}>{% endif %}")
    (base / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (base / "manifest.json").unlink()
    values = sft_recipe(tmp_path, base)
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps({"messages": [{"role": "user", "content": row["prompt"]},
                                                                          {"role": "assistant", "content": row["response"]}]}) + "\n"
                                                for row in ROWS * 3))
    values["data"]["block_size"] = 32
    final = train(recipe_from_dict(values), progress=False)
    pipe = DiffusionPipeline.from_pretrained(final)
    answer = pipe.chat([{"role": "user", "content": "Reverse beta: "}], max_new_tokens=8, block_size=4, steps=4, seed=0)
    assert isinstance(answer, str)


def test_lora_without_peft_is_refused_while_validating_the_recipe(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'ddlm\[peft\]'"):
        recipe_from_dict(sft_recipe(tmp_path, tmp_path, finetune={"lora_rank": 2}))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_processes_fine_tune_in_sync(tmp_path, lora):
    import socket

    if lora:
        pytest.importorskip("peft")
    base = base_model(tmp_path / "base")
    values = sft_recipe(tmp_path, base, finetune={"lora_rank": 2} if lora else None, steps=2, save_every=2, eval_every=2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
               "-m", "ddlm", "train", str(recipe), "--quiet"]
    result = subprocess.run(command, env={**ENV, "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["sequences"] for r in records if "train/loss" in r] == [4, 4]
    fingerprints = torch.tensor(records[-1]["weight_fingerprints"])
    assert torch.equal(fingerprints[0], fingerprints[1])
    assert DDLMForDiffusion.from_pretrained(tmp_path / "run" / "final").config.vocab_size == 300


def test_a_16_bit_checkpoint_trains_float32_weights_and_lora_merges_in_float32(tmp_path):
    """A bfloat16 checkpoint (as LLaDA and Dream publish) is fine-tuned in float32; with LoRA and finetune.dtype=bfloat16
    the base stays bfloat16, the adapters are float32, and the export equals W + (alpha / r) B A to float32 rounding
    (a bfloat16 merge would round the update, about 1e-3 of W here, to 2^-9 of W)."""
    pytest.importorskip("peft")
    from ddlm.text.loading import load_model
    from ddlm.training.finetune import start_model

    model, tokenizer = load_model(base_model(tmp_path / "base"))
    DiffusionPipeline(model.to(torch.bfloat16), tokenizer).save_pretrained(tmp_path / "bf16")
    full, _ = start_model(recipe_from_dict(sft_recipe(tmp_path, tmp_path / "bf16")).finetune, progress=False)
    assert {p.dtype for p in full.parameters()} == {torch.float32}
    lora = recipe_from_dict(sft_recipe(tmp_path, tmp_path / "bf16", "lora", {"lora_rank": 4, "dtype": "bfloat16"}))
    held, _ = start_model(lora.finetune, progress=False)
    assert {p.dtype for p in held.parameters()} == {torch.bfloat16}
    final = train(lora, progress=False)
    merged, base = weights(final), weights(tmp_path / "bf16")
    adapter = load_file(tmp_path / "lora" / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in [*merged.values(), *adapter.values()]} == {torch.float32}
    updates = 0.0
    for name, a in adapter.items():
        if ".lora_A." not in name:
            continue
        layer = name.removeprefix("base_model.model.").split(".lora_A.")[0] + ".weight"
        exact = base[layer].double() + 16 / 4 * adapter[name.replace(".lora_A.", ".lora_B.")].double() @ a.double()
        assert (merged[layer].double() - exact).abs().max() <= 2e-7 * exact.abs().max(), layer
        updates = max(updates, float((exact - base[layer].double()).abs().max() / base[layer].double().abs().max()))
    assert updates > 2**-9  # the update is larger than a bfloat16 merge's rounding, so the check above can fail


def test_a_masked_lm_that_never_draws_eos_is_refused_before_training(tmp_path):
    from test_masked_lm import WORDS, save_bert

    save_bert(tmp_path / "bert")
    values = sft_recipe(tmp_path, tmp_path / "bert")
    rows = [{"prompt": f"{a} ", "response": b} for a, b in zip(WORDS, WORDS[1:])]  # words the tokenizer knows
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows * 2))
    values["data"]["block_size"] = 8
    with pytest.raises(ValueError, match="the tokenizer has no eos_token"):
        train(recipe_from_dict(values), progress=False)
    config = json.loads((tmp_path / "bert" / "tokenizer_config.json").read_text())
    (tmp_path / "bert" / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "[SEP]"}))
    with pytest.raises(ValueError, match=r"token \d+ \('\[SEP\]'\), which the masked-lm .bert. model never draws"):
        train(recipe_from_dict(values), progress=False)
    assert not (tmp_path / "run" / "recipe.json").exists()


def test_parquet_and_json_rows_read_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ddlm.text.corpora import DataConfig
    from ddlm.text.instructions import build_response_blocks

    tokenizer = byte_tokenizer()
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "rows.parquet")
    (tmp_path / "rows.json").write_text(json.dumps(ROWS))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    built = [build_response_blocks(DataConfig(format="sft", source=str(tmp_path / f"rows.{kind}"), block_size=24,
                                              validation_fraction=0.25), tokenizer) for kind in ("jsonl", "json", "parquet")]
    for train_blocks, validation in built[1:]:
        assert torch.equal(train_blocks[:], built[0][0][:]) and torch.equal(validation.prompt_mask, built[0][1].prompt_mask)
    (tmp_path / "bad.jsonl").write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON"):
        build_response_blocks(DataConfig(format="sft", source=str(tmp_path / "bad.jsonl"), block_size=24), tokenizer)
