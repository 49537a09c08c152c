"""Datasets + tokenizers -> packed token blocks for the training loop.

Documents (one string each) come from the offline ``python-docs`` corpus, local files
(.txt: one document per file; .json/.jsonl/.parquet: one per row) or a hub dataset. They are
tokenised without special tokens, an EOS id is appended after every document, the ids are
concatenated and cut into ``block_size`` blocks (the final remainder is dropped).

Several sources (``DataConfig.sources``) are packed one by one (no block mixes two sources) and
concatenated; a source may carry a class label, which every block of it keeps (``TokenBlocks.labels``)
for class-conditional training.

``TokenBlocks`` holds the blocks in memory; its ``batches`` is a pure function of
``(seed, step)``, so a resumed run sees exactly the batches an uninterrupted one would.
``StreamingBlocks`` offers the same ``batches`` for corpora read as a stream.
"""

from __future__ import annotations

import ast
import functools
import glob
import hashlib
import itertools
import json
import dataclasses
import os
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..core.checks import is_int, is_number, is_text, looks_like_path, refuse_invalid

PYTHON_DOCS = "python-docs"  # the offline default corpus
STREAM_VALIDATION_BLOCKS = 64  # validation blocks materialised from a stream
SUFFIXES = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_CACHE_VERSION = 1
FORMATS = ("text", "sft")  # DataConfig.format: packed documents, or prompt/response examples


@dataclass
class DataConfig:
    """Where training text comes from and how it is cut into blocks.

    ``source``: ``"python-docs"``, a local file, directory or glob (.txt, .json/.jsonl, .parquet),
    or a hub dataset ``"name"`` / ``"name:config"``. ``validation_split`` names a hub split for a
    hub source and a local file, directory or glob otherwise; ``None`` holds out
    ``validation_fraction`` of the blocks (the first ``STREAM_VALIDATION_BLOCKS`` of a stream).
    ``block_size`` is in tokens.

    ``sources``: instead of ``source``, a list of sources ``{"source": PATH_OR_NAME, "label": INT}``
    (``label`` optional; given for all of them or for none), each read as ``source`` would be and
    packed on its own, in order. Labels are class ids for a class-conditional model (``model.num_classes``).
    With sources the validation blocks are a held-out ``validation_fraction`` (no ``validation_split``)
    and ``streaming`` is off.

    ``format``: ``"text"`` (documents packed into blocks, as above) or ``"sft"`` (prompt/response examples for
    supervised fine-tuning, one per block, read by ``ddlm.text.instructions``: .jsonl/.json/.parquet files or a hub
    dataset of ``{"messages": [...]}`` or ``{"prompt", "response"}`` rows). ``drop_long`` (sft only): drop the
    examples that do not fit a block, reporting how many, instead of refusing the data.
    """

    source: str = PYTHON_DOCS
    text_field: str = "text"
    split: str = "train"
    validation_split: str | None = None
    validation_fraction: float = 0.01
    streaming: bool = False
    block_size: int = 1024
    cache_dir: str | None = None
    sources: list[dict] | None = None
    format: str = "text"
    drop_long: bool = False

    def __post_init__(self):
        refuse_invalid("data", {
            "source": (is_text(self.source), "a non-empty corpus name, path or glob"),
            "text_field": (is_text(self.text_field), "a non-empty column name"),
            "split": (is_text(self.split), "a non-empty split name"),
            "validation_split": (self.validation_split is None or is_text(self.validation_split), "null or a non-empty split name or path"),
            "validation_fraction": (is_number(self.validation_fraction) and 0 < self.validation_fraction < 1, "a number in (0, 1)"),
            "streaming": (isinstance(self.streaming, bool), "true or false"),
            "block_size": (is_int(self.block_size, 2), "an int >= 2"),
            "cache_dir": (self.cache_dir is None or is_text(self.cache_dir), "null or a non-empty path"),
            "sources": (self.sources is None or (isinstance(self.sources, list) and len(self.sources) > 0),
                        "null, or a non-empty list of {source: PATH, label: CLASS} mappings (a label for every source or none)"),
            "format": (self.format in FORMATS, f"one of {FORMATS}"),
            "drop_long": (isinstance(self.drop_long, bool), "true or false"),
        }, self)
        if self.sources is not None:
            self._check_sources()
        if self.format == "sft":
            conflicts = {"sources": self.sources is not None, "streaming": self.streaming, "source": self.source == PYTHON_DOCS}
            if bad := [name for name, conflict in conflicts.items() if conflict]:
                raise ValueError(f"data.format='sft' reads prompt/response rows, in memory, from data.source (a .jsonl, .json "
                                 f"or .parquet file, or a hub dataset; not the python-docs text): set data.source and leave "
                                 f"{', '.join('data.' + n for n in bad if n != 'source') or 'the rest'} unset")
        elif self.drop_long:
            raise ValueError("data.drop_long applies to SFT examples (data.format='sft'); text is packed into blocks")

    def _check_sources(self) -> None:
        """ValueError naming the first malformed entry of ``sources`` or the setting it conflicts with."""
        if not isinstance(self.sources, list) or not self.sources:
            raise ValueError(f"data.sources must be a non-empty list of {{source: PATH, label: INT}} entries, got {self.sources!r}")
        for i, entry in enumerate(self.sources):
            if not isinstance(entry, dict):
                raise ValueError(f"data.sources[{i}] must be a mapping {{source: PATH, label: INT}}, got {entry!r}")
            if unknown := sorted(set(entry) - {"source", "label"}, key=str):
                raise ValueError(f"data.sources[{i}] has unknown keys {unknown}; valid keys: ['label', 'source']")
            if not is_text(entry.get("source")):
                raise ValueError(f"data.sources[{i}].source must be a non-empty corpus name, path or glob, got {entry.get('source')!r}")
            if "label" in entry and not is_int(entry["label"], 0):
                raise ValueError(f"data.sources[{i}].label must be an int >= 0 (a class id), got {entry['label']!r}")
        if len({"label" in entry for entry in self.sources}) > 1:
            raise ValueError("data.sources: give a label to every source or to none")
        conflicts = {"source": self.source != PYTHON_DOCS, "validation_split": self.validation_split is not None, "streaming": self.streaming}
        if bad := [name for name, conflict in conflicts.items() if conflict]:
            raise ValueError(f"data.sources replaces data.source, holds out validation_fraction of its blocks and is read "
                             f"in memory: leave {', '.join('data.' + name for name in bad)} unset")

    def check_local_files(self) -> None:
        """FileNotFoundError (ValueError for an unsupported file type) naming the first local source, or local
        ``validation_split``, that holds no readable file; hub datasets are not looked up."""
        for i, config in enumerate(self.per_source()):
            name = f"data.sources[{i}].source" if self.sources else "data.source"
            paths = [(name, config.source)]
            if config.validation_split is not None:  # a local path unless the source is a hub dataset
                paths.append(("data.validation_split", _split_source(config, "validation")[0]))
            for key, path in paths:
                if _is_local(path):
                    try:
                        _local_files(path)
                    except (FileNotFoundError, ValueError) as error:
                        raise type(error)(f"{key}: {error}") from None

    @property
    def labels(self) -> list[int] | None:
        """The class label of each source, or None for unlabelled data."""
        if not self.sources or "label" not in self.sources[0]:
            return None
        return [entry["label"] for entry in self.sources]

    def per_source(self) -> list[DataConfig]:
        """One config per source (``source`` set, ``sources`` unset), or ``[self]`` without sources."""
        if not self.sources:
            return [self]
        return [dataclasses.replace(self, source=entry["source"], sources=None) for entry in self.sources]


# ----------------------------------------------------------------------------- python-docs


def python_docs_corpus() -> list[str]:
    """The CPython documentation every installation carries: one document per pydoc topic, then one per module.

    Topics are the values of ``pydoc_data.topics.topics`` (sorted by name). Modules are the .py files
    under the standard library (sorted paths; site-packages and test directories skipped), read with
    ``ast`` and never imported; a module's document is its docstrings in source order joined with
    blank lines. Files that fail to parse are skipped.
    """
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)] + list(_stdlib_documents())


@functools.lru_cache(maxsize=1)
def _stdlib_documents() -> tuple[str, ...]:
    """The standard library's module documents, parsed once per process: parsing takes seconds, and a
    training run reads the corpus twice (to train its tokenizer, then to tokenise it)."""
    return tuple(_module_documents(Path(sysconfig.get_paths()["stdlib"])))


_SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _module_documents(root: Path) -> list[str]:
    """The docstrings of every .py file under ``root``, one document per file with any, in sorted path order."""
    paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        paths += [Path(directory, name) for name in sorted(files) if name.endswith(".py")]
    documents = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old modules
        for path in paths:
            try:
                tree = ast.parse(path.read_bytes())
            except (OSError, SyntaxError, ValueError):
                continue
            docstrings = list(_docstrings(tree))
            if docstrings:
                documents.append("\n\n".join(docstrings))
    return documents


def _docstrings(node: ast.AST) -> Iterator[str]:
    """Docstrings of the module, classes and functions in ``node``, depth first in source order (statements only)."""
    if isinstance(node, _DOCUMENTED) and (doc := ast.get_docstring(node)):
        yield doc
    for field in ("body", "handlers", "orelse", "finalbody", "cases"):
        for child in getattr(node, field, ()):
            yield from _docstrings(child)


# ----------------------------------------------------------------------------- documents


def load_documents(config: DataConfig, split: str = "train") -> Iterable[str]:
    """The documents (one string each) of ``split`` ("train" or "validation"), empty ones skipped.

    A local path or glob is resolved now (``FileNotFoundError`` if nothing matches); files and hub
    datasets are read lazily as the result is iterated (``ValueError`` naming the available columns
    if ``config.text_field`` is not one of them). With ``config.sources``: every source's documents in order.
    """
    if config.sources:
        if split != "train":
            raise ValueError("data.sources have no validation split (validation blocks are held out of the training blocks)")
        return itertools.chain.from_iterable([load_documents(one, split) for one in config.per_source()])
    source, hub_split = _split_source(config, split)
    if source == PYTHON_DOCS:
        return _read_python_docs()
    if _is_local(source):
        return _read_local(source, _local_files(source), config)
    return _read_hub(source, hub_split, config)


def _read_python_docs() -> Iterator[str]:
    for doc in python_docs_corpus():
        if doc.strip():
            yield doc


def _split_source(config: DataConfig, split: str) -> tuple[str, str | None]:
    """(source, hub split) of the train or validation documents."""
    if split == "train":
        return config.source, config.split
    if split != "validation":
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    if config.validation_split is None:
        raise ValueError("the config names no validation_split (validation blocks are held out of the training blocks)")
    if config.source != PYTHON_DOCS and not _is_local(config.source):
        return config.source, config.validation_split
    return config.validation_split, None


def _is_local(source: str) -> bool:
    """A local file, directory or glob rather than the offline corpus or a hub dataset."""
    return source != PYTHON_DOCS and (looks_like_path(source) or any(c in source for c in "*?[") or Path(source).suffix in SUFFIXES)


def _local_files(source: str) -> list[Path]:
    """The files a local source names, sorted: the file itself, a directory's supported files (recursively), or a glob's."""
    path = Path(os.path.expanduser(source))
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise ValueError(f"{source!r}: unsupported file type (use one of {sorted(SUFFIXES)})")
        return [path]
    candidates = path.rglob("*") if path.is_dir() else map(Path, glob.glob(str(path), recursive=True))
    files = sorted(p for p in candidates if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(SUFFIXES)} file found at {source!r}")
    return files


def _read_local(source: str, files: list[Path], config: DataConfig) -> Iterator[str]:
    """Documents of local files in order: a .txt file is one document; json and parquet rows go through ``datasets``."""
    for kind, group in itertools.groupby(files, key=lambda p: SUFFIXES[p.suffix]):
        group = list(group)
        if kind == "text":
            for path in group:
                text = path.read_text(encoding="utf-8")
                if text.strip():
                    yield text
        else:
            from datasets import load_dataset

            dataset = load_dataset(kind, data_files=[str(p) for p in group], split="train", streaming=config.streaming)
            yield from _column_texts(dataset, config.text_field, source)


def _read_hub(name: str, split: str, config: DataConfig) -> Iterator[str]:
    """Documents of the hub dataset ``"name"`` or ``"name:config"``."""
    from datasets import load_dataset

    path, _, subset = name.partition(":")
    dataset = load_dataset(path, subset or None, split=split, streaming=config.streaming)
    yield from _column_texts(dataset, config.text_field, name)


def _column_texts(dataset, field: str, name: str) -> Iterator[str]:
    """The non-empty strings of column ``field`` of a (possibly streaming) ``datasets`` dataset."""
    columns = dataset.column_names
    if columns is None:  # a stream whose features are only known once read
        columns = list(next(iter(dataset), {}))
    if field not in columns:
        raise ValueError(f"{name}: no text field {field!r}; available columns: {columns}")
    for batch in dataset.select_columns([field]).iter(batch_size=1000):
        yield from (text for text in batch[field] if text and text.strip())


# ----------------------------------------------------------------------------- packing


def eos_id(tokenizer) -> int:
    """The EOS token that separates documents (an AR model's context for the first token of a block)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id (documents are joined with EOS)")
    return int(eos)


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (one batched call)."""
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]


def _batched(documents: Iterable[str], max_docs: int = 1024, max_chars: int = 1 << 22) -> Iterator[list[str]]:
    """Consecutive documents in lists of at most ``max_docs`` documents or about ``max_chars`` characters."""
    batch, chars = [], 0
    for doc in documents:
        batch.append(doc)
        chars += len(doc)
        if len(batch) == max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _pack(documents: Iterable[str], tokenizer, block_size: int, progress: bool = False) -> Iterator[np.ndarray]:
    """Packed blocks in corpus order, Int32[k, block_size] per tokenised batch of documents; the final remainder is dropped."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    eos = eos_id(tokenizer)
    carry = np.empty(0, dtype=np.int32)
    for batch in _batched(tqdm(documents, desc="tokenising", unit="doc", disable=not progress)):
        ids = _tokenize(tokenizer, batch)
        flat = np.fromiter(itertools.chain.from_iterable(seq + [eos] for seq in ids), dtype=np.int32, count=sum(map(len, ids)) + len(ids))
        tokens = np.concatenate([carry, flat])
        whole = len(tokens) // block_size * block_size
        if whole:
            yield tokens[:whole].reshape(-1, block_size)
        carry = tokens[whole:]


class TokenBlocks:
    """Fixed-length blocks of token ids, Long[num_blocks, block_size]; documents joined with EOS between them.

    Stored as int32, returned as int64 (Long) on access. ``labels``: Long[num_blocks] class ids of
    labelled blocks (``DataConfig.sources`` with labels), else None; kept by ``split`` and returned by
    ``batches(..., with_labels=True)`` (the cache file holds tokens only).
    """

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor | None = None):
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [num_blocks, block_size], got shape {tuple(tokens.shape)}")
        if labels is not None and tuple(labels.shape) != tokens.shape[:1]:
            raise ValueError(f"labels must be [num_blocks] = [{tokens.shape[0]}], got shape {tuple(labels.shape)}")
        self.tokens = tokens.to(torch.int32).contiguous()
        self.labels = None if labels is None else labels.long()

    @classmethod
    def concatenate(cls, parts: list[TokenBlocks], labels: list[int] | None = None) -> TokenBlocks:
        """The blocks of ``parts`` in order; with ``labels``, every block of ``parts[i]`` labelled ``labels[i]``."""
        tokens = torch.cat([part.tokens for part in parts])
        if labels is None:
            return cls(tokens)
        return cls(tokens, torch.cat([torch.full((len(part),), label, dtype=torch.long) for part, label in zip(parts, labels)]))

    @classmethod
    def build(cls, documents: Iterable[str], tokenizer, block_size: int, *, cache_path: str | None = None, progress: bool = False) -> TokenBlocks:
        """Tokenise and pack ``documents`` (or load ``cache_path`` if it exists; else write it there)."""
        if cache_path is not None and os.path.exists(cache_path):
            blocks = cls.load(cache_path)
            if blocks.block_size != block_size:
                raise ValueError(f"{cache_path} holds blocks of {blocks.block_size} tokens, not {block_size}")
            return blocks
        chunks = list(_pack(documents, tokenizer, block_size, progress))
        if not chunks:
            raise ValueError(f"the documents hold fewer tokens than one block of {block_size}")
        blocks = cls(torch.from_numpy(np.concatenate(chunks)))
        if cache_path is not None:
            blocks.save(cache_path)
        return blocks

    def save(self, path: str) -> None:
        """Write the blocks to a safetensors file atomically (a temporary file beside it, then ``os.replace``)."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
        os.close(fd)
        try:
            save_file({"tokens": self.tokens}, tmp)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str) -> TokenBlocks:
        return cls(load_file(path)["tokens"])

    @property
    def block_size(self) -> int:
        return self.tokens.shape[1]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        """Long[block_size] for an integer index, Long[k, block_size] for a slice or index tensor."""
        return self.tokens[index].long()

    def split(self, validation_fraction: float, seed: int = 0) -> tuple[TokenBlocks, TokenBlocks]:
        """(train, validation): a seeded random ``validation_fraction`` of the blocks (at least one) held out; order kept."""
        return tuple(TokenBlocks(self.tokens[part], None if self.labels is None else self.labels[part])
                     for part in held_out_split(len(self), validation_fraction, seed))

    def indices(self, step: int, global_batch_size: int, seed: int = 0) -> torch.Tensor:
        """Block indices of the global batch of ``step``, Long[global_batch_size].

        Positions ``step * B .. (step + 1) * B - 1`` of the concatenated epochs, each epoch a permutation
        of the blocks seeded by ``(seed, epoch)``.
        """
        positions = step * global_batch_size + np.arange(global_batch_size)
        epochs = positions // len(self)
        out = np.empty(global_batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            out[here] = _epoch_permutation(len(self), seed, int(epoch))[positions[here] % len(self)]
        return torch.from_numpy(out)

    def batches(self, start_step: int, global_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                with_labels: bool = False) -> Iterator[torch.Tensor]:
        """Long[global_batch_size // world_size, block_size] for steps start_step, start_step + 1, ... (endless).

        Rank ``rank`` takes its contiguous slice of each step's global batch (see ``indices``).
        with_labels: yield ``(tokens, labels)`` pairs, labels Long[global_batch_size // world_size]
        (labelled blocks only).
        """
        local = _check_batching(start_step, global_batch_size, rank, world_size)
        if len(self) < global_batch_size:
            raise ValueError(f"{len(self)} blocks are fewer than one global batch of {global_batch_size}")
        if with_labels and self.labels is None:
            raise ValueError("with_labels=True needs labelled blocks (data.sources with a label each)")

        def generate():
            for step in itertools.count(start_step):
                index = self.indices(step, global_batch_size, seed)[rank * local:(rank + 1) * local]
                yield (self[index], self.labels[index]) if with_labels else self[index]

        return generate()


def held_out_split(count: int, validation_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices Long[k] of ``count`` items, each sorted: a seeded random ``validation_fraction`` of them
    (at least one) held out."""
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    num_val = max(1, round(validation_fraction * count))
    if num_val >= count:
        raise ValueError(f"{count} blocks cannot hold out {num_val} and keep any for training")
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))).permutation(count)
    return tuple(torch.from_numpy(np.sort(part)) for part in (order[num_val:], order[:num_val]))


@functools.lru_cache(maxsize=2)
def _epoch_permutation(num_blocks: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the blocks in ``epoch``, Int64[num_blocks]."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, epoch))).permutation(num_blocks)


def _check_batching(start_step: int, global_batch_size: int, rank: int, world_size: int) -> int:
    """The per-rank batch size, after checking the arguments of ``batches``."""
    if start_step < 0 or global_batch_size < 1 or world_size < 1:
        raise ValueError(f"need start_step >= 0, global_batch_size >= 1, world_size >= 1; got {start_step}, {global_batch_size}, {world_size}")
    if global_batch_size % world_size:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by world_size {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return global_batch_size // world_size


class StreamingBlocks:
    """Blocks packed on the fly from a stream of documents, with the ``batches`` of ``TokenBlocks``.

    ``documents()`` returns a fresh iterable of the corpus each time it is called. Blocks are taken
    in corpus order, epoch after epoch (each epoch packed on its own), after dropping the first
    ``skip_blocks`` of every epoch (held out for validation). Every rank reads the whole stream.
    """

    def __init__(self, documents: Callable[[], Iterable[str]], tokenizer, block_size: int, *, skip_blocks: int = 0):
        eos_id(tokenizer)
        self.documents = documents
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.skip_blocks = skip_blocks

    def _blocks(self) -> Iterator[np.ndarray]:
        """Int32[block_size] blocks of the endless stream of epochs."""
        while True:
            count = 0
            for chunk in _pack(self.documents(), self.tokenizer, self.block_size):
                for block in chunk:
                    count += 1
                    if count > self.skip_blocks:
                        yield block
            if count <= self.skip_blocks:
                raise ValueError(f"the stream holds {count} blocks of {self.block_size} tokens, none left after {self.skip_blocks} held out")

    def batches(self, start_step: int, global_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                with_labels: bool = False) -> Iterator[torch.Tensor]:
        """Long[global_batch_size // world_size, block_size] for steps start_step, ... (endless).

        Step s covers blocks ``s * B .. (s + 1) * B - 1`` of the stream; resuming re-reads and skips the
        earlier ones. ``seed`` is unused (the stream is read in order) and a stream has no labels
        (``with_labels`` must be False); both keep the signature of ``TokenBlocks``.
        """
        local = _check_batching(start_step, global_batch_size, rank, world_size)
        if with_labels:
            raise ValueError("streamed blocks carry no labels (labelled data.sources are read in memory)")

        def generate():
            stream = self._blocks()
            for _ in range(start_step * global_batch_size):
                next(stream)
            while True:
                step = [next(stream) for _ in range(global_batch_size)]
                yield torch.from_numpy(np.stack(step[rank * local:(rank + 1) * local])).long()

        return generate()


# ----------------------------------------------------------------------------- datasets


def build_datasets(config: DataConfig, tokenizer, *, seed: int = 0, progress: bool = False) -> tuple[TokenBlocks | StreamingBlocks, TokenBlocks]:
    """(train, validation) blocks of ``config.block_size`` tokens.

    In memory, train blocks are cached under ``config.cache_dir`` (if set); validation is the
    ``validation_split`` documents or a held-out ``validation_fraction`` of the blocks (at least one).
    Streaming, train is a ``StreamingBlocks`` and validation the first ``STREAM_VALIDATION_BLOCKS``
    blocks of the validation split, or of the stream (then excluded from training).
    With ``config.sources``: each source packed (and cached) on its own, the blocks concatenated in
    order (labelled if the sources are), then a ``validation_fraction`` held out.
    """
    eos_id(tokenizer)
    block_size = config.block_size
    if config.sources:
        parts = [_build_blocks(one, tokenizer, "train", progress) for one in config.per_source()]
        return TokenBlocks.concatenate(parts, config.labels).split(config.validation_fraction, seed)
    if config.streaming:
        if config.validation_split is not None:
            return StreamingBlocks(lambda: load_documents(config, "train"), tokenizer, block_size), _first_blocks(load_documents(config, "validation"), tokenizer, block_size)
        validation = _first_blocks(load_documents(config, "train"), tokenizer, block_size)
        return StreamingBlocks(lambda: load_documents(config, "train"), tokenizer, block_size, skip_blocks=len(validation)), validation

    train = _build_blocks(config, tokenizer, "train", progress)
    if config.validation_split is not None:
        return train, _build_blocks(config, tokenizer, "validation", progress)
    return train.split(config.validation_fraction, seed)


def _build_blocks(config: DataConfig, tokenizer, split: str, progress: bool) -> TokenBlocks:
    """The packed blocks of one source's ``split``, cached under ``config.cache_dir`` if set."""
    path = None if config.cache_dir is None else os.path.join(config.cache_dir, f"blocks-{_cache_key(config, tokenizer, split)}.safetensors")
    return TokenBlocks.build(load_documents(config, split), tokenizer, config.block_size, cache_path=path, progress=progress)


def _first_blocks(documents: Iterable[str], tokenizer, block_size: int) -> TokenBlocks:
    """The first ``STREAM_VALIDATION_BLOCKS`` packed blocks of ``documents`` (reading no further than needed)."""
    rows = list(itertools.islice((row for chunk in _pack(documents, tokenizer, block_size) for row in chunk), STREAM_VALIDATION_BLOCKS))
    if not rows:
        raise ValueError(f"the validation documents hold fewer tokens than one block of {block_size}")
    return TokenBlocks(torch.from_numpy(np.stack(rows)))


def _cache_key(config: DataConfig, tokenizer, split: str) -> str:
    """Hex digest of what the blocks depend on: source (files' sizes and mtimes), field, tokenizer, EOS, block size."""
    source, hub_split = _split_source(config, split)
    key = {"version": _CACHE_VERSION, "source": source, "split": hub_split, "text_field": config.text_field, "eos": eos_id(tokenizer), "block_size": config.block_size}
    if source == PYTHON_DOCS:
        key["python"] = [sys.version, sysconfig.get_paths()["stdlib"]]
    elif _is_local(source):
        key["files"] = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in _local_files(source)]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    key["tokenizer"] = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
