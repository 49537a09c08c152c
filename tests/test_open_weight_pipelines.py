"""LLaDA and Dream directories in their published layouts (tiny random weights, their tokenizer files) through the one
loader, ``DiffusionPipeline.from_pretrained``, and the command line: sampling, block decoding with EOS stop, LLaDA's
decoding setting, infill and bounds."""

import json

import pytest
import torch

import ddlm
from ddlm.sampling.decoding import llada_options
from test_dream import CONFIG as DREAM_CONFIG
from test_dream import MASK as DREAM_MASK
from test_dream import TOKENS as DREAM_TOKENS
from test_dream import write_dream
from test_llada import CONFIG as LLADA_CONFIG
from test_llada import MASK as LLADA_MASK
from test_llada import VOCAB as LLADA_VOCAB
from test_llada import write_llada


def byte_vocabulary(size: int, named: dict[int, str]) -> dict[str, int]:
    """A byte-level BPE vocabulary of ``size`` ids: the ``named`` ids hold those tokens, the first 256 others the byte
    symbols (any text encodes), the rest fillers."""
    from tokenizers import pre_tokenizers

    free = [index for index in range(size) if index not in named]
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet()) + [f"<filler_{i}>" for i in range(size - 256 - len(named))]
    return {**dict(zip(symbols, free)), **{content: index for index, content in named.items()}}


def special(content: str) -> dict:
    return {"content": content, "special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    """LLaDA's layout with a tokenizer.json (a fast tokenizer, as LLaDA publishes): mask and EOS among the added tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("llada")
    write_llada(path)
    vocab = byte_vocabulary(LLADA_VOCAB, {LLADA_MASK: "<|mdm_mask|>", LLADA_VOCAB - 1: "<|eot_id|>"})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens({"mask_token": "<|mdm_mask|>"})
    tokenizer.add_special_tokens({"eos_token": "<|eot_id|>"})
    assert tokenizer.mask_token_id == LLADA_MASK and tokenizer.eos_token_id == LLADA_VOCAB - 1 == LLADA_CONFIG["eos_token_id"]
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    """Dream's layout with its tokenizer files: vocab.json, merges.txt and a tokenizer_config.json naming Dream's own
    tokenizer code (never run: read as transformers' Qwen2Tokenizer)."""
    path = tmp_path_factory.mktemp("dream")
    write_dream(path)
    names = {DREAM_CONFIG["eos_token_id"]: "<|endoftext|>", DREAM_MASK: "<|mask|>"}
    vocab = byte_vocabulary(DREAM_TOKENS, names)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "DreamTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "added_tokens_decoder": {str(index): special(content) for index, content in names.items()},
        "eos_token": "<|endoftext|>", "mask_token": "<|mask|>", "pad_token": "<|endoftext|>", "bos_token": None}))
    return path


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_the_pipeline_runs_every_task_on_the_family(family, llada_dir, dream_dir):
    path = {"llada": llada_dir, "dream": dream_dir}[family]
    pipe = ddlm.DiffusionPipeline.from_pretrained(path, progress=False)
    assert pipe.model.family == family and pipe.max_length == 64
    mask = {"llada": LLADA_MASK, "dream": DREAM_MASK}[family]
    assert pipe.tokenizer.mask_token_id == mask and bool(pipe.model.banned[mask]) and pipe.tokenizer.eos_token_id is not None
    never = pipe.model.banned.nonzero().flatten().tolist()
    for predictor in ("analytic", "first_hitting"):
        ids = pipe.sample(3, 10, steps=5, predictor=predictor, seed=0, progress=False)
        assert not set(ids.flatten().tolist()) & set(never)
    texts = pipe.generate(2, prompt="Hello", max_new_tokens=12, block_size=4, steps=8, stop_at_eos=True, seed=0, progress=False,
                          **llada_options())
    assert all(text.startswith("Hello") for text in texts)
    filled = pipe.infill("ab{{3}}cd{{1..2}}", num_samples=2, steps=4, num_t=2, seed=0, progress=False)
    assert all(text.startswith("ab") and "cd" in text for text in filled)
    bound = pipe.nll_bound(["some text"], num_t=4, seed=0, progress=False)[0]
    assert torch.isfinite(torch.tensor(bound.bound)) and bound.num_tokens == len("some text")


def test_llada_decoding_is_deterministic_and_greedy(llada_dir):
    pipe = ddlm.DiffusionPipeline.from_pretrained(llada_dir, progress=False)
    first = pipe.generate(1, prompt="Hi", max_new_tokens=8, block_size=4, steps=8, seed=0, progress=False, **llada_options())
    again = pipe.generate(1, prompt="Hi", max_new_tokens=8, block_size=4, steps=8, seed=5, progress=False, **llada_options())
    assert first == again  # temperature 0, low-confidence remasking: no randomness at all


def test_the_command_line_loads_the_families(llada_dir, dream_dir, capsys):
    from ddlm.cli import main

    for path in (llada_dir, dream_dir):
        main(["sample", str(path), "--prompt", "Hi", "--max-new-tokens", "8", "--block-size", "4", "--steps", "4",
              "--predictor", "confidence", "--confidence", "prob", "--unmask-schedule", "even", "--temperature", "0",
              "--dtype", "bfloat16", "--quiet"])
        assert capsys.readouterr().out.startswith("Hi")
        main(["infill", str(path), "ab{{3}}cd", "--steps", "3", "--quiet"])
        assert capsys.readouterr().out.startswith("ab")


def test_an_mdlm_hub_directory_loads_directly_with_a_tokenizer(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from test_mdlm import MASK, MDLMLayout, write_hub

    source = write_hub(tmp_path / "mdlm", MDLMLayout(seed=1).state_dict())
    with pytest.raises(ValueError, match="holds no tokenizer"):  # MDLM publishes no tokenizer: it uses GPT-2's
        ddlm.DiffusionPipeline.from_pretrained(source, progress=False)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(MASK)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words)
    tokenizer.save_pretrained(tmp_path / "words")
    pipe = ddlm.DiffusionPipeline.from_pretrained(source, tokenizer=tokenizer, progress=False)
    assert pipe.model.time_independent and pipe.graph.mask_id == MASK
    assert len(pipe.generate(2, length=6, steps=4, seed=0, progress=False)) == 2
    assert pipe.nll_bound(["w1 w2 w3"], num_t=4, progress=False)[0].num_tokens == 3
    from ddlm.cli import main

    main(["sample", str(source), "--tokenizer", str(tmp_path / "words"), "--length", "5", "--steps", "3", "--quiet"])
    assert len(capsys.readouterr().out.split()) == 5


def test_decoding_llada_on_the_command_line_is_the_python_setting(llada_dir, capsys):
    from ddlm.cli import main

    pipe = ddlm.DiffusionPipeline.from_pretrained(llada_dir, progress=False)
    expected = pipe.generate(1, prompt="Hi", max_new_tokens=8, block_size=4, steps=2, seed=0, progress=False, **llada_options())
    main(["sample", str(llada_dir), "--prompt", "Hi", "--max-new-tokens", "8", "--block-size", "4", "--steps", "2",
          "--decoding", "llada", "--quiet"])
    assert capsys.readouterr().out.rstrip("\n") == expected[0]
    for extra, message in [(["--confidence", "max_prob"], "drop --confidence"), (["--predictor", "euler"], "drop --predictor")]:
        with pytest.raises(SystemExit):
            main(["sample", str(llada_dir), "--prompt", "Hi", "--max-new-tokens", "4", "--decoding", "llada", *extra, "--quiet"])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", str(llada_dir), "--remasking", "random", "--quiet"])
    assert "--remasking is an option of --decoding llada" in capsys.readouterr().err


def test_the_zero_shot_suite_and_lm_eval_run_on_llada(llada_dir, tmp_path, capsys):
    from ddlm.cli import main
    from test_zero_shot import WIKITEXT_ROWS, table, write_parquet

    write_parquet(tmp_path / "wikitext2" / "wikitext-2-raw-v1" / "validation-00000-of-00001.parquet", {"text": WIKITEXT_ROWS})
    main(["eval", str(llada_dir), "--benchmark", "wikitext2", "--data-dir", str(tmp_path), "--split", "validation",
          "--num-t", "2", "--quiet"])
    row = table(capsys.readouterr().out)["wikitext2"]
    assert row[2:4] == ["sedd", "validation"] and float(row[8]) > 0

    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from ddlm.lm_eval_model import DDLMEvalModel

    lm = DDLMEvalModel(str(llada_dir), num_t=2, steps=2, seed=0, dtype="bfloat16")
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    (value, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("Hello", " world"), 0)], disable_tqdm=True)
    assert value < 0
    text, = lm.generate_until([Instance("generate_until", {}, ("Hello", {"until": ["\n"], "max_gen_toks": 4}), 0)], disable_tqdm=True)
    assert "\n" not in text
