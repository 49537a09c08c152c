"""The zero-shot suite: the published detokenisers (expected strings written by hand from the rules), local
files in the hub's formats, the two protocols' block layouts, and ``ddlm eval --benchmark`` end to end."""

import json
import math

import pytest
import torch

from ddlm import DDLMConfig
from ddlm.cli import main
from ddlm.losses import ar_nll
from ddlm.zero_shot import (BENCHMARKS, benchmark_blocks, detokenized, evaluate_benchmark, load_rows, mdlm_blocks,
                            sedd_blocks)
from helpers import randomised, save_tiny_pipeline

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

# Raw rows as the hub stores them, and the detokenised text each published rule gives (worked by hand).
WIKITEXT_ROWS = [
    " = Valkyria Chronicles III = \n",
    "",
    " = = Gameplay = = \n",
    " The team 's 1 @,@ 000 @-@ year plan cost $ 2 @.@ 5 million ( about N % ) . It said \" we won \" ; then : done , ok ? yes ! \n",
    " = = = = Notes = = = = \n",
    " It was 5 \u00b0 C , the players ' union said . \n",
]
WIKITEXT_EXPECTED = [
    " = Valkyria Chronicles III =\n",
    "",
    " == Gameplay ==\n",
    " The team's 1,000-year plan cost $ 2.5 million (about 1 %). It said \"we won\"; then: done, ok? yes!\n",
    " ==== Notes ====\n",
    " It was 5\u00b0C, the players' union said.\n",
]
PTB_ROWS = [
    "the company 's shares rose N N to $ N a share <unk> said",
    "mr. smith does n't think so and the investors ' group agreed 3\\/4 # N",
]
PTB_EXPECTED = [
    "the company's shares rose 1 1 to $1 a share ? said",
    "mr. smith doesn't think so and the investors' group agreed 3/4 # N",  # a final N has no space after it
]
LM1B_ROWS = [
    "He said : \" It 's fine , I 'm sure . \" See http : / / example.com / page ( today ) .",
    "Prices rose to \u00a3 5 and $ 7 !",
    "Why did he go ?",
]
LM1B_EXPECTED = [
    "He said: \"It's fine, I'm sure.\" See http://example.com/page (today) .",
    "Prices rose to \u00a35 and $7!",
    "Why did he go?",
]
LAMBADA_ROWS = ["  \u201cHi,\u201d he said. She waved back at him\n"]
LAMBADA_EXPECTED = ["\n\"Hi,\" he said. She waved back at him"]
PAPER_ROWS = ["we find @xmath0 ( see fig . 1 ) . \n the results 's value is 5 @.@ 2 ."]
PAPER_EXPECTED = ["we find @xmath0 (see fig. 1).\nthe results's value is 5.2 ."]  # "s '" fires before " 's"
AG_ROWS = ["Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers are back.", "Oil hits $50 ."]


@pytest.mark.parametrize("name, rows, expected", [
    ("wikitext2", WIKITEXT_ROWS, WIKITEXT_EXPECTED), ("wikitext103", WIKITEXT_ROWS, WIKITEXT_EXPECTED),
    ("ptb", PTB_ROWS, PTB_EXPECTED), ("lm1b", LM1B_ROWS, LM1B_EXPECTED), ("lambada", LAMBADA_ROWS, LAMBADA_EXPECTED),
    ("pubmed", PAPER_ROWS, PAPER_EXPECTED), ("arxiv", PAPER_ROWS, PAPER_EXPECTED), ("ag_news", AG_ROWS, AG_ROWS)])
def test_each_benchmark_detokenises_as_the_published_rules_do(name, rows, expected):
    assert detokenized(name, rows) == expected


def write_parquet(path, columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Local files laid out as the hub stores each benchmark (and as its original .txt / .jsonl releases)."""
    root = tmp_path_factory.mktemp("zero-shot-data")
    write_parquet(root / "wikitext2" / "wikitext-2-raw-v1" / "validation-00000-of-00001.parquet", {"text": WIKITEXT_ROWS})
    write_parquet(root / "wikitext2" / "wikitext-2-raw-v1" / "train-00000-of-00001.parquet", {"text": WIKITEXT_ROWS[:3]})
    (root / "ptb.valid.txt").write_text("".join(" " + row + " \n" for row in PTB_ROWS), encoding="utf-8")  # as ptb.valid.txt
    write_jsonl(root / "lambada" / "lambada_test.jsonl", [{"text": row} for row in LAMBADA_ROWS * 3])
    (root / "lm1b").mkdir()
    (root / "lm1b" / "test.json").write_text(json.dumps([{"text": row} for row in LM1B_ROWS]), encoding="utf-8")
    write_parquet(root / "ag_news" / "test-00000-of-00001.parquet", {"text": AG_ROWS, "label": [2, 2]})
    write_jsonl(root / "pubmed" / "validation.jsonl", [{"article": PAPER_ROWS[0], "abstract": "a", "section_names": "s"}])
    return root


def test_local_files_in_the_hub_formats_give_the_hub_rows(data_dir, tmp_path):
    assert load_rows("wikitext2", "validation", data_dir=data_dir) == WIKITEXT_ROWS
    assert load_rows("wikitext2", "train", data_dir=data_dir) == WIKITEXT_ROWS[:3]
    assert load_rows("ptb", "validation", data_dir=data_dir) == PTB_ROWS  # .txt lines are stripped, as ptb_text_only does
    assert load_rows("lambada", "test", data_dir=data_dir) == LAMBADA_ROWS * 3
    assert load_rows("lm1b", "test", data_dir=data_dir) == LM1B_ROWS
    assert load_rows("ag_news", "test", data_dir=data_dir) == AG_ROWS
    assert load_rows("pubmed", "validation", data_dir=data_dir) == PAPER_ROWS
    # wikitext's .txt release: one row per line with its newline, a blank line an empty row
    (tmp_path / "wiki.valid.raw.txt").write_text(" \n = Valkyria Chronicles III = \n \n = = Gameplay = = \n a\u2028b \n", encoding="utf-8")
    assert load_rows("wikitext2", "validation", path=tmp_path / "wiki.valid.raw.txt") == [
        "", WIKITEXT_ROWS[0], "", WIKITEXT_ROWS[2], " a\u2028b \n"]  # lines end at newlines only


def test_missing_splits_columns_and_files_are_named(data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"ptb: no test file in .* \(found ptb.valid.txt\)"):
        load_rows("ptb", "test", data_dir=data_dir)
    with pytest.raises(ValueError, match=r"wikitext103: no local files in"):
        load_rows("wikitext103", "test", data_dir=data_dir)
    with pytest.raises(ValueError, match=r"no text field 'article'; columns: \['text'\]"):
        load_rows("arxiv", "test", path=write_jsonl(tmp_path / "arxiv.jsonl", [{"text": "x"}]))
    with pytest.raises(ValueError, match=r"unknown benchmark 'wiki'; known: lambada, wikitext2, wikitext103, ptb, lm1b, ag_news, pubmed, arxiv"):
        load_rows("wiki", "test")


class LetterTokenizer:
    """a..z -> 1..26, EOS 0, BOS 27 (or none)."""

    eos_token_id = 0

    def __init__(self, bos=27):
        self.bos_token_id = bos

    def __call__(self, texts, **kwargs):
        return {"input_ids": [[ord(c) - 96 for c in text] for text in texts]}


def test_the_protocols_cut_blocks_as_their_papers_code_does():
    rows = ["abc", "", "de"]  # ids [1, 2, 3], [], [4, 5]; the stream with EOS: 1 2 3 0 0 4 5 0
    assert benchmark_blocks("ag_news", rows, LetterTokenizer(), 3, "sedd") == [[1, 2, 3], [0, 0, 4]]  # "5 0" dropped
    assert benchmark_blocks("ag_news", rows, LetterTokenizer(), 4, "mdlm") == [
        [27, 1, 2, 0], [27, 3, 0, 0], [27, 0, 4, 0], [27, 5, 0, 0]]
    assert benchmark_blocks("ag_news", rows, LetterTokenizer(bos=None), 5, "mdlm") == [[0, 1, 2, 3, 0], [0, 0, 0, 4, 0]]
    # LM1B under MDLM is not wrapped: one [BOS] sentence[:L-2] [EOS] block per row
    assert benchmark_blocks("lm1b", ["abcdef", "", "de"], LetterTokenizer(), 4, "mdlm") == [[27, 1, 2, 0], [27, 0], [27, 4, 5, 0]]
    assert benchmark_blocks("lm1b", ["abcdef", "", "de"], LetterTokenizer(), 4, "sedd") == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert sedd_blocks([[1]], 3, 0) == [] and mdlm_blocks([[1]], 5, 9, 0) == []
    with pytest.raises(ValueError, match="block_size must be an int >= 3"):
        mdlm_blocks([[1]], 2, 9, 0)
    with pytest.raises(ValueError, match="protocol must be one of sedd, mdlm"):
        benchmark_blocks("ag_news", rows, LetterTokenizer(), 4, "gpt2")


def expected_sedd_stream(tokenizer, texts):
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [t for doc in ids for t in doc + [tokenizer.eos_token_id]]


@pytest.fixture(scope="module")
def ar_model(byte_tokenizer):
    return randomised(DDLMConfig.from_preset("tiny", vocab_size=len(byte_tokenizer), max_position_embeddings=16, objective="ar")).eval()


def test_an_ar_model_scores_the_blocks_exactly_under_both_protocols(ar_model, byte_tokenizer, data_dir):
    stream = expected_sedd_stream(byte_tokenizer, WIKITEXT_EXPECTED)
    blocks = torch.tensor([stream[i:i + 16] for i in range(0, len(stream) - 15, 16)])
    r = evaluate_benchmark(ar_model, byte_tokenizer, "wikitext2", "sedd", split="validation", data_dir=data_dir, progress=False)
    eos = byte_tokenizer.eos_token_id
    assert (r.num_blocks, r.num_tokens, r.num_t, r.stderr) == (len(blocks), blocks.numel(), 0, 0.0)
    assert r.bound == pytest.approx(float(ar_nll(ar_model, blocks, context=eos).sum()), rel=1e-9)
    inner = stream  # MDLM: the same EOS-joined stream in chunks of 14, each between BOS (= EOS here) and EOS
    wrapped = torch.tensor([[eos, *inner[i:i + 14], eos] for i in range(0, len(inner) - 13, 14)])
    r = evaluate_benchmark(ar_model, byte_tokenizer, "wikitext2", "mdlm", data_dir=data_dir, progress=False)
    assert (r.split, r.num_blocks, r.num_tokens) == ("validation", len(wrapped), wrapped.numel() - len(wrapped))
    assert r.bound == pytest.approx(float(ar_nll(ar_model, wrapped).sum()), rel=1e-9)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, byte_tokenizer):
    """An untrained absorbing pipeline: its bound is exactly log 300 nats per token."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("model"), byte_tokenizer, 16)


def table(out):
    return {line.split()[1]: line.split() for line in out.splitlines() if line.startswith("#1 ")}


def test_eval_benchmark_prints_the_suite_table(model_dir, byte_tokenizer, data_dir, capsys):
    main(["eval", str(model_dir), "--benchmark", "wikitext2", "ptb", "lm1b", "--protocol", "mdlm", "--data-dir", str(data_dir),
          "--num-t", "64", "--quiet"])
    rows = table(capsys.readouterr().out)
    eos = byte_tokenizer.eos_token_id
    wiki = len(expected_sedd_stream(byte_tokenizer, WIKITEXT_EXPECTED)) // 14
    ptb = len(expected_sedd_stream(byte_tokenizer, PTB_EXPECTED)) // 14
    lm1b = sum(min(len(ids), 14) + 2 for ids in byte_tokenizer(LM1B_EXPECTED, add_special_tokens=False)["input_ids"])
    assert eos is not None
    for name, split, blocks, tokens in [("wikitext2", "validation", wiki, 16 * wiki), ("ptb", "validation", ptb, 16 * ptb),
                                        ("lm1b", "test", 3, lm1b)]:
        row = rows[name]
        assert row[2:8] == ["mdlm", split, str(blocks), str(tokens), "64", "per-text"] and row[-2:] == ["-", "-"]
        per_token, stderr, ppl = float(row[8]), float(row[10]), float(row[11])  # untrained: E[bound] = log 300 per token
        assert abs(per_token - math.log(300)) < 3 * stderr + 1e-3 and ppl == pytest.approx(math.exp(per_token), rel=1e-3)


def test_eval_benchmark_takes_a_path_a_split_and_a_limit(model_dir, byte_tokenizer, data_dir, capsys):
    main(["eval", str(model_dir), "--benchmark", f"ptb={data_dir / 'ptb.valid.txt'}", "wikitext2", "--data-dir", str(data_dir),
          "--split", "validation", "--limit", "1", "--num-t", "2", "--quiet"])
    rows = table(capsys.readouterr().out)
    assert rows["ptb"][2:7] == ["sedd", "validation", "1", "16", "2"] and rows["wikitext2"][4:6] == ["1", "16"]


def test_the_dataset_estimator_and_lambadas_last_word(model_dir, ar_model, byte_tokenizer, data_dir, capsys):
    from ddlm.evaluation import load_model

    model, tokenizer = load_model(model_dir)
    r = evaluate_benchmark(model, tokenizer, "wikitext2", "sedd", estimator="dataset", split="validation", data_dir=data_dir,
                           progress=False)
    assert (r.estimator, r.num_t) == ("dataset", 1) and abs(r.per_token - math.log(300)) < 3 * r.stderr / r.num_tokens + 1e-3
    r = evaluate_benchmark(ar_model, byte_tokenizer, "lambada", "sedd", data_dir=data_dir, progress=False)
    assert r.estimator == "exact" and r.last_word["num_examples"] == 3 and r.last_word["exact"]
    main(["eval", str(model_dir), "--benchmark", "lambada", "--data-dir", str(data_dir), "--num-t", "2", "--quiet"])
    row = table(capsys.readouterr().out)["lambada"]
    assert row[2:4] == ["sedd", "test"] and 0 <= float(row[-4]) <= 1 and float(row[-3]) > 1  # accuracy, last-word ppl +- se


def test_per_block_is_still_accepted_as_the_per_text_estimator(model_dir, data_dir):
    from ddlm.evaluation import load_model

    model, tokenizer = load_model(model_dir)
    old, new = (evaluate_benchmark(model, tokenizer, "wikitext2", "sedd", 2, estimator=name, split="validation", data_dir=data_dir,
                                   limit=2, progress=False) for name in ("per-block", "per-text"))
    assert old == new and new.estimator == "per-text" and new.num_blocks == 2


@pytest.mark.parametrize("argv, message", [
    (["--benchmark", "wikitext"], "unknown benchmark 'wikitext'; known: lambada, wikitext2"),
    (["--benchmark", "ptb"], "ptb needs a network to load ptb-text-only/ptb_text_only from the hub; offline, point at local files"),
    (["--benchmark", "ptb", "--data-dir", "DATA"], "ptb: no test file in"),
    (["--benchmark", "lm1b=MISSING"], "lm1b: no .parquet/.jsonl/.json/.txt file at"),
    (["--benchmark", "lambada", "--data-dir", "DATA", "--protocol", "sedd", "--limit", "0"], "--limit: expected a positive integer"),
    (["a.txt", "--benchmark", "ptb"], "give text files or --benchmark NAME..., not both"),
    ([], "give text files or --benchmark NAME..."),
])
def test_bad_benchmark_input_exits_2_with_one_line(model_dir, data_dir, monkeypatch, capsys, argv, message):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying for minutes
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    argv = [str(data_dir) if word == "DATA" else word for word in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(model_dir), *argv, "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and message in lines[-1]
    assert len(lines) == 1 or lines[0].startswith("usage:")  # argparse's own errors follow the usage text


def test_every_benchmark_names_its_hub_source_and_both_splits():
    for benchmark in BENCHMARKS.values():
        assert benchmark.hub_path and benchmark.text_field and set(benchmark.splits) == {"sedd", "mdlm"}


def test_the_hub_path_asks_datasets_for_the_papers_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):  # stands in for the hub: records the request, returns hub-shaped rows
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_dict({"sentence": PTB_ROWS})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_rows("ptb", "test") == PTB_ROWS
    assert calls == [("ptb-text-only/ptb_text_only", None, {"split": "test", "revision": "refs/convert/parquet",
                                                            "data_dir": "penn_treebank"})]
    with pytest.raises(ValueError, match=r"wikitext2: .*no text field 'text'; columns: \['sentence'\]"):
        load_rows("wikitext2", "train")
    assert calls[-1][:2] == ("Salesforce/wikitext", "wikitext-2-raw-v1") and calls[-1][2]["split"] == "train"
