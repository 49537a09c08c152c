"""ddlm.data: packing, deterministic resumable batches, streaming, local and hub sources, the cache, python-docs."""

import json
import os
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddlm import data
from ddlm.data import (
    PYTHON_DOCS,
    DataConfig,
    StreamingBlocks,
    TokenBlocks,
    build_datasets,
    load_documents,
    python_docs_corpus,
)


def packed(documents, tokenizer, block_size):
    """The reference packing: ids of each document + EOS, concatenated, cut into blocks, remainder dropped."""
    ids = []
    for doc in documents:
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n = len(ids) // block_size
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)


def numbered_blocks(num_blocks, block_size=4):
    """Blocks whose first token is 10 * their index (so a block's identity is readable from any batch)."""
    return TokenBlocks(10 * torch.arange(num_blocks)[:, None] + torch.arange(block_size))


def ids_of(batch):
    return (batch[:, 0] // 10).tolist()


def words(seed, count):
    """Random lowercase words: text whose blocks are all distinct."""
    rng = np.random.default_rng(seed)
    return " ".join("".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=rng.integers(2, 9))) for _ in range(count))


class NoEOS:
    eos_token_id = None


# ----------------------------------------------------------------------------- packing


def test_packing_is_the_concatenation_with_eos_after_every_document(byte_tokenizer):
    docs = ["To be, or not to be", "", "that is the question:", "Whether 'tis nobler in the mind to suffer\n", "é ✓ 😀"]
    for block_size in (1, 5, 16):
        blocks = TokenBlocks.build(docs, byte_tokenizer, block_size)
        expected = packed(docs, byte_tokenizer, block_size)
        assert blocks[:].dtype == torch.long and torch.equal(blocks[:], expected)
        assert len(blocks) == len(expected) and blocks.block_size == block_size
    assert blocks[0].shape == (16,) and blocks[torch.tensor([1, 0])].shape == (2, 16)


def test_packing_across_tokenizer_batches(byte_tokenizer):
    docs = [f"line {i}: {'ab' * (i % 7)}" for i in range(2500)]  # more than one batch of 1024 documents
    assert torch.equal(TokenBlocks.build(iter(docs), byte_tokenizer, 13)[:], packed(docs, byte_tokenizer, 13))


def test_packing_errors(byte_tokenizer):
    with pytest.raises(ValueError, match="eos_token_id"):
        TokenBlocks.build(["text"], NoEOS(), 4)
    with pytest.raises(ValueError, match="fewer tokens than one block"):
        TokenBlocks.build(["short"], byte_tokenizer, 1000)
    with pytest.raises(ValueError, match="eos_token_id"):
        build_datasets(DataConfig(), NoEOS())


# ----------------------------------------------------------------------------- batches


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_batches_are_deterministic_and_resume_exactly():
    blocks = numbered_blocks(23)
    run = take(blocks.batches(0, 6, seed=3), 20)
    assert all(b.shape == (6, 4) and b.dtype == torch.long for b in run)
    assert all(torch.equal(a, b) for a, b in zip(run, take(blocks.batches(0, 6, seed=3), 20)))
    resumed = take(blocks.batches(7, 6, seed=3), 13)
    assert all(torch.equal(a, b) for a, b in zip(run[7:], resumed))
    assert any(not torch.equal(a, b) for a, b in zip(run, take(blocks.batches(0, 6, seed=4), 20)))
    assert [ids_of(b) for b in run[:3]] == [blocks.indices(s, 6, seed=3).tolist() for s in range(3)]


def test_every_block_once_per_epoch():
    blocks = numbered_blocks(23)  # 23 blocks, global batches of 6: batches straddle epochs
    seen = [i for batch in take(blocks.batches(0, 6), 23) for i in ids_of(batch)]  # 138 = 6 epochs
    epochs = [seen[e * 23:(e + 1) * 23] for e in range(6)]
    assert all(sorted(epoch) == list(range(23)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 6  # a fresh permutation every epoch


def test_ranks_split_the_global_batch():
    blocks = numbered_blocks(30)
    world = [take(blocks.batches(2, 12, rank=r, world_size=3, seed=1), 5) for r in range(3)]
    for step, global_batch in enumerate(take(blocks.batches(2, 12, seed=1), 5)):
        parts = [world[r][step] for r in range(3)]
        assert all(p.shape == (4, 4) for p in parts)
        assert torch.equal(torch.cat(parts), global_batch)
        assert len({i for p in parts for i in ids_of(p)}) == 12


def test_batches_errors():
    blocks = numbered_blocks(10)
    with pytest.raises(ValueError, match="divisible"):
        blocks.batches(0, 6, rank=0, world_size=4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        blocks.batches(0, 12)
    with pytest.raises(ValueError, match="rank"):
        blocks.batches(0, 4, rank=2, world_size=2)


def test_split_is_deterministic_and_disjoint():
    blocks = numbered_blocks(50)
    train, val = blocks.split(0.1, seed=5)
    assert len(val) == 5 and len(train) == 45
    assert set(ids_of(train[:])).isdisjoint(ids_of(val[:]))
    assert sorted(ids_of(train[:]) + ids_of(val[:])) == list(range(50))
    again_train, again_val = blocks.split(0.1, seed=5)
    assert torch.equal(again_val[:], val[:]) and torch.equal(again_train[:], train[:])
    assert not torch.equal(blocks.split(0.1, seed=6)[1][:], val[:])
    assert len(blocks.split(0.001)[1]) == 1  # at least one validation block
    with pytest.raises(ValueError):
        blocks.split(1.0)


# ----------------------------------------------------------------------------- local sources


@pytest.fixture
def corpus_dir(tmp_path):
    """A directory of .txt, .jsonl and .parquet files (plus an ignored .md and a nested .txt)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "corpus"
    (root / "nested").mkdir(parents=True)
    (root / "a.txt").write_text("First document.\nTwo lines.\n")
    (root / "b.txt").write_text("Second document.")
    (root / "nested" / "c.txt").write_text("Nested document.")
    (root / "notes.md").write_text("not a corpus file")
    (root / "empty.txt").write_text("  \n")
    rows = [{"text": f"json row {i}", "id": i} for i in range(3)] + [{"text": "", "id": 3}]
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.table({"text": ["parquet row 0", "parquet row 1"], "meta": ["x", "y"]}), root / "e.parquet")
    return root


def test_local_txt_file_directory_and_glob(corpus_dir):
    assert list(load_documents(DataConfig(source=str(corpus_dir / "a.txt")))) == ["First document.\nTwo lines.\n"]
    assert list(load_documents(DataConfig(source=str(corpus_dir / "*.txt")))) == ["First document.\nTwo lines.\n", "Second document."]
    assert list(load_documents(DataConfig(source=str(corpus_dir / "**" / "*.txt")))) == ["First document.\nTwo lines.\n", "Second document.", "Nested document."]
    everything = list(load_documents(DataConfig(source=str(corpus_dir))))  # sorted paths; empty documents skipped
    assert everything == ["First document.\nTwo lines.\n", "Second document.", "json row 0", "json row 1", "json row 2", "parquet row 0", "parquet row 1", "Nested document."]


def test_local_jsonl_and_parquet(corpus_dir):
    jsonl = str(corpus_dir / "d.jsonl")
    parquet = str(corpus_dir / "e.parquet")
    for streaming in (False, True):
        assert list(load_documents(DataConfig(source=jsonl, streaming=streaming))) == ["json row 0", "json row 1", "json row 2"]
        assert list(load_documents(DataConfig(source=parquet, streaming=streaming))) == ["parquet row 0", "parquet row 1"]
        with pytest.raises(ValueError, match=r"'content'.*\['text', 'id'\]"):
            list(load_documents(DataConfig(source=jsonl, text_field="content", streaming=streaming)))
        with pytest.raises(ValueError, match=r"'body'.*\['text', 'meta'\]"):
            list(load_documents(DataConfig(source=parquet, text_field="body", streaming=streaming)))


def test_missing_local_sources(tmp_path):
    for source in [str(tmp_path / "absent.txt"), str(tmp_path / "*.jsonl"), "./no/such/dir"]:
        with pytest.raises(FileNotFoundError, match="absent.txt|jsonl|no/such/dir"):
            load_documents(DataConfig(source=source))
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported"):
        load_documents(DataConfig(source=str(tmp_path / "data.csv")))
    with pytest.raises(ValueError, match="validation_split"):
        load_documents(DataConfig(source=str(tmp_path)), split="validation")


def test_text_data_files_are_sources(text_data, byte_tokenizer):
    docs = list(load_documents(DataConfig(source=str(text_data / "*.txt"))))
    assert docs == [(text_data / name).read_text(encoding="utf-8") for name in ("tinyshakespeare.txt", "wikitext2.valid.txt")]
    train, val = build_datasets(DataConfig(source=str(text_data / "tinyshakespeare.txt"), block_size=256, validation_fraction=0.05), byte_tokenizer)
    full = packed(docs[:1], byte_tokenizer, 256)
    assert len(train) + len(val) == len(full) and len(val) == round(0.05 * len(full))
    assert next(train.batches(0, 8)).shape == (8, 256)


def test_python_docs_is_the_default_source(monkeypatch):
    monkeypatch.setattr(data, "python_docs_corpus", lambda: ["topic", "", "module docs"])
    assert DataConfig().source == PYTHON_DOCS
    assert list(load_documents(DataConfig())) == ["topic", "module docs"]


def test_hub_sources_go_through_load_dataset(monkeypatch, byte_tokenizer):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, *, split, streaming):
        calls.append((path, name, split, streaming))
        return datasets.Dataset.from_dict({"content": [f"{split} text {i} " + words(i, 40) for i in range(20)], "id": list(range(20))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    config = DataConfig(source="owner/corpus:en", text_field="content", split="train[:90%]", validation_split="validation", block_size=16)
    train, val = build_datasets(config, byte_tokenizer)
    assert calls == [("owner/corpus", "en", "train[:90%]", False), ("owner/corpus", "en", "validation", False)]
    assert isinstance(train, TokenBlocks) and isinstance(val, TokenBlocks)
    assert torch.equal(val[:], packed([f"validation text {i} " + words(i, 40) for i in range(20)], byte_tokenizer, 16))
    with pytest.raises(ValueError, match=r"\['content', 'id'\]"):
        list(load_documents(DataConfig(source="owner/corpus")))


# ----------------------------------------------------------------------------- validation


def test_held_out_validation_blocks_are_disjoint(tmp_path, byte_tokenizer):
    (tmp_path / "text.txt").write_text(words(0, 3000))
    config = DataConfig(source=str(tmp_path / "text.txt"), block_size=32, validation_fraction=0.1)
    train, val = build_datasets(config, byte_tokenizer, seed=1)
    full = TokenBlocks.build(load_documents(config), byte_tokenizer, 32)
    assert len(train) + len(val) == len(full) and len(val) == round(0.1 * len(full))
    rows = lambda blocks: {tuple(row) for row in blocks[:].tolist()}
    assert len(rows(full)) == len(full)  # every block distinct, so disjoint rows mean disjoint blocks
    assert rows(train).isdisjoint(rows(val)) and rows(train) | rows(val) == rows(full)


def test_validation_split_of_a_local_source_is_a_path(tmp_path, byte_tokenizer):
    (tmp_path / "train.txt").write_text(words(1, 500))
    (tmp_path / "valid.txt").write_text(words(2, 200))
    config = DataConfig(source=str(tmp_path / "train.txt"), validation_split=str(tmp_path / "valid.txt"), block_size=32)
    train, val = build_datasets(config, byte_tokenizer)
    assert torch.equal(train[:], packed([words(1, 500)], byte_tokenizer, 32))
    assert torch.equal(val[:], packed([words(2, 200)], byte_tokenizer, 32))


# ----------------------------------------------------------------------------- streaming


def test_streaming_txt_batches_are_the_packed_blocks_in_order(tmp_path, byte_tokenizer):
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text(words(i, 400))
    config = DataConfig(source=str(tmp_path / "*.txt"), streaming=True, block_size=16)
    train, val = build_datasets(config, byte_tokenizer)
    expected = packed([words(i, 400) for i in range(3)], byte_tokenizer, 16)
    assert isinstance(train, StreamingBlocks) and len(val) == data.STREAM_VALIDATION_BLOCKS
    assert torch.equal(val[:], expected[:64])  # the first blocks are validation, excluded from training
    stream = expected[64:]
    epoch = len(stream)
    steps = epoch // 8 + 3  # runs past the end of the corpus into the second epoch
    run = take(train.batches(0, 8), steps)
    for s, batch in enumerate(run):
        assert torch.equal(batch, stream[[(s * 8 + j) % epoch for j in range(8)]])
    resumed = take(train.batches(steps - 4, 8), 4)
    assert all(torch.equal(a, b) for a, b in zip(run[-4:], resumed))
    halves = [next(train.batches(5, 8, rank=r, world_size=2)) for r in range(2)]
    assert torch.equal(torch.cat(halves), run[5])
    with pytest.raises(ValueError, match="divisible"):
        train.batches(0, 8, world_size=3)


def test_streaming_jsonl_with_a_validation_split(tmp_path, byte_tokenizer):
    rows = [words(10 + i, 30) for i in range(40)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    (tmp_path / "valid.txt").write_text(words(99, 100))
    config = DataConfig(source=str(tmp_path / "train.jsonl"), validation_split=str(tmp_path / "valid.txt"), streaming=True, block_size=16)
    train, val = build_datasets(config, byte_tokenizer)
    assert torch.equal(val[:], packed([words(99, 100)], byte_tokenizer, 16)[:64])
    expected = packed(rows, byte_tokenizer, 16)
    assert torch.equal(torch.cat(take(train.batches(0, 4), 10)), expected[:40])
    assert torch.equal(next(train.batches(7, 4, rank=1, world_size=2)), expected[30:32])


# ----------------------------------------------------------------------------- cache


def test_cache_is_read_back_and_invalidated(tmp_path, byte_tokenizer, monkeypatch):
    text = tmp_path / "text.txt"
    text.write_text(words(3, 800))
    config = DataConfig(source=str(text), block_size=32, cache_dir=str(tmp_path / "cache"))
    calls = []
    tokenize = data._tokenize
    monkeypatch.setattr(data, "_tokenize", lambda tok, texts: calls.append(len(texts)) or tokenize(tok, texts))
    train, val = build_datasets(config, byte_tokenizer)
    assert calls and len(os.listdir(config.cache_dir)) == 1

    monkeypatch.setattr(data, "_tokenize", lambda tok, texts: pytest.fail("tokenised although cached"))
    cached_train, cached_val = build_datasets(config, byte_tokenizer)
    assert torch.equal(cached_train[:], train[:]) and torch.equal(cached_val[:], val[:])

    monkeypatch.setattr(data, "_tokenize", lambda tok, texts: calls.append(len(texts)) or tokenize(tok, texts))
    calls.clear()
    text.write_text(words(3, 800) + " more")
    build_datasets(config, byte_tokenizer)
    assert calls and len(os.listdir(config.cache_dir)) == 2  # the changed file has its own entry
    calls.clear()
    build_datasets(DataConfig(source=str(text), block_size=16, cache_dir=config.cache_dir), byte_tokenizer)
    assert calls and len(os.listdir(config.cache_dir)) == 3


def test_cache_write_is_atomic(tmp_path, byte_tokenizer, monkeypatch):
    (tmp_path / "text.txt").write_text(words(4, 300))
    cache_dir = tmp_path / "cache"

    def failing_save(tensors, path):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(data, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        build_datasets(DataConfig(source=str(tmp_path / "text.txt"), block_size=32, cache_dir=str(cache_dir)), byte_tokenizer)
    assert os.listdir(cache_dir) == []


# ----------------------------------------------------------------------------- python-docs


@pytest.fixture(scope="module")
def python_docs():
    """The corpus, built once, with the modules its construction imported and its build time in seconds."""
    before = set(sys.modules)
    start = time.perf_counter()
    corpus = python_docs_corpus()
    return corpus, set(sys.modules) - before, time.perf_counter() - start


def test_python_docs_corpus(python_docs):
    from pydoc_data.topics import topics

    corpus, imported, _ = python_docs
    assert len(corpus) > 500 and sum(map(len, corpus)) > 1_000_000
    assert all(isinstance(doc, str) and doc for doc in corpus)
    assert corpus[: len(topics)] == [topics[name] for name in sorted(topics)]
    assert any(doc.startswith('The "assert" statement') for doc in corpus[: len(topics)])
    assert any(doc.startswith("JSON (JavaScript Object Notation)") for doc in corpus)
    # reading a source file with a coding cookie loads its codec (encodings.*); no library module runs
    assert {name for name in imported if not name.startswith("encodings.")} <= {"pydoc_data", "pydoc_data.topics"}
    assert "antigravity" not in sys.modules and "this" not in sys.modules


def test_python_docs_modules_are_deterministic(python_docs):
    corpus, _, _ = python_docs
    json_docs = data._module_documents(Path(sysconfig.get_paths()["stdlib"]) / "json")
    assert json_docs == data._module_documents(Path(sysconfig.get_paths()["stdlib"]) / "json")
    start = corpus.index(json_docs[0])
    assert corpus[start:start + len(json_docs)] == json_docs  # the json package's files, in sorted order


def test_module_documents_read_docstrings_without_importing(tmp_path):
    (tmp_path / "b.py").write_text('"""Module b."""\nimport sys\nsys.exit("imported!")\n\nclass C:\n    """Class C."""\n    def f(self):\n        """Method f."""\n\nif True:\n    def g():\n        """Function g."""\n')
    (tmp_path / "a.py").write_text('def h():\n    """Function h."""\n')
    (tmp_path / "broken.py").write_text('"""Broken."""\ndef (:\n')
    (tmp_path / "nodocs.py").write_text("x = 1\n")
    for skipped in ("test", "tests", "site-packages"):
        (tmp_path / skipped).mkdir()
        (tmp_path / skipped / "m.py").write_text('"""Skipped."""\n')
    assert data._module_documents(tmp_path) == ["Function h.", "Module b.\n\nClass C.\n\nMethod f.\n\nFunction g."]
