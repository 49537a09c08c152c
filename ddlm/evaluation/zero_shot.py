"""The zero-shot perplexity suite of the SEDD and MDLM papers: datasets, detokenisers, and two blocking protocols.

Each benchmark names the hub dataset the papers load (id, config, split, text field), how a row of
it becomes text (the published detokeniser of the GPT-2 evaluation code that SEDD and MDLM both
use), and how a local ``.txt`` line becomes a row, so the same path runs offline on local files in
the hub's formats (.parquet, .json/.jsonl: one row per record; .txt: one row per line).

Two protocols cut the detokenised rows into the blocks a model scores (L = the model's length):

``sedd`` (SEDD / GPT-2): each row is tokenised without special tokens and followed by one EOS
(empty rows too, as the reference code does); all rows are concatenated in order and cut into
blocks of L tokens; the remainder shorter than L is dropped. Every token of a block is scored.
Splits: test, except WikiText-2, scored on its train split (WT2 and WT103 share their test set).

``mdlm`` (MDLM's ``dataloader.py``): wrapped benchmarks tokenise each row without special tokens,
append EOS, concatenate, cut the stream into chunks of L - 2 tokens (remainder dropped) and make
each block ``[BOS] chunk [EOS]``. A non-wrapped benchmark (LM1B, as in MDLM's LM1B config) makes one
block per row: ``[BOS] ids[:L-2] [EOS]``, the rest of a longer row dropped; MDLM pads it to L and
leaves the padding out of the loss, ddlm scores the unpadded block (its models have no PAD token).
BOS and EOS are scored like any other token, as in MDLM. Splits: validation, except LAMBADA, LM1B
and AG News (test). A tokenizer without a BOS token uses EOS as BOS (GPT-2's BOS is its EOS).

Two details of the reference code are not copied: it concatenates within ``datasets.map`` batches
of 1000 rows (per worker), dropping a remainder per batch; ddlm concatenates the whole split.
"""

from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..core.checks import check_count
from ..text.corpora import eos_id
from ..text.scores import check_scorable
from .scoring import DATASET_MIN_BLOCKS, BoundTotals, lambada

PROTOCOLS = ("sedd", "mdlm")
LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".txt")
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}

# ----------------------------------------------------------------------------- detokenisers
# Each is an ordered list of steps: ("str", old, new) is str.replace, ("re", pattern, repl) is re.sub.

_WIKITEXT_STEPS = [
    ("str", "s '", "s'"),
    ("re", r"/' [0-9]/", r"/'[0-9]/"),  # as published: matches the literal "/' 5/", rewritten to "/'[0-9]/"
    ("str", " @-@ ", "-"), ("str", " @,@ ", ","), ("str", " @.@ ", "."),
    ("str", " : ", ": "), ("str", " ; ", "; "), ("str", " . ", ". "),
    ("str", " ! ", "! "), ("str", " ? ", "? "), ("str", " , ", ", "),
    ("re", r"\(\s*([^\)]*?)\s*\)", r"(\1)"), ("re", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("re", r"{\s*([^}]*?)\s*}", r"{\1}"), ("re", r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    ("re", r"'\s*([^']*?)\s*'", r"'\1'"),
    ("str", "= = = =", "===="), ("str", "= = =", "==="), ("str", "= =", "=="),
    ("str", " \u00b0 ", "\u00b0"), ("str", " \n", "\n"), ("str", "\n ", "\n"),
    ("str", " N ", " 1 "), ("str", " 's", "'s"),
]

_PTB_STEPS = [
    ("str", " 's", "'s"), ("str", "s ' ", "s' "), ("str", " n't", "n't"), ("str", " \n ", "\n"), ("str", "\\/", "/"),
    *[("str", " N ", " 1 ")] * 10,  # ten passes: "N N N" needs more than one
    ("str", "$ 1", "$1"), ("str", "# 1", "#1"), ("str", "<unk>", "?"),
]

_LM1B_STEPS = [
    ("str", "http : / / ", "http://"), ("str", "https : / / ", "https://"),
    ("re", r" '(\w+)", r"'\1"), ("re", r" (\w+) \. ", r" \1. "), ("re", r" (\w+) \.$", r" \1."),
    ("str", " ? ", "? "), ("re", r" \?$", "?"), ("str", " ! ", "! "), ("re", r" \!$", "!"),
    ("str", " , ", ", "), ("str", " : ", ": "), ("str", " ; ", "; "), ("str", " / ", "/"),
    ("re", r"\" ([^\"]+) \"", r'"\1"'), ("re", r"' ([^']+) '", r"'\1'"),
    ("re", r"\( ([^\(\)]+) \)", r"(\1)"), ("re", r"\[ ([^\[\]]+) \]", r"[\1]"),
    ("str", "$ ", "$"), ("str", "\u00a3 ", "\u00a3"),
]


def _apply(steps, text: str) -> str:
    for kind, old, new in steps:
        text = text.replace(old, new) if kind == "str" else re.sub(old, new, text)
    return text


def wikitext_detokenize(text: str) -> str:
    """The GPT-2 evaluation code's WikiText detokeniser (SEDD's and MDLM's ``wt_detokenizer``)."""
    return _apply(_WIKITEXT_STEPS, text)


def ptb_detokenize(text: str) -> str:
    """The PTB detokeniser of SEDD and MDLM (``N`` becomes ``1``, ``<unk>`` becomes ``?``)."""
    return _apply(_PTB_STEPS, text)


def lm1b_detokenize(text: str) -> str:
    """The One Billion Words detokeniser of SEDD and MDLM."""
    return _apply(_LM1B_STEPS, text)


def lambada_detokenize(text: str) -> str:
    """LAMBADA as SEDD and MDLM read OpenAI's file: curly double quotes made straight, a newline in front of the stripped text."""
    return "\n" + text.replace("\u201c", '"').replace("\u201d", '"').strip()


def scientific_papers_detokenize(text: str) -> str:
    """MDLM's PubMed / arXiv rule: the WikiText detokeniser, then the LM1B one."""
    return lm1b_detokenize(wikitext_detokenize(text))


# ----------------------------------------------------------------------------- benchmarks


@dataclass(frozen=True)
class Benchmark:
    """A zero-shot benchmark: where its rows come from and how a row becomes text.

    hub: ``datasets.load_dataset`` arguments (path, config name, and for datasets the hub keeps
    only as a loading script, ``revision="refs/convert/parquet"`` with the config's ``data_dir``).
    splits: the split each protocol scores. txt_lines: how a line of a local .txt file becomes a row,
    as the hub's loader did ("keep": the line with its newline, blank lines as ""; "strip": stripped).
    wrap: MDLM wraps the rows into blocks (False: one padded block per row).
    """

    name: str
    hub_path: str
    hub_config: str | None
    text_field: str
    splits: dict[str, str]
    detokenize: Callable[[str], str] | None
    txt_lines: str = "strip"
    wrap: bool = True
    hub_revision: str | None = None
    hub_data_dir: str | None = None


_PARQUET = "refs/convert/parquet"
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("lambada", "EleutherAI/lambada_openai", "default", "text",
              {"sedd": "test", "mdlm": "test"}, lambada_detokenize),
    Benchmark("wikitext2", "Salesforce/wikitext", "wikitext-2-raw-v1", "text",
              {"sedd": "train", "mdlm": "validation"}, wikitext_detokenize, txt_lines="keep"),
    Benchmark("wikitext103", "Salesforce/wikitext", "wikitext-103-raw-v1", "text",
              {"sedd": "test", "mdlm": "validation"}, wikitext_detokenize, txt_lines="keep"),
    Benchmark("ptb", "ptb-text-only/ptb_text_only", None, "sentence",
              {"sedd": "test", "mdlm": "validation"}, ptb_detokenize, hub_revision=_PARQUET, hub_data_dir="penn_treebank"),
    Benchmark("lm1b", "billion-word-benchmark/lm1b", None, "text",
              {"sedd": "test", "mdlm": "test"}, lm1b_detokenize, wrap=False, hub_revision=_PARQUET, hub_data_dir="plain_text"),
    Benchmark("ag_news", "fancyzhx/ag_news", None, "text", {"sedd": "test", "mdlm": "test"}, None),
    Benchmark("pubmed", "armanc/scientific_papers", None, "article",
              {"sedd": "test", "mdlm": "validation"}, scientific_papers_detokenize, hub_revision=_PARQUET, hub_data_dir="pubmed"),
    Benchmark("arxiv", "armanc/scientific_papers", None, "article",
              {"sedd": "test", "mdlm": "validation"}, scientific_papers_detokenize, hub_revision=_PARQUET, hub_data_dir="arxiv"),
]}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``, or a ValueError listing the known ones."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def default_split(benchmark: Benchmark | str, protocol: str) -> str:
    """The split the protocol's paper scores for this benchmark."""
    _check_protocol(protocol)
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    return benchmark.splits[protocol]


# ----------------------------------------------------------------------------- loading


def load_rows(benchmark: Benchmark | str, split: str, *, path: str | os.PathLike | None = None,
              data_dir: str | os.PathLike | None = None) -> list[str]:
    """The raw rows (before detokenising) of ``split``, in order, empty rows kept.

    path: local file(s) of this benchmark (a file, a directory or a glob; all are read).
    data_dir: a directory holding ``<name>/`` or ``<name>.*`` / ``<name>_*`` / ``<name>-*`` files; among
    them, those whose names carry the split (``test``, ``valid``/``validation``, ``train``) are read if
    any do. Neither: ``datasets.load_dataset`` from the hub (a ValueError saying a network is needed
    if that fails).
    """
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if path is not None:
        return _read_files(benchmark, _files_at(str(path), benchmark.name))
    if data_dir is not None:
        return _read_files(benchmark, _files_in_dir(Path(data_dir), benchmark.name, split))
    return _read_hub(benchmark, split)


def _files_at(source: str, name: str) -> list[Path]:
    p = Path(os.path.expanduser(source))
    if p.is_file():
        candidates = [p]
    elif p.is_dir():
        candidates = sorted(q for q in p.rglob("*") if q.is_file())
    else:
        candidates = sorted(Path(q) for q in glob.glob(str(p), recursive=True) if os.path.isfile(q))
    files = [q for q in candidates if q.suffix in LOCAL_SUFFIXES]
    if not files:
        raise ValueError(f"{name}: no {'/'.join(LOCAL_SUFFIXES)} file at {source!r}")
    return files


def _split_of(path: Path) -> str | None:
    """The split a file's name (or its folder's) names, if exactly one."""
    words = set(re.split(r"[^a-z]+", "/".join(path.parts[-2:]).lower()))
    found = {split for split, names in SPLIT_NAMES.items() if words & set(names)}
    return found.pop() if len(found) == 1 else None


def _files_in_dir(directory: Path, name: str, split: str) -> list[Path]:
    if not directory.is_dir():
        raise ValueError(f"--data-dir {str(directory)!r} is not a directory")
    candidates = sorted(q for q in (directory / name).rglob("*") if q.is_file()) if (directory / name).is_dir() else []
    candidates += sorted(q for q in directory.iterdir() if q.is_file() and re.match(rf"{re.escape(name)}([._-]|$)", q.name))
    candidates = [q for q in candidates if q.suffix in LOCAL_SUFFIXES]
    if not candidates:
        raise ValueError(f"{name}: no local files in {directory} (looked for {name}/ and {name}.*, {name}_*, {name}-* "
                         f"with suffix {'/'.join(LOCAL_SUFFIXES)})")
    named = [q for q in candidates if _split_of(q) is not None]
    if not named:
        return candidates
    chosen = [q for q in named if _split_of(q) == split]
    if not chosen:
        raise ValueError(f"{name}: no {split} file in {directory} (found {', '.join(q.name for q in named)}); "
                         f"name the split with --split or pass the file as {name}=PATH")
    return chosen


def _read_files(benchmark: Benchmark, files: list[Path]) -> list[str]:
    rows: list[str] = []
    for file in files:
        if file.suffix == ".txt":
            with open(file, encoding="utf-8") as handle:
                lines = handle.readlines()  # split at newlines only, as the hub's loaders read the files (not at U+2028 etc.)
            if benchmark.txt_lines == "keep":
                rows += [line if line.strip() else "" for line in lines]
            else:
                rows += [line.strip() for line in lines]
        else:
            from datasets import load_dataset

            kind = "parquet" if file.suffix == ".parquet" else "json"
            dataset = load_dataset(kind, data_files=[str(file)], split="train")
            rows += _column(dataset, benchmark, str(file))
    return rows


def _column(dataset, benchmark: Benchmark, where: str) -> list[str]:
    if benchmark.text_field not in dataset.column_names:
        raise ValueError(f"{benchmark.name}: {where} has no text field {benchmark.text_field!r}; columns: {dataset.column_names}")
    return ["" if text is None else text for text in dataset[benchmark.text_field]]


def _read_hub(benchmark: Benchmark, split: str) -> list[str]:
    hint = (f"{benchmark.name} needs a network to load {benchmark.hub_path} from the hub; offline, point at local files "
            f"in the hub's formats (.parquet/.jsonl/.json/.txt) with --data-dir DIR (DIR/{benchmark.name}/ or "
            f"DIR/{benchmark.name}.*) or --benchmark {benchmark.name}=PATH")
    try:
        from datasets import load_dataset

        dataset = load_dataset(benchmark.hub_path, benchmark.hub_config, split=split, revision=benchmark.hub_revision,
                               data_dir=benchmark.hub_data_dir)
    except Exception as error:  # no network, no such split or repository: the hub's many exception types
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{hint} ({type(error).__name__}: {reason})") from None
    return _column(dataset, benchmark, benchmark.hub_path)


# ----------------------------------------------------------------------------- blocks


def detokenized(benchmark: Benchmark | str, rows: Sequence[str]) -> list[str]:
    """The rows as the papers' code feeds them to the tokenizer."""
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    return list(rows) if benchmark.detokenize is None else [benchmark.detokenize(row) for row in rows]


def sedd_blocks(documents: Sequence[Sequence[int]], block_size: int, eos: int) -> list[list[int]]:
    """SEDD / GPT-2 blocks: every document followed by ``eos``, all concatenated, cut into ``block_size``
    tokens; the final remainder is dropped."""
    check_count("block_size", block_size)
    stream = [token for doc in documents for token in (*doc, eos)]
    return [stream[i:i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]


def mdlm_blocks(documents: Sequence[Sequence[int]], block_size: int, bos: int, eos: int, wrap: bool = True) -> list[list[int]]:
    """MDLM blocks. wrap: every document followed by ``eos``, concatenated, cut into chunks of
    ``block_size - 2`` (remainder dropped), each block ``[bos] chunk [eos]``. Not wrapped: one block
    ``[bos] doc[:block_size - 2] [eos]`` per document (MDLM pads it to ``block_size``; the padding is not scored)."""
    if not isinstance(block_size, int) or block_size < 3:
        raise ValueError(f"block_size must be an int >= 3 (BOS, a token, EOS), got {block_size!r}")
    inner = block_size - 2
    if not wrap:
        return [[bos, *doc[:inner], eos] for doc in documents]
    stream = [token for doc in documents for token in (*doc, eos)]
    return [[bos, *stream[i:i + inner], eos] for i in range(0, len(stream) - inner + 1, inner)]


def bos_id(tokenizer) -> int:
    """The tokenizer's BOS token, or its EOS where it has none (GPT-2's BOS and EOS are one token)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return eos_id(tokenizer) if bos is None else int(bos)


def benchmark_blocks(benchmark: Benchmark | str, rows: Sequence[str], tokenizer, block_size: int, protocol: str = "sedd") -> list[list[int]]:
    """The token blocks ``protocol`` scores for these raw rows (detokenised, then tokenised without special tokens)."""
    _check_protocol(protocol)
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    texts = detokenized(benchmark, rows)
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"] if texts else []
    if protocol == "sedd":
        return sedd_blocks(ids, block_size, eos_id(tokenizer))
    return mdlm_blocks(ids, block_size, bos_id(tokenizer), eos_id(tokenizer), benchmark.wrap)


# ----------------------------------------------------------------------------- scoring


@dataclass
class ZeroShotScore(BoundTotals):
    """-log p of a benchmark's blocks, summed, in nats: a diffusion model's bound (integral + prior, with
    a standard error; num_t t per block, by ``estimator``) or an AR model's exact value (num_t 0)."""

    benchmark: str
    protocol: str
    split: str
    num_blocks: int
    num_tokens: int
    integral: float
    prior: float
    stderr: float
    num_t: int
    estimator: str = "per-text"  # or "dataset", or "exact" (AR)
    last_word: dict | None = None  # LAMBADA: ddlm.evaluation.lambada's accuracy, ppl, ... of the passages


ESTIMATORS = ("per-text", "dataset")  # the names of ``ddlm eval``
ESTIMATOR_ALIASES = {"per-block": "per-text"}  # the name this module used before; still accepted


def _estimator(name: str, allowed: tuple[str, ...]) -> str:
    """The estimator ``name`` (an alias resolved) if it is one of ``allowed``, else a ValueError."""
    resolved = ESTIMATOR_ALIASES.get(name, name)
    if resolved not in allowed:
        raise ValueError(f"estimator must be one of {', '.join(allowed)}, got {name!r}")
    return resolved


@torch.no_grad()
def score_blocks(model, tokenizer, blocks: Sequence[Sequence[int]], protocol: str = "sedd", num_t: int = 128, *,
                 estimator: str = "per-text", batch_size: int | None = None, seed: int | None = 0, progress: bool = True,
                 **bound_kwargs) -> tuple[float, float, float, int]:
    """(integral, prior, stderr, scored tokens) summed over ``blocks``.

    A diffusion model bounds every token of every block. estimator "per-text": ``num_t`` t per block
    (``ddlm.likelihood.nll_bound``), the standard error from each block's own spread; "dataset": ``num_t``
    t per block stratified over all blocks (``ddlm.likelihood.block_estimates``, what the papers' tables
    use), the standard error taken across blocks (at least 2). ``bound_kwargs`` (t_sampling, t_power)
    go to either. An AR model is exact: under ``sedd`` a block's first token is conditioned on EOS and
    all its tokens are scored; under ``mdlm`` the block's BOS is the context and the others are scored.
    """
    from ..likelihood.bounds import block_estimates, nll_bound
    from ..core.losses import ar_nll
    from ..text.pipeline import DiffusionPipeline

    _check_protocol(protocol)
    check_count("num_t", num_t)
    check_count("batch_size", batch_size, allow_none=True)
    estimator = _estimator(estimator, ESTIMATORS)
    if not blocks:
        raise ValueError("no blocks to score")
    check_scorable(model, blocks, "block")
    model.eval()
    device = next(model.parameters()).device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    if model.config.objective != "ar" and estimator == "dataset":
        pipe = DiffusionPipeline(model, tokenizer)
        tensors = [torch.tensor(block, device=device) for block in blocks]
        result = block_estimates(pipe.score_fn, pipe.graph, pipe.noise, tensors, num_t, generator, batch_size=batch_size,
                                 progress=progress, **bound_kwargs)
        _, stderr = result.total()
        return float(result.integral.sum()), float(result.prior.sum()), stderr, int(result.num_tokens.sum())
    groups: dict[int, list[Sequence[int]]] = {}
    for block in blocks:
        groups.setdefault(len(block), []).append(block)
    is_ar = model.config.objective == "ar"
    pipe = None if is_ar else DiffusionPipeline(model, tokenizer)
    integral = prior = variance = 0.0
    tokens = 0
    for length, members in tqdm(sorted(groups.items()), desc="zero-shot", disable=not progress):
        step = batch_size or len(members)
        for start in range(0, len(members), step):
            x0 = torch.tensor(members[start:start + step], device=device)
            if is_ar:
                context = eos_id(tokenizer) if protocol == "sedd" else None
                integral += float(ar_nll(model, x0, context=context).sum())
                tokens += x0.numel() if protocol == "sedd" else x0.shape[0] * (length - 1)
            else:
                result = nll_bound(pipe.score_fn, pipe.graph, pipe.noise, x0, num_t, generator, batch_size=batch_size, **bound_kwargs)
                integral += float(result.integral.double().sum())
                prior += float(result.prior.double().sum())
                variance += float(result.stderr.double().square().sum())
                tokens += x0.numel()
    return integral, prior, math.sqrt(variance), tokens


LAST_WORD_NUM_T = 128  # t per passage of LAMBADA's last-word score (a conditional bound has no dataset-level estimator)


def evaluate_benchmark(model, tokenizer, benchmark: Benchmark | str, protocol: str = "sedd", num_t: int | None = None, *,
                       estimator: str = "auto", split: str | None = None, path: str | os.PathLike | None = None,
                       data_dir: str | os.PathLike | None = None, limit: int | None = None, last_word: bool = True,
                       batch_size: int | None = None, seed: int | None = 0, progress: bool = True, **bound_kwargs) -> ZeroShotScore:
    """Score one benchmark: load its rows (``load_rows``), cut them into the protocol's blocks of the
    model's length, keep the first ``limit`` blocks, and score them (``score_blocks``).

    estimator: "per-text" (alias "per-block"), "dataset", or "auto" (dataset for 16 blocks or more); num_t:
    t per block (default 128 per block, 1 for the dataset estimator). For LAMBADA with ``last_word`` the result also
    holds ``ddlm.evaluation.lambada`` of its passages (the first ``limit`` of them): last-word accuracy
    and perplexity, contexts cut to their last tokens where a passage exceeds the model's length,
    ``num_t`` (per-text) or ``LAST_WORD_NUM_T`` t per passage.
    """
    check_count("limit", limit, allow_none=True)
    check_count("num_t", num_t, allow_none=True)
    estimator = _estimator(estimator, (*ESTIMATORS, "auto"))
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    split = split or default_split(benchmark, protocol)
    rows = load_rows(benchmark, split, path=path, data_dir=data_dir)
    block_size = model.config.max_position_embeddings
    blocks = benchmark_blocks(benchmark, rows, tokenizer, block_size, protocol)
    if not blocks:
        raise ValueError(f"{benchmark.name} ({split}, {len(rows)} rows) holds fewer tokens than one block of {block_size} "
                         f"under the {protocol} protocol")
    blocks = blocks[:limit] if limit is not None else blocks
    if estimator == "auto":
        estimator = "dataset" if len(blocks) >= DATASET_MIN_BLOCKS else "per-text"
    block_t = num_t or (1 if estimator == "dataset" else LAST_WORD_NUM_T)
    integral, prior, stderr, tokens = score_blocks(model, tokenizer, blocks, protocol, block_t, estimator=estimator,
                                                   batch_size=batch_size, seed=seed, progress=progress, **bound_kwargs)
    exact = model.config.objective == "ar"
    score = ZeroShotScore(benchmark.name, protocol, split, len(blocks), tokens, integral, prior, stderr, 0 if exact else block_t,
                          "exact" if exact else estimator)
    if benchmark.name == "lambada" and last_word:
        passages = [row for row in rows if row.strip()][:limit]
        pair_t = block_t if estimator == "per-text" else LAST_WORD_NUM_T
        score.last_word = lambada((model, tokenizer), passages, pair_t, seed=seed, batch_size=batch_size, truncate_context=True,
                                  progress=progress, **bound_kwargs)
    return score
